#include "server/model/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace steerd {

KvCache::KvCache(const ModelConfig& config, int64_t batch, int64_t capacity,
                 at::ScalarType dtype, const at::Device& device)
    : start_(batch, 0), length_(batch, 0) {
  // Zero-filled, not empty: masked columns still take part in `probs @ values` with a
  // weight of exactly 0, and 0 * NaN garbage would poison the row.
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  for (int64_t l = 0; l < config.num_layers; ++l) {
    keys_.push_back(at::zeros({batch, config.num_kv_heads, capacity, config.head_dim}, options));
    values_.push_back(at::zeros({batch, config.num_kv_heads, capacity, config.head_dim}, options));
  }
}

int64_t KvCache::max_length() const {
  return length_.empty() ? 0 : *std::max_element(length_.begin(), length_.end());
}

void KvCache::Reserve(int64_t extra) {
  const int64_t needed = max_length() + extra;
  if (needed <= capacity()) return;
  // Grow geometrically so a long generation reallocates O(log n) times.
  Grow(std::max(needed, capacity() * 2));
}

void KvCache::Grow(int64_t new_capacity) {
  for (auto* layers : {&keys_, &values_}) {
    for (at::Tensor& t : *layers) {
      at::Tensor grown = at::zeros({t.size(0), t.size(1), new_capacity, t.size(3)}, t.options());
      grown.narrow(2, 0, t.size(2)).copy_(t);
      t = std::move(grown);
    }
  }
}

absl::Status KvCache::SelectRows(const std::vector<int64_t>& rows) {
  for (int64_t r : rows) {
    if (r < 0 || r >= batch_size()) {
      return absl::OutOfRangeError(absl::StrCat("KvCache::SelectRows: row ", r,
                                                " is outside the batch of ", batch_size()));
    }
  }
  std::vector<int64_t> start, length;
  for (int64_t r : rows) {
    start.push_back(start_[r]);
    length.push_back(length_[r]);
  }
  if (!keys_.empty()) {
    const at::Tensor index =
        at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(keys_[0].device());
    for (auto* layers : {&keys_, &values_}) {
      for (at::Tensor& t : *layers) t = t.index_select(0, index);
    }
  }
  start_ = std::move(start);
  length_ = std::move(length);
  return absl::OkStatus();
}

absl::Status KvCache::AppendRows(KvCache&& other) {
  if (other.batch_size() == 0) return absl::OkStatus();
  if (batch_size() == 0) {
    *this = std::move(other);
    return absl::OkStatus();
  }
  if (other.keys_.size() != keys_.size() || other.keys_[0].size(1) != keys_[0].size(1) ||
      other.keys_[0].size(3) != keys_[0].size(3) ||
      other.keys_[0].scalar_type() != keys_[0].scalar_type() ||
      other.keys_[0].device() != keys_[0].device()) {
    return absl::InvalidArgumentError("KvCache::AppendRows: caches of different models");
  }
  const int64_t capacity = std::max(this->capacity(), other.capacity());
  if (capacity > this->capacity()) Grow(capacity);
  for (size_t l = 0; l < keys_.size(); ++l) {
    for (auto [mine, theirs] : {std::pair{&keys_[l], &other.keys_[l]},
                                std::pair{&values_[l], &other.values_[l]}}) {
      at::Tensor padded = *theirs;
      if (theirs->size(2) < capacity) {
        padded = at::zeros({theirs->size(0), theirs->size(1), capacity, theirs->size(3)},
                           theirs->options());
        padded.narrow(2, 0, theirs->size(2)).copy_(*theirs);
      }
      *mine = at::cat({*mine, padded}, 0);
    }
  }
  start_.insert(start_.end(), other.start_.begin(), other.start_.end());
  length_.insert(length_.end(), other.length_.begin(), other.length_.end());
  return absl::OkStatus();
}

}  // namespace steerd
