// Fuzzes ParseVectorReference and ValidateVectorName (`name@version` from requests):
// an accepted reference must print back as text that parses to the same reference.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "server/engine/vector_ref.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  (void)steerd::ValidateVectorName(text, "name");
  auto ref = steerd::ParseVectorReference(text, "vector");
  if (!ref.ok()) return 0;
  if (!steerd::ValidateVectorName(ref->name, "name").ok()) __builtin_trap();
  if (ref->version.has_value() && *ref->version <= 0) __builtin_trap();
  auto again = steerd::ParseVectorReference(ref->ToString(), "vector");
  if (!again.ok() || again->name != ref->name || again->version != ref->version) {
    __builtin_trap();
  }
  return 0;
}
