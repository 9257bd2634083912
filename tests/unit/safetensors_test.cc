#include "server/model/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/model/config.h"

namespace steerd {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using json = nlohmann::json;
using ShapeMap = std::map<std::string, std::vector<int64_t>>;

std::string ModelDir(const std::string& name) {
  return std::string(STEERD_FIXTURES_DIR) + "/hf-reference/" + name;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

std::string LittleEndian64(uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return bytes;
}

// A file from a raw header text and data section, without any validation.
std::string Pack(const std::string& header, const std::string& data) {
  return LittleEndian64(header.size()) + header + data;
}

// A fresh folder under the test temp dir, removed with its contents afterwards.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/safetensors_test.XXXXXX";
    char* made = ::mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr);
    path_ = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

// The Hugging Face state_dict names and shapes a config implies (fixture README,
// "Weight files").
ShapeMap ExpectedWeightShapes(const ModelConfig& c) {
  const int64_t q_out = c.num_heads * c.head_dim;
  const int64_t kv_out = c.num_kv_heads * c.head_dim;
  ShapeMap shapes;
  shapes["model.embed_tokens.weight"] = {c.vocab_size, c.hidden_size};
  shapes["model.norm.weight"] = {c.hidden_size};
  if (!c.tie_word_embeddings) shapes["lm_head.weight"] = {c.vocab_size, c.hidden_size};
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    shapes[p + "input_layernorm.weight"] = {c.hidden_size};
    shapes[p + "post_attention_layernorm.weight"] = {c.hidden_size};
    shapes[p + "self_attn.q_proj.weight"] = {q_out, c.hidden_size};
    shapes[p + "self_attn.k_proj.weight"] = {kv_out, c.hidden_size};
    shapes[p + "self_attn.v_proj.weight"] = {kv_out, c.hidden_size};
    shapes[p + "self_attn.o_proj.weight"] = {c.hidden_size, q_out};
    if (c.qkv_bias) {
      shapes[p + "self_attn.q_proj.bias"] = {q_out};
      shapes[p + "self_attn.k_proj.bias"] = {kv_out};
      shapes[p + "self_attn.v_proj.bias"] = {kv_out};
    }
    shapes[p + "mlp.gate_proj.weight"] = {c.intermediate_size, c.hidden_size};
    shapes[p + "mlp.up_proj.weight"] = {c.intermediate_size, c.hidden_size};
    shapes[p + "mlp.down_proj.weight"] = {c.hidden_size, c.intermediate_size};
  }
  return shapes;
}

// The arrays in cases.safetensors (fixture README, "cases.json schema").
ShapeMap ExpectedCaseShapes(const ModelConfig& c) {
  const std::vector<int64_t> lengths = {1, 7, 33};
  const std::vector<int64_t> padded_lengths = {6, 11};
  ShapeMap shapes;
  for (size_t k = 0; k < lengths.size(); ++k) {
    const std::string p = absl::StrCat("forward.", k, ".");
    shapes[p + "input_ids"] = {lengths[k]};
    shapes[p + "logits"] = {lengths[k], c.vocab_size};
    shapes[p + "steered_logits"] = {lengths[k], c.vocab_size};
  }
  shapes["hidden_states_len7.hidden"] = {c.num_layers + 2, 7, c.hidden_size};
  shapes["hidden_states_len7.steered_hidden"] = {c.num_layers + 2, 7, c.hidden_size};
  shapes["generate.prompt"] = {5};
  shapes["generate.sequence"] = {29};
  shapes["generate.steered_sequence"] = {29};
  shapes["generate.step_logits"] = {24, c.vocab_size};
  shapes["generate.steered_step_logits"] = {24, c.vocab_size};
  shapes["padded.input_ids"] = {2, 11};
  shapes["padded.attention_mask"] = {2, 11};
  shapes["padded.position_ids"] = {2, 11};
  for (size_t b = 0; b < padded_lengths.size(); ++b) {
    const std::string p = absl::StrCat("padded.", b, ".");
    shapes[p + "logits"] = {padded_lengths[b], c.vocab_size};
    shapes[p + "logits_default_position_ids"] = {padded_lengths[b], c.vocab_size};
    shapes[p + "steered_logits"] = {padded_lengths[b], c.vocab_size};
  }
  shapes["gradient.loss"] = {1};
  shapes["gradient.grad_S"] = {c.num_layers, c.hidden_size};
  shapes["steering_vector"] = {c.num_layers, c.hidden_size};
  shapes["rope_inv_freq"] = {c.head_dim / 2};
  return shapes;
}

