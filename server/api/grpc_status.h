// The one place absl::Status becomes grpc::Status (same code, same message), and the
// canonical names of status codes for metrics labels and logs.
#ifndef STEERD_SERVER_API_GRPC_STATUS_H_
#define STEERD_SERVER_API_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"

namespace steerd {

grpc::Status ToGrpcStatus(const absl::Status& status);
// "OK", "INVALID_ARGUMENT", ... as gRPC names them.
std::string GrpcCodeName(grpc::StatusCode code);

}  // namespace steerd

#endif  // STEERD_SERVER_API_GRPC_STATUS_H_
