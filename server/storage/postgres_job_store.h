// The JobStore on a shared PostgreSQL database, for N replicas of steerd: the same
// contract as SqliteJobStore (the conformance suite runs both). The queued_jobs quota
// holds across replicas: a create runs in one transaction under a per-tenant advisory
// lock, so two replicas inserting for one tenant at once are serialized and the count
// they check is exact. Leases are row state (owner, epoch, expiry by the database's
// now()), never an open transaction: a claim is one short transaction that takes the
// row with FOR UPDATE SKIP LOCKED, so replicas claiming at once never wait on each
// other or take the same job. Datasets go in with one statement per dataset (arrays unnested
// server-side), so a job of 100,000 examples is one round trip, not 100,000.
// Thread-safety: safe to call from any number of threads (each call borrows one
// pooled connection).
#ifndef STEERD_SERVER_STORAGE_POSTGRES_JOB_STORE_H_
#define STEERD_SERVER_STORAGE_POSTGRES_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/engine/job_store.h"
#include "server/storage/postgres.h"

namespace steerd {

class PostgresJobStore : public JobStore {
 public:
  struct Options {
    // The shared database (pool and schema); must outlive the store. Required.
    postgres::Database* database = nullptr;
    // The create_time of a job created without one; tests inject a fake clock.
    // Defaults to absl::Now.
    std::function<absl::Time()> clock;
  };

  static absl::StatusOr<std::unique_ptr<PostgresJobStore>> Create(const Options& options);

  // As SqliteJobStore's: every method validates and fails the same way.
  absl::Status Create(const JobRecord& job, const JobDatasets& datasets,
                      int64_t max_active_jobs) override;
  absl::StatusOr<JobRecord> Get(const std::string& tenant, const std::string& id) override;
  absl::StatusOr<JobPage> List(const JobListQuery& query) override;
  absl::Status Update(const JobRecord& job) override;
  absl::StatusOr<JobDatasets> ReadDatasets(const std::string& id) override;
  absl::Status SaveCheckpoint(const std::string& id, const JobCheckpoint& checkpoint) override;
  absl::StatusOr<std::optional<JobCheckpoint>> LoadCheckpoint(const std::string& id) override;
  absl::Status DeleteCheckpoint(const std::string& id) override;
  absl::StatusOr<std::vector<JobRecord>> ListUnfinished() override;
  absl::StatusOr<std::optional<JobLease>> ClaimJob(const JobClaim& claim) override;
  absl::StatusOr<bool> RenewLease(const std::string& id, int64_t epoch,
                                  absl::Duration ttl) override;
  absl::Status ReleaseLease(const std::string& id, int64_t epoch) override;
  absl::StatusOr<JobRecord> RequestCancel(const std::string& tenant,
                                          const std::string& id) override;
  absl::StatusOr<int64_t> DeleteEndedBefore(absl::Time cutoff) override;

 private:
  explicit PostgresJobStore(Options options) : options_(std::move(options)) {}

  const Options options_;
};

}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_POSTGRES_JOB_STORE_H_
