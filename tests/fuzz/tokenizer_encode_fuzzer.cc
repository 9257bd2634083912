// Fuzzes Tokenizer::Encode and PreTokenize on untrusted text (a Generate prompt, a
// rendered conversation, a dataset line) with the embedded steerd-tiny tokenizer, whose
// pre-tokenizer regex is the Qwen2 / GPT-4 style one, and checks that valid UTF-8
// round-trips through Decode.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/string_view.h"
#include "server/model/tokenizer.h"

namespace {

const steerd::Tokenizer* LoadTokenizer() {
  auto tokenizer = steerd::Tokenizer::Load(STEERD_SOURCE_DIR "/models/steerd-tiny");
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "cannot load the tokenizer: %s\n",
                 std::string(tokenizer.status().message()).c_str());
    std::abort();
  }
  return tokenizer->release();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const steerd::Tokenizer* tokenizer = LoadTokenizer();
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  (void)tokenizer->PreTokenize(text);
  (void)tokenizer->Encode(text, /*add_special_tokens=*/true);
  auto ids = tokenizer->Encode(text);
  if (!ids.ok()) return 0;
  auto decoded = tokenizer->Decode(*ids);
  // Byte-level BPE is lossless except for NFC normalization (this tokenizer has none).
  if (!decoded.ok() || *decoded != text) __builtin_trap();
  return 0;
}
