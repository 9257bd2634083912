#include "server/storage/sqlite_vector_store.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "server/storage/job_codec.h"
#include "server/storage/vector_codec.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using sqlite::Statement;
using sqlite::Transaction;

// One migration per schema version: kMigrations[v - 1] takes a database from version
// v - 1 to v. The schema_version table is shared with any other store that keeps its
// tables in the same file, one row per component.
constexpr absl::string_view kComponent = "vectors";
constexpr const char* kMigrations[] = {
    // Version 1.
    // vector_names: one row per (tenant, name) ever created, never deleted, so the
    //   version counter survives deleting every version of a name.
    // vectors: the metadata; the unique index is the listing order (name ASC, version
    //   DESC) within a tenant, and serves "latest of a name" lookups.
    // vector_files: the safetensors bytes, apart so that scans of `vectors` stay small.
    R"sql(
      CREATE TABLE vector_names (
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        last_version INTEGER NOT NULL,
        PRIMARY KEY (tenant, name)
      ) WITHOUT ROWID;
      CREATE TABLE vectors (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1),
        model TEXT NOT NULL,
        model_fingerprint TEXT NOT NULL,
        num_layers INTEGER NOT NULL,
        hidden_size INTEGER NOT NULL,
        dtype TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        layer_norms BLOB NOT NULL,  -- num_layers little-endian float32 values.
        create_time_us INTEGER NOT NULL,  -- Microseconds since the Unix epoch.
        source TEXT NOT NULL CHECK (source IN ('upload', 'training')),
        job_id TEXT NOT NULL,
        description TEXT NOT NULL
      );
      CREATE UNIQUE INDEX vectors_listing ON vectors (tenant, name, version DESC);
      CREATE TABLE vector_files (
        vector_id INTEGER PRIMARY KEY REFERENCES vectors (id),
        safetensors BLOB NOT NULL
      );
    )sql",
};
static_assert(sizeof(kMigrations) / sizeof(kMigrations[0]) == SqliteVectorStore::kSchemaVersion,
              "one migration per schema version");

// The metadata columns, in the order ReadVector() expects.
constexpr absl::string_view kColumns =
    "v.name, v.version, v.model, v.model_fingerprint, v.num_layers, v.hidden_size, "
    "v.dtype, v.sha256, v.size_bytes, v.layer_norms, v.create_time_us, v.source, "
    "v.job_id, v.description";

