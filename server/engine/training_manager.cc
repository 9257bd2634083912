#include "server/engine/training_manager.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <map>
#include <random>
#include <thread>
#include <utility>

#include <ATen/Parallel.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "server/engine/engine.h"
#include "server/engine/job_spec.h"
#include "server/engine/served_model.h"
#include "server/model/steering_file.h"
#include "server/model/torch_util.h"
#include "server/train/trainer.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

// Collects one background request's output for EngineRollouts.
class CollectingObserver : public GenerationObserver {
 public:
  explicit CollectingObserver(absl::BlockingCounter* done) : done_(done) {}
  void OnAdmitted(const AdmittedGeneration&) override {}
  void OnTokens(TokenDelta delta) override {
    result_.tokens.insert(result_.tokens.end(), delta.token_ids.begin(), delta.token_ids.end());
    result_.text += delta.text;
  }
  void OnFinished(const GenerationSummary& summary) override {
    status_ = summary.status;
    result_.finish_reason = summary.finish_reason;
    done_->DecrementCount();
  }
  // Valid once the counter reached zero (the engine thread wrote these before).
  const absl::Status& status() const { return status_; }
  GenerationResult& result() { return result_; }

 private:
  absl::BlockingCounter* done_;
  absl::Status status_;
  GenerationResult result_;
};

// A job's rollouts and evaluations as background requests of the model's engine: the
// job's current vector is one more row of the serving batch.
class EngineRollouts : public train::RolloutBackend {
 public:
  explicit EngineRollouts(ServingCore::ServedModel* served) : served_(served) {}

  absl::StatusOr<std::vector<GenerationResult>> Generate(
      std::vector<GenerationRequest> requests) override {
    const size_t n = requests.size();
    absl::BlockingCounter done(static_cast<int>(n));
    std::vector<std::shared_ptr<CollectingObserver>> observers;
    // Requests of one step share their steering tensor; it becomes one resident vector.
    std::map<const void*, std::shared_ptr<const ResidentVector>> vectors;
    // The rollouts of one prompt share its prefill through the prefix cache; a step's
    // own namespace keeps other steps (other vectors) and other jobs out of it.
    static std::atomic<uint64_t> steps{0};
    const std::string name_space = absl::StrCat("rollouts\x1f", steps.fetch_add(1));
    absl::Status submit_error;
    size_t submitted = 0;
    for (; submitted < n; ++submitted) {
      GenerationRequest& r = requests[submitted];
      EngineRequest request;
      request.background = true;
      request.steering_scale = r.steering_scale;
      request.prefix_namespace =
          r.steering.defined() ? absl::StrFormat("%s\x1f%p\x1f%a", name_space,
                                                 r.steering.data_ptr(), r.steering_scale)
                               : absl::StrCat(name_space, "\x1f-");
      if (r.steering.defined()) {
        auto& vector = vectors[r.steering.data_ptr()];
        if (vector == nullptr) {
          auto resident = std::make_shared<ResidentVector>();
          submit_error = CatchTorchErrors("preparing the job's vector", [&]() -> absl::Status {
            resident->vector = r.steering.detach()
                                   .to(served_->model->device(), served_->model->dtype())
                                   .contiguous();  // [L, d]
            return absl::OkStatus();
          });
          if (!submit_error.ok()) break;
          vector = std::move(resident);
        }
        request.vector = vector;
      }
      r.steering = at::Tensor();
      request.generation = std::move(r);
      observers.push_back(std::make_shared<CollectingObserver>(&done));
      request.observer = observers.back();
      absl::StatusOr<std::shared_ptr<GenerationHandle>> handle =
          served_->engine->Submit(std::move(request));
      if (!handle.ok()) {
        observers.pop_back();
        submit_error = handle.status();
        break;
      }
      absl::MutexLock lock(&mu_);
      handles_.push_back(*std::move(handle));
      if (cancelled_) handles_.back()->Cancel();
    }
    // Whatever was submitted ends (or is cancelled) before this returns: the observers
    // live on this stack.
    if (!submit_error.ok()) CancelInFlight();
    for (size_t i = submitted; i < n; ++i) done.DecrementCount();
    done.Wait();
    {
      absl::MutexLock lock(&mu_);
      handles_.clear();
      if (cancelled_) return absl::CancelledError("the job's rollouts were cancelled");
    }
    RETURN_IF_ERROR(submit_error);
    std::vector<GenerationResult> results;
    results.reserve(n);
    for (auto& observer : observers) {
      RETURN_IF_ERROR(observer->status());
      if (observer->result().finish_reason == FinishReason::kCancelled) {
        return absl::UnavailableError("the engine ended the job's rollouts (shutting down)");
      }
      results.push_back(std::move(observer->result()));
    }
    return results;
  }

  // Ends the current and every later Generate() with CANCELLED.
  void Cancel() {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    for (auto& handle : handles_) handle->Cancel();
  }

 private:
  void CancelInFlight() {
    absl::MutexLock lock(&mu_);
    for (auto& handle : handles_) handle->Cancel();
  }

