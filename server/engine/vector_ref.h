// Vector names and references as common.proto defines them: a name is 1 to 64
// characters from [A-Za-z0-9._-] starting with a letter or digit; a reference is
// "name" (the latest version at admission) or "name@version" (a positive decimal
// integer). Parsing is strict so a malformed reference is INVALID_ARGUMENT at the edge,
// never a lookup of something odd.
#ifndef STEERD_SERVER_ENGINE_VECTOR_REF_H_
#define STEERD_SERVER_ENGINE_VECTOR_REF_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace steerd {

struct VectorReference {
  std::string name;
  std::optional<int64_t> version;  // Empty: the latest.
  std::string ToString() const;    // "name" or "name@version"
};

// INVALID_ARGUMENT naming `field` when `name` is not a valid vector name.
absl::Status ValidateVectorName(absl::string_view name, absl::string_view field);

// Parses "name" or "name@version"; INVALID_ARGUMENT naming `field` otherwise.
absl::StatusOr<VectorReference> ParseVectorReference(absl::string_view text,
                                                     absl::string_view field);

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_VECTOR_REF_H_
