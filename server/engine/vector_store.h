// The storage the engine needs for tenants' steering vectors: immutable versions of
// named vectors, each a safetensors file plus its metadata. The engine declares this
// interface and never sees how it is kept; server/storage implements it (SQLite in the
// data directory by default), so another backend can follow without touching the
// engine. Versions of a (tenant, name) are numbered 1, 2, 3, ... and a number is never
// reused, even after deletion. Every write is atomic and durable once it returns: a
// version whose Create() returned survives a crash of the process right after.
// Thread-safety: implementations are safe to call from any number of threads.
#ifndef STEERD_SERVER_ENGINE_VECTOR_STORE_H_
#define STEERD_SERVER_ENGINE_VECTOR_STORE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace steerd {

// The metadata of one stored vector version (the proto's Vector, plus the tenant).
struct StoredVector {
  enum class Source { kUpload, kTraining };

  std::string tenant;
  std::string name;
  int64_t version = 0;  // Assigned by Create().
  std::string model;    // The model it was created for.
  std::string model_fingerprint;
  int32_t num_layers = 0;
  int32_t hidden_size = 0;
  std::string dtype;              // "F32" or "BF16".
  std::string sha256;             // Lowercase hex of the stored file's bytes.
  int64_t size_bytes = 0;         // Of the stored file.
  std::vector<float> layer_norms;  // num_layers entries.
  absl::Time create_time;          // Assigned by Create().
  Source source = Source::kUpload;
  std::string job_id;  // Set when source is kTraining.
  std::string description;
  // Input to Create() only: when non-zero (with job_id), Create() publishes the job's
  // result: in the same transaction it checks that the job's lease still has this
  // epoch and no cancel was requested, and ends the job SUCCEEDED with this version,
  // so a job publishes exactly one version, and a replica that lost the job writes
  // none (FAILED_PRECONDITION, reason LEASE_LOST or JOB_CANCELLED).
  int64_t job_lease_epoch = 0;
};

// A page of List() results.
struct VectorPage {
  std::vector<StoredVector> vectors;  // Ordered by name, then version newest first.
  bool more = false;                  // Whether entries follow the last one.
};

// One entry of the change feed: a version created or deleted. Replicas sharing one
// store learn from it what "latest" now means and which versions are gone.
struct VectorChange {
  enum class Kind { kCreated, kDeleted };
  int64_t seq = 0;  // Increases in commit order.
  std::string tenant;
  std::string name;
  int64_t version = 0;
  Kind kind = Kind::kCreated;
};

struct VectorListQuery {
  std::string tenant;
  std::string model;  // Only versions created for this model; empty = any.
  std::string name;   // Only this name; empty = any.
  bool all_versions = false;  // false: one entry per name, its latest (after filters).
  int64_t limit = 50;         // At most this many entries.
  // Resume strictly after this (name, version) in the listing order; empty name = start.
  std::string after_name;
  int64_t after_version = 0;
};

class VectorStore {
 public:
  virtual ~VectorStore() = default;

  // Stores `safetensors` as the next version of (metadata.tenant, metadata.name) and
  // returns the metadata with `version` and `create_time` filled in. Durable when it
  // returns. When `max_stored_versions` >= 0 and the tenant already stores that many
  // versions (all names together), fails with RESOURCE_EXHAUSTED naming
  // `stored_vectors`; the check and the insert are one transaction.
  virtual absl::StatusOr<StoredVector> Create(const StoredVector& metadata,
                                              const std::string& safetensors,
                                              int64_t max_stored_versions) = 0;

  // One version, or the latest one when `version` is empty. NOT_FOUND when the tenant
  // has no such name or version.
  virtual absl::StatusOr<StoredVector> Get(const std::string& tenant, const std::string& name,
                                           std::optional<int64_t> version) = 0;

  // The stored safetensors bytes of one version. NOT_FOUND as Get().
  virtual absl::StatusOr<std::string> ReadBytes(const std::string& tenant,
                                                const std::string& name, int64_t version) = 0;

  virtual absl::StatusOr<VectorPage> List(const VectorListQuery& query) = 0;

  // Deletes one version, or every version of the name when `version` is empty, and
  // returns what was deleted, oldest first. NOT_FOUND when nothing matched.
  virtual absl::StatusOr<std::vector<StoredVector>> Delete(const std::string& tenant,
                                                           const std::string& name,
                                                           std::optional<int64_t> version) = 0;

  // Versions the tenant stores, all names together.
  virtual absl::StatusOr<int64_t> CountVersions(const std::string& tenant) = 0;
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_VECTOR_STORE_H_
