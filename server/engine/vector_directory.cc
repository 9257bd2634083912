#include "server/engine/vector_directory.h"

#include <utility>

namespace steerd {

VectorDirectory::VectorDirectory(const Options& options, VectorStore* store)
    : options_(options), store_(store) {}

absl::StatusOr<StoredVector> VectorDirectory::Resolve(const std::string& tenant,
                                                      const std::string& name,
                                                      std::optional<int64_t> version) {
  const NameKey name_key(tenant, name);
  int64_t changes_before = 0;
  {
    absl::MutexLock lock(&mu_);
    std::optional<int64_t> wanted = version;
    if (!wanted.has_value()) {
      const auto alias = latest_.find(name_key);
      if (alias != latest_.end()) wanted = alias->second;
    }
    if (wanted.has_value()) {
      const auto found = versions_.find(VersionKey(tenant, name, *wanted));
      if (found != versions_.end()) return found->second;
    }
    changes_before = changes_;
  }
  // Read outside the lock: other names resolve meanwhile.
  absl::StatusOr<StoredVector> read = store_->Get(tenant, name, version);
  if (!read.ok()) return read.status();
  absl::MutexLock lock(&mu_);
  if (changes_ == changes_before) {
    RememberLocked(*read, /*as_latest=*/!version.has_value());
  }
  return read;
}

void VectorDirectory::RememberLocked(const StoredVector& vector, bool as_latest) {
  if (static_cast<int64_t>(versions_.size() + latest_.size()) >= options_.capacity) {
    versions_.clear();
    latest_.clear();
  }
  versions_.insert_or_assign(VersionKey(vector.tenant, vector.name, vector.version), vector);
  if (as_latest) latest_.insert_or_assign(NameKey(vector.tenant, vector.name), vector.version);
}

void VectorDirectory::Apply(const VectorChange& change) {
  const NameKey name_key(change.tenant, change.name);
  absl::MutexLock lock(&mu_);
  ++changes_;
  latest_.erase(name_key);
  if (change.kind == VectorChange::Kind::kDeleted) {
    versions_.erase(VersionKey(change.tenant, change.name, change.version));
  }
}

int64_t VectorDirectory::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(versions_.size() + latest_.size());
}

}  // namespace steerd
