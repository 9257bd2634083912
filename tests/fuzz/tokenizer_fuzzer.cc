// Fuzzes Tokenizer::FromJson (a model folder's tokenizer.json and tokenizer_config.json,
// whose pre-tokenizer regex and vocabulary come from the file) and, for a tokenizer it
// accepts, encoding, decoding and the chat template lookup. The input is tokenizer.json,
// optionally followed by a NUL byte and tokenizer_config.json (JSON text holds no raw
// NUL, so the split is unambiguous).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "server/model/chat_template.h"
#include "server/model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  absl::string_view tokenizer_json = input;
  absl::string_view config_json;
  if (const size_t nul = input.find('\0'); nul != absl::string_view::npos) {
    tokenizer_json = input.substr(0, nul);
    config_json = input.substr(nul + 1);
  }
  auto tokenizer = steerd::Tokenizer::FromJson(tokenizer_json, config_json, "fuzz");
  if (!tokenizer.ok()) return 0;
  const steerd::Tokenizer& t = **tokenizer;
  for (bool special : {false, true}) {
    auto ids = t.Encode("Hello world! 123 <|endoftext|> \xc3\xa9t\xc3\xa9\n\n  x", special);
    if (!ids.ok()) continue;
    for (int32_t id : *ids) {
      if (id < 0 || id >= t.vocab_size()) __builtin_trap();  // Encode made an id past the vocabulary.
    }
    (void)t.Decode(*ids, /*skip_special_tokens=*/special);
  }
  // Every id decodes or is an error; none reads out of bounds.
  const int32_t n = t.vocab_size() < 4096 ? t.vocab_size() : 4096;
  std::vector<int32_t> all;
  for (int32_t id = -1; id <= n; ++id) {
    (void)t.TokenBytes(id);
    if (id >= 0 && id < n) all.push_back(id);
  }
  (void)t.Decode(all, /*skip_special_tokens=*/true);
  steerd::IncrementalDetokenizer detokenizer(&t);
  for (int32_t id : all) (void)detokenizer.Push(id);
  (void)detokenizer.Finish();
  (void)steerd::ChatTemplate::ForTokenizer(t);
  return 0;
}
