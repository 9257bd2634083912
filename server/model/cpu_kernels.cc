#include "server/model/cpu_kernels.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

namespace steerd {
namespace {

// Up to this many token rows, memory is the limit: one weight row at a time keeps each
// thread on a single sequential stream, which the hardware prefetchers follow at full
// bandwidth (four interleaved short rows reach only half of it), with two accumulator
// chains per output so a long row is not one serial chain of dot products.
constexpr int64_t kSequentialMaxRows = 8;

// Past it, compute is the limit and the token-lanes path takes over: the token rows are
// repacked as [K / 2][16 lanes][2] (k-pairs, one token per 32-bit lane), each weight
// k-pair is broadcast to all lanes, and one dot-product instruction advances 16 tokens
// of one output. Outputs need no horizontal sums, and each of kLaneTileRows weight rows
// is one accumulator per 16 tokens. Weight rows are read 8 at a time, 4 bytes per step
// each, so their lines are prefetched kLanePrefetchRows rows ahead (without it eight
// interleaved short rows stream from DRAM at half speed; with it the kernel runs at
// 75-90% of the dot-product peak of two cores, against 55-65% for the six-row tiles of
// horizontal dot products it replaced; see BENCHMARKS.md). Short rows are also
// prefetched into L2 kLaneL2PrefetchBytes ahead (+4-7% at K = 896; at K = 4864 the
// first prefetch is already that far ahead, and a second one costs 8%).
constexpr int kLaneTileRows = 8;
constexpr int64_t kLanePrefetchRows = 16;
constexpr int64_t kLaneL2PrefetchBytes = 112 << 10;
constexpr int64_t kLanes = 16;

bool CpuHasAvx512Bf16() {
  static const bool supported = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512bf16");
  return supported;
}

// Adds one 32-wide chunk of K at column k of the weight row to `acc`; kMasked loads only
// the `mask` lanes (the tail of a row whose K is not a multiple of 32).
template <int MR, bool kMasked>
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline void Chunk(
    __m512 (&acc)[MR], const uint16_t* w_row, const uint16_t* x, int64_t m, int64_t K,
    int64_t k, __mmask32 mask) {
  // Sequential reading prefetches the weights 1 KiB ahead into L1 and 16 KiB ahead into
  // L2 (the second: batch-1 decode +6-8%, A/B over four rounds; 64 KiB ahead was no
  // better).
  constexpr int64_t kPrefetch = 512, kL2Prefetch = 8192;  // In elements.
  if (!kMasked) {
    _mm_prefetch(reinterpret_cast<const char*>(w_row + k + kPrefetch), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w_row + k + kL2Prefetch), _MM_HINT_T1);
  }
  const uint16_t* p = w_row + k;
  const __m512bh wv = reinterpret_cast<__m512bh>(kMasked ? _mm512_maskz_loadu_epi16(mask, p)
                                                         : _mm512_loadu_si512(p));
#pragma GCC unroll 8
  for (int b = 0; b < MR; ++b) {
    const uint16_t* q = x + (m + b) * K + k;
    const __m512bh xv = reinterpret_cast<__m512bh>(kMasked ? _mm512_maskz_loadu_epi16(mask, q)
                                                           : _mm512_loadu_si512(q));
    acc[b] = _mm512_dpbf16_ps(acc[b], wv, xv);
  }
}

// Weight row n against token rows [m, m + MR), over all of K. Each output has two
// accumulators, for the even and the odd 32-wide chunks of K, so that one long row is
// two dependency chains instead of one. The order of additions is fixed, so a row's
// result does not depend on which other rows share the call.
template <int MR>
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline void RowTile(
    const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t N,
    int64_t K, int64_t n, int64_t m) {
  const int64_t chunks = K / 32;  // Full 32-wide chunks.
  const __mmask32 tail = K % 32 ? static_cast<__mmask32>((1u << (K % 32)) - 1) : 0;
  const uint16_t* w_row = w + n * K;
  __m512 even[MR], odd[MR];
#pragma GCC unroll 8
  for (int b = 0; b < MR; ++b) even[b] = odd[b] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 2 <= chunks; c += 2) {
    Chunk<MR, false>(even, w_row, x, m, K, c * 32, 0);
    Chunk<MR, false>(odd, w_row, x, m, K, c * 32 + 32, 0);
  }
  if (c < chunks) Chunk<MR, false>(even, w_row, x, m, K, c++ * 32, 0);
  if (tail != 0) {
    if (c % 2 == 1) {
      Chunk<MR, true>(odd, w_row, x, m, K, c * 32, tail);
    } else {
      Chunk<MR, true>(even, w_row, x, m, K, c * 32, tail);
    }
  }
  float b_value = 0.0f;
  if (bias != nullptr) {
    c10::BFloat16 raw;
    raw.x = bias[n];
    b_value = static_cast<float>(raw);
  }
  for (int b = 0; b < MR; ++b) {
    const float sum = _mm512_reduce_add_ps(_mm512_add_ps(even[b], odd[b]));
    y[(m + b) * N + n] = c10::BFloat16(sum + b_value).x;
  }
}

// Weight rows [first_row, last_row) one at a time, against all M token rows.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void SequentialRange(
    const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M,
    int64_t N, int64_t K, int64_t first_row, int64_t last_row) {
  for (int64_t n = first_row; n < last_row; ++n) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) RowTile<4>(x, w, bias, y, N, K, n, m);
    for (; m + 2 <= M; m += 2) RowTile<2>(x, w, bias, y, N, K, n, m);
    for (; m < M; ++m) RowTile<1>(x, w, bias, y, N, K, n, m);
  }
}

// x [M, K] -> packed [ceil(K / 2)][groups * 16][2]: element k of token m at
// ((k / 2) * groups * 16 + m) * 2 + k % 2, i.e. a transpose of 32-bit pairs. `packed`
// comes zeroed (lanes past M and the odd half of an odd K's last pair stay zero).
void PackTokenLanes(const uint16_t* x, int64_t M, int64_t K, int64_t groups,
                    uint16_t* packed) {
  const int64_t full_pairs = K / 2, lanes = groups * kLanes;
  auto* out = reinterpret_cast<uint32_t*>(packed);
  for (int64_t m = 0; m < M; ++m) {
    const uint16_t* row = x + m * K;
    for (int64_t p = 0; p < full_pairs; ++p) std::memcpy(&out[p * lanes + m], row + 2 * p, 4);
    if (K % 2 == 1) packed[(full_pairs * lanes + m) * 2] = row[K - 1];
  }
}

// The weight k-pair `pair` of a row, broadcast to every lane; `odd_tail` is the lone
// last element of an odd K (its partner lane is zero, as in the packed tokens).
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline __m512bh
BroadcastPair(const uint16_t* w_row, int64_t pair, bool odd_tail) {
  uint32_t bits = w_row[2 * pair];
  if (!odd_tail) std::memcpy(&bits, w_row + 2 * pair, sizeof(bits));
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(bits)));
}

// One k-pair of a tile: every weight row's pair times G groups of 16 token lanes, the
// first of them at `packed` in a layout of `groups` groups.
template <int G>
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline void LaneStep(
    __m512 (&acc)[kLaneTileRows][G], const uint16_t* const (&w_row)[kLaneTileRows],
    const uint16_t* packed, int64_t groups, int64_t pair, bool odd_tail) {
  __m512bh xv[G];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    xv[g] = reinterpret_cast<__m512bh>(
        _mm512_loadu_si512(packed + (pair * groups + g) * kLanes * 2));
  }
#pragma GCC unroll 8
  for (int a = 0; a < kLaneTileRows; ++a) {
    const __m512bh wv = BroadcastPair(w_row[a], pair, odd_tail);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) acc[a][g] = _mm512_dpbf16_ps(acc[a][g], wv, xv[g]);
  }
}

// vpermt2w index tables for StoreTransposedTile (indices 0-31 pick from the first
// source, 32-63 from the second). by_four: from two vectors holding columns {a, a+1}
// and {a+2, a+3} (16 tokens each), tokens 0-7 (first half) or 8-15 (second half) as
// m * 4 + column. by_eight: from two such results (columns 0-3 and 4-7), tokens 0-3 or
// 4-7 of them as m * 8 + column.
struct TransposeIndices {
  uint16_t by_four[64];
  uint16_t by_eight[64];
};
constexpr TransposeIndices MakeTransposeIndices() {
  TransposeIndices t{};
  for (int half = 0; half < 2; ++half) {
    for (int m = 0; m < 8; ++m) {
      for (int a = 0; a < 4; ++a) {
        const int token = half * 8 + m;
        t.by_four[half * 32 + m * 4 + a] =
            static_cast<uint16_t>(a < 2 ? a * 16 + token : 32 + (a - 2) * 16 + token);
      }
    }
    for (int m = 0; m < 4; ++m) {
      for (int a = 0; a < 8; ++a) {
        const int token = half * 4 + m;
        t.by_eight[half * 32 + m * 8 + a] =
            static_cast<uint16_t>(a < 4 ? token * 4 + a : 32 + token * 4 + (a - 4));
      }
    }
  }
  return t;
}
constexpr TransposeIndices kTransposeIndices = MakeTransposeIndices();

