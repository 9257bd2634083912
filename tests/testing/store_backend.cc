#include "tests/testing/store_backend.h"

#include <unistd.h>

#include <sqlite3.h>

#include <filesystem>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "server/storage/postgres_job_store.h"
#include "server/storage/postgres_vector_store.h"
#include "server/storage/sqlite_job_store.h"
#include "server/storage/sqlite_vector_store.h"
#include "server/util/status_macros.h"
#include "tests/testing/postgres_server.h"

namespace steerd::testing {

std::string StoreBackendName(StoreBackend backend) {
  return backend == StoreBackend::kSqlite ? "Sqlite" : "Postgres";
}

std::string StoreBackendTestName(const ::testing::TestParamInfo<StoreBackend>& info) {
  return StoreBackendName(info.param);
}

absl::StatusOr<std::unique_ptr<StoreLocation>> StoreLocation::ForCurrentTest(
    StoreBackend backend) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return Make(backend, absl::StrCat(info->test_suite_name(), ".", info->name()));
}

absl::StatusOr<std::unique_ptr<StoreLocation>> StoreLocation::Make(StoreBackend backend,
                                                                   const std::string& test_name) {
  auto location = absl::WrapUnique(new StoreLocation(backend));
  if (backend == StoreBackend::kSqlite) {
    std::string safe = test_name;
    for (char& c : safe) {
      if (c == '/') c = '_';
    }
    location->directory_ = (std::filesystem::temp_directory_path() /
                            absl::StrCat("steerd_store_test.", getpid(), ".", safe))
                               .string();
    std::filesystem::remove_all(location->directory_);
    location->sqlite_path_ = location->directory_ + "/db/steerd.db";  // The store creates db/.
  } else {
    ASSIGN_OR_RETURN(location->postgres_url_,
                     SharedPostgresServer().CreateDatabase(UniqueDatabaseName("store")));
  }
  return location;
}

StoreLocation::~StoreLocation() {
  database_.reset();
  if (!directory_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(directory_, ignored);
  }
}

absl::StatusOr<postgres::Database*> StoreLocation::Database() {
  if (database_ == nullptr) {
    postgres::Database::Options options;
    options.url = postgres_url_;
    ASSIGN_OR_RETURN(database_, postgres::Database::Open(options));
  }
  return database_.get();
}

absl::StatusOr<std::unique_ptr<VectorStore>> StoreLocation::OpenVectorStore(
    std::function<absl::Time()> clock) {
  if (backend_ == StoreBackend::kSqlite) {
    SqliteVectorStore::Options options;
    options.path = sqlite_path_;
    options.clock = std::move(clock);
    ASSIGN_OR_RETURN(std::unique_ptr<SqliteVectorStore> store, SqliteVectorStore::Create(options));
    return std::unique_ptr<VectorStore>(std::move(store));
  }
  PostgresVectorStore::Options options;
  ASSIGN_OR_RETURN(options.database, Database());
  options.clock = std::move(clock);
  ASSIGN_OR_RETURN(std::unique_ptr<PostgresVectorStore> store,
                   PostgresVectorStore::Create(options));
  return std::unique_ptr<VectorStore>(std::move(store));
}

absl::StatusOr<std::unique_ptr<JobStore>> StoreLocation::OpenJobStore(
    std::function<absl::Time()> clock) {
  if (backend_ == StoreBackend::kSqlite) {
    SqliteJobStore::Options options;
    options.path = sqlite_path_;
    options.clock = std::move(clock);
    ASSIGN_OR_RETURN(std::unique_ptr<SqliteJobStore> store, SqliteJobStore::Create(options));
    return std::unique_ptr<JobStore>(std::move(store));
  }
  PostgresJobStore::Options options;
  ASSIGN_OR_RETURN(options.database, Database());
  options.clock = std::move(clock);
  ASSIGN_OR_RETURN(std::unique_ptr<PostgresJobStore> store, PostgresJobStore::Create(options));
  return std::unique_ptr<JobStore>(std::move(store));
}

void StoreLocation::Close() { database_.reset(); }

namespace {

absl::StatusOr<std::vector<std::string>> SqliteQuery(const std::string& path,
                                                     const std::string& sql) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
    sqlite3_close(db);
    return absl::InternalError(absl::StrCat("cannot open ", path));
  }
  std::vector<std::string> rows;
  const char* tail = sql.c_str();
  while (*tail != '\0') {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, tail, -1, &stmt, &tail) != SQLITE_OK) {
      const std::string error = sqlite3_errmsg(db);
      sqlite3_close(db);
      return absl::InternalError(absl::StrCat("SQL: ", error));
    }
    if (stmt == nullptr) break;  // Trailing whitespace.
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      std::string row;
      for (int i = 0; i < sqlite3_column_count(stmt); ++i) {
        const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, i));
        absl::StrAppend(&row, i > 0 ? "|" : "", text != nullptr ? text : "NULL");
      }
      rows.push_back(row);
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) {
      const std::string error = sqlite3_errmsg(db);
      sqlite3_close(db);
      return absl::InternalError(absl::StrCat("SQL: ", error));
    }
  }
  sqlite3_close(db);
  return rows;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> StoreLocation::Query(const std::string& sql) {
  if (backend_ == StoreBackend::kSqlite) return SqliteQuery(sqlite_path_, sql);
  ASSIGN_OR_RETURN(std::unique_ptr<postgres::Connection> connection,
                   postgres::Connection::Open(postgres_url_, absl::Seconds(5), absl::Seconds(30),
                                              "steerd-test", "test SQL"));
  ASSIGN_OR_RETURN(const postgres::Result result, connection->Exec("running test SQL", sql));
  std::vector<std::string> rows;
  for (int row = 0; row < result.rows(); ++row) {
    std::string text;
    for (int column = 0; column < result.columns(); ++column) {
      absl::StrAppend(&text, column > 0 ? "|" : "",
                      result.IsNull(row, column) ? "NULL" : result.Text(row, column));
    }
    rows.push_back(text);
  }
  return rows;
}

absl::Status StoreLocation::Exec(const std::string& sql) {
  if (backend_ == StoreBackend::kSqlite) return SqliteQuery(sqlite_path_, sql).status();
  ASSIGN_OR_RETURN(std::unique_ptr<postgres::Connection> connection,
                   postgres::Connection::Open(postgres_url_, absl::Seconds(5), absl::Seconds(30),
                                              "steerd-test", "test SQL"));
  return connection->ExecScript("running test SQL", sql);
}

}  // namespace steerd::testing
