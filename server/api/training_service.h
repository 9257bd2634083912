// The steerd.v1 Training service over the training manager, on gRPC's callback API and
// with the conventions of the other services (services.h): each handler authenticates
// the call, applies the tenant's rate limit, converts the request (training_convert.h)
// and calls the manager, which checks everything else with the codes training.proto
// documents; every call is counted by RPC and status code. WatchJob hears the job's
// events on the manager's threads through a watcher that only queues them; the shared
// pump thread (reactor_pump.h) starts the writes. A client slower than the job keeps at
// most one pending step-metrics event between state changes (a newer one replaces it)
// and never loses a state change, so a stream costs bounded memory however slow its
// reader.
// Thread-safety: called by gRPC from many threads; ApiContext and TrainingManager are
// thread-safe.
#ifndef STEERD_SERVER_API_TRAINING_SERVICE_H_
#define STEERD_SERVER_API_TRAINING_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include "server/api/services.h"
#include "server/engine/training_manager.h"
#include "steerd/v1/training.grpc.pb.h"

namespace steerd {

class TrainingService final : public v1::Training::CallbackService {
 public:
  // `api` must outlive the service and its calls. RPCs answer UNAVAILABLE until `api`
  // has a training manager (models loaded) and once the server drains.
  explicit TrainingService(ApiContext* api) : api_(api) {}

  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* context,
                                      const v1::CreateJobRequest* request,
                                      v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request, v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const v1::CancelJobRequest* request,
                                      v1::Job* response) override;
  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* context,
                                                   const v1::WatchJobRequest* request) override;

 private:
  ApiContext* const api_;
};

}  // namespace steerd

#endif  // STEERD_SERVER_API_TRAINING_SERVICE_H_
