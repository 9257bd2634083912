// The request field an INVALID_FIELD error names for programs (google.rpc.BadRequest's
// one field violation, server/util/error_details.h), so a table of bad requests can
// expect the field beside a fragment of the message.
#ifndef STEERD_TESTS_TESTING_INVALID_FIELD_H_
#define STEERD_TESTS_TESTING_INVALID_FIELD_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "server/util/error_details.h"

namespace steerd::testing {

// The violation's field path ("eval.split", "examples[3].answer") when `status` is
// INVALID_ARGUMENT with reason INVALID_FIELD, metadata "field" and exactly one field
// violation, all naming the same field; "" for any other status.
inline std::string InvalidField(const absl::Status& status) {
  const std::optional<ErrorDetails> details = GetErrorDetails(status);
  if (status.code() != absl::StatusCode::kInvalidArgument || !details.has_value() ||
      details->reason != "INVALID_FIELD" || details->field_violations.size() != 1) {
    return "";
  }
  const std::string& field = details->field_violations[0].field;
  const auto named = details->metadata.find("field");
  return named != details->metadata.end() && named->second == field ? field : "";
}

}  // namespace steerd::testing

#endif  // STEERD_TESTS_TESTING_INVALID_FIELD_H_
