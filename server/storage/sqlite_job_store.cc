#include "server/storage/sqlite_job_store.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "server/storage/job_codec.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using sqlite::Statement;
using sqlite::Transaction;

// One migration per schema version: kMigrations[v - 1] takes the job tables from
// version v - 1 to v. The "jobs" row of the shared schema_version table holds v.
constexpr absl::string_view kComponent = "jobs";
constexpr const char* kMigrations[] = {
    // Version 1.
    // jobs: one row per job, never deleted. The columns are what the store queries by
    //   or updates; the spec, which never changes and is only ever read whole, is JSON
    //   (EncodeSpec), and so are the latest metrics (NULL: none yet). Times are
    //   microseconds since the Unix epoch; NULL start/end time: not started/ended.
    //   jobs_listing is List()'s order within a tenant; jobs_unfinished holds only the
    //   QUEUED and RUNNING jobs, for the active-jobs limit and ListUnfinished().
    // job_examples: the datasets, one row per example, apart so that listing jobs never
    //   reads them; `position` keeps each dataset's order.
    // job_checkpoints: at most one (the latest) per job.
    R"sql(
      CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        create_time_us INTEGER NOT NULL,
        state TEXT NOT NULL
          CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
        step INTEGER NOT NULL,
        metrics TEXT,
        error TEXT NOT NULL,
        vector_version INTEGER NOT NULL,
        start_time_us INTEGER,
        end_time_us INTEGER,
        spec TEXT NOT NULL
      );
      CREATE INDEX jobs_listing ON jobs (tenant, create_time_us DESC, id DESC);
      CREATE INDEX jobs_unfinished ON jobs (tenant, create_time_us, id)
        WHERE state IN ('QUEUED', 'RUNNING');
      CREATE TABLE job_examples (
        job_id TEXT NOT NULL REFERENCES jobs (id),
        dataset TEXT NOT NULL CHECK (dataset IN ('train', 'eval')),
        position INTEGER NOT NULL,
        prompt TEXT NOT NULL,
        answer TEXT NOT NULL,
        solution TEXT NOT NULL,
        PRIMARY KEY (job_id, dataset, position)
      );
      CREATE TABLE job_checkpoints (
        job_id TEXT PRIMARY KEY REFERENCES jobs (id),
        step INTEGER NOT NULL,
        metrics TEXT,
        bytes BLOB NOT NULL
      );
    )sql",
    // Version 2: leases (JobStore::ClaimJob). The model, which claims filter by, comes
    // out of the spec; lease times are microseconds since the epoch like the others.
    R"sql(
      ALTER TABLE jobs ADD COLUMN model TEXT NOT NULL DEFAULT '';
      UPDATE jobs SET model = json_extract(spec, '$.model');
      ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
      ALTER TABLE jobs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE jobs ADD COLUMN lease_until_us INTEGER;
      ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    )sql",
};
static_assert(sizeof(kMigrations) / sizeof(kMigrations[0]) == SqliteJobStore::kSchemaVersion,
              "one migration per schema version");

// Spelled exactly as in jobs_unfinished's WHERE clause: SQLite uses a partial index
// only for a query whose WHERE clause contains the index's condition term for term.
constexpr absl::string_view kUnfinished = "state IN ('QUEUED', 'RUNNING')";

// The jobs columns, in the order ReadJob() expects.
constexpr absl::string_view kColumns =
    "id, tenant, create_time_us, state, step, metrics, error, vector_version, "
    "start_time_us, end_time_us, spec, lease_owner";

absl::Status BindOptionalText(Statement& stmt, int index, const std::optional<std::string>& text) {
  return text.has_value() ? stmt.BindText(index, *text) : stmt.BindNull(index);
}

absl::Status BindTime(Statement& stmt, int index, std::optional<int64_t> micros) {
  return micros.has_value() ? stmt.BindInt(index, *micros) : stmt.BindNull(index);
}

std::optional<std::string> OptionalText(const Statement& stmt, int column) {
  if (stmt.IsNull(column)) return std::nullopt;
  return stmt.Text(column);
}

