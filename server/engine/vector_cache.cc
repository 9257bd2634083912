#include "server/engine/vector_cache.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/model/torch_util.h"
#include "server/util/status_macros.h"

namespace steerd {

VectorCache::VectorCache(const Options& options, int64_t num_layers, int64_t hidden_size,
                         ModelMetrics metrics)
    : options_(options),
      num_layers_(num_layers),
      hidden_size_(hidden_size),
      metrics_(metrics) {}

absl::StatusOr<std::shared_ptr<const ResidentVector>> VectorCache::Acquire(
    const std::string& sha256, const Loader& load, bool* hit) {
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(sha256);
    if (it != entries_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      if (metrics_.vector_cache_hits) metrics_.vector_cache_hits->Increment();
      if (hit != nullptr) *hit = true;
      return it->second.vector;
    }
  }
  if (hit != nullptr) *hit = false;
  if (metrics_.vector_cache_misses) metrics_.vector_cache_misses->Increment();
  // The load and the device upload run without the lock.
  ASSIGN_OR_RETURN(std::vector<float> values, load());
  if (static_cast<int64_t>(values.size()) != num_layers_ * hidden_size_) {
    return absl::InternalError(absl::StrCat("stored vector ", sha256, " has ", values.size(),
                                            " values; the model needs ",
                                            num_layers_ * hidden_size_));
  }
  auto resident = std::make_shared<ResidentVector>();
  resident->sha256 = sha256;
  RETURN_IF_ERROR(CatchTorchErrors("uploading a steering vector", [&]() -> absl::Status {
    // [L, d]
    resident->vector = at::from_blob(values.data(), {num_layers_, hidden_size_}, at::kFloat)
                           .to(options_.device, options_.dtype, /*non_blocking=*/false,
                               /*copy=*/true);
    return absl::OkStatus();
  }));

  absl::MutexLock lock(&mu_);
  auto [it, inserted] = entries_.try_emplace(sha256);
  if (inserted) {
    lru_.push_front(sha256);
    it->second.lru = lru_.begin();
    it->second.vector = std::move(resident);
    EvictLocked();
  } else {
    // Another request loaded it meanwhile: share that copy.
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  }
  if (metrics_.resident_vectors) metrics_.resident_vectors->Set(entries_.size());
  return it->second.vector;
}

void VectorCache::EvictLocked() {
  int64_t unused = 0;
  for (const auto& [sha, entry] : entries_) unused += entry.vector.use_count() == 1 ? 1 : 0;
  // Oldest first; vectors a request holds (use_count > 1) stay.
  for (auto it = lru_.end(); unused > options_.capacity && it != lru_.begin();) {
    --it;
    auto entry = entries_.find(*it);
    if (entry->second.vector.use_count() != 1) continue;
    entries_.erase(entry);
    it = lru_.erase(it);
    --unused;
    if (metrics_.vector_cache_evictions) metrics_.vector_cache_evictions->Increment();
  }
}

int64_t VectorCache::resident() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

}  // namespace steerd