// Writes columns[a][m] (weight row a, token m; 8 x 16) to y[m * N + a]: two rounds of
// two-source word permutes turn the eight 16-token columns into sixteen 8-output rows,
// 16 stores instead of 128 (+4-10% for the kernel at K = 896).
__attribute__((target("avx512f,avx512bw"), always_inline)) inline void StoreTransposedTile(
    const uint16_t (&columns)[kLaneTileRows][kLanes], uint16_t* y, int64_t N) {
  static_assert(kLaneTileRows == 8 && kLanes == 16, "the index tables are for 8 x 16");
  const __m512i c01 = _mm512_load_si512(columns[0]), c23 = _mm512_load_si512(columns[2]);
  const __m512i c45 = _mm512_load_si512(columns[4]), c67 = _mm512_load_si512(columns[6]);
  const __m512i first_half = _mm512_loadu_si512(kTransposeIndices.by_four);
  const __m512i second_half = _mm512_loadu_si512(kTransposeIndices.by_four + 32);
  // [tokens 0-7 | 8-15] x [columns 0-3 | 4-7], as token * 4 + column.
  const __m512i low_tokens_03 = _mm512_permutex2var_epi16(c01, first_half, c23);
  const __m512i high_tokens_03 = _mm512_permutex2var_epi16(c01, second_half, c23);
  const __m512i low_tokens_47 = _mm512_permutex2var_epi16(c45, first_half, c67);
  const __m512i high_tokens_47 = _mm512_permutex2var_epi16(c45, second_half, c67);
  const __m512i first_four = _mm512_loadu_si512(kTransposeIndices.by_eight);
  const __m512i next_four = _mm512_loadu_si512(kTransposeIndices.by_eight + 32);
  // Tokens 4i to 4i + 3, each as 8 consecutive outputs.
  const __m512i rows[4] = {_mm512_permutex2var_epi16(low_tokens_03, first_four, low_tokens_47),
                           _mm512_permutex2var_epi16(low_tokens_03, next_four, low_tokens_47),
                           _mm512_permutex2var_epi16(high_tokens_03, first_four, high_tokens_47),
                           _mm512_permutex2var_epi16(high_tokens_03, next_four, high_tokens_47)};
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + (4 * i) * N), _mm512_castsi512_si128(rows[i]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + (4 * i + 1) * N),
                     _mm512_extracti32x4_epi32(rows[i], 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + (4 * i + 2) * N),
                     _mm512_extracti32x4_epi32(rows[i], 2));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + (4 * i + 3) * N),
                     _mm512_extracti32x4_epi32(rows[i], 3));
  }
}

// Weight rows [first_row, last_row) in tiles of kLaneTileRows, against `groups` groups
// of 16 token lanes (packed by PackTokenLanes), G of them per pass over a tile (a
// second pass reads the tile's rows from cache). Each output sums its k-pairs in order
// in one lane of one accumulator, so a token's result does not depend on the others.
template <int G>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void LaneRange(
    const uint16_t* packed, int64_t groups, const uint16_t* w, const uint16_t* bias,
    uint16_t* y, int64_t M, int64_t N, int64_t K, int64_t first_row, int64_t last_row) {
  constexpr int NR = kLaneTileRows;
  const int64_t full_pairs = K / 2;
  const int64_t prefetch_bytes = kLanePrefetchRows * K * static_cast<int64_t>(sizeof(uint16_t));
  const bool l2_prefetch = kLaneL2PrefetchBytes > prefetch_bytes;
  for (int64_t n = first_row; n < last_row; n += NR) {
    const int rows = static_cast<int>(std::min<int64_t>(NR, last_row - n));
    const uint16_t* w_row[NR];
#pragma GCC unroll 8
    for (int a = 0; a < NR; ++a) {
      // A short last tile repeats its first row; those sums are computed, not stored.
      w_row[a] = w + (n + (a < rows ? a : 0)) * K;
    }
    for (int64_t first_group = 0; first_group < groups; first_group += G) {
      const uint16_t* pass_packed = packed + first_group * kLanes * 2;
      __m512 acc[NR][G];
#pragma GCC unroll 8
      for (int a = 0; a < NR; ++a) {
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) acc[a][g] = _mm512_setzero_ps();
      }
      int64_t pair = 0;
      // 16 pairs are one 64-byte line of each weight row.
      for (; pair + 16 <= full_pairs; pair += 16) {
#pragma GCC unroll 8
        for (int a = 0; a < NR; ++a) {
          _mm_prefetch(reinterpret_cast<const char*>(w_row[a] + 2 * pair) + prefetch_bytes,
                       _MM_HINT_T0);
        }
        if (l2_prefetch) {
#pragma GCC unroll 8
          for (int a = 0; a < NR; ++a) {
            _mm_prefetch(
                reinterpret_cast<const char*>(w_row[a] + 2 * pair) + kLaneL2PrefetchBytes,
                _MM_HINT_T1);
          }
        }
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) LaneStep<G>(acc, w_row, pass_packed, groups, pair + j, false);
      }
      for (; pair < full_pairs; ++pair) LaneStep<G>(acc, w_row, pass_packed, groups, pair, false);
      if (K % 2 == 1) LaneStep<G>(acc, w_row, pass_packed, groups, pair, true);
      // Round each output to bf16 in its lane, then write the tile's columns: a whole
      // 8 x 16 block transposed in registers, a partial one value by value.
      alignas(64) uint16_t columns[G][NR][kLanes];
#pragma GCC unroll 8
      for (int a = 0; a < NR; ++a) {
        __m512 b_vec = _mm512_setzero_ps();
        if (bias != nullptr) {
          c10::BFloat16 raw;
          raw.x = bias[n + (a < rows ? a : 0)];
          b_vec = _mm512_set1_ps(static_cast<float>(raw));
        }
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) {
          _mm256_store_si256(
              reinterpret_cast<__m256i*>(columns[g][a]),
              reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_add_ps(acc[a][g], b_vec))));
        }
      }
      for (int g = 0; g < G; ++g) {
        const int64_t m0 = (first_group + g) * kLanes;
        if (rows == NR && M - m0 >= kLanes) {
          StoreTransposedTile(columns[g], y + m0 * N + n, N);
          continue;
        }
        for (int64_t m = m0; m < std::min(M, m0 + kLanes); ++m) {
          uint16_t* out = y + m * N + n;
          for (int a = 0; a < rows; ++a) out[a] = columns[g][a][m - m0];
        }
      }
    }
  }
}

// The token-lanes path for token rows [0, M) of x (M <= 4 * kLanes) into the same rows
// of y: threads split the weight rows on tile boundaries, at least 384 rows each.
// (Handing out chunks of tiles from a shared counter instead was 7% slower: the
// threads' prefetches run past their chunks, and each thread no longer streams one
// range.)
void LaneLinear(const uint16_t* xp, const uint16_t* wp, const uint16_t* bp, uint16_t* yp,
                int64_t M, int64_t N, int64_t K) {
  const int64_t groups = (M + kLanes - 1) / kLanes;
  std::vector<uint16_t> packed(static_cast<size_t>((K + 1) / 2 * groups * kLanes * 2));  // Zeroed.
  PackTokenLanes(xp, M, K, groups, packed.data());
  const int64_t tiles = (N + kLaneTileRows - 1) / kLaneTileRows;
  at::parallel_for(0, tiles, /*grain_size=*/384 / kLaneTileRows, [&](int64_t begin, int64_t end) {
    const int64_t first = begin * kLaneTileRows, last = std::min(N, end * kLaneTileRows);
    // Three groups fit the registers in one pass (24 accumulators); four take two passes
    // of two.
    if (groups == 1) {
      LaneRange<1>(packed.data(), groups, wp, bp, yp, M, N, K, first, last);
    } else if (groups == 3) {
      LaneRange<3>(packed.data(), groups, wp, bp, yp, M, N, K, first, last);
    } else {
      LaneRange<2>(packed.data(), groups, wp, bp, yp, M, N, K, first, last);
    }
  });
}

// The conditions of both bf16 linears but the row limit: CPU with AVX512-BF16, bf16
// contiguous operands that fit, K > 0, no grad.
bool Bf16LinearOperandsFit(const at::Tensor& x, const at::Tensor& weight,
                           const at::Tensor& bias) {
  if (!CpuHasAvx512Bf16()) return false;
  if (!x.defined() || !weight.defined() || !x.device().is_cpu() || !weight.device().is_cpu() ||
      x.scalar_type() != at::kBFloat16 || weight.scalar_type() != at::kBFloat16 ||
      weight.dim() != 2 || x.dim() < 1 || x.size(-1) != weight.size(1) || x.size(-1) == 0 ||
      !x.is_contiguous() || !weight.is_contiguous()) {
    return false;
  }
  if (bias.defined() && (!bias.device().is_cpu() || bias.scalar_type() != at::kBFloat16 ||
                         !bias.is_contiguous() || bias.numel() != weight.size(0))) {
    return false;
  }
  return !x.requires_grad() && !weight.requires_grad() &&
         !(bias.defined() && bias.requires_grad());
}

// The uninitialised result of a linear layer of N outputs over x [..., K]: [..., N].
at::Tensor LinearOutput(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return at::empty(shape, x.options());
}

}  // namespace

bool CanUseSmallBatchBf16Linear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias) {
  return Bf16LinearOperandsFit(x, weight, bias) &&
         x.numel() / x.size(-1) <= kSmallBatchLinearMaxRows;
}

at::Tensor SmallBatchBf16Linear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias) {
  static_assert(kSmallBatchLinearMaxRows <= 4 * kLanes, "LaneRange takes up to four groups");
  const int64_t K = weight.size(1), N = weight.size(0), M = x.numel() / K;
  at::Tensor y = LinearOutput(x, N);  // [..., N]
  if (M == 0 || N == 0) return y;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr());
  const auto* bp = bias.defined() ? reinterpret_cast<const uint16_t*>(bias.data_ptr()) : nullptr;
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  if (M <= kSequentialMaxRows) {
    // Threads split the weight rows, at least 64 each.
    at::parallel_for(0, N, /*grain_size=*/64, [&](int64_t begin, int64_t end) {
      SequentialRange(xp, wp, bp, yp, M, N, K, begin, end);
    });
    return y;
  }
  LaneLinear(xp, wp, bp, yp, M, N, K);
  return y;
}

// ---------------------------------------------------------------------------------------
// Float32 small-batch linear.

namespace {

bool CpuHasAvx512FVl() {
  static const bool supported = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512vl");
  return supported;
}

// Lane i of the result is the sum of the 16 lanes of v[i], every one by the same tree:
// lanes j and j + 8, then j and j + 4, j and j + 2, j and j + 1 (the tree of
// _mm512_reduce_add_ps). Sixteen horizontal sums cost 45 instructions this way instead
// of ~130 one by one.
__attribute__((target("avx512f,avx512vl"), always_inline)) inline __m512 SumEachOfSixteen(
    const __m512 (&v)[16]) {
  // The transpose below leaves the sum of input slot t + {0, 8, 4, 12}[b] in lane
  // 4b + t; feeding v[4..7] and v[8..11] in swapped slots puts v[i] in lane i.
  const __m512* s[16] = {&v[0], &v[1], &v[2],  &v[3],  &v[8],  &v[9],  &v[10], &v[11],
                         &v[4], &v[5], &v[6],  &v[7],  &v[12], &v[13], &v[14], &v[15]};
  __m512 u[8], w[4], z[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // Lanes j and j + 8: [slot i | slot i + 8], 8 lanes each.
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(*s[i], *s[i + 8], 0x44),
                         _mm512_shuffle_f32x4(*s[i], *s[i + 8], 0xEE));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // And j + 4: 128-bit blocks [i, i + 8, i + 4, i + 12].
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[i], u[i + 4], 0x88),
                         _mm512_shuffle_f32x4(u[i], u[i + 4], 0xDD));
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {  // And j + 2: per block [w_2i x2, w_2i+1 x2].
    const __m512d a = _mm512_castps_pd(w[2 * i]), b = _mm512_castps_pd(w[2 * i + 1]);
    z[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // And j + 1: per block [w0, w1, w2, w3].
  return _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD));
}

