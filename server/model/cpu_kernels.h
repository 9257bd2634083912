// Hand-written CPU kernels for the bf16 decode step, where libtorch's libraries serve
// poorly: oneDNN streams weights at about half the speed of SmallBatchBf16Linear for a
// few token rows (and is slower up to 64), and at decode shapes RMSNorm (eight ops) and
// attention (bf16 batched matmuls of ~50 us each) cost more in dispatch than in math.
// The matmul uses AVX512-BF16 dot products and reads each weight row once for all token
// rows. It has two paths (row at a time up to 8 token rows; above, up to 64, 16 tokens
// per vector lane group, one weight pair broadcast to all of them); each sums in a fixed
// order, so within a path a row's result does not depend on the other rows in the
// call, and the two paths differ at most by float rounding. Each kernel has a CanUse*
// check; callers fall back to tensor ops when it fails (no AVX512-BF16, other dtypes,
// autograd).
#ifndef STEERD_SERVER_MODEL_CPU_KERNELS_H_
#define STEERD_SERVER_MODEL_CPU_KERNELS_H_

#include <ATen/ATen.h>
// at::GradMode (the CanUse* checks): ATen/ATen.h no longer brings it in libtorch 2.x.
#include <ATen/core/grad_mode.h>

#include <vector>

namespace steerd {

// Token rows up to which the kernel is used: it beats oneDNN at every row count up to
// here (measured; see BENCHMARKS.md), which covers the engine's decode batch (64 rows by
// default), so a decoding row's numbers do not depend on the batch it shares above 8.
inline constexpr int64_t kSmallBatchLinearMaxRows = 64;

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

// True when Bf16SiluMul applies: CPU with AVX-512BW/VL, bf16 contiguous, even last
// dim, no grad.
bool CanUseBf16SiluMul(const at::Tensor& gate_up);

// SwiGLU's silu(gate) * up for bf16 in one pass, gate_up = [..., gate (I) | up (I)],
// in float32 rounded to bf16 where libtorch 1.13's bf16 silu and multiply round:
// bf16(bf16(gate / bf16(1 + bf16(exp(-gate)))) * up); its exp differs from ATen's by
// float rounding only. Instead of a strided silu, a temporary and a multiply (~130 us
// per layer at 16 rows of 4864). Returns [..., I].
at::Tensor Bf16SiluMul(const at::Tensor& gate_up);

// True when Bf16RopeDecodeAttention applies: as CanUseBf16DecodeAttention, with a
// contiguous cache and an even head_dim.
bool CanUseBf16RopeDecodeAttention(const at::Tensor& keys, int64_t query_len);

// The bf16 decode step's attention in one call instead of ~15 small tensor ops per
// layer: Hugging Face's RoPE on the new position's query and key, rounded where ATen's
// bf16 ops round (bf16(bf16(x * cos) + bf16(rotate_half(x) * sin))), so the cache holds
// exactly what the tensor ops would write; the key and value written to column
// write_at[b] of row b's cache; then attention as Bf16DecodeAttention over columns
// [first[b], write_at[b]]. q: [B, 1, H * hd], k, v: [B, 1, KVH * hd] (projections);
// cos, sin: [B, ..., hd] bf16 (one position per row); cache_k, cache_v: [B, KVH, S, hd],
// written. Returns [B, 1, H * hd].
at::Tensor Bf16RopeDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& cos, const at::Tensor& sin,
                                   at::Tensor& cache_k, at::Tensor& cache_v,
                                   const std::vector<int64_t>& first,
                                   const std::vector<int64_t>& write_at, double scale);

// Float32 counterparts for generation with float32 models, where OpenBLAS repacks the
// weight matrix on every call (as much time as the multiply at 32 rows), ATen runs
// attention as loops of tiny batched GEMMs, and RoPE, the cache write, RMSNorm and
// SwiGLU are a dozen small tensor ops per layer. They need AVX-512F/VL and carry no
// autograd: the CanUse checks refuse inputs that require grad while grad mode is on,
// and the transformer uses them only for forwards that fill a KV cache without grad.
//
// Numerics: unlike the bf16 matmul, every output of SmallBatchF32Linear takes the same
// steps whatever M is and whichever rows share the call (one 16-lane accumulator over
// K in order, one fixed lane-sum tree, then the bias), so a token row's result is
// bitwise independent of its batch. The attention kernels likewise depend only on the
// row's own query and cache columns (wherever they sit in its slot), and RMSNorm and
// SwiGLU work row by row. They differ from the tensor ops by float rounding only.

