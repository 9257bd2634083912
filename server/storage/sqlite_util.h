// The SQLite plumbing the storage implementations share, so that every store keeping
// tables in the data directory's database file opens, configures and migrates its
// connection the same way: Database opens (creating parent directories), sets WAL
// journaling with synchronous=FULL (a commit is on disk when COMMIT returns), foreign
// keys and a busy timeout, and brings one component's tables to the current version
// through its migrations, recorded as a row of the shared schema_version table (one
// row per component, so several stores can live in one file and evolve separately).
// Statement and Transaction are RAII wrappers, and every SQLite error becomes a status
// (UNAVAILABLE for transient conditions, INTERNAL otherwise) that names the store.
// Thread-safety: none. A Database is one connection, opened without SQLite's own mutex;
// its owner serializes every use (the stores hold a mutex around it).
#ifndef STEERD_SERVER_STORAGE_SQLITE_UTIL_H_
#define STEERD_SERVER_STORAGE_SQLITE_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

struct sqlite3;
struct sqlite3_stmt;

namespace steerd {
namespace sqlite {

class Database {
 public:
  struct Options {
    // The database file; created (with missing parent directories) when absent.
    std::string path;
    // How long a statement waits for a lock another connection holds.
    absl::Duration busy_timeout = absl::Seconds(5);
    // Prefixes every error message, e.g. "vector store".
    std::string label;
    // The component's row in schema_version, e.g. "vectors".
    std::string component;
    // migrations[v - 1] takes the component's tables from version v - 1 to v; the
    // current version is migrations.size(). Each is a script of statements, run in the
    // same transaction as the version update. The strings must outlive Open().
    absl::Span<const char* const> migrations;
  };

  // Opens and configures the connection and migrates the component's tables.
  // INVALID_ARGUMENT for an empty path; FAILED_PRECONDITION when the component's
  // schema is newer than `migrations` knows or the file system cannot do WAL;
  // DATA_LOSS when the file is not a database or is damaged (SQLite's quick_check runs
  // on every open); UNAVAILABLE when it cannot be opened. Errors after opening name
  // the path.
  static absl::StatusOr<std::unique_ptr<Database>> Open(const Options& options);
  ~Database();

  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  sqlite3* handle() const { return db_; }
  const std::string& label() const { return label_; }

  // The status for SQLite result `code` while doing `what` ("reading a job"):
  // "<label>: <what>: <SQLite's message> (sqlite code N)".
  absl::Status Error(int code, absl::string_view what) const;
  // INTERNAL "<label>: corrupt row: <what>", for stored values this build cannot read.
  absl::Status CorruptRow(absl::string_view what) const;

  // Runs `sql` (any number of statements, no parameters, results ignored).
  absl::Status Exec(const char* sql, absl::string_view what);

  // The rowid of the last row inserted on this connection.
  int64_t LastInsertRowId() const;
  // Rows the last INSERT, UPDATE or DELETE on this connection changed.
  int64_t Changes() const;

 private:
  Database(sqlite3* db, std::string label) : db_(db), label_(std::move(label)) {}

  absl::Status Configure(absl::Duration busy_timeout);
  // DATA_LOSS when SQLite's quick_check finds the file damaged.
  absl::Status CheckIntegrity();
  absl::Status Migrate(absl::string_view component, absl::Span<const char* const> migrations);

  sqlite3* const db_;
  const std::string label_;
};

// A prepared statement; finalized on destruction.
class Statement {
 public:
  // `what` says what the statement does, for error messages.
  Statement(Database& db, absl::string_view what) : db_(db), what_(what) {}
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  absl::Status Prepare(absl::string_view sql);

  // Bind* take 1-based parameter indexes, as SQLite does. The bound bytes must outlive
  // the statement's steps (SQLITE_STATIC avoids copying a whole safetensors file).
  absl::Status BindInt(int index, int64_t value);
  absl::Status BindText(int index, absl::string_view value);
  absl::Status BindBlob(int index, absl::string_view value);
  absl::Status BindNull(int index);

  // Advances to the next row: true when there is one, false when done.
  absl::StatusOr<bool> Step();
  // Runs a statement that returns no rows (or completes one whose rows were read).
  absl::Status Run();
  // Makes the statement runnable again with new bindings (the old ones are cleared),
  // so a bulk insert prepares once.
  absl::Status Reset();

  bool IsNull(int column) const;
  int64_t Int(int column) const;
  std::string Text(int column) const;
  std::string Blob(int column) const;

 private:
  absl::Status Check(int rc);

  Database& db_;
  const std::string what_;
  sqlite3_stmt* stmt_ = nullptr;
};

// A transaction that rolls back unless committed.
class Transaction {
 public:
  explicit Transaction(Database& db) : db_(db) {}
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  // IMMEDIATE takes the write lock at once, so a read-then-write transaction cannot
  // fail half-way with SQLITE_BUSY when another process writes the same file.
  absl::Status BeginImmediate();
  absl::Status Commit();

 private:
  Database& db_;
  bool open_ = false;
};

}  // namespace sqlite
}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_SQLITE_UTIL_H_
