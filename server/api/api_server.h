// The gRPC server of steerd: the steerd.v1 services, grpc.health.v1 and server
// reflection on one port, plaintext or TLS. It starts before the models are loaded so
// orchestrators can probe it: health reports NOT_SERVING (and the steerd.v1 RPCs
// UNAVAILABLE) until SetServing(true), and NOT_SERVING again once draining starts.
// Client connections are aged out (GOAWAY) so that clients rebalance over replicas.
// Thread-safety: all methods may be called from any thread.
#ifndef STEERD_SERVER_API_API_SERVER_H_
#define STEERD_SERVER_API_API_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/api/services.h"
#include "server/api/training_service.h"

namespace steerd {

class ApiServer {
 public:
  struct Options {
    std::string listen_address = "127.0.0.1:50051";  // Port 0 picks a free port.
    std::string tls_cert_file;  // PEM certificate chain; with tls_key_file enables TLS.
    std::string tls_key_file;   // PEM private key.
    int64_t max_message_bytes = 16 << 20;  // Larger requests: RESOURCE_EXHAUSTED.
    // A client connection older than this (gRPC adds up to +-10% jitter) gets a GOAWAY:
    // its running calls go on, its new ones go to a new connection, which the client's
    // resolver and load balancer place anew, so long-lived clients spread over replicas
    // that came up after they connected. InfiniteDuration: never. At least 1 ms.
    absl::Duration max_connection_age = absl::Minutes(5);
    // How long calls still running on a connection past its age may go on before the
    // connection is closed under them (they end UNAVAILABLE). InfiniteDuration: as long
    // as they run, so a GOAWAY never cuts a generation or a job watch however long; the
    // connection closes with its last call. Shutdown's deadline bounds them either way.
    absl::Duration max_connection_age_grace = absl::InfiniteDuration();
  };

  // Builds and starts the server (health NOT_SERVING). `api` must outlive it.
  static absl::StatusOr<std::unique_ptr<ApiServer>> Start(const Options& options,
                                                          ApiContext* api);
  ~ApiServer();

  int port() const { return port_; }
  // A channel to this server inside the process (no socket, no TLS), for service tests
  // and in-process drivers; the server's limits and interceptors apply as on the port.
  std::shared_ptr<grpc::Channel> InProcessChannel(const grpc::ChannelArguments& arguments);
  // Sets the health status of the server and of every steerd.v1 service.
  void SetServing(bool serving);
  // Stops accepting calls; calls still running after `deadline` are cancelled.
  void Shutdown(absl::Time deadline);

 private:
  ApiServer() = default;

  std::unique_ptr<ModelsService> models_;
  std::unique_ptr<VectorsService> vectors_;
  std::unique_ptr<GenerationService> generation_;
  std::unique_ptr<TrainingService> training_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace steerd

#endif  // STEERD_SERVER_API_API_SERVER_H_