  ServingCore::ServedModel* served_;
  absl::Mutex mu_;
  std::vector<std::shared_ptr<GenerationHandle>> handles_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

std::string NewJobId() {
  std::random_device random;
  const uint64_t high = (static_cast<uint64_t>(random()) << 32) ^ random();
  const uint64_t low = (static_cast<uint64_t>(random()) << 32) ^ random();
  char buffer[40];
  std::snprintf(buffer, sizeof(buffer), "job-%016llx%08llx",
                static_cast<unsigned long long>(high),
                static_cast<unsigned long long>(low & 0xffffffffULL));
  return buffer;
}

// The trainer's options for a normalized spec.
train::TrainerOptions TrainerOptionsOf(const JobSpec& spec) {
  const JobHyperparameters& h = spec.hyperparameters;
  train::TrainerOptions o;
  o.method = train::TrainableSet::kSteering;
  o.objective = spec.algorithm == JobAlgorithm::kSft ? train::Objective::kSft
                                                     : train::Objective::kRl;
  o.algorithm = spec.algorithm == JobAlgorithm::kGrpo ? train::RlAlgorithm::kGrpo
                                                      : train::RlAlgorithm::kRloo;
  o.steering_layers.assign(h.layers.begin(), h.layers.end());
  o.steps = h.steps;
  o.prompts_per_step = h.prompts_per_step;
  o.rollouts_per_prompt = h.rollouts_per_prompt;
  o.batch_size = h.prompts_per_step;
  o.learning_rate = h.learning_rate;
  o.max_new_tokens = h.max_new_tokens;
  o.temperature = h.temperature.value_or(1.0);
  o.seed = h.seed.value_or(0);
  o.grpo_clip = h.clip_epsilon;
  o.grpo_epochs = h.inner_epochs;
  o.reward = RewardOptionsOf(spec);
  // A raw prompt is encoded as Generate encodes one (with BOS where the tokenizer adds
  // it); a rendered conversation already carries its special tokens.
  o.add_special_tokens = !spec.apply_chat_template;
  return o;
}

// A fenced write of a lease that is no longer this replica's.
bool IsLeaseLost(const absl::Status& status) {
  const std::optional<ErrorDetails> details = GetErrorDetails(status);
  return !status.ok() && details.has_value() && details->reason == "LEASE_LOST";
}

// A publish refused because the job was cancelled through another replica.
bool IsJobCancelled(const absl::Status& status) {
  const std::optional<ErrorDetails> details = GetErrorDetails(status);
  return !status.ok() && details.has_value() && details->reason == "JOB_CANCELLED";
}

}  // namespace

class TrainingManager::Impl {
 public:
  Impl(const Options& options, ServingCore* core, JobStore* jobs, VectorStore* vectors)
      : options_(options), core_(core), jobs_(jobs), vectors_(vectors) {}
  ~Impl() { Shutdown(); }

  absl::Status Start();
  void Shutdown();
  absl::StatusOr<JobRecord> CreateJob(const std::string& tenant, const JobLimits& limits,
                                      CreateJobParams params);
  absl::StatusOr<JobRecord> GetJob(const std::string& tenant, const std::string& id);
  absl::StatusOr<JobRecord> CancelJob(const std::string& tenant, const std::string& id);
  absl::StatusOr<std::unique_ptr<Watch>> WatchJob(const std::string& tenant,
                                                  const std::string& id,
                                                  std::shared_ptr<JobWatcher> watcher);
  JobStore* jobs() { return jobs_; }

 private:
  // A job this replica holds the lease of.
  struct LiveJob {
    JobRecord record;                  // Guarded by Impl::mu_. record.lease_epoch: the lease.
    bool cancel_requested = false;     // Guarded by Impl::mu_.
    // The lease was taken over, or could not be renewed in time: stop without writing.
    bool lease_lost = false;                       // Guarded by Impl::mu_.
    absl::Time lease_renewed = absl::InfinitePast();  // Guarded by Impl::mu_.
    std::map<int64_t, std::shared_ptr<JobWatcher>> watchers;  // Guarded by Impl::mu_.
    // The trainer thread's alone.
    std::unique_ptr<EngineRollouts> rollouts;  // Set under mu_; Cancel()ed by other threads.
    std::unique_ptr<train::Verifier> verifier;
    std::unique_ptr<train::Trainer> trainer;
    std::vector<train::Example> eval;
    absl::Time last_step_end = absl::InfinitePast();
    double seconds_per_step = 0.0;  // Moving average of this job's wall time per step.
  };
  // The jobs of one model and the thread that trains them.
  struct ModelWorker {
    std::string model;
    ServingCore::ServedModel* served = nullptr;
    std::vector<std::shared_ptr<LiveJob>> running;  // Guarded by Impl::mu_.
    size_t next = 0;                                // Guarded by Impl::mu_. Round robin.
    bool poked = false;  // Guarded by Impl::mu_: a job for this model was just created.
    absl::Time next_claim = absl::InfinitePast();  // Guarded by Impl::mu_.
    // The last claim's error ("" after a success) and when one was last logged.
    std::string claim_error;                               // Guarded by Impl::mu_.
    absl::Time claim_error_logged = absl::InfinitePast();  // Guarded by Impl::mu_.
    std::thread thread;
  };
  // A watch of a job another replica runs (or that is queued): read from the store.
  struct RemoteWatch {
    std::string tenant;
    std::string job_id;
    JobRecord last;  // What the watcher heard last.
    std::shared_ptr<JobWatcher> watcher;
  };
  class WatchHandle : public Watch {
   public:
    WatchHandle(Impl* impl, std::string job_id, int64_t watch_id)
        : impl_(impl), job_id_(std::move(job_id)), watch_id_(watch_id) {}
    ~WatchHandle() override {
      if (impl_ != nullptr) impl_->Unsubscribe(job_id_, watch_id_);
    }

   private:
    Impl* impl_;
    std::string job_id_;
    int64_t watch_id_;
  };

