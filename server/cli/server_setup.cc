#include "server/cli/server_setup.h"

#include <filesystem>

#include "server/util/status_macros.h"

namespace steerd {

absl::StatusOr<std::unique_ptr<ComposedServer>> ComposedServer::Start(const Options& options) {
  std::unique_ptr<ComposedServer> composed(new ComposedServer(options));
  ASSIGN_OR_RETURN(composed->authenticator_, Authenticator::Create({options.tenants}));
  ASSIGN_OR_RETURN(composed->limiter_, TenantLimiter::Create({}));
  SqliteVectorStore::Options store_options;
  store_options.path = (std::filesystem::path(options.data_dir) / "steerd.db").string();
  ASSIGN_OR_RETURN(composed->store_, SqliteVectorStore::Create(store_options));
  SqliteJobStore::Options job_store_options;
  job_store_options.path = store_options.path;
  ASSIGN_OR_RETURN(composed->job_store_, SqliteJobStore::Create(job_store_options));
  composed->metrics_ = std::make_unique<ServingMetrics>();
  composed->api_ = std::make_unique<ApiContext>(composed->authenticator_.get(),
                                                composed->limiter_.get(), composed->metrics_.get());
  ASSIGN_OR_RETURN(composed->server_, ApiServer::Start(options.server, composed->api_.get()));
  return composed;
}

ComposedServer::~ComposedServer() {
  // The engines must still run while the port shuts down: cancelled streams end only
  // when their engine drops them. grpc::Server::Shutdown is a no-op the second time.
  if (server_ != nullptr) server_->Shutdown(absl::Now());
  training_.reset();
  core_.reset();
}

absl::Status ComposedServer::LoadModels() {
  ASSIGN_OR_RETURN(core_, ServingCore::Create(options_.core, store_.get(), metrics_.get()));
  RETURN_IF_ERROR(core_->Warmup());
  ASSIGN_OR_RETURN(training_, TrainingManager::Create(options_.training, core_.get(),
                                                      job_store_.get(), store_.get()));
  RETURN_IF_ERROR(training_->Start());
  api_->SetCore(core_.get());
  api_->SetTraining(training_.get());
  server_->SetServing(true);
  return absl::OkStatus();
}

void ComposedServer::Drain(absl::Time deadline) {
  server_->SetServing(false);
  api_->StartDraining();
  // Training first: its rollouts are engine requests the drain would otherwise wait for.
  if (training_ != nullptr) training_->Shutdown();
  if (core_ != nullptr) core_->Drain(deadline);
  // Every generation has ended; give the last chunks a moment to reach their clients
  // (gRPC waits the whole grace while any client keeps an idle connection open).
  server_->Shutdown(absl::Now() + absl::Milliseconds(500));
}

}  // namespace steerd
