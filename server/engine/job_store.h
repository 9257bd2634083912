// The storage training jobs need: each job's record (spec, state, progress, latest
// metrics), its datasets, and the latest checkpoint of its trainer, so that a job
// survives a crash of the process: after a restart the manager finds every job that
// was QUEUED or RUNNING and resumes it from its checkpoint. The engine declares this
// interface; server/storage implements it (SQLite, in the same database file as the
// vectors, by default). Every write is atomic and durable once it returns.
// Thread-safety: implementations are safe to call from any number of threads.
#ifndef STEERD_SERVER_ENGINE_JOB_STORE_H_
#define STEERD_SERVER_ENGINE_JOB_STORE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/engine/training_types.h"
#include "server/train/tasks.h"

namespace steerd {

// A job's examples. Built-in tasks store theirs too, so a job never depends on a
// generator that a later build might change.
struct JobDatasets {
  std::vector<train::Example> train;
  std::vector<train::Example> eval;  // Empty when the job has no evaluation.
};

struct JobCheckpoint {
  int32_t step = 0;   // Optimizer steps the checkpoint holds.
  std::string bytes;  // Trainer::SaveCheckpoint's safetensors file.
  // The JobRecord's metrics when the checkpoint was taken, so a resumed job reports
  // where it was.
  std::optional<JobMetrics> metrics;
  // When non-zero, the save is fenced: it happens only while the job's lease has this
  // epoch (FAILED_PRECONDITION, reason LEASE_LOST, otherwise).
  int64_t lease_epoch = 0;
};

struct JobListQuery {
  std::string tenant;
  std::optional<JobState> state;  // Only jobs in this state; unset = all.
  int64_t limit = 50;             // At most this many jobs.
  // Resume strictly after this job in the listing order (create_time newest first, then
  // id descending); empty = from the start.
  std::string after_id;
};

// A job a replica claimed: the record as stored when claimed (QUEUED, or RUNNING when
// taken over from a replica whose lease expired), with record.replica = the claimer and
// record.lease_epoch = the new lease's epoch, which every write of the holder carries.
struct JobLease {
  JobRecord job;
  int32_t attempt = 0;  // 1 on the first claim; a hand-back does not count.
};

struct JobClaim {
  std::string owner;                // The claiming replica's id.
  std::vector<std::string> models;  // Only jobs for these models.
  absl::Duration ttl;               // The lease lasts this long unless renewed.
  // A job whose lease expired this many times (its holders died, hung or lost the
  // database) is not claimed again: it ends FAILED, reason ATTEMPTS_EXHAUSTED.
  int32_t max_attempts = 3;
};

struct JobPage {
  std::vector<JobRecord> jobs;  // Newest first: create_time descending, then id descending.
  bool more = false;            // Whether jobs follow the last one.
};

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Stores a new job (its record, with state QUEUED, and its datasets) in one
  // transaction. When `max_active_jobs` >= 0 and the tenant already has that many jobs
  // QUEUED or RUNNING, fails with RESOURCE_EXHAUSTED naming `queued_jobs`; the check
  // and the insert are one transaction. ALREADY_EXISTS for a duplicate id.
  virtual absl::Status Create(const JobRecord& job, const JobDatasets& datasets,
                              int64_t max_active_jobs) = 0;

  // NOT_FOUND when the tenant has no job with this id.
  virtual absl::StatusOr<JobRecord> Get(const std::string& tenant, const std::string& id) = 0;

  virtual absl::StatusOr<JobPage> List(const JobListQuery& query) = 0;

  // Replaces the mutable part of a stored job (state, step, metrics, error,
  // vector_version, start_time, end_time); the spec, tenant and create_time never
  // change. NOT_FOUND when no such job exists. When job.lease_epoch is non-zero the
  // write is fenced: FAILED_PRECONDITION (reason LEASE_LOST) unless the job's lease
  // still has that epoch.
  virtual absl::Status Update(const JobRecord& job) = 0;

  // NOT_FOUND when no such job exists.
  virtual absl::StatusOr<JobDatasets> ReadDatasets(const std::string& id) = 0;

  // Replaces the job's checkpoint. NOT_FOUND when no such job exists.
  virtual absl::Status SaveCheckpoint(const std::string& id, const JobCheckpoint& checkpoint) = 0;
  // The latest checkpoint, or nullopt when the job has none.
  virtual absl::StatusOr<std::optional<JobCheckpoint>> LoadCheckpoint(const std::string& id) = 0;
  // Drops the checkpoint (a job that ended needs none). OK when there is none.
  virtual absl::Status DeleteCheckpoint(const std::string& id) = 0;

  // Every job of every tenant that is QUEUED or RUNNING, oldest first (create_time,
  // then id): what a restart must pick up.
  virtual absl::StatusOr<std::vector<JobRecord>> ListUnfinished() = 0;

  // ---- Leases: which replica runs a job. Any replica may claim a QUEUED job, or a
  // RUNNING one whose lease expired, and holds it while it renews the lease; an expired
  // lease is taken over with a new epoch, and the old holder's writes, fenced by its
  // epoch (JobRecord::lease_epoch, JobCheckpoint::lease_epoch), fail from then on.
  // Lease times are the store's clock (PostgreSQL's now(); the process's for SQLite).

  // Claims one job for `claim.models`: expired RUNNING jobs first (they were running),
  // then QUEUED ones of the tenant with the fewest running jobs, the tenant whose last
  // job started longest ago first, then the oldest. Jobs whose attempts are used up end
  // FAILED in the same transaction. nullopt when there is nothing to claim.
  virtual absl::StatusOr<std::optional<JobLease>> ClaimJob(const JobClaim& claim) = 0;

  // Extends the lease of epoch `epoch` to now + ttl and says whether a cancel was
  // requested. FAILED_PRECONDITION (reason LEASE_LOST) when the job's lease has another
  // epoch (taken over) or the job ended; NOT_FOUND when no such job exists.
  virtual absl::StatusOr<bool> RenewLease(const std::string& id, int64_t epoch,
                                          absl::Duration ttl) = 0;

  // Hands the lease back (the holder stops): the job stays as it is and may be claimed
  // at once; the attempt is not counted. OK when the lease was already lost.
  virtual absl::Status ReleaseLease(const std::string& id, int64_t epoch) = 0;

  // Cancels a job from any replica: a QUEUED job ends CANCELLED at once; a RUNNING one
  // is marked, and its holder ends it at its next renewal. Returns the job after. An
  // ended job is returned as it is (the caller decides what that means).
  virtual absl::StatusOr<JobRecord> RequestCancel(const std::string& tenant,
                                                  const std::string& id) = 0;

  // Retention: deletes every job that ended (SUCCEEDED, FAILED, CANCELLED) before
  // `cutoff`, with its datasets and checkpoint, in one transaction. Vectors a job
  // published are not touched. Returns how many jobs were deleted.
  virtual absl::StatusOr<int64_t> DeleteEndedBefore(absl::Time cutoff) = 0;
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_JOB_STORE_H_