// Stores lanes [B * NR, B * NR + rows) of a tile's sums, output row B, to `out`. B is a
// template argument because the lane-group extracts take it as an immediate: a loop
// index is one only once the optimizer unrolls the loop, which a sanitized build (-O1
// with instrumentation) does not do, and the file then does not compile.
template <int NR, int B>
__attribute__((target("avx512f,avx512vl"))) inline void StoreTileRow(float* out,
                                                                    __mmask16 row_mask,
                                                                    __m512 sums) {
  if constexpr (NR == 16) {
    _mm512_mask_storeu_ps(out, row_mask, sums);
  } else if constexpr (NR == 8) {
    const __m256 half = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sums), B));
    _mm256_mask_storeu_ps(out, static_cast<__mmask8>(row_mask), half);
  } else {
    _mm_mask_storeu_ps(out, static_cast<__mmask8>(row_mask), _mm512_extractf32x4_ps(sums, B));
  }
}

// Stores output rows B... of a tile: y[m0 + b][n0 + a] for a < rows.
template <int NR, int... B>
__attribute__((target("avx512f,avx512vl"))) inline void StoreTileRows(
    float* y, int64_t N, int64_t n0, int64_t m0, __mmask16 row_mask, __m512 sums,
    std::integer_sequence<int, B...>) {
  (StoreTileRow<NR, B>(y + (m0 + B) * N + n0, row_mask, sums), ...);
}

// Outputs y[m0 + b][n0 + a] for a < rows (<= NR), b < MR: NR * MR = 16 dot products of
// length K, one accumulator each, 16-wide chunks of K added in order from k = 0 (the
// tail chunk masked), then summed across lanes by SumEachOfSixteen and the bias added.
// Every output takes exactly these steps whatever the tile shape, so its value does not
// depend on M or on the other rows of the call.
template <int NR, int MR>
__attribute__((target("avx512f,avx512vl"))) void F32Tile(const float* x, const float* w,
                                                         const float* bias, float* y,
                                                         int64_t N, int64_t K, int64_t n0,
                                                         int rows, int64_t m0) {
  static_assert(NR * MR == 16, "one accumulator per lane of the reduction");
  __m512 acc[NR][MR];
  const float* w_row[NR];
  const float* x_row[MR];
#pragma GCC unroll 16
  for (int a = 0; a < NR; ++a) {
    // A short last tile repeats its first row; those sums are computed, not stored.
    w_row[a] = w + (n0 + (a < rows ? a : 0)) * K;
#pragma GCC unroll 16
    for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_setzero_ps();
  }
#pragma GCC unroll 16
  for (int b = 0; b < MR; ++b) x_row[b] = x + (m0 + b) * K;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 xv[MR];
#pragma GCC unroll 16
    for (int b = 0; b < MR; ++b) xv[b] = _mm512_loadu_ps(x_row[b] + k);
#pragma GCC unroll 16
    for (int a = 0; a < NR; ++a) {
      const __m512 wv = _mm512_loadu_ps(w_row[a] + k);
#pragma GCC unroll 16
      for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_fmadd_ps(wv, xv[b], acc[a][b]);
    }
  }
  if (k < K) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 xv[MR];
#pragma GCC unroll 16
    for (int b = 0; b < MR; ++b) xv[b] = _mm512_maskz_loadu_ps(tail, x_row[b] + k);
#pragma GCC unroll 16
    for (int a = 0; a < NR; ++a) {
      const __m512 wv = _mm512_maskz_loadu_ps(tail, w_row[a] + k);
#pragma GCC unroll 16
      for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_fmadd_ps(wv, xv[b], acc[a][b]);
    }
  }
  // Lane b * NR + a holds output (b, a).
  __m512 v[16];
#pragma GCC unroll 16
  for (int b = 0; b < MR; ++b) {
#pragma GCC unroll 16
    for (int a = 0; a < NR; ++a) v[b * NR + a] = acc[a][b];
  }
  __m512 sums = SumEachOfSixteen(v);
  const __mmask16 row_mask = static_cast<__mmask16>((1u << rows) - 1);
  if (bias != nullptr) {
    // The tile's NR biases repeated in each group of NR lanes.
    const __m512 b_vec =
        NR == 16 ? _mm512_maskz_loadu_ps(row_mask, bias + n0)
        : NR == 8
            ? _mm512_castpd_ps(_mm512_broadcast_f64x4(
                  _mm256_castps_pd(_mm256_maskz_loadu_ps(static_cast<__mmask8>(row_mask),
                                                         bias + n0))))
            : _mm512_broadcast_f32x4(_mm_maskz_loadu_ps(static_cast<__mmask8>(row_mask),
                                                         bias + n0));
    sums = _mm512_add_ps(sums, b_vec);
  }
  StoreTileRows<NR>(y, N, n0, m0, row_mask, sums, std::make_integer_sequence<int, MR>());
}

// Weight rows [first, last) against all M token rows: 4 x 4 tiles for each group of four
// token rows, then 8 x 2 and 16 x 1 tiles for the last one to three.
__attribute__((target("avx512f,avx512vl"))) void F32RowRange(const float* x, const float* w,
                                                             const float* bias, float* y,
                                                             int64_t M, int64_t N, int64_t K,
                                                             int64_t first, int64_t last) {
  const int64_t full = M / 4 * 4;
  for (int64_t n0 = first; n0 < last; n0 += 16) {
    const int64_t block_end = std::min(last, n0 + 16);
    if (full > 0) {
      // Four weight rows stay in L1 while every token row passes them.
      for (int64_t n = n0; n < block_end; n += 4) {
        const int rows = static_cast<int>(std::min<int64_t>(4, block_end - n));
        for (int64_t m = 0; m < full; m += 4) F32Tile<4, 4>(x, w, bias, y, N, K, n, rows, m);
      }
    }
    int64_t m = full;
    if (M - m >= 2) {
      for (int64_t n = n0; n < block_end; n += 8) {
        F32Tile<8, 2>(x, w, bias, y, N, K, n, static_cast<int>(std::min<int64_t>(8, block_end - n)), m);
      }
      m += 2;
    }
    if (M - m >= 1) {
      F32Tile<16, 1>(x, w, bias, y, N, K, n0, static_cast<int>(block_end - n0), m);
    }
  }
}

// Token rows [0, M) of x into the same rows of y. Threads split the weight rows in
// blocks of 16; a block is 16 * M * K multiply-adds, and a thread is worth waking for
// ~64K of them (~1.5 us; measured: batch-1 decode of steerd-tiny on 2 threads 160 ->
// 127 us per step against 256K, larger batches the same). The split does not change a
// value.
void F32Linear(const float* xp, const float* wp, const float* bp, float* yp, int64_t M,
               int64_t N, int64_t K) {
  const int64_t blocks = (N + 15) / 16;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, 16 * M * K));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    F32RowRange(xp, wp, bp, yp, M, N, K, begin * 16, std::min(N, end * 16));
  });
}

// The conditions of both float32 linears but the row limit.
bool F32LinearOperandsFit(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& bias) {
  if (!CpuHasAvx512FVl()) return false;
  if (!x.defined() || !weight.defined() || !x.device().is_cpu() ||
      !weight.device().is_cpu() || x.scalar_type() != at::kFloat ||
      weight.scalar_type() != at::kFloat || weight.dim() != 2 || x.dim() < 1 ||
      x.size(-1) != weight.size(1) || x.size(-1) == 0 || !x.is_contiguous() ||
      !weight.is_contiguous()) {
    return false;
  }
  if (bias.defined() && (!bias.device().is_cpu() || bias.scalar_type() != at::kFloat ||
                         !bias.is_contiguous() || bias.numel() != weight.size(0))) {
    return false;
  }
  // Autograd never goes through the kernel (the trainer's forward).
  return !(at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad() ||
                                          (bias.defined() && bias.requires_grad())));
}

}  // namespace

bool CanUseSmallBatchF32Linear(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias) {
  if (!F32LinearOperandsFit(x, weight, bias)) return false;
  const int64_t rows = x.numel() / x.size(-1);
  return rows <= kSmallBatchF32LinearMaxRows ||
         (rows <= kSmallBatchF32LinearMaxPrefillRows &&
          rows * x.size(-1) * static_cast<int64_t>(sizeof(float)) <=
              kSmallBatchF32LinearMaxBytes);
}

at::Tensor SmallBatchF32Linear(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias) {
  const int64_t K = weight.size(1), N = weight.size(0), M = x.numel() / K;
  at::Tensor y = LinearOutput(x, N);  // [..., N]
  if (M == 0 || N == 0) return y;
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  F32Linear(xp, wp, bp, yp, M, N, K);
  return y;
}

// ---------------------------------------------------------------------------------------
// Batch-invariant linear (prefill).

bool CanUseBatchInvariantLinear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias) {
  if (!x.defined()) return false;
  if (x.scalar_type() == at::kBFloat16) return Bf16LinearOperandsFit(x, weight, bias);
  if (x.scalar_type() == at::kFloat) return F32LinearOperandsFit(x, weight, bias);
  return false;
}

