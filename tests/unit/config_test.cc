#include "server/model/config.h"

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace steerd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;
using json = nlohmann::json;

constexpr char kSource[] = "models/x/config.json";

std::string ModelDir(const std::string& name) {
  return std::string(STEERD_FIXTURES_DIR) + "/hf-reference/" + name;
}

// A complete, valid Llama config that the error cases below each break in one place.
json ValidLlama() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 1024,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    "tie_word_embeddings": false,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2
  })");
}

absl::StatusOr<ModelConfig> Parse(const json& config) {
  return ParseModelConfig(config.dump(), kSource);
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.architecture_name, b.architecture_name);
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  // Exact: doubles must survive the JSON round trip bit for bit.
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings,
            b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
  EXPECT_EQ(a.o_bias, b.o_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
}

void ExpectRoundTrip(const ModelConfig& config) {
  const std::string text = ModelConfigToJson(config);
  absl::StatusOr<ModelConfig> reparsed = ParseModelConfig(text, "round-trip");
  ASSERT_TRUE(reparsed.ok()) << reparsed.status() << "\n" << text;
  ExpectSameConfig(config, *reparsed);
}

TEST(ConfigTest, Qwen2TinyFixture) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(ModelDir("qwen2-tiny"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, Architecture::kQwen2);
  EXPECT_EQ(config->architecture_name, "Qwen2ForCausalLM");
  EXPECT_EQ(config->model_type, "qwen2");
  EXPECT_EQ(config->vocab_size, 320);
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->intermediate_size, 160);
  EXPECT_EQ(config->num_layers, 3);
  EXPECT_EQ(config->num_heads, 4);
  EXPECT_EQ(config->num_kv_heads, 2);
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_EQ(config->max_position_embeddings, 512);
  EXPECT_EQ(config->rope_theta, 1e6);
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_EQ(config->rms_norm_eps, 1e-6);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_TRUE(config->qkv_bias);
  EXPECT_FALSE(config->o_bias);
  EXPECT_FALSE(config->mlp_bias);
  EXPECT_EQ(config->torch_dtype, "float32");
  EXPECT_FALSE(config->bos_token_id.has_value());
  EXPECT_THAT(config->eos_token_ids, IsEmpty());
  ExpectRoundTrip(*config);
}

void ExpectLlamaTiny(const ModelConfig& config) {
  EXPECT_EQ(config.architecture, Architecture::kLlama);
  EXPECT_EQ(config.architecture_name, "LlamaForCausalLM");
  EXPECT_EQ(config.model_type, "llama");
  EXPECT_EQ(config.vocab_size, 300);
  EXPECT_EQ(config.hidden_size, 64);
  EXPECT_EQ(config.intermediate_size, 176);
  EXPECT_EQ(config.num_layers, 3);
  EXPECT_EQ(config.num_heads, 8);
  EXPECT_EQ(config.num_kv_heads, 2);
  EXPECT_EQ(config.head_dim, 8);
  EXPECT_EQ(config.max_position_embeddings, 1024);
  EXPECT_EQ(config.rope_theta, 5e5);
  EXPECT_EQ(config.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(config.rope_scaling.factor, 8.0);
  EXPECT_EQ(config.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(config.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(config.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_EQ(config.rms_norm_eps, 1e-5);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_FALSE(config.qkv_bias);
  EXPECT_FALSE(config.o_bias);
  EXPECT_FALSE(config.mlp_bias);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_THAT(config.eos_token_ids, ElementsAre(2));
}

TEST(ConfigTest, LlamaTinyFixture) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(ModelDir("llama-tiny"));
  ASSERT_TRUE(config.ok()) << config.status();
  ExpectLlamaTiny(*config);
  EXPECT_EQ(config->torch_dtype, "float32");
  ExpectRoundTrip(*config);
}

TEST(ConfigTest, LlamaTinyBf16ShardedFixture) {
  // A trailing slash on the folder must not matter.
  absl::StatusOr<ModelConfig> config = LoadModelConfig(ModelDir("llama-tiny-bf16-sharded") + "/");
  ASSERT_TRUE(config.ok()) << config.status();
  ExpectLlamaTiny(*config);
  EXPECT_EQ(config->torch_dtype, "bfloat16");
  ExpectRoundTrip(*config);
}

TEST(ConfigTest, MissingFileIsNotFound) {
  const std::string dir = ModelDir("no-such-model");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(dir + "/config.json"));
}

TEST(ConfigTest, Llama31ConfigAsPublished) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false,
    "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})",
                                                        kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->bos_token_id, 128000);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(128001, 128008, 128009));
  EXPECT_EQ(config->rope_scaling.original_max_position_embeddings, 8192);
  ExpectRoundTrip(*config);
}

