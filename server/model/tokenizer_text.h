// Text primitives behind the byte-level BPE tokenizer: strict UTF-8 validation, the
// lossy UTF-8 decoding Hugging Face `tokenizers` inherits from Rust's
// String::from_utf8_lossy, NFC normalization (ICU), the Unicode character classes
// its added-token matching uses, and GPT-2's byte <-> character alphabet. Stateless
// and thread-safe.
#ifndef STEERD_SERVER_MODEL_TOKENIZER_TEXT_H_
#define STEERD_SERVER_MODEL_TOKENIZER_TEXT_H_

#include <cstddef>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace steerd {
namespace tokenizer_text {

// OK for well-formed UTF-8 (no overlong forms, surrogates or code points past
// U+10FFFF); otherwise INVALID_ARGUMENT naming the byte offset where the first
// ill-formed sequence starts.
absl::Status ValidateUtf8(absl::string_view text);

// Appends `bytes` to `out` as UTF-8, replacing each maximal ill-formed subpart with
// U+FFFD (Unicode's "substitution of maximal subparts", as Rust's from_utf8_lossy and
// the WHATWG decoder do). With `hold_incomplete_tail`, a trailing sequence that is
// cut short but could still be completed is left unconsumed. Returns the number of
// bytes consumed.
size_t AppendUtf8Lossy(absl::string_view bytes, bool hold_incomplete_tail, std::string* out);

bool IsAscii(absl::string_view text);

// Unicode Normalization Form C of valid UTF-8 `text`, written to `out`.
absl::Status NormalizeNfc(absl::string_view text, std::string* out);

// Decodes the code point starting at `text[*pos]` of valid UTF-8 and advances `*pos`.
char32_t NextCodePoint(absl::string_view text, size_t* pos);
// Decodes the code point ending at `text[*end - 1]` of valid UTF-8 and moves `*end`
// back to its first byte.
char32_t PreviousCodePoint(absl::string_view text, size_t* end);

// Unicode White_Space, Rust's char::is_whitespace and regex `\s`.
bool IsWhiteSpace(char32_t c);
// Rust regex's Unicode `\w`: Alphabetic, marks, decimal digits, connector punctuation
// and Join_Control.
bool IsWordChar(char32_t c);

// GPT-2's bytes_to_unicode: the UTF-8 of the printable character standing for `byte`.
const std::string& ByteToChar(unsigned char byte);
// The bytes a byte-level token string stands for, or nullopt when a character of it
// is outside the 256-character alphabet.
std::optional<std::string> ByteLevelToBytes(absl::string_view token);

}  // namespace tokenizer_text
}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_TOKENIZER_TEXT_H_
