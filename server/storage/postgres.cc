#include "server/storage/postgres.h"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/storage/postgres_schema.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace postgres {
namespace {

// The advisory lock migrations hold (any constant other programs are unlikely to use:
// "steerd" in ASCII, then 1).
constexpr int64_t kMigrationLock = 0x7374656572640001;

// libpq's message on one line: its lines (a connection failure comes with a hint on a
// second, tab-indented one) joined by spaces, so every error prints as one line.
std::string Trimmed(const char* message) {
  std::string line;
  for (absl::string_view part :
       absl::StrSplit(message == nullptr ? "" : message, '\n', absl::SkipWhitespace())) {
    absl::StrAppend(&line, line.empty() ? "" : " ", absl::StripAsciiWhitespace(part));
  }
  return line;
}

// The SQLSTATE classes that mean "the server is not there (now)": connection
// exceptions, shutdown and start-up, too many connections, and a statement the server
// cancelled after statement_timeout.
bool IsUnavailableState(absl::string_view state) {
  return absl::StartsWith(state, "08") || state == "57P01" || state == "57P02" ||
         state == "57P03" || absl::StartsWith(state, "53") || state == "57014";
}

absl::Status StatusFromResult(const pg_conn* conn, const pg_result* result,
                              const std::string& label, absl::string_view what) {
  if (result == nullptr || PQstatus(conn) == CONNECTION_BAD) {
    return absl::UnavailableError(absl::StrCat(label, ": ", what, ": PostgreSQL unavailable: ",
                                               Trimmed(PQerrorMessage(conn))));
  }
  const char* state_field = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  const std::string state = state_field == nullptr ? "" : state_field;
  const std::string message = absl::StrCat(label, ": ", what, ": ",
                                           Trimmed(PQresultErrorMessage(result)), " (SQLSTATE ",
                                           state, ")");
  if (IsUnavailableState(state)) return absl::UnavailableError(message);
  if (state == "23505") return absl::AlreadyExistsError(message);
  if (state == "40001" || state == "40P01") return absl::AbortedError(message);
  // Text PostgreSQL cannot store (a NUL character, or bytes invalid in UTF-8).
  if (state == "22021" || state == "22P05") return absl::InvalidArgumentError(message);
  return absl::InternalError(message);
}

}  // namespace

bool IsPostgresUrl(absl::string_view url) {
  return absl::StartsWith(url, "postgresql://") || absl::StartsWith(url, "postgres://");
}

absl::Status CheckUrl(const std::string& url) {
  if (!IsPostgresUrl(url)) {
    return absl::InvalidArgumentError(
        absl::StrCat("store URL \"", RedactUrl(url),
                     "\" is not a PostgreSQL URL (postgresql://user:password@host:port/database)"));
  }
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(url.c_str(), &error);
  if (options == nullptr) {
    const std::string reason = error == nullptr ? "out of memory" : Trimmed(error);
    PQfreemem(error);
    return absl::InvalidArgumentError(
        absl::StrCat("store URL \"", RedactUrl(url), "\" is malformed: ", reason));
  }
  // libpq reads the port only when it connects; a bad one is a configuration error,
  // not an outage, so it is refused here.
  std::optional<std::string> bad_port;
  for (const PQconninfoOption* option = options; option->keyword != nullptr; ++option) {
    if (std::string_view(option->keyword) == "port" && option->val != nullptr) {
      for (const absl::string_view port : absl::StrSplit(option->val, ',')) {
        if (port.empty() || port.size() > 5 ||
            !std::all_of(port.begin(), port.end(), absl::ascii_isdigit)) {
          bad_port = std::string(port);
        }
      }
    }
  }
  PQconninfoFree(options);
  if (bad_port.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("store URL \"", RedactUrl(url),
                                                   "\" has an invalid port \"", *bad_port, "\""));
  }
  return absl::OkStatus();
}