  ModelWorker* WorkerFor(const std::string& model) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the model's queued and running gauges. A member, not static: it reads the
  // worker's queues, which mu_ (this object's) guards.
  void UpdateGauges(ModelWorker* worker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unsubscribe(const std::string& job_id, int64_t watch_id);
  void WorkerLoop(ModelWorker* worker);
  void WorkerSteps(ModelWorker* worker);  // WorkerLoop's loop, until stopping.
  // The next job to step, claiming jobs from the store into free slots; null to stop.
  std::shared_ptr<LiveJob> NextJob(ModelWorker* worker);
  // Claims one job for the worker's model; whether it got one.
  bool Claim(ModelWorker* worker);
  // Renews the leases of the running jobs every lease_ttl / 3.
  void HeartbeatLoop();
  // Reads the jobs of remote watches every watch_poll_interval.
  void WatchPollLoop();
  // Drops a job whose lease is gone: no store write; its watchers are told to watch
  // again (the replica that holds it now reports it).
  void Abandon(ModelWorker* worker, const std::shared_ptr<LiveJob>& job);
  // Checkpoints and hands back the leases of the worker's jobs (at shutdown).
  void HandBack(ModelWorker* worker);
  // Loads datasets, builds the trainer (from the checkpoint when there is one) and
  // marks the job RUNNING.
  absl::Status StartJob(ModelWorker* worker, LiveJob* job);
  // One step (with its evaluation, checkpoint and, at the end, publication).
  absl::Status StepJob(ModelWorker* worker, LiveJob* job);
  absl::Status SaveCheckpoint(LiveJob* job);
  // Applies `change` to the job's record, stores it (outside mu_: only the trainer
  // thread changes a running job's record, and RPC threads must not wait on an fsync)
  // and then tells the watchers: a state change when `previous` is set, else metrics.
  absl::Status Record(LiveJob* job, std::optional<JobState> previous,
                      const std::function<void(JobRecord&)>& change);
  absl::StatusOr<double> Evaluate(ModelWorker* worker, LiveJob* job);
  // Moves a job to a terminal state, stores it, tells its watchers and forgets it.
  // Deletes the jobs that ended longer than Options::job_retention ago.
  void PruneExpiredJobs();
  void Finish(const std::shared_ptr<LiveJob>& job, JobState state, const absl::Status& error,
              int64_t vector_version);
  // Sends an event with the job's record to its watchers (a state change when
  // `previous` is set, metrics otherwise).
  void Publish(LiveJob* job, std::optional<JobState> previous)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static JobEvent MakeEvent(const JobRecord& record, std::optional<JobState> previous,
                            bool state_change);

  const Options options_;
  ServingCore* const core_;
  JobStore* const jobs_;
  VectorStore* const vectors_;

  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread heartbeat_;
  std::thread watch_poller_;
  std::map<int64_t, RemoteWatch> remote_watches_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<ModelWorker>> workers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<LiveJob>> live_ ABSL_GUARDED_BY(mu_);
  int64_t next_watch_id_ ABSL_GUARDED_BY(mu_) = 1;
};

JobEvent TrainingManager::Impl::MakeEvent(const JobRecord& record,
                                          std::optional<JobState> previous, bool state_change) {
  JobEvent event;
  event.time = absl::Now();
  event.job = record;
  event.kind = state_change ? JobEvent::Kind::kStateChange : JobEvent::Kind::kMetrics;
  event.previous_state = previous;
  if (record.metrics.has_value()) event.metrics = *record.metrics;
  return event;
}

void TrainingManager::Impl::Publish(LiveJob* job, std::optional<JobState> previous) {
  const bool state_change = previous.has_value();
  const JobEvent event = MakeEvent(job->record, previous, state_change);
  for (auto& [id, watcher] : job->watchers) watcher->OnEvent(event);
}

void TrainingManager::Impl::UpdateGauges(ModelWorker* worker) {
  const ModelMetrics& metrics = worker->served->metrics;
  // This replica's jobs: QUEUED ones are claimed and about to start.
  int64_t queued = 0;
  for (const auto& job : worker->running) queued += job->record.state == JobState::kQueued ? 1 : 0;
  if (metrics.training_jobs_queued) metrics.training_jobs_queued->Set(queued);
  if (metrics.training_jobs_running) {
    metrics.training_jobs_running->Set(static_cast<double>(worker->running.size()) - queued);
  }
}

TrainingManager::Impl::ModelWorker* TrainingManager::Impl::WorkerFor(const std::string& model) {
  auto it = workers_.find(model);
  if (it != workers_.end()) return it->second.get();
  absl::StatusOr<ServingCore::ServedModel*> served = core_->FindModel(model);
  if (!served.ok()) return nullptr;
  auto worker = std::make_unique<ModelWorker>();
  worker->model = model;
  worker->served = *served;
  ModelWorker* raw = worker.get();
  workers_[model] = std::move(worker);
  if (started_) raw->thread = std::thread([this, raw] { WorkerLoop(raw); });
  return raw;
}

void TrainingManager::Impl::PruneExpiredJobs() {
  if (options_.job_retention == absl::InfiniteDuration()) return;
  absl::StatusOr<int64_t> deleted = jobs_->DeleteEndedBefore(absl::Now() - options_.job_retention);
  if (!deleted.ok()) {
    std::fprintf(stderr, "steerd: deleting expired training jobs failed: %s\n",
                 deleted.status().ToString().c_str());
  }
}

absl::Status TrainingManager::Impl::Start() {
  PruneExpiredJobs();
  absl::MutexLock lock(&mu_);
  started_ = true;
  // Every loaded model claims its jobs, whichever replica created them.
  for (const ModelInfo& info : core_->ListModels()) WorkerFor(info.name);
  heartbeat_ = std::thread([this] { HeartbeatLoop(); });
  watch_poller_ = std::thread([this] { WatchPollLoop(); });
  return absl::OkStatus();
}

void TrainingManager::Impl::Shutdown() {
  std::vector<ModelWorker*> workers;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [model, worker] : workers_) {
      workers.push_back(worker.get());
      for (auto& job : worker->running) {
        if (job->rollouts != nullptr) job->rollouts->Cancel();
      }
    }
    if (!started_) return;
  }
  for (ModelWorker* worker : workers) {
    if (worker->thread.joinable()) worker->thread.join();
  }
  if (heartbeat_.joinable()) heartbeat_.join();
  if (watch_poller_.joinable()) watch_poller_.join();
  absl::MutexLock lock(&mu_);
  const absl::Status ending = absl::UnavailableError(
      "the server is shutting down; the job goes on on another replica or after the restart: "
      "watch again");
  for (auto& [id, job] : live_) {
    for (auto& [watch_id, watcher] : job->watchers) watcher->OnEnd(ending);
    job->watchers.clear();
  }
  for (auto& [watch_id, watch] : remote_watches_) watch.watcher->OnEnd(ending);
  remote_watches_.clear();
}

