// The VectorStore on a shared PostgreSQL database, for N replicas of steerd: the same
// contract as SqliteVectorStore (the conformance suite runs both), with what sharing
// needs. Version numbers and the stored_vectors quota hold across replicas: a create
// runs in one transaction under a per-tenant advisory lock, so two replicas inserting
// for one tenant at once are serialized and the count they check is exact. Every
// create and delete also appends to the change feed (vector_changes, read by seq) and
// NOTIFYs it in the same transaction, so other replicas can learn of new "latest"
// versions and deletions.
// Thread-safety: safe to call from any number of threads (each call borrows one
// pooled connection).
#ifndef STEERD_SERVER_STORAGE_POSTGRES_VECTOR_STORE_H_
#define STEERD_SERVER_STORAGE_POSTGRES_VECTOR_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/engine/vector_store.h"
#include "server/storage/postgres.h"

namespace steerd {

class PostgresVectorStore : public VectorStore {
 public:
  struct Options {
    // The shared database (pool and schema); must outlive the store. Required.
    postgres::Database* database = nullptr;
    // The clock for create_time; tests inject a fake one. Defaults to absl::Now.
    std::function<absl::Time()> clock;
  };

  static absl::StatusOr<std::unique_ptr<PostgresVectorStore>> Create(const Options& options);

  // As SqliteVectorStore's: every method validates and fails the same way.
  absl::StatusOr<StoredVector> Create(const StoredVector& metadata, const std::string& safetensors,
                                      int64_t max_stored_versions) override;
  absl::StatusOr<StoredVector> Get(const std::string& tenant, const std::string& name,
                                   std::optional<int64_t> version) override;
  absl::StatusOr<std::string> ReadBytes(const std::string& tenant, const std::string& name,
                                        int64_t version) override;
  absl::StatusOr<VectorPage> List(const VectorListQuery& query) override;
  absl::StatusOr<std::vector<StoredVector>> Delete(const std::string& tenant,
                                                   const std::string& name,
                                                   std::optional<int64_t> version) override;
  absl::StatusOr<int64_t> CountVersions(const std::string& tenant) override;

  // The NOTIFY channel every create and delete signals, with the change's seq as payload.
  static constexpr char kChangeChannel[] = "steerd_vector_changes";

 private:
  explicit PostgresVectorStore(Options options) : options_(std::move(options)) {}

  const Options options_;
};

}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_POSTGRES_VECTOR_STORE_H_
