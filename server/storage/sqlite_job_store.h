// The default JobStore: every tenant's training jobs in the data directory's SQLite
// database, the same file as the vectors (its own connection, its own tables and its
// own "jobs" row in the shared schema_version table). A job is one row of `jobs` (the
// columns the store queries by, plus the spec and the latest metrics as JSON text);
// its datasets are rows of `job_examples`, and its latest checkpoint is one row of
// `job_checkpoints`, apart so that listing jobs never reads examples or checkpoints.
// Like the vector store it runs in WAL mode with synchronous=FULL, so every write is on
// disk when it returns and survives a crash right after.
// Thread-safety: safe to call from any number of threads. One connection is shared
// under a mutex: jobs are written a few times per training step at most, far off the
// generation path; a write holds the mutex across its fsync.
#ifndef STEERD_SERVER_STORAGE_SQLITE_JOB_STORE_H_
#define STEERD_SERVER_STORAGE_SQLITE_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine/job_store.h"
#include "server/storage/sqlite_util.h"

namespace steerd {

class SqliteJobStore : public JobStore {
 public:
  struct Options {
    // The database file, e.g. "<data_dir>/steerd.db" (shared with SqliteVectorStore);
    // created (with missing parent directories) when absent. Required.
    std::string path;
    // How long a statement waits for a lock held by another connection (the vector
    // store's, or another process's) before failing with UNAVAILABLE.
    absl::Duration busy_timeout = absl::Seconds(5);
    // The create_time of a job created without one; tests inject a fake clock.
    // Defaults to absl::Now.
    std::function<absl::Time()> clock;
  };

  // Opens or creates the database and brings the job tables to the current version.
  // FAILED_PRECONDITION when their schema is newer than this build understands;
  // INTERNAL when the file is not a steerd database or is corrupt; UNAVAILABLE when it
  // cannot be opened.
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Create(const Options& options);
  ~SqliteJobStore() override;

  SqliteJobStore(const SqliteJobStore&) = delete;
  SqliteJobStore& operator=(const SqliteJobStore&) = delete;

  // Stores `job` as given, except that times are truncated to microseconds (as stored)
  // and an unset create_time (InfinitePast) becomes the clock's time; Get() returns
  // what was stored. INVALID_ARGUMENT for an empty id or tenant, a state other than
  // QUEUED, an unknown enum value, InfiniteFuture as a time, or text that is not valid
  // UTF-8 in the spec (it is stored as JSON).
  absl::Status Create(const JobRecord& job, const JobDatasets& datasets,
                      int64_t max_active_jobs) override;
  absl::StatusOr<JobRecord> Get(const std::string& tenant, const std::string& id) override;
  // INVALID_ARGUMENT for an empty tenant, a negative limit, or an after_id that is not
  // one of the tenant's jobs; limit 0 returns no jobs and says whether any match
  // (`more`).
  absl::StatusOr<JobPage> List(const JobListQuery& query) override;
  // Matches the job by id and tenant (another tenant's job is NOT_FOUND).
  absl::Status Update(const JobRecord& job) override;
  absl::StatusOr<JobDatasets> ReadDatasets(const std::string& id) override;
  absl::Status SaveCheckpoint(const std::string& id, const JobCheckpoint& checkpoint) override;
  // nullopt also when no such job exists.
  absl::StatusOr<std::optional<JobCheckpoint>> LoadCheckpoint(const std::string& id) override;
  absl::Status DeleteCheckpoint(const std::string& id) override;
  absl::StatusOr<std::vector<JobRecord>> ListUnfinished() override;
  // Lease times are this process's clock (absl::Now): one process uses the file.
  absl::StatusOr<std::optional<JobLease>> ClaimJob(const JobClaim& claim) override;
  absl::StatusOr<bool> RenewLease(const std::string& id, int64_t epoch,
                                  absl::Duration ttl) override;
  absl::Status ReleaseLease(const std::string& id, int64_t epoch) override;
  absl::StatusOr<JobRecord> RequestCancel(const std::string& tenant,
                                          const std::string& id) override;
  absl::StatusOr<int64_t> DeleteEndedBefore(absl::Time cutoff) override;

  // The schema version of the job tables this build writes (the "jobs" row of the
  // schema_version table).
  static constexpr int64_t kSchemaVersion = 2;

 private:
  SqliteJobStore(Options options, std::unique_ptr<sqlite::Database> db)
      : options_(std::move(options)), db_(std::move(db)) {}

  const Options options_;
  absl::Mutex mu_;
  const std::unique_ptr<sqlite::Database> db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_SQLITE_JOB_STORE_H_
