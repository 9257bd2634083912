// Fuzzes train::ParseJsonl (a user's JSONL training or evaluation dataset); what it
// accepts must survive ToJsonl and parse back to the same examples.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "server/train/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  auto examples = steerd::train::ParseJsonl(text, "fuzz.jsonl");
  if (!examples.ok()) return 0;
  auto again = steerd::train::ParseJsonl(steerd::train::ToJsonl(*examples), "round trip");
  if (!again.ok() || again->size() != examples->size()) __builtin_trap();
  for (size_t i = 0; i < examples->size(); ++i) {
    const auto& a = (*examples)[i];
    const auto& b = (*again)[i];
    if (a.prompt != b.prompt || a.answer != b.answer || a.solution != b.solution) {
      __builtin_trap();
    }
  }
  return 0;
}
