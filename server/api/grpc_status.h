// The one place absl::Status and grpc::Status convert into each other, both ways (the
// server answers with ToGrpcStatus, the client library reads with FromGrpcStatus). A
// failed status keeps its code and message, and carries google.rpc.Status in the
// `grpc-status-details-bin` trailer with google.rpc.ErrorInfo (always: the details'
// reason, or the code's name; domain "steerd"), RetryInfo (when retrying later can
// succeed) and BadRequest (invalid fields), from server/util/error_details.h.
// Also the canonical names of status codes for metrics labels and logs. Torch-free.
#ifndef STEERD_SERVER_API_GRPC_STATUS_H_
#define STEERD_SERVER_API_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"
#include "google/rpc/status.pb.h"

namespace steerd {

grpc::Status ToGrpcStatus(const absl::Status& status);
// The same as a google.rpc.Status message (an empty one for OK), as Job.error carries
// it, and back.
google::rpc::Status ToRpcStatus(const absl::Status& status);
absl::Status FromRpcStatus(const google::rpc::Status& rpc_status);
// The code and message, and the error details when the trailer holds them.
absl::Status FromGrpcStatus(const grpc::Status& status);
// "OK", "INVALID_ARGUMENT", ... as gRPC names them.
std::string GrpcCodeName(grpc::StatusCode code);

}  // namespace steerd

#endif  // STEERD_SERVER_API_GRPC_STATUS_H_