at::Tensor BatchInvariantLinear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias) {
  const int64_t K = weight.size(1), N = weight.size(0), M = x.numel() / K;
  at::Tensor y = LinearOutput(x, N);  // [..., N]
  if (M == 0 || N == 0) return y;
  if (x.scalar_type() == at::kBFloat16) {
    const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
    const auto* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr());
    const auto* bp = bias.defined() ? reinterpret_cast<const uint16_t*>(bias.data_ptr()) : nullptr;
    auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
    // Each output is one lane of one accumulator whichever lane, group and chunk its
    // row lands in: chunking changes no value.
    for (int64_t m = 0; m < M; m += kSmallBatchLinearMaxRows) {
      LaneLinear(xp + m * K, wp, bp, yp + m * N, std::min(kSmallBatchLinearMaxRows, M - m), N, K);
    }
    return y;
  }
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // Chunks as large as SmallBatchF32Linear takes them (the rows in ~1 MiB, re-read
  // from L2 for every four weight rows); every output takes the same steps in any.
  const int64_t chunk = std::clamp<int64_t>(
      kSmallBatchF32LinearMaxBytes / (K * static_cast<int64_t>(sizeof(float))),
      kSmallBatchF32LinearMaxRows, kSmallBatchF32LinearMaxPrefillRows);
  for (int64_t m = 0; m < M; m += chunk) {
    F32Linear(xp + m * K, wp, bp, yp + m * N, std::min(chunk, M - m), N, K);
  }
  return y;
}

bool CanUseF32RmsNorm(const at::Tensor& x, const at::Tensor& weight) {
  return CpuHasAvx512FVl() && x.defined() && weight.defined() && x.device().is_cpu() &&
         weight.device().is_cpu() && x.scalar_type() == at::kFloat &&
         weight.scalar_type() == at::kFloat && x.is_contiguous() && weight.is_contiguous() &&
         x.dim() >= 1 && weight.dim() == 1 && x.size(-1) == weight.size(0) && x.size(-1) > 0 &&
         !(at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad()));
}

namespace {

// One row: weight * (x * (1 / sqrt(mean(x^2) + eps))), the sum of squares in 16 lanes
// (chunks in order from the row's start) then summed across lanes.
__attribute__((target("avx512f,avx512vl"))) void F32RmsNormRow(const float* in, const float* w,
                                                               float* out, int64_t d,
                                                               float eps) {
  __m512 squares = _mm512_setzero_ps();
  for (int64_t i = 0; i < d; i += 16) {
    const __mmask16 lanes = d - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                                        : static_cast<__mmask16>((1u << (d - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(lanes, in + i);
    squares = _mm512_fmadd_ps(v, v, squares);
  }
  const float mean = _mm512_reduce_add_ps(squares) / static_cast<float>(d);
  const __m512 inverse_rms = _mm512_set1_ps(1.0f / std::sqrt(mean + eps));
  for (int64_t i = 0; i < d; i += 16) {
    const __mmask16 lanes = d - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                                        : static_cast<__mmask16>((1u << (d - i)) - 1);
    const __m512 normed = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, in + i), inverse_rms);
    _mm512_mask_storeu_ps(out + i, lanes,
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, w + i), normed));
  }
}

}  // namespace

at::Tensor F32RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t d = x.size(-1), rows = x.numel() / d;
  at::Tensor y = at::empty(x.sizes(), x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float epsilon = static_cast<float>(eps);
  at::parallel_for(0, rows, /*grain_size=*/std::max<int64_t>(1, 65536 / d),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t r = begin; r < end; ++r) {
                       F32RmsNormRow(xp + r * d, wp, yp + r * d, d, epsilon);
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

// exp(x) in 16 lanes (Cephes' expf: 2^n * p(r), r = x - n ln 2, within 2 ulp),
// flushing below e^-87 to ~1e-38 (which neither a softmax nor 1 + exp(x) can tell from
// 0) and overflowing to infinity above ~88.7.
__attribute__((target("avx512f,avx512vl"), always_inline)) inline __m512 Exp(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.8f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

// 16 floats rounded to bf16 as c10::BFloat16 does (to nearest even; NaN -> 0x7FC0),
// with AVX-512F integer arithmetic.
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline __m256i
RoundToBf16Bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                                  _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(rounded);
}

// 16 floats rounded to bf16 values (as RoundToBf16Bits), kept as floats.
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline __m512 RoundedToBf16(
    __m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(RoundToBf16Bits(v)), 16));
}

// One row of Bf16RmsNorm: the sum of squares in 16 float32 lanes, then
// weight * bf16(x * inverse_rms), each product rounded to bf16.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void Bf16RmsNormRow(
    const c10::BFloat16* in, const c10::BFloat16* weight, c10::BFloat16* out, int64_t d,
    float eps) {
  __m512 squares = _mm512_setzero_ps();
  for (int64_t i = 0; i < d; i += 16) {
    const __m512 v = LoadAsFloat(in + i, Lanes(d - i));
    squares = _mm512_fmadd_ps(v, v, squares);
  }
  const float mean = _mm512_reduce_add_ps(squares) / static_cast<float>(d);
  const __m512 inverse_rms = _mm512_set1_ps(1.0f / std::sqrt(mean + eps));
  for (int64_t i = 0; i < d; i += 16) {
    const __mmask16 lanes = Lanes(d - i);
    const __m256i normed = RoundToBf16Bits(_mm512_mul_ps(LoadAsFloat(in + i, lanes), inverse_rms));
    const __m512 normed_f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(normed), 16));
    _mm256_mask_storeu_epi16(out + i, lanes,
                             RoundToBf16Bits(_mm512_mul_ps(LoadAsFloat(weight + i, lanes), normed_f)));
  }
}

}  // namespace

bool CanUseBf16RmsNorm(const at::Tensor& x, const at::Tensor& weight) {
  return CpuHasAvx512BwVl() && x.device().is_cpu() && x.scalar_type() == at::kBFloat16 &&
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
    for (int64_t r = begin; r < end; ++r) Bf16RmsNormRow(xp + r * d, wp, yp + r * d, d, epsilon);
  });
  return y;
}

namespace {

// Where the attention kernels find the key or value row ([hd] elements) of position s
// of one (sequence, KV head): rows(s). The kernels' arithmetic is the same for every
// accessor, so a paged cache gives bit for bit the results of a contiguous one holding
// the same rows. Span(s) is row s and how many rows from s on follow it contiguously
// (hd apart), so that loops find most rows by a pointer step.
// A contiguous cache [S, hd]: row s at base + s * hd.
template <typename T>
struct ContiguousRows {
  const T* base;
  int64_t hd;
  const T* operator()(int64_t s) const { return base + s * hd; }
  std::pair<const T*, int64_t> Span(int64_t s) const {
    return {base + s * hd, std::numeric_limits<int64_t>::max() / 4};
  }
};

// A paged cache: position s in block s / block_size, slot s % block_size, where
// blocks[i] points at slot 0 of the sequence's i-th block for this KV head (each block
// holds block_size rows of hd contiguously). The block size is a power of two
// (1 << shift), so finding a row costs a shift, a mask and one load. (Software
// prefetching of the next blocks, 4 to 16 blocks ahead, measured no faster.)
template <typename T>
struct PagedRows {
  const T* const* blocks;  // [blocks covering positions 0..last]
  int shift;               // log2(block_size)
  int64_t hd;

  const T* operator()(int64_t s) const {
    return blocks[s >> shift] + (s & ((int64_t{1} << shift) - 1)) * hd;
  }
  std::pair<const T*, int64_t> Span(int64_t s) const {
    const int64_t block_size = int64_t{1} << shift;
    return {(*this)(s), block_size - (s & (block_size - 1))};
  }
};

// One query head against keys/values [first, last] of its KV head: scores, softmax and
// the weighted sum of values in float32, 16 lanes at a time. Scores are computed 16
// columns at a time (16 partial dot products summed across lanes in one transpose) and
// exponentiated 16 at a time. `scores` has room for last + 1 floats. Rows is
// ContiguousRows or PagedRows of c10::BFloat16.
template <typename Rows>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void AttendHead(
    const c10::BFloat16* q, Rows keys, Rows values, int64_t first, int64_t last, int64_t hd,
    float scale, float* scores, c10::BFloat16* out) {
  const int64_t chunks = (hd + 15) / 16;
  __m512 query[kMaxAttentionHeadDim / 16];
  for (int64_t c = 0; c < chunks; ++c) query[c] = LoadAsFloat(q + 16 * c, Lanes(hd - 16 * c));
  __m512 max_scores = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t s0 = first; s0 <= last; s0 += 16) {
    const int64_t columns = std::min<int64_t>(16, last + 1 - s0);
    const auto [group, run] = keys.Span(s0);
    __m512 dots[16];
    for (int64_t j = 0; j < 16; ++j) {
      dots[j] = _mm512_setzero_ps();
      if (j >= columns) continue;
      const c10::BFloat16* key = j < run ? group + j * hd : keys(s0 + j);
      for (int64_t c = 0; c < chunks; ++c) {
        dots[j] = _mm512_fmadd_ps(query[c], LoadAsFloat(key + 16 * c, Lanes(hd - 16 * c)), dots[j]);
      }
    }
    const __mmask16 lanes = Lanes(columns);
    const __m512 block = _mm512_mul_ps(SumEachOfSixteen(dots), _mm512_set1_ps(scale));
    _mm512_mask_storeu_ps(scores + s0, lanes, block);
    max_scores = _mm512_mask_max_ps(max_scores, lanes, max_scores, block);
  }
  const __m512 max_score = _mm512_set1_ps(_mm512_reduce_max_ps(max_scores));
  __m512 totals = _mm512_setzero_ps();
  for (int64_t s0 = first; s0 <= last; s0 += 16) {
    const __mmask16 lanes = Lanes(last + 1 - s0);
    const __m512 e = Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, scores + s0), max_score));
    _mm512_mask_storeu_ps(scores + s0, lanes, e);
    totals = _mm512_mask_add_ps(totals, lanes, totals, e);
  }
  const float total = _mm512_reduce_add_ps(totals);
  __m512 sum[kMaxAttentionHeadDim / 16];
  for (int64_t c = 0; c < chunks; ++c) sum[c] = _mm512_setzero_ps();
  for (int64_t s = first; s <= last;) {
    auto [value, run] = values.Span(s);  // Rows [s, end) follow each other.
    const int64_t end = last + 1 - s <= run ? last + 1 : s + run;
    for (; s < end; ++s, value += hd) {
      const __m512 p = _mm512_set1_ps(scores[s] / total);
      for (int64_t c = 0; c < chunks; ++c) {
        sum[c] = _mm512_fmadd_ps(p, LoadAsFloat(value + 16 * c, Lanes(hd - 16 * c)), sum[c]);
      }
    }
  }
  for (int64_t c = 0; c < chunks; ++c) {
    _mm256_mask_storeu_epi16(out + 16 * c, Lanes(hd - 16 * c), RoundToBf16Bits(sum[c]));
  }
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
        AttendHead(qp + (b * H + h) * hd, ContiguousRows<c10::BFloat16>{k_head, hd},
                   ContiguousRows<c10::BFloat16>{v_head, hd}, first[b], last[b], hd, scale_f,
                   scores.data(), op + b * H * hd + h * hd);
      }
    }
  });
  return out;
}