absl::StatusOr<JobRecord> TrainingManager::Impl::CreateJob(const std::string& tenant,
                                                           const JobLimits& limits,
                                                           CreateJobParams params) {
  if (params.spec.model.empty()) return InvalidFieldError("model", "is empty");
  ASSIGN_OR_RETURN(ServingCore::ServedModel * served, core_->FindModel(params.spec.model));
  const ModelInfo& info = served->info;
  ASSIGN_OR_RETURN(JobDatasets datasets,
                   NormalizeJobSpec(info, limits, options_.caps, &params));
  const JobSpec& spec = params.spec;
  if (limits.max_stored_vectors >= 0) {
    ASSIGN_OR_RETURN(int64_t stored, vectors_->CountVersions(tenant));
    if (stored >= limits.max_stored_vectors) {
      return LimitError(absl::StatusCode::kResourceExhausted,
                        absl::StrCat("the tenant stores ", stored,
                                     " vector versions, its limit (stored_vectors); ",
                                     "delete some before training another"),
                        "stored_vectors", absl::StrCat(limits.max_stored_vectors), stored);
    }
  }
  // The stored datasets hold the prompts as the model sees them, rendered once here;
  // every prompt must leave room for max_new_tokens, as the trainer requires.
  const int64_t new_tokens = spec.hyperparameters.max_new_tokens;
  auto prepare = [&](std::vector<train::Example>& examples, const char* field) -> absl::Status {
    for (size_t i = 0; i < examples.size(); ++i) {
      std::string& prompt = examples[i].prompt;
      if (spec.apply_chat_template) {
        ASSIGN_OR_RETURN(prompt, served->chat_template->Render({{ChatTurn::Role::kUser, prompt}}));
      }
      absl::StatusOr<std::vector<int32_t>> ids =
          served->tokenizer->Encode(prompt, !spec.apply_chat_template);
      if (!ids.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, "[", i, "].prompt: ", ids.status().message()));
      }
      if (static_cast<int64_t>(ids->size()) + new_tokens > info.max_context) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, "[", i, "].prompt is ", ids->size(), " tokens; with max_new_tokens ",
            new_tokens, " it needs more than model \"", info.name, "\"'s context of ",
            info.max_context));
      }
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(prepare(datasets.train, "examples"));
  RETURN_IF_ERROR(prepare(datasets.eval, "eval.examples"));
  JobRecord record;
  record.id = NewJobId();
  record.tenant = tenant;
  record.spec = spec;
  record.state = JobState::kQueued;
  record.create_time = absl::FromUnixMicros(absl::ToUnixMicros(absl::Now()));
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return DrainingError();
  }
  RETURN_IF_ERROR(jobs_->Create(record, datasets, limits.max_active_jobs));
  // Queued in the store: this replica looks for it at once, peers within their claim
  // interval; whoever has a free slot first runs it.
  absl::MutexLock lock(&mu_);
  ModelWorker* worker = WorkerFor(spec.model);
  if (worker != nullptr) worker->poked = true;
  return record;
}

absl::StatusOr<JobRecord> TrainingManager::Impl::GetJob(const std::string& tenant,
                                                        const std::string& id) {
  RETURN_IF_ERROR(ValidateJobId(id));
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it != live_.end() && it->second->record.tenant == tenant) return it->second->record;
  }
  return jobs_->Get(tenant, id);
}

absl::StatusOr<JobRecord> TrainingManager::Impl::CancelJob(const std::string& tenant,
                                                           const std::string& id) {
  RETURN_IF_ERROR(ValidateJobId(id));
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it != live_.end() && it->second->record.tenant == tenant) {
      // Ours: the trainer thread ends it at its next check, within about one step.
      LiveJob* job = it->second.get();
      job->cancel_requested = true;
      if (job->rollouts != nullptr) job->rollouts->Cancel();
      return job->record;
    }
  }
  // Queued (cancelled now), or run by another replica (which sees the request at its
  // next lease renewal).
  ASSIGN_OR_RETURN(JobRecord record, jobs_->RequestCancel(tenant, id));
  if (IsTerminal(record.state) && record.state != JobState::kCancelled) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " already ended ", JobStateName(record.state), "; only a QUEUED or "
        "RUNNING job can be cancelled"));
  }
  return record;
}

