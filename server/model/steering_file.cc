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

absl::StatusOr<SteeringFile> FromSafetensors(std::unique_ptr<SafetensorsFile> file) {
  const std::string& source = file->source();
  auto tensors = file->tensors();
  auto it = tensors.find(kSteeringTensorName);
  if (it == tensors.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": no tensor named 'steering' (a steering file holds one "
                             "[num_layers, hidden_size] tensor named 'steering')"));
  }
  const TensorView& view = it->second;
  if (view.dtype != DType::kF32 && view.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tensor 'steering' has dtype ",
                                                   DTypeName(view.dtype),
                                                   "; it must be F32 or BF16"));
  }
  if (view.shape.size() != 2 || view.shape[0] <= 0 || view.shape[1] <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": tensor 'steering' has shape [", absl::StrJoin(view.shape, ", "),
        "]; it must be [num_layers, hidden_size]"));
  }
  SteeringFile out;
  out.metadata = file->metadata();
  auto format = out.metadata.find("format");
  if (format != out.metadata.end() && format->second != kSteeringFormat &&
      format->second != "pt") {
    return absl::InvalidArgumentError(absl::StrCat(source, ": metadata format '",
                                                   format->second, "' is not ",
                                                   kSteeringFormat));
  }
  for (const char* key : {"num_layers", "hidden_size"}) {
    auto m = out.metadata.find(key);
    if (m == out.metadata.end()) continue;
    int64_t value = 0;
    const int64_t actual = std::string(key) == "num_layers" ? view.shape[0] : view.shape[1];
    if (!absl::SimpleAtoi(m->second, &value) || value != actual) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": metadata ", key, " '",
                                                     m->second, "' disagrees with the tensor's shape"));
    }
  }
  if (auto s = out.metadata.find("scale"); s != out.metadata.end()) {
    if (!absl::SimpleAtod(s->second, &out.scale) || !std::isfinite(out.scale)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": metadata scale '", s->second, "' is not a finite number"));
    }
  }
  std::shared_ptr<SafetensorsFile> owner = std::move(file);
  ASSIGN_OR_RETURN(at::Tensor mapped, TensorFromView(view, owner));
  // Own the data: the vector outlives the file.
  out.vector = mapped.to(at::kFloat).clone();
  if (!at::isfinite(out.vector).all().item<bool>()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tensor 'steering' holds NaN or infinite values"));
  }
  return out;
}

}  // namespace

std::string ModelFingerprint(const ModelConfig& config) {
  return absl::StrCat(config.model_type, ":", config.num_layers, "x", config.hidden_size);
}

absl::StatusOr<SteeringFile> LoadSteeringFile(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  return FromSafetensors(std::move(file));
}

absl::StatusOr<SteeringFile> ParseSteeringFile(std::string bytes, std::string source) {
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::FromBuffer(std::move(bytes), std::move(source)));
  return FromSafetensors(std::move(file));
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
