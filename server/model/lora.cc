#include "server/model/lora.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>  // at::NoGradGuard (not in ATen/ATen.h in libtorch 2.x)

#include <cmath>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "server/model/safetensors.h"
#include "server/model/torch_util.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

constexpr const char* kTargetNames[kNumLoraTargets] = {"q_proj", "k_proj",    "v_proj",
                                                        "o_proj", "gate_proj", "up_proj",
                                                        "down_proj"};
constexpr char kLoraFormat[] = "steerd.lora.v1";

// (in, out) features of a projection.
std::pair<int64_t, int64_t> ProjectionShape(const ModelConfig& c, LoraTarget target) {
  const int64_t d = c.hidden_size, q = c.num_heads * c.head_dim,
                kv = c.num_kv_heads * c.head_dim, inter = c.intermediate_size;
  switch (target) {
    case LoraTarget::kQ: return {d, q};
    case LoraTarget::kK: return {d, kv};
    case LoraTarget::kV: return {d, kv};
    case LoraTarget::kO: return {q, d};
    case LoraTarget::kGate: return {d, inter};
    case LoraTarget::kUp: return {d, inter};
    case LoraTarget::kDown: return {inter, d};
  }
  return {0, 0};
}

std::string PeftName(int64_t layer, LoraTarget target, const char* matrix) {
  const bool mlp = target == LoraTarget::kGate || target == LoraTarget::kUp ||
                   target == LoraTarget::kDown;
  return absl::StrCat("base_model.model.model.layers.", layer, mlp ? ".mlp." : ".self_attn.",
                      LoraTargetName(target), ".lora_", matrix, ".weight");
}

}  // namespace

const char* LoraTargetName(LoraTarget target) { return kTargetNames[static_cast<int>(target)]; }

absl::StatusOr<LoraTarget> ParseLoraTarget(const std::string& name) {
  for (int i = 0; i < kNumLoraTargets; ++i) {
    if (name == kTargetNames[i]) return static_cast<LoraTarget>(i);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown LoRA target '", name, "'; expected one of ",
                   absl::StrJoin(kTargetNames, kTargetNames + kNumLoraTargets, ", ")));
}

absl::StatusOr<LoraAdapter> LoraAdapter::Create(const ModelConfig& config,
                                                const Options& options,
                                                const at::Device& device) {
  if (options.rank < 1) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA rank ", options.rank, " must be >= 1"));
  }
  if (!std::isfinite(options.alpha) || options.alpha <= 0) {
    return absl::InvalidArgumentError("LoRA alpha must be a positive number");
  }
  if (options.targets.empty()) return absl::InvalidArgumentError("LoRA needs a target");
  LoraAdapter adapter;
  adapter.rank_ = options.rank;
  adapter.alpha_ = options.alpha;
  adapter.scaling_ = options.alpha / static_cast<double>(options.rank);
  adapter.targets_ = options.targets;
  adapter.layers_.resize(config.num_layers);
  RETURN_IF_ERROR(CatchTorchErrors("initialising LoRA", [&]() -> absl::Status {
    at::Generator generator = at::detail::createCPUGenerator(options.seed);
    for (int64_t l = 0; l < config.num_layers; ++l) {
      for (LoraTarget target : options.targets) {
        const auto [in, out] = ProjectionShape(config, target);
        const double bound = 1.0 / std::sqrt(static_cast<double>(in));
        LoraPair& pair = adapter.layers_[l][static_cast<int>(target)];
        pair.a = at::empty({options.rank, in}, at::kFloat)
                     .uniform_(-bound, bound, generator)
                     .to(device)
                     .set_requires_grad(true);                                   // [r, in]
        pair.b = at::zeros({out, options.rank}, at::TensorOptions().device(device))
                     .set_requires_grad(true);                                   // [out, r]
      }
    }
    return absl::OkStatus();
  }));
  return adapter;
}

at::Tensor LoraAdapter::Delta(const at::Tensor& x, int64_t layer, LoraTarget target) const {
  const LoraPair& p = pair(layer, target);
  if (!p.a.defined()) return at::Tensor();
  at::Tensor low = at::linear(x.to(at::kFloat), p.a);  // [..., r]
  return (at::linear(low, p.b) * scaling_).to(x.scalar_type());
}

bool LoraAdapter::requires_grad() const {
  for (const auto& layer : layers_) {
    for (const LoraPair& p : layer) {
      if (p.a.defined() && (p.a.requires_grad() || p.b.requires_grad())) return true;
    }
  }
  return false;
}