absl::StatusOr<std::unique_ptr<TrainingManager::Watch>> TrainingManager::Impl::WatchJob(
    const std::string& tenant, const std::string& id, std::shared_ptr<JobWatcher> watcher) {
  RETURN_IF_ERROR(ValidateJobId(id));
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it != live_.end() && it->second->record.tenant == tenant) {
      if (stopping_) {
        return absl::UnavailableError("the server is shutting down; watch again after restart");
      }
      LiveJob* job = it->second.get();
      watcher->OnEvent(MakeEvent(job->record, std::nullopt, /*state_change=*/true));
      const int64_t watch_id = next_watch_id_++;
      job->watchers[watch_id] = std::move(watcher);
      return std::unique_ptr<Watch>(new WatchHandle(this, id, watch_id));
    }
  }
  // Not ours: ended, queued, or run by another replica.
  ASSIGN_OR_RETURN(JobRecord record, jobs_->Get(tenant, id));
  watcher->OnEvent(MakeEvent(record, std::nullopt, /*state_change=*/true));
  if (IsTerminal(record.state)) {
    watcher->OnEnd(absl::OkStatus());
    return std::unique_ptr<Watch>(new WatchHandle(nullptr, id, 0));
  }
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    watcher->OnEnd(absl::UnavailableError("the server is shutting down; watch again"));
    return std::unique_ptr<Watch>(new WatchHandle(nullptr, id, 0));
  }
  const int64_t watch_id = next_watch_id_++;
  auto live = live_.find(id);
  if (live != live_.end()) {
    // Claimed here meanwhile: its events come from the trainer from now on.
    live->second->watchers[watch_id] = std::move(watcher);
  } else {
    remote_watches_[watch_id] = RemoteWatch{tenant, id, std::move(record), std::move(watcher)};
  }
  return std::unique_ptr<Watch>(new WatchHandle(this, id, watch_id));
}

void TrainingManager::Impl::Unsubscribe(const std::string& job_id, int64_t watch_id) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(job_id);
  if (it != live_.end()) it->second->watchers.erase(watch_id);
  remote_watches_.erase(watch_id);
}

void TrainingManager::Impl::WatchPollLoop() {
  pthread_setname_np(pthread_self(), "steerd-watch");
  while (true) {
    std::vector<std::pair<int64_t, RemoteWatch>> watches;
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.watch_poll_interval);
      if (stopping_) return;
      for (const auto& [id, watch] : remote_watches_) watches.emplace_back(id, watch);
    }
    for (auto& [watch_id, watch] : watches) {
      absl::StatusOr<JobRecord> now = jobs_->Get(watch.tenant, watch.job_id);
      if (!now.ok() && now.status().code() != absl::StatusCode::kNotFound) {
        continue;  // The store is away: the next poll tries again.
      }
      if (!now.ok()) {
        // Deleted (retention) while watched.
        absl::MutexLock lock(&mu_);
        auto it = remote_watches_.find(watch_id);
        if (it == remote_watches_.end()) continue;
        it->second.watcher->OnEnd(now.status());
        remote_watches_.erase(it);
        continue;
      }
      const JobRecord& before = watch.last;
      const bool state_change = now->state != before.state;
      const bool progress = now->step != before.step || now->metrics.has_value() !=
                                                            before.metrics.has_value() ||
                            (now->metrics.has_value() &&
                             now->metrics->eval_accuracy != before.metrics->eval_accuracy);
      absl::MutexLock lock(&mu_);
      auto it = remote_watches_.find(watch_id);
      if (it == remote_watches_.end()) continue;  // Unsubscribed meanwhile.
      if (state_change) {
        it->second.watcher->OnEvent(MakeEvent(*now, before.state, /*state_change=*/true));
      } else if (progress) {
        it->second.watcher->OnEvent(MakeEvent(*now, std::nullopt, /*state_change=*/false));
      }
      it->second.last = *now;
      if (IsTerminal(now->state)) {
        it->second.watcher->OnEnd(absl::OkStatus());
        remote_watches_.erase(it);
      }
    }
  }
}

void TrainingManager::Impl::Finish(const std::shared_ptr<LiveJob>& job, JobState state,
                                   const absl::Status& error, int64_t vector_version) {
  JobRecord record;
  {
    absl::MutexLock lock(&mu_);
    record = job->record;
  }
  const JobState previous = record.state;
  record.state = state;
  record.error = error;
  record.vector_version = vector_version;
  record.end_time = absl::FromUnixMicros(absl::ToUnixMicros(absl::Now()));
  if (record.metrics.has_value()) record.metrics->eta_seconds = 0.0;
  // Fenced by the lease: a replica that lost the job writes nothing.
  absl::Status stored = jobs_->Update(record);
  if (!stored.ok()) {
    std::fprintf(stderr, "steerd: job %s: cannot store its end: %s\n", record.id.c_str(),
                 stored.ToString().c_str());
  } else {
    (void)jobs_->DeleteCheckpoint(record.id);
  }
  PruneExpiredJobs();
  absl::MutexLock lock(&mu_);
  auto worker = workers_.find(record.spec.model);
  if (worker != workers_.end()) {
    const ModelMetrics& metrics = worker->second->served->metrics;
    prometheus::Counter* ended = state == JobState::kSucceeded ? metrics.training_jobs_succeeded
                                 : state == JobState::kFailed  ? metrics.training_jobs_failed
                                                               : metrics.training_jobs_cancelled;
    if (ended) ended->Increment();
  }
  job->record = record;
  Publish(job.get(), previous);
  for (auto& [id, watcher] : job->watchers) watcher->OnEnd(absl::OkStatus());
  job->watchers.clear();
  live_.erase(record.id);
}

std::shared_ptr<TrainingManager::Impl::LiveJob> TrainingManager::Impl::NextJob(
    ModelWorker* worker) {
  while (true) {
    bool claim = false;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this, worker]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || worker->poked || !worker->running.empty();
      };
      // Idle: look in the store every claim interval, or at once for a local job.
      if (worker->running.empty()) {
        mu_.AwaitWithDeadline(absl::Condition(&has_work),
                              std::max(worker->next_claim, absl::Now()));
      }
      if (stopping_) return nullptr;
      const bool free_slot =
          static_cast<int64_t>(worker->running.size()) < options_.max_running_jobs_per_model;
      claim = free_slot && (worker->poked || absl::Now() >= worker->next_claim);
      worker->poked = false;
      if (!claim && !worker->running.empty()) {
        // Round robin by step.
        std::shared_ptr<LiveJob> job = worker->running[worker->next % worker->running.size()];
        worker->next = (worker->next + 1) % worker->running.size();
        return job;
      }
    }
    if (claim) {
      // Fill the free slots, then step; look again after the claim interval.
      while (Claim(worker)) {
        absl::MutexLock lock(&mu_);
        if (static_cast<int64_t>(worker->running.size()) >= options_.max_running_jobs_per_model) {
          break;
        }
      }
      absl::MutexLock lock(&mu_);
      worker->next_claim = absl::Now() + options_.claim_interval;
    }
  }
}