TEST(ConfigTest, Qwen25ConfigAsPublished) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(R"({
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
    "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
    "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2",
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
    "vocab_size": 151936})",
                                                        kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_TRUE(config->qkv_bias);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(151645));
  ExpectRoundTrip(*config);
}

TEST(ConfigTest, DefaultsForLlama) {
  json minimal = json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4})");
  absl::StatusOr<ModelConfig> config = Parse(minimal);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->num_kv_heads, 4);
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_EQ(config->rope_theta, 10000.0);
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_EQ(config->rms_norm_eps, 1e-6);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_FALSE(config->qkv_bias);
  EXPECT_FALSE(config->o_bias);
  EXPECT_FALSE(config->mlp_bias);
  EXPECT_EQ(config->torch_dtype, "float32");
  EXPECT_FALSE(config->bos_token_id.has_value());
  EXPECT_THAT(config->eos_token_ids, IsEmpty());
  ExpectRoundTrip(*config);

  // Hugging Face reads null as "use the default".
  for (const char* key : {"num_key_value_heads", "head_dim", "rope_scaling", "rope_theta",
                          "eos_token_id", "bos_token_id", "torch_dtype"}) {
    json with_null = minimal;
    with_null[key] = nullptr;
    absl::StatusOr<ModelConfig> same = Parse(with_null);
    ASSERT_TRUE(same.ok()) << key << ": " << same.status();
    ExpectSameConfig(*config, *same);
  }
}

TEST(ConfigTest, DefaultsForQwen2FromModelType) {
  // Without "architectures" the model_type decides.
  absl::StatusOr<ModelConfig> config = ParseModelConfig(R"({
    "model_type": "qwen2", "vocab_size": 100, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "attention_bias": false})",
                                                        kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, Architecture::kQwen2);
  EXPECT_EQ(config->architecture_name, "Qwen2ForCausalLM");
  EXPECT_EQ(config->max_position_embeddings, 32768);
  // Qwen2 always has q/k/v biases; attention_bias is not one of its fields.
  EXPECT_TRUE(config->qkv_bias);
  EXPECT_FALSE(config->o_bias);
  ExpectRoundTrip(*config);
}

TEST(ConfigTest, LlamaBiases) {
  json config = ValidLlama();
  config["attention_bias"] = true;
  config["mlp_bias"] = true;
  absl::StatusOr<ModelConfig> parsed = Parse(config);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->qkv_bias);
  EXPECT_TRUE(parsed->o_bias);
  EXPECT_TRUE(parsed->mlp_bias);
  ExpectRoundTrip(*parsed);
}

TEST(ConfigTest, RopeScalingVariants) {
  json config = ValidLlama();
  config["rope_scaling"] = {{"type", "linear"}, {"factor", 2.5}};  // Legacy key.
  absl::StatusOr<ModelConfig> parsed = Parse(config);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_EQ(parsed->rope_scaling.factor, 2.5);
  ExpectRoundTrip(*parsed);

  config["rope_scaling"] = {{"rope_type", "default"}};
  parsed = Parse(config);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->rope_scaling.type, RopeScaling::Type::kNone);
}

TEST(ConfigTest, DtypeKeyOfNewerTransformers) {
  json config = ValidLlama();
  config.erase("torch_dtype");
  config["dtype"] = "bfloat16";
  absl::StatusOr<ModelConfig> parsed = Parse(config);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->torch_dtype, "bfloat16");
}