std::string RedactUrl(const std::string& url) {
  std::string redacted = url;
  // postgresql://user:password@host...: the password runs from the first ':' of the
  // user part to the last '@' before the path or query.
  const size_t scheme = redacted.find("://");
  if (scheme != std::string::npos) {
    const size_t authority = scheme + 3;
    const size_t end = std::min(redacted.find_first_of("/?", authority), redacted.size());
    const size_t at = redacted.rfind('@', end);
    if (at != std::string::npos && at >= authority) {
      const size_t colon = redacted.find(':', authority);
      if (colon != std::string::npos && colon < at) {
        redacted.replace(colon + 1, at - colon - 1, "***");
      }
    }
  }
  // A password may also come as a query parameter.
  const size_t parameter = redacted.find("password=");
  if (parameter != std::string::npos) {
    const size_t value = parameter + 9;
    const size_t value_end = redacted.find('&', value);
    redacted.replace(value, value_end == std::string::npos ? std::string::npos : value_end - value,
                     "***");
  }
  return redacted;
}

// ---- Params

Params& Params::Add(const char* data, int length, int format) {
  values_.push_back(data);
  lengths_.push_back(length);
  formats_.push_back(format);
  return *this;
}

Params& Params::Text(absl::string_view value) {
  owned_.emplace_back(value);  // NUL-terminated copy: libpq reads text up to NUL.
  return Add(owned_.back().c_str(), 0, 0);
}

Params& Params::Int(int64_t value) {
  owned_.push_back(absl::StrCat(value));
  return Add(owned_.back().c_str(), 0, 0);
}

Params& Params::Bool(bool value) { return Add(value ? "true" : "false", 0, 0); }

Params& Params::Null() { return Add(nullptr, 0, 0); }

Params& Params::OptionalText(const std::optional<std::string>& value) {
  return value.has_value() ? Text(*value) : Null();
}

Params& Params::OptionalInt(const std::optional<int64_t>& value) {
  return value.has_value() ? Int(*value) : Null();
}

Params& Params::Bytes(absl::string_view value) {
  // A non-null pointer even for no bytes: NULL would mean SQL NULL.
  return Add(value.empty() ? "" : value.data(), static_cast<int>(value.size()), 1);
}

// ---- Result

Result::~Result() {
  if (result_ != nullptr) PQclear(result_);
}

Result& Result::operator=(Result&& other) noexcept {
  if (this != &other) {
    if (result_ != nullptr) PQclear(result_);
    result_ = other.result_;
    other.result_ = nullptr;
  }
  return *this;
}

int Result::rows() const { return PQntuples(result_); }

int Result::columns() const { return PQnfields(result_); }

int64_t Result::affected() const { return std::strtoll(PQcmdTuples(result_), nullptr, 10); }

bool Result::IsNull(int row, int column) const { return PQgetisnull(result_, row, column) != 0; }

std::string Result::Text(int row, int column) const {
  return std::string(PQgetvalue(result_, row, column),
                     static_cast<size_t>(PQgetlength(result_, row, column)));
}

int64_t Result::Int(int row, int column) const {
  return std::strtoll(PQgetvalue(result_, row, column), nullptr, 10);
}

bool Result::Bool(int row, int column) const { return PQgetvalue(result_, row, column)[0] == 't'; }

std::optional<std::string> Result::OptionalText(int row, int column) const {
  if (IsNull(row, column)) return std::nullopt;
  return Text(row, column);
}

std::optional<int64_t> Result::OptionalInt(int row, int column) const {
  if (IsNull(row, column)) return std::nullopt;
  return Int(row, column);
}

std::string Result::Bytes(int row, int column) const { return Text(row, column); }

// ---- Connection

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const std::string& url,
                                                             absl::Duration connect_timeout,
                                                             absl::Duration statement_timeout,
                                                             const std::string& application_name,
                                                             std::string label) {
  RETURN_IF_ERROR(CheckUrl(url));
  // Defaults first: the URL, expanded last, overrides any of them it sets.
  const std::string timeout =
      absl::StrCat(std::max<int64_t>(2, absl::ToInt64Seconds(absl::Ceil(connect_timeout,
                                                                        absl::Seconds(1)))));
  const std::string options =
      absl::StrCat("-c statement_timeout=", absl::ToInt64Milliseconds(statement_timeout));
  const char* keywords[] = {"connect_timeout",   "keepalives",          "keepalives_idle",
                            "keepalives_interval", "keepalives_count", "application_name",
                            "options",           "dbname",              nullptr};
  const char* values[] = {timeout.c_str(),          "1", "10", "5", "3",
                          application_name.c_str(), options.c_str(), url.c_str(), nullptr};
  pg_conn* conn = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
  if (conn == nullptr) return absl::ResourceExhaustedError("store: out of memory");
  if (PQstatus(conn) != CONNECTION_OK) {
    const std::string message = Trimmed(PQerrorMessage(conn));
    PQfinish(conn);
    return absl::UnavailableError(absl::StrCat("store: cannot connect to PostgreSQL at ",
                                               RedactUrl(url), ": ", message));
  }
  // Notices ("relation ... already exists, skipping") are for interactive sessions;
  // libpq's default prints them to stderr.
  PQsetNoticeProcessor(conn, [](void*, const char*) {}, nullptr);
  return absl::WrapUnique(new Connection(conn, std::move(label)));
}

