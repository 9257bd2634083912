#include "server/storage/postgres_job_store.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/storage/job_codec.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using postgres::Connection;
using postgres::Params;
using postgres::Result;
using postgres::Transaction;

// The jobs columns, in the order ReadJob() expects.
constexpr absl::string_view kColumns =
    "id, tenant, create_time_us, state, step, metrics, error, vector_version, "
    "start_time_us, end_time_us, spec, lease_owner";
constexpr absl::string_view kUnfinished = "state IN ('QUEUED', 'RUNNING')";

// Serializes a tenant's job creates across replicas (the quota count happens under
// it); the second key keeps it apart from the vector store's tenant lock.
constexpr char kTenantLock[] = "SELECT pg_advisory_xact_lock(hashtext($1), 2)";

absl::StatusOr<JobRecord> ReadJob(const Result& result, int row) {
  JobColumns columns;
  columns.id = result.Text(row, 0);
  columns.tenant = result.Text(row, 1);
  columns.create_time_us = result.Int(row, 2);
  columns.progress.state = result.Text(row, 3);
  columns.progress.step = result.Int(row, 4);
  columns.progress.metrics = result.OptionalText(row, 5);
  columns.progress.error = result.Text(row, 6);
  columns.progress.vector_version = result.Int(row, 7);
  columns.progress.start_time_us = result.OptionalInt(row, 8);
  columns.progress.end_time_us = result.OptionalInt(row, 9);
  columns.spec = result.Text(row, 10);
  columns.lease_owner = result.OptionalText(row, 11);
  return DecodeJob(columns);
}

absl::StatusOr<std::vector<JobRecord>> ReadJobs(const Result& result) {
  std::vector<JobRecord> jobs;
  for (int row = 0; row < result.rows(); ++row) {
    ASSIGN_OR_RETURN(JobRecord job, ReadJob(result, row));
    jobs.push_back(std::move(job));
  }
  return jobs;
}

// Appends the progress columns (state, step, metrics, error, vector_version, start,
// end) in that order.
void AddProgress(Params& params, const JobProgressColumns& progress) {
  params.Text(progress.state)
      .Int(progress.step)
      .OptionalText(progress.metrics)
      .Text(progress.error)
      .Int(progress.vector_version)
      .OptionalInt(progress.start_time_us)
      .OptionalInt(progress.end_time_us);
}

// A PostgreSQL bytea[] literal of one field of every example: each element the hex
// form of its bytes ("\\x6869"), so any bytes, NUL included, go in unchanged.
std::string ByteaArray(const std::vector<train::Example>& examples,
                       std::string train::Example::*field) {
  std::string literal = "{";
  for (size_t i = 0; i < examples.size(); ++i) {
    if (i > 0) literal += ',';
    // Inside an array literal the backslash of \x is escaped itself.
    absl::StrAppend(&literal, "\"\\\\x", absl::BytesToHexString(examples[i].*field), "\"");
  }
  literal += '}';
  return literal;
}

absl::Status InsertExamples(Connection& connection, const std::string& id,
                            absl::string_view dataset,
                            const std::vector<train::Example>& examples) {
  if (examples.empty()) return absl::OkStatus();
  return connection
      .Exec("inserting the job's examples",
            "INSERT INTO job_examples (job_id, dataset, position, prompt, answer, solution) "
            "SELECT $1, $2, t.ord - 1, t.prompt, t.answer, t.solution "
            "FROM unnest($3::bytea[], $4::bytea[], $5::bytea[]) "
            "WITH ORDINALITY AS t(prompt, answer, solution, ord)",
            Params()
                .Text(id)
                .Text(dataset)
                .Text(ByteaArray(examples, &train::Example::prompt))
                .Text(ByteaArray(examples, &train::Example::answer))
                .Text(ByteaArray(examples, &train::Example::solution)))
      .status();
}

// The tenant's job `id`; NOT_FOUND when the tenant has none.
absl::StatusOr<JobRecord> ReadTenantsJob(Connection& connection, const std::string& tenant,
                                         const std::string& id) {
  ASSIGN_OR_RETURN(
      const Result result,
      connection.Exec("reading a job",
                      absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = $1 AND tenant = $2"),
                      Params().Text(id).Text(tenant)));
  if (result.rows() == 0) return JobNotFound(id);
  return ReadJob(result, 0);
}

