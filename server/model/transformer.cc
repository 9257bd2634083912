#include "server/model/transformer.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/model/cpu_kernels.h"
#include "server/model/torch_util.h"
#include "server/model/weights.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using KernelPath = Transformer::KernelPath;

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                  KernelPath path) {
  // A prefill's rows: the same bits whatever shares the call (prefix reuse is exact).
  if (path == KernelPath::kBatchInvariant && CanUseBatchInvariantLinear(x, w, b)) {
    return BatchInvariantLinear(x, w, b);
  }
  // Decode-time bf16 rows on CPU: the hand-written kernel streams weights faster.
  if (CanUseSmallBatchBf16Linear(x, w, b)) return SmallBatchBf16Linear(x, w, b);
  // Float32 rows: no per-call weight repacking, and each row's result is bitwise
  // independent of the batch.
  if (path != KernelPath::kTensorOps && CanUseSmallBatchF32Linear(x, w, b)) {
    return SmallBatchF32Linear(x, w, b);
  }
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

// A projection plus its LoRA delta, when the adapter has one for it.
at::Tensor Project(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                   const LoraAdapter* lora, int64_t layer, LoraTarget target, KernelPath path) {
  at::Tensor y = Linear(x, w, b, path);
  if (lora == nullptr) return y;
  at::Tensor delta = lora->Delta(x, layer, target);
  return delta.defined() ? y + delta : y;
}

// rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2])
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// [a; b] along rows. Hugging Face files store gate_proj right before up_proj, so when
// both point into one mapped file back to back the result is a zero-copy view that
// keeps both alive; otherwise the rows are copied once at load.
at::Tensor StackRows(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined() || !b.defined()) return at::Tensor();
  const int64_t a_bytes = a.numel() * static_cast<int64_t>(a.element_size());
  if (a.is_contiguous() && b.is_contiguous() && a.device() == b.device() &&
      a.scalar_type() == b.scalar_type() &&
      static_cast<const char*>(a.data_ptr()) + a_bytes == b.data_ptr()) {
    std::vector<int64_t> shape(a.sizes().begin(), a.sizes().end());
    shape[0] += b.size(0);
    return at::from_blob(a.data_ptr(), shape, [a, b](void*) {}, a.options());
  }
  return at::cat({a, b}, 0);
}

}  // namespace

at::Tensor RopeInverseFrequencies(const ModelConfig& config) {
  // The same float32 operations, in the same order, as Hugging Face's
  // _compute_default_rope_parameters / _compute_llama3_parameters, so the result is
  // bit-identical.
  const int64_t dim = config.head_dim;
  at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / dim;
  at::Tensor inv_freq = at::pow(config.rope_theta, exponents).reciprocal();
  const RopeScaling& s = config.rope_scaling;
  if (s.type == RopeScaling::Type::kLinear) {
    inv_freq = inv_freq / s.factor;
  } else if (s.type == RopeScaling::Type::kLlama3) {
    const double old_context = static_cast<double>(s.original_max_position_embeddings);
    const double low_freq_wavelen = old_context / s.low_freq_factor;
    const double high_freq_wavelen = old_context / s.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor scaled =
        at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
    at::Tensor smooth = (old_context / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    at::Tensor medium = at::logical_not(wavelen < high_freq_wavelen)
                            .logical_and(at::logical_not(wavelen > low_freq_wavelen));
    inv_freq = at::where(medium, smoothed, scaled);
  }
  return inv_freq;
}

std::pair<at::Tensor, at::Tensor> RopeCosSin(const at::Tensor& inv_freq,
                                             const at::Tensor& positions) {
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;  // [B, T, hd/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                           // [B, T, hd]
  return {emb.cos(), emb.sin()};
}

absl::StatusOr<std::unique_ptr<Transformer>> Transformer::Create(const Options& options) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(options.model_dir));
  ASSIGN_OR_RETURN(at::Device device, ParseDevice(options.device));
  ASSIGN_OR_RETURN(at::ScalarType dtype,
                   ParseComputeDType(options.dtype, config.torch_dtype, device));
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError("--threads must be >= 0");
  }
  const int threads =
      options.num_threads > 0 ? options.num_threads : DefaultComputeThreads(/*spare_cores=*/0);
  at::set_num_threads(threads);

  ASSIGN_OR_RETURN(WeightPlacement placement, ParseWeightPlacement(options.weights));
  ASSIGN_OR_RETURN(LoadedWeights loaded,
                   LoadWeights(options.model_dir, config, dtype, device, placement));
  std::unique_ptr<Transformer> model(new Transformer());
  auto& w = loaded.tensors;
  auto take = [&w](const std::string& name) -> at::Tensor {
    auto it = w.find(name);
    return it == w.end() ? at::Tensor() : it->second;
  };
  model->embed_ = take("model.embed_tokens.weight");
  model->final_norm_ = take("model.norm.weight");
  model->lm_head_ = config.tie_word_embeddings ? model->embed_ : take("lm_head.weight");
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    Layer layer;
    layer.input_norm = take(p + "input_layernorm.weight");
    layer.q_w = take(p + "self_attn.q_proj.weight");
    layer.k_w = take(p + "self_attn.k_proj.weight");
    layer.v_w = take(p + "self_attn.v_proj.weight");
    layer.o_w = take(p + "self_attn.o_proj.weight");
    layer.q_b = take(p + "self_attn.q_proj.bias");
    layer.k_b = take(p + "self_attn.k_proj.bias");
    layer.v_b = take(p + "self_attn.v_proj.bias");
    layer.o_b = take(p + "self_attn.o_proj.bias");
    layer.post_norm = take(p + "post_attention_layernorm.weight");
    layer.gate_up_w =
        StackRows(take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight"));
    layer.down_w = take(p + "mlp.down_proj.weight");
    layer.gate_up_b = StackRows(take(p + "mlp.gate_proj.bias"), take(p + "mlp.up_proj.bias"));
    layer.down_b = take(p + "mlp.down_proj.bias");
    model->layers_.push_back(std::move(layer));
  }
  for (const auto& [name, tensor] : w) {
    model->weight_bytes_ += tensor.numel() * static_cast<int64_t>(tensor.element_size());
  }
  model->inv_freq_ = RopeInverseFrequencies(config).to(device);
  model->config_ = std::move(config);
  model->dtype_ = dtype;
  model->device_ = device;
  return model;
}

