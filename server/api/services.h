// The steerd.v1 gRPC services (Models, Vectors, Generation) over the serving core, on
// gRPC's callback API. Each handler authenticates the call, applies the tenant's rate
// limit, converts the request and calls the core: transport only, no serving logic.
// Generate and GenerateStream receive their tokens from the engine thread through an
// observer that only buffers them; a pump thread (reactor_pump.h) starts the writes.
// Streamed tokens are coalesced while a write is in flight, so a slow client costs the
// engine nothing and receives everything produced since its previous chunk. A client
// cancel or deadline cancels the engine sequence, which frees its row before the next
// decode step.
// Thread-safety: the services are called by gRPC from many threads; ApiContext is
// shared by them and is thread-safe.
#ifndef STEERD_SERVER_API_SERVICES_H_
#define STEERD_SERVER_API_SERVICES_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/api/grpc_status.h"
#include "server/api/reactor_pump.h"
#include "server/engine/metrics.h"
#include "server/engine/serving_core.h"
#include "server/engine/training_manager.h"
#include "server/tenancy/tenants.h"
#include "steerd/v1/generation.grpc.pb.h"
#include "steerd/v1/models.grpc.pb.h"
#include "steerd/v1/vectors.grpc.pb.h"

namespace steerd {

// What every handler needs: the core (null until the models are loaded), auth, limits
// and metrics.
class ApiContext {
 public:
  ApiContext(const Authenticator* authenticator, TenantLimiter* limiter,
             ServingMetrics* metrics)
      : authenticator_(authenticator), limiter_(limiter), metrics_(metrics) {}

  // Makes the core visible to RPCs (after loading and warm-up).
  void SetCore(ServingCore* core) { core_.store(core); }
  // Makes the training manager visible to RPCs (after the core).
  void SetTraining(TrainingManager* training) { training_.store(training); }
  // The training manager, or UNAVAILABLE while starting or draining.
  absl::StatusOr<TrainingManager*> Training() const;
  // From now on, new generations fail with UNAVAILABLE.
  void StartDraining() { draining_.store(true); }

  // The core, or UNAVAILABLE while starting (`for_generation`: or draining).
  absl::StatusOr<ServingCore*> Core(bool for_generation) const;
  // The caller's tenant after authentication and the rate limit.
  absl::StatusOr<const Tenant*> Admit(const grpc::CallbackServerContext* context);
  // The same for the value of an `authorization` header ("Bearer KEY"), whichever the
  // protocol that carried it.
  absl::StatusOr<const Tenant*> Admit(absl::string_view authorization);

  // Runs a unary RPC that completes on the calling thread: `body` (admission and the
  // handler), then the status and the metrics. Every service's unary RPCs go through it.
  template <typename Body>
  grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context, const char* rpc,
                                     Body&& body) {
    const auto start = std::chrono::steady_clock::now();
    const absl::Status status = body();
    RecordRpc(rpc, status, start);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(status));
    return reactor;
  }

  TenantLimiter* limiter() { return limiter_; }
  ServingMetrics* metrics() { return metrics_; }
  // Runs reactor operations requested from the engine thread.
  ReactorPump* pump() { return &pump_; }

 private:
  void RecordRpc(const char* rpc, const absl::Status& status,
                 std::chrono::steady_clock::time_point start);

  const Authenticator* authenticator_;
  TenantLimiter* limiter_;
  ServingMetrics* metrics_;
  ReactorPump pump_;
  std::atomic<ServingCore*> core_{nullptr};
  std::atomic<TrainingManager*> training_{nullptr};
  std::atomic<bool> draining_{false};
};

class ModelsService final : public v1::Models::CallbackService {
 public:
  explicit ModelsService(ApiContext* api) : api_(api) {}
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const v1::GetModelRequest* request,
                                     v1::Model* response) override;

 private:
  ApiContext* api_;
};

class VectorsService final : public v1::Vectors::CallbackService {
 public:
  explicit VectorsService(ApiContext* api) : api_(api) {}
  grpc::ServerUnaryReactor* CreateVector(grpc::CallbackServerContext* context,
                                         const v1::CreateVectorRequest* request,
                                         v1::Vector* response) override;
  grpc::ServerUnaryReactor* GetVector(grpc::CallbackServerContext* context,
                                      const v1::GetVectorRequest* request,
                                      v1::Vector* response) override;
  grpc::ServerUnaryReactor* ListVectors(grpc::CallbackServerContext* context,
                                        const v1::ListVectorsRequest* request,
                                        v1::ListVectorsResponse* response) override;
  grpc::ServerUnaryReactor* ExportVector(grpc::CallbackServerContext* context,
                                         const v1::ExportVectorRequest* request,
                                         v1::ExportVectorResponse* response) override;
  grpc::ServerUnaryReactor* DeleteVector(grpc::CallbackServerContext* context,
                                         const v1::DeleteVectorRequest* request,
                                         v1::DeleteVectorResponse* response) override;

 private:
  ApiContext* api_;
};

class GenerationService final : public v1::Generation::CallbackService {
 public:
  explicit GenerationService(ApiContext* api) : api_(api) {}
  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateChunk>* GenerateStream(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;

 private:
  ApiContext* api_;
};

}  // namespace steerd

#endif  // STEERD_SERVER_API_SERVICES_H_
