#include "server/util/error_details.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace steerd {
namespace {

// The payload's type URL: private to steerd processes (the wire carries google.rpc).
constexpr char kPayloadUrl[] = "type.steerd/steerd.ErrorDetails";

}  // namespace

absl::Status WithErrorDetails(absl::Status status, const ErrorDetails& details) {
  if (status.ok()) return status;
  nlohmann::json json;
  json["reason"] = details.reason;
  json["metadata"] = details.metadata;
  if (details.retry_delay.has_value()) {
    json["retry_delay_ns"] = absl::ToInt64Nanoseconds(*details.retry_delay);
  }
  for (const FieldViolation& violation : details.field_violations) {
    json["field_violations"].push_back({{"field", violation.field},
                                        {"description", violation.description}});
  }
  // Invalid UTF-8 in a message must not throw: replace it.
  status.SetPayload(kPayloadUrl,
                    absl::Cord(json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)));
  return status;
}

std::optional<ErrorDetails> GetErrorDetails(const absl::Status& status) {
  const absl::optional<absl::Cord> payload = status.GetPayload(kPayloadUrl);
  if (!payload.has_value()) return std::nullopt;
  const nlohmann::json json =
      nlohmann::json::parse(std::string(*payload), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return std::nullopt;  // Written above, so never in practice.
  ErrorDetails details;
  details.reason = json.value("reason", "");
  if (json.contains("metadata") && json["metadata"].is_object()) {
    for (const auto& [key, value] : json["metadata"].items()) {
      if (value.is_string()) details.metadata[key] = value.get<std::string>();
    }
  }
  if (json.contains("retry_delay_ns") && json["retry_delay_ns"].is_number_integer()) {
    details.retry_delay = absl::Nanoseconds(json["retry_delay_ns"].get<int64_t>());
  }
  if (json.contains("field_violations") && json["field_violations"].is_array()) {
    for (const auto& violation : json["field_violations"]) {
      details.field_violations.push_back(
          {violation.value("field", ""), violation.value("description", "")});
    }
  }
  return details;
}

absl::StatusCode StatusCodeFromInt(int code) {
  // 0 (OK) is not an error code: a status read as an error with code 0 is malformed.
  return code > 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated)
             ? static_cast<absl::StatusCode>(code)
             : absl::StatusCode::kUnknown;
}

std::string DefaultErrorReason(absl::StatusCode code) {
  // absl spells the canonical names in UPPER_SNAKE_CASE already.
  return absl::StatusCodeToString(code);
}

absl::Status WithReason(absl::Status status, absl::string_view reason,
                        std::map<std::string, std::string> metadata) {
  ErrorDetails details;
  details.reason = std::string(reason);
  details.metadata = std::move(metadata);
  return WithErrorDetails(std::move(status), details);
}

absl::Status LimitError(absl::StatusCode code, std::string message,
                        absl::string_view limit_name, absl::string_view limit_value,
                        std::optional<int64_t> value,
                        std::optional<absl::Duration> retry_delay) {
  ErrorDetails details;
  details.reason = absl::StrCat(absl::AsciiStrToUpper(limit_name), "_LIMIT");
  details.metadata["limit"] = std::string(limit_name);
  details.metadata["limit_value"] = std::string(limit_value);
  if (value.has_value()) details.metadata["value"] = absl::StrCat(*value);
  details.retry_delay = retry_delay;
  return WithErrorDetails(absl::Status(code, std::move(message)), details);
}

absl::Status InvalidFieldError(absl::string_view field, absl::string_view problem) {
  ErrorDetails details;
  details.reason = "INVALID_FIELD";
  details.metadata["field"] = std::string(field);
  details.field_violations.push_back({std::string(field), std::string(problem)});
  return WithErrorDetails(absl::InvalidArgumentError(absl::StrCat(field, " ", problem)),
                          details);
}

std::string EncodeStatus(const absl::Status& status) {
  if (status.ok()) return "";
  nlohmann::json json;
  json["code"] = static_cast<int>(status.code());
  json["message"] = std::string(status.message());
  if (const absl::optional<absl::Cord> details = status.GetPayload(kPayloadUrl)) {
    json["details"] = std::string(*details);
  }
  return json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::Status DecodeStatus(absl::string_view text) {
  if (text.empty()) return absl::OkStatus();
  const nlohmann::json json =
      nlohmann::json::parse(std::string(text), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (!json.is_object() || !json.contains("code") || !json["code"].is_number_integer() ||
      !json.contains("message") || !json["message"].is_string()) {
    return absl::UnknownError(std::string(text));
  }
  const int code = json["code"].get<int>();
  absl::Status status(StatusCodeFromInt(code), json["message"].get<std::string>());
  if (json.contains("details") && json["details"].is_string()) {
    status.SetPayload(kPayloadUrl, absl::Cord(json["details"].get<std::string>()));
  }
  return status;
}

absl::Status StartingError() {
  ErrorDetails details;
  details.reason = "STARTING";
  details.retry_delay = absl::Seconds(1);
  return WithErrorDetails(
      absl::UnavailableError("the server is starting: models are still loading"), details);
}

absl::Status DrainingError() {
  ErrorDetails details;
  details.reason = "DRAINING";
  details.retry_delay = absl::Seconds(1);  // Elsewhere, or here once restarted.
  return WithErrorDetails(absl::UnavailableError("the server is shutting down; retry elsewhere"),
                          details);
}

}  // namespace steerd
