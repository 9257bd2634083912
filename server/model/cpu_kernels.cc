#include "server/model/cpu_kernels.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace steerd {
namespace {

// Up to this many token rows, memory is the limit: one weight row at a time keeps each
// thread on a single sequential stream, which the hardware prefetchers follow at full
// bandwidth (four interleaved short rows reach only half of it), with two accumulator
// chains per output so a long row is not one serial chain of dot products. Past it,
// compute is the limit, and tiles of six weight rows reuse each loaded token vector six
// times (6 x 4 accumulators, 4 token vectors and one weight vector fill the 32 AVX-512
// registers; measured 5% faster than four rows at batch 16).
constexpr int64_t kSequentialMaxRows = 8;
constexpr int kTileRows = 6;

bool CpuHasAvx512Bf16() {
  static const bool supported = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512bf16");
  return supported;
}

// Adds one 32-wide chunk of K at column k to `acc`; kMasked loads only the `mask` lanes
// (the tail of a row whose K is not a multiple of 32).
template <int NR, int MR, bool kMasked>
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline void Chunk(
    __m512 (&acc)[NR][MR], const uint16_t* const (&w_row)[NR], const uint16_t* x, int64_t m,
    int64_t K, int64_t k, __mmask32 mask, int64_t prefetch) {
  __m512bh xv[MR];
#pragma GCC unroll 8
  for (int b = 0; b < MR; ++b) {
    const uint16_t* p = x + (m + b) * K + k;
    xv[b] = reinterpret_cast<__m512bh>(kMasked ? _mm512_maskz_loadu_epi16(mask, p)
                                               : _mm512_loadu_si512(p));
  }
#pragma GCC unroll 8
  for (int a = 0; a < NR; ++a) {
    if (!kMasked) {
      _mm_prefetch(reinterpret_cast<const char*>(w_row[a] + k + prefetch), _MM_HINT_T0);
    }
    const uint16_t* p = w_row[a] + k;
    const __m512bh wv = reinterpret_cast<__m512bh>(
        kMasked ? _mm512_maskz_loadu_epi16(mask, p) : _mm512_loadu_si512(p));
#pragma GCC unroll 8
    for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_dpbf16_ps(acc[a][b], wv, xv[b]);
  }
}

// One tile: weight rows [n, n + rows) against token rows [m, m + MR), over all of K.
// With kTwoChains each output has two accumulators, for the even and the odd 32-wide
// chunks of K, so that one long row is two dependency chains instead of one (the
// row-at-a-time path needs it; tiles already have 24 independent accumulators).
// For a given path the order of additions is fixed, so a row's result does not depend
// on which other rows share the call.
template <int NR, int MR, bool kTwoChains>
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline void Tile(
    const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t N,
    int64_t K, int64_t n, int64_t m, int rows, int64_t prefetch) {
  const int64_t chunks = K / 32;  // Full 32-wide chunks.
  const __mmask32 tail = K % 32 ? static_cast<__mmask32>((1u << (K % 32)) - 1) : 0;
  __m512 even[NR][MR], odd[NR][MR];
  const uint16_t* w_row[NR];
  // The small loops must be fully unrolled so the accumulators live in registers.
#pragma GCC unroll 8
  for (int a = 0; a < NR; ++a) {
#pragma GCC unroll 8
    for (int b = 0; b < MR; ++b) even[a][b] = odd[a][b] = _mm512_setzero_ps();
    // A short last tile repeats its first row; those sums are computed, not stored.
    w_row[a] = w + (n + (a < rows ? a : 0)) * K;
  }
  int64_t c = 0;
  if (kTwoChains) {
    for (; c + 2 <= chunks; c += 2) {
      Chunk<NR, MR, false>(even, w_row, x, m, K, c * 32, 0, prefetch);
      Chunk<NR, MR, false>(odd, w_row, x, m, K, c * 32 + 32, 0, prefetch);
    }
  }
  for (; c < chunks; ++c) Chunk<NR, MR, false>(even, w_row, x, m, K, c * 32, 0, prefetch);
  if (tail != 0) {
    if (kTwoChains && c % 2 == 1) {
      Chunk<NR, MR, true>(odd, w_row, x, m, K, c * 32, tail, prefetch);
    } else {
      Chunk<NR, MR, true>(even, w_row, x, m, K, c * 32, tail, prefetch);
    }
  }
  for (int a = 0; a < rows; ++a) {
    float b_value = 0.0f;
    if (bias != nullptr) {
      c10::BFloat16 raw;
      raw.x = bias[n + a];
      b_value = static_cast<float>(raw);
    }
    for (int b = 0; b < MR; ++b) {
      const __m512 total = kTwoChains ? _mm512_add_ps(even[a][b], odd[a][b]) : even[a][b];
      y[(m + b) * N + n + a] = c10::BFloat16(_mm512_reduce_add_ps(total) + b_value).x;
    }
  }
}

// Weight rows [first_row, last_row) in tiles of NR rows, against all M token rows.
template <int NR>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void RowRange(
    const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M,
    int64_t N, int64_t K, int64_t first_row, int64_t last_row) {
  // Sequential reading prefetches 1 KiB ahead in its row; tiled reading prefetches
  // the same position of the next tile.
  const int64_t prefetch = NR == 1 ? 512 : NR * K;
  for (int64_t n = first_row; n < last_row; n += NR) {
    const int rows = static_cast<int>(std::min<int64_t>(NR, last_row - n));
    constexpr bool kTwoChains = NR == 1;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) Tile<NR, 4, kTwoChains>(x, w, bias, y, N, K, n, m, rows, prefetch);
    for (; m + 2 <= M; m += 2) Tile<NR, 2, kTwoChains>(x, w, bias, y, N, K, n, m, rows, prefetch);
    for (; m < M; ++m) Tile<NR, 1, kTwoChains>(x, w, bias, y, N, K, n, m, rows, prefetch);
  }
}

}  // namespace

