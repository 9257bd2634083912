// The default VectorStore: every tenant's steering-vector versions in one SQLite
// database in the data directory (metadata in one table, the safetensors files in
// another so that listing never reads them). The database runs in WAL mode with
// synchronous=FULL, so a version whose Create() returned is on disk and survives a
// crash of the process (or of the machine) right after. Per-(tenant, name) counters
// live in their own table and are never deleted, so a version number is never reused.
// Thread-safety: safe to call from any number of threads. One connection is shared
// under a mutex: every call is a handful of indexed statements, and the engine keeps
// the vectors it serves in memory, so this store is off the generation path; a write
// holds the mutex across its fsync (about a millisecond on an SSD).
#ifndef STEERD_SERVER_STORAGE_SQLITE_VECTOR_STORE_H_
#define STEERD_SERVER_STORAGE_SQLITE_VECTOR_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine/vector_store.h"
#include "server/storage/sqlite_util.h"

namespace steerd {

class SqliteVectorStore : public VectorStore {
 public:
  struct Options {
    // The database file, e.g. "<data_dir>/steerd.db"; created (with missing parent
    // directories) when absent. Required.
    std::string path;
    // How long a statement waits for a lock held by another connection (another
    // process opening the same file) before failing with UNAVAILABLE.
    absl::Duration busy_timeout = absl::Seconds(5);
    // The clock for create_time; tests inject a fake one. Defaults to absl::Now.
    std::function<absl::Time()> clock;
  };

  // Opens or creates the database and brings its schema to the current version.
  // FAILED_PRECONDITION when the file's schema is newer than this build understands;
  // INTERNAL when it is not a steerd database or is corrupt; UNAVAILABLE when it
  // cannot be opened.
  static absl::StatusOr<std::unique_ptr<SqliteVectorStore>> Create(const Options& options);
  ~SqliteVectorStore() override;

  SqliteVectorStore(const SqliteVectorStore&) = delete;
  SqliteVectorStore& operator=(const SqliteVectorStore&) = delete;

  // `metadata.sha256` and `size_bytes` are computed from `safetensors` (a non-empty
  // value that disagrees is INVALID_ARGUMENT: the caller described other bytes);
  // `create_time` is the clock's time, truncated to microseconds as stored.
  // INVALID_ARGUMENT for an empty tenant or name, a non-positive shape, or
  // layer_norms.size() != num_layers.
  absl::StatusOr<StoredVector> Create(const StoredVector& metadata, const std::string& safetensors,
                                      int64_t max_stored_versions) override;
  absl::StatusOr<StoredVector> Get(const std::string& tenant, const std::string& name,
                                   std::optional<int64_t> version) override;
  // Also checks the bytes against the stored sha256: INTERNAL when they differ.
  absl::StatusOr<std::string> ReadBytes(const std::string& tenant, const std::string& name,
                                        int64_t version) override;
  // INVALID_ARGUMENT for an empty tenant or a negative limit; limit 0 returns no
  // vectors and says whether any exist (`more`).
  absl::StatusOr<VectorPage> List(const VectorListQuery& query) override;
  absl::StatusOr<std::vector<StoredVector>> Delete(const std::string& tenant,
                                                   const std::string& name,
                                                   std::optional<int64_t> version) override;
  absl::StatusOr<int64_t> CountVersions(const std::string& tenant) override;

  // The schema version this build writes (stored in the schema_version table).
  static constexpr int64_t kSchemaVersion = 1;

 private:
  SqliteVectorStore(Options options, std::unique_ptr<sqlite::Database> db)
      : options_(std::move(options)), db_(std::move(db)) {}

  const Options options_;
  absl::Mutex mu_;
  const std::unique_ptr<sqlite::Database> db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_SQLITE_VECTOR_STORE_H_
