#include "server/cli/server_setup.h"

#include "server/util/status_macros.h"

namespace steerd {

absl::StatusOr<std::unique_ptr<ComposedServer>> ComposedServer::Start(const Options& options) {
  std::unique_ptr<ComposedServer> composed(new ComposedServer(options));
  ASSIGN_OR_RETURN(composed->authenticator_, Authenticator::Create({options.tenants}));
  ASSIGN_OR_RETURN(composed->limiter_, TenantLimiter::Create({}));
  StoreConfig store_config;
  store_config.url = options.store_url;
  store_config.data_dir = options.data_dir;
  store_config.client_name = options.replica_id;
  ASSIGN_OR_RETURN(composed->stores_, OpenStores(store_config));
  composed->metrics_ = std::make_unique<ServingMetrics>();
  composed->api_ = std::make_unique<ApiContext>(composed->authenticator_.get(),
                                                composed->limiter_.get(), composed->metrics_.get());
  ASSIGN_OR_RETURN(composed->server_, ApiServer::Start(options.server, composed->api_.get()));
  if (options.http.has_value()) {
    ASSIGN_OR_RETURN(composed->http_, OpenAiHttpServer::Start(*options.http, composed->api_.get()));
  }
  return composed;
}

ComposedServer::~ComposedServer() {
  // The engines must still run while the port shuts down: cancelled streams end only
  // when their engine drops them. grpc::Server::Shutdown is a no-op the second time.
  if (server_ != nullptr) server_->Shutdown(absl::Now());
  if (http_ != nullptr) http_->Shutdown(absl::Now());
  training_.reset();
  change_feed_.reset();
  core_.reset();
}

absl::Status ComposedServer::LoadModels() {
  ASSIGN_OR_RETURN(core_,
                   ServingCore::Create(options_.core, stores_.vectors.get(), metrics_.get()));
  RETURN_IF_ERROR(core_->Warmup());
  if (stores_.database != nullptr) {
    PostgresChangeFeed::Options feed;
    feed.database = stores_.database.get();
    ServingCore* core = core_.get();
    feed.on_change = [core](const VectorChange& change) { core->ApplyVectorChange(change); };
    ASSIGN_OR_RETURN(change_feed_, PostgresChangeFeed::Start(feed));
  }
  TrainingManager::Options training = options_.training;
  training.replica_id = options_.replica_id;
  ASSIGN_OR_RETURN(training_, TrainingManager::Create(training, core_.get(),
                                                      stores_.jobs.get(),
                                                      stores_.vectors.get()));
  RETURN_IF_ERROR(training_->Start());
  api_->SetCore(core_.get());
  api_->SetTraining(training_.get());
  server_->SetServing(true);
  if (http_ != nullptr) http_->SetServing(true);
  return absl::OkStatus();
}

void ComposedServer::Drain(absl::Time deadline) {
  server_->SetServing(false);
  if (http_ != nullptr) http_->SetServing(false);
  api_->StartDraining();
  // Training first: its rollouts are engine requests the drain would otherwise wait for.
  if (training_ != nullptr) training_->Shutdown();
  if (core_ != nullptr) core_->Drain(deadline);
  // Every generation has ended; give the last chunks a moment to reach their clients
  // (gRPC waits the whole grace while any client keeps an idle connection open).
  // HTTP streams end with their generations (they were waited for above); the port
  // closes once they have been written.
  if (http_ != nullptr) http_->Shutdown(absl::Now() + absl::Milliseconds(500));
  server_->Shutdown(absl::Now() + absl::Milliseconds(500));
}

}  // namespace steerd
