#include "server/model/weights.h"

#include <sys/mman.h>
#include <unistd.h>

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

// Anonymous memory for all CPU weights, 2 MiB aligned and advised to use transparent
// huge pages. Tensors are views into it; it is unmapped when the last one dies.
class WeightArena {
 public:
  static constexpr size_t kHugePage = size_t{2} << 20;

  static absl::StatusOr<std::shared_ptr<WeightArena>> Create(size_t bytes) {
    const size_t length = (bytes + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
    void* reserved = ::mmap(nullptr, length, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserved == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", bytes, " bytes for the model weights"));
    }
    auto arena = std::shared_ptr<WeightArena>(new WeightArena(reserved, length));
    // Huge pages need 2 MiB-aligned virtual addresses; without THP this is a no-op.
    const uintptr_t start = reinterpret_cast<uintptr_t>(reserved);
    arena->base_ = reinterpret_cast<char*>((start + kHugePage - 1) / kHugePage * kHugePage);
    ::madvise(arena->base_, length - kHugePage, MADV_HUGEPAGE);
    return arena;
  }
  ~WeightArena() { ::munmap(reserved_, length_); }
  char* base() const { return base_; }

 private:
  WeightArena(void* reserved, size_t length) : reserved_(reserved), length_(length) {}
  void* reserved_;
  size_t length_;
  char* base_ = nullptr;
};

// Drops the whole pages of [data, data + bytes) from this process (the file's page
// cache keeps them): a copied tensor's source then no longer counts in RSS.
void ReleaseMappedRange(const void* data, size_t bytes) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace

absl::StatusOr<WeightPlacement> ParseWeightPlacement(const std::string& name) {
  if (name == "hugepages") return WeightPlacement::kHugePages;
  if (name == "mapped") return WeightPlacement::kMapped;
  return absl::InvalidArgumentError(
      absl::StrCat("--weights '", name, "' is not one of mapped, hugepages"));
}

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
                                          const at::Device& device, WeightPlacement placement) {
  ASSIGN_OR_RETURN(auto shard_of, ReadShardMap(model_dir));
  std::map<std::string, std::shared_ptr<SafetensorsFile>> open_files;
  auto file_for = [&](const std::string& name) -> absl::StatusOr<std::shared_ptr<SafetensorsFile>> {
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
    return slot;
  };

  // Validate every tensor before allocating or copying anything.
  struct Source {
    std::string name;
    TensorView view;
    std::shared_ptr<SafetensorsFile> file;
  };
  std::vector<Source> sources;
  size_t arena_bytes = 0;
  const size_t element = at::elementSize(dtype);
  for (const auto& [name, shape] : ExpectedWeightShapes(config)) {
    ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> file, file_for(name));
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
    // Back to back (no padding) so that adjacent tensors such as gate_proj and up_proj
    // stay adjacent, as in the file.
    arena_bytes += static_cast<size_t>(view.numel()) * element;
    sources.push_back({name, std::move(view), std::move(file)});
  }

  const bool use_arena = placement == WeightPlacement::kHugePages && device.is_cpu();
  std::shared_ptr<WeightArena> arena;
  if (use_arena) {
    ASSIGN_OR_RETURN(arena, WeightArena::Create(arena_bytes));
  }
  LoadedWeights weights;
  size_t offset = 0;
  for (Source& source : sources) {
    ASSIGN_OR_RETURN(at::Tensor mapped, TensorFromView(source.view, source.file));
    ASSIGN_OR_RETURN(
        at::Tensor tensor,
        CatchTorchErrors("loading weights", [&]() -> absl::StatusOr<at::Tensor> {
          if (!use_arena) return mapped.to(device, dtype);  // Zero-copy when dtypes match.
          at::Tensor placed = at::from_blob(arena->base() + offset, mapped.sizes(),
                                            [arena](void*) {}, at::TensorOptions().dtype(dtype));
          placed.copy_(mapped);
          return placed;
        }));
    if (use_arena) {
      ReleaseMappedRange(source.view.data, source.view.nbytes);
      offset += static_cast<size_t>(tensor.numel()) * element;
    }
    weights.file_bytes += static_cast<int64_t>(source.view.nbytes);
    weights.tensors[source.name] = std::move(tensor);
  }
  return weights;
}

}  // namespace steerd