// The integer arrays in cases.safetensors; everything else there is F32.
DType CaseDType(const std::string& name) {
  static const std::set<std::string>* const kIds = new std::set<std::string>{
      "forward.0.input_ids", "forward.1.input_ids",   "forward.2.input_ids",
      "generate.prompt",     "generate.sequence",     "generate.steered_sequence",
      "padded.input_ids",    "padded.attention_mask", "padded.position_ids"};
  return kIds->count(name) ? DType::kI64 : DType::kF32;
}

// Checks names, shapes, sizes and the alignment of every view. Safetensors pads only
// the header, so a tensor is aligned for its dtype only when the tensors before it
// keep it so: true for single-dtype weight files, while the I64 arrays that follow
// odd-sized F32 ones in cases.safetensors sit at 4 (mod 8). `alignment` 0 asks for
// the dtype size.
void ExpectTensors(const SafetensorsFile& file, const ShapeMap& expected,
                   const std::function<DType(const std::string&)>& dtype_of, size_t alignment = 0) {
  std::vector<std::string> names;
  for (const auto& [name, view] : file.tensors()) names.push_back(name);
  std::vector<std::string> expected_names;
  for (const auto& [name, shape] : expected) expected_names.push_back(name);
  EXPECT_THAT(names, ElementsAreArray(expected_names)) << file.source();

  for (const auto& [name, view] : file.tensors()) {
    SCOPED_TRACE(name);
    auto it = expected.find(name);
    if (it == expected.end()) continue;
    EXPECT_EQ(view.name, name);
    EXPECT_EQ(view.shape, it->second);
    EXPECT_EQ(view.dtype, dtype_of(name));
    EXPECT_EQ(view.nbytes, static_cast<size_t>(view.numel()) * DTypeSize(view.dtype));
    ASSERT_NE(view.data, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(view.data) %
                  (alignment == 0 ? DTypeSize(view.dtype) : alignment),
              0u);
  }
}

ModelConfig LoadConfigOrDie(const std::string& model) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(ModelDir(model));
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : ModelConfig();
}

std::vector<float> Floats(const TensorView& view) {
  std::vector<float> values(static_cast<size_t>(view.numel()));
  std::memcpy(values.data(), view.data, view.nbytes);
  return values;
}

std::vector<int64_t> Ints(const TensorView& view) {
  std::vector<int64_t> values(static_cast<size_t>(view.numel()));
  std::memcpy(values.data(), view.data, view.nbytes);
  return values;
}

class FixtureWeightsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureWeightsTest, MatchesConfigAndParameterNames) {
  const std::string model = GetParam();
  const ModelConfig config = LoadConfigOrDie(model);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(ModelDir(model) + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const ShapeMap expected = ExpectedWeightShapes(config);
  ExpectTensors(**file, expected, [](const std::string&) { return DType::kF32; });
  EXPECT_EQ((*file)->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));

  // The names Hugging Face reported when it wrote the file agree with the config.
  const json cases = json::parse(ReadFile(ModelDir(model) + "/cases.json"));
  std::vector<std::string> parameter_names = cases.at("parameter_names");
  std::sort(parameter_names.begin(), parameter_names.end());
  std::vector<std::string> names;
  for (const auto& [name, shape] : expected) names.push_back(name);
  EXPECT_EQ(names, parameter_names);
}