bool CanUseSmallBatchBf16Linear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias) {
  if (!CpuHasAvx512Bf16()) return false;
  if (!x.device().is_cpu() || x.scalar_type() != at::kBFloat16 ||
      weight.scalar_type() != at::kBFloat16 || weight.dim() != 2 || x.dim() < 1 ||
      x.size(-1) != weight.size(1) || !x.is_contiguous() || !weight.is_contiguous()) {
    return false;
  }
  if (bias.defined() && (bias.scalar_type() != at::kBFloat16 || !bias.is_contiguous() ||
                         bias.numel() != weight.size(0))) {
    return false;
  }
  if (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad())) {
    return false;
  }
  return x.numel() / x.size(-1) <= kSmallBatchLinearMaxRows;
}

at::Tensor SmallBatchBf16Linear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias) {
  const int64_t K = weight.size(1), N = weight.size(0), M = x.numel() / K;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty(out_shape, x.options());  // [..., N]
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr());
  const auto* bp = bias.defined() ? reinterpret_cast<const uint16_t*>(bias.data_ptr()) : nullptr;
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  const bool sequential = M <= kSequentialMaxRows;
  const int64_t tile = sequential ? 1 : kTileRows;
  // Threads split the weight rows on tile boundaries.
  at::parallel_for(0, (N + tile - 1) / tile, /*grain_size=*/64, [&](int64_t begin, int64_t end) {
    const int64_t first = begin * tile, last = std::min(N, end * tile);
    if (sequential) {
      RowRange<1>(xp, wp, bp, yp, M, N, K, first, last);
    } else {
      RowRange<kTileRows>(xp, wp, bp, yp, M, N, K, first, last);
    }
  });
  return y;
}

bool CanUseBf16RmsNorm(const at::Tensor& x, const at::Tensor& weight) {
  return x.device().is_cpu() && x.scalar_type() == at::kBFloat16 &&
         weight.scalar_type() == at::kBFloat16 && x.is_contiguous() && weight.is_contiguous() &&
         x.dim() >= 1 && weight.dim() == 1 && x.size(-1) == weight.size(0) &&
         !x.requires_grad() && !weight.requires_grad();
}

at::Tensor Bf16RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t d = x.size(-1), rows = x.numel() / d;
  at::Tensor y = at::empty(x.sizes(), x.options());
  const auto* xp = x.data_ptr<c10::BFloat16>();
  const auto* wp = weight.data_ptr<c10::BFloat16>();
  auto* yp = y.data_ptr<c10::BFloat16>();
  const float epsilon = static_cast<float>(eps);
  // A row is a few thousand values: only many rows (a prefill) are worth threads.
  at::parallel_for(0, rows, /*grain_size=*/64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const c10::BFloat16* in = xp + r * d;
      c10::BFloat16* out = yp + r * d;
      float sum_squares = 0.0f;
      for (int64_t i = 0; i < d; ++i) {
        const float v = static_cast<float>(in[i]);
        sum_squares += v * v;
      }
      const float inverse_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(d) + epsilon);
      for (int64_t i = 0; i < d; ++i) {
        const c10::BFloat16 normed(static_cast<float>(in[i]) * inverse_rms);
        out[i] = c10::BFloat16(static_cast<float>(wp[i]) * static_cast<float>(normed));
      }
    }
  });
  return y;
}