// Why a write that matched no row did not happen: NOT_FOUND for an unfenced write
// (epoch 0) or without the job, else the writer's lease is no longer the job's.
absl::Status NotWritten(Connection& connection, const std::string& id, int64_t epoch) {
  if (epoch == 0) return JobNotFound(id);
  ASSIGN_OR_RETURN(const Result exists, connection.Exec("looking a job up",
                                                        "SELECT 1 FROM jobs WHERE id = $1",
                                                        Params().Text(id)));
  if (exists.rows() == 0) return JobNotFound(id);
  return LeaseLostError(id, epoch);
}

// A lease is free when it has no expiry or its expiry passed.
constexpr absl::string_view kLeaseFree = "(lease_until IS NULL OR lease_until < now())";

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresJobStore>> PostgresJobStore::Create(
    const Options& options) {
  if (options.database == nullptr) return absl::InvalidArgumentError("job store: no database");
  Options resolved = options;
  if (!resolved.clock) resolved.clock = [] { return absl::Now(); };
  return absl::WrapUnique(new PostgresJobStore(std::move(resolved)));
}

absl::Status PostgresJobStore::Create(const JobRecord& job, const JobDatasets& datasets,
                                      int64_t max_active_jobs) {
  RETURN_IF_ERROR(CheckNewJob(job));
  const absl::Time create_time =
      job.create_time == absl::InfinitePast() ? options_.clock() : job.create_time;
  ASSIGN_OR_RETURN(const JobColumns columns, EncodeJob(job, create_time));
  return options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    Transaction txn(connection);
    RETURN_IF_ERROR(txn.Begin());
    RETURN_IF_ERROR(
        connection.Exec("locking the tenant", kTenantLock, Params().Text(job.tenant)).status());
    ASSIGN_OR_RETURN(const Result existing, connection.Exec("looking a job up",
                                                            "SELECT 1 FROM jobs WHERE id = $1",
                                                            Params().Text(job.id)));
    if (existing.rows() > 0) return JobAlreadyExists(job.id);
    if (max_active_jobs >= 0) {
      ASSIGN_OR_RETURN(const Result count,
                       connection.Exec("counting active jobs",
                                       absl::StrCat("SELECT count(*) FROM jobs WHERE tenant = $1 "
                                                    "AND ",
                                                    kUnfinished),
                                       Params().Text(job.tenant)));
      const int64_t active = count.Int(0, 0);
      if (active >= max_active_jobs) return QueuedJobsLimitError(max_active_jobs, active);
    }
    Params insert;
    insert.Text(columns.id).Text(columns.tenant).Int(columns.create_time_us).Text(columns.spec);
    AddProgress(insert, columns.progress);
    insert.Text(job.spec.model);
    RETURN_IF_ERROR(connection
                        .Exec("inserting the job",
                              "INSERT INTO jobs (id, tenant, create_time_us, spec, state, step, "
                              "metrics, error, vector_version, start_time_us, end_time_us, model) "
                              "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                              insert)
                        .status());
    RETURN_IF_ERROR(InsertExamples(connection, job.id, "train", datasets.train));
    RETURN_IF_ERROR(InsertExamples(connection, job.id, "eval", datasets.eval));
    return txn.Commit();
  });
}

absl::StatusOr<JobRecord> PostgresJobStore::Get(const std::string& tenant, const std::string& id) {
  RETURN_IF_ERROR(CheckJobTenantAndId(tenant, id));
  std::optional<JobRecord> job;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    ASSIGN_OR_RETURN(job, ReadTenantsJob(connection, tenant, id));
    return absl::OkStatus();
  }));
  return *std::move(job);
}

absl::StatusOr<JobPage> PostgresJobStore::List(const JobListQuery& query) {
  RETURN_IF_ERROR(CheckJobListQuery(query));
  JobPage page;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    Params params;
    int next = 0;
    auto param = [&next] { return absl::StrCat("$", ++next); };
    std::string sql = absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE tenant = ", param());
    params.Text(query.tenant);
    if (query.state.has_value()) {
      absl::StrAppend(&sql, " AND state = ", param());
      params.Text(*JobStateStoreName(*query.state));
    }
    if (!query.after_id.empty()) {
      // The cursor is a job of the tenant's, even if it no longer matches the filter
      // (its state changed since the previous page): its position is what counts.
      ASSIGN_OR_RETURN(const Result cursor,
                       connection.Exec("reading the list cursor",
                                       "SELECT create_time_us FROM jobs WHERE id = $1 AND "
                                       "tenant = $2",
                                       Params().Text(query.after_id).Text(query.tenant)));
      if (cursor.rows() == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "job store: after_id \"", query.after_id, "\" is not a job of the tenant"));
      }
      // "Strictly after (create_time, id)" in (create_time DESC, id DESC) order.
      const std::string after_time = param();
      const std::string after_id = param();
      absl::StrAppend(&sql, " AND create_time_us <= ", after_time, " AND (create_time_us < ",
                      after_time, " OR id < ", after_id, ")");
      params.Int(cursor.Int(0, 0)).Text(query.after_id);
    }
    // One row past the page tells whether more follow.
    const int64_t limit = std::min(query.limit, std::numeric_limits<int64_t>::max() - 1);
    absl::StrAppend(&sql, " ORDER BY create_time_us DESC, id DESC LIMIT ", param());
    params.Int(limit + 1);
    ASSIGN_OR_RETURN(const Result result, connection.Exec("listing jobs", sql, params));
    ASSIGN_OR_RETURN(page.jobs, ReadJobs(result));
    if (static_cast<int64_t>(page.jobs.size()) > limit) {
      page.jobs.resize(limit);
      page.more = true;
    }
    return absl::OkStatus();
  }));
  return page;
}

