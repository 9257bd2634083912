#include "server/model/cpu_kernels.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace steerd {
namespace {

// Up to this many token rows, memory is the limit: one weight row at a time keeps each
// thread on a single sequential stream, which the hardware prefetchers follow at full
// bandwidth (four interleaved short rows reach only half of it). Past it, compute is
// the limit, and tiles of four weight rows reuse each loaded token vector four times.
constexpr int64_t kSequentialMaxRows = 8;

bool CpuHasAvx512Bf16() {
  static const bool supported = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512bf16");
  return supported;
}

// One tile: weight rows [n, n + rows) against token rows [m, m + MR), over all of K.
// Every output is one accumulator fed the K dimension in order and reduced the same
// way, whatever NR, MR and the number of rows in the call: results are bit-identical
// across batch compositions.
template <int NR, int MR>
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline void Tile(
    const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t N,
    int64_t K, int64_t n, int64_t m, int rows, int64_t prefetch) {
  const int64_t k_full = K / 32 * 32;
  const __mmask32 tail = K % 32 ? static_cast<__mmask32>((1u << (K % 32)) - 1) : 0;
  __m512 acc[NR][MR];
  const uint16_t* w_row[NR];
  // The small loops must be fully unrolled so the accumulators live in registers.
#pragma GCC unroll 4
  for (int a = 0; a < NR; ++a) {
#pragma GCC unroll 4
    for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_setzero_ps();
    // A short last tile repeats its first row; those sums are computed, not stored.
    w_row[a] = w + (n + (a < rows ? a : 0)) * K;
  }
  for (int64_t k = 0; k < k_full; k += 32) {
    __m512bh xv[MR];
#pragma GCC unroll 4
    for (int b = 0; b < MR; ++b) {
      xv[b] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(x + (m + b) * K + k));
    }
#pragma GCC unroll 4
    for (int a = 0; a < NR; ++a) {
      _mm_prefetch(reinterpret_cast<const char*>(w_row[a] + k + prefetch), _MM_HINT_T0);
      const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w_row[a] + k));
#pragma GCC unroll 4
      for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_dpbf16_ps(acc[a][b], wv, xv[b]);
    }
  }
  if (tail != 0) {
    __m512bh xv[MR];
    for (int b = 0; b < MR; ++b) {
      xv[b] = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(tail, x + (m + b) * K + k_full));
    }
    for (int a = 0; a < NR; ++a) {
      const __m512bh wv =
          reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(tail, w_row[a] + k_full));
      for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_dpbf16_ps(acc[a][b], wv, xv[b]);
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
      const c10::BFloat16 out(_mm512_reduce_add_ps(acc[a][b]) + b_value);
      y[(m + b) * N + n + a] = out.x;
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
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) Tile<NR, 4>(x, w, bias, y, N, K, n, m, rows, prefetch);
    for (; m + 2 <= M; m += 2) Tile<NR, 2>(x, w, bias, y, N, K, n, m, rows, prefetch);
    for (; m < M; ++m) Tile<NR, 1>(x, w, bias, y, N, K, n, m, rows, prefetch);
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
  const int64_t tile = sequential ? 1 : 4;
  // Threads split the weight rows on tile boundaries.
  at::parallel_for(0, (N + tile - 1) / tile, /*grain_size=*/64, [&](int64_t begin, int64_t end) {
    const int64_t first = begin * tile, last = std::min(N, end * tile);
    if (sequential) {
      RowRange<1>(xp, wp, bp, yp, M, N, K, first, last);
    } else {
      RowRange<4>(xp, wp, bp, yp, M, N, K, first, last);
    }
  });
  return y;
}

}  // namespace steerd
