// Where the embedded default model (models/steerd-tiny, checked into the repository)
// is found at run time: $STEERD_DEFAULT_MODEL, then beside the executable
// (build/bin/../../models, or an installed ../share/steerd/models), then the source
// tree the binary was built from.
#ifndef STEERD_SERVER_CLI_DEFAULT_MODEL_H_
#define STEERD_SERVER_CLI_DEFAULT_MODEL_H_

#include <string>

#include "absl/status/statusor.h"

namespace steerd {

inline constexpr char kDefaultModelName[] = "steerd-tiny";

// The folder of the default model; NOT_FOUND listing the places looked in.
absl::StatusOr<std::string> FindDefaultModel();

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_DEFAULT_MODEL_H_
