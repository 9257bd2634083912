// Status propagation macros in the style of Reverb and TensorFlow: RETURN_IF_ERROR
// forwards a failed absl::Status, ASSIGN_OR_RETURN unwraps an absl::StatusOr or
// forwards its error. They keep error paths one line long across module boundaries.
#ifndef STEERD_SERVER_UTIL_STATUS_MACROS_H_
#define STEERD_SERVER_UTIL_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define STEERD_CONCAT_INNER_(a, b) a##b
#define STEERD_CONCAT_(a, b) STEERD_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                          \
  do {                                                 \
    const ::absl::Status steerd_status_ = (expr);      \
    if (!steerd_status_.ok()) return steerd_status_;   \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, rexpr) \
  STEERD_ASSIGN_OR_RETURN_IMPL_(STEERD_CONCAT_(steerd_statusor_, __LINE__), lhs, rexpr)

#define STEERD_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) return statusor.status();             \
  lhs = std::move(statusor).value()

#endif  // STEERD_SERVER_UTIL_STATUS_MACROS_H_