absl::Status PostgresJobStore::Update(const JobRecord& job) {
  RETURN_IF_ERROR(CheckJobTenantAndId(job.tenant, job.id));
  ASSIGN_OR_RETURN(const JobProgressColumns progress, EncodeJobProgress(job));
  Params params;
  params.Text(job.id).Text(job.tenant);
  AddProgress(params, progress);
  const bool fenced = job.lease_epoch != 0;
  if (fenced) params.Int(job.lease_epoch);
  return options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    ASSIGN_OR_RETURN(
        const Result result,
        connection.Exec("updating a job",
                        absl::StrCat("UPDATE jobs SET state = $3, step = $4, metrics = $5, "
                                     "error = $6, vector_version = $7, start_time_us = $8, "
                                     "end_time_us = $9 WHERE id = $1 AND tenant = $2",
                                     fenced ? " AND lease_epoch = $10" : ""),
                        params));
    if (result.affected() == 0) return NotWritten(connection, job.id, job.lease_epoch);
    return absl::OkStatus();
  });
}

absl::StatusOr<JobDatasets> PostgresJobStore::ReadDatasets(const std::string& id) {
  RETURN_IF_ERROR(CheckJobId(id));
  JobDatasets datasets;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    ASSIGN_OR_RETURN(const Result exists, connection.Exec("looking a job up",
                                                          "SELECT 1 FROM jobs WHERE id = $1",
                                                          Params().Text(id)));
    if (exists.rows() == 0) return JobNotFound(id);
    // Binary results: the texts come back as their exact bytes.
    ASSIGN_OR_RETURN(const Result result,
                     connection.ExecBinary("reading a job's examples",
                                     "SELECT dataset, prompt, answer, solution FROM job_examples "
                                     "WHERE job_id = $1 ORDER BY dataset, position",
                                     Params().Text(id)));
    for (int row = 0; row < result.rows(); ++row) {
      const std::string dataset = result.Text(row, 0);
      std::vector<train::Example>* examples = dataset == "train"  ? &datasets.train
                                              : dataset == "eval" ? &datasets.eval
                                                                  : nullptr;
      if (examples == nullptr) {
        return JobCorruptRow(
            absl::StrCat("job \"", id, "\" has an example of dataset \"", dataset, "\""));
      }
      examples->push_back({result.Text(row, 1), result.Text(row, 2), result.Text(row, 3)});
    }
    return absl::OkStatus();
  }));
  return datasets;
}

