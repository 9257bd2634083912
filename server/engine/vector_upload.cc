#include "server/engine/vector_upload.h"

#include <cmath>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "server/model/safetensors.h"
#include "server/model/steering_format.h"
#include "server/tenancy/sha256.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {

absl::StatusOr<ValidatedVector> ValidateVectorUpload(std::string bytes,
                                                     const VectorTarget& target) {
  SteeringContents contents;
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   ParseSteeringBytes(std::move(bytes), "the safetensors upload", &contents));
  const TensorView& view = contents.tensor;
  const int64_t rows = contents.num_layers, cols = contents.hidden_size;
  const auto& metadata = contents.metadata;
  const std::vector<float>& values = contents.values;
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
                "row ", r, " of tensor \"steering\" has RMS ", row_rms, ", over ",
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
  completed["format"] = kSteeringFormat;
  completed["num_layers"] = absl::StrCat(rows);
  completed["hidden_size"] = absl::StrCat(cols);
  completed["model"] = target.model;
  completed["model_fingerprint"] = target.fingerprint;
  ASSIGN_OR_RETURN(out.safetensors,
                   SerializeSafetensors(
                       {{kSteeringTensorName, view.dtype, view.shape, view.data}}, completed));
  out.sha256 = Sha256Hex(out.safetensors);
  return out;
}

absl::StatusOr<std::vector<float>> ReadVectorValues(std::string bytes,
                                                    const std::string& source) {
  SteeringContents contents;
  RETURN_IF_ERROR(ParseSteeringBytes(std::move(bytes), source, &contents).status());
  return std::move(contents.values);
}

}  // namespace steerd
