#include "server/model/steering_file.h"

#include <fstream>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/model/safetensors.h"
#include "server/model/torch_util.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

absl::StatusOr<SteeringFile> ToSteeringFile(SteeringContents contents) {
  SteeringFile out;
  out.metadata = std::move(contents.metadata);
  out.scale = contents.scale;
  return CatchTorchErrors("reading a steering vector", [&]() -> absl::StatusOr<SteeringFile> {
    // Own the data: the vector outlives the file.
    out.vector = at::from_blob(contents.values.data(),
                               {contents.num_layers, contents.hidden_size}, at::kFloat)
                     .clone();  // [L, d] float32
    return std::move(out);
  });
}

}  // namespace

std::string ModelFingerprint(const ModelConfig& config) {
  return absl::StrCat(config.model_type, ":", config.num_layers, "x", config.hidden_size);
}

absl::StatusOr<SteeringFile> LoadSteeringFile(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  ASSIGN_OR_RETURN(SteeringContents contents, ReadSteeringContents(*file));
  return ToSteeringFile(std::move(contents));
}

absl::StatusOr<SteeringFile> ParseSteeringFile(std::string bytes, std::string source) {
  SteeringContents contents;
  RETURN_IF_ERROR(ParseSteeringBytes(std::move(bytes), source, &contents).status());
  return ToSteeringFile(std::move(contents));
}

absl::Status CheckSteeringMatchesModel(const SteeringFile& file, const ModelConfig& config) {
  const int64_t L = file.vector.size(0), d = file.vector.size(1);
  if (L != config.num_layers || d != config.hidden_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "steering vector has shape [", L, ", ", d, "] but the model has ", config.num_layers,
        " layers of width ", config.hidden_size));
  }
  auto fp = file.metadata.find("model_fingerprint");
  if (fp != file.metadata.end() && fp->second != ModelFingerprint(config)) {
    return absl::FailedPreconditionError(
        absl::StrCat("steering vector was made for model fingerprint '", fp->second,
                     "' but this model's is '", ModelFingerprint(config), "'"));
  }
  return absl::OkStatus();
}

namespace {

// The F32 data and metadata a steering file holds for `vector`.
struct PreparedSteering {
  at::Tensor data;  // [L, d] float32, CPU, contiguous
  std::map<std::string, std::string> metadata;
  std::vector<TensorToWrite> tensors() const {
    return {{kSteeringTensorName, DType::kF32, {data.size(0), data.size(1)}, data.data_ptr()}};
  }
};

absl::StatusOr<PreparedSteering> PrepareSteering(
    const at::Tensor& vector, const ModelConfig& config, const std::string& model_name,
    const std::map<std::string, std::string>& extra_metadata) {
  if (!vector.defined() || vector.dim() != 2 || vector.size(0) != config.num_layers ||
      vector.size(1) != config.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "steering vector must be [", config.num_layers, ", ", config.hidden_size, "]"));
  }
  PreparedSteering prepared;
  prepared.data = vector.detach().to(at::kCPU, at::kFloat).contiguous();
  if (!at::isfinite(prepared.data).all().item<bool>()) {
    return absl::InvalidArgumentError("steering vector holds NaN or infinite values");
  }
  prepared.metadata = extra_metadata;
  prepared.metadata["format"] = kSteeringFormat;
  prepared.metadata["num_layers"] = absl::StrCat(config.num_layers);
  prepared.metadata["hidden_size"] = absl::StrCat(config.hidden_size);
  prepared.metadata["model"] = model_name;
  prepared.metadata["model_fingerprint"] = ModelFingerprint(config);
  return prepared;
}

}  // namespace

absl::StatusOr<std::string> SerializeSteeringFile(
    const at::Tensor& vector, const ModelConfig& config, const std::string& model_name,
    const std::map<std::string, std::string>& extra_metadata) {
  ASSIGN_OR_RETURN(PreparedSteering prepared,
                   PrepareSteering(vector, config, model_name, extra_metadata));
  return SerializeSafetensors(prepared.tensors(), prepared.metadata);
}

absl::Status SaveSteeringFile(const std::string& path, const at::Tensor& vector,
                              const ModelConfig& config, const std::string& model_name,
                              const std::map<std::string, std::string>& extra_metadata) {
  ASSIGN_OR_RETURN(PreparedSteering prepared,
                   PrepareSteering(vector, config, model_name, extra_metadata));
  return WriteSafetensors(path, prepared.tensors(), prepared.metadata);
}

}  // namespace steerd