TEST(ConfigTest, ToJsonLooksLikeHuggingFace) {
  absl::StatusOr<ModelConfig> config = Parse(ValidLlama());
  ASSERT_TRUE(config.ok()) << config.status();
  const json written = json::parse(ModelConfigToJson(*config));
  EXPECT_EQ(written["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(written["model_type"], "llama");
  EXPECT_EQ(written["num_hidden_layers"], 3);
  EXPECT_EQ(written["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(written["rope_scaling"]["original_max_position_embeddings"], 64);
  EXPECT_EQ(written["hidden_act"], "silu");
  // A single end token is written as a plain int, as Hugging Face does.
  EXPECT_TRUE(written["eos_token_id"].is_number_integer());
  EXPECT_EQ(written["bos_token_id"], 1);

  ModelConfig qwen = *config;
  qwen.architecture = Architecture::kQwen2;
  qwen.rope_scaling = RopeScaling();
  qwen.eos_token_ids.clear();
  qwen.bos_token_id.reset();
  const json qwen_written = json::parse(ModelConfigToJson(qwen));
  EXPECT_EQ(qwen_written["architectures"], json::array({"Qwen2ForCausalLM"}));
  EXPECT_EQ(qwen_written["model_type"], "qwen2");
  EXPECT_TRUE(qwen_written["rope_scaling"].is_null());
  EXPECT_FALSE(qwen_written.contains("eos_token_id"));
  EXPECT_FALSE(qwen_written.contains("bos_token_id"));
}

struct BadConfigCase {
  std::string name;
  std::function<void(json&)> mutate;
  std::string message;
};

class BadConfigTest : public ::testing::TestWithParam<BadConfigCase> {};

TEST_P(BadConfigTest, IsRejectedNamingTheField) {
  json config = ValidLlama();
  GetParam().mutate(config);
  absl::StatusOr<ModelConfig> parsed = Parse(config);
  ASSERT_FALSE(parsed.ok()) << config.dump();
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(parsed.status().message()), StartsWith(std::string(kSource) + ": "));
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    Table, BadConfigTest,
    ::testing::Values(
        BadConfigCase{"UnknownArchitecture",
                      [](json& c) {
                        c["architectures"] = json::array({"MistralForCausalLM"});
                        c["model_type"] = "mistral";
                      },
                      "architecture 'MistralForCausalLM' is not supported (supported: "
                      "LlamaForCausalLM, Qwen2ForCausalLM)"},
        BadConfigCase{"UnknownModelTypeWithoutArchitectures",
                      [](json& c) {
                        c.erase("architectures");
                        c["model_type"] = "gemma";
                      },
                      "model_type 'gemma' is not supported"},
        BadConfigCase{"NoArchitectureAtAll",
                      [](json& c) {
                        c.erase("architectures");
                        c.erase("model_type");
                      },
                      "neither architectures nor model_type"},
        BadConfigCase{"ModelTypeMismatch", [](json& c) { c["model_type"] = "qwen2"; },
                      "model_type 'qwen2' does not match architecture 'LlamaForCausalLM'"},
        BadConfigCase{"ArchitecturesNotAList",
                      [](json& c) { c["architectures"] = "LlamaForCausalLM"; },
                      "architectures must be a list of strings"},
        BadConfigCase{"YarnRope",
                      [](json& c) {
                        c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
                      },
                      "rope_scaling type 'yarn' is not supported"},
        BadConfigCase{"DynamicRopeLegacyKey",
                      [](json& c) {
                        c["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
                      },
                      "rope_scaling type 'dynamic' is not supported"},
        BadConfigCase{"RopeScalingWithoutType",
                      [](json& c) {
                        c["rope_scaling"] = {{"factor", 2.0}};
                      },
                      "rope_scaling must name its rope_type"},
        BadConfigCase{"RopeScalingNotAnObject", [](json& c) { c["rope_scaling"] = "llama3"; },
                      "rope_scaling must be an object"},
        BadConfigCase{"Llama3MissingLowFreqFactor",
                      [](json& c) { c["rope_scaling"].erase("low_freq_factor"); },
                      "rope_scaling.low_freq_factor must be a positive number"},
        BadConfigCase{"Llama3MissingOriginalMaxPositions",
                      [](json& c) { c["rope_scaling"].erase("original_max_position_embeddings"); },
                      "rope_scaling.original_max_position_embeddings"},
        BadConfigCase{"Llama3HighNotAboveLow",
                      [](json& c) { c["rope_scaling"]["high_freq_factor"] = 1.0; },
                      "rope_scaling.high_freq_factor (1) must be greater than "
                      "low_freq_factor (1)"},
        BadConfigCase{"LinearZeroFactor",
                      [](json& c) {
                        c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 0}};
                      },
                      "rope_scaling.factor must be a positive number, got 0"},
        BadConfigCase{"OddHeadDim", [](json& c) { c["head_dim"] = 7; },
                      "head_dim (7) must be even"},
        BadConfigCase{"OddDerivedHeadDim",
                      [](json& c) {
                        c.erase("head_dim");
                        c["hidden_size"] = 56;
                      },
                      "head_dim (7) must be even"},
        BadConfigCase{"HiddenNotDivisibleByHeads",
                      [](json& c) {
                        c.erase("head_dim");
                        c["num_attention_heads"] = 6;
                        c["num_key_value_heads"] = 3;
                      },
                      "hidden_size (64) must be divisible by num_attention_heads (6)"},
        BadConfigCase{"KvHeadsDoNotDivideHeads", [](json& c) { c["num_key_value_heads"] = 3; },
                      "num_key_value_heads (3) must divide num_attention_heads (8)"},
        BadConfigCase{"StringWhereIntExpected", [](json& c) { c["hidden_size"] = "64"; },
                      "hidden_size must be a positive integer, got \"64\""},
        BadConfigCase{"FloatWhereIntExpected", [](json& c) { c["vocab_size"] = 300.5; },
                      "vocab_size must be a positive integer"},
        BadConfigCase{"BoolWhereIntExpected", [](json& c) { c["num_hidden_layers"] = true; },
                      "num_hidden_layers must be a positive integer"},
        BadConfigCase{"HugeInt", [](json& c) { c["intermediate_size"] = 18446744073709551615ull; },
                      "intermediate_size must be a positive integer"},
        BadConfigCase{"MissingHiddenSize", [](json& c) { c.erase("hidden_size"); },
                      "hidden_size must be a positive integer (it is missing)"},
        BadConfigCase{"ZeroLayers", [](json& c) { c["num_hidden_layers"] = 0; },
                      "num_hidden_layers must be a positive integer, got 0"},
        BadConfigCase{"ZeroMaxPositions", [](json& c) { c["max_position_embeddings"] = 0; },
                      "max_position_embeddings must be a positive integer"},
        BadConfigCase{"StringRopeTheta", [](json& c) { c["rope_theta"] = "1e4"; },
                      "rope_theta must be a positive number"},
        BadConfigCase{"NegativeEps", [](json& c) { c["rms_norm_eps"] = -1e-6; },
                      "rms_norm_eps must be a positive number"},
        BadConfigCase{"GeluActivation", [](json& c) { c["hidden_act"] = "gelu"; },
                      "hidden_act 'gelu' is not supported"},
        BadConfigCase{"BadTorchDtype", [](json& c) { c["torch_dtype"] = "int8"; },
                      "torch_dtype 'int8' is not supported"},
        BadConfigCase{"TorchDtypeNotAString", [](json& c) { c["torch_dtype"] = 16; },
                      "torch_dtype must be a string"},
        BadConfigCase{"TieNotABool", [](json& c) { c["tie_word_embeddings"] = "yes"; },
                      "tie_word_embeddings must be true or false"},
        BadConfigCase{"AttentionBiasNotABool", [](json& c) { c["attention_bias"] = 1; },
                      "attention_bias must be true or false"},
        BadConfigCase{"EosListWithString",
                      [](json& c) {
                        c["eos_token_id"] = json::array({2, "3"});
                      },
                      "eos_token_id must be a non-negative integer"},
        BadConfigCase{"NegativeBos", [](json& c) { c["bos_token_id"] = -1; },
                      "bos_token_id must be a non-negative integer"},
        BadConfigCase{"Qwen2SlidingWindow",
                      [](json& c) {
                        c["architectures"] = json::array({"Qwen2ForCausalLM"});
                        c["model_type"] = "qwen2";
                        c.erase("rope_scaling");
                        c["use_sliding_window"] = true;
                      },
                      "use_sliding_window"},
        BadConfigCase{"RootNotAnObject",
                      [](json& c) {
                        c = json::array({1, 2});
                      },
                      "must be a JSON object"}),
    [](const ::testing::TestParamInfo<BadConfigCase>& param_info) {
      return param_info.param.name;
    });

TEST(ConfigTest, InvalidJsonNamesTheSource) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig("{\"vocab_size\": 3,", kSource);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()),
              StartsWith(std::string(kSource) + ": invalid JSON"));

  config = ParseModelConfig("", kSource);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);

  // As the safetensors fuzzer found for its header: a number beyond a double's range
  // is nlohmann's out_of_range, not parse_error, and escaped as an exception.
  config = ParseModelConfig("{\"rope_theta\": 1e999}", kSource);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()),
              StartsWith(std::string(kSource) + ": invalid JSON"));
}

}  // namespace
}  // namespace steerd
