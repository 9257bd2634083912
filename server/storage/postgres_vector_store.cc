#include "server/storage/postgres_vector_store.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/storage/job_codec.h"
#include "server/storage/vector_codec.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using postgres::Connection;
using postgres::Params;
using postgres::Result;
using postgres::Transaction;

// The metadata columns, in the order ReadVector() expects; the norms as hex text.
constexpr absl::string_view kColumns =
    "v.name, v.version, v.model, v.model_fingerprint, v.num_layers, v.hidden_size, "
    "v.dtype, v.sha256, v.size_bytes, encode(v.layer_norms, 'hex'), v.create_time_us, "
    "v.source, v.job_id, v.description";

// Serializes a tenant's creates across replicas (the quota count and the clock read
// happen under it); the second key keeps it apart from the job store's tenant lock.
constexpr char kTenantLock[] = "SELECT pg_advisory_xact_lock(hashtext($1), 1)";

// The change feed's writer lock ("steerd" in ASCII, then 2).
constexpr int64_t kChangeFeedLock = 0x7374656572640002;

absl::StatusOr<StoredVector> ReadVector(const Result& result, int row, const std::string& tenant) {
  StoredVector v;
  v.tenant = tenant;
  v.name = result.Text(row, 0);
  v.version = result.Int(row, 1);
  v.model = result.Text(row, 2);
  v.model_fingerprint = result.Text(row, 3);
  v.num_layers = static_cast<int32_t>(result.Int(row, 4));
  v.hidden_size = static_cast<int32_t>(result.Int(row, 5));
  v.dtype = result.Text(row, 6);
  v.sha256 = result.Text(row, 7);
  v.size_bytes = result.Int(row, 8);
  v.create_time = absl::FromUnixMicros(result.Int(row, 10));
  RETURN_IF_ERROR(
      DecodeVectorColumns(absl::HexStringToBytes(result.Text(row, 9)), result.Text(row, 11), v));
  v.job_id = result.Text(row, 12);
  v.description = result.Text(row, 13);
  return v;
}

