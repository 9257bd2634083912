// Machine-readable details of an error: a stable reason (google.rpc.ErrorInfo's), its
// context, how long to wait before a retry can succeed, and which request fields were
// invalid. They ride on absl::Status as a payload, so any layer (tenancy, storage, the
// engine) can say which limit or rule a request hit without depending on protobuf or
// gRPC; server/api/rpc_status.h turns them into google.rpc.ErrorInfo (domain "steerd"),
// RetryInfo and BadRequest on the wire, and the client library turns those back into
// this payload, so steerctl and tests read them the same way.
// Thread-safety: plain values and free functions.
#ifndef STEERD_SERVER_UTIL_ERROR_DETAILS_H_
#define STEERD_SERVER_UTIL_ERROR_DETAILS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace steerd {

// google.rpc.ErrorInfo.domain of every steerd error.
inline constexpr char kErrorDomain[] = "steerd";

struct FieldViolation {
  std::string field;        // The request field's path, e.g. "sampling.temperature".
  std::string description;  // Why it is invalid.
};

struct ErrorDetails {
  // Stable, UPPER_SNAKE_CASE, unique within kErrorDomain: "STORED_VECTORS_LIMIT".
  std::string reason;
  std::map<std::string, std::string> metadata;  // e.g. {"limit": "stored_vectors"}.
  std::optional<absl::Duration> retry_delay;    // Set when retrying later can succeed.
  std::vector<FieldViolation> field_violations;
};

// `status` carrying `details` (replacing any it carried). An OK status stays OK.
absl::Status WithErrorDetails(absl::Status status, const ErrorDetails& details);

// The details `status` carries, if any.
std::optional<ErrorDetails> GetErrorDetails(const absl::Status& status);

// A canonical code from its number as the wire or a stored status spells it; numbers
// outside the canonical range read as UNKNOWN.
absl::StatusCode StatusCodeFromInt(int code);

// The reason a status without explicit details is reported with: its code's name
// ("INVALID_ARGUMENT", "NOT_FOUND", ...), so every error has one.
std::string DefaultErrorReason(absl::StatusCode code);

// `status` with just a reason (and optional metadata).
absl::Status WithReason(absl::Status status, absl::string_view reason,
                        std::map<std::string, std::string> metadata = {});

// A per-tenant or server limit was hit. Reason: the limit's name upper-cased plus
// "_LIMIT" (stored_vectors -> STORED_VECTORS_LIMIT); metadata "limit" (its name),
// "limit_value" and, when known, "value" (what the request or tenant reached).
// `retry_delay`: set when waiting can help (a rate, a full queue, a finishing job).
absl::Status LimitError(absl::StatusCode code, std::string message,
                        absl::string_view limit_name, absl::string_view limit_value,
                        std::optional<int64_t> value = std::nullopt,
                        std::optional<absl::Duration> retry_delay = std::nullopt);

// INVALID_ARGUMENT for one request field: the message is `field` then `problem`
// ("sampling.top_k -1 must not be negative"); reason INVALID_FIELD with metadata
// "field", and a BadRequest field violation.
absl::Status InvalidFieldError(absl::string_view field, absl::string_view problem);

// A status as text for storage (a job's error): "" for OK, else JSON with the code,
// the message and the details. DecodeStatus reads that back; any other non-empty text
// (written before details existed) becomes UNKNOWN with the text as its message.
std::string EncodeStatus(const absl::Status& status);
absl::Status DecodeStatus(absl::string_view text);

// UNAVAILABLE while the models load (reason STARTING) and while the server drains for
// shutdown (reason DRAINING), each with a retry delay: the same answer from every layer.
absl::Status StartingError();
absl::Status DrainingError();

}  // namespace steerd

#endif  // STEERD_SERVER_UTIL_ERROR_DETAILS_H_
