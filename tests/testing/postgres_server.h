// A real, throwaway PostgreSQL for tests (never a mock): a fresh cluster made with
// initdb in a temporary directory, listening only on a Unix socket there, with fsync
// off (tests only). As root, initdb and the server run as the `postgres` user, since
// PostgreSQL refuses to run as root. Each test takes a new empty database on the shared
// server of its program (CreateDatabase, ~0.2 s) instead of a server of its own
// (~3 s). A server that cannot start fails the test: nothing is skipped.
// Needs Debian's postgresql-15 (scripts/install-deps.sh installs it).
// Thread-safety: one thread (the test's) at a time.
#ifndef STEERD_TESTS_TESTING_POSTGRES_SERVER_H_
#define STEERD_TESTS_TESTING_POSTGRES_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace steerd::testing {

class PostgresServer {
 public:
  // Makes the cluster and starts it (about 3 s).
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start();
  // Stops the server at once and removes its directory.
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // Creates an empty database and returns its URL.
  absl::StatusOr<std::string> CreateDatabase(const std::string& name);
  // The URL of database `name` (the user steerd, the socket directory as host).
  std::string Url(const std::string& name) const;
  // Runs `sql` (statements without results) on database `name`.
  absl::Status Exec(const std::string& name, const std::string& sql);

  // Stops the server (fast shutdown: sessions are terminated) and starts it again on
  // the same directory and socket, for outage tests.
  absl::Status Stop();
  absl::Status Restart();

  const std::string& directory() const { return directory_; }

 private:
  explicit PostgresServer(std::string directory) : directory_(std::move(directory)) {}
  absl::Status PgCtl(const std::string& arguments);

  const std::string directory_;
  bool running_ = false;
};

// The program's shared server, started on first use; fails the calling test when it
// cannot start.
PostgresServer& SharedPostgresServer();

// A database name unique in the program: `prefix` plus a counter, lower-case.
std::string UniqueDatabaseName(const std::string& prefix);

}  // namespace steerd::testing

#endif  // STEERD_TESTS_TESTING_POSTGRES_SERVER_H_
