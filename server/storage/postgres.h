// The PostgreSQL plumbing the PostgreSQL stores share, over libpq: a connection URL's
// check (before anything connects), one connection with parameterised statements and
// transactions, and the Database every store of a process shares: a small fixed pool
// of connections, opened lazily and replaced when one breaks, and the schema brought
// to this build's version at open under an advisory lock, so replicas starting
// together on an empty database migrate it exactly once. Every error becomes a status
// that names the store: UNAVAILABLE when the server cannot be reached or went away
// (a caller may retry; the pool reconnects by itself when it returns), ALREADY_EXISTS
// for a unique violation, FAILED_PRECONDITION for a schema newer than this build,
// INTERNAL otherwise. Connections carry a connect timeout, TCP keepalives and a
// statement timeout, so no call waits on a dead server for long.
// Thread-safety: Database is safe from any number of threads (one connection per
// thread at a time, as libpq requires). A Connection is used by one thread at a time.
#ifndef STEERD_SERVER_STORAGE_POSTGRES_H_
#define STEERD_SERVER_STORAGE_POSTGRES_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

struct pg_conn;
struct pg_result;

namespace steerd {
namespace postgres {

// Whether `url` names a PostgreSQL store: it starts with postgresql:// or postgres://.
bool IsPostgresUrl(absl::string_view url);
// INVALID_ARGUMENT naming the problem when `url` is not a postgresql:// URL libpq can
// parse (an unknown parameter, a bad port, ...).
absl::Status CheckUrl(const std::string& url);
// `url` with its password replaced by "***", for logs and error messages.
std::string RedactUrl(const std::string& url);

// Values for a statement's $1, $2, ...: text, integers, booleans, NULL, and bytes sent
// in binary (bytea) without escaping. Bytes() keeps a view: the bytes must outlive the
// statement's execution.
class Params {
 public:
  Params& Text(absl::string_view value);
  Params& Int(int64_t value);
  Params& Bool(bool value);
  Params& Null();
  Params& OptionalText(const std::optional<std::string>& value);
  Params& OptionalInt(const std::optional<int64_t>& value);
  Params& Bytes(absl::string_view value);

  int size() const { return static_cast<int>(values_.size()); }
  const char* const* values() const { return values_.data(); }
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }

 private:
  Params& Add(const char* data, int length, int format);

  std::deque<std::string> owned_;  // Stable addresses for the values made here.
  std::vector<const char*> values_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
};

// A statement's rows. Text() and Int() read text-format results; Bytes() reads a
// column that was asked for in binary format (Connection::ExecBinary).
class Result {
 public:
  explicit Result(pg_result* result) : result_(result) {}
  ~Result();
  Result(Result&& other) noexcept : result_(other.result_) { other.result_ = nullptr; }
  Result& operator=(Result&& other) noexcept;
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;

  int rows() const;
  int columns() const;
  // Rows an INSERT, UPDATE or DELETE changed.
  int64_t affected() const;
  bool IsNull(int row, int column) const;
  std::string Text(int row, int column) const;
  int64_t Int(int row, int column) const;  // 0 for NULL or text that is no integer.
  bool Bool(int row, int column) const;
  std::optional<std::string> OptionalText(int row, int column) const;
  std::optional<int64_t> OptionalInt(int row, int column) const;
  std::string Bytes(int row, int column) const;  // A binary-format column's bytes.

 private:
  pg_result* result_;
};

// One libpq connection. Its owner serializes every use.
class Connection {
 public:
  // INVALID_ARGUMENT for a bad URL; UNAVAILABLE when the server cannot be reached or
  // refuses the connection (the message says why, never the password). The server sees
  // `application_name`; errors start with `label` ("store", "change feed").
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const std::string& url,
                                                          absl::Duration connect_timeout,
                                                          absl::Duration statement_timeout,
                                                          const std::string& application_name,
                                                          std::string label);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs one statement; `what` says what it does, for error messages ("reading a job").
  absl::StatusOr<Result> Exec(absl::string_view what, const std::string& sql,
                              const Params& params = Params());
  // The same with every result column in binary format (for bytea columns).
  absl::StatusOr<Result> ExecBinary(absl::string_view what, const std::string& sql,
                                    const Params& params = Params());
  // Runs a script of statements without parameters.
  absl::Status ExecScript(absl::string_view what, const std::string& sql);

