#include "server/engine/vector_ref.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {

std::string VectorReference::ToString() const {
  return version.has_value() ? absl::StrCat(name, "@", *version) : name;
}

absl::Status ValidateVectorName(absl::string_view name, absl::string_view field) {
  if (name.empty()) return InvalidFieldError(field, "is empty");
  if (name.size() > 64) {
    return InvalidFieldError(
        field, absl::StrCat("is ", name.size(), " characters long; the maximum is 64"));
  }
  if (!absl::ascii_isalnum(static_cast<unsigned char>(name[0]))) {
    return InvalidFieldError(field, "must start with a letter or a digit");
  }
  for (char c : name) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (!absl::ascii_isalnum(u) && c != '.' && c != '_' && c != '-') {
      return InvalidFieldError(
          field, absl::StrFormat("contains the character %s; allowed are A-Z a-z 0-9 . _ -",
                                 absl::ascii_isprint(u)
                                     ? absl::StrCat("'", std::string(1, c), "'")
                                     : absl::StrFormat("0x%02x", u)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<VectorReference> ParseVectorReference(absl::string_view text,
                                                     absl::string_view field) {
  VectorReference ref;
  const size_t at = text.find('@');
  const absl::string_view name = text.substr(0, at);
  RETURN_IF_ERROR(ValidateVectorName(name, field));
  ref.name = std::string(name);
  if (at == absl::string_view::npos) return ref;
  const absl::string_view version = text.substr(at + 1);
  int64_t number = 0;
  const bool digits_only =
      !version.empty() && version.size() <= 18 &&
      std::all_of(version.begin(), version.end(),
                  [](char c) { return absl::ascii_isdigit(static_cast<unsigned char>(c)); });
  if (!digits_only || !absl::SimpleAtoi(version, &number) || number < 1) {
    return InvalidFieldError(
        field, absl::StrCat("\"", absl::CHexEscape(text.substr(0, 96)),
                            "\" has a malformed version; use name@N with N a positive integer"));
  }
  ref.version = number;
  return ref;
}

absl::StatusOr<VectorReference> ParseVectorReference(absl::string_view text, int64_t version,
                                                     absl::string_view text_field,
                                                     absl::string_view version_field) {
  if (version < 0) {
    return InvalidFieldError(
        version_field, absl::StrCat(version, " is negative; use 0 for the version ", text_field,
                                    " names, or N >= 1 for version N"));
  }
  if (version > kMaxVectorVersion) {
    return InvalidFieldError(version_field,
                             absl::StrCat(version, " is larger than any version (at most ",
                                          kMaxVectorVersion, ")"));
  }
  if (version > 0 && text.find('@') != absl::string_view::npos) {
    return InvalidFieldError(
        text_field, absl::StrCat("\"", absl::CHexEscape(text.substr(0, 96)),
                                 "\" carries a version and ", version_field, " is ", version,
                                 "; give the version in only one of them"));
  }
  ASSIGN_OR_RETURN(VectorReference ref, ParseVectorReference(text, text_field));
  if (version > 0) ref.version = version;
  return ref;
}

}  // namespace steerd
