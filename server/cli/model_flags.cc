#include "server/cli/model_flags.h"

#include <cmath>
#include <filesystem>

#include "server/model/steering_file.h"
#include "server/util/status_macros.h"

namespace steerd {

absl::StatusOr<Transformer::Options> TransformerOptionsFromArgs(const ParsedFlags& args) {
  Transformer::Options options;
  ASSIGN_OR_RETURN(options.model_dir, args.Required("model"));
  options.dtype = args.Get("dtype", "auto");
  options.device = args.Get("device", "auto");
  options.weights = args.Get("weights", options.weights);
  ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  options.num_threads = static_cast<int>(threads);
  return options;
}

absl::StatusOr<std::unique_ptr<Transformer>> LoadModelFromArgs(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(Transformer::Options options, TransformerOptionsFromArgs(args));
  return Transformer::Create(options);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerIfPresent(const std::string& dir) {
  if (!std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json")) {
    return std::unique_ptr<Tokenizer>();
  }
  return Tokenizer::Load(dir);
}

absl::StatusOr<SteeringRow> LoadSteeringFromArgs(const ParsedFlags& args,
                                                 const ModelConfig& config) {
  SteeringRow row;
  if (!args.Has("steering")) {
    if (args.Has("scale")) return absl::InvalidArgumentError("--scale needs --steering");
    return row;
  }
  ASSIGN_OR_RETURN(SteeringFile file, LoadSteeringFile(args.Get("steering", "")));
  RETURN_IF_ERROR(CheckSteeringMatchesModel(file, config));
  row.vector = file.vector;
  ASSIGN_OR_RETURN(row.scale, args.GetDouble("scale", file.scale));
  if (!std::isfinite(row.scale)) return absl::InvalidArgumentError("--scale must be finite");
  return row;
}

}  // namespace steerd