TEST_P(FixtureWeightsTest, CasesMatchTheirJson) {
  const std::string model = GetParam();
  const ModelConfig config = LoadConfigOrDie(model);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(ModelDir(model) + "/cases.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  ExpectTensors(**file, ExpectedCaseShapes(config), CaseDType, /*alignment=*/4);

  // The views point at the right bytes: compare a few arrays with cases.json.
  const json cases = json::parse(ReadFile(ModelDir(model) + "/cases.json"));
  absl::StatusOr<TensorView> ids = (*file)->Get("forward.1.input_ids");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(Ints(*ids), cases.at("forward").at(1).at("input_ids").get<std::vector<int64_t>>());

  absl::StatusOr<TensorView> steering = (*file)->Get("steering_vector");
  ASSERT_TRUE(steering.ok()) << steering.status();
  std::vector<float> expected_steering;
  for (const json& row : cases.at("steering_vector").at("values")) {
    for (const json& value : row) expected_steering.push_back(value.get<float>());
  }
  EXPECT_EQ(Floats(*steering), expected_steering);

  absl::StatusOr<TensorView> inv_freq = (*file)->Get("rope_inv_freq");
  ASSERT_TRUE(inv_freq.ok()) << inv_freq.status();
  EXPECT_EQ(Floats(*inv_freq), cases.at("rope_inv_freq").get<std::vector<float>>());
}

INSTANTIATE_TEST_SUITE_P(Models, FixtureWeightsTest, ::testing::Values("qwen2-tiny", "llama-tiny"),
                         [](const ::testing::TestParamInfo<std::string>& param_info) {
                           std::string name = param_info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

uint16_t RoundToBf16(float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t round_bit = (bits >> 16) & 1;
  return static_cast<uint16_t>((bits + 0x7fff + round_bit) >> 16);
}

TEST(SafetensorsFixtureTest, Bf16ShardsHoldTheRoundedLlamaWeights) {
  const std::string dir = ModelDir("llama-tiny-bf16-sharded");
  const ModelConfig config = LoadConfigOrDie("llama-tiny-bf16-sharded");
  const json index = json::parse(ReadFile(dir + "/model.safetensors.index.json"));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f32 =
      SafetensorsFile::Open(ModelDir("llama-tiny") + "/model.safetensors");
  ASSERT_TRUE(f32.ok()) << f32.status();

  const ShapeMap all = ExpectedWeightShapes(config);
  size_t seen = 0;
  uint64_t total_bytes = 0;
  for (const std::string shard :
       {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    SCOPED_TRACE(shard);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(dir + "/" + shard);
    ASSERT_TRUE(file.ok()) << file.status();
    ShapeMap expected;
    for (const auto& [name, file_name] : index.at("weight_map").items()) {
      if (file_name == shard) expected[name] = all.at(name);
    }
    ASSERT_FALSE(expected.empty());
    ExpectTensors(**file, expected, [](const std::string&) { return DType::kBF16; });
    for (const auto& [name, view] : (*file)->tensors()) {
      SCOPED_TRACE(name);
      ++seen;
      total_bytes += view.nbytes;
      absl::StatusOr<TensorView> original = (*f32)->Get(name);
      ASSERT_TRUE(original.ok()) << original.status();
      const std::vector<float> values = Floats(*original);
      std::vector<uint16_t> rounded(values.size());
      for (size_t i = 0; i < values.size(); ++i) rounded[i] = RoundToBf16(values[i]);
      ASSERT_EQ(view.nbytes, rounded.size() * sizeof(uint16_t));
      EXPECT_EQ(std::memcmp(view.data, rounded.data(), view.nbytes), 0);
    }
  }
  EXPECT_EQ(seen, all.size());
  EXPECT_EQ(total_bytes, index.at("metadata").at("total_size").get<uint64_t>());
}

TEST(SafetensorsFixtureTest, Bf16Cases) {
  const std::string dir = ModelDir("llama-tiny-bf16-sharded");
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir + "/cases.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  ShapeMap expected;
  for (int64_t k : {0, 1, 2}) {
    const int64_t length = std::vector<int64_t>{1, 7, 33}[k];
    expected[absl::StrCat("forward.", k, ".logits")] = {length, 300};
    expected[absl::StrCat("forward.", k, ".steered_logits")] = {length, 300};
  }
  expected["generate.sequence"] = {29};
  expected["generate.step_logits"] = {24, 300};
  ExpectTensors(**file, expected, CaseDType, /*alignment=*/4);
  const json cases = json::parse(ReadFile(dir + "/cases.json"));
  EXPECT_EQ(Ints((*file)->Get("generate.sequence").value()),
            cases.at("generate").at("sequence").get<std::vector<int64_t>>());
}

TEST(SafetensorsTest, GetNamesTheTensorAndFile) {
  const std::string path = ModelDir("qwen2-tiny") + "/model.safetensors";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->source(), path);
  // Tied model: no lm_head.
  absl::StatusOr<TensorView> missing = (*file)->Get("lm_head.weight");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("'lm_head.weight'"));
}

TEST(SafetensorsTest, OpenMissingFileIsNotFound) {
  const std::string path = ModelDir("qwen2-tiny") + "/no-such.safetensors";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
}

TEST(SafetensorsTest, OpenDirectoryIsRejected) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir.path());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(dir.path()));
}

