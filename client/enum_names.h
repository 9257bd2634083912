// Proto enum values as steerctl shows them to people. AIP-126 prefixes every value of a
// steerd.v1 enum with the enum's name (Job.State's QUEUED is STATE_QUEUED, FinishReason's
// LENGTH is FINISH_REASON_LENGTH); the prefix is noise in a table or a progress line, and
// steerctl's text output predates it, so people keep seeing "QUEUED" and "LENGTH" and
// keep typing `--state queued`. The zero values (*_UNSPECIFIED) always carried the
// prefix and are shown whole, as before. JSON output (--json) is proto3 JSON and uses
// the proto names unchanged.
#ifndef STEERD_CLIENT_ENUM_NAMES_H_
#define STEERD_CLIENT_ENUM_NAMES_H_

#include <google/protobuf/descriptor.h>
#include <google/protobuf/generated_enum_reflection.h>

#include <string>

#include "absl/strings/string_view.h"

namespace steerd::client {

// "FinishReason" -> "FINISH_REASON_": the prefix AIP-126 gives the values of `descriptor`.
std::string EnumValuePrefix(const google::protobuf::EnumDescriptor& descriptor);

// The value's name without its enum's prefix ("STATE_QUEUED" -> "QUEUED"); the zero value
// and a name without the prefix are returned whole.
std::string ShortEnumName(const google::protobuf::EnumValueDescriptor& value);

// ShortEnumName of `value` of the generated enum `Enum`, or its number when `Enum` has no
// such value (a newer server's value this client does not know).
template <typename Enum>
std::string ShortEnumName(Enum value) {
  const google::protobuf::EnumDescriptor* descriptor =
      google::protobuf::GetEnumDescriptor<Enum>();
  const google::protobuf::EnumValueDescriptor* found =
      descriptor->FindValueByNumber(static_cast<int>(value));
  return found != nullptr ? ShortEnumName(*found) : std::to_string(static_cast<int>(value));
}

// The value named `name` (upper case), as its short or its full name; nullptr when none.
const google::protobuf::EnumValueDescriptor* FindEnumValue(
    const google::protobuf::EnumDescriptor& descriptor, absl::string_view name);

}  // namespace steerd::client

#endif  // STEERD_CLIENT_ENUM_NAMES_H_
