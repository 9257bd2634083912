#include "server/storage/sqlite_util.h"

#include <sqlite3.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace sqlite {
namespace {

// Maps an SQLite result code to a status: transient conditions (locks, a full disk,
// I/O errors) are UNAVAILABLE so callers may retry; corruption and anything else is
// INTERNAL. The message carries SQLite's own text.
absl::Status CodeStatus(sqlite3* db, int code, absl::string_view label, absl::string_view what) {
  const char* detail = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(code);
  const std::string message =
      absl::StrCat(label, ": ", what, ": ", detail, " (sqlite code ", code, ")");
  switch (code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_NOMEM:
    case SQLITE_PROTOCOL:
    case SQLITE_READONLY:
    case SQLITE_NOLFS:
      return absl::UnavailableError(message);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Database>> Database::Open(const Options& options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(options.label, ": the database path is empty"));
  }
  const std::filesystem::path parent = std::filesystem::path(options.path).parent_path();
  if (!parent.empty()) {
    std::error_code error;
    std::filesystem::create_directories(parent, error);
    if (error) {
      return absl::UnavailableError(absl::StrCat(options.label, ": cannot create directory ",
                                                 parent.string(), ": ", error.message()));
    }
  }
  sqlite3* db = nullptr;
  // NOMUTEX: the owner serializes every use, so SQLite's own locking would be waste.
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_EXRESCODE
  flags |= SQLITE_OPEN_EXRESCODE;
#endif
  const int rc = sqlite3_open_v2(options.path.c_str(), &db, flags, /*zVfs=*/nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = CodeStatus(db, rc, options.label, absl::StrCat("opening ", options.path));
    sqlite3_close_v2(db);  // Allocated even on failure (nullptr is harmless).
    return status;
  }
  sqlite3_extended_result_codes(db, 1);
  // From here `database` owns `db` and closes it on every path.
  std::unique_ptr<Database> database(new Database(db, options.label));
  absl::Status status = database->Configure(options.busy_timeout);
  if (status.ok()) status = database->CheckIntegrity();
  if (status.ok()) status = database->Migrate(options.component, options.migrations);
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat(status.message(), " [", options.path, "]"));
  }
  return database;
}

Database::~Database() { sqlite3_close_v2(db_); }

absl::Status Database::Error(int code, absl::string_view what) const {
  return CodeStatus(db_, code, label_, what);
}

absl::Status Database::CorruptRow(absl::string_view what) const {
  return absl::InternalError(absl::StrCat(label_, ": corrupt row: ", what));
}

absl::Status Database::Exec(const char* sql, absl::string_view what) {
  const int rc = sqlite3_exec(db_, sql, /*callback=*/nullptr, /*arg=*/nullptr,
                              /*errmsg=*/nullptr);
  if (rc != SQLITE_OK) return Error(rc, what);
  return absl::OkStatus();
}

int64_t Database::LastInsertRowId() const { return sqlite3_last_insert_rowid(db_); }

int64_t Database::Changes() const { return sqlite3_changes(db_); }

// WAL + synchronous=FULL: a commit is fsynced to the WAL before COMMIT returns, which
// is what makes the stores' writes durable once they return.
absl::Status Database::Configure(absl::Duration busy_timeout) {
  const int64_t timeout_ms = absl::ToInt64Milliseconds(busy_timeout);
  const int rc = sqlite3_busy_timeout(
      db_, static_cast<int>(std::clamp<int64_t>(timeout_ms, 0, std::numeric_limits<int>::max())));
  if (rc != SQLITE_OK) return Error(rc, "setting the busy timeout");
  {
    Statement wal(*this, "enabling WAL");
    RETURN_IF_ERROR(wal.Prepare("PRAGMA journal_mode=WAL"));
    ASSIGN_OR_RETURN(const bool row, wal.Step());
    const std::string mode = row ? wal.Text(0) : std::string();
    if (mode != "wal") {
      // Happens on file systems without shared-memory support (some network mounts).
      return absl::FailedPreconditionError(
          absl::StrCat(label_, ": cannot use WAL journaling (journal_mode is \"", mode,
                       "\"); put the data directory on a local file system"));
    }
  }
  RETURN_IF_ERROR(Exec("PRAGMA synchronous=FULL", "setting synchronous=FULL"));
  RETURN_IF_ERROR(Exec("PRAGMA foreign_keys=ON", "enabling foreign keys"));
  return absl::OkStatus();
}

// A damaged file must stop the server at start, not surface later as INTERNAL on
// every query while health says SERVING. quick_check reads every page once (without
// the index cross-checks of integrity_check): about a second per gigabyte.
absl::Status Database::CheckIntegrity() {
  Statement check(*this, "checking the file's integrity");
  RETURN_IF_ERROR(check.Prepare("PRAGMA quick_check(1)"));
  ASSIGN_OR_RETURN(const bool row, check.Step());
  const std::string result = row ? check.Text(0) : std::string("no result");
  if (result != "ok") {
    return absl::DataLossError(absl::StrCat(
        label_, ": the database file is damaged (quick_check: ", result,
        "); restore it from a backup, or move it away to start empty"));
  }
  return absl::OkStatus();
}