TEST(SafetensorsTest, DTypeNames) {
  for (DType dtype : {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64, DType::kI32,
                      DType::kI16, DType::kI8, DType::kU8, DType::kBool}) {
    absl::StatusOr<DType> parsed = ParseDType(DTypeName(dtype));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, dtype);
  }
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_EQ(DTypeSize(DType::kBool), 1u);
  EXPECT_EQ(ParseDType("f32").status().code(), absl::StatusCode::kInvalidArgument);
}

// Tensors of every kind a steerd file holds, given out of name order on purpose.
struct RoundTripData {
  std::vector<float> f32 = {1.5f, -2.0f, 0.0f, 3.25f, 1e-30f, -7.0f};
  std::vector<uint16_t> bf16 = {0x3f80, 0xbf80, 0x7f80, 0x0001, 0x4049};
  std::vector<int64_t> i64 = {0, -1, int64_t{1} << 40};
  float scalar = 42.0f;

  std::vector<TensorToWrite> Tensors() const {
    return {
        {"steering", DType::kF32, {2, 3}, f32.data()}, {"b.bf16", DType::kBF16, {5}, bf16.data()},
        {"ids", DType::kI64, {3}, i64.data()},         {"scalar", DType::kF32, {}, &scalar},
        {"empty", DType::kF32, {0, 4}, nullptr},
    };
  }
};

void ExpectRoundTripData(const SafetensorsFile& file, const RoundTripData& in) {
  std::vector<std::string> names;
  for (const auto& [name, view] : file.tensors()) names.push_back(name);
  EXPECT_THAT(names, ElementsAre("b.bf16", "empty", "ids", "scalar", "steering"));

  TensorView steering = file.Get("steering").value();
  EXPECT_EQ(steering.dtype, DType::kF32);
  EXPECT_THAT(steering.shape, ElementsAre(2, 3));
  EXPECT_EQ(Floats(steering), in.f32);

  TensorView bf16 = file.Get("b.bf16").value();
  EXPECT_EQ(bf16.dtype, DType::kBF16);
  EXPECT_THAT(bf16.shape, ElementsAre(5));
  ASSERT_EQ(bf16.nbytes, in.bf16.size() * 2);
  EXPECT_EQ(std::memcmp(bf16.data, in.bf16.data(), bf16.nbytes), 0);

  TensorView ids = file.Get("ids").value();
  EXPECT_EQ(ids.dtype, DType::kI64);
  EXPECT_EQ(Ints(ids), in.i64);

  TensorView scalar = file.Get("scalar").value();
  EXPECT_TRUE(scalar.shape.empty());
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(Floats(scalar), std::vector<float>{in.scalar});

  TensorView empty = file.Get("empty").value();
  EXPECT_THAT(empty.shape, ElementsAre(0, 4));
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_EQ(empty.nbytes, 0u);

  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "steerd.steering.v1"},
                                                                 {"num_layers", "2"}}));
}

TEST(SafetensorsTest, SerializeRoundTrip) {
  RoundTripData data;
  const std::map<std::string, std::string> metadata = {{"num_layers", "2"},
                                                       {"format", "steerd.steering.v1"}};
  absl::StatusOr<std::string> bytes = SerializeSafetensors(data.Tensors(), metadata);
  ASSERT_TRUE(bytes.ok()) << bytes.status();

  // Layout: the header is padded to 8 bytes and lists __metadata__ first, then the
  // tensors by name with contiguous data.
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | uint8_t((*bytes)[i]);
  EXPECT_EQ(header_size % 8, 0u);
  const std::string header = bytes->substr(8, header_size);
  EXPECT_THAT(header, StartsWith(R"({"__metadata__":{"format":"steerd.steering.v1")"));
  EXPECT_LT(header.find("\"b.bf16\""), header.find("\"empty\""));
  EXPECT_LT(header.find("\"ids\""), header.find("\"steering\""));
  const json parsed = json::parse(header);
  EXPECT_EQ(parsed["b.bf16"]["data_offsets"], json::array({0, 10}));
  EXPECT_EQ(parsed["ids"]["data_offsets"], json::array({10, 34}));
  EXPECT_EQ(parsed["steering"]["data_offsets"], json::array({38, 62}));
  EXPECT_EQ(bytes->size(), 8 + header_size + 62);

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::FromBuffer(*bytes, "upload");
  ASSERT_TRUE(file.ok()) << file.status();
  ExpectRoundTripData(**file, data);
}

