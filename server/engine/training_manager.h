// Training jobs on the serving engine: tenants' jobs are queued in the job store,
// claimed, trained and published here, beside live traffic and on the same model. A
// job's rollouts and evaluations are ordinary steered generation requests in the
// model's engine (its current vector is one more row of the batch, admitted after
// every waiting serving request, holding no more rows than serving does; see
// Engine::Options), so there is no second copy of the model and no weight sync. The
// backward pass runs on one trainer thread per model at the lowest CPU priority
// (nice 19): the OS gives it little more than the time serving leaves, so serving
// latency stays bounded whatever the jobs do. That thread runs at most
// `max_running_jobs_per_model` jobs, one step each in turn (round robin by step).
// Replicas sharing a store share the queue: a thread with a free slot claims a job
// with a lease (JobStore::ClaimJob: the tenant with the fewest running jobs first),
// renews it every lease_ttl / 3 and writes the job's progress, checkpoints (every
// `checkpoint_every` steps) and vector fenced by the lease's epoch. A replica that
// dies or hangs lets its lease expire and another replica resumes the job from its
// last checkpoint; one whose lease could not be renewed or was taken over stops the
// job without writing; after `max_attempts` expired leases the job FAILS. Shutdown()
// checkpoints and hands the leases back, so a peer resumes at once. A successful job
// publishes its vector as the next version of its output name, with the job recorded
// as its source, and ends SUCCEEDED in the same store transaction. Cancel and Watch
// work for any job of the store, whichever replica runs it.
// Thread-safety: every method may be called from any thread once Create() returned;
// watchers are called on the manager's threads and must not block.
// The header is torch-free.
#ifndef STEERD_SERVER_ENGINE_TRAINING_MANAGER_H_
#define STEERD_SERVER_ENGINE_TRAINING_MANAGER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/engine/job_store.h"
#include "server/engine/serving_core.h"
#include "server/engine/training_types.h"
#include "server/engine/vector_store.h"
#include "server/train/tasks.h"

namespace steerd {

// One event of a watched job (the proto's JobEvent).
struct JobEvent {
  enum class Kind { kStateChange, kMetrics };
  absl::Time time;
  JobRecord job;  // The job right after the event.
  Kind kind = Kind::kStateChange;
  // kStateChange: the state before; nullopt in the first event of a watch.
  std::optional<JobState> previous_state;
  JobMetrics metrics;  // kMetrics: equal to job.metrics.
};

// Hears a watched job's events. Called on the manager's threads; must not block.
class JobWatcher {
 public:
  virtual ~JobWatcher() = default;
  virtual void OnEvent(const JobEvent& event) = 0;
  // The watch is over: OK after the event of a terminal state, UNAVAILABLE when the
  // server shuts down. Called once; no event follows.
  virtual void OnEnd(const absl::Status& status) = 0;
};

// A tenant's limits on training (from its TenantLimits).
struct JobLimits {
  int64_t max_active_jobs = 4;        // QUEUED + RUNNING; `queued_jobs`.
  int64_t max_stored_vectors = 1000;  // `stored_vectors`, checked at creation.
  int64_t max_steps = 0;              // Per job; 0 = only the server's cap.
  int64_t max_examples = 0;           // Per dataset; 0 = only the server's cap.
};

// CreateJob's input: the spec as requested (zeros for defaults) and inline examples.
struct CreateJobParams {
  JobSpec spec;
  std::vector<train::Example> examples;       // Inline training examples (no task).
  std::vector<train::Example> eval_examples;  // Inline evaluation examples.
};

class TrainingManager {
 public:
  struct Options {
    int64_t max_running_jobs_per_model = 2;
    int64_t checkpoint_every = 5;     // Steps between checkpoints.
    JobSpecCaps caps;                 // What any job may ask for; every field >= 1.
    bool idle_priority = true;        // Trainer threads at nice 19.
    // Ended jobs (SUCCEEDED, FAILED, CANCELLED), with their datasets and checkpoints,
    // are deleted from the store this long after they ended: at Start() and whenever
    // a job ends. absl::InfiniteDuration() keeps them forever. Published vectors stay.
    absl::Duration job_retention = absl::Hours(30 * 24);
    // This replica's name in the leases it holds (Job.replica).
    std::string replica_id = "steerd";
    // A lease lasts this long unless renewed (every lease_ttl / 3): how long a job
    // waits after its replica died before another one resumes it.
    absl::Duration lease_ttl = absl::Seconds(15);
    // Expired leases a job survives; the next expiry ends it FAILED.
    int32_t max_attempts = 3;
    // How often a trainer thread with a free slot looks for jobs in the store (a job
    // created on this replica is looked for at once).
    absl::Duration claim_interval = absl::Seconds(1);
    // How often watches of jobs another replica runs read the job.
    absl::Duration watch_poll_interval = absl::Milliseconds(250);
  };

  // `core`, `jobs` and `vectors` must outlive the manager. Starts nothing yet.
  static absl::StatusOr<std::unique_ptr<TrainingManager>> Create(const Options& options,
                                                                 ServingCore* core,
                                                                 JobStore* jobs,
                                                                 VectorStore* vectors);
  ~TrainingManager();  // Shutdown().

  // Starts the trainer threads (one per loaded model), which claim jobs from the store:
  // those queued, and those whose replica (or a previous process) stopped.
  absl::Status Start();
  // Stops claiming, stops the trainer threads after their current step, checkpoints
  // every running job and hands its lease back: the jobs stay RUNNING in the store and
  // another replica (or the next Start()) resumes them at once. Watches end with
  // UNAVAILABLE. CreateJob fails with UNAVAILABLE afterwards.
  void Shutdown();

  // Validates (codes as training.proto documents), stores the job QUEUED and returns it.
  absl::StatusOr<JobRecord> CreateJob(const std::string& tenant, const JobLimits& limits,
                                      CreateJobParams params);
  absl::StatusOr<JobRecord> GetJob(const std::string& tenant, const std::string& id);
  absl::StatusOr<JobPage> ListJobs(const JobListQuery& query);
  absl::StatusOr<JobRecord> CancelJob(const std::string& tenant, const std::string& id);

  // Subscribes `watcher` to the job; the first event (a state change with no previous
  // state) is delivered before this returns. Destroying the returned handle
  // unsubscribes (no call to the watcher follows its destruction).
  class Watch {
   public:
    virtual ~Watch() = default;
  };
  absl::StatusOr<std::unique_ptr<Watch>> WatchJob(const std::string& tenant,
                                                  const std::string& id,
                                                  std::shared_ptr<JobWatcher> watcher);

 private:
  class Impl;
  explicit TrainingManager(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_TRAINING_MANAGER_H_
