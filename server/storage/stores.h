// The choice of storage backend, made once for a process: `steerd serve --store URL`
// (or STEERD_STORE) names a shared PostgreSQL database, for N replicas; without it the
// vectors and jobs live in SQLite in the data directory, the zero-setup default for one
// machine. OpenStores opens both stores on the chosen backend (for PostgreSQL one
// connection pool they share, with the schema migrated at open).
// Thread-safety: OpenStores from one thread; the stores it returns are thread-safe.
#ifndef STEERD_SERVER_STORAGE_STORES_H_
#define STEERD_SERVER_STORAGE_STORES_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/engine/job_store.h"
#include "server/engine/vector_store.h"
#include "server/storage/postgres.h"

namespace steerd {

struct StoreConfig {
  // postgresql://... (a libpq URL), or empty for SQLite in `data_dir`.
  std::string url;
  std::string data_dir;  // SQLite only: holds steerd.db.
  // This process as PostgreSQL sees it (application_name, the migrations' author):
  // the replica id.
  std::string client_name = "steerd";
};

struct Stores {
  // Declared first so it is destroyed last, after the stores that use it.
  std::unique_ptr<postgres::Database> database;  // PostgreSQL only.
  std::unique_ptr<VectorStore> vectors;
  std::unique_ptr<JobStore> jobs;
  // Where they are, for the start-up log: "PostgreSQL postgresql://app:***@db/steerd
  // (schema version 1)" or "SQLite data/steerd.db".
  std::string description;
};

// INVALID_ARGUMENT for a URL that is not a PostgreSQL one or is malformed; UNAVAILABLE
// when the database cannot be reached; FAILED_PRECONDITION for a schema newer than
// this build (both versions named). SQLite errors as SqliteVectorStore::Create's.
absl::StatusOr<Stores> OpenStores(const StoreConfig& config);

}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_STORES_H_
