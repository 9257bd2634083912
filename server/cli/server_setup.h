// The composition of a steerd server, shared by `steerd serve` (flags, signals, metrics
// HTTP around it) and `steerd bench serve` (the same server in-process, driven over
// localhost gRPC): tenants' authentication and limits, the vector and job stores
// (SQLite in the data directory, or a shared PostgreSQL), the gRPC port and, when asked
// for, the OpenAI-compatible HTTP port, the serving core and the training manager.
// Start-up is split in two so the ports answer health checks (NOT_SERVING) while the
// models load.
// Thread-safety: Start, LoadModels, Drain and destruction from one thread; the
// accessors from any thread once the corresponding step is done.
#ifndef STEERD_SERVER_CLI_SERVER_SETUP_H_
#define STEERD_SERVER_CLI_SERVER_SETUP_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/api/api_server.h"
#include "server/api/services.h"
#include "server/engine/metrics.h"
#include "server/engine/serving_core.h"
#include "server/engine/training_manager.h"
#include "server/http/openai_server.h"
#include "server/storage/postgres_change_feed.h"
#include "server/storage/stores.h"
#include "server/tenancy/tenants.h"

namespace steerd {

class ComposedServer {
 public:
  struct Options {
    ServingCore::Options core;
    TrainingManager::Options training;
    ApiServer::Options server;
    // The OpenAI-compatible HTTP API beside the gRPC port; none when unset.
    std::optional<OpenAiHttpServer::Options> http;
    std::vector<Tenant> tenants;  // At least one.
    // The vector and job stores: a postgresql:// URL (shared by replicas), or empty
    // for SQLite in `data_dir` (steerd.db).
    std::string store_url;
    std::string data_dir;
    // This replica's id, as the store and the jobs it leases name it.
    std::string replica_id = "steerd";
  };

  // Builds authentication, limits and the store, and starts the gRPC port with health
  // NOT_SERVING (the steerd.v1 RPCs answer UNAVAILABLE until LoadModels()).
  static absl::StatusOr<std::unique_ptr<ComposedServer>> Start(const Options& options);
  // Shuts the port down, cancelling calls still running, before the core they use goes.
  ~ComposedServer();

  // Loads and warms every model, resumes the training jobs a previous process left,
  // then makes them visible to RPCs and reports SERVING.
  absl::Status LoadModels();
  // Health NOT_SERVING, training stops after its current steps (jobs resume on the next
  // start), no new generations, in-flight ones finish or are ended at `deadline`; then
  // the port closes (after a short grace for the last chunks).
  void Drain(absl::Time deadline);

  int port() const { return server_->port(); }
  // The HTTP API's port, 0 without one.
  int http_port() const { return http_ != nullptr ? http_->port() : 0; }
  // A channel to the server inside this process (see ApiServer::InProcessChannel).
  std::shared_ptr<grpc::Channel> InProcessChannel(const grpc::ChannelArguments& arguments) {
    return server_->InProcessChannel(arguments);
  }
  ServingMetrics* metrics() { return metrics_.get(); }
  // Where the vectors and jobs are kept, for the start-up log.
  const std::string& store_description() const { return stores_.description; }
  ServingCore* core() { return core_.get(); }  // Null before LoadModels().
  TrainingManager* training() { return training_.get(); }  // Null before LoadModels().

 private:
  explicit ComposedServer(const Options& options) : options_(options) {}

  const Options options_;
  // Declared in construction order: destroyed in reverse, each after its users.
  std::unique_ptr<Authenticator> authenticator_;
  std::unique_ptr<TenantLimiter> limiter_;
  Stores stores_;
  std::unique_ptr<ServingMetrics> metrics_;
  std::unique_ptr<ApiContext> api_;
  std::unique_ptr<ApiServer> server_;
  std::unique_ptr<OpenAiHttpServer> http_;
  std::unique_ptr<ServingCore> core_;
  // PostgreSQL only: other replicas' vector changes, applied to the core.
  std::unique_ptr<PostgresChangeFeed> change_feed_;
  std::unique_ptr<TrainingManager> training_;  // Uses the core: goes first.
};

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_SERVER_SETUP_H_