KvCache Transformer::NewCache(int64_t batch, int64_t capacity) const {
  return KvCache(config_, batch, capacity, dtype_, device_);
}

absl::StatusOr<at::Tensor> Transformer::MakeSteeringBatch(
    const std::vector<SteeringRow>& rows) const {
  const int64_t L = config_.num_layers, d = config_.hidden_size;
  bool any = false;
  for (size_t b = 0; b < rows.size(); ++b) {
    const at::Tensor& v = rows[b].vector;
    if (!v.defined()) continue;
    any = true;
    if (v.dim() != 2 || v.size(0) != L || v.size(1) != d) {
      return absl::InvalidArgumentError(absl::StrCat(
          "steering vector for row ", b, " has shape [", absl::StrJoin(v.sizes(), ", "),
          "]; the model needs [", L, ", ", d, "] (num_layers, hidden_size)"));
    }
    if (!std::isfinite(rows[b].scale)) {
      return absl::InvalidArgumentError(absl::StrCat("steering scale for row ", b,
                                                     " is not finite"));
    }
  }
  if (!any) return at::Tensor();
  return CatchTorchErrors("building steering batch", [&]() -> absl::StatusOr<at::Tensor> {
    std::vector<at::Tensor> per_row;  // each [L, d]
    per_row.reserve(rows.size());
    const auto options = at::TensorOptions().dtype(dtype_).device(device_);
    for (const SteeringRow& row : rows) {
      if (!row.vector.defined()) {
        per_row.push_back(at::zeros({L, d}, options));
      } else {
        at::Tensor v = row.vector.to(device_);
        if (row.scale != 1.0) v = v * row.scale;
        per_row.push_back(v.to(dtype_));
      }
    }
    return at::stack(per_row, 1).unsqueeze(2);  // [L, B, 1, d]
  });
}