bool TrainingManager::Impl::Claim(ModelWorker* worker) {
  JobClaim claim;
  claim.owner = options_.replica_id;
  claim.models = {worker->model};
  claim.ttl = options_.lease_ttl;
  claim.max_attempts = options_.max_attempts;
  absl::StatusOr<std::optional<JobLease>> lease = jobs_->ClaimJob(claim);
  {
    // The store is away: serving goes on and claims resume when it is back. Said once
    // a minute, not on every claim interval.
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (!lease.ok() && (worker->claim_error.empty() ||
                        now - worker->claim_error_logged >= absl::Minutes(1))) {
      std::fprintf(stderr, "steerd: cannot claim training jobs for %s: %s\n",
                   worker->model.c_str(), lease.status().ToString().c_str());
      worker->claim_error_logged = now;
    }
    if (lease.ok() && !worker->claim_error.empty()) {
      std::fprintf(stderr, "steerd: claiming training jobs for %s again\n",
                   worker->model.c_str());
    }
    worker->claim_error = lease.ok() ? "" : lease.status().ToString();
  }
  if (!lease.ok()) return false;
  if (!lease->has_value()) return false;
  auto job = std::make_shared<LiveJob>();
  job->record = std::move((*lease)->job);
  job->lease_renewed = absl::Now();
  bool stopping;
  {
    absl::MutexLock lock(&mu_);
    stopping = stopping_;
  }
  if (stopping) {
    // Too late to run it: hand the lease straight back.
    (void)jobs_->ReleaseLease(job->record.id, job->record.lease_epoch);
    return false;
  }
  absl::MutexLock lock(&mu_);
  worker->running.push_back(job);
  live_[job->record.id] = job;
  // Watches of the job taken while it was queued hear every step from now on.
  for (auto it = remote_watches_.begin(); it != remote_watches_.end();) {
    if (it->second.job_id == job->record.id) {
      job->watchers[it->first] = std::move(it->second.watcher);
      it = remote_watches_.erase(it);
    } else {
      ++it;
    }
  }
  UpdateGauges(worker);
  return true;
}

void TrainingManager::Impl::HeartbeatLoop() {
  pthread_setname_np(pthread_self(), "steerd-lease");
  while (true) {
    std::vector<std::shared_ptr<LiveJob>> jobs;
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.lease_ttl / 3);
      if (stopping_) return;
      for (const auto& [id, job] : live_) jobs.push_back(job);
    }
    for (const std::shared_ptr<LiveJob>& job : jobs) {
      int64_t epoch;
      std::string id;
      {
        absl::MutexLock lock(&mu_);
        epoch = job->record.lease_epoch;
        id = job->record.id;
      }
      absl::StatusOr<bool> cancel = jobs_->RenewLease(id, epoch, options_.lease_ttl);
      absl::MutexLock lock(&mu_);
      if (cancel.ok()) {
        job->lease_renewed = absl::Now();
        if (*cancel && !job->cancel_requested) {
          // Cancelled through another replica.
          job->cancel_requested = true;
          if (job->rollouts != nullptr) job->rollouts->Cancel();
        }
        continue;
      }
      // Taken over or gone; or the store stayed away until the lease ran out (a peer may
      // hold the job by now): either way this replica must not write it any more.
      const bool lost = cancel.status().code() != absl::StatusCode::kUnavailable ||
                        absl::Now() - job->lease_renewed >= options_.lease_ttl;
      if (lost && !job->lease_lost) {
        std::fprintf(stderr, "steerd: job %s: lease lost (%s); stopping it without writing\n",
                     id.c_str(), cancel.status().ToString().c_str());
        job->lease_lost = true;
        if (job->rollouts != nullptr) job->rollouts->Cancel();
      }
    }
  }
}

void TrainingManager::Impl::Abandon(ModelWorker* worker, const std::shared_ptr<LiveJob>& job) {
  absl::MutexLock lock(&mu_);
  auto& running = worker->running;
  running.erase(std::remove(running.begin(), running.end(), job), running.end());
  if (worker->next >= running.size()) worker->next = 0;
  UpdateGauges(worker);
  for (auto& [id, watcher] : job->watchers) {
    watcher->OnEnd(absl::UnavailableError(absl::StrCat(
        "job ", job->record.id, " moved to another replica; watch it again")));
  }
  job->watchers.clear();
  live_.erase(job->record.id);
}

void TrainingManager::Impl::HandBack(ModelWorker* worker) {
  std::vector<std::shared_ptr<LiveJob>> jobs;
  {
    absl::MutexLock lock(&mu_);
    jobs = worker->running;
  }
  for (const std::shared_ptr<LiveJob>& job : jobs) {
    bool lost;
    {
      absl::MutexLock lock(&mu_);
      lost = job->lease_lost;
    }
    if (lost) continue;
    // Left RUNNING with a fresh checkpoint: whoever claims it next resumes from here.
    if (job->trainer != nullptr) (void)SaveCheckpoint(job.get());
    (void)jobs_->ReleaseLease(job->record.id, job->record.lease_epoch);
  }
}

void TrainingManager::Impl::WorkerLoop(ModelWorker* worker) {
  WorkerSteps(worker);
  HandBack(worker);
}