std::vector<at::Tensor> LoraAdapter::Parameters() const {
  std::vector<at::Tensor> params;
  for (const auto& layer : layers_) {
    for (const LoraPair& p : layer) {
      if (!p.a.defined()) continue;
      params.push_back(p.a);
      params.push_back(p.b);
    }
  }
  return params;
}

int64_t LoraAdapter::num_parameters() const {
  int64_t n = 0;
  for (const at::Tensor& t : Parameters()) n += t.numel();
  return n;
}

absl::Status LoraAdapter::Save(const std::string& path) const {
  std::vector<at::Tensor> keep_alive;
  std::vector<TensorToWrite> tensors;
  for (int64_t l = 0; l < static_cast<int64_t>(layers_.size()); ++l) {
    for (LoraTarget target : targets_) {
      const LoraPair& p = pair(l, target);
      for (const auto& [matrix, tensor] : {std::pair{"A", p.a}, std::pair{"B", p.b}}) {
        at::Tensor cpu = tensor.detach().to(at::kCPU, at::kFloat).contiguous();
        tensors.push_back({PeftName(l, target, matrix), DType::kF32,
                           std::vector<int64_t>(cpu.sizes().begin(), cpu.sizes().end()),
                           cpu.data_ptr()});
        keep_alive.push_back(std::move(cpu));
      }
    }
  }
  std::vector<std::string> names;
  for (LoraTarget t : targets_) names.push_back(LoraTargetName(t));
  return WriteSafetensors(path, tensors,
                          {{"format", kLoraFormat},
                           {"rank", absl::StrCat(rank_)},
                           {"alpha", absl::StrCat(alpha_)},
                           {"target_modules", absl::StrJoin(names, ",")},
                           {"num_layers", absl::StrCat(layers_.size())}});
}

absl::StatusOr<LoraAdapter> LoraAdapter::Load(const std::string& path, const ModelConfig& config,
                                              const at::Device& device) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  const auto& meta = file->metadata();
  auto get = [&](const char* key) -> absl::StatusOr<std::string> {
    auto it = meta.find(key);
    if (it == meta.end()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": metadata has no '", key,
                                                     "' (not a steerd LoRA adapter)"));
    }
    return it->second;
  };
  ASSIGN_OR_RETURN(std::string format, get("format"));
  if (format != kLoraFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": format '", format, "' is not ", kLoraFormat));
  }
  ASSIGN_OR_RETURN(std::string rank_text, get("rank"));
  ASSIGN_OR_RETURN(std::string alpha_text, get("alpha"));
  ASSIGN_OR_RETURN(std::string targets_text, get("target_modules"));
  Options options;
  options.targets.clear();
  if (!absl::SimpleAtoi(rank_text, &options.rank) ||
      !absl::SimpleAtod(alpha_text, &options.alpha)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad rank or alpha metadata"));
  }
  for (absl::string_view name : absl::StrSplit(targets_text, ',')) {
    ASSIGN_OR_RETURN(LoraTarget target, ParseLoraTarget(std::string(name)));
    options.targets.push_back(target);
  }
  ASSIGN_OR_RETURN(LoraAdapter adapter, Create(config, options, device));
  RETURN_IF_ERROR(CatchTorchErrors("loading LoRA", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    for (int64_t l = 0; l < config.num_layers; ++l) {
      for (LoraTarget target : options.targets) {
        LoraPair& p = adapter.layers_[l][static_cast<int>(target)];
        for (auto& [matrix, tensor] : {std::pair<const char*, at::Tensor*>{"A", &p.a},
                                       std::pair<const char*, at::Tensor*>{"B", &p.b}}) {
          ASSIGN_OR_RETURN(TensorView view, file->Get(PeftName(l, target, matrix)));
          if (view.dtype != DType::kF32 ||
              view.shape != std::vector<int64_t>(tensor->sizes().begin(), tensor->sizes().end())) {
            return absl::InvalidArgumentError(absl::StrCat(
                path, ": tensor ", view.name, " must be F32 [",
                absl::StrJoin(tensor->sizes(), ", "), "] for this model"));
          }
          ASSIGN_OR_RETURN(at::Tensor src, TensorFromView(view, nullptr));
          tensor->copy_(src);
        }
      }
    }
    return absl::OkStatus();
  }));
  return adapter;
}

}  // namespace steerd