absl::Status Transformer::Validate(const ForwardInput& input, const KvCache* cache) const {
  const at::Tensor& tokens = input.tokens;
  if (!tokens.defined() || tokens.dim() != 2 || tokens.scalar_type() != at::kLong ||
      tokens.size(0) == 0 || tokens.size(1) == 0) {
    return absl::InvalidArgumentError("tokens must be a non-empty [batch, length] int64 tensor");
  }
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const at::Tensor cpu_tokens = tokens.to(at::kCPU);
  const int64_t lo = cpu_tokens.min().item<int64_t>(), hi = cpu_tokens.max().item<int64_t>();
  if (lo < 0 || hi >= config_.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("token id ", lo < 0 ? lo : hi,
                                                   " is out of range [0, ",
                                                   config_.vocab_size, ")"));
  }
  if (!input.left_pad.empty() && static_cast<int64_t>(input.left_pad.size()) != B) {
    return absl::InvalidArgumentError(absl::StrCat("left_pad has ", input.left_pad.size(),
                                                   " entries for a batch of ", B));
  }
  if (cache != nullptr && cache->batch_size() != B) {
    return absl::InvalidArgumentError(absl::StrCat("the cache holds ", cache->batch_size(),
                                                   " rows but the batch has ", B));
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pad = input.left_pad.empty() ? 0 : input.left_pad[b];
    const int64_t held = cache == nullptr ? 0 : cache->num_tokens(b);
    if (pad < 0 || pad >= T) {
      return absl::InvalidArgumentError(absl::StrCat("row ", b, ": left_pad ", pad,
                                                     " must be in [0, ", T, ")"));
    }
    if (pad > 0 && held > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "row ", b, ": only a row with an empty cache can be left-padded"));
    }
    if (held + T - pad > config_.max_position_embeddings) {
      return absl::OutOfRangeError(absl::StrCat(
          "context overflow: row ", b, " would hold ", held + T - pad,
          " tokens but the model's context is ", config_.max_position_embeddings,
          " (max_position_embeddings)"));
    }
  }
  if (input.steering.defined()) {
    const auto& s = input.steering;
    if (s.dim() != 4 || s.size(0) != config_.num_layers || s.size(1) != B || s.size(2) != 1 ||
        s.size(3) != config_.hidden_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "steering batch has shape [", absl::StrJoin(s.sizes(), ", "), "]; expected [",
          config_.num_layers, ", ", B, ", 1, ", config_.hidden_size, "]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> Transformer::Forward(const ForwardInput& input, KvCache* cache) const {
  RETURN_IF_ERROR(Validate(input, cache));
  const bool needs_grad =
      at::GradMode::is_enabled() &&
      (weights_trainable_ || (input.steering.defined() && input.steering.requires_grad()) ||
       (input.lora != nullptr && input.lora->requires_grad()));
  return CatchTorchErrors("transformer forward", [&]() -> absl::StatusOr<at::Tensor> {
    if (needs_grad) return ForwardImpl(input, cache);
    // Inference mode skips autograd bookkeeping on every op of the decode loop.
    c10::InferenceMode inference;
    return ForwardImpl(input, cache);
  });
}

at::Tensor Transformer::RmsNorm(const at::Tensor& x, const at::Tensor& weight,
                                KernelPath path) const {
  if (CanUseBf16RmsNorm(x, weight)) return Bf16RmsNorm(x, weight, config_.rms_norm_eps);
  if (path != KernelPath::kTensorOps && CanUseF32RmsNorm(x, weight)) {
    return F32RmsNorm(x, weight, config_.rms_norm_eps);
  }
  // Hugging Face: normalise in float32, cast back, then scale in the input dtype.
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  at::Tensor normed = x32 * at::rsqrt(variance + config_.rms_norm_eps);
  return weight * normed.to(x.scalar_type());
}

at::Tensor Transformer::Attention(const Layer& layer, const at::Tensor& h, const at::Tensor& cos,
                                  const at::Tensor& sin, const at::Tensor& mask,
                                  int64_t layer_index, KvCache* cache,
                                  const std::vector<int64_t>& start,
                                  const std::vector<int64_t>& write_at, int64_t key_len,
                                  const LoraAdapter* lora, KernelPath path) const {
  const int64_t B = h.size(0), T = h.size(1);
  const int64_t H = config_.num_heads, KVH = config_.num_kv_heads, hd = config_.head_dim;
  const int64_t G = H / KVH;
  // [B, T, heads, hd] -> [B, heads, T, hd]; biases (Qwen2) come before RoPE.
  const int64_t l = layer_index;
  at::Tensor q_proj = Project(h, layer.q_w, layer.q_b, lora, l, LoraTarget::kQ, path);
  at::Tensor k_proj = Project(h, layer.k_w, layer.k_b, lora, l, LoraTarget::kK, path);
  at::Tensor v_proj = Project(h, layer.v_w, layer.v_b, lora, l, LoraTarget::kV, path);
  if (cache != nullptr && !mask.defined() && path != KernelPath::kTensorOps) {
    // The float32 or bf16 decode step: RoPE, the cache write and attention in one kernel.
    at::Tensor& cache_k = cache->keys(layer_index);
    at::Tensor& cache_v = cache->values(layer_index);
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    if (CanUseF32RopeDecodeAttention(cache_k, T)) {
      return Project(F32RopeDecodeAttention(q_proj, k_proj, v_proj, cos, sin, cache_k, cache_v,
                                            start, write_at, scale),
                     layer.o_w, layer.o_b, lora, l, LoraTarget::kO, path);
    }
    if (CanUseBf16RopeDecodeAttention(cache_k, T)) {
      return Project(Bf16RopeDecodeAttention(q_proj, k_proj, v_proj, cos, sin, cache_k, cache_v,
                                             start, write_at, scale),
                     layer.o_w, layer.o_b, lora, l, LoraTarget::kO, path);
    }
  }
  at::Tensor q = q_proj.view({B, T, H, hd}).transpose(1, 2);
  at::Tensor k = k_proj.view({B, T, KVH, hd}).transpose(1, 2);
  at::Tensor v = v_proj.view({B, T, KVH, hd}).transpose(1, 2);
  q = q * cos + RotateHalf(q) * sin;
  k = k * cos + RotateHalf(k) * sin;

  at::Tensor keys = k, values = v;  // [B, KVH, S, hd]
  if (cache != nullptr) {
    at::Tensor& cache_k = cache->keys(layer_index);
    at::Tensor& cache_v = cache->values(layer_index);
    const bool aligned = std::all_of(write_at.begin(), write_at.end(),
                                     [&](int64_t c) { return c == write_at[0]; });
    if (aligned) {
      cache_k.narrow(2, write_at[0], T).copy_(k);
      cache_v.narrow(2, write_at[0], T).copy_(v);
    } else {
      // Rows at different lengths (a continuous batch): scatter each row's T columns.
      at::Tensor cols = at::tensor(write_at, at::TensorOptions().dtype(at::kLong))
                            .to(h.device())
                            .view({B, 1, 1, 1}) +
                        at::arange(T, at::TensorOptions().dtype(at::kLong).device(h.device()))
                            .view({1, 1, T, 1});
      at::Tensor index = cols.expand({B, KVH, T, hd});
      cache_k.scatter_(2, index, k);
      cache_v.scatter_(2, index, v);
    }
    if (!mask.defined()) {
      // The fused decode path. Row b's new token sees columns start[b] through its own,
      // write_at[b].
      const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
      at::Tensor attended = cache_k.scalar_type() == at::kFloat
                                ? F32DecodeAttention(q, cache_k, cache_v, start, write_at, scale)
                                : Bf16DecodeAttention(q, cache_k, cache_v, start, write_at, scale);
      return Project(attended, layer.o_w, layer.o_b, lora, l, LoraTarget::kO, path);
    }
    keys = cache_k.narrow(2, 0, key_len);
    values = cache_v.narrow(2, 0, key_len);
  }
  const int64_t S = keys.size(2);
  // Grouped-query attention without copying K/V: query head h = kv * G + g uses KV
  // head kv, so the G query heads of a group become extra rows of one matmul.
  at::Tensor grouped_q = q.reshape({B, KVH, G * T, hd});
  at::Tensor scores = at::matmul(grouped_q, keys.transpose(2, 3)) /
                      std::sqrt(static_cast<double>(hd));             // [B, KVH, G*T, S]
  scores = scores.view({B, KVH, G, T, S}) + mask.view({B, 1, 1, T, S});
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  at::Tensor out = at::matmul(probs.view({B, KVH, G * T, S}), values);  // [B, KVH, G*T, hd]
  out = out.view({B, H, T, hd}).transpose(1, 2).reshape({B, T, H * hd});
  return Project(out, layer.o_w, layer.o_b, lora, l, LoraTarget::kO,
                 path);  // [B, T, d]
}

at::Tensor Transformer::Mlp(const Layer& layer, const at::Tensor& h, int64_t l,
                            const LoraAdapter* lora, KernelPath path) const {
  const int64_t I = config_.intermediate_size;
  at::Tensor gate_up = Linear(h, layer.gate_up_w, layer.gate_up_b, path);  // [B, T, 2I]
  at::Tensor gate = gate_up.narrow(-1, 0, I), up = gate_up.narrow(-1, I, I);
  bool adapted = false;
  if (lora != nullptr) {
    if (at::Tensor d = lora->Delta(h, l, LoraTarget::kGate); d.defined()) {
      gate = gate + d;
      adapted = true;
    }
    if (at::Tensor d = lora->Delta(h, l, LoraTarget::kUp); d.defined()) {
      up = up + d;
      adapted = true;
    }
  }
  // One pass instead of three where a kernel applies.
  const bool fused = !adapted && path != KernelPath::kTensorOps;
  const at::Tensor hidden = fused && CanUseF32SiluMul(gate_up)    ? F32SiluMul(gate_up)
                            : fused && CanUseBf16SiluMul(gate_up) ? Bf16SiluMul(gate_up)
                                                                  : at::silu(gate) * up;
  return Project(hidden, layer.down_w, layer.down_b, lora, l, LoraTarget::kDown,
                 path);  // [B, T, d]
}

at::Tensor Transformer::ForwardImpl(const ForwardInput& input, KvCache* cache) const {
  const at::Tensor tokens = input.tokens.to(device_);  // [B, T]
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const auto long_opts = at::TensorOptions().dtype(at::kLong);

  // Per-row bookkeeping: where this chunk is written and where each row's keys start.
  std::vector<int64_t> write_at(B, 0), start(B, 0), positions_base(B, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pad = input.left_pad.empty() ? 0 : input.left_pad[b];
    const int64_t length = cache == nullptr ? 0 : cache->length(b);
    const int64_t row_start = cache == nullptr ? 0 : cache->start(b);
    write_at[b] = length;
    // A padded (necessarily empty) row starts after its pads.
    start[b] = pad > 0 ? length + pad : row_start;
    positions_base[b] = length - start[b];
  }
  if (cache != nullptr) cache->Reserve(T);
  const int64_t key_len =
      cache == nullptr ? T : *std::max_element(write_at.begin(), write_at.end()) + T;

  // Positions [B, T]: position of the row's t-th new token; pads clamp to 0.
  at::Tensor steps = at::arange(T, long_opts);
  at::Tensor positions =
      (at::tensor(positions_base, long_opts).view({B, 1}) + steps.view({1, T})).clamp_min(0);
  // RoPE tables in float32, as Hugging Face computes them, then cast: [B, 1, T, hd].
  auto [cos, sin] = RopeCosSin(inv_freq_, positions.to(device_));
  cos = cos.to(dtype_).unsqueeze(1);
  sin = sin.to(dtype_).unsqueeze(1);

  // A cached bf16 or float32 decode step on CPU takes the fused attention kernel, which
  // reads the visible range from start/write_at; autograd never goes through it.
  const bool fused_decode = cache != nullptr && !at::GradMode::is_enabled() &&
                            (CanUseBf16DecodeAttention(cache->keys(0), T) ||
                             CanUseF32DecodeAttention(cache->keys(0), T));
  // Otherwise an additive mask [B, T, S]: query t of row b sees column j iff
  // start_b <= j <= write_b + t. The dtype's lowest value rather than -inf, as Hugging
  // Face does, so a fully masked pad row stays finite.
  at::Tensor mask;
  if (!fused_decode) {
    at::Tensor columns = at::arange(key_len, long_opts).view({1, 1, key_len});
    at::Tensor last_visible =
        (at::tensor(write_at, long_opts).view({B, 1}) + steps.view({1, T})).unsqueeze(-1);
    at::Tensor hidden_cols = (columns < at::tensor(start, long_opts).view({B, 1, 1})) |
                             (columns > last_visible);
    const double lowest = dtype_ == at::kHalf       ? -65504.0
                          : dtype_ == at::kBFloat16 ? -3.3895313892515355e38
                                                    : std::numeric_limits<float>::lowest();
    mask = at::zeros({B, T, key_len}, at::TensorOptions().dtype(dtype_))
               .masked_fill_(hidden_cols, lowest)
               .to(device_);
  }

  // The float32 kernels serve generation: forwards that fill a KV cache (prefill and
  // decode steps) without autograd. Cacheless forwards (the trainer's scoring and
  // gradient passes, logit dumps) keep libtorch's ops, so that a forward without grad
  // matches the same forward with grad bit for bit.
  const KernelPath path = cache != nullptr && !at::GradMode::is_enabled()
                              ? KernelPath::kFast
                              : KernelPath::kTensorOps;
  at::Tensor x = at::embedding(embed_, tokens);  // [B, T, d]
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const Layer& layer = layers_[l];
    x = x + Attention(layer, RmsNorm(x, layer.input_norm, path), cos, sin, mask, l, cache,
                      start, write_at, key_len, input.lora, path);
    x = x + Mlp(layer, RmsNorm(x, layer.post_norm, path), l, input.lora, path);
    if (input.steering.defined()) x = x + input.steering[l];  // [B, 1, d] broadcast
    if (input.layer_outputs != nullptr) input.layer_outputs->push_back(x);
  }
  if (cache != nullptr) {
    for (int64_t b = 0; b < B; ++b) {
      cache->mutable_start()[b] = start[b];
      cache->mutable_length()[b] = write_at[b] + T;
    }
  }
  if (input.logits == ForwardInput::Logits::kLast) x = x.select(1, T - 1);  // [B, d]
  return Linear(RmsNorm(x, final_norm_, path), lm_head_, at::Tensor(), path)
      .to(at::kFloat);
}