void TrainingManager::Impl::WorkerSteps(ModelWorker* worker) {
  pthread_setname_np(pthread_self(), "steerd-train");  // For top -H and debuggers.
  if (options_.idle_priority) {
    // Serving first: the OS runs this thread only on CPU time the engine and the RPC
    // threads leave. Linux applies nice values per thread.
    setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 19);
  }
  at::set_num_threads(1);
  while (true) {
    std::shared_ptr<LiveJob> job = NextJob(worker);
    if (job == nullptr) break;
    bool cancel, stopping;
    {
      absl::MutexLock lock(&mu_);
      cancel = job->cancel_requested;
      stopping = stopping_;
    }
    absl::Status status = absl::OkStatus();
    if (!cancel && !stopping) {
      status = job->trainer == nullptr ? StartJob(worker, job.get()) : absl::OkStatus();
      if (status.ok()) status = StepJob(worker, job.get());
    }
    {
      absl::MutexLock lock(&mu_);
      cancel = job->cancel_requested;
      stopping = stopping_;
    }
    bool done = false;
    bool lost = false;
    int64_t version = 0;
    {
      absl::MutexLock lock(&mu_);
      lost = job->lease_lost || IsLeaseLost(status);
      if (status.ok()) {
        done = job->record.vector_version > 0;
        version = job->record.vector_version;
      }
    }
    if (lost) {
      Abandon(worker, job);
      continue;
    }
    if (IsJobCancelled(status)) {
      // Cancelled through another replica just before the publish.
      cancel = true;
      status = absl::OkStatus();
    }
    auto remove = [&] {
      absl::MutexLock lock(&mu_);
      auto& running = worker->running;
      running.erase(std::remove(running.begin(), running.end(), job), running.end());
      if (worker->next >= running.size()) worker->next = 0;
      UpdateGauges(worker);
    };
    if (done) {
      remove();
      Finish(job, JobState::kSucceeded, absl::OkStatus(), version);
    } else if (cancel) {
      remove();
      Finish(job, JobState::kCancelled, absl::OkStatus(), 0);
    } else if (stopping) {
      break;  // HandBack() below.
    } else if (!status.ok()) {
      remove();
      Finish(job, JobState::kFailed, status, 0);
    }
  }
}

absl::Status TrainingManager::Impl::StartJob(ModelWorker* worker, LiveJob* job) {
  JobRecord record;
  {
    absl::MutexLock lock(&mu_);
    record = job->record;
  }
  const JobSpec& spec = record.spec;
  ServingCore::ServedModel* served = worker->served;
  ASSIGN_OR_RETURN(JobDatasets datasets, jobs_->ReadDatasets(record.id));
  ASSIGN_OR_RETURN(std::optional<JobCheckpoint> checkpoint, jobs_->LoadCheckpoint(record.id));
  job->eval = std::move(datasets.eval);
  ASSIGN_OR_RETURN(job->verifier, train::Verifier::Create(RewardOptionsOf(spec)));
  {
    // CancelJob and Shutdown reach the rollouts under mu_; a cancel that came before
    // they existed applies now.
    absl::MutexLock lock(&mu_);
    job->rollouts = std::make_unique<EngineRollouts>(served);
    if (job->cancel_requested || stopping_) job->rollouts->Cancel();
  }
  ASSIGN_OR_RETURN(job->trainer,
                   train::Trainer::Create(TrainerOptionsOf(spec), served->model.get(),
                                          served->tokenizer.get(), std::move(datasets.train),
                                          job->rollouts.get()));
  if (checkpoint.has_value()) {
    RETURN_IF_ERROR(job->trainer->RestoreCheckpoint(
        checkpoint->bytes, absl::StrCat("job ", record.id, "'s checkpoint")));
  }
  const JobState previous = record.state;
  RETURN_IF_ERROR(Record(job, previous != JobState::kRunning ? std::optional<JobState>(previous)
                                                             : std::nullopt,
                         [&](JobRecord& r) {
                           r.step = static_cast<int32_t>(job->trainer->step());
                           if (checkpoint.has_value() && checkpoint->metrics.has_value()) {
                             r.metrics = checkpoint->metrics;
                           }
                           if (r.state != JobState::kRunning) {
                             r.state = JobState::kRunning;
                             r.start_time =
                                 absl::FromUnixMicros(absl::ToUnixMicros(absl::Now()));
                           }
                         }));
  absl::MutexLock lock(&mu_);
  UpdateGauges(worker);  // QUEUED (claimed) became RUNNING.
  return absl::OkStatus();
}

absl::Status TrainingManager::Impl::Record(LiveJob* job, std::optional<JobState> previous,
                                           const std::function<void(JobRecord&)>& change) {
  JobRecord copy;
  {
    absl::MutexLock lock(&mu_);
    change(job->record);
    copy = job->record;
  }
  RETURN_IF_ERROR(jobs_->Update(copy));
  absl::MutexLock lock(&mu_);
  Publish(job, previous);
  return absl::OkStatus();
}

absl::StatusOr<double> TrainingManager::Impl::Evaluate(ModelWorker* worker, LiveJob* job) {
  train::EvalOptions options;
  options.max_new_tokens = job->record.spec.hyperparameters.max_new_tokens;
  options.temperature = 0.0;
  options.add_special_tokens = !job->record.spec.apply_chat_template;
  options.rollouts = job->rollouts.get();
  ASSIGN_OR_RETURN(train::EvalResult result,
                   train::Evaluate(*worker->served->model, *worker->served->tokenizer, job->eval,
                                   *job->verifier, job->trainer->SteeringVector(), nullptr,
                                   options));
  return result.accuracy;
}

absl::Status TrainingManager::Impl::SaveCheckpoint(LiveJob* job) {
  JobCheckpoint checkpoint;
  checkpoint.step = static_cast<int32_t>(job->trainer->step());
  ASSIGN_OR_RETURN(checkpoint.bytes, job->trainer->SerializeCheckpoint());
  {
    absl::MutexLock lock(&mu_);
    checkpoint.metrics = job->record.metrics;
    checkpoint.lease_epoch = job->record.lease_epoch;
  }
  return jobs_->SaveCheckpoint(job->record.id, checkpoint);
}