namespace {

// The operands of a fused decode step (RoPE, cache write, attention) with elements of
// type T, and their shapes in one place: q [B, 1, H * hd], k, v [B, 1, KVH * hd] (the
// projections), cos, sin [B, ..., hd] (one position per row), the caches
// [B, KVH, S, hd] (contiguous, written) and the output [B, 1, H * hd].
template <typename T>
struct RopeDecodeOperands {
  RopeDecodeOperands(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                     const at::Tensor& cos_in, const at::Tensor& sin_in, at::Tensor& cache_k,
                     at::Tensor& cache_v)
      : q_tensor(q_in.contiguous()),
        k_tensor(k_in.contiguous()),
        v_tensor(v_in.contiguous()),
        cos_tensor(cos_in.contiguous()),
        sin_tensor(sin_in.contiguous()),
        B(cache_k.size(0)),
        KVH(cache_k.size(1)),
        S(cache_k.size(2)),
        hd(cache_k.size(3)),
        H(q_tensor.numel() / (B * hd)),
        G(H / KVH),
        out(at::empty({B, 1, H * hd}, q_tensor.options())),
        keys(cache_k.data_ptr<T>()),
        values(cache_v.data_ptr<T>()) {}

  const T* Query(int64_t b, int64_t h) const { return q_tensor.data_ptr<T>() + (b * H + h) * hd; }
  const T* Cos(int64_t b) const { return cos_tensor.data_ptr<T>() + b * hd; }
  const T* Sin(int64_t b) const { return sin_tensor.data_ptr<T>() + b * hd; }
  T* KeyHead(int64_t b, int64_t kv) const { return keys + (b * KVH + kv) * S * hd; }
  T* ValueHead(int64_t b, int64_t kv) const { return values + (b * KVH + kv) * S * hd; }
  T* Out(int64_t b, int64_t h) const { return out.data_ptr<T>() + (b * H + h) * hd; }

  // Writes row b's new key, rotated by rope(x, cos, sin, hd, out), and its value to
  // column `column` of KV head kv's cache.
  template <typename Rope>
  void WriteKeyValue(int64_t b, int64_t kv, int64_t column, Rope rope) const {
    const int64_t offset = (b * KVH + kv) * hd;
    rope(k_tensor.data_ptr<T>() + offset, Cos(b), Sin(b), hd, KeyHead(b, kv) + column * hd);
    const T* value = v_tensor.data_ptr<T>() + offset;
    std::copy(value, value + hd, ValueHead(b, kv) + column * hd);
  }

  const at::Tensor q_tensor, k_tensor, v_tensor, cos_tensor, sin_tensor;
  const int64_t B, KVH, S, hd, H, G;
  at::Tensor out;
  T* const keys;
  T* const values;
};

// Hugging Face's RoPE for bf16 on one head, rounding where ATen's bf16 ops round:
// out = bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)), rotate_half(x) = [-x2, x1].
// x, cos, sin, out: [hd], hd even.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void Bf16RopeHead(
    const c10::BFloat16* x, const c10::BFloat16* cos, const c10::BFloat16* sin, int64_t hd,
    c10::BFloat16* out) {
  const int64_t half = hd / 2;
  for (int64_t c = 0; c < half; c += 16) {
    const __mmask16 lanes = Lanes(half - c);
    const __m512 lo = LoadAsFloat(x + c, lanes), hi = LoadAsFloat(x + half + c, lanes);
    const __m512 neg_hi = _mm512_sub_ps(_mm512_setzero_ps(), hi);
    const __m512 out_lo =
        _mm512_add_ps(RoundedToBf16(_mm512_mul_ps(lo, LoadAsFloat(cos + c, lanes))),
                      RoundedToBf16(_mm512_mul_ps(neg_hi, LoadAsFloat(sin + c, lanes))));
    const __m512 out_hi =
        _mm512_add_ps(RoundedToBf16(_mm512_mul_ps(hi, LoadAsFloat(cos + half + c, lanes))),
                      RoundedToBf16(_mm512_mul_ps(lo, LoadAsFloat(sin + half + c, lanes))));
    _mm256_mask_storeu_epi16(out + c, lanes, RoundToBf16Bits(out_lo));
    _mm256_mask_storeu_epi16(out + half + c, lanes, RoundToBf16Bits(out_hi));
  }
}

}  // namespace

bool CanUseBf16RopeDecodeAttention(const at::Tensor& keys, int64_t query_len) {
  return CanUseBf16DecodeAttention(keys, query_len) && keys.is_contiguous() &&
         keys.size(3) % 2 == 0;
}

at::Tensor Bf16RopeDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& cos, const at::Tensor& sin,
                                   at::Tensor& cache_k, at::Tensor& cache_v,
                                   const std::vector<int64_t>& first,
                                   const std::vector<int64_t>& write_at, double scale) {
  const RopeDecodeOperands<c10::BFloat16> op(q, k, v, cos, sin, cache_k, cache_v);
  const float scale_f = static_cast<float>(scale);
  at::parallel_for(0, op.B * op.KVH, /*grain_size=*/1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(op.S);
    std::vector<c10::BFloat16> rotated(op.hd);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / op.KVH, kv = pair % op.KVH;
      op.WriteKeyValue(b, kv, write_at[b], Bf16RopeHead);
      for (int64_t g = 0; g < op.G; ++g) {
        const int64_t h = kv * op.G + g;
        Bf16RopeHead(op.Query(b, h), op.Cos(b), op.Sin(b), op.hd, rotated.data());
        AttendHead(rotated.data(), ContiguousRows<c10::BFloat16>{op.KeyHead(b, kv), op.hd},
                   ContiguousRows<c10::BFloat16>{op.ValueHead(b, kv), op.hd}, first[b],
                   write_at[b], op.hd, scale_f, scores.data(), op.Out(b, h));
      }
    }
  });
  return op.out;
}

namespace {


// kHeads query heads of one KV head (consecutive in q and out, hd apart) against its
// keys/values [first, last], in float32; the heads share loads and run side by side.
// Each head's steps are fixed and relative to `first` (scores 16 positions at a time,
// each the same lane tree of the same per-lane products; the softmax sum block by
// block; values in kSets interleaved chains added pairwise), so a head's result depends
// only on its own query and columns (kHeads and kSets depend only on the model's
// shape). `scores` has room for kHeads rows of `score_stride` >= last - first + 16.
// kChunks >= ceil(hd / 16). Rows is ContiguousRows or PagedRows of float.
template <int kChunks, int kHeads, typename Rows>
__attribute__((target("avx512f,avx512vl"))) void F32AttendGroup(
    const float* q, Rows keys, Rows values, int64_t first, int64_t last, int64_t hd,
    float scale, float* scores, int64_t score_stride, float* out) {
  __mmask16 lanes[kChunks];
#pragma GCC unroll 16
  for (int c = 0; c < kChunks; ++c) {
    const int64_t left = hd - 16 * c;
    lanes[c] = left >= 16 ? static_cast<__mmask16>(0xFFFF)
               : left > 0 ? static_cast<__mmask16>((1u << left) - 1)
                          : static_cast<__mmask16>(0);
  }
  const int64_t n = last - first + 1;
  const __m512 scale_v = _mm512_set1_ps(scale);
  __m512 max_v[kHeads];
#pragma GCC unroll 8
  for (int g = 0; g < kHeads; ++g) max_v[g] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t s0 = 0; s0 < n; s0 += 16) {
    const __mmask16 valid = n - s0 >= 16 ? static_cast<__mmask16>(0xFFFF)
                                         : static_cast<__mmask16>((1u << (n - s0)) - 1);
    // Positions past `last` repeat it; their scores are never used.
    const auto [group, run] = keys.Span(first + s0);
    const float* key_rows[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      const int64_t s = std::min<int64_t>(s0 + i, n - 1) - s0;
      key_rows[i] = s < run ? group + s * hd : keys(first + s0 + s);
    }
#pragma GCC unroll 8
    for (int g = 0; g < kHeads; ++g) {
      const float* query = q + g * hd;
      __m512 dots[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) {
        const float* key = key_rows[i];
        __m512 dot = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes[0], query),
                                   _mm512_maskz_loadu_ps(lanes[0], key));
#pragma GCC unroll 16
        for (int c = 1; c < kChunks; ++c) {
          dot = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes[c], query + 16 * c),
                                _mm512_maskz_loadu_ps(lanes[c], key + 16 * c), dot);
        }
        dots[i] = dot;
      }
      const __m512 block = _mm512_mul_ps(SumEachOfSixteen(dots), scale_v);
      max_v[g] = _mm512_mask_max_ps(max_v[g], valid, max_v[g], block);
      _mm512_storeu_ps(scores + g * score_stride + s0, block);
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < kHeads; ++g) {
    float* row = scores + g * score_stride;
    const __m512 max_score = _mm512_set1_ps(_mm512_reduce_max_ps(max_v[g]));
    __m512 total_v = _mm512_setzero_ps();
    for (int64_t s0 = 0; s0 < n; s0 += 16) {
      const __mmask16 valid = n - s0 >= 16 ? static_cast<__mmask16>(0xFFFF)
                                           : static_cast<__mmask16>((1u << (n - s0)) - 1);
      const __m512 e =
          _mm512_maskz_mov_ps(valid, Exp(_mm512_sub_ps(_mm512_loadu_ps(row + s0), max_score)));
      total_v = _mm512_add_ps(total_v, e);
      _mm512_storeu_ps(row + s0, e);
    }
    const __m512 total = _mm512_set1_ps(_mm512_reduce_add_ps(total_v));
    for (int64_t s0 = 0; s0 < n; s0 += 16) {
      _mm512_storeu_ps(row + s0, _mm512_div_ps(_mm512_loadu_ps(row + s0), total));
    }
  }
  // The weighted sum of values: kSets interleaved chains per head and chunk (position s
  // feeds chain s % kSets), added pairwise at the end.
  constexpr int kChains = kHeads * kChunks;
  constexpr int kSets = kChains <= 4 ? 4 : kChains <= 8 ? 2 : 1;
  __m512 sum[kSets][kHeads][kChunks];