absl::StatusOr<std::unique_ptr<KvBlockPool>> Transformer::NewBlockPool(int64_t num_blocks,
                                                                       int64_t block_size) const {
  KvBlockPool::Options options;
  options.num_blocks = num_blocks;
  options.block_size = block_size;
  return KvBlockPool::Create(config_, dtype_, device_, options);
}

absl::Status Transformer::ValidatePaged(const PagedForwardInput& input,
                                        const KvBlockPool& pool) const {
  const size_t B = input.tokens.size();
  if (B == 0) return absl::InvalidArgumentError("a paged forward needs at least one row");
  if (input.cached.size() != B || input.block_tables.size() != B) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a paged forward of ", B, " rows has ", input.cached.size(), " cached lengths and ",
        input.block_tables.size(), " block tables"));
  }
  if (pool.num_layers() != config_.num_layers || pool.keys(0).scalar_type() != dtype_ ||
      pool.keys(0).device() != device_ || pool.keys(0).size(0) != config_.num_kv_heads ||
      pool.keys(0).size(3) != config_.head_dim) {
    return absl::InvalidArgumentError("the KV block pool was made for another model");
  }
  for (size_t b = 0; b < B; ++b) {
    const std::vector<int32_t>& tokens = input.tokens[b];
    if (tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("row ", b, " has no new tokens"));
    }
    for (int32_t t : tokens) {
      if (t < 0 || t >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", t, " is out of range [0, ",
                                                       config_.vocab_size, ")"));
      }
    }
    const int64_t end = input.cached[b] + static_cast<int64_t>(tokens.size());
    if (input.cached[b] < 0 || end > config_.max_position_embeddings) {
      return absl::OutOfRangeError(absl::StrCat(
          "context overflow: row ", b, " would hold ", end,
          " tokens but the model's context is ", config_.max_position_embeddings,
          " (max_position_embeddings)"));
    }
    const std::vector<int32_t>* table = input.block_tables[b];
    if (table == nullptr || static_cast<int64_t>(table->size()) < pool.BlocksFor(end)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "row ", b, "'s block table does not cover its ", end, " positions"));
    }
    for (int32_t block : *table) {
      if (block < 0 || block >= pool.num_blocks()) {
        return absl::InvalidArgumentError(absl::StrCat("row ", b, " names block ", block,
                                                       " of a pool of ", pool.num_blocks()));
      }
    }
  }
  if (input.steering.defined()) {
    const auto& s = input.steering;
    if (s.dim() != 4 || s.size(0) != config_.num_layers || s.size(1) != static_cast<int64_t>(B) ||
        s.size(2) != 1 || s.size(3) != config_.hidden_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "steering batch has shape [", absl::StrJoin(s.sizes(), ", "), "]; expected [",
          config_.num_layers, ", ", B, ", 1, ", config_.hidden_size, "]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> Transformer::ForwardPaged(const PagedForwardInput& input,
                                                     KvBlockPool* pool) const {
  if (pool == nullptr) return absl::InvalidArgumentError("a paged forward needs a pool");
  RETURN_IF_ERROR(ValidatePaged(input, *pool));
  return CatchTorchErrors("transformer forward", [&]() -> absl::StatusOr<at::Tensor> {
    c10::InferenceMode inference;
    return ForwardPagedImpl(input, pool);
  });
}

at::Tensor Transformer::ForwardPagedImpl(const PagedForwardInput& input,
                                         KvBlockPool* pool) const {
  const int64_t B = input.tokens.size();
  const auto long_opts = at::TensorOptions().dtype(at::kLong);
  // The packed tokens, rows one after another: where each sits (built once for every layer's attention) and its id.
  PagedTokens packed;
  std::vector<int64_t> ids, last_token(B);
  bool one_per_row = true;
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int32_t>& tokens = input.tokens[b];
    one_per_row &= tokens.size() == 1;
    for (size_t t = 0; t < tokens.size(); ++t) {
      packed.row.push_back(b);
      packed.position.push_back(input.cached[b] + static_cast<int64_t>(t));
      ids.push_back(tokens[t]);
    }
    last_token[b] = static_cast<int64_t>(ids.size()) - 1;
  }
  for (const std::vector<int32_t>* table : input.block_tables) {
    packed.block_tables.push_back(table->data());
  }
  const int64_t N = ids.size();
  // RoPE tables in float32, as Hugging Face computes them, then cast: [N, hd].
  auto [cos, sin] =
      RopeCosSin(inv_freq_, at::tensor(packed.position, long_opts).view({1, N}).to(device_));
  cos = cos.to(dtype_).view({N, config_.head_dim});
  sin = sin.to(dtype_).view({N, config_.head_dim});
  // Each token's steering row, for prefills (a decode step's rows are its tokens).
  at::Tensor steering_index;  // [N] int64
  if (input.steering.defined() && !one_per_row) {
    steering_index = at::tensor(packed.row, long_opts).to(device_);
  }
  const KernelPath path = input.prefill ? KernelPath::kBatchInvariant : KernelPath::kFast;
  at::Tensor x = at::embedding(embed_, at::tensor(ids, long_opts).to(device_));  // [N, d]
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const Layer& layer = layers_[l];
    x = x + PagedAttention(layer, RmsNorm(x, layer.input_norm, path), cos, sin, l, pool, input,
                           packed, path);
    x = x + Mlp(layer, RmsNorm(x, layer.post_norm, path), l, /*lora=*/nullptr, path);
    if (input.steering.defined()) {
      const at::Tensor rows = input.steering[l].select(1, 0);  // [B, d]
      x = x + (one_per_row ? rows : rows.index_select(0, steering_index));
    }
  }
  x = x.index_select(0, at::tensor(last_token, long_opts).to(device_));  // [B, d]
  return Linear(RmsNorm(x, final_norm_, path), lm_head_, at::Tensor(), path).to(at::kFloat);
}