Connection::~Connection() { PQfinish(conn_); }

absl::StatusOr<Result> Connection::Run(absl::string_view what, const std::string& sql,
                                       const Params& params, int result_format) {
  pg_result* raw = PQexecParams(conn_, sql.c_str(), params.size(), /*paramTypes=*/nullptr,
                                params.values(), params.lengths(), params.formats(), result_format);
  // A null result (out of memory, or the connection is gone) reads as an error too.
  const ExecStatusType status = raw == nullptr ? PGRES_FATAL_ERROR : PQresultStatus(raw);
  Result result(raw);
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    return StatusFromResult(conn_, raw, label_, what);
  }
  return result;
}

absl::StatusOr<Result> Connection::Exec(absl::string_view what, const std::string& sql,
                                        const Params& params) {
  return Run(what, sql, params, /*result_format=*/0);
}

absl::StatusOr<Result> Connection::ExecBinary(absl::string_view what, const std::string& sql,
                                              const Params& params) {
  return Run(what, sql, params, /*result_format=*/1);
}

absl::Status Connection::ExecScript(absl::string_view what, const std::string& sql) {
  pg_result* raw = PQexec(conn_, sql.c_str());
  const ExecStatusType status = raw == nullptr ? PGRES_FATAL_ERROR : PQresultStatus(raw);
  const Result result(raw);
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    return StatusFromResult(conn_, raw, label_, what);
  }
  return absl::OkStatus();
}

bool Connection::broken() const {
  if (PQstatus(conn_) == CONNECTION_BAD) return true;
  // An idle connection should have nothing to read. Something readable is the server
  // closing it (a restart, pg_terminate_backend, an idle timeout): consume it so
  // libpq sees the state, instead of failing the next statement on a dead socket.
  pollfd fd = {PQsocket(conn_), POLLIN, 0};
  if (fd.fd < 0) return true;
  if (poll(&fd, 1, 0) > 0) {
    if (PQconsumeInput(conn_) == 0) return true;
    return PQstatus(conn_) == CONNECTION_BAD;
  }
  return false;
}

// ---- Transaction

Transaction::~Transaction() {
  if (open_ && !connection_.broken()) {
    // Rollback errors are moot: a failed connection rolls back by itself.
    connection_.ExecScript("rolling back", "ROLLBACK").IgnoreError();
  }
}

absl::Status Transaction::Begin() {
  RETURN_IF_ERROR(connection_.ExecScript("beginning a transaction", "BEGIN"));
  open_ = true;
  return absl::OkStatus();
}

absl::Status Transaction::Commit() {
  open_ = false;
  return connection_.ExecScript("committing", "COMMIT");
}

// ---- Database