#pragma GCC unroll 4
  for (int j = 0; j < kSets; ++j) {
#pragma GCC unroll 8
    for (int g = 0; g < kHeads; ++g) {
#pragma GCC unroll 16
      for (int c = 0; c < kChunks; ++c) sum[j][g][c] = _mm512_setzero_ps();
    }
  }
  int64_t s = 0;
  const float* row = nullptr;  // Rows [s, s + run) follow each other from `row`.
  int64_t run = 0;
  for (; s + kSets <= n; s += kSets) {
    if (run < kSets) std::tie(row, run) = values.Span(first + s);
    const float* value_rows[kSets];
#pragma GCC unroll 4
    for (int j = 0; j < kSets; ++j) value_rows[j] = j < run ? row + j * hd : values(first + s + j);
    if (run >= kSets) {
      row += kSets * hd;
      run -= kSets;
    } else {
      run = 0;  // Across the end of a span: a new one next time.
    }
#pragma GCC unroll 4
    for (int j = 0; j < kSets; ++j) {
      __m512 v[kChunks];
#pragma GCC unroll 16
      for (int c = 0; c < kChunks; ++c) v[c] = _mm512_maskz_loadu_ps(lanes[c], value_rows[j] + 16 * c);
#pragma GCC unroll 8
      for (int g = 0; g < kHeads; ++g) {
        const __m512 p = _mm512_set1_ps(scores[g * score_stride + s + j]);
#pragma GCC unroll 16
        for (int c = 0; c < kChunks; ++c) sum[j][g][c] = _mm512_fmadd_ps(p, v[c], sum[j][g][c]);
      }
    }
  }
  if (s < n) {
    // The last positions: chains past the end add 0 * (the last value), which leaves
    // them as they are (the probabilities past n are stored as 0).
#pragma GCC unroll 4
    for (int j = 0; j < kSets; ++j) {
      const float* row = values(first + std::min<int64_t>(s + j, n - 1));
      __m512 v[kChunks];
#pragma GCC unroll 16
      for (int c = 0; c < kChunks; ++c) v[c] = _mm512_maskz_loadu_ps(lanes[c], row + 16 * c);
#pragma GCC unroll 8
      for (int g = 0; g < kHeads; ++g) {
        const __m512 p = _mm512_set1_ps(scores[g * score_stride + s + j]);
#pragma GCC unroll 16
        for (int c = 0; c < kChunks; ++c) sum[j][g][c] = _mm512_fmadd_ps(p, v[c], sum[j][g][c]);
      }
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < kHeads; ++g) {
#pragma GCC unroll 16
    for (int c = 0; c < kChunks; ++c) {
      __m512 total_c = sum[0][g][c];
      if (kSets == 4) {
        total_c = _mm512_add_ps(_mm512_add_ps(sum[0][g][c], sum[1][g][c]),
                                _mm512_add_ps(sum[2][g][c], sum[3][g][c]));
      } else if (kSets == 2) {
        total_c = _mm512_add_ps(sum[0][g][c], sum[1][g][c]);
      }
      _mm512_mask_storeu_ps(out + g * hd + 16 * c, lanes[c], total_c);
    }
  }
}

template <typename Rows>
using F32AttendGroupFn = void (*)(const float*, Rows, Rows, int64_t, int64_t, int64_t, float,
                                  float*, int64_t, float*);

template <int kChunks, typename Rows>
F32AttendGroupFn<Rows> GroupFn(int heads) {
  switch (heads) {
    case 1: return &F32AttendGroup<kChunks, 1, Rows>;
    case 2: return &F32AttendGroup<kChunks, 2, Rows>;
    case 3: return &F32AttendGroup<kChunks, 3, Rows>;
    default: return &F32AttendGroup<kChunks, 4, Rows>;
  }
}

// How a KV head's G query heads run: groups of at most four, as even as possible. Rows
// says how the cache is laid out (ContiguousRows or PagedRows of float).
template <typename Rows>
struct AttendPlan {
  int64_t hd = 0, G = 0;
  std::vector<int64_t> group_first;  // First head of each group, then G.
  std::vector<F32AttendGroupFn<Rows>> fns;

  AttendPlan(int64_t head_dim, int64_t heads_per_kv) : hd(head_dim), G(heads_per_kv) {
    const int64_t groups = (G + 3) / 4;
    for (int64_t i = 0, h = 0; i < groups; ++i) {
      const int64_t size = (G - h) / (groups - i);  // Larger groups last.
      group_first.push_back(h);
      const int heads = static_cast<int>(size);
      fns.push_back(hd <= 32    ? GroupFn<2, Rows>(heads)
                    : hd <= 64  ? GroupFn<4, Rows>(heads)
                    : hd <= 128 ? GroupFn<8, Rows>(heads)
                                : GroupFn<16, Rows>(heads));
      h += size;
    }
    group_first.push_back(G);
  }

  // All G heads of one KV head: q and out hold them consecutively (hd apart).
  void Run(const float* q, Rows keys, Rows values, int64_t first, int64_t last, float scale,
           float* scores, int64_t score_stride, float* out) const {
    for (size_t i = 0; i + 1 < group_first.size(); ++i) {
      const int64_t h = group_first[i];
      fns[i](q + h * hd, keys, values, first, last, hd, scale, scores, score_stride,
             out + h * hd);
    }
  }
};

}  // namespace

bool CanUseF32DecodeAttention(const at::Tensor& keys, int64_t query_len) {
  return CpuHasAvx512FVl() && keys.defined() && keys.device().is_cpu() &&
         keys.scalar_type() == at::kFloat && keys.dim() == 4 && keys.size(3) > 0 &&
         keys.size(3) <= kMaxAttentionHeadDim && query_len == 1;
}

at::Tensor F32DecodeAttention(const at::Tensor& q, const at::Tensor& keys,
                              const at::Tensor& values, const std::vector<int64_t>& first,
                              const std::vector<int64_t>& last, double scale) {
  const at::Tensor query = q.contiguous();  // [B, H, 1, hd]
  const at::Tensor k = keys.contiguous(), v = values.contiguous();
  const int64_t B = query.size(0), H = query.size(1), hd = query.size(3);
  const int64_t KVH = k.size(1), S = k.size(2), G = H / KVH;
  at::Tensor out = at::empty({B, 1, H * hd}, query.options());
  const float* qp = query.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float scale_f = static_cast<float>(scale);
  const AttendPlan<ContiguousRows<float>> plan(hd, G);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(1, G * S * hd));
  at::parallel_for(0, B * KVH, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(4 * (S + 16));
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / KVH, kv = pair % KVH;
      plan.Run(qp + (b * H + kv * G) * hd,
               ContiguousRows<float>{kp + (b * KVH + kv) * S * hd, hd},
               ContiguousRows<float>{vp + (b * KVH + kv) * S * hd, hd}, first[b], last[b],
               scale_f, scores.data(), S + 16, op + b * H * hd + kv * G * hd);
    }
  });
  return out;
}

namespace {

// Hugging Face's RoPE on one head vector: x * cos + rotate_half(x) * sin, where
// rotate_half(x) = [-x[h:], x[:h]], h = hd / 2 (even hd); one fused multiply-add per
// value.
__attribute__((target("avx512f,avx512vl"))) void RopeHead(const float* x, const float* cos,
                                                          const float* sin, int64_t hd,
                                                          float* out) {
  const int64_t half = hd / 2;
  for (int64_t c = 0; c < half; c += 16) {
    const __mmask16 lanes = half - c >= 16 ? static_cast<__mmask16>(0xFFFF)
                                           : static_cast<__mmask16>((1u << (half - c)) - 1);
    const __m512 lo = _mm512_maskz_loadu_ps(lanes, x + c);
    const __m512 hi = _mm512_maskz_loadu_ps(lanes, x + half + c);
    const __m512 neg_hi = _mm512_sub_ps(_mm512_setzero_ps(), hi);
    _mm512_mask_storeu_ps(
        out + c, lanes,
        _mm512_fmadd_ps(lo, _mm512_maskz_loadu_ps(lanes, cos + c),
                        _mm512_mul_ps(neg_hi, _mm512_maskz_loadu_ps(lanes, sin + c))));
    _mm512_mask_storeu_ps(
        out + half + c, lanes,
        _mm512_fmadd_ps(hi, _mm512_maskz_loadu_ps(lanes, cos + half + c),
                        _mm512_mul_ps(lo, _mm512_maskz_loadu_ps(lanes, sin + half + c))));
  }
}

}  // namespace

bool CanUseF32RopeDecodeAttention(const at::Tensor& keys, int64_t query_len) {
  return CanUseF32DecodeAttention(keys, query_len) && keys.is_contiguous() &&
         keys.size(3) % 2 == 0;
}

at::Tensor F32RopeDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cos, const at::Tensor& sin,
                                  at::Tensor& cache_k, at::Tensor& cache_v,
                                  const std::vector<int64_t>& first,
                                  const std::vector<int64_t>& write_at, double scale) {
  const RopeDecodeOperands<float> op(q, k, v, cos, sin, cache_k, cache_v);
  const float scale_f = static_cast<float>(scale);
  const AttendPlan<ContiguousRows<float>> plan(op.hd, op.G);
  // A (row, KV head) pair is G heads over its visible columns: worth a thread only in
  // numbers.
  const int64_t grain =
      std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(1, op.G * op.S * op.hd));
  at::parallel_for(0, op.B * op.KVH, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(4 * (op.S + 16));
    std::vector<float> rotated(op.G * op.hd);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / op.KVH, kv = pair % op.KVH;
      op.WriteKeyValue(b, kv, write_at[b], RopeHead);
      for (int64_t g = 0; g < op.G; ++g) {
        RopeHead(op.Query(b, kv * op.G + g), op.Cos(b), op.Sin(b), op.hd,
                 rotated.data() + g * op.hd);
      }
      plan.Run(rotated.data(), ContiguousRows<float>{op.KeyHead(b, kv), op.hd},
               ContiguousRows<float>{op.ValueHead(b, kv), op.hd}, first[b], write_at[b], scale_f,
               scores.data(), op.S + 16, op.Out(b, kv * op.G));
    }
  });
  return op.out;
}