absl::Status TrainingManager::Impl::StepJob(ModelWorker* worker, LiveJob* job) {
  const JobSpec& spec = job->record.spec;  // Immutable after creation.
  const int32_t total = spec.hyperparameters.steps;
  ASSIGN_OR_RETURN(train::StepMetrics step, job->trainer->Step());
  const ModelMetrics& model_metrics = worker->served->metrics;
  if (model_metrics.training_steps) model_metrics.training_steps->Increment();
  if (model_metrics.training_step_seconds) model_metrics.training_step_seconds->Observe(step.seconds);
  const absl::Time now = absl::Now();
  // Wall time per step of this job, its turns among other jobs included, for the ETA.
  const double wall = job->last_step_end == absl::InfinitePast()
                          ? step.seconds
                          : absl::ToDoubleSeconds(now - job->last_step_end);
  job->last_step_end = now;
  job->seconds_per_step = job->seconds_per_step == 0.0
                              ? wall
                              : 0.8 * job->seconds_per_step + 0.2 * wall;
  JobMetrics metrics;
  metrics.step = static_cast<int32_t>(step.step);
  metrics.reward_mean = step.reward_mean;
  metrics.accuracy = step.accuracy;
  metrics.loss = step.loss;
  metrics.tokens_per_second = step.seconds > 0 ? step.tokens / step.seconds : 0.0;
  metrics.eta_seconds = job->seconds_per_step * (total - metrics.step);
  RETURN_IF_ERROR(Record(job, std::nullopt, [&](JobRecord& r) {
    if (r.metrics.has_value()) metrics.eval_accuracy = r.metrics->eval_accuracy;
    r.step = metrics.step;
    r.metrics = metrics;
  }));
  const bool last = metrics.step >= total;
  const int32_t every = spec.hyperparameters.eval_every;
  if (!job->eval.empty() && (last || (every > 0 && metrics.step % every == 0))) {
    ASSIGN_OR_RETURN(double accuracy, Evaluate(worker, job));
    RETURN_IF_ERROR(
        Record(job, std::nullopt, [&](JobRecord& r) { r.metrics->eval_accuracy = accuracy; }));
  }
  if (!last) {
    if (options_.checkpoint_every > 0 && metrics.step % options_.checkpoint_every == 0) {
      RETURN_IF_ERROR(SaveCheckpoint(job));
    }
    return absl::OkStatus();
  }
  {
    absl::MutexLock lock(&mu_);
    // A cancel that came during the last step wins: nothing is published.
    if (job->cancel_requested) return absl::OkStatus();
  }
  const ModelConfig& config = worker->served->model->config();
  ASSIGN_OR_RETURN(std::string bytes,
                   SerializeSteeringFile(job->trainer->SteeringVector(), config, spec.model,
                                         {{"job_id", job->record.id}}));
  // The vector and the job's SUCCEEDED state are one store transaction, fenced by the
  // lease: exactly one version per job, none from a replica that lost the job.
  ASSIGN_OR_RETURN(StoredVector published,
                   core_->PublishTrainedVector(job->record.tenant, /*max_stored_vectors=*/-1,
                                               spec.model, spec.output_vector,
                                               std::move(bytes), spec.description,
                                               job->record.id, job->record.lease_epoch));
  // The worker loop then stores the final record (Finish).
  absl::MutexLock lock(&mu_);
  job->record.vector_version = published.version;
  return absl::OkStatus();
}

TrainingManager::TrainingManager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TrainingManager::~TrainingManager() = default;

absl::StatusOr<std::unique_ptr<TrainingManager>> TrainingManager::Create(
    const Options& options, ServingCore* core, JobStore* jobs, VectorStore* vectors) {
  if (core == nullptr || jobs == nullptr || vectors == nullptr) {
    return absl::InvalidArgumentError("TrainingManager needs the serving core and both stores");
  }
  if (options.max_running_jobs_per_model < 1 || options.checkpoint_every < 0 ||
      options.caps.task_train_examples < 1 || options.caps.task_eval_examples < 1 ||
      options.caps.max_examples < 1 || options.caps.max_steps < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "training limits must be positive: max_running_jobs_per_model ",
        options.max_running_jobs_per_model, ", checkpoint_every ", options.checkpoint_every));
  }
  return std::unique_ptr<TrainingManager>(
      new TrainingManager(std::make_unique<Impl>(options, core, jobs, vectors)));
}

absl::Status TrainingManager::Start() { return impl_->Start(); }
void TrainingManager::Shutdown() { impl_->Shutdown(); }
absl::StatusOr<JobRecord> TrainingManager::CreateJob(const std::string& tenant,
                                                     const JobLimits& limits,
                                                     CreateJobParams params) {
  return impl_->CreateJob(tenant, limits, std::move(params));
}
absl::StatusOr<JobRecord> TrainingManager::GetJob(const std::string& tenant,
                                                  const std::string& id) {
  return impl_->GetJob(tenant, id);
}
absl::StatusOr<JobPage> TrainingManager::ListJobs(const JobListQuery& query) {
  return impl_->jobs()->List(query);
}
absl::StatusOr<JobRecord> TrainingManager::CancelJob(const std::string& tenant,
                                                     const std::string& id) {
  return impl_->CancelJob(tenant, id);
}
absl::StatusOr<std::unique_ptr<TrainingManager::Watch>> TrainingManager::WatchJob(
    const std::string& tenant, const std::string& id, std::shared_ptr<JobWatcher> watcher) {
  return impl_->WatchJob(tenant, id, std::move(watcher));
}

}  // namespace steerd
