#include "server/engine/vector_upload.h"

#include <cmath>
#include <cstring>
#include <map>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/model/safetensors.h"
#include "server/tenancy/sha256.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

constexpr char kFormat[] = "steerd.steering.v1";
constexpr char kTensor[] = "steering";

float Bf16ToFloat(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof(value));
  return value;
}

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
      values[i] = Bf16ToFloat(bits);
    }
  }
  return values;
}

// Parses the bytes as a safetensors file holding exactly one F32/BF16 2-D tensor
// named `steering`: INVALID_ARGUMENT otherwise.
absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenVectorFile(std::string bytes,
                                                                const std::string& source) {
  if (bytes.empty()) return absl::InvalidArgumentError(absl::StrCat(source, " is empty"));
  auto file = SafetensorsFile::FromBuffer(std::move(bytes), source);
  if (!file.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed safetensors: ", file.status().message()));
  }
  const auto& tensors = (*file)->tensors();
  if (tensors.count(kTensor) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, " has no tensor named \"", kTensor, "\""));
  }
  for (const auto& [name, view] : tensors) {
    if (name != kTensor) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, " holds a tensor \"", name, "\" besides \"", kTensor,
          "\"; a vector file holds only \"", kTensor, "\""));
    }
  }
  const TensorView& view = tensors.at(kTensor);
  if (view.dtype != DType::kF32 && view.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", kTensor, "\" has dtype ",
                                                   DTypeName(view.dtype),
                                                   "; F32 or BF16 is required"));
  }
  if (view.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", kTensor, "\" has ",
                                                   view.shape.size(),
                                                   " dimensions; [num_layers, hidden_size] "
                                                   "is required"));
  }
  return std::move(*file);
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

absl::StatusOr<ValidatedVector> ValidateVectorUpload(std::string bytes,
                                                     const VectorTarget& target) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   OpenVectorFile(std::move(bytes), "the safetensors upload"));
  const TensorView& view = file->tensors().at(kTensor);
  const int64_t rows = view.shape[0], cols = view.shape[1];
  const auto& metadata = file->metadata();
  size_t metadata_bytes = 0;
  for (const auto& [key, value] : metadata) metadata_bytes += key.size() + value.size();
  if (metadata_bytes > kMaxVectorMetadataBytes) {
    return WithReason(
        absl::InvalidArgumentError(absl::StrCat(
            "the file's __metadata__ holds ", metadata_bytes,
            " bytes of keys and values; the maximum is ", kMaxVectorMetadataBytes)),
        "VECTOR_METADATA_TOO_LARGE",
        {{"limit_value", absl::StrCat(kMaxVectorMetadataBytes)},
         {"value", absl::StrCat(metadata_bytes)}});
  }
  if (auto it = metadata.find("format"); it != metadata.end() && it->second != kFormat) {
    return absl::InvalidArgumentError(absl::StrCat("metadata format \"", it->second,
                                                   "\" is not \"", kFormat, "\""));
  }
  RETURN_IF_ERROR(CheckMetadataNumber(metadata, "num_layers", rows));
  RETURN_IF_ERROR(CheckMetadataNumber(metadata, "hidden_size", cols));
  const std::vector<float> values = ToFloat(view);
  for (int64_t i = 0; i < static_cast<int64_t>(values.size()); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor \"", kTensor, "\" has a non-finite value (", values[i], ") at [", i / cols,
          ", ", i % cols, "]"));
    }
  }
  if (rows != target.num_layers || cols != target.hidden_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "vector shape [", rows, ", ", cols, "] does not match model \"", target.model,
        "\", which needs [", target.num_layers, ", ", target.hidden_size, "]"));
  }
  if (auto it = metadata.find("model_fingerprint");
      it != metadata.end() && it->second != target.fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(
        "vector was made for model fingerprint \"", it->second, "\" but model \"",
        target.model, "\" has \"", target.fingerprint, "\""));
  }

  ValidatedVector out;
  out.dtype = std::string(DTypeName(view.dtype));
  out.layer_norms.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int64_t c = 0; c < cols; ++c) sum += double(values[r * cols + c]) * values[r * cols + c];
    out.layer_norms[r] = static_cast<float>(std::sqrt(sum));
    if (static_cast<int64_t>(target.residual_rms.size()) == rows) {
      const double row_rms = std::sqrt(sum / cols);
      const double bound = kMaxSteeringToResidualRms * target.residual_rms[r];
      if (!(row_rms <= bound)) {  // Also catches a sum that overflowed to infinity.
        return WithReason(
            absl::InvalidArgumentError(absl::StrCat(
                "row ", r, " of tensor \"", kTensor, "\" has RMS ", row_rms, ", over ",
                kMaxSteeringToResidualRms, " times model \"", target.model,
                "\"'s residual-stream RMS at layer ", r, " (", target.residual_rms[r],
                "); a vector this large overflows the model's activations")),
            "VECTOR_TOO_LARGE",
            {{"layer", absl::StrCat(r)},
             {"rms", absl::StrCat(row_rms)},
             {"limit_value", absl::StrCat(bound)}});
      }
    }
  }
  std::map<std::string, std::string> completed = metadata;
  completed["format"] = kFormat;
  completed["num_layers"] = absl::StrCat(rows);
  completed["hidden_size"] = absl::StrCat(cols);
  completed["model"] = target.model;
  completed["model_fingerprint"] = target.fingerprint;
  ASSIGN_OR_RETURN(out.safetensors,
                   SerializeSafetensors({{kTensor, view.dtype, view.shape, view.data}}, completed));
  out.sha256 = Sha256Hex(out.safetensors);
  return out;
}

absl::StatusOr<std::vector<float>> ReadVectorValues(std::string bytes,
                                                    const std::string& source) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   OpenVectorFile(std::move(bytes), source));
  return ToFloat(file->tensors().at(kTensor));
}

}  // namespace steerd