namespace {

// Takes the schema to the current version under the migration lock; returns the
// version found.
absl::StatusOr<int64_t> MigrateOn(Connection& connection, bool migrate,
                                  const std::string& client_name) {
  const int64_t known = static_cast<int64_t>(SchemaMigrations().size());
  Transaction txn(connection);
  RETURN_IF_ERROR(txn.Begin());
  // Replicas starting together queue here; each then sees what the first one did.
  RETURN_IF_ERROR(connection
                      .Exec("taking the migration lock", "SELECT pg_advisory_xact_lock($1)",
                            Params().Int(kMigrationLock))
                      .status());
  RETURN_IF_ERROR(connection.ExecScript(
      "creating the schema version table",
      "CREATE TABLE IF NOT EXISTS steerd_schema_migrations ("
      "  version bigint PRIMARY KEY,"
      "  applied_at timestamptz NOT NULL DEFAULT now(),"
      "  applied_by text NOT NULL)"));
  ASSIGN_OR_RETURN(const Result current,
                   connection.Exec("reading the schema version",
                                   "SELECT COALESCE(max(version), 0) "
                                   "FROM steerd_schema_migrations"));
  const int64_t found = current.Int(0, 0);
  if (found > known) {
    return absl::FailedPreconditionError(absl::StrCat(
        connection.label(), ": the database schema is version ", found,
        ", newer than this steerd knows (", known,
        "); run a steerd at least as new as the one that migrated it"));
  }
  if (found < known && !migrate) {
    return absl::FailedPreconditionError(
        absl::StrCat(connection.label(), ": the database schema is version ", found,
                     " and this steerd needs ", known, "; run `steerd migrate --store URL`"));
  }
  for (int64_t version = found + 1; version <= known; ++version) {
    RETURN_IF_ERROR(connection.ExecScript(absl::StrCat("migrating to schema version ", version),
                                          SchemaMigrations()[version - 1]));
    RETURN_IF_ERROR(connection
                        .Exec("recording the schema version",
                              "INSERT INTO steerd_schema_migrations (version, applied_by) "
                              "VALUES ($1, $2)",
                              Params().Int(version).Text(client_name))
                        .status());
  }
  RETURN_IF_ERROR(txn.Commit());
  return found;
}

}  // namespace

int64_t Database::SchemaVersion() { return static_cast<int64_t>(SchemaMigrations().size()); }

absl::StatusOr<std::unique_ptr<Database>> Database::Open(const Options& options) {
  if (options.pool_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("store: pool size ", options.pool_size, " must be at least 1"));
  }
  RETURN_IF_ERROR(CheckUrl(options.url));
  auto database = absl::WrapUnique(new Database(options));
  ASSIGN_OR_RETURN(std::unique_ptr<Connection> connection, database->OpenConnection("store"));
  ASSIGN_OR_RETURN(database->found_schema_version_,
                   MigrateOn(*connection, options.migrate, options.client_name));
  absl::MutexLock lock(&database->mu_);
  database->idle_.push_back(std::move(connection));
  database->open_connections_ = 1;
  return database;
}

Database::~Database() = default;

absl::StatusOr<std::unique_ptr<Connection>> Database::OpenConnection(
    const std::string& label) const {
  return Connection::Open(options_.url, options_.connect_timeout, options_.statement_timeout,
                          options_.client_name, label);
}

absl::StatusOr<std::unique_ptr<Connection>> Database::Acquire() {
  const absl::Time deadline = absl::Now() + options_.acquire_timeout;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !idle_.empty() || open_connections_ < options_.pool_size;
      };
      if (!mu_.AwaitWithDeadline(absl::Condition(&available), deadline)) {
        return absl::UnavailableError(absl::StrCat(
            "store: no PostgreSQL connection free within ",
            absl::FormatDuration(options_.acquire_timeout), " (pool of ", options_.pool_size,
            ")"));
      }
      if (!idle_.empty()) {
        std::unique_ptr<Connection> connection = std::move(idle_.back());
        idle_.pop_back();
        if (!connection->broken()) return connection;
        --open_connections_;  // Closed here; the loop opens a fresh one.
        connection.reset();
        continue;
      }
      ++open_connections_;
    }
    absl::StatusOr<std::unique_ptr<Connection>> opened = OpenConnection("store");
    if (!opened.ok()) {
      absl::MutexLock lock(&mu_);
      --open_connections_;
    }
    return opened;
  }
}

void Database::Release(std::unique_ptr<Connection> connection) {
  absl::MutexLock lock(&mu_);
  if (connection->broken()) {
    --open_connections_;
    return;  // Closed as it goes out of scope.
  }
  idle_.push_back(std::move(connection));
}

absl::Status Database::WithConnection(absl::FunctionRef<absl::Status(Connection&)> body) {
  ASSIGN_OR_RETURN(std::unique_ptr<Connection> connection, Acquire());
  absl::Status status = body(*connection);
  Release(std::move(connection));
  return status;
}

absl::StatusOr<int64_t> Migrate(const std::string& url, const std::string& client_name) {
  Database::Options options;
  options.url = url;
  options.client_name = client_name;
  ASSIGN_OR_RETURN(std::unique_ptr<Database> database, Database::Open(options));
  return database->found_schema_version();
}

}  // namespace postgres
}  // namespace steerd