// Reads kColumns from the current row of `stmt`, starting at column 0.
absl::StatusOr<StoredVector> ReadVector(const Statement& stmt, const std::string& tenant) {
  StoredVector v;
  v.tenant = tenant;
  v.name = stmt.Text(0);
  v.version = stmt.Int(1);
  v.model = stmt.Text(2);
  v.model_fingerprint = stmt.Text(3);
  v.num_layers = static_cast<int32_t>(stmt.Int(4));
  v.hidden_size = static_cast<int32_t>(stmt.Int(5));
  v.dtype = stmt.Text(6);
  v.sha256 = stmt.Text(7);
  v.size_bytes = stmt.Int(8);
  v.create_time = absl::FromUnixMicros(stmt.Int(10));
  RETURN_IF_ERROR(DecodeVectorColumns(stmt.Blob(9), stmt.Text(11), v));
  v.job_id = stmt.Text(12);
  v.description = stmt.Text(13);
  return v;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteVectorStore>> SqliteVectorStore::Create(
    const Options& options) {
  sqlite::Database::Options open;
  open.path = options.path;
  open.busy_timeout = options.busy_timeout;
  open.label = "vector store";
  open.component = std::string(kComponent);
  open.migrations = kMigrations;
  ASSIGN_OR_RETURN(std::unique_ptr<sqlite::Database> db, sqlite::Database::Open(open));
  Options resolved = options;
  if (!resolved.clock) resolved.clock = [] { return absl::Now(); };
  return absl::WrapUnique(new SqliteVectorStore(std::move(resolved), std::move(db)));
}

SqliteVectorStore::~SqliteVectorStore() = default;

absl::StatusOr<StoredVector> SqliteVectorStore::Create(const StoredVector& metadata,
                                                       const std::string& safetensors,
                                                       int64_t max_stored_versions) {
  ASSIGN_OR_RETURN(StoredVector stored, PrepareNewVector(metadata, safetensors));
  const std::string norms = EncodeLayerNorms(stored.layer_norms);

  absl::MutexLock lock(&mu_);
  // Read under the lock so create_time never decreases as versions increase.
  stored.create_time = absl::FromUnixMicros(absl::ToUnixMicros(options_.clock()));
  Transaction txn(*db_);
  RETURN_IF_ERROR(txn.BeginImmediate());
  if (max_stored_versions >= 0) {
    Statement count(*db_, "counting stored versions");
    RETURN_IF_ERROR(count.Prepare("SELECT COUNT(*) FROM vectors WHERE tenant = ?1"));
    RETURN_IF_ERROR(count.BindText(1, stored.tenant));
    RETURN_IF_ERROR(count.Step().status());
    const int64_t stored_versions = count.Int(0);
    if (stored_versions >= max_stored_versions) {
      return StoredVectorsLimitError(max_stored_versions, stored_versions);
    }
  }
  const bool publishes_job = stored.job_lease_epoch != 0 && !stored.job_id.empty();
  if (publishes_job) {
    // The job tables share this file (SqliteJobStore).
    Statement job(*db_, "checking the job's lease");
    RETURN_IF_ERROR(job.Prepare(
        "SELECT cancel_requested FROM jobs WHERE id = ?1 AND lease_epoch = ?2 AND "
        "state IN ('QUEUED', 'RUNNING')"));
    RETURN_IF_ERROR(job.BindText(1, stored.job_id));
    RETURN_IF_ERROR(job.BindInt(2, stored.job_lease_epoch));
    ASSIGN_OR_RETURN(const bool row, job.Step());
    if (!row) return LeaseLostError(stored.job_id, stored.job_lease_epoch);
    if (job.Int(0) != 0) return JobCancelledError(stored.job_id);
  }
  {
    Statement next(*db_, "assigning a version");
    RETURN_IF_ERROR(
        next.Prepare("INSERT INTO vector_names (tenant, name, last_version) VALUES (?1, ?2, 1) "
                     "ON CONFLICT (tenant, name) DO UPDATE SET last_version = last_version + 1 "
                     "RETURNING last_version"));
    RETURN_IF_ERROR(next.BindText(1, stored.tenant));
    RETURN_IF_ERROR(next.BindText(2, stored.name));
    ASSIGN_OR_RETURN(const bool row, next.Step());
    if (!row) return absl::InternalError("vector store: no version assigned");
    stored.version = next.Int(0);
    RETURN_IF_ERROR(next.Run());  // Completes the statement (RETURNING yields one row).
  }
  {
    Statement insert(*db_, "inserting the vector");
    RETURN_IF_ERROR(insert.Prepare(
        "INSERT INTO vectors (tenant, name, version, model, model_fingerprint, num_layers, "
        "hidden_size, dtype, sha256, size_bytes, layer_norms, create_time_us, source, "
        "job_id, description) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"));
    RETURN_IF_ERROR(insert.BindText(1, stored.tenant));
    RETURN_IF_ERROR(insert.BindText(2, stored.name));
    RETURN_IF_ERROR(insert.BindInt(3, stored.version));
    RETURN_IF_ERROR(insert.BindText(4, stored.model));
    RETURN_IF_ERROR(insert.BindText(5, stored.model_fingerprint));
    RETURN_IF_ERROR(insert.BindInt(6, stored.num_layers));
    RETURN_IF_ERROR(insert.BindInt(7, stored.hidden_size));
    RETURN_IF_ERROR(insert.BindText(8, stored.dtype));
    RETURN_IF_ERROR(insert.BindText(9, stored.sha256));
    RETURN_IF_ERROR(insert.BindInt(10, stored.size_bytes));
    RETURN_IF_ERROR(insert.BindBlob(11, norms));
    RETURN_IF_ERROR(insert.BindInt(12, absl::ToUnixMicros(stored.create_time)));
    RETURN_IF_ERROR(insert.BindText(13, VectorSourceName(stored.source)));
    RETURN_IF_ERROR(insert.BindText(14, stored.job_id));
    RETURN_IF_ERROR(insert.BindText(15, stored.description));
    RETURN_IF_ERROR(insert.Run());
  }
  {
    Statement insert(*db_, "inserting the vector file");
    RETURN_IF_ERROR(
        insert.Prepare("INSERT INTO vector_files (vector_id, safetensors) VALUES (?1, ?2)"));
    RETURN_IF_ERROR(insert.BindInt(1, db_->LastInsertRowId()));
    RETURN_IF_ERROR(insert.BindBlob(2, safetensors));
    RETURN_IF_ERROR(insert.Run());
  }
  if (publishes_job) {
    Statement job(*db_, "ending the job SUCCEEDED");
    RETURN_IF_ERROR(job.Prepare(
        "UPDATE jobs SET state = 'SUCCEEDED', vector_version = ?2, end_time_us = ?3 "
        "WHERE id = ?1"));
    RETURN_IF_ERROR(job.BindText(1, stored.job_id));
    RETURN_IF_ERROR(job.BindInt(2, stored.version));
    RETURN_IF_ERROR(job.BindInt(3, absl::ToUnixMicros(absl::Now())));
    RETURN_IF_ERROR(job.Run());
  }
  RETURN_IF_ERROR(txn.Commit());
  return stored;
}

absl::StatusOr<StoredVector> SqliteVectorStore::Get(const std::string& tenant,
                                                    const std::string& name,
                                                    std::optional<int64_t> version) {
  RETURN_IF_ERROR(CheckVectorTenantAndName(tenant, name));
  absl::MutexLock lock(&mu_);
  Statement select(*db_, "reading a vector");
  RETURN_IF_ERROR(select.Prepare(absl::StrCat(
      "SELECT ", kColumns, " FROM vectors v WHERE v.tenant = ?1 AND v.name = ?2",
      version.has_value() ? " AND v.version = ?3" : "", " ORDER BY v.version DESC LIMIT 1")));
  RETURN_IF_ERROR(select.BindText(1, tenant));
  RETURN_IF_ERROR(select.BindText(2, name));
  if (version.has_value()) RETURN_IF_ERROR(select.BindInt(3, *version));
  ASSIGN_OR_RETURN(const bool row, select.Step());
  if (!row) return VectorNotFound(name, version);
  return ReadVector(select, tenant);
}

absl::StatusOr<std::string> SqliteVectorStore::ReadBytes(const std::string& tenant,
                                                         const std::string& name, int64_t version) {
  RETURN_IF_ERROR(CheckVectorTenantAndName(tenant, name));
  std::string bytes;
  std::string sha256;
  {
    absl::MutexLock lock(&mu_);
    Statement select(*db_, "reading a vector file");
    RETURN_IF_ERROR(
        select.Prepare("SELECT f.safetensors, v.sha256 FROM vectors v "
                       "JOIN vector_files f ON f.vector_id = v.id "
                       "WHERE v.tenant = ?1 AND v.name = ?2 AND v.version = ?3"));
    RETURN_IF_ERROR(select.BindText(1, tenant));
    RETURN_IF_ERROR(select.BindText(2, name));
    RETURN_IF_ERROR(select.BindInt(3, version));
    ASSIGN_OR_RETURN(const bool row, select.Step());
    if (!row) return VectorNotFound(name, version);
    bytes = select.Blob(0);
    sha256 = select.Text(1);
  }
  // Hashing outside the lock: it is the slow part and needs no database.
  RETURN_IF_ERROR(CheckStoredBytes(name, version, bytes, sha256));
  return bytes;
}

absl::StatusOr<VectorPage> SqliteVectorStore::List(const VectorListQuery& query) {
  RETURN_IF_ERROR(CheckVectorListQuery(query));
  // The SQL text only varies by which fixed fragments are present; every value is a
  // bound parameter. Names compare bytewise (SQLite's BINARY collation).
  std::string sql = absl::StrCat("SELECT ", kColumns, " FROM vectors v WHERE v.tenant = ?1");
  if (!query.model.empty()) absl::StrAppend(&sql, " AND v.model = ?2");
  if (!query.name.empty()) absl::StrAppend(&sql, " AND v.name = ?3");
  if (!query.after_name.empty()) {
    // "Strictly after (after_name, after_version)" in (name ASC, version DESC) order;
    // the first conjunct lets the index seek.
    absl::StrAppend(&sql, " AND v.name >= ?4 AND (v.name > ?4 OR v.version < ?5)");
  }
  if (!query.all_versions) {
    absl::StrAppend(&sql,
                    " AND v.version = (SELECT MAX(w.version) FROM vectors w"
                    " WHERE w.tenant = v.tenant AND w.name = v.name",
                    query.model.empty() ? "" : " AND w.model = ?2", ")");
  }
  absl::StrAppend(&sql, " ORDER BY v.name ASC, v.version DESC LIMIT ?6");

  absl::MutexLock lock(&mu_);
  Statement select(*db_, "listing vectors");
  RETURN_IF_ERROR(select.Prepare(sql));
  RETURN_IF_ERROR(select.BindText(1, query.tenant));
  if (!query.model.empty()) RETURN_IF_ERROR(select.BindText(2, query.model));
  if (!query.name.empty()) RETURN_IF_ERROR(select.BindText(3, query.name));
  if (!query.after_name.empty()) {
    RETURN_IF_ERROR(select.BindText(4, query.after_name));
    RETURN_IF_ERROR(select.BindInt(5, query.after_version));
  }
  // One row past the page tells whether more follow.
  const int64_t limit = std::min(query.limit, std::numeric_limits<int64_t>::max() - 1);
  RETURN_IF_ERROR(select.BindInt(6, limit + 1));
  VectorPage page;
  while (true) {
    ASSIGN_OR_RETURN(const bool row, select.Step());
    if (!row) break;
    if (static_cast<int64_t>(page.vectors.size()) == limit) {
      page.more = true;
      break;
    }
    ASSIGN_OR_RETURN(StoredVector vector, ReadVector(select, query.tenant));
    page.vectors.push_back(std::move(vector));
  }
  return page;
}

absl::StatusOr<std::vector<StoredVector>> SqliteVectorStore::Delete(
    const std::string& tenant, const std::string& name, std::optional<int64_t> version) {
  RETURN_IF_ERROR(CheckVectorTenantAndName(tenant, name));
  const absl::string_view match = version.has_value() ? "tenant = ?1 AND name = ?2 AND version = ?3"
                                                      : "tenant = ?1 AND name = ?2";
  auto bind = [&](Statement& stmt) -> absl::Status {
    RETURN_IF_ERROR(stmt.BindText(1, tenant));
    RETURN_IF_ERROR(stmt.BindText(2, name));
    if (version.has_value()) RETURN_IF_ERROR(stmt.BindInt(3, *version));
    return absl::OkStatus();
  };

  absl::MutexLock lock(&mu_);
  Transaction txn(*db_);
  RETURN_IF_ERROR(txn.BeginImmediate());
  std::vector<StoredVector> deleted;
  {
    Statement select(*db_, "reading vectors to delete");
    RETURN_IF_ERROR(select.Prepare(absl::StrCat("SELECT ", kColumns, " FROM vectors v WHERE ",
                                                match, " ORDER BY v.version ASC")));
    RETURN_IF_ERROR(bind(select));
    while (true) {
      ASSIGN_OR_RETURN(const bool row, select.Step());
      if (!row) break;
      ASSIGN_OR_RETURN(StoredVector vector, ReadVector(select, tenant));
      deleted.push_back(std::move(vector));
    }
  }
  if (deleted.empty()) return VectorNotFound(name, version);
  {
    Statement files(*db_, "deleting vector files");
    RETURN_IF_ERROR(files.Prepare(absl::StrCat(
        "DELETE FROM vector_files WHERE vector_id IN (SELECT id FROM vectors WHERE ", match, ")")));
    RETURN_IF_ERROR(bind(files));
    RETURN_IF_ERROR(files.Run());
  }
  {
    // vector_names keeps its row: the counter must outlive the versions.
    Statement rows(*db_, "deleting vectors");
    RETURN_IF_ERROR(rows.Prepare(absl::StrCat("DELETE FROM vectors WHERE ", match)));
    RETURN_IF_ERROR(bind(rows));
    RETURN_IF_ERROR(rows.Run());
  }
  RETURN_IF_ERROR(txn.Commit());
  return deleted;
}

absl::StatusOr<int64_t> SqliteVectorStore::CountVersions(const std::string& tenant) {
  if (tenant.empty()) return absl::InvalidArgumentError("vector store: empty tenant");
  absl::MutexLock lock(&mu_);
  Statement count(*db_, "counting stored versions");
  RETURN_IF_ERROR(count.Prepare("SELECT COUNT(*) FROM vectors WHERE tenant = ?1"));
  RETURN_IF_ERROR(count.BindText(1, tenant));
  RETURN_IF_ERROR(count.Step().status());
  return count.Int(0);
}

}  // namespace steerd