TEST(SafetensorsTest, SerializeWithoutMetadataOrTensors) {
  absl::StatusOr<std::string> bytes = SerializeSafetensors({}, {});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(bytes->size(), 16u);  // Length, "{}" and six spaces of padding.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::FromBuffer(*bytes, "empty");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST(SafetensorsTest, SerializeRejectsBadInput) {
  const float values[4] = {1, 2, 3, 4};
  struct Case {
    std::vector<TensorToWrite> tensors;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"w", DType::kF32, {2}, values}, {"w", DType::kF32, {2}, values}},
       "tensor 'w' is given twice"},
      {{{"w", DType::kF32, {2, 2}, nullptr}}, "tensor 'w': data is null"},
      {{{"w", DType::kF32, {-1, 2}, values}}, "tensor 'w': shape [-1, 2]"},
      {{{"w", DType::kF32, {int64_t{1} << 40, int64_t{1} << 40}, values}}, "tensor 'w': shape"},
      {{{"__metadata__", DType::kF32, {1}, values}}, "'__metadata__' is reserved"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    absl::StatusOr<std::string> bytes = SerializeSafetensors(c.tensors, {});
    EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(bytes.status().message()), HasSubstr(c.message));
  }
  // Names must be valid UTF-8 to be JSON.
  absl::StatusOr<std::string> bytes =
      SerializeSafetensors({{"bad\xff", DType::kF32, {1}, values}}, {});
  EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, WriteIsAtomicAndLeavesNoTemporaryFile) {
  TempDir dir;
  const std::string path = dir.path() + "/vector.safetensors";
  RoundTripData data;
  const std::map<std::string, std::string> metadata = {{"format", "steerd.steering.v1"},
                                                       {"num_layers", "2"}};
  ASSERT_TRUE(WriteSafetensors(path, data.Tensors(), metadata).ok());
  EXPECT_THAT(dir.Entries(), ElementsAre("vector.safetensors"));
  EXPECT_EQ(ReadFile(path), *SerializeSafetensors(data.Tensors(), metadata));
  {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    ExpectRoundTripData(**file, data);
  }

  // Replacing keeps a reader of the old file intact: it holds the old inode.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> old_file = SafetensorsFile::Open(path);
  ASSERT_TRUE(old_file.ok()) << old_file.status();
  const float replacement[2] = {9, 8};
  ASSERT_TRUE(WriteSafetensors(path, {{"w", DType::kF32, {2}, replacement}}, {}).ok());
  EXPECT_THAT(dir.Entries(), ElementsAre("vector.safetensors"));
  ExpectRoundTripData(**old_file, data);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> new_file = SafetensorsFile::Open(path);
  ASSERT_TRUE(new_file.ok()) << new_file.status();
  EXPECT_EQ(Floats((*new_file)->Get("w").value()), std::vector<float>({9, 8}));

  // A rejected input leaves the existing file alone.
  absl::Status bad = WriteSafetensors(path, {{"w", DType::kF32, {2}, nullptr}}, {});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.message()), HasSubstr(path));
  EXPECT_THAT(dir.Entries(), ElementsAre("vector.safetensors"));
}

TEST(SafetensorsTest, WriteIntoMissingDirectoryFails) {
  TempDir dir;
  const std::string path = dir.path() + "/missing/vector.safetensors";
  const float value = 1;
  absl::Status status = WriteSafetensors(path, {{"w", DType::kF32, {1}, &value}}, {});
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr(path));
  EXPECT_TRUE(dir.Entries().empty());
}

