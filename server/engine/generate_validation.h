// The checks of a generation request that need no model (GenerateParams alone), apart
// from the serving core so the proto conversion and its fuzzer can run them without
// libtorch. Stateless and thread-safe.
#ifndef STEERD_SERVER_ENGINE_GENERATE_VALIDATION_H_
#define STEERD_SERVER_ENGINE_GENERATE_VALIDATION_H_

#include "absl/status/status.h"
#include "server/engine/serving_core.h"

namespace steerd {

// INVALID_ARGUMENT naming the field for an empty model, not exactly one input, an
// empty prompt or message list, a scale or sampling parameter out of range, or too
// many or badly sized stop strings.
absl::Status ValidateGenerateParams(const GenerateParams& params);

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_GENERATE_VALIDATION_H_