// Appends a change row for (tenant, name, version) and signals it; inside the caller's
// transaction, so the change and its feed entry commit (or roll back) together.
// Followers read the feed by seq, so seqs must become visible in increasing order:
// the feed lock, held until commit and taken before the seq is drawn, puts the
// writers of changes in line (vector writes are rare; generation never takes it).
absl::Status RecordChange(Connection& connection, const std::string& tenant,
                          const std::string& name, int64_t version, absl::string_view op) {
  RETURN_IF_ERROR(connection
                      .Exec("locking the change feed", "SELECT pg_advisory_xact_lock($1)",
                            Params().Int(kChangeFeedLock))
                      .status());
  return connection
      .Exec("recording the change",
            absl::StrCat("WITH change AS (INSERT INTO vector_changes (tenant, name, version, op, "
                         "time_us) VALUES ($1, $2, $3, $4, $5) RETURNING seq) "
                         "SELECT pg_notify('",
                         PostgresVectorStore::kChangeChannel, "', seq::text) FROM change"),
            Params()
                .Text(tenant)
                .Text(name)
                .Int(version)
                .Text(op)
                .Int(absl::ToUnixMicros(absl::Now())))
      .status();
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresVectorStore>> PostgresVectorStore::Create(
    const Options& options) {
  if (options.database == nullptr) {
    return absl::InvalidArgumentError("vector store: no database");
  }
  Options resolved = options;
  if (!resolved.clock) resolved.clock = [] { return absl::Now(); };
  return absl::WrapUnique(new PostgresVectorStore(std::move(resolved)));
}

absl::StatusOr<StoredVector> PostgresVectorStore::Create(const StoredVector& metadata,
                                                         const std::string& safetensors,
                                                         int64_t max_stored_versions) {
  ASSIGN_OR_RETURN(StoredVector stored, PrepareNewVector(metadata, safetensors));
  const std::string norms = EncodeLayerNorms(stored.layer_norms);
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    Transaction txn(connection);
    RETURN_IF_ERROR(txn.Begin());
    RETURN_IF_ERROR(
        connection.Exec("locking the tenant", kTenantLock, Params().Text(stored.tenant)).status());
    if (max_stored_versions >= 0) {
      ASSIGN_OR_RETURN(const Result count,
                       connection.Exec("counting stored versions",
                                       "SELECT count(*) FROM vectors WHERE tenant = $1",
                                       Params().Text(stored.tenant)));
      const int64_t stored_versions = count.Int(0, 0);
      if (stored_versions >= max_stored_versions) {
        return StoredVectorsLimitError(max_stored_versions, stored_versions);
      }
    }
    const bool publishes_job = stored.job_lease_epoch != 0 && !stored.job_id.empty();
    if (publishes_job) {
      ASSIGN_OR_RETURN(const Result job,
                       connection.Exec("checking the job's lease",
                                       "SELECT cancel_requested FROM jobs WHERE id = $1 AND "
                                       "lease_epoch = $2 AND state IN ('QUEUED', 'RUNNING') "
                                       "FOR UPDATE",
                                       Params().Text(stored.job_id).Int(stored.job_lease_epoch)));
      if (job.rows() == 0) return LeaseLostError(stored.job_id, stored.job_lease_epoch);
      if (job.Bool(0, 0)) return JobCancelledError(stored.job_id);
    }
    // Read under the tenant's lock so create_time never decreases as versions increase.
    stored.create_time = absl::FromUnixMicros(absl::ToUnixMicros(options_.clock()));
    ASSIGN_OR_RETURN(
        const Result next,
        connection.Exec("assigning a version",
                        "INSERT INTO vector_names (tenant, name, last_version) VALUES ($1, $2, 1) "
                        "ON CONFLICT (tenant, name) DO UPDATE "
                        "SET last_version = vector_names.last_version + 1 RETURNING last_version",
                        Params().Text(stored.tenant).Text(stored.name)));
    stored.version = next.Int(0, 0);
    ASSIGN_OR_RETURN(
        const Result inserted,
        connection.Exec(
            "inserting the vector",
            "INSERT INTO vectors (tenant, name, version, model, model_fingerprint, num_layers, "
            "hidden_size, dtype, sha256, size_bytes, layer_norms, create_time_us, source, "
            "job_id, description) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
            "RETURNING id",
            Params()
                .Text(stored.tenant)
                .Text(stored.name)
                .Int(stored.version)
                .Text(stored.model)
                .Text(stored.model_fingerprint)
                .Int(stored.num_layers)
                .Int(stored.hidden_size)
                .Text(stored.dtype)
                .Text(stored.sha256)
                .Int(stored.size_bytes)
                .Bytes(norms)
                .Int(absl::ToUnixMicros(stored.create_time))
                .Text(VectorSourceName(stored.source))
                .Text(stored.job_id)
                .Text(stored.description)));
    RETURN_IF_ERROR(connection
                        .Exec("inserting the vector file",
                              "INSERT INTO vector_files (vector_id, safetensors) VALUES ($1, $2)",
                              Params().Int(inserted.Int(0, 0)).Bytes(safetensors))
                        .status());
    if (publishes_job) {
      RETURN_IF_ERROR(connection
                          .Exec("ending the job SUCCEEDED",
                                "UPDATE jobs SET state = 'SUCCEEDED', vector_version = $2, "
                                "end_time_us = $3 WHERE id = $1",
                                Params()
                                    .Text(stored.job_id)
                                    .Int(stored.version)
                                    .Int(absl::ToUnixMicros(absl::Now())))
                          .status());
    }
    RETURN_IF_ERROR(RecordChange(connection, stored.tenant, stored.name, stored.version, "create"));
    return txn.Commit();
  }));
  return stored;
}

absl::StatusOr<StoredVector> PostgresVectorStore::Get(const std::string& tenant,
                                                      const std::string& name,
                                                      std::optional<int64_t> version) {
  RETURN_IF_ERROR(CheckVectorTenantAndName(tenant, name));
  std::optional<StoredVector> found;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    Params params;
    params.Text(tenant).Text(name);
    if (version.has_value()) params.Int(*version);
    ASSIGN_OR_RETURN(const Result result,
                     connection.Exec("reading a vector",
                                     absl::StrCat("SELECT ", kColumns,
                                                  " FROM vectors v WHERE v.tenant = $1 AND "
                                                  "v.name = $2",
                                                  version.has_value() ? " AND v.version = $3" : "",
                                                  " ORDER BY v.version DESC LIMIT 1"),
                                     params));
    if (result.rows() == 0) return VectorNotFound(name, version);
    ASSIGN_OR_RETURN(found, ReadVector(result, 0, tenant));
    return absl::OkStatus();
  }));
  return *std::move(found);
}

absl::StatusOr<std::string> PostgresVectorStore::ReadBytes(const std::string& tenant,
                                                           const std::string& name,
                                                           int64_t version) {
  RETURN_IF_ERROR(CheckVectorTenantAndName(tenant, name));
  std::string bytes;
  std::string sha256;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    // Binary results: the file comes as its bytes, not as hex text twice its size.
    ASSIGN_OR_RETURN(const Result result,
                     connection.ExecBinary("reading a vector file",
                                           "SELECT f.safetensors, v.sha256 FROM vectors v "
                                           "JOIN vector_files f ON f.vector_id = v.id "
                                           "WHERE v.tenant = $1 AND v.name = $2 AND v.version = $3",
                                           Params().Text(tenant).Text(name).Int(version)));
    if (result.rows() == 0) return VectorNotFound(name, version);
    bytes = result.Bytes(0, 0);
    sha256 = result.Bytes(0, 1);
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(CheckStoredBytes(name, version, bytes, sha256));
  return bytes;
}

