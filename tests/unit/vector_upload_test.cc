// ValidateVectorUpload and ReadVectorValues on uploads the vector_upload fuzzer (or its
// review) showed to matter; torch-free.
#include "server/engine/vector_upload.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace steerd {
namespace {

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

VectorTarget Tiny() {
  VectorTarget target;
  target.model = "tiny";
  target.fingerprint = "fp";
  target.num_layers = 2;
  target.hidden_size = 4;
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

  absl::StatusOr<ValidatedVector> validated = ValidateVectorUpload(bytes, Tiny());
  ASSERT_TRUE(validated.ok()) << validated.status();
  EXPECT_EQ(validated->dtype, "BF16");
  ASSERT_EQ(validated->layer_norms.size(), 2u);
  EXPECT_FLOAT_EQ(validated->layer_norms[0], 2.2912878f);  // sqrt(0.25 + 1 + 4)

  absl::StatusOr<std::vector<float>> read = ReadVectorValues(bytes, "upload");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, values);
}

}  // namespace
}  // namespace steerd
