#include "server/api/training_service.h"

#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/api/grpc_status.h"
#include "server/api/proto_convert.h"
#include "server/api/stream_pump.h"
#include "server/api/training_convert.h"
#include "server/engine/job_spec.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kDefaultJobPage = 50;
constexpr int64_t kMaxJobPage = 1000;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// An admitted Training RPC: the caller's tenant and the manager.
struct Admitted {
  const Tenant* tenant;
  TrainingManager* manager;
};

// Admission of every Training RPC: authentication, the rate limit, and UNAVAILABLE
// while the server is starting or draining.
absl::StatusOr<Admitted> Admit(ApiContext* api, grpc::CallbackServerContext* context) {
  ASSIGN_OR_RETURN(const Tenant* tenant, api->Admit(context));
  ASSIGN_OR_RETURN(TrainingManager* manager, api->Training());
  return Admitted{tenant, manager};
}

// A unary Training RPC: admission, the manager, the handler.
template <typename Handler>
grpc::ServerUnaryReactor* RunUnary(ApiContext* api, grpc::CallbackServerContext* context,
                                   const char* rpc, Handler&& handler) {
  return api->RunUnary(context, rpc, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Admitted admitted, Admit(api, context));
    return handler(*admitted.tenant, *admitted.manager);
  });
}

// The watcher side of one WatchJob call, shared by the RPC's reactor and the manager
// (which may call it until the watch handle is destroyed, after the reactor is done).
// Events are only queued on the manager's threads; writes start on the pump thread, or
// from OnWriteDone while a stream is busy, one at a time (stream_pump.h).
class JobWatch final : public JobWatcher,
                       public StreamPump<v1::JobEvent>,
                       public std::enable_shared_from_this<JobWatch> {
 public:
  JobWatch(ApiContext* api, grpc::ServerWriteReactor<v1::JobEvent>* reactor)
      : StreamPump(api->pump(), reactor), api_(api) {}

  // Admission and subscription (the first event arrives before this returns); on error
  // the caller finishes the RPC with FinishEarly.
  absl::Status Start(grpc::CallbackServerContext* context, const v1::WatchJobRequest& request) {
    ASSIGN_OR_RETURN(Admitted admitted, Admit(api_, context));
    RETURN_IF_ERROR(ValidateJobId(request.id()));
    ASSIGN_OR_RETURN(std::unique_ptr<TrainingManager::Watch> watch,
                     admitted.manager->WatchJob(admitted.tenant->name, request.id(),
                                                shared_from_this()));
    absl::MutexLock lock(&stream_mu_);
    watch_ = std::move(watch);
    return absl::OkStatus();
  }

  void OnEvent(const JobEvent& event) override {
    bool post;
    {
      absl::MutexLock lock(&stream_mu_);
      if (ended_) return;
      // Only the newest metrics matter to a reader that fell behind: a pending metrics
      // event is replaced, so the queue holds at most one between state changes.
      if (event.kind == JobEvent::Kind::kMetrics && !queue_.empty() &&
          queue_.back().kind == JobEvent::Kind::kMetrics) {
        queue_.back() = event;
      } else {
        queue_.push_back(event);
      }
      post = NeedsPumpLocked();
    }
    if (post) PostPump(shared_from_this());
  }

  void OnEnd(const absl::Status& status) override {
    bool post;
    {
      absl::MutexLock lock(&stream_mu_);
      if (ended_) return;
      ended_ = true;
      end_status_ = ToGrpcStatus(status);
      post = NeedsPumpLocked();
    }
    if (post) PostPump(shared_from_this());
  }

  // The client went away or its deadline passed: no further event is wanted.
  void Cancel() {
    Unsubscribe();
    {
      absl::MutexLock lock(&stream_mu_);
      MarkBrokenLocked();
      if (!ended_) {
        ended_ = true;
        end_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
    }
    Pump();
  }

  // Destroys the watch handle, after which the manager calls this watcher no more.
  // Never called from a watcher callback or under stream_mu_: the handle may wait for a
  // callback in flight, which takes stream_mu_.
  void Unsubscribe() {
    std::unique_ptr<TrainingManager::Watch> watch;
    {
      absl::MutexLock lock(&stream_mu_);
      watch = std::move(watch_);
    }
    watch.reset();
  }

 private:
  // Every queued event is written, in order, unless the client is gone; the finish
  // follows the last one.
  Next NextLocked(bool broken, v1::JobEvent* message, grpc::Status* status) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(stream_mu_) {
    if (broken) {
      // Nothing more reaches the client; finish once the watch is over.
      if (!ended_) return Next::kNothing;
      *status = end_status_.ok()
                    ? grpc::Status(grpc::StatusCode::CANCELLED, "the client went away")
                    : end_status_;
      return Next::kFinish;
    }
    if (!queue_.empty()) {
      message->Clear();
      ToProto(queue_.front(), message);
      queue_.pop_front();
      return Next::kWrite;
    }
    if (ended_) {
      *status = end_status_;
      return Next::kFinish;
    }
    return Next::kNothing;
  }

  void RecordFinish(const grpc::Status& status) override {
    api_->metrics()->RecordRpc("grpc", "WatchJob", GrpcCodeName(status.error_code()),
                               SecondsSince(start_));
  }

  ApiContext* const api_;
  const Clock::time_point start_ = Clock::now();
  // Guarded by the pump's stream_mu_ (stream_pump.h).
  std::unique_ptr<TrainingManager::Watch> watch_ ABSL_GUARDED_BY(stream_mu_);
  std::deque<JobEvent> queue_ ABSL_GUARDED_BY(stream_mu_);
  bool ended_ ABSL_GUARDED_BY(stream_mu_) = false;  // OnEnd or Cancel: no event follows.
  grpc::Status end_status_ ABSL_GUARDED_BY(stream_mu_);
};

class WatchJobReactor final : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  WatchJobReactor(ApiContext* api, grpc::CallbackServerContext* context,
                  const v1::WatchJobRequest* request)
      : watch_(std::make_shared<JobWatch>(api, this)) {
    absl::Status status = watch_->Start(context, *request);
    if (!status.ok()) watch_->FinishEarly(ToGrpcStatus(status));
  }
  void OnWriteDone(bool ok) override { watch_->OnWriteDone(ok); }
  void OnCancel() override { watch_->Cancel(); }
  void OnDone() override {
    // The manager may still hold the watcher; it must not call it once we are gone.
    watch_->Unsubscribe();
    delete this;
  }

 private:
  std::shared_ptr<JobWatch> watch_;
};

}  // namespace

