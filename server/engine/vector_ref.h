// Vector names and references as common.proto defines them: a name is 1 to 64
// characters from [A-Za-z0-9._-] starting with a letter or digit; a reference is
// "name" (the latest version at admission) or "name@version" (a positive decimal
// integer). Requests may also give the version in a typed field beside the string
// (SteeringSpec.version, GetVectorRequest.version, ...; common.proto); the two forms
// combine here so every RPC applies the same rules. Parsing is strict so a malformed
// reference is INVALID_ARGUMENT at the edge, never a lookup of something odd.
#ifndef STEERD_SERVER_ENGINE_VECTOR_REF_H_
#define STEERD_SERVER_ENGINE_VECTOR_REF_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace steerd {

// The largest version a reference can carry: "@" takes at most 18 digits, so that no
// number overflows on the way in; the typed version field is held to the same bound.
inline constexpr int64_t kMaxVectorVersion = 999'999'999'999'999'999;

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

// Parses `text` ("name" or "name@version", the request field `text_field`) together with
// the typed version beside it (`version_field`): 0 means not given, so `text` alone
// decides; N > 0 selects version N of the bare name in `text`. INVALID_ARGUMENT naming
// `version_field` when `version` is negative, naming both fields when `text` also
// carries "@" (even with the same number: one request, one way to say it), and naming
// `version_field` above kMaxVectorVersion.
absl::StatusOr<VectorReference> ParseVectorReference(absl::string_view text, int64_t version,
                                                     absl::string_view text_field,
                                                     absl::string_view version_field);

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_VECTOR_REF_H_
