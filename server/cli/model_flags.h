// The translation of the flags every model-loading command shares (--model DIR, --dtype,
// --device, --threads, --weights hugepages|mapped; declared in server/cli/command_table.cc)
// into Transformer::Options, plus the loaders several commands share: the model, its
// tokenizer, --steering FILE.
#ifndef STEERD_SERVER_CLI_MODEL_FLAGS_H_
#define STEERD_SERVER_CLI_MODEL_FLAGS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/model/tokenizer.h"
#include "server/model/transformer.h"
#include "server/util/flags.h"

namespace steerd {

absl::StatusOr<Transformer::Options> TransformerOptionsFromArgs(const ParsedFlags& args);
absl::StatusOr<std::unique_ptr<Transformer>> LoadModelFromArgs(const ParsedFlags& args);

// The model folder's tokenizer, or null when it has none (ids-only use).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerIfPresent(const std::string& dir);

// --steering FILE [--scale X]: the vector, checked against the model, or an undefined
// vector when the flag is absent.
absl::StatusOr<SteeringRow> LoadSteeringFromArgs(const ParsedFlags& args,
                                                 const ModelConfig& config);

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_MODEL_FLAGS_H_
