// The paged KV cache: the keys and values of every running sequence live in fixed-size
// blocks (16 positions by default) of one pool allocated at start-up, so memory is
// taken per block a sequence actually fills, not per row's longest possible length,
// and full blocks can be shared by sequences that start alike. A sequence holds a block
// table (position p lives in block table[p / block_size], slot p % block_size); a block
// goes back to the pool when the last table holding it lets go.
//
// The prefix cache maps a hash chain over full blocks of token ids to the block that
// holds their keys and values: a new sequence takes the longest cached chain of its
// prompt and computes only the rest (vLLM's automatic prefix caching). Each chain starts
// from a caller-given namespace, because the same tokens have other keys and values
// under another steering vector or scale: the engine makes it from the model, tenant,
// vector version and scale, and two namespaces never share a block. A hit is verified
// against the stored tokens, parent hash and namespace, so a hash collision is a miss,
// never a wrong block. Blocks nobody references stay cached until an allocation needs
// them, least recently released first (a sequence's last blocks before its first).
// Not thread-safe: it belongs to the engine thread that runs the model.
#ifndef STEERD_SERVER_MODEL_PAGED_KV_CACHE_H_
#define STEERD_SERVER_MODEL_PAGED_KV_CACHE_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "server/model/config.h"

namespace steerd {

class KvBlockPool {
 public:
  struct Options {
    int64_t num_blocks = 0;   // At least 1.
    int64_t block_size = 16;  // Positions per block, at least 1.
  };

  // The bytes one block takes: keys and values of every layer.
  static int64_t BytesPerBlock(const ModelConfig& config, at::ScalarType dtype,
                               int64_t block_size);

  // Allocates the pool (uninitialised: a slot is read only after it was written).
  static absl::StatusOr<std::unique_ptr<KvBlockPool>> Create(const ModelConfig& config,
                                                             at::ScalarType dtype,
                                                             const at::Device& device,
                                                             const Options& options);

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  // Blocks that sequences hold now (cached blocks nobody holds are not counted).
  int64_t used_blocks() const { return used_; }
  // Blocks an allocation can take now: free ones and cached ones nobody holds.
  int64_t available_blocks() const { return num_blocks_ - used_; }
  // Blocks neither held nor cached.
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t cached_blocks() const { return static_cast<int64_t>(by_hash_.size()); }
  // Cached blocks dropped to make room, since creation.
  int64_t evictions() const { return evictions_; }
  // Blocks needed to hold `positions` positions.
  int64_t BlocksFor(int64_t positions) const {
    return (positions + block_size_ - 1) / block_size_;
  }

  // Per layer: [kv_heads, num_blocks, block_size, head_dim], the model's dtype: KV head
  // outermost, so that one head's consecutive blocks (a sequence's, while the pool is
  // unfragmented) are one stream for the attention kernel to read.
  at::Tensor& keys(int64_t layer) { return keys_[layer]; }
  at::Tensor& values(int64_t layer) { return values_[layer]; }
  const at::Tensor& keys(int64_t layer) const { return keys_[layer]; }
  int64_t num_layers() const { return static_cast<int64_t>(keys_.size()); }

  // Appends `n` blocks, each held once, to `blocks`, taking free blocks first and then
  // evicting the least recently released cached ones. Returns false (and takes none)
  // when fewer than `n` are available.
  bool Allocate(int64_t n, std::vector<int32_t>* blocks);
  // Lets go of one hold on each block; the last hold frees it, or, if it is cached,
  // leaves it cached and evictable. Later blocks become evictable before earlier ones.
  void Release(const std::vector<int32_t>& blocks);

  // The hash of every full block of `tokens` under `name_space`: entry i covers tokens
  // [0, (i + 1) * block_size). The chain a lookup and a registration share.
  std::vector<uint64_t> ChainHashes(const std::string& name_space,
                                    const std::vector<int32_t>& tokens) const;
  // The longest cached run of `tokens`' first full blocks, at most `max_blocks`, each
  // now held once more (the caller releases them with its other blocks).
  std::vector<int32_t> Match(const std::string& name_space, const std::vector<int32_t>& tokens,
                             const std::vector<uint64_t>& hashes, int64_t max_blocks);
  // Makes block `index` of a sequence (held by the caller, holding tokens
  // [index * block_size, (index + 1) * block_size) of `tokens`) findable by Match.
  // A chain already cached in another block stays there; this one stays private.
  void Register(int32_t block, int64_t index, const std::string& name_space,
                const std::vector<int32_t>& tokens, const std::vector<uint64_t>& hashes);

 private:
  struct CachedBlock {
    uint64_t hash = 0;
    uint64_t parent = 0;           // The previous block's hash, or the namespace's.
    std::vector<int32_t> tokens;   // [block_size]
    std::string name_space;        // First blocks only: what their parent hash stands for.
  };

  KvBlockPool(int64_t num_blocks, int64_t block_size);
  uint64_t RootHash(const std::string& name_space) const;
  void Evict(int32_t block);

  const int64_t num_blocks_;
  const int64_t block_size_;
  std::vector<at::Tensor> keys_;    // per layer: [kv_heads, num_blocks, block_size, hd]
  std::vector<at::Tensor> values_;  // per layer: [kv_heads, num_blocks, block_size, hd]
  std::vector<int32_t> holds_;      // [num_blocks] sequences holding each block
  std::vector<int32_t> free_;       // Blocks neither held nor cached.
  std::vector<std::unique_ptr<CachedBlock>> cached_;  // [num_blocks], null if not cached
  absl::flat_hash_map<uint64_t, int32_t> by_hash_;
  std::list<int32_t> evictable_;    // Cached, not held; front = evicted first.
  std::vector<std::list<int32_t>::iterator> evictable_at_;  // [num_blocks]
  int64_t used_ = 0;
  int64_t evictions_ = 0;
};

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_PAGED_KV_CACHE_H_