grpc::ServerUnaryReactor* TrainingService::CreateJob(grpc::CallbackServerContext* context,
                                                     const v1::CreateJobRequest* request,
                                                     v1::Job* response) {
  return RunUnary(api_, context, "CreateJob", [&](const Tenant& tenant, TrainingManager& manager) -> absl::Status {
    ASSIGN_OR_RETURN(CreateJobParams params, FromProto(*request));
    ASSIGN_OR_RETURN(JobRecord job, manager.CreateJob(tenant.name, JobLimitsOf(tenant.limits),
                                                        std::move(params)));
    ToProto(job, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TrainingService::GetJob(grpc::CallbackServerContext* context,
                                                  const v1::GetJobRequest* request,
                                                  v1::Job* response) {
  return RunUnary(api_, context, "GetJob", [&](const Tenant& tenant, TrainingManager& manager) -> absl::Status {
    RETURN_IF_ERROR(ValidateJobId(request->id()));
    ASSIGN_OR_RETURN(JobRecord job, manager.GetJob(tenant.name, request->id()));
    ToProto(job, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TrainingService::ListJobs(grpc::CallbackServerContext* context,
                                                    const v1::ListJobsRequest* request,
                                                    v1::ListJobsResponse* response) {
  return RunUnary(api_, context, "ListJobs", [&](const Tenant& tenant, TrainingManager& manager) -> absl::Status {
    JobListQuery query;
    query.tenant = tenant.name;
    ASSIGN_OR_RETURN(query.state, JobStateFilter(request->state()));
    ASSIGN_OR_RETURN(query.limit,
                     EffectivePageSize(request->page_size(), kDefaultJobPage, kMaxJobPage));
    const std::string filters = absl::StrCat("jobs|", static_cast<int>(request->state()));
    if (!request->page_token().empty()) {
      ASSIGN_OR_RETURN(PagePosition position, DecodePageToken(request->page_token(), filters));
      query.after_id = position.after_name;
    }
    ASSIGN_OR_RETURN(JobPage page, manager.ListJobs(query));
    for (const JobRecord& job : page.jobs) ToProto(job, response->add_jobs());
    if (page.more && !page.jobs.empty()) {
      response->set_next_page_token(EncodePageToken(filters, page.jobs.back().id, 0));
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TrainingService::CancelJob(grpc::CallbackServerContext* context,
                                                     const v1::CancelJobRequest* request,
                                                     v1::Job* response) {
  return RunUnary(api_, context, "CancelJob", [&](const Tenant& tenant, TrainingManager& manager) -> absl::Status {
    RETURN_IF_ERROR(ValidateJobId(request->id()));
    ASSIGN_OR_RETURN(JobRecord job, manager.CancelJob(tenant.name, request->id()));
    ToProto(job, response);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::JobEvent>* TrainingService::WatchJob(
    grpc::CallbackServerContext* context, const v1::WatchJobRequest* request) {
  return new WatchJobReactor(api_, context, request);
}

}  // namespace steerd
