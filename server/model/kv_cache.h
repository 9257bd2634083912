// Per-layer key/value cache for a batch of sequences of different lengths, so that
// decoding a token costs one position of attention instead of the whole prefix.
// Row b's valid keys are the columns [start(b), length(b)) of its slot: left padding is
// a start above zero, and rows of a continuous batch can have unrelated lengths. Rows
// can be dropped (a finished sequence) or appended (newly prefilled sequences) between
// steps. Not thread-safe: it belongs to the engine thread that runs the model.
#ifndef STEERD_SERVER_MODEL_KV_CACHE_H_
#define STEERD_SERVER_MODEL_KV_CACHE_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "server/model/config.h"

namespace steerd {

class KvCache {
 public:
  KvCache() = default;
  // An empty cache for `batch` rows with room for `capacity` positions each.
  KvCache(const ModelConfig& config, int64_t batch, int64_t capacity, at::ScalarType dtype,
          const at::Device& device);

  int64_t batch_size() const { return static_cast<int64_t>(start_.size()); }
  int64_t capacity() const { return keys_.empty() ? 0 : keys_[0].size(2); }
  int64_t start(int64_t row) const { return start_[row]; }
  int64_t length(int64_t row) const { return length_[row]; }
  // Tokens stored for the row (its sequence length so far).
  int64_t num_tokens(int64_t row) const { return length_[row] - start_[row]; }
  int64_t max_length() const;

  // Makes room for `extra` more columns past the longest row.
  void Reserve(int64_t extra);
  // Keeps only `rows` (in that order): drops finished sequences.
  absl::Status SelectRows(const std::vector<int64_t>& rows);
  // Moves the rows of `other` (same model, dtype and device) after this cache's rows.
  absl::Status AppendRows(KvCache&& other);

  // For the transformer: layer tensors [B, kv_heads, capacity, head_dim] and the
  // per-row bookkeeping it advances after a forward pass.
  at::Tensor& keys(int64_t layer) { return keys_[layer]; }
  at::Tensor& values(int64_t layer) { return values_[layer]; }
  std::vector<int64_t>& mutable_start() { return start_; }
  std::vector<int64_t>& mutable_length() { return length_; }

 private:
  void Grow(int64_t capacity);

  std::vector<at::Tensor> keys_;    // per layer: [B, kv_heads, capacity, head_dim]
  std::vector<at::Tensor> values_;  // per layer: [B, kv_heads, capacity, head_dim]
  std::vector<int64_t> start_;      // [B] first valid column
  std::vector<int64_t> length_;     // [B] one past the last valid column
};

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_KV_CACHE_H_