at::Tensor Transformer::PagedAttention(const Layer& layer, const at::Tensor& h,
                                       const at::Tensor& cos, const at::Tensor& sin,
                                       int64_t layer_index, KvBlockPool* pool,
                                       const PagedForwardInput& input,
                                       const PagedTokens& tokens,
                                       KernelPath path) const {
  const int64_t N = h.size(0);
  const int64_t H = config_.num_heads, KVH = config_.num_kv_heads, hd = config_.head_dim;
  const int64_t G = H / KVH, bs = pool->block_size();
  const int64_t l = layer_index;
  at::Tensor q = Project(h, layer.q_w, layer.q_b, nullptr, l, LoraTarget::kQ, path);  // [N, H*hd]
  at::Tensor k = Project(h, layer.k_w, layer.k_b, nullptr, l, LoraTarget::kK, path);  // [N, KVH*hd]
  at::Tensor v = Project(h, layer.v_w, layer.v_b, nullptr, l, LoraTarget::kV, path);  // [N, KVH*hd]
  at::Tensor& pool_k = pool->keys(l);    // [KVH, blocks, bs, hd]
  at::Tensor& pool_v = pool->values(l);  // [KVH, blocks, bs, hd]
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  if (path != KernelPath::kTensorOps && CanUsePagedRopeAttention(pool_k)) {
    // RoPE, the cache writes and attention in one call; each token's result depends on
    // its own row only, so prefill and decode compute a position alike.
    return Project(PagedRopeAttention(q, k, v, cos, sin, pool_k, pool_v, tokens, scale),
                   layer.o_w, layer.o_b, nullptr, l, LoraTarget::kO, path);  // [N, d]
  }

  // The tensor-op path (other devices, CPUs without AVX-512): RoPE as Hugging Face
  // writes it, the new keys and values scattered into their slots, then each row's
  // queries against its gathered blocks with a causal mask.
  const at::Tensor cos3 = cos.unsqueeze(1), sin3 = sin.unsqueeze(1);  // [N, 1, hd]
  at::Tensor q3 = q.view({N, H, hd}), k3 = k.view({N, KVH, hd});
  q3 = q3 * cos3 + RotateHalf(q3) * sin3;
  k3 = k3 * cos3 + RotateHalf(k3) * sin3;
  std::vector<int64_t> slot_block(N), slot_offset(N);
  for (int64_t i = 0; i < N; ++i) {
    slot_block[i] = tokens.block_tables[tokens.row[i]][tokens.position[i] / bs];
    slot_offset[i] = tokens.position[i] % bs;
  }
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(device_);
  const at::Tensor blocks_t = at::tensor(slot_block, long_opts.device(at::kCPU)).to(device_);
  const at::Tensor offsets_t = at::tensor(slot_offset, long_opts.device(at::kCPU)).to(device_);
  using at::indexing::Slice;
  pool_k.index_put_({Slice(), blocks_t, offsets_t}, k3.transpose(0, 1));  // [KVH, N, hd]
  pool_v.index_put_({Slice(), blocks_t, offsets_t}, v.view({N, KVH, hd}).transpose(0, 1));

  std::vector<at::Tensor> outputs;  // per row: [T_b, H * hd]
  int64_t first_token = 0;
  for (size_t b = 0; b < input.tokens.size(); ++b) {
    const int64_t T = input.tokens[b].size(), S = input.cached[b] + T;
    const std::vector<int32_t>& table = *input.block_tables[b];
    const at::Tensor ids =
        at::tensor(std::vector<int64_t>(table.begin(), table.begin() + pool->BlocksFor(S)),
                   long_opts.device(at::kCPU))
            .to(device_);
    auto gather = [&](const at::Tensor& pool_tensor) {  // -> [KVH, S, hd]
      return pool_tensor.index_select(1, ids).reshape({KVH, -1, hd}).narrow(1, 0, S);
    };
    const at::Tensor keys = gather(pool_k), values = gather(pool_v);
    // [T, H, hd] -> [KVH, G*T, hd]: query head h = kv * G + g uses KV head kv.
    const at::Tensor rows_q = q3.narrow(0, first_token, T)
                                  .view({T, KVH, G, hd})
                                  .permute({1, 2, 0, 3})
                                  .reshape({KVH, G * T, hd});
    at::Tensor scores = at::matmul(rows_q, keys.transpose(1, 2)) * scale;  // [KVH, G*T, S]
    // Query t (position cached + t) sees columns up to its own.
    const at::Tensor hidden = at::arange(S, long_opts).view({1, S}) >
                              (at::arange(T, long_opts) + input.cached[b]).view({T, 1});  // [T, S]
    scores =
        scores.view({KVH, G, T, S}).masked_fill(hidden, -std::numeric_limits<float>::infinity());
    at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    at::Tensor out = at::matmul(probs.view({KVH, G * T, S}), values);  // [KVH, G*T, hd]
    outputs.push_back(out.view({KVH, G, T, hd}).permute({2, 0, 1, 3}).reshape({T, H * hd}));
    first_token += T;
  }
  at::Tensor attended = outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0);  // [N, H*hd]
  return Project(attended, layer.o_w, layer.o_b, nullptr, l, LoraTarget::kO, path);  // [N, d]
}

