#include "server/model/tokenizer_text.h"

#include <array>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "unicode/bytestream.h"
#include "unicode/normalizer2.h"
#include "unicode/stringpiece.h"
#include "unicode/uchar.h"
#include "unicode/utypes.h"

namespace steerd {
namespace tokenizer_text {
namespace {

constexpr absl::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// How the bytes at a position start: a well-formed sequence, a maximal ill-formed
// subpart, or a well-formed prefix that the end of the input cuts short.
enum class SequenceKind { kValid, kInvalid, kTruncated };
struct Sequence {
  SequenceKind kind;
  size_t length;
};

// Follows Table 3-7 of the Unicode Standard (well-formed byte sequences), so the
// lengths of ill-formed subparts are exactly the maximal subparts of section 3.9.
Sequence ClassifySequence(absl::string_view s, size_t pos) {
  const unsigned char lead = static_cast<unsigned char>(s[pos]);
  if (lead < 0x80) return {SequenceKind::kValid, 1};
  size_t trail = 0;
  unsigned char low = 0x80;
  unsigned char high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    trail = 1;
  } else if (lead == 0xE0) {
    trail = 2;
    low = 0xA0;
  } else if (lead == 0xED) {
    trail = 2;
    high = 0x9F;
  } else if (lead >= 0xE1 && lead <= 0xEF) {
    trail = 2;
  } else if (lead == 0xF0) {
    trail = 3;
    low = 0x90;
  } else if (lead == 0xF4) {
    trail = 3;
    high = 0x8F;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    trail = 3;
  } else {
    return {SequenceKind::kInvalid, 1};
  }
  for (size_t k = 1; k <= trail; ++k) {
    if (pos + k >= s.size()) return {SequenceKind::kTruncated, k};
    const unsigned char byte = static_cast<unsigned char>(s[pos + k]);
    const unsigned char min = k == 1 ? low : 0x80;
    const unsigned char max = k == 1 ? high : 0xBF;
    if (byte < min || byte > max) return {SequenceKind::kInvalid, k};
  }
  return {SequenceKind::kValid, trail + 1};
}

// Length of the run of ASCII bytes starting at `pos`, eight bytes at a time: most
// text is ASCII and this keeps validation far below the cost of tokenizing.
size_t AsciiRun(absl::string_view s, size_t pos) {
  const size_t start = pos;
  while (pos + 8 <= s.size()) {
    uint64_t word;
    std::memcpy(&word, s.data() + pos, 8);
    if (word & 0x8080808080808080ULL) break;
    pos += 8;
  }
  while (pos < s.size() && static_cast<unsigned char>(s[pos]) < 0x80) ++pos;
  return pos - start;
}

struct ByteAlphabet {
  std::array<std::string, 256> byte_to_char;
  // Indexed by code point; the alphabet's largest code point is U+0143.
  std::array<int16_t, 0x144> char_to_byte;
};

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other
// 68 bytes take U+0100 onwards in byte order, so every token is printable text.
const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* const alphabet = [] {
    auto* a = new ByteAlphabet();
    a->char_to_byte.fill(-1);
    char32_t next_extra = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t c = printable ? static_cast<char32_t>(b) : next_extra++;
      a->char_to_byte[c] = static_cast<int16_t>(b);
      // Every code point here is below U+0800: one or two UTF-8 bytes.
      if (c < 0x80) {
        a->byte_to_char[b] = std::string(1, static_cast<char>(c));
      } else {
        a->byte_to_char[b] = {static_cast<char>(0xC0 | (c >> 6)),
                              static_cast<char>(0x80 | (c & 0x3F))};
      }
    }
    return a;
  }();
  return *alphabet;
}

}  // namespace

absl::Status ValidateUtf8(absl::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    pos += AsciiRun(text, pos);
    if (pos >= text.size()) break;
    const Sequence seq = ClassifySequence(text, pos);
    if (seq.kind != SequenceKind::kValid) {
      return absl::InvalidArgumentError(
          absl::StrCat("text is not valid UTF-8: ill-formed sequence at byte offset ", pos));
    }
    pos += seq.length;
  }
  return absl::OkStatus();
}

size_t AppendUtf8Lossy(absl::string_view bytes, bool hold_incomplete_tail, std::string* out) {
  size_t pos = 0;
  size_t span_start = 0;  // Start of well-formed bytes not yet copied to `out`.
  while (pos < bytes.size()) {
    pos += AsciiRun(bytes, pos);
    if (pos >= bytes.size()) break;
    const Sequence seq = ClassifySequence(bytes, pos);
    if (seq.kind == SequenceKind::kValid) {
      pos += seq.length;
      continue;
    }
    out->append(bytes.data() + span_start, pos - span_start);
    if (seq.kind == SequenceKind::kTruncated && hold_incomplete_tail) return pos;
    out->append(kReplacementChar.data(), kReplacementChar.size());
    pos += seq.length;
    span_start = pos;
  }
  out->append(bytes.data() + span_start, bytes.size() - span_start);
  return bytes.size();
}

bool IsAscii(absl::string_view text) { return AsciiRun(text, 0) == text.size(); }

absl::Status NormalizeNfc(absl::string_view text, std::string* out) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) {
    return absl::InternalError(
        absl::StrCat("ICU NFC normalizer unavailable: ", u_errorName(status)));
  }
  out->clear();
  icu::StringByteSink<std::string> sink(out, static_cast<int32_t>(text.size()));
  nfc->normalizeUTF8(/*options=*/0, icu::StringPiece(text.data(), text.size()), sink,
                     /*edits=*/nullptr, status);
  if (U_FAILURE(status)) {
    return absl::InternalError(absl::StrCat("ICU NFC normalization failed: ", u_errorName(status)));
  }
  return absl::OkStatus();
}

char32_t NextCodePoint(absl::string_view text, size_t* pos) {
  const Sequence seq = ClassifySequence(text, *pos);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(text.data()) + *pos;
  *pos += seq.length;
  if (seq.kind != SequenceKind::kValid) return 0xFFFD;
  switch (seq.length) {
    case 1:
      return p[0];
    case 2:
      return ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    case 3:
      return ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    default:
      return ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
  }
}

char32_t PreviousCodePoint(absl::string_view text, size_t* end) {
  size_t start = *end - 1;
  while (start > 0 && *end - start < 4 &&
         (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
    --start;
  }
  size_t pos = start;
  const char32_t c = NextCodePoint(text, &pos);
  *end = start;
  return c;
}

bool IsWhiteSpace(char32_t c) {
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || c == 0x20;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool IsWordChar(char32_t c) {
  const UChar32 u = static_cast<UChar32>(c);
  return u_hasBinaryProperty(u, UCHAR_ALPHABETIC) ||
         (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0 ||
         u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL);
}

const std::string& ByteToChar(unsigned char byte) { return Alphabet().byte_to_char[byte]; }

std::optional<std::string> ByteLevelToBytes(absl::string_view token) {
  const ByteAlphabet& alphabet = Alphabet();
  std::string bytes;
  bytes.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    const char32_t c = NextCodePoint(token, &pos);
    if (c >= alphabet.char_to_byte.size() || alphabet.char_to_byte[c] < 0) return std::nullopt;
    bytes.push_back(static_cast<char>(alphabet.char_to_byte[c]));
  }
  return bytes;
}

}  // namespace tokenizer_text
}  // namespace steerd
