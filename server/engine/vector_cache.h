// The steering vectors resident on one model's device, keyed by the stored file's
// sha256 (versions are immutable, so equal hashes are equal tensors). A request pins
// its vector for its whole life by holding the returned shared_ptr; the cache holds at
// most `capacity` vectors that nobody uses and evicts the least recently used of those.
// Pinned vectors are never evicted, so the resident count may exceed the capacity by the
// vectors in use. A miss loads the vector with the caller's loader on the caller's
// thread (an RPC thread) without holding the cache's lock: the engine thread and other
// requests never wait for a store read or a device upload.
// Thread-safety: every method may be called from any thread.
#ifndef STEERD_SERVER_ENGINE_VECTOR_CACHE_H_
#define STEERD_SERVER_ENGINE_VECTOR_CACHE_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/engine/metrics.h"

namespace steerd {

struct ResidentVector {
  std::string sha256;
  at::Tensor vector;  // [num_layers, hidden_size], the model's dtype, on its device
};

class VectorCache {
 public:
  struct Options {
    int64_t capacity = 256;  // Unused vectors kept resident.
    at::ScalarType dtype = at::kFloat;
    at::Device device = at::Device(at::kCPU);
  };
  // Returns the vector's values as float32 [num_layers * hidden_size] (row-major).
  using Loader = std::function<absl::StatusOr<std::vector<float>>()>;

  VectorCache(const Options& options, int64_t num_layers, int64_t hidden_size,
              ModelMetrics metrics);

  // The resident vector with this hash, loaded with `load` on a miss. `hit` (optional)
  // tells whether it was resident.
  absl::StatusOr<std::shared_ptr<const ResidentVector>> Acquire(const std::string& sha256,
                                                                const Loader& load,
                                                                bool* hit = nullptr);
  int64_t resident() const;

 private:
  struct Entry {
    std::shared_ptr<const ResidentVector> vector;
    std::list<std::string>::iterator lru;  // Position in lru_ (front = most recent).
  };
  void EvictLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const int64_t num_layers_;
  const int64_t hidden_size_;
  const ModelMetrics metrics_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_VECTOR_CACHE_H_
