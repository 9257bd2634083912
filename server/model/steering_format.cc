#include "server/model/steering_format.h"

#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

// The tensor's values as float32, in row-major order. The data may sit at any byte
// offset (safetensors headers need not be padded), so it is only read with memcpy.
std::vector<float> ToFloat(const TensorView& view) {
  const int64_t n = view.numel();
  std::vector<float> values(n);
  if (view.dtype == DType::kF32) {
    std::memcpy(values.data(), view.data, n * sizeof(float));
  } else {
    const auto* bytes = static_cast<const char*>(view.data);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t bits;
      std::memcpy(&bits, bytes + i * sizeof(bits), sizeof(bits));
      const uint32_t widened = static_cast<uint32_t>(bits) << 16;  // BF16 -> F32
      std::memcpy(&values[i], &widened, sizeof(float));
    }
  }
  return values;
}

absl::Status CheckMetadataNumber(const std::map<std::string, std::string>& metadata,
                                 const std::string& key, int64_t actual) {
  auto it = metadata.find(key);
  if (it == metadata.end()) return absl::OkStatus();
  int64_t value = 0;
  if (!absl::SimpleAtoi(it->second, &value) || value != actual) {
    return absl::InvalidArgumentError(absl::StrCat("metadata ", key, " \"", it->second,
                                                   "\" disagrees with the tensor's ", actual));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SteeringContents> ReadSteeringContents(const SafetensorsFile& file) {
  const std::string& source = file.source();
  const auto& tensors = file.tensors();
  auto it = tensors.find(kSteeringTensorName);
  if (it == tensors.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, " has no tensor named \"steering\" (a steering file holds one "
                "[num_layers, hidden_size] tensor named \"steering\")"));
  }
  for (const auto& [name, view] : tensors) {
    if (name != kSteeringTensorName) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, " holds a tensor \"", name,
          "\" besides \"steering\"; a vector file holds only \"steering\""));
    }
  }
  const TensorView& view = it->second;
  if (view.dtype != DType::kF32 && view.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"steering\" has dtype ", DTypeName(view.dtype), "; F32 or BF16 is required"));
  }
  if (view.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"steering\" has ", view.shape.size(),
        " dimensions; [num_layers, hidden_size] is required"));
  }
  if (view.shape[0] <= 0 || view.shape[1] <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"steering\" has shape [",
                                                   absl::StrJoin(view.shape, ", "),
                                                   "]; [num_layers, hidden_size] is required"));
  }
  SteeringContents out;
  out.num_layers = view.shape[0];
  out.hidden_size = view.shape[1];
  out.tensor = view;
  out.metadata = file.metadata();
  size_t metadata_bytes = 0;
  for (const auto& [key, value] : out.metadata) metadata_bytes += key.size() + value.size();
  if (metadata_bytes > kMaxSteeringMetadataBytes) {
    return WithReason(
        absl::InvalidArgumentError(absl::StrCat(
            source, "'s __metadata__ holds ", metadata_bytes,
            " bytes of keys and values; the maximum is ", kMaxSteeringMetadataBytes)),
        "VECTOR_METADATA_TOO_LARGE",
        {{"limit_value", absl::StrCat(kMaxSteeringMetadataBytes)},
         {"value", absl::StrCat(metadata_bytes)}});
  }
  if (auto format = out.metadata.find("format");
      format != out.metadata.end() && format->second != kSteeringFormat &&
      format->second != "pt") {
    return absl::InvalidArgumentError(absl::StrCat("metadata format \"", format->second,
                                                   "\" is not \"", kSteeringFormat, "\""));
  }
  RETURN_IF_ERROR(CheckMetadataNumber(out.metadata, "num_layers", out.num_layers));
  RETURN_IF_ERROR(CheckMetadataNumber(out.metadata, "hidden_size", out.hidden_size));
  if (auto s = out.metadata.find("scale"); s != out.metadata.end()) {
    if (!absl::SimpleAtod(s->second, &out.scale) || !std::isfinite(out.scale)) {
      return absl::InvalidArgumentError(
          absl::StrCat("metadata scale \"", s->second, "\" is not a finite number"));
    }
  }
  out.values = ToFloat(view);
  for (size_t i = 0; i < out.values.size(); ++i) {
    if (!std::isfinite(out.values[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor \"steering\" has a non-finite value (", out.values[i], ") at [",
          i / out.hidden_size, ", ", i % out.hidden_size, "]"));
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> ParseSteeringBytes(
    std::string bytes, const std::string& source, SteeringContents* contents) {
  if (bytes.empty()) return absl::InvalidArgumentError(absl::StrCat(source, " is empty"));
  auto file = SafetensorsFile::FromBuffer(std::move(bytes), source);
  if (!file.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed safetensors: ", file.status().message()));
  }
  ASSIGN_OR_RETURN(*contents, ReadSteeringContents(**file));
  return std::move(*file);
}

}  // namespace steerd
