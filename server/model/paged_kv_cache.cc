#include "server/model/paged_kv_cache.h"

#include <algorithm>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "server/model/torch_util.h"
#include "server/util/status_macros.h"

namespace steerd {

int64_t KvBlockPool::BytesPerBlock(const ModelConfig& config, at::ScalarType dtype,
                                   int64_t block_size) {
  return 2 * config.num_layers * config.num_kv_heads * block_size * config.head_dim *
         static_cast<int64_t>(c10::elementSize(dtype));
}

absl::StatusOr<std::unique_ptr<KvBlockPool>> KvBlockPool::Create(const ModelConfig& config,
                                                                 at::ScalarType dtype,
                                                                 const at::Device& device,
                                                                 const Options& options) {
  if (options.num_blocks < 1 || options.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the KV cache needs at least one block of at least one position; got ",
                     options.num_blocks, " blocks of ", options.block_size));
  }
  if (options.num_blocks > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the KV cache has ", options.num_blocks, " blocks; at most 2^30"));
  }
  std::unique_ptr<KvBlockPool> pool(new KvBlockPool(options.num_blocks, options.block_size));
  RETURN_IF_ERROR(CatchTorchErrors("allocating the KV cache", [&]() -> absl::Status {
    const auto tensor_options = at::TensorOptions().dtype(dtype).device(device);
    for (int64_t l = 0; l < config.num_layers; ++l) {
      for (auto* layers : {&pool->keys_, &pool->values_}) {
        layers->push_back(at::empty(
            {config.num_kv_heads, options.num_blocks, options.block_size, config.head_dim},
            tensor_options));
      }
    }
    return absl::OkStatus();
  }));
  return pool;
}

KvBlockPool::KvBlockPool(int64_t num_blocks, int64_t block_size)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      holds_(num_blocks, 0),
      cached_(num_blocks),
      evictable_at_(num_blocks) {
  // Handed out from the back: block 0 first.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

bool KvBlockPool::Allocate(int64_t n, std::vector<int32_t>* blocks) {
  if (n < 0 || n > available_blocks()) return false;
  for (int64_t i = 0; i < n; ++i) {
    int32_t block;
    if (!free_.empty()) {
      block = free_.back();
      free_.pop_back();
    } else {
      block = evictable_.front();
      Evict(block);
    }
    holds_[block] = 1;
    ++used_;
    blocks->push_back(block);
  }
  return true;
}

void KvBlockPool::Evict(int32_t block) {
  evictable_.erase(evictable_at_[block]);
  by_hash_.erase(cached_[block]->hash);
  cached_[block].reset();
  ++evictions_;
}

void KvBlockPool::Release(const std::vector<int32_t>& blocks) {
  // Last blocks first: they join the eviction queue first, so a cached prefix loses its
  // tail before its head (a head without its tail is still a hit; a tail without its
  // head is unreachable).
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    const int32_t block = *it;
    if (--holds_[block] > 0) continue;
    --used_;
    if (cached_[block] != nullptr) {
      evictable_at_[block] = evictable_.insert(evictable_.end(), block);
    } else {
      free_.push_back(block);
    }
  }
}

uint64_t KvBlockPool::RootHash(const std::string& name_space) const {
  return absl::HashOf(std::string_view("steerd kv namespace"), name_space);
}

std::vector<uint64_t> KvBlockPool::ChainHashes(const std::string& name_space,
                                               const std::vector<int32_t>& tokens) const {
  std::vector<uint64_t> hashes;
  uint64_t parent = RootHash(name_space);
  const int64_t full = static_cast<int64_t>(tokens.size()) / block_size_;
  hashes.reserve(full);
  for (int64_t i = 0; i < full; ++i) {
    parent = absl::HashOf(
        parent, absl::MakeConstSpan(tokens.data() + i * block_size_, block_size_));
    hashes.push_back(parent);
  }
  return hashes;
}

std::vector<int32_t> KvBlockPool::Match(const std::string& name_space,
                                        const std::vector<int32_t>& tokens,
                                        const std::vector<uint64_t>& hashes,
                                        int64_t max_blocks) {
  std::vector<int32_t> matched;
  const int64_t limit = std::min<int64_t>(max_blocks, hashes.size());
  for (int64_t i = 0; i < limit; ++i) {
    auto found = by_hash_.find(hashes[i]);
    if (found == by_hash_.end()) break;
    const int32_t block = found->second;
    const CachedBlock& entry = *cached_[block];
    const uint64_t parent = i == 0 ? RootHash(name_space) : hashes[i - 1];
    const bool same = entry.parent == parent &&
                      std::equal(entry.tokens.begin(), entry.tokens.end(),
                                 tokens.begin() + i * block_size_) &&
                      (i > 0 || entry.name_space == name_space);
    if (!same) break;  // A hash collision: a miss, never another prefix's block.
    if (holds_[block]++ == 0) {
      evictable_.erase(evictable_at_[block]);
      ++used_;
    }
    matched.push_back(block);
  }
  return matched;
}

void KvBlockPool::Register(int32_t block, int64_t index, const std::string& name_space,
                           const std::vector<int32_t>& tokens,
                           const std::vector<uint64_t>& hashes) {
  if (index < 0 || index >= static_cast<int64_t>(hashes.size()) ||
      cached_[block] != nullptr || by_hash_.contains(hashes[index])) {
    return;
  }
  auto entry = std::make_unique<CachedBlock>();
  entry->hash = hashes[index];
  entry->parent = index == 0 ? RootHash(name_space) : hashes[index - 1];
  entry->tokens.assign(tokens.begin() + index * block_size_,
                       tokens.begin() + (index + 1) * block_size_);
  if (index == 0) entry->name_space = name_space;
  by_hash_.emplace(entry->hash, block);
  cached_[block] = std::move(entry);
}

}  // namespace steerd
