#include "server/api/api_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <fstream>
#include <limits>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/api/request_parse_interceptor.h"

namespace steerd {
namespace {

constexpr const char* kServiceNames[] = {"steerd.v1.Models", "steerd.v1.Vectors",
                                         "steerd.v1.Generation", "steerd.v1.Training"};

// A duration as the int milliseconds of a gRPC channel argument; INT_MAX (gRPC's
// "unlimited") for an infinite or too long one.
int ChannelArgMillis(absl::Duration duration) {
  if (duration >= absl::Milliseconds(std::numeric_limits<int>::max())) {
    return std::numeric_limits<int>::max();
  }
  return static_cast<int>(absl::ToInt64Milliseconds(duration));
}

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the ", what, " ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ApiServer>> ApiServer::Start(const Options& options,
                                                            ApiContext* api) {
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  }
  if (options.max_connection_age < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-connection-age must be at least 1ms (inf for no limit), got ",
        absl::FormatDuration(options.max_connection_age)));
  }
  if (options.max_connection_age_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-connection-age-grace must not be negative (inf for no limit), got ",
        absl::FormatDuration(options.max_connection_age_grace)));
  }
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_cert_file.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    auto cert = ReadFile(options.tls_cert_file, "TLS certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadFile(options.tls_key_file, "TLS key");
    if (!key.ok()) return key.status();
    pair.cert_chain = *cert;
    pair.private_key = *key;
    ssl.pem_key_cert_pairs.push_back(pair);
    credentials = grpc::SslServerCredentials(ssl);
  }

  std::unique_ptr<ApiServer> server(new ApiServer());
  server->models_ = std::make_unique<ModelsService>(api);
  server->vectors_ = std::make_unique<VectorsService>(api);
  server->generation_ = std::make_unique<GenerationService>(api);
  server->training_ = std::make_unique<TrainingService>(api);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                             ChannelArgMillis(options.max_connection_age));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                             ChannelArgMillis(options.max_connection_age_grace));
  builder.RegisterService(server->models_.get());
  builder.RegisterService(server->vectors_.get());
  builder.RegisterService(server->generation_.get());
  builder.RegisterService(server->training_.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<RequestParseInterceptorFactory>());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen_address,
                     " (address in use, malformed, or not permitted)"));
  }
  server->SetServing(false);
  return server;
}

ApiServer::~ApiServer() {
  if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
}

std::shared_ptr<grpc::Channel> ApiServer::InProcessChannel(
    const grpc::ChannelArguments& arguments) {
  return server_->InProcessChannel(arguments);
}

void ApiServer::SetServing(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);  // The overall status ("").
  for (const char* name : kServiceNames) health->SetServingStatus(name, serving);
}

void ApiServer::Shutdown(absl::Time deadline) {
  SetServing(false);
  server_->Shutdown(absl::ToChronoTime(deadline));
}

}  // namespace steerd
