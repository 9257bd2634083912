// Gives a request that fails to parse a status a client can act on. gRPC's callback
// handlers answer a request whose bytes do not parse as the method's message (most
// often a string field holding invalid UTF-8, which proto3 refuses) with UNIMPLEMENTED
// and an empty message, as if the method did not exist. This interceptor rewrites that
// status, for steerd's own methods only, into INVALID_ARGUMENT naming the message type
// and the likely cause, with reason MALFORMED_REQUEST.
// Thread-safety: the factory is shared by all calls; each interceptor serves one call.
#ifndef STEERD_SERVER_API_REQUEST_PARSE_INTERCEPTOR_H_
#define STEERD_SERVER_API_REQUEST_PARSE_INTERCEPTOR_H_

#include <grpcpp/support/server_interceptor.h>

#include <map>
#include <string>

namespace steerd {

class RequestParseInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // Knows the methods of every service in package steerd.v1 (from the generated
  // descriptors), each with its request type.
  RequestParseInterceptorFactory();
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  std::map<std::string, std::string> request_types_;  // "/pkg.Service/Method" -> type
};

}  // namespace steerd

#endif  // STEERD_SERVER_API_REQUEST_PARSE_INTERCEPTOR_H_
