// The flags every model-loading command shares (--model DIR, --dtype, --device,
// --threads, --weights hugepages|mapped) and their translation into Transformer::Options,
// plus the loaders several commands share: the model, its tokenizer, --steering FILE.
#ifndef STEERD_SERVER_CLI_MODEL_FLAGS_H_
#define STEERD_SERVER_CLI_MODEL_FLAGS_H_

#include <memory>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "server/cli/args.h"
#include "server/model/tokenizer.h"
#include "server/model/transformer.h"

namespace steerd {

// Names for Args::Parse, to be merged with a command's own flags.
std::set<std::string> ModelFlagNames();

absl::StatusOr<Transformer::Options> TransformerOptionsFromArgs(const Args& args);
absl::StatusOr<std::unique_ptr<Transformer>> LoadModelFromArgs(const Args& args);

// The model folder's tokenizer, or null when it has none (ids-only use).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerIfPresent(const std::string& dir);

// --steering FILE [--scale X]: the vector, checked against the model, or an undefined
// vector when the flag is absent.
absl::StatusOr<SteeringRow> LoadSteeringFromArgs(const Args& args, const ModelConfig& config);

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_MODEL_FLAGS_H_
