// Fuzzes ParseModelConfig (a model folder's config.json); an accepted config must
// round-trip through ModelConfigToJson, as `steerd init-model` relies on.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = steerd::ParseModelConfig(text, "fuzz/config.json");
  if (!config.ok()) return 0;
  auto again = steerd::ParseModelConfig(steerd::ModelConfigToJson(*config), "round trip");
  if (!again.ok()) __builtin_trap();
  return 0;
}
