// How a job is kept in a relational store, written once for every backend (SQLite and
// PostgreSQL): a job is one row whose queryable fields are plain columns (state and
// times by name and in microseconds since the Unix epoch) and whose spec and latest
// metrics are JSON text, so the database reads without this source. JobColumns is that
// row as values; EncodeJob / DecodeJob convert between it and a JobRecord, and check
// what both backends must refuse or report alike (unknown enum values, infinite
// times, invalid UTF-8 in the spec, corrupt rows). The errors both backends return for
// the same conditions (not found, the queued_jobs limit) are made here too.
// Thread-safety: free functions on values.
#ifndef STEERD_SERVER_STORAGE_JOB_CODEC_H_
#define STEERD_SERVER_STORAGE_JOB_CODEC_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/engine/job_store.h"
#include "server/engine/training_types.h"

namespace steerd {

// The mutable part of a job (what JobStore::Update replaces), as column values.
struct JobProgressColumns {
  std::string state;  // "QUEUED", ... (JobStateName).
  int64_t step = 0;
  std::optional<std::string> metrics;  // JSON; nullopt: no metrics yet.
  std::string error;                   // EncodeStatus(job.error).
  int64_t vector_version = 0;
  std::optional<int64_t> start_time_us;  // nullopt: not started.
  std::optional<int64_t> end_time_us;    // nullopt: not ended.
};

// A whole job row.
struct JobColumns {
  std::string id;
  std::string tenant;
  int64_t create_time_us = 0;
  JobProgressColumns progress;
  std::string spec;  // JSON.
  std::optional<std::string> lease_owner;  // Read only: JobRecord::replica.
};

// INVALID_ARGUMENT for an unknown state or InfiniteFuture as a time.
absl::StatusOr<JobProgressColumns> EncodeJobProgress(const JobRecord& job);
// Also INVALID_ARGUMENT for an unknown enum value or invalid UTF-8 in the spec.
// `create_time` is stored as given (the caller resolves an unset one first).
absl::StatusOr<JobColumns> EncodeJob(const JobRecord& job, absl::Time create_time);
// INTERNAL "job store: corrupt row: ..." for values this build cannot read.
absl::StatusOr<JobRecord> DecodeJob(const JobColumns& columns);

// A checkpoint's metrics: nullopt both ways means none.
absl::StatusOr<std::optional<std::string>> EncodeJobMetrics(
    const std::optional<JobMetrics>& metrics);
absl::StatusOr<std::optional<JobMetrics>> DecodeJobMetrics(const std::optional<std::string>& text,
                                                            const std::string& where);

// The stored name of a state; nullopt for a value out of range.
std::optional<absl::string_view> JobStateStoreName(JobState state);

// What Create() checks before touching the database: id and tenant set, state QUEUED,
// create_time not InfiniteFuture.
absl::Status CheckNewJob(const JobRecord& job);
absl::Status CheckJobId(const std::string& id);
absl::Status CheckJobTenantAndId(const std::string& tenant, const std::string& id);
// INVALID_ARGUMENT for an empty tenant, a negative limit or an unknown state filter.
absl::Status CheckJobListQuery(const JobListQuery& query);

absl::Status JobNotFound(const std::string& id);
absl::Status JobAlreadyExists(const std::string& id);
absl::Status JobCorruptRow(absl::string_view what);
// RESOURCE_EXHAUSTED naming the queued_jobs limit, with its details.
absl::Status QueuedJobsLimitError(int64_t max_active_jobs, int64_t active);
// FAILED_PRECONDITION, reason LEASE_LOST: a fenced write of a lease that is no longer
// the job's.
absl::Status LeaseLostError(const std::string& id, int64_t epoch);
// FAILED_PRECONDITION, reason JOB_CANCELLED: a publish of a job whose cancel was
// requested.
absl::Status JobCancelledError(const std::string& id);
// The error a job ends FAILED with when its lease expired `attempts` times, encoded for
// the error column (reason ATTEMPTS_EXHAUSTED).
std::string AttemptsExhaustedError(int32_t attempts);
// The lease's length as the stores write it (PostgreSQL interval text, "1500 milliseconds").
std::string LeaseInterval(absl::Duration ttl);

}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_JOB_CODEC_H_
