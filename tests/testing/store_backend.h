// The storage backends the store conformance suite runs every vector and job store test
// on: SQLite (a database file in a fresh temporary directory) and PostgreSQL (a fresh
// database on the program's throwaway server, tests/testing/postgres_server.h). A
// StoreLocation is where one test's data lives; stores opened on it again after Close()
// see the same data, as after a restart of the process.
// Thread-safety: one thread (the test's) at a time.
#ifndef STEERD_TESTS_TESTING_STORE_BACKEND_H_
#define STEERD_TESTS_TESTING_STORE_BACKEND_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/engine/job_store.h"
#include "server/engine/vector_store.h"
#include "server/storage/postgres.h"

namespace steerd::testing {

enum class StoreBackend { kSqlite, kPostgres };

// "Sqlite" or "Postgres", for parameterised test names.
std::string StoreBackendName(StoreBackend backend);

// For INSTANTIATE_TEST_SUITE_P(Backends, Suite, kEveryStoreBackend, StoreBackendTestName):
// the conformance suite's parameters and their names.
inline const auto kEveryStoreBackend =
    ::testing::Values(StoreBackend::kSqlite, StoreBackend::kPostgres);
std::string StoreBackendTestName(const ::testing::TestParamInfo<StoreBackend>& info);

class StoreLocation {
 public:
  // A fresh, empty place for the test named `test_name`.
  static absl::StatusOr<std::unique_ptr<StoreLocation>> Make(StoreBackend backend,
                                                             const std::string& test_name);
  // The same for the running gtest test.
  static absl::StatusOr<std::unique_ptr<StoreLocation>> ForCurrentTest(StoreBackend backend);
  ~StoreLocation();

  // Stores on this location; `clock` may be empty (absl::Now). For PostgreSQL they
  // share one connection pool, kept until Close().
  absl::StatusOr<std::unique_ptr<VectorStore>> OpenVectorStore(std::function<absl::Time()> clock);
  absl::StatusOr<std::unique_ptr<JobStore>> OpenJobStore(std::function<absl::Time()> clock);
  // Drops the connection pool; every store opened here must be gone first.
  void Close();

  // Raw SQL on the location's database through a connection of its own, for tests
  // that look under the store: statements without results, and a query's rows, each
  // row's columns joined by '|' (NULL as "NULL").
  absl::Status Exec(const std::string& sql);
  absl::StatusOr<std::vector<std::string>> Query(const std::string& sql);

  StoreBackend backend() const { return backend_; }
  // The SQLite file (kSqlite) or the PostgreSQL URL (kPostgres).
  const std::string& sqlite_path() const { return sqlite_path_; }
  const std::string& postgres_url() const { return postgres_url_; }

 private:
  explicit StoreLocation(StoreBackend backend) : backend_(backend) {}
  absl::StatusOr<postgres::Database*> Database();

  const StoreBackend backend_;
  std::string directory_;  // kSqlite: removed at destruction.
  std::string sqlite_path_;
  std::string postgres_url_;
  std::unique_ptr<postgres::Database> database_;
};

}  // namespace steerd::testing

#endif  // STEERD_TESTS_TESTING_STORE_BACKEND_H_
