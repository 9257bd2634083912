// Hand-written CPU kernels for the bf16 decode step, where libtorch's libraries serve
// poorly: oneDNN streams weights at about half the speed of SmallBatchBf16Linear for a
// few token rows (and is slower up to ~32), and at decode shapes RMSNorm (eight ops) and
// attention (bf16 batched matmuls of ~50 us each) cost more in dispatch than in math.
// The matmul uses AVX512-BF16 dot products and reads each weight row once for all token
// rows. It has two paths (row at a time up to 8 token rows, 6-row tiles up to 32); each
// sums in a fixed order, so within a path a row's result does not depend on the other
// rows in the call, and the two paths differ at most by float rounding. Each kernel has a CanUse* check; callers fall back to tensor
// ops when it fails (no AVX512-BF16, other dtypes, autograd).
#ifndef STEERD_SERVER_MODEL_CPU_KERNELS_H_
#define STEERD_SERVER_MODEL_CPU_KERNELS_H_

#include <ATen/ATen.h>

#include <vector>

namespace steerd {

// Token rows up to which the kernel beats oneDNN (measured; see BENCHMARKS.md).
inline constexpr int64_t kSmallBatchLinearMaxRows = 32;

// True when SmallBatchBf16Linear can compute linear(x, weight, bias): CPU with
// AVX512-BF16, bf16 contiguous tensors, at most kSmallBatchLinearMaxRows rows, no grad.
bool CanUseSmallBatchBf16Linear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias);

// y = x * weight^T + bias. x: [..., K] bf16, weight: [N, K] bf16, bias: [N] bf16 or
// undefined. Returns [..., N] bf16, each value rounded once from a float32 sum.
at::Tensor SmallBatchBf16Linear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias);

// True when Bf16RmsNorm applies: CPU, bf16 contiguous x and weight, no grad.
bool CanUseBf16RmsNorm(const at::Tensor& x, const at::Tensor& weight);

// Hugging Face's RMSNorm for bf16 in one pass per row instead of eight tensor ops:
// weight * bf16(x * rsqrt(mean(x^2) + eps)), the statistics in float32. x: [..., d],
// weight: [d]; returns [..., d] bf16.
at::Tensor Bf16RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// True when Bf16DecodeAttention applies to `query_len` new positions per row against
// the cache tensor `keys`: CPU, bf16, one position.
bool CanUseBf16DecodeAttention(const at::Tensor& keys, int64_t query_len);

// Grouped-query attention of one new position per row against its cached keys, in
// float32 from bf16 inputs: libtorch's bf16 batched matmuls cost ~50 us each at these
// tiny shapes, this whole call a few. q: [B, H, 1, hd]; keys, values: [B, KVH, S, hd]
// (the cache, contiguous); row b sees columns [first[b], last[b]]. Returns
// [B, 1, H * hd] bf16.
at::Tensor Bf16DecodeAttention(const at::Tensor& q, const at::Tensor& keys,
                               const at::Tensor& values, const std::vector<int64_t>& first,
                               const std::vector<int64_t>& last, double scale);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_CPU_KERNELS_H_