// ---------------------------------------------------------------------------------------
// Paged packed attention.

namespace {

// The operands of PagedRopeAttention with elements of type T, their shapes in one
// place, and where a position's rows sit in the pool: q [N, H * hd], k, v [N, KVH * hd]
// (the projections), cos, sin [N, hd], the pools [KVH, num_blocks, block_size, hd]
// (contiguous, written) and the output [N, H * hd].
template <typename T>
struct PagedOperands {
  PagedOperands(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                const at::Tensor& cos_in, const at::Tensor& sin_in, at::Tensor& pool_k,
                at::Tensor& pool_v, const PagedTokens& tokens_in)
      : tokens(tokens_in),
        q_tensor(q_in.contiguous()),
        k_tensor(k_in.contiguous()),
        v_tensor(v_in.contiguous()),
        cos_tensor(cos_in.contiguous()),
        sin_tensor(sin_in.contiguous()),
        N(static_cast<int64_t>(tokens_in.row.size())),
        KVH(pool_k.size(0)),
        num_blocks(pool_k.size(1)),
        block_size(pool_k.size(2)),
        hd(pool_k.size(3)),
        H(q_in.size(-1) / hd),
        G(H / KVH),
        shift(__builtin_ctzll(static_cast<unsigned long long>(block_size))),
        out(at::empty({N, H * hd}, q_tensor.options())),
        keys(pool_k.data_ptr<T>()),
        values(pool_v.data_ptr<T>()) {}

  const T* Query(int64_t i, int64_t h) const { return q_tensor.data_ptr<T>() + (i * H + h) * hd; }
  const T* Cos(int64_t i) const { return cos_tensor.data_ptr<T>() + i * hd; }
  const T* Sin(int64_t i) const { return sin_tensor.data_ptr<T>() + i * hd; }
  T* Out(int64_t i, int64_t h) const { return out.data_ptr<T>() + (i * H + h) * hd; }
  // Slot 0 of KV head kv in block `block`: [block_size, hd].
  T* Block(T* pool, int64_t block, int64_t kv) const {
    return pool + (kv * num_blocks + block) * block_size * hd;
  }

  // Writes token i's key for KV head kv, rotated by rope(x, cos, sin, hd, out), and its
  // value at its position in its sequence's blocks.
  template <typename Rope>
  void WriteKeyValue(int64_t i, int64_t kv, Rope rope) const {
    const int64_t p = tokens.position[i];
    const int64_t block = tokens.block_tables[tokens.row[i]][p >> shift];
    const int64_t slot = (p & (block_size - 1)) * hd;
    const int64_t offset = (i * KVH + kv) * hd;
    rope(k_tensor.data_ptr<T>() + offset, Cos(i), Sin(i), hd, Block(keys, block, kv) + slot);
    const T* value = v_tensor.data_ptr<T>() + offset;
    std::copy(value, value + hd, Block(values, block, kv) + slot);
  }

  // Token i's keys and values of KV head kv over positions [0, position[i]]; fills
  // `key_blocks` and `value_blocks` with the blocks' addresses, which the rows point at.
  std::pair<PagedRows<T>, PagedRows<T>> Rows(int64_t i, int64_t kv,
                                             std::vector<const T*>& key_blocks,
                                             std::vector<const T*>& value_blocks) const {
    const int32_t* table = tokens.block_tables[tokens.row[i]];
    const int64_t blocks = (tokens.position[i] >> shift) + 1;
    key_blocks.resize(blocks);
    value_blocks.resize(blocks);
    for (int64_t j = 0; j < blocks; ++j) {
      key_blocks[j] = Block(keys, table[j], kv);
      value_blocks[j] = Block(values, table[j], kv);
    }
    return {PagedRows<T>{key_blocks.data(), shift, hd},
            PagedRows<T>{value_blocks.data(), shift, hd}};
  }

  const PagedTokens& tokens;
  const at::Tensor q_tensor, k_tensor, v_tensor, cos_tensor, sin_tensor;
  const int64_t N, KVH, num_blocks, block_size, hd, H, G;
  const int shift;
  at::Tensor out;
  T* const keys;
  T* const values;
};

// Checks what PagedRopeAttention reads: shapes and dtypes that agree, every token's
// sequence and position valid, and the block ids its positions need inside the pool.
// Throws c10::Error otherwise. Returns the largest position, and whether no two tokens
// share a sequence (a decode step: then no token reads another's write, and each
// (token, KV head) can write and attend in one pass).
std::pair<int64_t, bool> CheckPagedOperands(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const at::Tensor& cos,
                                            const at::Tensor& sin, const at::Tensor& pool_k,
                                            const at::Tensor& pool_v,
                                            const PagedTokens& tokens) {
  const int64_t N = static_cast<int64_t>(tokens.row.size());
  const int64_t B = static_cast<int64_t>(tokens.block_tables.size());
  TORCH_CHECK(static_cast<int64_t>(tokens.position.size()) == N,
              "PagedRopeAttention: ", N, " rows but ", tokens.position.size(), " positions");
  TORCH_CHECK(pool_v.sizes() == pool_k.sizes() && pool_v.scalar_type() == pool_k.scalar_type() &&
                  pool_v.is_contiguous(),
              "PagedRopeAttention: the value pool ", pool_v.sizes(), " does not match the key pool ",
              pool_k.sizes());
  const int64_t KVH = pool_k.size(0), num_blocks = pool_k.size(1), hd = pool_k.size(3);
  const auto dtype = pool_k.scalar_type();
  for (const at::Tensor* t : {&q, &k, &v, &cos, &sin}) {
    TORCH_CHECK(t->defined() && t->scalar_type() == dtype && t->device().is_cpu() && t->dim() >= 1,
                "PagedRopeAttention: operands must be CPU tensors of the pool's dtype");
  }
  const int64_t H = q.size(-1) / hd;
  TORCH_CHECK(q.size(-1) % hd == 0 && H > 0 && H % KVH == 0 && q.numel() == N * H * hd,
              "PagedRopeAttention: q ", q.sizes(), " is not [", N, ", H * ", hd,
              "] with H a multiple of ", KVH);
  TORCH_CHECK(k.numel() == N * KVH * hd && v.numel() == N * KVH * hd,
              "PagedRopeAttention: k ", k.sizes(), " or v ", v.sizes(), " is not [", N, ", ",
              KVH * hd, "]");
  TORCH_CHECK(cos.numel() == N * hd && sin.numel() == N * hd, "PagedRopeAttention: cos ",
              cos.sizes(), " or sin ", sin.sizes(), " is not [", N, ", ", hd, "]");
  const int64_t shift = __builtin_ctzll(static_cast<unsigned long long>(pool_k.size(2)));
  std::vector<int64_t> last(B, -1);  // Each sequence's largest position in the call.
  bool one_per_sequence = true;
  int64_t max_position = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t b = tokens.row[i], p = tokens.position[i];
    TORCH_CHECK(b >= 0 && b < B && tokens.block_tables[b] != nullptr,
                "PagedRopeAttention: token ", i, " has sequence ", b, " of ", B);
    TORCH_CHECK(p >= 0 && p < (int64_t{1} << 40), "PagedRopeAttention: token ", i,
                " has position ", p);
    one_per_sequence = one_per_sequence && last[b] < 0;
    last[b] = std::max(last[b], p);
    max_position = std::max(max_position, p);
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; last[b] >= 0 && j <= (last[b] >> shift); ++j) {
      const int32_t block = tokens.block_tables[b][j];
      TORCH_CHECK(block >= 0 && block < num_blocks, "PagedRopeAttention: sequence ", b,
                  " has block ", block, " of ", num_blocks);
    }
  }
  return {max_position, one_per_sequence};
}

// Runs write(pair) for every (token, KV head) pair (token * KVH + kv), then, once all
// are written, attend(pair) with attend = make_attend() (one per thread, holding its
// scratch). With `fused` (no token reads another's write), each pair writes and then
// attends in one pass, as the contiguous decode kernels do. The attention pass takes
// pairs folded from both ends (0, P-1, 1, P-2, ...), so that with a prefill's growing
// positions each thread's share holds as many long rows as short ones. The order of
// pairs changes no value.
template <typename Write, typename MakeAttend>
void WriteThenAttend(int64_t pairs, bool fused, int64_t write_grain, int64_t attend_grain,
                     const Write& write, const MakeAttend& make_attend) {
  if (fused) {
    at::parallel_for(0, pairs, attend_grain, [&](int64_t begin, int64_t end) {
      auto attend = make_attend();
      for (int64_t pair = begin; pair < end; ++pair) {
        write(pair);
        attend(pair);
      }
    });
    return;
  }
  at::parallel_for(0, pairs, write_grain, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) write(pair);
  });
  at::parallel_for(0, pairs, attend_grain, [&](int64_t begin, int64_t end) {
    auto attend = make_attend();
    for (int64_t p = begin; p < end; ++p) attend(p % 2 == 0 ? p / 2 : pairs - 1 - p / 2);
  });
}

// Writing a pair is one RoPE of hd values and a copy: threads only for many of them.
int64_t PagedWriteGrain(int64_t hd) { return std::max<int64_t>(1, 16384 / hd); }

at::Tensor Bf16PagedRopeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cos, const at::Tensor& sin,
                                  at::Tensor& pool_k, at::Tensor& pool_v,
                                  const PagedTokens& tokens, double scale, int64_t max_position,
                                  bool fused) {
  using T = c10::BFloat16;
  const PagedOperands<T> op(q, k, v, cos, sin, pool_k, pool_v, tokens);
  const float scale_f = static_cast<float>(scale);
  WriteThenAttend(
      op.N * op.KVH, fused, PagedWriteGrain(op.hd), /*attend_grain=*/1,
      [&](int64_t pair) { op.WriteKeyValue(pair / op.KVH, pair % op.KVH, Bf16RopeHead); },
      [&] {
        return [&op, scale_f, scores = std::vector<float>(max_position + 1),
                rotated = std::vector<T>(op.hd), key_blocks = std::vector<const T*>(),
                value_blocks = std::vector<const T*>()](int64_t pair) mutable {
          const int64_t i = pair / op.KVH, kv = pair % op.KVH;
          const auto rows = op.Rows(i, kv, key_blocks, value_blocks);
          for (int64_t g = 0; g < op.G; ++g) {
            const int64_t h = kv * op.G + g;
            Bf16RopeHead(op.Query(i, h), op.Cos(i), op.Sin(i), op.hd, rotated.data());
            AttendHead(rotated.data(), rows.first, rows.second, 0, op.tokens.position[i], op.hd,
                       scale_f, scores.data(), op.Out(i, h));
          }
        };
      });
  return op.out;
}

