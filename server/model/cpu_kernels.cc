#include "server/model/cpu_kernels.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace steerd {
namespace {

constexpr int kTileRows = 4;  // Weight rows per tile: four streams, 4 x MR accumulators.

bool CpuHasAvx512Bf16() {
  static const bool supported = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512bf16");
  return supported;
}

// One tile: weight rows [n, n + rows) against token rows [m, m + MR), over all of K.
template <int MR>
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline void Tile(
    const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t N,
    int64_t K, int64_t n, int64_t m, int rows) {
  const int64_t k_full = K / 32 * 32;
  const __mmask32 tail = K % 32 ? static_cast<__mmask32>((1u << (K % 32)) - 1) : 0;
  __m512 acc[kTileRows][MR];
  const uint16_t* w_row[kTileRows];
  // The small loops must be fully unrolled so the accumulators live in registers.
#pragma GCC unroll 4
  for (int a = 0; a < kTileRows; ++a) {
#pragma GCC unroll 4
    for (int b = 0; b < MR; ++b) acc[a][b] = _mm512_setzero_ps();
    // A short last tile repeats its first row; those sums are computed, not stored.
    w_row[a] = w + (n + (a < rows ? a : 0)) * K;
  }
  // Prefetch the same position of the next tile, which starts kTileRows * K later.
  const int64_t prefetch = kTileRows * K;
  for (int64_t k = 0; k < k_full; k += 32) {
    __m512bh xv[MR];
#pragma GCC unroll 4
    for (int b = 0; b < MR; ++b) {
      xv[b] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(x + (m + b) * K + k));
    }
#pragma GCC unroll 4
    for (int a = 0; a < kTileRows; ++a) {
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
    for (int a = 0; a < kTileRows; ++a) {
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

__attribute__((target("avx512f,avx512bw,avx512bf16"))) void TileRange(
    const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M,
    int64_t N, int64_t K, int64_t first_tile, int64_t last_tile) {
  for (int64_t tile = first_tile; tile < last_tile; ++tile) {
    const int64_t n = tile * kTileRows;
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, N - n));
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) Tile<4>(x, w, bias, y, N, K, n, m, rows);
    for (; m + 2 <= M; m += 2) Tile<2>(x, w, bias, y, N, K, n, m, rows);
    for (; m < M; ++m) Tile<1>(x, w, bias, y, N, K, n, m, rows);
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
  const int64_t tiles = (N + kTileRows - 1) / kTileRows;
  at::parallel_for(0, tiles, /*grain_size=*/16, [&](int64_t begin, int64_t end) {
    TileRange(xp, wp, bp, yp, M, N, K, begin, end);
  });
  return y;
}

}  // namespace steerd