absl::Status Database::Migrate(absl::string_view component,
                               absl::Span<const char* const> migrations) {
  const int64_t current = static_cast<int64_t>(migrations.size());
  // One transaction for the check, the migrations and the version row, so that two
  // processes opening a new file at once cannot both migrate it, and a crash half-way
  // leaves the previous version intact.
  Transaction txn(*this);
  RETURN_IF_ERROR(txn.BeginImmediate());
  RETURN_IF_ERROR(
      Exec("CREATE TABLE IF NOT EXISTS schema_version ("
           "  component TEXT PRIMARY KEY,"
           "  version INTEGER NOT NULL"
           ") WITHOUT ROWID",
           "creating the schema_version table"));
  int64_t version = 0;
  {
    Statement select(*this, "reading the schema version");
    RETURN_IF_ERROR(select.Prepare("SELECT version FROM schema_version WHERE component = ?1"));
    RETURN_IF_ERROR(select.BindText(1, component));
    ASSIGN_OR_RETURN(const bool row, select.Step());
    if (row) version = select.Int(0);
  }
  if (version > current) {
    return absl::FailedPreconditionError(
        absl::StrCat(label_, ": the database has schema version ", version,
                     ", newer than this build understands (", current, "); run a newer steerd"));
  }
  if (version < 0) return CorruptRow(absl::StrCat("schema version ", version));
  if (version == current) return txn.Commit();
  for (int64_t v = version; v < current; ++v) {
    RETURN_IF_ERROR(Exec(migrations[v], absl::StrCat("migrating the schema to version ", v + 1)));
  }
  Statement update(*this, "writing the schema version");
  RETURN_IF_ERROR(
      update.Prepare("INSERT INTO schema_version (component, version) VALUES (?1, ?2) "
                     "ON CONFLICT (component) DO UPDATE SET version = excluded.version"));
  RETURN_IF_ERROR(update.BindText(1, component));
  RETURN_IF_ERROR(update.BindInt(2, current));
  RETURN_IF_ERROR(update.Run());
  return txn.Commit();
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

absl::Status Statement::Prepare(absl::string_view sql) {
  const int rc = sqlite3_prepare_v2(db_.handle(), sql.data(), static_cast<int>(sql.size()), &stmt_,
                                    /*pzTail=*/nullptr);
  if (rc != SQLITE_OK) return db_.Error(rc, what_);
  return absl::OkStatus();
}

absl::Status Statement::BindInt(int index, int64_t value) {
  return Check(sqlite3_bind_int64(stmt_, index, value));
}

absl::Status Statement::BindText(int index, absl::string_view value) {
  // A zero-length text needs a non-null pointer or it is bound as NULL.
  static const char kEmpty = 0;
  return Check(sqlite3_bind_text64(stmt_, index, value.empty() ? &kEmpty : value.data(),
                                   value.size(), SQLITE_STATIC, SQLITE_UTF8));
}

absl::Status Statement::BindBlob(int index, absl::string_view value) {
  static const char kEmpty = 0;
  return Check(sqlite3_bind_blob64(stmt_, index, value.empty() ? &kEmpty : value.data(),
                                   value.size(), SQLITE_STATIC));
}

absl::Status Statement::BindNull(int index) { return Check(sqlite3_bind_null(stmt_, index)); }

absl::StatusOr<bool> Statement::Step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return db_.Error(rc, what_);
}

absl::Status Statement::Run() {
  ASSIGN_OR_RETURN(bool row, Step());
  (void)row;
  return absl::OkStatus();
}

absl::Status Statement::Reset() {
  // sqlite3_reset repeats the last step's error, which Step() already reported.
  sqlite3_reset(stmt_);
  return Check(sqlite3_clear_bindings(stmt_));
}

bool Statement::IsNull(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

int64_t Statement::Int(int column) const { return sqlite3_column_int64(stmt_, column); }

std::string Statement::Text(int column) const {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
  const int size = sqlite3_column_bytes(stmt_, column);
  return text == nullptr ? std::string() : std::string(text, static_cast<size_t>(size));
}

std::string Statement::Blob(int column) const {
  const auto* blob = static_cast<const char*>(sqlite3_column_blob(stmt_, column));
  const int size = sqlite3_column_bytes(stmt_, column);
  return blob == nullptr ? std::string() : std::string(blob, static_cast<size_t>(size));
}

absl::Status Statement::Check(int rc) {
  if (rc != SQLITE_OK) return db_.Error(rc, what_);
  return absl::OkStatus();
}

Transaction::~Transaction() {
  // SQLite may already have rolled back after an I/O error; then there is nothing to
  // do (and ROLLBACK would only fail).
  if (open_ && !sqlite3_get_autocommit(db_.handle())) {
    sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
}

absl::Status Transaction::BeginImmediate() {
  RETURN_IF_ERROR(db_.Exec("BEGIN IMMEDIATE", "beginning a transaction"));
  open_ = true;
  return absl::OkStatus();
}

absl::Status Transaction::Commit() {
  RETURN_IF_ERROR(db_.Exec("COMMIT", "committing"));
  open_ = false;
  return absl::OkStatus();
}

}  // namespace sqlite
}  // namespace steerd
