#include "server/model/config.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using nlohmann::json;

constexpr char kLlamaArchitecture[] = "LlamaForCausalLM";
constexpr char kQwen2Architecture[] = "Qwen2ForCausalLM";
constexpr char kLlamaModelType[] = "llama";
constexpr char kQwen2ModelType[] = "qwen2";

// Field readers. They share one rule from Hugging Face's config classes: a null value
// means "use the default", exactly like an absent key.
class FieldReader {
 public:
  // `prefix` names the enclosing object in messages, e.g. "rope_scaling.".
  FieldReader(absl::string_view source, const json& object, absl::string_view prefix = "")
      : source_(source), prefix_(prefix), object_(object) {}

  absl::string_view source() const { return source_; }

  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", message));
  }

  // The value at `key`, or nullptr when absent or null.
  const json* Find(const char* key) const {
    auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  absl::StatusOr<int64_t> RequiredPositiveInt(const char* key) const {
    const json* value = Find(key);
    if (value == nullptr) {
      return Error(absl::StrCat(prefix_, key, " must be a positive integer (it is missing)"));
    }
    return PositiveInt(key, *value);
  }

  absl::StatusOr<int64_t> OptionalPositiveInt(const char* key, int64_t fallback) const {
    const json* value = Find(key);
    return value == nullptr ? fallback : PositiveInt(key, *value);
  }

  absl::StatusOr<double> RequiredPositiveNumber(const char* key) const {
    const json* value = Find(key);
    if (value == nullptr) {
      return Error(absl::StrCat(prefix_, key, " must be a positive number (it is missing)"));
    }
    return PositiveNumber(key, *value);
  }

  absl::StatusOr<double> OptionalPositiveNumber(const char* key, double fallback) const {
    const json* value = Find(key);
    return value == nullptr ? fallback : PositiveNumber(key, *value);
  }

  absl::StatusOr<bool> Bool(const char* key, bool fallback) const {
    const json* value = Find(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) {
      return Error(absl::StrCat(prefix_, key, " must be true or false, got ", Show(*value)));
    }
    return value->get<bool>();
  }

  // The string at `key`, or "" when absent or null.
  absl::StatusOr<std::string> String(const char* key) const {
    const json* value = Find(key);
    if (value == nullptr) return std::string();
    if (!value->is_string()) {
      return Error(absl::StrCat(prefix_, key, " must be a string, got ", Show(*value)));
    }
    return value->get<std::string>();
  }

  absl::StatusOr<std::optional<int64_t>> OptionalTokenId(const char* key) const {
    const json* value = Find(key);
    if (value == nullptr) return std::optional<int64_t>();
    ASSIGN_OR_RETURN(int64_t id, TokenId(key, *value));
    return std::optional<int64_t>(id);
  }

  // An int or a list of ints (models with several end tokens, e.g. Llama 3 Instruct).
  absl::StatusOr<std::vector<int64_t>> TokenIds(const char* key) const {
    std::vector<int64_t> ids;
    const json* value = Find(key);
    if (value == nullptr) return ids;
    if (!value->is_array()) {
      ASSIGN_OR_RETURN(int64_t id, TokenId(key, *value));
      ids.push_back(id);
      return ids;
    }
    for (const json& element : *value) {
      ASSIGN_OR_RETURN(int64_t id, TokenId(key, element));
      ids.push_back(id);
    }
    return ids;
  }

 private:
  // A short rendering of an offending value for messages.
  static std::string Show(const json& value) {
    constexpr size_t kMaxChars = 40;
    std::string text = value.dump();
    if (text.size() > kMaxChars) text = absl::StrCat(text.substr(0, kMaxChars), "...");
    return text;
  }

  // JSON integers above INT64_MAX parse as unsigned; they are out of range here.
  static bool ToInt64(const json& value, int64_t* out) {
    if (!value.is_number_integer()) return false;
    if (value.is_number_unsigned()) {
      const uint64_t u = value.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
      *out = static_cast<int64_t>(u);
      return true;
    }
    *out = value.get<int64_t>();
    return true;
  }

  absl::StatusOr<int64_t> PositiveInt(const char* key, const json& value) const {
    int64_t result = 0;
    if (!ToInt64(value, &result) || result <= 0) {
      return Error(absl::StrCat(prefix_, key, " must be a positive integer, got ", Show(value)));
    }
    return result;
  }

  absl::StatusOr<double> PositiveNumber(const char* key, const json& value) const {
    if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() <= 0) {
      return Error(absl::StrCat(prefix_, key, " must be a positive number, got ", Show(value)));
    }
    return value.get<double>();
  }

  absl::StatusOr<int64_t> TokenId(const char* key, const json& value) const {
    int64_t result = 0;
    if (!ToInt64(value, &result) || result < 0) {
      return Error(absl::StrCat(
          prefix_, key, " must be a non-negative integer or a list of them, got ", Show(value)));
    }
    return result;
  }

  absl::string_view source_;
  absl::string_view prefix_;
  const json& object_;
};