namespace {

constexpr int64_t kMaxAttentionHeadDim = 256;

// What AttendHead is compiled for (no BF16 instructions there).
bool CpuHasAvx512BwVl() {
  static const bool supported = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl");
  return supported;
}

__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline __mmask16 Lanes(
    int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// 16 bf16 values (the `mask` lanes, others 0) widened to float32.
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline __m512 LoadAsFloat(
    const c10::BFloat16* p, __mmask16 mask) {
  const __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// One query head against keys/values [first, last] of its KV head: scores, softmax and
// the weighted sum of values in float32, 16 lanes at a time. `scores` has room for
// last + 1 floats.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void AttendHead(
    const c10::BFloat16* q, const c10::BFloat16* keys, const c10::BFloat16* values,
    int64_t first, int64_t last, int64_t hd, float scale, float* scores, c10::BFloat16* out) {
  const int64_t chunks = (hd + 15) / 16;
  __m512 query[kMaxAttentionHeadDim / 16];
  for (int64_t c = 0; c < chunks; ++c) query[c] = LoadAsFloat(q + 16 * c, Lanes(hd - 16 * c));
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t s = first; s <= last; ++s) {
    const c10::BFloat16* key = keys + s * hd;
    __m512 dot = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      dot = _mm512_fmadd_ps(query[c], LoadAsFloat(key + 16 * c, Lanes(hd - 16 * c)), dot);
    }
    scores[s] = _mm512_reduce_add_ps(dot) * scale;
    max_score = std::max(max_score, scores[s]);
  }
  float total = 0.0f;
  for (int64_t s = first; s <= last; ++s) {
    scores[s] = std::exp(scores[s] - max_score);
    total += scores[s];
  }
  __m512 sum[kMaxAttentionHeadDim / 16];
  for (int64_t c = 0; c < chunks; ++c) sum[c] = _mm512_setzero_ps();
  for (int64_t s = first; s <= last; ++s) {
    const __m512 p = _mm512_set1_ps(scores[s] / total);
    const c10::BFloat16* value = values + s * hd;
    for (int64_t c = 0; c < chunks; ++c) {
      sum[c] = _mm512_fmadd_ps(p, LoadAsFloat(value + 16 * c, Lanes(hd - 16 * c)), sum[c]);
    }
  }
  alignas(64) float result[kMaxAttentionHeadDim];
  for (int64_t c = 0; c < chunks; ++c) _mm512_store_ps(result + 16 * c, sum[c]);
  for (int64_t i = 0; i < hd; ++i) out[i] = c10::BFloat16(result[i]);
}

}  // namespace

bool CanUseBf16DecodeAttention(const at::Tensor& keys, int64_t query_len) {
  return CpuHasAvx512BwVl() && keys.device().is_cpu() && keys.scalar_type() == at::kBFloat16 &&
         keys.dim() == 4 && keys.size(3) <= kMaxAttentionHeadDim && query_len == 1;
}

at::Tensor Bf16DecodeAttention(const at::Tensor& q, const at::Tensor& keys,
                               const at::Tensor& values, const std::vector<int64_t>& first,
                               const std::vector<int64_t>& last, double scale) {
  const at::Tensor query = q.contiguous();  // [B, H, 1, hd]
  const at::Tensor k = keys.contiguous(), v = values.contiguous();
  const int64_t B = query.size(0), H = query.size(1), hd = query.size(3);
  const int64_t KVH = k.size(1), S = k.size(2), G = H / KVH;
  at::Tensor out = at::empty({B, 1, H * hd}, query.options());
  const auto* qp = query.data_ptr<c10::BFloat16>();
  const auto* kp = k.data_ptr<c10::BFloat16>();
  const auto* vp = v.data_ptr<c10::BFloat16>();
  auto* op = out.data_ptr<c10::BFloat16>();
  const float scale_f = static_cast<float>(scale);
  at::parallel_for(0, B * KVH, /*grain_size=*/1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(S);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / KVH, kv = pair % KVH;
      const c10::BFloat16* k_head = kp + (b * KVH + kv) * S * hd;
      const c10::BFloat16* v_head = vp + (b * KVH + kv) * S * hd;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = kv * G + g;
        AttendHead(qp + (b * H + h) * hd, k_head, v_head, first[b], last[b], hd, scale_f,
                   scores.data(), op + b * H * hd + h * hd);
      }
    }
  });
  return out;
}

}  // namespace steerd