at::Tensor F32PagedRopeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& cos, const at::Tensor& sin,
                                 at::Tensor& pool_k, at::Tensor& pool_v,
                                 const PagedTokens& tokens, double scale, int64_t max_position,
                                 bool fused) {
  const PagedOperands<float> op(q, k, v, cos, sin, pool_k, pool_v, tokens);
  const float scale_f = static_cast<float>(scale);
  const AttendPlan<PagedRows<float>> plan(op.hd, op.G);
  const int64_t stride = max_position + 1 + 16;  // Of the scores, per head.
  // A (token, KV head) pair is G heads over its positions: worth a thread only in
  // numbers (as F32RopeDecodeAttention, with the longest row for the cache length).
  const int64_t grain =
      std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(1, op.G * stride * op.hd));
  WriteThenAttend(
      op.N * op.KVH, fused, PagedWriteGrain(op.hd), grain,
      [&](int64_t pair) { op.WriteKeyValue(pair / op.KVH, pair % op.KVH, RopeHead); },
      [&] {
        return [&op, &plan, scale_f, stride, scores = std::vector<float>(4 * stride),
                rotated = std::vector<float>(op.G * op.hd),
                key_blocks = std::vector<const float*>(),
                value_blocks = std::vector<const float*>()](int64_t pair) mutable {
          const int64_t i = pair / op.KVH, kv = pair % op.KVH;
          for (int64_t g = 0; g < op.G; ++g) {
            RopeHead(op.Query(i, kv * op.G + g), op.Cos(i), op.Sin(i), op.hd,
                     rotated.data() + g * op.hd);
          }
          const auto rows = op.Rows(i, kv, key_blocks, value_blocks);
          plan.Run(rotated.data(), rows.first, rows.second, 0, op.tokens.position[i], scale_f,
                   scores.data(), stride, op.Out(i, kv * op.G));
        };
      });
  return op.out;
}

}  // namespace

bool CanUsePagedRopeAttention(const at::Tensor& pool_keys) {
  if (!pool_keys.defined() || !pool_keys.device().is_cpu() || pool_keys.dim() != 4 ||
      !pool_keys.is_contiguous() || pool_keys.requires_grad()) {
    return false;
  }
  const bool instructions = pool_keys.scalar_type() == at::kBFloat16 ? CpuHasAvx512BwVl()
                            : pool_keys.scalar_type() == at::kFloat  ? CpuHasAvx512FVl()
                                                                     : false;
  const int64_t KVH = pool_keys.size(0), block_size = pool_keys.size(2), hd = pool_keys.size(3);
  return instructions && KVH > 0 && block_size > 0 && (block_size & (block_size - 1)) == 0 &&
         hd > 0 && hd % 2 == 0 && hd <= kMaxAttentionHeadDim;
}

at::Tensor PagedRopeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& cos, const at::Tensor& sin, at::Tensor& pool_k,
                              at::Tensor& pool_v, const PagedTokens& tokens, double scale) {
  TORCH_CHECK(CanUsePagedRopeAttention(pool_k), "PagedRopeAttention: the pool ", pool_k.sizes(),
              " (", pool_k.scalar_type(), ") does not fit the kernel");
  const auto [max_position, fused] = CheckPagedOperands(q, k, v, cos, sin, pool_k, pool_v, tokens);
  if (pool_k.scalar_type() == at::kBFloat16) {
    return Bf16PagedRopeAttention(q, k, v, cos, sin, pool_k, pool_v, tokens, scale, max_position,
                                  fused);
  }
  return F32PagedRopeAttention(q, k, v, cos, sin, pool_k, pool_v, tokens, scale, max_position,
                               fused);
}

namespace {

// The index of row[0, V)'s largest value as at::argmax: first on ties, first NaN wins.
// 16 lanes each keep their best value and its index (a later equal value never
// replaces it), then the lanes are merged by value and, on ties, by index.
__attribute__((target("avx512f,avx512vl"))) int64_t ArgmaxRow(const float* row, int64_t V) {
  __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512i best_index = _mm512_set1_epi32(-1);
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  __mmask16 any_nan = 0;
  for (int64_t i = 0; i < V; i += 16) {
    const __mmask16 lanes = V - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                                        : static_cast<__mmask16>((1u << (V - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(lanes, row + i);
    any_nan |= _mm512_mask_cmp_ps_mask(lanes, v, v, _CMP_UNORD_Q);
    const __mmask16 better = _mm512_mask_cmp_ps_mask(lanes, v, best, _CMP_GT_OQ);
    best = _mm512_mask_mov_ps(best, better, v);
    best_index = _mm512_mask_mov_epi32(best_index, better, index);
    index = _mm512_add_epi32(index, step);
  }
  if (any_nan != 0) return std::find_if(row, row + V, [](float v) { return std::isnan(v); }) - row;
  alignas(64) float values[16];
  alignas(64) int32_t indices[16];
  _mm512_store_ps(values, best);
  _mm512_store_si512(indices, best_index);
  int64_t result = -1;
  float result_value = -std::numeric_limits<float>::infinity();
  for (int lane = 0; lane < 16; ++lane) {
    if (indices[lane] < 0) continue;
    if (result < 0 || values[lane] > result_value ||
        (values[lane] == result_value && indices[lane] < result)) {
      result = indices[lane];
      result_value = values[lane];
    }
  }
  // A row of -inf only: at::argmax returns its first index.
  return result < 0 ? 0 : result;
}

}  // namespace

bool CanUseF32ArgmaxRows(const at::Tensor& logits) {
  return CpuHasAvx512FVl() && logits.defined() && logits.device().is_cpu() &&
         logits.scalar_type() == at::kFloat && logits.dim() == 2 && logits.is_contiguous() &&
         logits.size(1) > 0 && logits.size(1) <= std::numeric_limits<int32_t>::max() - 16;
}

std::vector<int64_t> F32ArgmaxRows(const at::Tensor& logits) {
  const int64_t B = logits.size(0), V = logits.size(1);
  std::vector<int64_t> ids(B);
  const float* data = logits.data_ptr<float>();
  at::parallel_for(0, B, /*grain_size=*/std::max<int64_t>(1, (int64_t{1} << 16) / V),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t b = begin; b < end; ++b) ids[b] = ArgmaxRow(data + b * V, V);
                   });
  return ids;
}

bool CanUseF32SiluMul(const at::Tensor& gate_up) {
  return CpuHasAvx512FVl() && gate_up.defined() && gate_up.device().is_cpu() &&
         gate_up.scalar_type() == at::kFloat && gate_up.is_contiguous() && gate_up.dim() >= 1 &&
         gate_up.size(-1) % 2 == 0 &&
         !(at::GradMode::is_enabled() && gate_up.requires_grad());
}

namespace {

__attribute__((target("avx512f,avx512vl"))) void SiluMulRow(const float* gate, const float* up,
                                                            float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                                        : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 g = _mm512_maskz_loadu_ps(lanes, gate + i);
    const __m512 silu = _mm512_div_ps(
        g, _mm512_add_ps(_mm512_set1_ps(1.0f), Exp(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(out + i, lanes, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(lanes, up + i)));
  }
}

}  // namespace

at::Tensor F32SiluMul(const at::Tensor& gate_up) {
  const int64_t I = gate_up.size(-1) / 2, rows = gate_up.numel() / std::max<int64_t>(1, 2 * I);
  std::vector<int64_t> out_shape(gate_up.sizes().begin(), gate_up.sizes().end());
  out_shape.back() = I;
  at::Tensor out = at::empty(out_shape, gate_up.options());
  if (I == 0) return out;
  const float* gp = gate_up.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / I), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) SiluMulRow(gp + r * 2 * I, gp + r * 2 * I + I, op + r * I, I);
  });
  return out;
}

bool CanUseBf16SiluMul(const at::Tensor& gate_up) {
  return CpuHasAvx512BwVl() && gate_up.defined() &&
         gate_up.device().is_cpu() && gate_up.scalar_type() == at::kBFloat16 &&
         gate_up.is_contiguous() && gate_up.dim() >= 1 && gate_up.size(-1) % 2 == 0 &&
         !(at::GradMode::is_enabled() && gate_up.requires_grad());
}

namespace {

__attribute__((target("avx512f,avx512bw,avx512vl"))) void Bf16SiluMulRow(
    const c10::BFloat16* gate, const c10::BFloat16* up, c10::BFloat16* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = Lanes(n - i);
    const __m512 g = LoadAsFloat(gate + i, lanes);
    // ATen's bf16 silu rounds exp(-g), 1 + exp(-g) and the quotient to bf16.
    const __m512 e = RoundedToBf16(Exp(_mm512_sub_ps(_mm512_setzero_ps(), g)));
    const __m512 silu =
        RoundedToBf16(_mm512_div_ps(g, RoundedToBf16(_mm512_add_ps(_mm512_set1_ps(1.0f), e))));
    _mm256_mask_storeu_epi16(out + i, lanes,
                             RoundToBf16Bits(_mm512_mul_ps(silu, LoadAsFloat(up + i, lanes))));
  }
}

}  // namespace

at::Tensor Bf16SiluMul(const at::Tensor& gate_up) {
  const int64_t I = gate_up.size(-1) / 2, rows = gate_up.numel() / std::max<int64_t>(1, 2 * I);
  std::vector<int64_t> out_shape(gate_up.sizes().begin(), gate_up.sizes().end());
  out_shape.back() = I;
  at::Tensor out = at::empty(out_shape, gate_up.options());  // [..., I]
  if (rows == 0 || I == 0) return out;
  const auto* gp = gate_up.data_ptr<c10::BFloat16>();
  auto* op = out.data_ptr<c10::BFloat16>();
  at::parallel_for(0, rows, /*grain_size=*/std::max<int64_t>(1, 16384 / I), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      Bf16SiluMulRow(gp + r * 2 * I, gp + r * 2 * I + I, op + r * I, I);
    }
  });
  return out;
}

}  // namespace steerd