// Picks the architecture from architectures[0], falling back to model_type for
// configs that omit the list. A model_type naming a different family is refused: it
// is what Hugging Face's AutoConfig would dispatch on, so the math could differ.
absl::Status ParseArchitecture(const FieldReader& reader, ModelConfig* config) {
  ASSIGN_OR_RETURN(std::string model_type, reader.String("model_type"));
  std::string name;
  if (const json* architectures = reader.Find("architectures")) {
    if (!architectures->is_array()) {
      return reader.Error("architectures must be a list of strings");
    }
    if (!architectures->empty()) {
      const json& first = architectures->front();
      if (!first.is_string()) return reader.Error("architectures must be a list of strings");
      name = first.get<std::string>();
    }
  }
  if (name.empty()) {
    if (model_type == kLlamaModelType) {
      name = kLlamaArchitecture;
    } else if (model_type == kQwen2ModelType) {
      name = kQwen2Architecture;
    } else if (model_type.empty()) {
      return reader.Error("neither architectures nor model_type is set");
    } else {
      return reader.Error(
          absl::StrCat("model_type '", model_type, "' is not supported (supported: llama, qwen2)"));
    }
  }
  if (name == kLlamaArchitecture) {
    config->architecture = Architecture::kLlama;
    config->model_type = kLlamaModelType;
  } else if (name == kQwen2Architecture) {
    config->architecture = Architecture::kQwen2;
    config->model_type = kQwen2ModelType;
  } else {
    return reader.Error(absl::StrCat("architecture '", name, "' is not supported (supported: ",
                                     kLlamaArchitecture, ", ", kQwen2Architecture, ")"));
  }
  if (!model_type.empty() && model_type != config->model_type) {
    return reader.Error(absl::StrCat("model_type '", model_type, "' does not match architecture '",
                                     name, "' (expected '", config->model_type, "')"));
  }
  config->architecture_name = std::move(name);
  return absl::OkStatus();
}

