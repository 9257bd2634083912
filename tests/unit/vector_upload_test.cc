// ValidateVectorUpload and ReadVectorValues: uploads the vector_upload fuzzer (or its
// review) showed to matter, and the bounds on magnitudes and metadata; torch-free.
#include "server/engine/vector_upload.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "server/model/safetensors.h"
#include "server/model/steering_format.h"

namespace steerd {
namespace {

using ::testing::HasSubstr;

std::string LittleEndian64(uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return bytes;
}

// BF16 bits of a float (exact for the values used here).
std::string Bf16Bytes(const std::vector<float>& values) {
  std::string out;
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    out.push_back(static_cast<char>((bits >> 16) & 0xff));
    out.push_back(static_cast<char>((bits >> 24) & 0xff));
  }
  return out;
}

// A [2, 4] model whose residual RMS is 0.5 at layer 0 and 2.0 at layer 1.
VectorTarget Target() {
  VectorTarget target;
  target.model = "m";
  target.fingerprint = "qwen2:2x4";
  target.num_layers = 2;
  target.hidden_size = 4;
  target.residual_rms = {0.5f, 2.0f};
  return target;
}

// An unpadded header of odd length puts the BF16 data at an odd byte offset: reading
// it through a uint16_t pointer was a misaligned load (UBSan), now it is memcpy.
TEST(VectorUploadTest, Bf16DataAtAnOddOffset) {
  const std::vector<float> values = {0.5f, -1.0f, 2.0f, 0.0f, 1.5f, -0.25f, 3.0f, 1.0f};
  std::string header =
      R"({"steering":{"dtype":"BF16","shape":[2,4],"data_offsets":[0,16]}})";
  if ((8 + header.size()) % 2 == 0) header += " ";
  const std::string bytes = LittleEndian64(header.size()) + header + Bf16Bytes(values);

  absl::StatusOr<ValidatedVector> validated = ValidateVectorUpload(bytes, Target());
  ASSERT_TRUE(validated.ok()) << validated.status();
  EXPECT_EQ(validated->dtype, "BF16");
  ASSERT_EQ(validated->layer_norms.size(), 2u);
  EXPECT_FLOAT_EQ(validated->layer_norms[0], 2.2912878f);  // sqrt(0.25 + 1 + 4)

  absl::StatusOr<std::vector<float>> read = ReadVectorValues(bytes, "upload");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, values);
}

std::string VectorFile(const std::vector<float>& values, int64_t layers, int64_t hidden,
                       std::map<std::string, std::string> metadata = {}) {
  auto bytes = SerializeSafetensors({{"steering", DType::kF32, {layers, hidden}, values.data()}},
                                    metadata);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : std::string();
}

// Before the fix a vector of all 3e38 was accepted, and at scale 100 it crashed the
// server (with top-k) or produced NaN logprobs with status OK.
TEST(VectorUploadTest, RefusesValuesFarAboveTheResidualScale) {
  auto huge = ValidateVectorUpload(VectorFile(std::vector<float>(8, 3e38f), 2, 4), Target());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(huge.status().message()),
              HasSubstr("row 0 of tensor \"steering\" has RMS 3e+38, over 1000 times"));
  // Row 1 may be up to 1000 * 2.0 in RMS, row 0 only 1000 * 0.5.
  std::vector<float> values = {400, 400, 400, 400, 1999, 1999, 1999, 1999};
  EXPECT_TRUE(ValidateVectorUpload(VectorFile(values, 2, 4), Target()).ok());
  values[0] = values[1] = values[2] = values[3] = 501;
  auto over = ValidateVectorUpload(VectorFile(values, 2, 4), Target());
  EXPECT_THAT(std::string(over.status().message()), HasSubstr("row 0"));
  // Without a measured scale only the file checks apply.
  VectorTarget unbounded = Target();
  unbounded.residual_rms.clear();
  EXPECT_TRUE(ValidateVectorUpload(VectorFile(std::vector<float>(8, 3e38f), 2, 4), unbounded).ok());
}

// Before the fix 15 MiB of metadata on a 3 KiB vector was stored verbatim.
TEST(VectorUploadTest, RefusesOversizedMetadata) {
  const std::vector<float> values(8, 0.1f);
  auto big = ValidateVectorUpload(
      VectorFile(values, 2, 4, {{"description", std::string(kMaxSteeringMetadataBytes, 'x')}}),
      Target());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(big.status().message()), HasSubstr("__metadata__"));
  auto fits = ValidateVectorUpload(
      VectorFile(values, 2, 4, {{"description", std::string(1000, 'x')}}), Target());
  EXPECT_TRUE(fits.ok()) << fits.status();
}

// The file rules are written once (steering_format.h) for uploads and the offline CLI;
// they used to disagree on `format: "pt"`, which safetensors' torch writer puts in every
// file: both accept it now, and the stored file says steerd.steering.v1.
TEST(SteeringFormatTest, PtFormatIsAcceptedAndStoredAsSteerdFormat) {
  const std::vector<float> values(8, 0.25f);
  const std::string bytes = VectorFile(values, 2, 4, {{"format", "pt"}});
  SteeringContents contents;
  auto file = ParseSteeringBytes(bytes, "test", &contents);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(contents.values, values);
  auto validated = ValidateVectorUpload(bytes, Target());
  ASSERT_TRUE(validated.ok()) << validated.status();
  SteeringContents stored;
  ASSERT_TRUE(ParseSteeringBytes(validated->safetensors, "stored", &stored).ok());
  EXPECT_EQ(stored.metadata.at("format"), "steerd.steering.v1");
  EXPECT_EQ(stored.metadata.at("model_fingerprint"), "qwen2:2x4");
}

TEST(SteeringFormatTest, EveryRuleNamesWhatIsWrong) {
  const std::vector<float> values(8, 0.25f);
  struct Case {
    std::string name;
    std::string bytes;
    std::string expected;
  };
  std::vector<float> with_nan = values;
  with_nan[6] = std::nanf("");
  const std::vector<Case> cases = {
      {"empty", "", "test is empty"},
      {"not safetensors", "garbage", "malformed safetensors"},
      {"other format", VectorFile(values, 2, 4, {{"format", "numpy"}}),
       "metadata format \"numpy\" is not \"steerd.steering.v1\""},
      {"num_layers disagrees", VectorFile(values, 2, 4, {{"num_layers", "3"}}),
       "metadata num_layers \"3\" disagrees with the tensor's 2"},
      {"scale not a number", VectorFile(values, 2, 4, {{"scale", "abc"}}),
       "metadata scale \"abc\" is not a finite number"},
      {"NaN", VectorFile(with_nan, 2, 4), "non-finite value (nan) at [1, 2]"},
      {"metadata too large",
       VectorFile(values, 2, 4, {{"x", std::string(kMaxSteeringMetadataBytes, 'x')}}),
       "__metadata__ holds 16385 bytes"},
  };
  for (const Case& c : cases) {
    SteeringContents contents;
    auto file = ParseSteeringBytes(c.bytes, "test", &contents);
    ASSERT_FALSE(file.ok()) << c.name;
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(c.expected)) << c.name;
  }
}

}  // namespace
}  // namespace steerd