std::optional<int64_t> OptionalInt(const Statement& stmt, int column) {
  if (stmt.IsNull(column)) return std::nullopt;
  return stmt.Int(column);
}

// Reads kColumns from the current row of `stmt`, starting at column 0.
absl::StatusOr<JobRecord> ReadJob(const Statement& stmt) {
  JobColumns columns;
  columns.id = stmt.Text(0);
  columns.tenant = stmt.Text(1);
  columns.create_time_us = stmt.Int(2);
  columns.progress.state = stmt.Text(3);
  columns.progress.step = stmt.Int(4);
  columns.progress.metrics = OptionalText(stmt, 5);
  columns.progress.error = stmt.Text(6);
  columns.progress.vector_version = stmt.Int(7);
  columns.progress.start_time_us = OptionalInt(stmt, 8);
  columns.progress.end_time_us = OptionalInt(stmt, 9);
  columns.spec = stmt.Text(10);
  columns.lease_owner = OptionalText(stmt, 11);
  return DecodeJob(columns);
}

// Binds the progress columns as ?first .. ?first+6 (state, step, metrics, error,
// vector_version, start, end). `progress` must outlive the statement's steps.
absl::Status BindProgress(Statement& stmt, int first, const JobProgressColumns& progress) {
  RETURN_IF_ERROR(stmt.BindText(first, progress.state));
  RETURN_IF_ERROR(stmt.BindInt(first + 1, progress.step));
  RETURN_IF_ERROR(BindOptionalText(stmt, first + 2, progress.metrics));
  RETURN_IF_ERROR(stmt.BindText(first + 3, progress.error));
  RETURN_IF_ERROR(stmt.BindInt(first + 4, progress.vector_version));
  RETURN_IF_ERROR(BindTime(stmt, first + 5, progress.start_time_us));
  return BindTime(stmt, first + 6, progress.end_time_us);
}

// Whether job `id` exists (in any tenant).
absl::StatusOr<bool> JobExists(sqlite::Database& db, const std::string& id) {
  Statement select(db, "looking a job up");
  RETURN_IF_ERROR(select.Prepare("SELECT 1 FROM jobs WHERE id = ?1"));
  RETURN_IF_ERROR(select.BindText(1, id));
  return select.Step();
}