absl::StatusOr<RopeScaling> ParseRopeScaling(const FieldReader& reader) {
  RopeScaling scaling;
  const json* value = reader.Find("rope_scaling");
  if (value == nullptr) return scaling;
  if (!value->is_object()) return reader.Error("rope_scaling must be an object or null");
  const FieldReader fields(reader.source(), *value, "rope_scaling.");
  // Older configs spell the key "type"; Hugging Face reads it as rope_type.
  ASSIGN_OR_RETURN(std::string type, fields.String("rope_type"));
  if (type.empty()) {
    ASSIGN_OR_RETURN(type, fields.String("type"));
  }
  if (type.empty()) return reader.Error("rope_scaling must name its rope_type");

  if (type == "default") return scaling;
  if (type == "linear") {
    scaling.type = RopeScaling::Type::kLinear;
    ASSIGN_OR_RETURN(scaling.factor, fields.RequiredPositiveNumber("factor"));
    return scaling;
  }
  if (type == "llama3") {
    scaling.type = RopeScaling::Type::kLlama3;
    ASSIGN_OR_RETURN(scaling.factor, fields.RequiredPositiveNumber("factor"));
    ASSIGN_OR_RETURN(scaling.low_freq_factor, fields.RequiredPositiveNumber("low_freq_factor"));
    ASSIGN_OR_RETURN(scaling.high_freq_factor, fields.RequiredPositiveNumber("high_freq_factor"));
    ASSIGN_OR_RETURN(scaling.original_max_position_embeddings,
                     fields.RequiredPositiveInt("original_max_position_embeddings"));
    // The smooth band between the two wavelengths divides by their difference.
    if (scaling.high_freq_factor <= scaling.low_freq_factor) {
      return reader.Error(absl::StrCat("rope_scaling.high_freq_factor (", scaling.high_freq_factor,
                                       ") must be greater than low_freq_factor (",
                                       scaling.low_freq_factor, ")"));
    }
    return scaling;
  }
  return reader.Error(absl::StrCat("rope_scaling type '", type, "' is not supported"));
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source) {
  json root;
  try {
    root = json::parse(json_text.begin(), json_text.end());
  } catch (const json::exception& e) {
    // Not only parse_error: a number too large for a double (1e999) is out_of_range.
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON: ", e.what()));
  }
  const FieldReader reader(source, root);
  if (!root.is_object()) return reader.Error("must be a JSON object");

  ModelConfig config;
  RETURN_IF_ERROR(ParseArchitecture(reader, &config));
  const bool is_llama = config.architecture == Architecture::kLlama;

  ASSIGN_OR_RETURN(config.vocab_size, reader.RequiredPositiveInt("vocab_size"));
  ASSIGN_OR_RETURN(config.hidden_size, reader.RequiredPositiveInt("hidden_size"));
  ASSIGN_OR_RETURN(config.intermediate_size, reader.RequiredPositiveInt("intermediate_size"));
  ASSIGN_OR_RETURN(config.num_layers, reader.RequiredPositiveInt("num_hidden_layers"));
  ASSIGN_OR_RETURN(config.num_heads, reader.RequiredPositiveInt("num_attention_heads"));
  ASSIGN_OR_RETURN(config.num_kv_heads,
                   reader.OptionalPositiveInt("num_key_value_heads", config.num_heads));
  if (config.num_heads % config.num_kv_heads != 0) {
    return reader.Error(absl::StrCat("num_key_value_heads (", config.num_kv_heads,
                                     ") must divide num_attention_heads (", config.num_heads, ")"));
  }
  if (reader.Find("head_dim") != nullptr) {
    ASSIGN_OR_RETURN(config.head_dim, reader.RequiredPositiveInt("head_dim"));
  } else {
    if (config.hidden_size % config.num_heads != 0) {
      return reader.Error(absl::StrCat("hidden_size (", config.hidden_size,
                                       ") must be divisible by num_attention_heads (",
                                       config.num_heads, ") when head_dim is not given"));
    }
    config.head_dim = config.hidden_size / config.num_heads;
  }
  // Rotary embeddings rotate pairs of channels.
  if (config.head_dim % 2 != 0) {
    return reader.Error(
        absl::StrCat("head_dim (", config.head_dim, ") must be even for rotary embeddings"));
  }
  // Hugging Face's defaults for LlamaConfig and Qwen2Config.
  ASSIGN_OR_RETURN(config.max_position_embeddings,
                   reader.OptionalPositiveInt("max_position_embeddings", is_llama ? 2048 : 32768));

  ASSIGN_OR_RETURN(config.rope_theta, reader.OptionalPositiveNumber("rope_theta", 10000.0));
  ASSIGN_OR_RETURN(config.rope_scaling, ParseRopeScaling(reader));
  ASSIGN_OR_RETURN(config.rms_norm_eps, reader.OptionalPositiveNumber("rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(config.tie_word_embeddings, reader.Bool("tie_word_embeddings", false));

  ASSIGN_OR_RETURN(std::string hidden_act, reader.String("hidden_act"));
  if (!hidden_act.empty() && hidden_act != "silu") {
    return reader.Error(
        absl::StrCat("hidden_act '", hidden_act, "' is not supported (supported: silu)"));
  }

  if (is_llama) {
    ASSIGN_OR_RETURN(const bool attention_bias, reader.Bool("attention_bias", false));
    config.qkv_bias = attention_bias;
    config.o_bias = attention_bias;
    ASSIGN_OR_RETURN(config.mlp_bias, reader.Bool("mlp_bias", false));
  } else {
    // Qwen2 hard-codes biases on q/k/v only and has no attention_bias switch.
    config.qkv_bias = true;
    config.o_bias = false;
    config.mlp_bias = false;
    // Sliding-window attention changes which keys a query sees on long inputs.
    ASSIGN_OR_RETURN(const bool sliding_window, reader.Bool("use_sliding_window", false));
    if (sliding_window) return reader.Error("use_sliding_window true is not supported");
  }

  // Newer transformers versions write "dtype" instead of "torch_dtype".
  ASSIGN_OR_RETURN(std::string torch_dtype, reader.String("torch_dtype"));
  if (torch_dtype.empty()) {
    ASSIGN_OR_RETURN(torch_dtype, reader.String("dtype"));
  }
  if (torch_dtype.empty()) torch_dtype = "float32";
  if (torch_dtype != "float32" && torch_dtype != "bfloat16" && torch_dtype != "float16") {
    return reader.Error(absl::StrCat("torch_dtype '", torch_dtype,
                                     "' is not supported (supported: float32, bfloat16, "
                                     "float16)"));
  }
  config.torch_dtype = std::move(torch_dtype);

  ASSIGN_OR_RETURN(config.bos_token_id, reader.OptionalTokenId("bos_token_id"));
  ASSIGN_OR_RETURN(config.eos_token_ids, reader.TokenIds("eos_token_id"));
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = absl::StrCat(
      model_dir, !model_dir.empty() && model_dir.back() == '/' ? "" : "/", "config.json");
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  std::string text;
  char buffer[1 << 16];
  size_t read = 0;
  while ((read = std::fread(buffer, 1, sizeof(buffer), file)) > 0) text.append(buffer, read);
  const bool failed = std::ferror(file) != 0;
  const int read_errno = errno;
  std::fclose(file);
  if (failed) return absl::ErrnoToStatus(read_errno, absl::StrCat(path, ": cannot read"));
  return ParseModelConfig(text, path);
}

std::string ModelConfigToJson(const ModelConfig& config) {
  const bool is_llama = config.architecture == Architecture::kLlama;
  // nlohmann's default object sorts keys, as Hugging Face's save_pretrained does.
  json out = json::object();
  out["architectures"] = json::array({is_llama ? kLlamaArchitecture : kQwen2Architecture});
  out["model_type"] = is_llama ? kLlamaModelType : kQwen2ModelType;
  out["vocab_size"] = config.vocab_size;
  out["hidden_size"] = config.hidden_size;
  out["intermediate_size"] = config.intermediate_size;
  out["num_hidden_layers"] = config.num_layers;
  out["num_attention_heads"] = config.num_heads;
  out["num_key_value_heads"] = config.num_kv_heads;
  out["head_dim"] = config.head_dim;
  out["max_position_embeddings"] = config.max_position_embeddings;
  out["rope_theta"] = config.rope_theta;
  out["rms_norm_eps"] = config.rms_norm_eps;
  out["tie_word_embeddings"] = config.tie_word_embeddings;
  out["hidden_act"] = "silu";
  out["torch_dtype"] = config.torch_dtype;

  const RopeScaling& rope = config.rope_scaling;
  switch (rope.type) {
    case RopeScaling::Type::kNone:
      out["rope_scaling"] = nullptr;
      break;
    case RopeScaling::Type::kLinear:
      out["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope.factor}};
      break;
    case RopeScaling::Type::kLlama3:
      out["rope_scaling"] = {
          {"rope_type", "llama3"},
          {"factor", rope.factor},
          {"low_freq_factor", rope.low_freq_factor},
          {"high_freq_factor", rope.high_freq_factor},
          {"original_max_position_embeddings", rope.original_max_position_embeddings}};
      break;
  }

  // Qwen2's biases follow from the architecture; Llama's one switch covers q/k/v/o.
  if (is_llama) {
    out["attention_bias"] = config.qkv_bias;
    out["mlp_bias"] = config.mlp_bias;
  }

  if (config.bos_token_id.has_value()) out["bos_token_id"] = *config.bos_token_id;
  if (config.eos_token_ids.size() == 1) {
    out["eos_token_id"] = config.eos_token_ids.front();
  } else if (!config.eos_token_ids.empty()) {
    out["eos_token_id"] = config.eos_token_ids;
  }
  return out.dump(/*indent=*/2) + "\n";
}

}  // namespace steerd