absl::Status PostgresJobStore::SaveCheckpoint(const std::string& id,
                                              const JobCheckpoint& checkpoint) {
  RETURN_IF_ERROR(CheckJobId(id));
  ASSIGN_OR_RETURN(const std::optional<std::string> metrics, EncodeJobMetrics(checkpoint.metrics));
  Params params;
  params.Text(id).Int(checkpoint.step).OptionalText(metrics).Bytes(checkpoint.bytes);
  const bool fenced = checkpoint.lease_epoch != 0;
  if (fenced) params.Int(checkpoint.lease_epoch);
  return options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    // Inserting for a job that does not exist violates the foreign key; the SELECT
    // turns that into no row instead, which reads as NOT_FOUND (or a lost lease).
    ASSIGN_OR_RETURN(
        const Result result,
        connection.Exec("saving a checkpoint",
                        absl::StrCat("INSERT INTO job_checkpoints (job_id, step, metrics, bytes) "
                                     "SELECT id, $2, $3, $4 FROM jobs WHERE id = $1",
                                     fenced ? " AND lease_epoch = $5" : "",
                                     " ON CONFLICT (job_id) DO UPDATE SET step = excluded.step, "
                                     "metrics = excluded.metrics, bytes = excluded.bytes"),
                        params));
    if (result.affected() == 0) return NotWritten(connection, id, checkpoint.lease_epoch);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::optional<JobCheckpoint>> PostgresJobStore::LoadCheckpoint(
    const std::string& id) {
  RETURN_IF_ERROR(CheckJobId(id));
  std::optional<JobCheckpoint> checkpoint;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    // Binary results for the bytes; the step as text so it reads the same way.
    ASSIGN_OR_RETURN(const Result result,
                     connection.ExecBinary("loading a checkpoint",
                                           "SELECT step::text, metrics, bytes FROM job_checkpoints "
                                           "WHERE job_id = $1",
                                           Params().Text(id)));
    if (result.rows() == 0) return absl::OkStatus();
    checkpoint.emplace();
    const int64_t step = result.Int(0, 0);
    if (step < std::numeric_limits<int32_t>::min() || step > std::numeric_limits<int32_t>::max()) {
      return JobCorruptRow(absl::StrCat("checkpoint of job \"", id, "\" has step ", step));
    }
    checkpoint->step = static_cast<int32_t>(step);
    ASSIGN_OR_RETURN(checkpoint->metrics,
                     DecodeJobMetrics(result.OptionalText(0, 1),
                                      absl::StrCat("checkpoint of job \"", id, "\" metrics")));
    checkpoint->bytes = result.Bytes(0, 2);
    return absl::OkStatus();
  }));
  return checkpoint;
}

absl::Status PostgresJobStore::DeleteCheckpoint(const std::string& id) {
  RETURN_IF_ERROR(CheckJobId(id));
  return options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    return connection
        .Exec("deleting a checkpoint", "DELETE FROM job_checkpoints WHERE job_id = $1",
              Params().Text(id))
        .status();
  });
}

absl::StatusOr<std::vector<JobRecord>> PostgresJobStore::ListUnfinished() {
  std::vector<JobRecord> jobs;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    ASSIGN_OR_RETURN(const Result result,
                     connection.Exec("listing unfinished jobs",
                                     absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE ",
                                                  kUnfinished, " ORDER BY create_time_us, id")));
    ASSIGN_OR_RETURN(jobs, ReadJobs(result));
    return absl::OkStatus();
  }));
  return jobs;
}

absl::StatusOr<std::optional<JobLease>> PostgresJobStore::ClaimJob(const JobClaim& claim) {
  if (claim.owner.empty()) return absl::InvalidArgumentError("job store: empty lease owner");
  if (claim.models.empty()) return std::optional<JobLease>();
  // A text[] of the models, as TextArray-style literal.
  std::string models = "{";
  for (size_t i = 0; i < claim.models.size(); ++i) {
    absl::StrAppend(&models, i > 0 ? "," : "", "\"");
    for (const char c : claim.models[i]) {
      if (c == '"' || c == '\\') models += '\\';
      models += c;
    }
    models += '"';
  }
  models += '}';
  std::optional<JobLease> lease;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    postgres::Transaction txn(connection);
    RETURN_IF_ERROR(txn.Begin());
    // Jobs whose holders kept stopping without finishing end here, not in a loop.
    RETURN_IF_ERROR(
        connection
            .Exec("failing jobs out of attempts",
                  absl::StrCat("WITH failed AS (UPDATE jobs SET state = 'FAILED', error = $3, "
                               "end_time_us = $4, lease_owner = NULL, lease_until = NULL "
                               "WHERE model = ANY($1::text[]) AND state IN ('QUEUED', 'RUNNING') "
                               "AND lease_until < now() AND attempts >= $2 RETURNING id) "
                               "DELETE FROM job_checkpoints WHERE job_id IN (SELECT id FROM "
                               "failed)"),
                  Params()
                      .Text(models)
                      .Int(claim.max_attempts)
                      .Text(AttemptsExhaustedError(claim.max_attempts))
                      .Int(absl::ToUnixMicros(absl::Now())))
            .status());
    ASSIGN_OR_RETURN(
        const Result claimed,
        connection.Exec(
            "claiming a job",
            absl::StrCat(
                "WITH candidate AS (SELECT j.id FROM jobs j "
                "WHERE j.model = ANY($1::text[]) AND j.state IN ('QUEUED', 'RUNNING') AND ",
                kLeaseFree,
                " ORDER BY (j.state = 'RUNNING') DESC, "
                "(SELECT count(*) FROM jobs r WHERE r.tenant = j.tenant AND r.state = 'RUNNING' "
                "AND r.lease_until >= now()), "
                "(SELECT max(s.start_time_us) FROM jobs s WHERE s.tenant = j.tenant) NULLS FIRST, "
                "j.create_time_us, j.id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                "UPDATE jobs SET lease_owner = $2, lease_epoch = lease_epoch + 1, "
                "lease_until = now() + $3::interval, attempts = attempts + 1 "
                "WHERE id = (SELECT id FROM candidate) RETURNING ",
                kColumns, ", lease_epoch, attempts"),
            Params().Text(models).Text(claim.owner).Text(LeaseInterval(claim.ttl))));
    if (claimed.rows() > 0) {
      lease.emplace();
      ASSIGN_OR_RETURN(lease->job, ReadJob(claimed, 0));
      lease->job.lease_epoch = claimed.Int(0, 12);
      lease->attempt = static_cast<int32_t>(claimed.Int(0, 13));
    }
    return txn.Commit();
  }));
  return lease;
}

