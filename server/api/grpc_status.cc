#include "server/api/grpc_status.h"

#include <utility>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "server/util/error_details.h"

namespace steerd {

google::rpc::Status ToRpcStatus(const absl::Status& status) {
  google::rpc::Status rpc_status;
  if (status.ok()) return rpc_status;
  const std::optional<ErrorDetails> details = GetErrorDetails(status);
  // absl and gRPC share the canonical code numbering.
  rpc_status.set_code(static_cast<int>(status.code()));
  rpc_status.set_message(std::string(status.message()));
  google::rpc::ErrorInfo info;
  info.set_reason(details.has_value() && !details->reason.empty()
                      ? details->reason
                      : DefaultErrorReason(status.code()));
  info.set_domain(kErrorDomain);
  if (details.has_value()) {
    for (const auto& [key, value] : details->metadata) (*info.mutable_metadata())[key] = value;
  }
  rpc_status.add_details()->PackFrom(info);
  if (details.has_value() && details->retry_delay.has_value()) {
    google::rpc::RetryInfo retry;
    const int64_t nanos = absl::ToInt64Nanoseconds(*details->retry_delay);
    retry.mutable_retry_delay()->set_seconds(nanos / 1000000000);
    retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>(nanos % 1000000000));
    rpc_status.add_details()->PackFrom(retry);
  }
  if (details.has_value() && !details->field_violations.empty()) {
    google::rpc::BadRequest bad_request;
    for (const FieldViolation& violation : details->field_violations) {
      auto* added = bad_request.add_field_violations();
      added->set_field(violation.field);
      added->set_description(violation.description);
    }
    rpc_status.add_details()->PackFrom(bad_request);
  }
  return rpc_status;
}

absl::Status FromRpcStatus(const google::rpc::Status& rpc_status) {
  if (rpc_status.code() == 0) return absl::OkStatus();
  absl::Status out(StatusCodeFromInt(rpc_status.code()), rpc_status.message());
  ErrorDetails details;
  bool any = false;
  for (const google::protobuf::Any& detail : rpc_status.details()) {
    google::rpc::ErrorInfo info;
    google::rpc::RetryInfo retry;
    google::rpc::BadRequest bad_request;
    if (detail.UnpackTo(&info)) {
      details.reason = info.reason();
      for (const auto& [key, value] : info.metadata()) details.metadata[key] = value;
      any = true;
    } else if (detail.UnpackTo(&retry)) {
      details.retry_delay = absl::Seconds(retry.retry_delay().seconds()) +
                            absl::Nanoseconds(retry.retry_delay().nanos());
      any = true;
    } else if (detail.UnpackTo(&bad_request)) {
      for (const auto& violation : bad_request.field_violations()) {
        details.field_violations.push_back({violation.field(), violation.description()});
      }
      any = true;
    }
  }
  return any ? WithErrorDetails(std::move(out), details) : out;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()), ToRpcStatus(status).SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  google::rpc::Status rpc_status;
  if (!status.error_details().empty() && rpc_status.ParseFromString(status.error_details()) &&
      rpc_status.code() == static_cast<int>(status.error_code())) {
    return FromRpcStatus(rpc_status);
  }
  // No (or foreign) details: the code and message alone.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

std::string GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    default: return "UNKNOWN";
  }
}

}  // namespace steerd
