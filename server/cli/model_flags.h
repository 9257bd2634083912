// The flags every model-loading command shares (--model DIR, --dtype, --device,
// --threads, --weights hugepages|mapped) and their translation into Transformer::Options.
#ifndef STEERD_SERVER_CLI_MODEL_FLAGS_H_
#define STEERD_SERVER_CLI_MODEL_FLAGS_H_

#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "server/cli/args.h"
#include "server/model/transformer.h"

namespace steerd {

// Names for Args::Parse, to be merged with a command's own flags.
std::set<std::string> ModelFlagNames();

absl::StatusOr<Transformer::Options> TransformerOptionsFromArgs(const Args& args);

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_MODEL_FLAGS_H_