absl::StatusOr<VectorPage> PostgresVectorStore::List(const VectorListQuery& query) {
  RETURN_IF_ERROR(CheckVectorListQuery(query));
  // The SQL text only varies by which fixed fragments are present; every value is a
  // parameter, numbered in the order it is added.
  Params params;
  int next = 0;
  auto param = [&next] { return absl::StrCat("$", ++next); };
  std::string sql = absl::StrCat("SELECT ", kColumns, " FROM vectors v WHERE v.tenant = ", param());
  params.Text(query.tenant);
  std::string model_param;
  if (!query.model.empty()) {
    model_param = param();
    absl::StrAppend(&sql, " AND v.model = ", model_param);
    params.Text(query.model);
  }
  if (!query.name.empty()) {
    absl::StrAppend(&sql, " AND v.name = ", param());
    params.Text(query.name);
  }
  if (!query.after_name.empty()) {
    // "Strictly after (after_name, after_version)" in (name ASC, version DESC) order.
    const std::string after_name = param();
    const std::string after_version = param();
    absl::StrAppend(&sql, " AND v.name >= ", after_name, " AND (v.name > ", after_name,
                    " OR v.version < ", after_version, ")");
    params.Text(query.after_name).Int(query.after_version);
  }
  if (!query.all_versions) {
    absl::StrAppend(&sql,
                    " AND v.version = (SELECT max(w.version) FROM vectors w"
                    " WHERE w.tenant = v.tenant AND w.name = v.name",
                    model_param.empty() ? "" : absl::StrCat(" AND w.model = ", model_param), ")");
  }
  // One row past the page tells whether more follow.
  const int64_t limit = std::min(query.limit, std::numeric_limits<int64_t>::max() - 1);
  absl::StrAppend(&sql, " ORDER BY v.name ASC, v.version DESC LIMIT ", param());
  params.Int(limit + 1);

  VectorPage page;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    ASSIGN_OR_RETURN(const Result result, connection.Exec("listing vectors", sql, params));
    for (int row = 0; row < result.rows(); ++row) {
      if (static_cast<int64_t>(page.vectors.size()) == limit) {
        page.more = true;
        break;
      }
      ASSIGN_OR_RETURN(StoredVector vector, ReadVector(result, row, query.tenant));
      page.vectors.push_back(std::move(vector));
    }
    return absl::OkStatus();
  }));
  return page;
}

absl::StatusOr<std::vector<StoredVector>> PostgresVectorStore::Delete(
    const std::string& tenant, const std::string& name, std::optional<int64_t> version) {
  RETURN_IF_ERROR(CheckVectorTenantAndName(tenant, name));
  Params params;
  params.Text(tenant).Text(name);
  if (version.has_value()) params.Int(*version);
  const std::string match = version.has_value() ? "tenant = $1 AND name = $2 AND version = $3"
                                                : "tenant = $1 AND name = $2";
  std::vector<StoredVector> deleted;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    Transaction txn(connection);
    RETURN_IF_ERROR(txn.Begin());
    // RETURNING reads the rows as deleted; their files go by ON DELETE CASCADE.
    ASSIGN_OR_RETURN(
        const Result result,
        connection.Exec("deleting vectors",
                        absl::StrCat("DELETE FROM vectors v WHERE ", match, " RETURNING ",
                                     kColumns),
                        params));
    for (int row = 0; row < result.rows(); ++row) {
      ASSIGN_OR_RETURN(StoredVector vector, ReadVector(result, row, tenant));
      deleted.push_back(std::move(vector));
    }
    if (deleted.empty()) return VectorNotFound(name, version);
    std::sort(deleted.begin(), deleted.end(),
              [](const StoredVector& a, const StoredVector& b) { return a.version < b.version; });
    for (const StoredVector& vector : deleted) {
      RETURN_IF_ERROR(RecordChange(connection, tenant, name, vector.version, "delete"));
    }
    return txn.Commit();
  }));
  return deleted;
}

absl::StatusOr<int64_t> PostgresVectorStore::CountVersions(const std::string& tenant) {
  if (tenant.empty()) return absl::InvalidArgumentError("vector store: empty tenant");
  int64_t count = 0;
  RETURN_IF_ERROR(options_.database->WithConnection([&](Connection& connection) -> absl::Status {
    ASSIGN_OR_RETURN(const Result result,
                     connection.Exec("counting stored versions",
                                     "SELECT count(*) FROM vectors WHERE tenant = $1",
                                     Params().Text(tenant)));
    count = result.Int(0, 0);
    return absl::OkStatus();
  }));
  return count;
}

}  // namespace steerd