// Token rows up to which SmallBatchF32Linear is always used: beyond the serving batch
// (decode is one row per sequence; the engine's default is 64 rows), so that a decoding
// sequence's numbers never depend on the batch it shares. It beats OpenBLAS up to 64
// rows on every measured shape (1.3-3x at 8-32 rows) and stays within 3% at 128.
inline constexpr int64_t kSmallBatchF32LinearMaxRows = 128;
// Beyond that it is used while the token rows fit in ~1 MiB (x re-read from L2 for
// every four weight rows), up to 512 rows, where it still beats OpenBLAS by 3-20%.
inline constexpr int64_t kSmallBatchF32LinearMaxBytes = 1 << 20;
inline constexpr int64_t kSmallBatchF32LinearMaxPrefillRows = 512;

// True when SmallBatchF32Linear can compute linear(x, weight, bias): CPU with
// AVX-512F/VL, float32 contiguous tensors, rows within the limits above, no grad
// needed.
bool CanUseSmallBatchF32Linear(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias);

// y = x * weight^T + bias. x: [..., K] float32, weight: [N, K], bias: [N] or undefined.
at::Tensor SmallBatchF32Linear(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias);

// True when F32RmsNorm applies: AVX-512F, CPU, float32 contiguous x and weight, no grad.
bool CanUseF32RmsNorm(const at::Tensor& x, const at::Tensor& weight);

// Hugging Face's RMSNorm for float32 in one pass per row:
// weight * (x * (1 / sqrt(mean(x^2) + eps))). x: [..., d], weight: [d].
at::Tensor F32RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// True when F32DecodeAttention applies to `query_len` new positions per row against
// the cache tensor `keys`: AVX-512F, CPU, float32, one position.
bool CanUseF32DecodeAttention(const at::Tensor& keys, int64_t query_len);

// As Bf16DecodeAttention, all float32: q [B, H, 1, hd]; keys, values [B, KVH, S, hd];
// row b sees columns [first[b], last[b]]. Returns [B, 1, H * hd].
at::Tensor F32DecodeAttention(const at::Tensor& q, const at::Tensor& keys,
                              const at::Tensor& values, const std::vector<int64_t>& first,
                              const std::vector<int64_t>& last, double scale);

// True when F32RopeDecodeAttention applies: as CanUseF32DecodeAttention, with a
// contiguous cache and an even head_dim.
bool CanUseF32RopeDecodeAttention(const at::Tensor& keys, int64_t query_len);

// The float32 decode step's attention in one call, instead of ~15 small tensor ops per
// layer: Hugging Face's RoPE (x * cos + rotate_half(x) * sin, as one fused multiply-add
// per value) on the new position's query and key, the key and value written to column
// write_at[b] of row b's cache, then attention as F32DecodeAttention over columns
// [first[b], write_at[b]]. q: [B, 1, H * hd], k, v: [B, 1, KVH * hd] (projections);
// cos, sin: [B, ..., hd] (one position per row); cache_k, cache_v: [B, KVH, S, hd],
// written. Returns [B, 1, H * hd].
at::Tensor F32RopeDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cos, const at::Tensor& sin,
                                  at::Tensor& cache_k, at::Tensor& cache_v,
                                  const std::vector<int64_t>& first,
                                  const std::vector<int64_t>& write_at, double scale);

// True when F32ArgmaxRows applies: CPU with AVX-512F, float32 contiguous [B, V], V > 0.
bool CanUseF32ArgmaxRows(const at::Tensor& logits);