absl::StatusOr<bool> PostgresJobStore::RenewLease(const std::string& id, int64_t epoch,
                                                  absl::Duration ttl) {
  RETURN_IF_ERROR(CheckJobId(id));
  bool cancel = false;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    ASSIGN_OR_RETURN(const Result result,
                     connection.Exec("renewing a lease",
                                     "UPDATE jobs SET lease_until = now() + $3::interval "
                                     "WHERE id = $1 AND lease_epoch = $2 AND state IN ('QUEUED', "
                                     "'RUNNING') RETURNING cancel_requested",
                                     Params().Text(id).Int(epoch).Text(LeaseInterval(ttl))));
    if (result.rows() == 0) return NotWritten(connection, id, epoch);
    cancel = result.Bool(0, 0);
    return absl::OkStatus();
  }));
  return cancel;
}

absl::Status PostgresJobStore::ReleaseLease(const std::string& id, int64_t epoch) {
  RETURN_IF_ERROR(CheckJobId(id));
  return options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    return connection
        .Exec("handing a lease back",
              "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, "
              "attempts = greatest(attempts - 1, 0) WHERE id = $1 AND lease_epoch = $2",
              Params().Text(id).Int(epoch))
        .status();
  });
}

absl::StatusOr<JobRecord> PostgresJobStore::RequestCancel(const std::string& tenant,
                                                          const std::string& id) {
  RETURN_IF_ERROR(CheckJobTenantAndId(tenant, id));
  std::optional<JobRecord> record;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    postgres::Transaction txn(connection);
    RETURN_IF_ERROR(txn.Begin());
    // A QUEUED job no replica holds ends now; anything else running is marked for its
    // holder, which sees it at its next renewal.
    ASSIGN_OR_RETURN(
        const Result cancelled,
        connection.Exec("cancelling a queued job",
                        absl::StrCat("UPDATE jobs SET state = 'CANCELLED', end_time_us = $3, "
                                     "lease_owner = NULL, lease_until = NULL WHERE id = $1 AND "
                                     "tenant = $2 AND state = 'QUEUED' AND ",
                                     kLeaseFree),
                        Params().Text(id).Text(tenant).Int(absl::ToUnixMicros(absl::Now()))));
    if (cancelled.affected() == 0) {
      RETURN_IF_ERROR(connection
                          .Exec("requesting a cancel",
                                "UPDATE jobs SET cancel_requested = true WHERE id = $1 AND "
                                "tenant = $2 AND state IN ('QUEUED', 'RUNNING')",
                                Params().Text(id).Text(tenant))
                          .status());
    }
    ASSIGN_OR_RETURN(record, ReadTenantsJob(connection, tenant, id));
    return txn.Commit();
  }));
  return *std::move(record);
}

absl::StatusOr<int64_t> PostgresJobStore::DeleteEndedBefore(absl::Time cutoff) {
  int64_t deleted = 0;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    // Examples and checkpoints go by ON DELETE CASCADE, in the same statement. The
    // state test keeps a job that is still QUEUED or RUNNING whatever its timestamps.
    ASSIGN_OR_RETURN(const Result result,
                     connection.Exec("deleting expired jobs",
                                     "DELETE FROM jobs WHERE state IN ('SUCCEEDED', 'FAILED', "
                                     "'CANCELLED') AND end_time_us IS NOT NULL "
                                     "AND end_time_us < $1",
                                     Params().Int(absl::ToUnixMicros(cutoff))));
    deleted = result.affected();
    return absl::OkStatus();
  }));
  return deleted;
}

}  // namespace steerd