// The tenant's job `id`; NOT_FOUND when the tenant has none.
absl::StatusOr<JobRecord> ReadTenantsJob(sqlite::Database& db, const std::string& tenant,
                                         const std::string& id) {
  Statement select(db, "reading a job");
  RETURN_IF_ERROR(select.Prepare(
      absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = ?1 AND tenant = ?2")));
  RETURN_IF_ERROR(select.BindText(1, id));
  RETURN_IF_ERROR(select.BindText(2, tenant));
  ASSIGN_OR_RETURN(const bool row, select.Step());
  if (!row) return JobNotFound(id);
  return ReadJob(select);
}

// Whether job `id`'s lease has epoch `epoch`.
absl::StatusOr<bool> HoldsLease(sqlite::Database& db, const std::string& id, int64_t epoch) {
  Statement select(db, "checking a lease");
  RETURN_IF_ERROR(select.Prepare("SELECT 1 FROM jobs WHERE id = ?1 AND lease_epoch = ?2"));
  RETURN_IF_ERROR(select.BindText(1, id));
  RETURN_IF_ERROR(select.BindInt(2, epoch));
  return select.Step();
}

// Why a write that matched no row did not happen: NOT_FOUND for an unfenced write
// (epoch 0) or without the job, else the writer's lease is no longer the job's.
absl::Status NotWritten(sqlite::Database& db, const std::string& id, int64_t epoch) {
  if (epoch == 0) return JobNotFound(id);
  ASSIGN_OR_RETURN(const bool exists, JobExists(db, id));
  if (!exists) return JobNotFound(id);
  return LeaseLostError(id, epoch);
}

// A lease is free when it has no expiry or its expiry (?1, now) passed.
constexpr absl::string_view kLeaseFree = "(lease_until_us IS NULL OR lease_until_us < ?1)";

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Create(const Options& options) {
  sqlite::Database::Options open;
  open.path = options.path;
  open.busy_timeout = options.busy_timeout;
  open.label = "job store";
  open.component = std::string(kComponent);
  open.migrations = kMigrations;
  ASSIGN_OR_RETURN(std::unique_ptr<sqlite::Database> db, sqlite::Database::Open(open));
  Options resolved = options;
  if (!resolved.clock) resolved.clock = [] { return absl::Now(); };
  return absl::WrapUnique(new SqliteJobStore(std::move(resolved), std::move(db)));
}

SqliteJobStore::~SqliteJobStore() = default;

absl::Status SqliteJobStore::Create(const JobRecord& job, const JobDatasets& datasets,
                                    int64_t max_active_jobs) {
  RETURN_IF_ERROR(CheckNewJob(job));
  absl::MutexLock lock(&mu_);
  const absl::Time create_time =
      job.create_time == absl::InfinitePast() ? options_.clock() : job.create_time;
  // Bound without a copy (SQLITE_STATIC): it must outlive the statements.
  ASSIGN_OR_RETURN(const JobColumns columns, EncodeJob(job, create_time));
  Transaction txn(*db_);
  RETURN_IF_ERROR(txn.BeginImmediate());
  ASSIGN_OR_RETURN(const bool exists, JobExists(*db_, job.id));
  if (exists) return JobAlreadyExists(job.id);
  if (max_active_jobs >= 0) {
    Statement count(*db_, "counting active jobs");
    RETURN_IF_ERROR(count.Prepare(
        absl::StrCat("SELECT COUNT(*) FROM jobs WHERE tenant = ?1 AND ", kUnfinished)));
    RETURN_IF_ERROR(count.BindText(1, job.tenant));
    RETURN_IF_ERROR(count.Step().status());
    const int64_t active = count.Int(0);
    if (active >= max_active_jobs) return QueuedJobsLimitError(max_active_jobs, active);
  }
  {
    Statement insert(*db_, "inserting the job");
    RETURN_IF_ERROR(
        insert.Prepare("INSERT INTO jobs (id, tenant, create_time_us, spec, state, step, metrics, "
                       "error, vector_version, start_time_us, end_time_us, model) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"));
    RETURN_IF_ERROR(insert.BindText(1, columns.id));
    RETURN_IF_ERROR(insert.BindText(2, columns.tenant));
    RETURN_IF_ERROR(insert.BindInt(3, columns.create_time_us));
    RETURN_IF_ERROR(insert.BindText(4, columns.spec));
    RETURN_IF_ERROR(BindProgress(insert, 5, columns.progress));
    RETURN_IF_ERROR(insert.BindText(12, job.spec.model));
    RETURN_IF_ERROR(insert.Run());
  }
  {
    // Prepared once for all examples: a dataset may hold 100,000 of them.
    Statement insert(*db_, "inserting the job's examples");
    RETURN_IF_ERROR(insert.Prepare(
        "INSERT INTO job_examples (job_id, dataset, position, prompt, answer, solution) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
    auto insert_all = [&](absl::string_view dataset,
                          const std::vector<train::Example>& examples) -> absl::Status {
      for (size_t i = 0; i < examples.size(); ++i) {
        RETURN_IF_ERROR(insert.Reset());
        RETURN_IF_ERROR(insert.BindText(1, job.id));
        RETURN_IF_ERROR(insert.BindText(2, dataset));
        RETURN_IF_ERROR(insert.BindInt(3, static_cast<int64_t>(i)));
        RETURN_IF_ERROR(insert.BindText(4, examples[i].prompt));
        RETURN_IF_ERROR(insert.BindText(5, examples[i].answer));
        RETURN_IF_ERROR(insert.BindText(6, examples[i].solution));
        RETURN_IF_ERROR(insert.Run());
      }
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(insert_all("train", datasets.train));
    RETURN_IF_ERROR(insert_all("eval", datasets.eval));
  }
  return txn.Commit();
}

absl::StatusOr<JobRecord> SqliteJobStore::Get(const std::string& tenant, const std::string& id) {
  RETURN_IF_ERROR(CheckJobTenantAndId(tenant, id));
  absl::MutexLock lock(&mu_);
  return ReadTenantsJob(*db_, tenant, id);
}

absl::StatusOr<JobPage> SqliteJobStore::List(const JobListQuery& query) {
  RETURN_IF_ERROR(CheckJobListQuery(query));
  std::optional<absl::string_view> state;
  if (query.state.has_value()) state = JobStateStoreName(*query.state);
  // The SQL text only varies by which fixed fragments are present; every value is a
  // bound parameter. Ids compare bytewise (SQLite's BINARY collation).
  std::string sql = absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE tenant = ?1");
  if (state.has_value()) absl::StrAppend(&sql, " AND state = ?2");
  if (!query.after_id.empty()) {
    // "Strictly after (create_time, id)" in (create_time DESC, id DESC) order; the first
    // conjunct lets the index seek.
    absl::StrAppend(&sql,
                    " AND create_time_us <= ?3"
                    " AND (create_time_us < ?3 OR id < ?4)");
  }
  absl::StrAppend(&sql, " ORDER BY create_time_us DESC, id DESC LIMIT ?5");

  absl::MutexLock lock(&mu_);
  int64_t after_time_us = 0;
  if (!query.after_id.empty()) {
    // The cursor is a job of the tenant's, even if it no longer matches the filter
    // (its state changed since the previous page): its position is what counts.
    Statement cursor(*db_, "reading the list cursor");
    RETURN_IF_ERROR(
        cursor.Prepare("SELECT create_time_us FROM jobs WHERE id = ?1 AND tenant = ?2"));
    RETURN_IF_ERROR(cursor.BindText(1, query.after_id));
    RETURN_IF_ERROR(cursor.BindText(2, query.tenant));
    ASSIGN_OR_RETURN(const bool row, cursor.Step());
    if (!row) {
      return absl::InvalidArgumentError(
          absl::StrCat("job store: after_id \"", query.after_id, "\" is not a job of the tenant"));
    }
    after_time_us = cursor.Int(0);
  }
  Statement select(*db_, "listing jobs");
  RETURN_IF_ERROR(select.Prepare(sql));
  RETURN_IF_ERROR(select.BindText(1, query.tenant));
  if (state.has_value()) RETURN_IF_ERROR(select.BindText(2, *state));
  if (!query.after_id.empty()) {
    RETURN_IF_ERROR(select.BindInt(3, after_time_us));
    RETURN_IF_ERROR(select.BindText(4, query.after_id));
  }
  // One row past the page tells whether more follow.
  const int64_t limit = std::min(query.limit, std::numeric_limits<int64_t>::max() - 1);
  RETURN_IF_ERROR(select.BindInt(5, limit + 1));
  JobPage page;
  while (true) {
    ASSIGN_OR_RETURN(const bool row, select.Step());
    if (!row) break;
    if (static_cast<int64_t>(page.jobs.size()) == limit) {
      page.more = true;
      break;
    }
    ASSIGN_OR_RETURN(JobRecord job, ReadJob(select));
    page.jobs.push_back(std::move(job));
  }
  return page;
}

absl::Status SqliteJobStore::Update(const JobRecord& job) {
  RETURN_IF_ERROR(CheckJobTenantAndId(job.tenant, job.id));
  // Bound without a copy (SQLITE_STATIC): it must outlive the statement.
  ASSIGN_OR_RETURN(const JobProgressColumns progress, EncodeJobProgress(job));
  absl::MutexLock lock(&mu_);
  // One statement: atomic, and durable when it returns (autocommit, synchronous=FULL).
  Statement update(*db_, "updating a job");
  const bool fenced = job.lease_epoch != 0;
  RETURN_IF_ERROR(update.Prepare(absl::StrCat(
      "UPDATE jobs SET state = ?3, step = ?4, metrics = ?5, error = ?6, vector_version = ?7, "
      "start_time_us = ?8, end_time_us = ?9 WHERE id = ?1 AND tenant = ?2",
      fenced ? " AND lease_epoch = ?10" : "")));
  RETURN_IF_ERROR(update.BindText(1, job.id));
  RETURN_IF_ERROR(update.BindText(2, job.tenant));
  RETURN_IF_ERROR(BindProgress(update, 3, progress));
  if (fenced) RETURN_IF_ERROR(update.BindInt(10, job.lease_epoch));
  RETURN_IF_ERROR(update.Run());
  if (db_->Changes() == 0) return NotWritten(*db_, job.id, job.lease_epoch);
  return absl::OkStatus();
}

absl::StatusOr<JobDatasets> SqliteJobStore::ReadDatasets(const std::string& id) {
  RETURN_IF_ERROR(CheckJobId(id));
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const bool exists, JobExists(*db_, id));
  if (!exists) return JobNotFound(id);
  Statement select(*db_, "reading a job's examples");
  RETURN_IF_ERROR(
      select.Prepare("SELECT dataset, prompt, answer, solution FROM job_examples "
                     "WHERE job_id = ?1 ORDER BY dataset, position"));
  RETURN_IF_ERROR(select.BindText(1, id));
  JobDatasets datasets;
  while (true) {
    ASSIGN_OR_RETURN(const bool row, select.Step());
    if (!row) break;
    const std::string dataset = select.Text(0);
    std::vector<train::Example>* examples = nullptr;
    if (dataset == "train") {
      examples = &datasets.train;
    } else if (dataset == "eval") {
      examples = &datasets.eval;
    } else {
      return JobCorruptRow(
          absl::StrCat("job \"", id, "\" has an example of dataset \"", dataset, "\""));
    }
    examples->push_back({select.Text(1), select.Text(2), select.Text(3)});
  }
  return datasets;
}

absl::Status SqliteJobStore::SaveCheckpoint(const std::string& id,
                                            const JobCheckpoint& checkpoint) {
  RETURN_IF_ERROR(CheckJobId(id));
  ASSIGN_OR_RETURN(const std::optional<std::string> metrics, EncodeJobMetrics(checkpoint.metrics));
  absl::MutexLock lock(&mu_);
  Transaction txn(*db_);
  RETURN_IF_ERROR(txn.BeginImmediate());
  ASSIGN_OR_RETURN(const bool exists, JobExists(*db_, id));
  if (!exists) return JobNotFound(id);
  if (checkpoint.lease_epoch != 0) {
    ASSIGN_OR_RETURN(const bool holds, HoldsLease(*db_, id, checkpoint.lease_epoch));
    if (!holds) return LeaseLostError(id, checkpoint.lease_epoch);
  }
  Statement upsert(*db_, "saving a checkpoint");
  RETURN_IF_ERROR(upsert.Prepare(
      "INSERT INTO job_checkpoints (job_id, step, metrics, bytes) VALUES (?1, ?2, ?3, ?4) "
      "ON CONFLICT (job_id) DO UPDATE SET step = excluded.step, metrics = excluded.metrics, "
      "bytes = excluded.bytes"));
  RETURN_IF_ERROR(upsert.BindText(1, id));
  RETURN_IF_ERROR(upsert.BindInt(2, checkpoint.step));
  RETURN_IF_ERROR(BindOptionalText(upsert, 3, metrics));
  RETURN_IF_ERROR(upsert.BindBlob(4, checkpoint.bytes));
  RETURN_IF_ERROR(upsert.Run());
  return txn.Commit();
}

absl::StatusOr<std::optional<JobCheckpoint>> SqliteJobStore::LoadCheckpoint(const std::string& id) {
  RETURN_IF_ERROR(CheckJobId(id));
  absl::MutexLock lock(&mu_);
  Statement select(*db_, "loading a checkpoint");
  RETURN_IF_ERROR(
      select.Prepare("SELECT step, metrics, bytes FROM job_checkpoints WHERE job_id = ?1"));
  RETURN_IF_ERROR(select.BindText(1, id));
  ASSIGN_OR_RETURN(const bool row, select.Step());
  if (!row) return std::nullopt;
  JobCheckpoint checkpoint;
  const int64_t step = select.Int(0);
  if (step < std::numeric_limits<int32_t>::min() || step > std::numeric_limits<int32_t>::max()) {
    return JobCorruptRow(absl::StrCat("checkpoint of job \"", id, "\" has step ", step));
  }
  checkpoint.step = static_cast<int32_t>(step);
  ASSIGN_OR_RETURN(checkpoint.metrics,
                   DecodeJobMetrics(OptionalText(select, 1),
                                    absl::StrCat("checkpoint of job \"", id, "\" metrics")));
  checkpoint.bytes = select.Blob(2);
  return checkpoint;
}

absl::Status SqliteJobStore::DeleteCheckpoint(const std::string& id) {
  RETURN_IF_ERROR(CheckJobId(id));
  absl::MutexLock lock(&mu_);
  Statement del(*db_, "deleting a checkpoint");
  RETURN_IF_ERROR(del.Prepare("DELETE FROM job_checkpoints WHERE job_id = ?1"));
  RETURN_IF_ERROR(del.BindText(1, id));
  return del.Run();
}

absl::StatusOr<std::vector<JobRecord>> SqliteJobStore::ListUnfinished() {
  absl::MutexLock lock(&mu_);
  Statement select(*db_, "listing unfinished jobs");
  RETURN_IF_ERROR(select.Prepare(absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE ", kUnfinished,
                                              " ORDER BY create_time_us, id")));
  std::vector<JobRecord> jobs;
  while (true) {
    ASSIGN_OR_RETURN(const bool row, select.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(JobRecord job, ReadJob(select));
    jobs.push_back(std::move(job));
  }
  return jobs;
}

absl::StatusOr<std::optional<JobLease>> SqliteJobStore::ClaimJob(const JobClaim& claim) {
  if (claim.owner.empty()) return absl::InvalidArgumentError("job store: empty lease owner");
  if (claim.models.empty()) return std::optional<JobLease>();
  // ?1 now, ?2.. the models.
  std::string models;
  for (size_t i = 0; i < claim.models.size(); ++i) {
    absl::StrAppend(&models, i > 0 ? ", " : "", "?", i + 2);
  }
  auto bind_models = [&](Statement& stmt) -> absl::Status {
    for (size_t i = 0; i < claim.models.size(); ++i) {
      RETURN_IF_ERROR(stmt.BindText(static_cast<int>(i + 2), claim.models[i]));
    }
    return absl::OkStatus();
  };
  const int next = static_cast<int>(claim.models.size()) + 2;
  const int64_t now_us = absl::ToUnixMicros(absl::Now());
  absl::MutexLock lock(&mu_);
  Transaction txn(*db_);
  RETURN_IF_ERROR(txn.BeginImmediate());
  {
    // Jobs whose holders kept stopping without finishing end here, not in a loop.
    const std::string exhausted = absl::StrCat(
        "model IN (", models, ") AND state IN ('QUEUED', 'RUNNING') AND lease_until_us < ?1 "
        "AND attempts >= ?", next);
    Statement checkpoints(*db_, "dropping checkpoints of jobs out of attempts");
    RETURN_IF_ERROR(checkpoints.Prepare(absl::StrCat(
        "DELETE FROM job_checkpoints WHERE job_id IN (SELECT id FROM jobs WHERE ", exhausted,
        ")")));
    RETURN_IF_ERROR(checkpoints.BindInt(1, now_us));
    RETURN_IF_ERROR(bind_models(checkpoints));
    RETURN_IF_ERROR(checkpoints.BindInt(next, claim.max_attempts));
    RETURN_IF_ERROR(checkpoints.Run());
    const std::string error = AttemptsExhaustedError(claim.max_attempts);
    Statement fail(*db_, "failing jobs out of attempts");
    RETURN_IF_ERROR(fail.Prepare(absl::StrCat(
        "UPDATE jobs SET state = 'FAILED', error = ?", next + 1, ", end_time_us = ?1, "
        "lease_owner = NULL, lease_until_us = NULL WHERE ", exhausted)));
    RETURN_IF_ERROR(fail.BindInt(1, now_us));
    RETURN_IF_ERROR(bind_models(fail));
    RETURN_IF_ERROR(fail.BindInt(next, claim.max_attempts));
    RETURN_IF_ERROR(fail.BindText(next + 1, error));
    RETURN_IF_ERROR(fail.Run());
  }
  std::string id;
  {
    Statement candidate(*db_, "choosing a job to claim");
    RETURN_IF_ERROR(candidate.Prepare(absl::StrCat(
        "SELECT j.id FROM jobs j WHERE j.model IN (", models, ") AND j.",
        kUnfinished, " AND ", kLeaseFree,
        " ORDER BY (j.state = 'RUNNING') DESC, "
        "(SELECT COUNT(*) FROM jobs r WHERE r.tenant = j.tenant AND r.state = 'RUNNING' "
        "AND r.lease_until_us >= ?1), "
        "(SELECT MAX(s.start_time_us) FROM jobs s WHERE s.tenant = j.tenant) NULLS FIRST, "
        "j.create_time_us, j.id LIMIT 1")));
    RETURN_IF_ERROR(candidate.BindInt(1, now_us));
    RETURN_IF_ERROR(bind_models(candidate));
    ASSIGN_OR_RETURN(const bool row, candidate.Step());
    if (!row) {
      RETURN_IF_ERROR(txn.Commit());
      return std::optional<JobLease>();
    }
    id = candidate.Text(0);
  }
  {
    Statement update(*db_, "claiming a job");
    RETURN_IF_ERROR(update.Prepare(
        "UPDATE jobs SET lease_owner = ?2, lease_epoch = lease_epoch + 1, lease_until_us = ?3, "
        "attempts = attempts + 1 WHERE id = ?1"));
    RETURN_IF_ERROR(update.BindText(1, id));
    RETURN_IF_ERROR(update.BindText(2, claim.owner));
    RETURN_IF_ERROR(update.BindInt(3, now_us + absl::ToInt64Microseconds(claim.ttl)));
    RETURN_IF_ERROR(update.Run());
  }
  JobLease lease;
  {
    Statement select(*db_, "reading the claimed job");
    RETURN_IF_ERROR(select.Prepare(
        absl::StrCat("SELECT ", kColumns, ", lease_epoch, attempts FROM jobs WHERE id = ?1")));
    RETURN_IF_ERROR(select.BindText(1, id));
    RETURN_IF_ERROR(select.Step().status());
    ASSIGN_OR_RETURN(lease.job, ReadJob(select));
    lease.job.lease_epoch = select.Int(12);
    lease.attempt = static_cast<int32_t>(select.Int(13));
  }
  RETURN_IF_ERROR(txn.Commit());
  return lease;
}

absl::StatusOr<bool> SqliteJobStore::RenewLease(const std::string& id, int64_t epoch,
                                                absl::Duration ttl) {
  RETURN_IF_ERROR(CheckJobId(id));
  absl::MutexLock lock(&mu_);
  Statement update(*db_, "renewing a lease");
  RETURN_IF_ERROR(update.Prepare(absl::StrCat(
      "UPDATE jobs SET lease_until_us = ?3 WHERE id = ?1 AND lease_epoch = ?2 AND ",
      kUnfinished, " RETURNING cancel_requested")));
  RETURN_IF_ERROR(update.BindText(1, id));
  RETURN_IF_ERROR(update.BindInt(2, epoch));
  RETURN_IF_ERROR(
      update.BindInt(3, absl::ToUnixMicros(absl::Now()) + absl::ToInt64Microseconds(ttl)));
  ASSIGN_OR_RETURN(const bool row, update.Step());
  if (!row) return NotWritten(*db_, id, epoch);
  const bool cancel = update.Int(0) != 0;
  RETURN_IF_ERROR(update.Run());  // Completes the statement.
  return cancel;
}

absl::Status SqliteJobStore::ReleaseLease(const std::string& id, int64_t epoch) {
  RETURN_IF_ERROR(CheckJobId(id));
  absl::MutexLock lock(&mu_);
  Statement update(*db_, "handing a lease back");
  RETURN_IF_ERROR(update.Prepare(
      "UPDATE jobs SET lease_owner = NULL, lease_until_us = NULL, "
      "attempts = MAX(attempts - 1, 0) WHERE id = ?1 AND lease_epoch = ?2"));
  RETURN_IF_ERROR(update.BindText(1, id));
  RETURN_IF_ERROR(update.BindInt(2, epoch));
  return update.Run();
}

absl::StatusOr<JobRecord> SqliteJobStore::RequestCancel(const std::string& tenant,
                                                        const std::string& id) {
  RETURN_IF_ERROR(CheckJobTenantAndId(tenant, id));
  const int64_t now_us = absl::ToUnixMicros(absl::Now());
  absl::MutexLock lock(&mu_);
  Transaction txn(*db_);
  RETURN_IF_ERROR(txn.BeginImmediate());
  {
    // A QUEUED job no replica holds ends now; anything else running is marked for its
    // holder, which sees it at its next renewal.
    Statement cancel(*db_, "cancelling a queued job");
    RETURN_IF_ERROR(cancel.Prepare(absl::StrCat(
        "UPDATE jobs SET state = 'CANCELLED', end_time_us = ?1, lease_owner = NULL, "
        "lease_until_us = NULL WHERE id = ?2 AND tenant = ?3 AND state = 'QUEUED' AND ",
        kLeaseFree)));
    RETURN_IF_ERROR(cancel.BindInt(1, now_us));
    RETURN_IF_ERROR(cancel.BindText(2, id));
    RETURN_IF_ERROR(cancel.BindText(3, tenant));
    RETURN_IF_ERROR(cancel.Run());
  }
  if (db_->Changes() == 0) {
    Statement mark(*db_, "requesting a cancel");
    RETURN_IF_ERROR(mark.Prepare(absl::StrCat("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 "
                                              "AND tenant = ?2 AND ",
                                              kUnfinished)));
    RETURN_IF_ERROR(mark.BindText(1, id));
    RETURN_IF_ERROR(mark.BindText(2, tenant));
    RETURN_IF_ERROR(mark.Run());
  }
  ASSIGN_OR_RETURN(JobRecord record, ReadTenantsJob(*db_, tenant, id));
  RETURN_IF_ERROR(txn.Commit());
  return record;
}

absl::StatusOr<int64_t> SqliteJobStore::DeleteEndedBefore(absl::Time cutoff) {
  // Ended jobs always have an end time; the state test keeps a job that is still
  // QUEUED or RUNNING safe whatever its timestamps say.
  constexpr char kEnded[] =
      "state IN ('SUCCEEDED', 'FAILED', 'CANCELLED') AND end_time_us IS NOT NULL "
      "AND end_time_us < ?1";
  const int64_t cutoff_us = absl::ToUnixMicros(cutoff);
  absl::MutexLock lock(&mu_);
  Transaction txn(*db_);
  RETURN_IF_ERROR(txn.BeginImmediate());
  for (const char* table : {"job_examples", "job_checkpoints"}) {
    Statement del(*db_, absl::StrCat("deleting expired jobs' ", table));
    RETURN_IF_ERROR(del.Prepare(absl::StrCat("DELETE FROM ", table,
                                             " WHERE job_id IN (SELECT id FROM jobs WHERE ",
                                             kEnded, ")")));
    RETURN_IF_ERROR(del.BindInt(1, cutoff_us));
    RETURN_IF_ERROR(del.Run());
  }
  Statement del(*db_, "deleting expired jobs");
  RETURN_IF_ERROR(del.Prepare(absl::StrCat("DELETE FROM jobs WHERE ", kEnded)));
  RETURN_IF_ERROR(del.BindInt(1, cutoff_us));
  RETURN_IF_ERROR(del.Run());
  const int64_t deleted = db_->Changes();
  RETURN_IF_ERROR(txn.Commit());
  return deleted;
}

}  // namespace steerd
