#include "server/model/weights.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "server/model/safetensors.h"
#include "server/model/torch_util.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

namespace fs = std::filesystem;

// Maps tensor name -> shard file name, from the index or the single-file layout.
absl::StatusOr<std::map<std::string, std::string>> ReadShardMap(const std::string& model_dir) {
  const fs::path dir(model_dir);
  const fs::path single = dir / "model.safetensors";
  const fs::path index = dir / "model.safetensors.index.json";
  std::map<std::string, std::string> shard_of;
  if (fs::exists(index)) {
    std::ifstream in(index);
    std::stringstream text;
    text << in.rdbuf();
    nlohmann::json json = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": not valid JSON"));
    }
    auto map = json.find("weight_map");
    if (map == json.end() || !map->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index.string(), ": missing object field 'weight_map'"));
    }
    for (auto it = map->begin(); it != map->end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            index.string(), ": weight_map['", it.key(), "'] must be a file name string"));
      }
      const std::string file = it.value().get<std::string>();
      if (file.find('/') != std::string::npos || file == "..") {
        return absl::InvalidArgumentError(absl::StrCat(
            index.string(), ": shard '", file, "' must be a file in the model folder"));
      }
      shard_of[it.key()] = file;
    }
    return shard_of;
  }
  if (!fs::exists(single)) {
    return absl::NotFoundError(absl::StrCat(model_dir,
                                            ": no model.safetensors or "
                                            "model.safetensors.index.json"));
  }
  return shard_of;  // Empty: every tensor lives in model.safetensors.
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedWeightShapes(
    const ModelConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  const int64_t q_dim = c.num_heads * c.head_dim;
  const int64_t kv_dim = c.num_kv_heads * c.head_dim;
  shapes.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    shapes.push_back({p + "input_layernorm.weight", {c.hidden_size}});
    shapes.push_back({p + "self_attn.q_proj.weight", {q_dim, c.hidden_size}});
    shapes.push_back({p + "self_attn.k_proj.weight", {kv_dim, c.hidden_size}});
    shapes.push_back({p + "self_attn.v_proj.weight", {kv_dim, c.hidden_size}});
    if (c.qkv_bias) {
      shapes.push_back({p + "self_attn.q_proj.bias", {q_dim}});
      shapes.push_back({p + "self_attn.k_proj.bias", {kv_dim}});
      shapes.push_back({p + "self_attn.v_proj.bias", {kv_dim}});
    }
    shapes.push_back({p + "self_attn.o_proj.weight", {c.hidden_size, q_dim}});
    if (c.o_bias) shapes.push_back({p + "self_attn.o_proj.bias", {c.hidden_size}});
    shapes.push_back({p + "post_attention_layernorm.weight", {c.hidden_size}});
    shapes.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size}});
    shapes.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, c.hidden_size}});
    shapes.push_back({p + "mlp.down_proj.weight", {c.hidden_size, c.intermediate_size}});
    if (c.mlp_bias) {
      shapes.push_back({p + "mlp.gate_proj.bias", {c.intermediate_size}});
      shapes.push_back({p + "mlp.up_proj.bias", {c.intermediate_size}});
      shapes.push_back({p + "mlp.down_proj.bias", {c.hidden_size}});
    }
  }
  shapes.push_back({"model.norm.weight", {c.hidden_size}});
  if (!c.tie_word_embeddings) shapes.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
  return shapes;
}

absl::StatusOr<LoadedWeights> LoadWeights(const std::string& model_dir,
                                          const ModelConfig& config, at::ScalarType dtype,
                                          const at::Device& device) {
  ASSIGN_OR_RETURN(auto shard_of, ReadShardMap(model_dir));
  std::map<std::string, std::shared_ptr<SafetensorsFile>> open_files;
  auto file_for = [&](const std::string& name) -> absl::StatusOr<SafetensorsFile*> {
    std::string file = "model.safetensors";
    if (!shard_of.empty()) {
      auto it = shard_of.find(name);
      if (it == shard_of.end()) {
        return absl::NotFoundError(absl::StrCat(
            model_dir, "/model.safetensors.index.json: no shard holds tensor '", name, "'"));
      }
      file = it->second;
    }
    auto& slot = open_files[file];
    if (slot == nullptr) {
      ASSIGN_OR_RETURN(auto opened, SafetensorsFile::Open((fs::path(model_dir) / file).string()));
      slot = std::move(opened);
    }
    return slot.get();
  };

  LoadedWeights weights;
  for (const auto& [name, shape] : ExpectedWeightShapes(config)) {
    ASSIGN_OR_RETURN(SafetensorsFile * file, file_for(name));
    ASSIGN_OR_RETURN(TensorView view, file->Get(name));
    if (view.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          file->source(), ": tensor '", name, "' has shape [", absl::StrJoin(view.shape, ", "),
          "] but config.json implies [", absl::StrJoin(shape, ", "), "]"));
    }
    if (view.dtype != DType::kF32 && view.dtype != DType::kBF16 && view.dtype != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat(file->source(), ": tensor '", name,
                                                     "' has dtype ", DTypeName(view.dtype),
                                                     "; weights must be F32, BF16 or F16"));
    }
    std::shared_ptr<const void> owner = open_files[shard_of.empty() ? "model.safetensors"
                                                                    : shard_of[name]];
    ASSIGN_OR_RETURN(at::Tensor mapped, TensorFromView(view, std::move(owner)));
    ASSIGN_OR_RETURN(at::Tensor tensor,
                     CatchTorchErrors("converting weights", [&]() -> absl::StatusOr<at::Tensor> {
                       // Zero-copy when dtype and device already match.
                       return mapped.to(device, dtype);
                     }));
    weights.file_bytes += static_cast<int64_t>(view.nbytes);
    weights.tensors[name] = std::move(tensor);
  }
  return weights;
}

}  // namespace steerd
