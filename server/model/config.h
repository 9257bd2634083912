// The architecture hyper-parameters of a Hugging Face causal LM, read from its
// config.json. Every field that changes the math is parsed (head_dim, rope_theta and
// rope_scaling, rms_norm_eps, tied embeddings, attention biases, grouped KV heads, ...);
// anything steerd cannot compute exactly (an unknown architecture, activation or rope
// type) is rejected with a status naming the field instead of being approximated.
#ifndef STEERD_SERVER_MODEL_CONFIG_H_
#define STEERD_SERVER_MODEL_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace steerd {

enum class Architecture { kLlama, kQwen2 };

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  // llama3 only.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string architecture_name;  // As in config.json, e.g. "Qwen2ForCausalLM".
  std::string model_type;         // "llama" or "qwen2".

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;        // num_hidden_layers
  int64_t num_heads = 0;         // num_attention_heads
  int64_t num_kv_heads = 0;      // num_key_value_heads (defaults to num_heads)
  int64_t head_dim = 0;          // head_dim, or hidden_size / num_heads when absent
  int64_t max_position_embeddings = 0;

  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-6;

  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2 always; Llama when attention_bias is true.
  bool o_bias = false;    // Llama with attention_bias only.
  bool mlp_bias = false;  // Llama mlp_bias.

  std::string torch_dtype = "float32";  // "float32", "bfloat16" or "float16".
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // eos_token_id may be an int or a list.
};

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source);

// Reads and parses `<model_dir>/config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// Serialises a config as Hugging Face would write it (used by `steerd init-model`).
// Round-trips through ParseModelConfig.
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_CONFIG_H_