  // Whether the connection is gone (the server closed it, or the network failed); a
  // pool drops such a connection instead of reusing it.
  bool broken() const;
  const std::string& label() const { return label_; }
  pg_conn* handle() const { return conn_; }

 private:
  Connection(pg_conn* conn, std::string label) : conn_(conn), label_(std::move(label)) {}
  absl::StatusOr<Result> Run(absl::string_view what, const std::string& sql, const Params& params,
                             int result_format);

  pg_conn* const conn_;
  const std::string label_;
};

// A transaction on `connection` that rolls back unless committed.
class Transaction {
 public:
  explicit Transaction(Connection& connection) : connection_(connection) {}
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  absl::Status Begin();
  absl::Status Commit();

 private:
  Connection& connection_;
  bool open_ = false;
};

// The shared store: a connection pool over one database, with its schema migrated.
class Database {
 public:
  struct Options {
    std::string url;  // postgresql://... Required.
    // Connections kept at most; each thread holds one for the length of a call.
    int pool_size = 4;
    // How long opening a connection may take before UNAVAILABLE (libpq rounds up to
    // whole seconds, at least 2).
    absl::Duration connect_timeout = absl::Seconds(5);
    // How long a call waits for a free connection before UNAVAILABLE.
    absl::Duration acquire_timeout = absl::Seconds(10);
    // The server cancels a statement running longer (statement_timeout).
    absl::Duration statement_timeout = absl::Seconds(30);
    // Migrate the schema to this build's version when it is older. Off: refuse an
    // older schema too (FAILED_PRECONDITION asking to run `steerd migrate`).
    bool migrate = true;
    // Recorded as the migrations' author and as the connections' application_name.
    std::string client_name = "steerd";
  };

  // Connects once, checks (and, with options.migrate, migrates) the schema.
  // INVALID_ARGUMENT for a bad URL, UNAVAILABLE when the server cannot be reached,
  // FAILED_PRECONDITION for a schema newer than this build (both versions named).
  static absl::StatusOr<std::unique_ptr<Database>> Open(const Options& options);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Runs `body` with a pooled connection. A connection that broke during `body` is
  // closed and replaced by a new one on a later call.
  absl::Status WithConnection(absl::FunctionRef<absl::Status(Connection&)> body);

  // The schema version this build writes; the migrations it knows.
  static int64_t SchemaVersion();
  // What Open() found and did: the version before, and whether this process migrated.
  int64_t found_schema_version() const { return found_schema_version_; }
  bool migrated() const { return found_schema_version_ < SchemaVersion(); }
  const Options& options() const { return options_; }
  // Opens a connection outside the pool (the change feed's LISTEN connection).
  absl::StatusOr<std::unique_ptr<Connection>> OpenConnection(const std::string& label) const;

 private:
  explicit Database(Options options) : options_(std::move(options)) {}
  absl::StatusOr<std::unique_ptr<Connection>> Acquire();
  void Release(std::unique_ptr<Connection> connection);

  const Options options_;
  int64_t found_schema_version_ = 0;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Connection>> idle_ ABSL_GUARDED_BY(mu_);
  int open_connections_ ABSL_GUARDED_BY(mu_) = 0;  // Idle and lent.
};

// Brings the schema at `url` to this build's version (what `steerd migrate` runs).
// Returns the version found before; FAILED_PRECONDITION for a newer one.
absl::StatusOr<int64_t> Migrate(const std::string& url, const std::string& client_name);

}  // namespace postgres
}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_POSTGRES_H_
