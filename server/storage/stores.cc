#include "server/storage/stores.h"

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/storage/postgres_job_store.h"
#include "server/storage/postgres_vector_store.h"
#include "server/storage/sqlite_job_store.h"
#include "server/storage/sqlite_vector_store.h"
#include "server/util/status_macros.h"

namespace steerd {

absl::StatusOr<Stores> OpenStores(const StoreConfig& config) {
  Stores stores;
  if (config.url.empty()) {
    const std::string path = (std::filesystem::path(config.data_dir) / "steerd.db").string();
    SqliteVectorStore::Options vector_options;
    vector_options.path = path;
    ASSIGN_OR_RETURN(stores.vectors, SqliteVectorStore::Create(vector_options));
    SqliteJobStore::Options job_options;
    job_options.path = path;
    ASSIGN_OR_RETURN(stores.jobs, SqliteJobStore::Create(job_options));
    stores.description = absl::StrCat("SQLite ", path);
    return stores;
  }
  postgres::Database::Options options;
  options.url = config.url;
  options.client_name = config.client_name;
  ASSIGN_OR_RETURN(stores.database, postgres::Database::Open(options));
  PostgresVectorStore::Options vector_options;
  vector_options.database = stores.database.get();
  ASSIGN_OR_RETURN(stores.vectors, PostgresVectorStore::Create(vector_options));
  PostgresJobStore::Options job_options;
  job_options.database = stores.database.get();
  ASSIGN_OR_RETURN(stores.jobs, PostgresJobStore::Create(job_options));
  const int64_t found = stores.database->found_schema_version();
  stores.description =
      absl::StrCat("PostgreSQL ", postgres::RedactUrl(config.url), " (schema version ",
                   postgres::Database::SchemaVersion(),
                   stores.database->migrated() ? absl::StrCat(", migrated from ", found) : "", ")");
  return stores;
}

}  // namespace steerd