// A valid file: "a" F32 [2, 2] (16 bytes) then "b" I64 [3] (24 bytes).
std::string ValidFile() {
  const float a[4] = {1, 2, 3, 4};
  const int64_t b[3] = {5, 6, 7};
  absl::StatusOr<std::string> bytes = SerializeSafetensors(
      {{"a", DType::kF32, {2, 2}, a}, {"b", DType::kI64, {3}, b}}, {{"k", "v"}});
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : std::string();
}

std::string OneTensor(const std::string& entry, size_t data_bytes) {
  return Pack(absl::StrCat(R"({"w":)", entry, "}"), std::string(data_bytes, '\0'));
}

struct CorruptCase {
  std::string name;
  std::string bytes;
  absl::StatusCode code;
  std::vector<std::string> mentions;  // Besides the source, always checked.
};

std::vector<CorruptCase> CorruptCases() {
  const std::string valid = ValidFile();
  const uint64_t header_size = valid.size() - 40 - 8;
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  const auto kDataLoss = absl::StatusCode::kDataLoss;
  return {
      {"EmptyFile", "", kDataLoss, {"fewer than the 8-byte header length"}},
      {"ShorterThanLength", valid.substr(0, 5), kDataLoss, {"5 bytes"}},
      {"TruncatedInHeader",
       valid.substr(0, 8 + header_size / 2),
       kDataLoss,
       {"header length", "truncated"}},
      {"TruncatedAtDataStart",
       valid.substr(0, 8 + header_size),
       kDataLoss,
       {"tensor 'a'", "truncated"}},
      {"TruncatedMidData",
       valid.substr(0, valid.size() - 3),
       kDataLoss,
       {"tensor 'b'", "truncated"}},
      {"HeaderLengthAbsurd",
       LittleEndian64(200'000'000) + "{}",
       kInvalid,
       {"header length 200000000 exceeds"}},
      {"HeaderLengthMaxU64", LittleEndian64(~uint64_t{0}) + "{}", kInvalid, {"exceeds"}},
      {"InvalidJson", Pack(R"({"w": {"dtype": )", ""), kInvalid, {"not valid JSON"}},
      // Found by the safetensors fuzzer: a number too large for a double is nlohmann's
      // out_of_range, not parse_error, and escaped as an exception.
      {"NumberOverflowsDouble", Pack(R"({"w": {"dtype": "F32", "shape": [1e999]}})", ""),
       kInvalid, {"not valid JSON"}},
      {"HeaderNotAnObject", Pack("[1, 2]", ""), kInvalid, {"must be a JSON object"}},
      {"NulPaddedHeader", Pack(std::string("{}\0\0", 4), ""), kInvalid, {"not valid JSON"}},
      {"OffsetsPastTheData",
       OneTensor(R"({"dtype": "F32", "shape": [2], "data_offsets": [8, 16]})", 8),
       kDataLoss,
       {"tensor 'w'", "[8, 16]"}},
      {"OffsetsHuge",
       OneTensor(R"({"dtype": "U8", "shape": [8],
                     "data_offsets": [18446744073709551600, 18446744073709551608]})",
                 8),
       kDataLoss,
       {"tensor 'w'"}},
      {"OffsetsReversed",
       OneTensor(R"({"dtype": "F32", "shape": [0], "data_offsets": [8, 0]})", 8),
       kInvalid,
       {"tensor 'w'", "end before they begin"}},
      {"OffsetsNotAPair",
       OneTensor(R"({"dtype": "F32", "shape": [2], "data_offsets": [0]})", 8),
       kInvalid,
       {"tensor 'w'", "[begin, end]"}},
      {"OffsetsNegative",
       OneTensor(R"({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]})", 8),
       kInvalid,
       {"tensor 'w'", "non-negative"}},
      {"OffsetsNotIntegers",
       OneTensor(R"({"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]})", 8),
       kInvalid,
       {"tensor 'w'", "data_offsets"}},
      {"Overlapping",
       Pack(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
            std::string(12, '\0')),
       kInvalid,
       {"tensor 'y'", "overlaps tensor 'x'"}},
      {"SameRangeTwice",
       Pack(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "y": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})",
            std::string(8, '\0')),
       kInvalid,
       {"overlaps"}},
      {"WrongByteCount",
       OneTensor(R"({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]})", 12),
       kInvalid,
       {"tensor 'w'", "hold 8 bytes", "needs 12"}},
      {"UnknownDtype",
       OneTensor(R"({"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]})", 2),
       kInvalid,
       {"tensor 'w'", "unknown dtype 'F8_E4M3'"}},
      {"DtypeNotAString",
       OneTensor(R"({"dtype": 4, "shape": [2], "data_offsets": [0, 8]})", 8),
       kInvalid,
       {"tensor 'w'", "'dtype'"}},
      {"MissingDtype",
       OneTensor(R"({"shape": [2], "data_offsets": [0, 8]})", 8),
       kInvalid,
       {"tensor 'w'", "'dtype'"}},
      {"MissingShape",
       OneTensor(R"({"dtype": "F32", "data_offsets": [0, 8]})", 8),
       kInvalid,
       {"tensor 'w'", "'shape'"}},
      {"MissingOffsets",
       OneTensor(R"({"dtype": "F32", "shape": [2]})", 8),
       kInvalid,
       {"tensor 'w'", "'data_offsets'"}},
      {"NegativeShape",
       OneTensor(R"({"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 0]})", 0),
       kInvalid,
       {"tensor 'w'", "dimension -1 is negative"}},
      {"FractionalShape",
       OneTensor(R"({"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]})", 8),
       kInvalid,
       {"tensor 'w'", "'shape'"}},
      {"ShapeNotAnArray",
       OneTensor(R"({"dtype": "F32", "shape": 2, "data_offsets": [0, 8]})", 8),
       kInvalid,
       {"tensor 'w'", "'shape'"}},
      {"ShapeOverflow",
       OneTensor(R"({"dtype": "F32", "shape": [4294967296, 4294967296],
                     "data_offsets": [0, 0]})",
                 0),
       kInvalid,
       {"tensor 'w'", "overflows"}},
      {"ByteCountOverflow",
       OneTensor(R"({"dtype": "F64", "shape": [4611686018427387904],
                     "data_offsets": [0, 0]})",
                 0),
       kInvalid,
       {"tensor 'w'", "overflows"}},
      {"EntryNotAnObject", OneTensor("5", 0), kInvalid, {"tensor 'w'"}},
      {"MetadataValueNotAString",
       Pack(R"({"__metadata__": {"format": "pt", "n": 1}})", ""),
       kInvalid,
       {"__metadata__", "'n'"}},
      {"MetadataNotAnObject", Pack(R"({"__metadata__": ["pt"]})", ""), kInvalid, {"__metadata__"}},
  };
}

