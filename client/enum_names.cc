#include "client/enum_names.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace steerd::client {

std::string EnumValuePrefix(const google::protobuf::EnumDescriptor& descriptor) {
  // UpperCamelCase -> UPPER_SNAKE_CASE, a '_' before each capital that follows a lower
  // case letter or a digit ("FinishReason" -> "FINISH_REASON").
  const std::string& name = descriptor.name();
  std::string prefix;
  for (size_t i = 0; i < name.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    if (i > 0 && absl::ascii_isupper(c)) {
      const unsigned char before = static_cast<unsigned char>(name[i - 1]);
      if (absl::ascii_islower(before) || absl::ascii_isdigit(before)) prefix += '_';
    }
    prefix += absl::ascii_toupper(c);
  }
  return absl::StrCat(prefix, "_");
}

std::string ShortEnumName(const google::protobuf::EnumValueDescriptor& value) {
  const std::string prefix = EnumValuePrefix(*value.type());
  if (value.number() == 0 || !absl::StartsWith(value.name(), prefix) ||
      value.name().size() == prefix.size()) {
    return value.name();
  }
  return value.name().substr(prefix.size());
}

const google::protobuf::EnumValueDescriptor* FindEnumValue(
    const google::protobuf::EnumDescriptor& descriptor, absl::string_view name) {
  const google::protobuf::EnumValueDescriptor* value =
      descriptor.FindValueByName(std::string(name));
  if (value != nullptr) return value;
  return descriptor.FindValueByName(absl::StrCat(EnumValuePrefix(descriptor), name));
}

}  // namespace steerd::client
