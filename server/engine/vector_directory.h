// What a replica knows about stored vectors' metadata, so that a generation resolves
// "name" or "name@version" without a store round trip, and goes on while the store is
// unreachable. Versions are immutable, so a version's metadata, once read, stays true
// until the version is deleted; only the alias "name" -> latest version can go stale.
// Both are dropped by Apply() when a change arrives: from this replica's own writes at
// once, and from other replicas' through the store's change feed (see
// server/storage/postgres_change_feed.h), so a new latest version or a deletion reaches
// every replica within the feed's delay. A lookup that misses reads the store and
// remembers the answer, unless a change was applied while it read (the answer may
// predate it). Requests already admitted keep what they pinned.
// Thread-safety: every method may be called from any thread.
#ifndef STEERD_SERVER_ENGINE_VECTOR_DIRECTORY_H_
#define STEERD_SERVER_ENGINE_VECTOR_DIRECTORY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/engine/vector_store.h"

namespace steerd {

class VectorDirectory {
 public:
  struct Options {
    // Versions and aliases remembered at most; past it the directory starts over (a
    // cold start costs one store read per vector in use).
    int64_t capacity = 100000;
  };
  // `store` must outlive the directory.
  VectorDirectory(const Options& options, VectorStore* store);

  // The version `version` of (tenant, name), or its latest when unset: from memory, or
  // read from the store (NOT_FOUND, UNAVAILABLE, ... as the store's Get).
  absl::StatusOr<StoredVector> Resolve(const std::string& tenant, const std::string& name,
                                       std::optional<int64_t> version);
  // Forgets what `change` makes stale: the name's alias, and for a deletion the version.
  void Apply(const VectorChange& change);

  // Entries remembered (versions + aliases), for tests.
  int64_t size() const;

 private:
  using NameKey = std::tuple<std::string, std::string>;            // tenant, name
  using VersionKey = std::tuple<std::string, std::string, int64_t>;  // + version

  void RememberLocked(const StoredVector& vector, bool as_latest)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  VectorStore* const store_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<VersionKey, StoredVector> versions_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<NameKey, int64_t> latest_ ABSL_GUARDED_BY(mu_);
  // Changes applied so far; a store read remembers its answer only if no change was
  // applied while it read (changes are rare; the next read remembers).
  int64_t changes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_VECTOR_DIRECTORY_H_