class CorruptFileTest : public ::testing::TestWithParam<CorruptCase> {};

void ExpectRejected(const absl::StatusOr<std::unique_ptr<SafetensorsFile>>& file,
                    const CorruptCase& c, const std::string& source) {
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), c.code) << file.status();
  EXPECT_THAT(std::string(file.status().message()), StartsWith(source + ": "));
  for (const std::string& mention : c.mentions) {
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(mention));
  }
}

TEST_P(CorruptFileTest, FromBufferRejects) {
  const CorruptCase& c = GetParam();
  ExpectRejected(SafetensorsFile::FromBuffer(c.bytes, "upload.safetensors"), c,
                 "upload.safetensors");
}

TEST_P(CorruptFileTest, OpenRejects) {
  const CorruptCase& c = GetParam();
  TempDir dir;
  const std::string path = dir.path() + "/" + c.name + ".safetensors";
  WriteFile(path, c.bytes);
  ExpectRejected(SafetensorsFile::Open(path), c, path);
}

INSTANTIATE_TEST_SUITE_P(Table, CorruptFileTest, ::testing::ValuesIn(CorruptCases()),
                         [](const ::testing::TestParamInfo<CorruptCase>& param_info) {
                           return param_info.param.name;
                         });

TEST(SafetensorsTest, AcceptsWhatOtherWritersProduce) {
  // Null metadata (read as absent by the reference implementation), extra entry
  // keys, empty tensors sharing an offset, and unpadded headers are all valid.
  const std::string bytes = Pack(
      R"({"__metadata__": null,
          "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1},
          "e1": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]},
          "e2": {"dtype": "BOOL", "shape": [0, 5], "data_offsets": [8, 8]}})",
      std::string(8, '\0'));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::FromBuffer(bytes, "other");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 3u);
  EXPECT_TRUE((*file)->metadata().empty());
}

}  // namespace
}  // namespace steerd
