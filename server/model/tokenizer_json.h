// Internal to the tokenizer (server/model/tokenizer.h): reading tokenizer.json and
// tokenizer_config.json with errors that name the file and the field
// ("tokenizer.json: model.merges[3]: ..."). JsonFile is the accessor BpeTokenizer's
// Parse* methods (tokenizer_json.cc) and the pre-tokenizer regex compiler use.
#ifndef STEERD_SERVER_MODEL_TOKENIZER_JSON_H_
#define STEERD_SERVER_MODEL_TOKENIZER_JSON_H_

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "server/util/status_macros.h"

namespace steerd::tokenizer_internal {

using Json = nlohmann::json;

inline std::string FieldPath(absl::string_view parent, absl::string_view key) {
  return parent.empty() ? std::string(key) : absl::StrCat(parent, ".", key);
}

inline std::string IndexPath(absl::string_view parent, size_t index) {
  return absl::StrCat(parent, "[", index, "]");
}

class JsonFile {
 public:
  explicit JsonFile(std::string name) : name_(std::move(name)) {}

  absl::Status Error(absl::string_view field, absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": ", field, ": ", message));
  }

  absl::StatusOr<Json> Parse(absl::string_view text) const {
    Json json;
    try {
      json = Json::parse(text.begin(), text.end());
    } catch (const Json::exception& e) {
      // Not only parse_error: a number too large for a double (1e999) is out_of_range.
      return absl::InvalidArgumentError(absl::StrCat(name_, ": malformed JSON: ", e.what()));
    }
    if (!json.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_, ": expected a JSON object at the top level, got ", json.type_name()));
    }
    return json;
  }

  // Member `key` of `object`, or nullptr when it is absent or null.
  static const Json* Optional(const Json& object, absl::string_view key) {
    auto it = object.find(std::string(key));
    if (it == object.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::StatusOr<const Json*> Required(const Json& object, absl::string_view path,
                                       absl::string_view key) const {
    const Json* value = Optional(object, key);
    if (value == nullptr) return Error(FieldPath(path, key), "missing field");
    return value;
  }

  absl::StatusOr<const Json*> RequiredOf(const Json& object, absl::string_view path,
                                         absl::string_view key, Json::value_t type) const {
    ASSIGN_OR_RETURN(const Json* value, Required(object, path, key));
    if (value->type() != type && !(type == Json::value_t::number_integer &&
                                   value->type() == Json::value_t::number_unsigned)) {
      return Error(FieldPath(path, key),
                   absl::StrCat("expected ", Json(type).type_name(), ", got ", value->type_name()));
    }
    return value;
  }

  absl::StatusOr<std::string> String(const Json& object, absl::string_view path,
                                     absl::string_view key) const {
    ASSIGN_OR_RETURN(const Json* value, RequiredOf(object, path, key, Json::value_t::string));
    return value->get<std::string>();
  }

  absl::StatusOr<bool> Bool(const Json& object, absl::string_view path, absl::string_view key,
                            bool fallback) const {
    const Json* value = Optional(object, key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) {
      return Error(FieldPath(path, key),
                   absl::StrCat("expected boolean, got ", value->type_name()));
    }
    return value->get<bool>();
  }

  // Token ids are below 2^22 (4,194,304). The tokenizer keeps tables indexed by id,
  // so one huge id in a damaged or hostile tokenizer.json would otherwise allocate
  // gigabytes (the tokenizer fuzzer found an id that asked for 25 GB); the largest
  // vocabularies in use have about 256k tokens.
  static constexpr int64_t kMaxTokenIds = int64_t{1} << 22;

  // A token id, or nullopt when `value` is not an integer in [0, kMaxTokenIds).
  static std::optional<int32_t> AsId(const Json& value) {
    if (!value.is_number_integer()) return std::nullopt;
    const int64_t id = value.get<int64_t>();
    if (id < 0 || id >= kMaxTokenIds) return std::nullopt;
    return static_cast<int32_t>(id);
  }

  absl::StatusOr<int32_t> Id(const Json& value, absl::string_view path) const {
    std::optional<int32_t> id = AsId(value);
    if (!id.has_value()) {
      return Error(path, absl::StrCat("expected a token id (an integer in [0, 2^22)), got ",
                                      value.dump()));
    }
    return *id;
  }

  // The `type` of a component object such as `normalizer`.
  absl::StatusOr<std::string> Type(const Json& component, absl::string_view path) const {
    if (!component.is_object()) {
      return Error(path, absl::StrCat("expected object, got ", component.type_name()));
    }
    return String(component, path, "type");
  }

 private:
  std::string name_;
};

}  // namespace steerd::tokenizer_internal

#endif  // STEERD_SERVER_MODEL_TOKENIZER_JSON_H_
