#include "server/cli/model_flags.h"

#include "server/util/status_macros.h"

namespace steerd {

std::set<std::string> ModelFlagNames() {
  return {"model", "dtype", "device", "threads", "weights"};
}

absl::StatusOr<Transformer::Options> TransformerOptionsFromArgs(const Args& args) {
  Transformer::Options options;
  ASSIGN_OR_RETURN(options.model_dir, args.Required("model"));
  options.dtype = args.GetString("dtype", "auto");
  options.device = args.GetString("device", "auto");
  options.weights = args.GetString("weights", options.weights);
  ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  options.num_threads = static_cast<int>(threads);
  return options;
}

}  // namespace steerd