absl::StatusOr<at::Tensor> Transformer::LogitLens(const at::Tensor& vectors) const {
  if (!vectors.defined() || vectors.dim() != 2 || vectors.size(1) != config_.hidden_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("logit lens needs [N, ", config_.hidden_size, "] vectors"));
  }
  return CatchTorchErrors("logit lens", [&]() -> absl::StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;
    at::Tensor v = vectors.to(device_, at::kFloat) * final_norm_.to(at::kFloat);  // [N, d]
    return at::matmul(v, lm_head_.to(at::kFloat).t()).to(at::kCPU);             // [N, V]
  });
}

std::vector<at::Tensor> Transformer::Weights() const {
  std::vector<at::Tensor> out = {embed_, final_norm_};
  if (!config_.tie_word_embeddings) out.push_back(lm_head_);
  for (const Layer& layer : layers_) {
    for (const at::Tensor& t :
         {layer.input_norm, layer.q_w, layer.k_w, layer.v_w, layer.o_w, layer.q_b, layer.k_b,
          layer.v_b, layer.o_b, layer.post_norm, layer.gate_up_w, layer.gate_up_b, layer.down_w,
          layer.down_b}) {
      if (t.defined()) out.push_back(t);
    }
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> Transformer::NamedWeights() const {
  std::vector<std::pair<std::string, at::Tensor>> out = {
      {"model.embed_tokens.weight", embed_}, {"model.norm.weight", final_norm_}};
  if (!config_.tie_word_embeddings) out.push_back({"lm_head.weight", lm_head_});
  const int64_t I = config_.intermediate_size;
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const Layer& layer = layers_[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    auto add = [&](const std::string& name, const at::Tensor& t) {
      if (t.defined()) out.push_back({p + name, t});
    };
    add("input_layernorm.weight", layer.input_norm);
    add("self_attn.q_proj.weight", layer.q_w);
    add("self_attn.k_proj.weight", layer.k_w);
    add("self_attn.v_proj.weight", layer.v_w);
    add("self_attn.o_proj.weight", layer.o_w);
    add("self_attn.q_proj.bias", layer.q_b);
    add("self_attn.k_proj.bias", layer.k_b);
    add("self_attn.v_proj.bias", layer.v_b);
    add("self_attn.o_proj.bias", layer.o_b);
    add("post_attention_layernorm.weight", layer.post_norm);
    add("mlp.gate_proj.weight", layer.gate_up_w.narrow(0, 0, I));
    add("mlp.up_proj.weight", layer.gate_up_w.narrow(0, I, I));
    if (layer.gate_up_b.defined()) {
      add("mlp.gate_proj.bias", layer.gate_up_b.narrow(0, 0, I));
      add("mlp.up_proj.bias", layer.gate_up_b.narrow(0, I, I));
    }
    add("mlp.down_proj.weight", layer.down_w);
    add("mlp.down_proj.bias", layer.down_b);
  }
  return out;
}

absl::Status Transformer::MakeWeightsTrainable() {
  if (weights_trainable_) return absl::OkStatus();
  return CatchTorchErrors("making weights trainable", [&]() -> absl::Status {
    auto own = [](at::Tensor& t) {
      if (t.defined()) t = t.detach().clone().contiguous().set_requires_grad(true);
    };
    own(embed_);
    own(final_norm_);
    if (config_.tie_word_embeddings) {
      lm_head_ = embed_;
    } else {
      own(lm_head_);
    }
    for (Layer& layer : layers_) {
      for (at::Tensor* t : {&layer.input_norm, &layer.q_w, &layer.k_w, &layer.v_w, &layer.o_w,
                            &layer.q_b, &layer.k_b, &layer.v_b, &layer.o_b, &layer.post_norm,
                            &layer.gate_up_w, &layer.gate_up_b, &layer.down_w, &layer.down_b}) {
        own(*t);
      }
    }
    weights_trainable_ = true;
    return absl::OkStatus();
  });
}

absl::StatusOr<at::Tensor> ResidualRms(const Transformer& model,
                                       const std::vector<std::vector<int32_t>>& prompts) {
  std::vector<std::vector<at::Tensor>> per_layer(model.config().num_layers);
  for (const std::vector<int32_t>& prompt : prompts) {
    if (prompt.empty()) continue;
    std::vector<at::Tensor> outputs;  // [1, T, d] per layer
    ForwardInput input;
    RETURN_IF_ERROR(CatchTorchErrors("measuring the residual RMS", [&]() -> absl::Status {
      input.tokens = at::tensor(std::vector<int64_t>(prompt.begin(), prompt.end()),
                                at::TensorOptions().dtype(at::kLong))
                         .view({1, -1});  // [1, T]
      return absl::OkStatus();
    }));
    input.layer_outputs = &outputs;
    at::NoGradGuard no_grad;
    RETURN_IF_ERROR(model.Forward(input, nullptr).status());
    RETURN_IF_ERROR(CatchTorchErrors("measuring the residual RMS", [&]() -> absl::Status {
      for (size_t l = 0; l < outputs.size(); ++l) {
        per_layer[l].push_back(outputs[l][0].to(at::kFloat).pow(2).mean(-1).sqrt());  // [T]
      }
      return absl::OkStatus();
    }));
  }
  if (per_layer.empty() || per_layer[0].empty()) {
    return absl::InvalidArgumentError("measuring the residual RMS needs a non-empty prompt");
  }
  at::Tensor out;
  RETURN_IF_ERROR(CatchTorchErrors("measuring the residual RMS", [&]() -> absl::Status {
    std::vector<at::Tensor> medians;
    for (const auto& rms : per_layer) medians.push_back(at::cat(rms).median());
    out = at::stack(medians);  // [L]
    return absl::OkStatus();
  }));
  return out;
}

}  // namespace steerd