// at::argmax(logits, -1) for greedy decoding without ATen's reduction (greedy sampling
// of 16 rows of a 152K vocabulary: 1.08 -> 0.19 ms per step): for each row the index of
// its largest value, the first one on ties, and the first NaN if the row has one, as
// at::argmax. logits: [B, V] float32. Returns B indices.
std::vector<int64_t> F32ArgmaxRows(const at::Tensor& logits);

// True when F32SiluMul applies: AVX-512F, CPU, float32 contiguous, even last dim, no
// grad.
bool CanUseF32SiluMul(const at::Tensor& gate_up);

// SwiGLU's silu(gate) * up in one pass, gate_up = [..., gate (I) | up (I)]:
// gate / (1 + exp(-gate)) * up. Returns [..., I].
at::Tensor F32SiluMul(const at::Tensor& gate_up);

// Kernels for a paged KV cache and packed forwards (vLLM-style): each layer's keys and
// values live in one pool [KVH, num_blocks, block_size, hd] (KV head outermost, so a
// sequence's consecutive blocks of one head are one stream); a sequence owns a table of
// block ids, and its position p sits in block table[p / block_size], slot
// p % block_size. One call takes N new tokens of any number of sequences (a decode step
// is one token per sequence, a prefill many). Prefix caching needs a token's results
// to be bitwise the same whatever else shares the call, so both kernels below compute
// each token row by steps that depend only on that row.

// Where the N tokens of a packed paged call sit.
struct PagedTokens {
  std::vector<int64_t> row;        // [N] each token's sequence: index into block_tables
  std::vector<int64_t> position;   // [N] each token's position in its sequence
  std::vector<const int32_t*> block_tables;  // [B] each sequence's block ids; covers
                                             // every position up to its tokens' largest
};

// True when PagedRopeAttention applies to the key pool `pool_keys`
// [KVH, num_blocks, block_size, hd]: CPU, bf16 with AVX-512BW/VL or float32 with
// AVX-512F/VL, contiguous, block_size a power of two, even hd <= 256, not requiring
// grad (the kernel carries no autograd).
bool CanUsePagedRopeAttention(const at::Tensor& pool_keys);

// The attention of N packed tokens on a paged cache, in one call: for every token i,
// its key, rotated by RoPE, and its value are written at position[i] of sequence
// row[i]; then, after all the call's writes (a prefill token sees the earlier tokens
// of its own call), token i's H query heads, rotated, attend over positions
// [0, position[i]] of its sequence. RoPE and attention are those of
// Bf16RopeDecodeAttention (bf16) and F32RopeDecodeAttention (float32): each (token,
// head) result and each written slot is bit for bit what they give for that row with a
// contiguous cache holding the same keys and values, first = 0 and
// write_at = position[i], whichever other tokens share the call. q: [N, H * hd],
// k, v: [N, KVH * hd] (projections, the pool's dtype), cos, sin: [N, hd] (same dtype);
// pool_k, pool_v: [KVH, num_blocks, block_size, hd], contiguous, written. Sequences
// must not share the blocks the call writes. Throws c10::Error on operands that do not
// fit (shapes, dtypes, a token's sequence or position, block ids outside the pool).
// Returns [N, H * hd].
at::Tensor PagedRopeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& cos, const at::Tensor& sin,
                              at::Tensor& pool_k, at::Tensor& pool_v,
                              const PagedTokens& tokens, double scale);

// True when BatchInvariantLinear can compute linear(x, weight, bias): as
// CanUseSmallBatchBf16Linear (bf16) or CanUseSmallBatchF32Linear (float32) without
// their row limits.
bool CanUseBatchInvariantLinear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias);

// linear(x, weight, bias) for any number of token rows (a prefill), each row's result
// bitwise independent of M and of the rows sharing the call. bf16: always
// SmallBatchBf16Linear's token-lanes path (also for M <= 8, where SmallBatchBf16Linear
// takes the row-at-a-time path, which may differ by float rounding), in chunks of at
// most kSmallBatchLinearMaxRows rows; float32: SmallBatchF32Linear's steps for any M,
// in chunks of rows. x: [..., K], weight: [N, K], bias: [N] or undefined, all of one
// dtype. Returns [..., N].
at::Tensor BatchInvariantLinear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_CPU_KERNELS_H_
