#include "server/api/request_parse_interceptor.h"

#include <google/protobuf/descriptor.h>

#include "absl/strings/str_cat.h"
#include "server/api/grpc_status.h"
#include "server/util/error_details.h"
#include "steerd/v1/generation.pb.h"
#include "steerd/v1/models.pb.h"
#include "steerd/v1/training.pb.h"
#include "steerd/v1/vectors.pb.h"

namespace steerd {
namespace {

class RequestParseInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit RequestParseInterceptor(std::string request_type)
      : request_type_(std::move(request_type)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      // Every status steerd's handlers send carries a message; this empty one comes
      // from gRPC's failed deserialization.
      if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED &&
          status.error_message().empty()) {
        methods->ModifySendStatus(ToGrpcStatus(WithReason(
            absl::InvalidArgumentError(absl::StrCat(
                "the request is not a valid ", request_type_,
                ": its bytes do not parse (a string field holding invalid UTF-8 is the "
                "usual cause; every string field must be UTF-8)")),
            "MALFORMED_REQUEST", {{"message_type", request_type_}})));
      }
    }
    methods->Proceed();
  }

 private:
  const std::string request_type_;
};

}  // namespace

RequestParseInterceptorFactory::RequestParseInterceptorFactory() {
  // Referencing one message per file links its descriptor into the generated pool.
  const google::protobuf::FileDescriptor* files[] = {
      v1::GenerateRequest::descriptor()->file(), v1::ListModelsRequest::descriptor()->file(),
      v1::CreateJobRequest::descriptor()->file(), v1::CreateVectorRequest::descriptor()->file()};
  for (const google::protobuf::FileDescriptor* file : files) {
    for (int s = 0; s < file->service_count(); ++s) {
      const google::protobuf::ServiceDescriptor* service = file->service(s);
      for (int m = 0; m < service->method_count(); ++m) {
        const google::protobuf::MethodDescriptor* method = service->method(m);
        request_types_[absl::StrCat("/", service->full_name(), "/", method->name())] =
            method->input_type()->full_name();
      }
    }
  }
}

grpc::experimental::Interceptor* RequestParseInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  auto it = request_types_.find(info->method() != nullptr ? info->method() : "");
  if (it == request_types_.end()) return nullptr;  // Health, reflection: left alone.
  return new RequestParseInterceptor(it->second);
}

}  // namespace steerd
