// The bf16 decode kernel: same numbers as a float32 reference (one rounding), row
// results independent of the other rows in the call, odd shapes (K not a multiple of
// 32, N not a multiple of the tile), and a dispatch decision that follows the CPU.
#include <gtest/gtest.h>

#include "server/model/cpu_kernels.h"

namespace steerd {
namespace {

bool CpuHasBf16Dot() { return __builtin_cpu_supports("avx512bf16"); }

TEST(CpuKernelsTest, DispatchFollowsTheCpuAndTheShape) {
  const at::Tensor w = at::randn({40, 64}).to(at::kBFloat16);
  EXPECT_EQ(CanUseSmallBatchBf16Linear(at::randn({1, 64}).to(at::kBFloat16), w, at::Tensor()),
            CpuHasBf16Dot());
  // Too many rows, float32, or non-contiguous input: always the library path.
  EXPECT_FALSE(CanUseSmallBatchBf16Linear(
      at::randn({kSmallBatchLinearMaxRows + 1, 64}).to(at::kBFloat16), w, at::Tensor()));
  EXPECT_FALSE(CanUseSmallBatchBf16Linear(at::randn({1, 64}), w.to(at::kFloat), at::Tensor()));
  EXPECT_FALSE(CanUseSmallBatchBf16Linear(at::randn({64, 2}).to(at::kBFloat16).t(), w,
                                          at::Tensor()));
}

TEST(CpuKernelsTest, MatchesAFloat32ReferenceOnOddShapes) {
  if (!CpuHasBf16Dot()) {
    // The kernel cannot run here; the dispatch test above proves it is never chosen.
    EXPECT_FALSE(CanUseSmallBatchBf16Linear(at::randn({1, 8}).to(at::kBFloat16),
                                            at::randn({8, 8}).to(at::kBFloat16), at::Tensor()));
    return;
  }
  at::manual_seed(3);
  for (int64_t K : {32, 45, 80, 896, 4864}) {
    for (int64_t N : {1, 6, 130}) {
      for (int64_t M : {1, 3, 4, 7, 32}) {
        for (bool with_bias : {false, true}) {
          const at::Tensor x = at::randn({M, 1, K}).to(at::kBFloat16);
          const at::Tensor w = at::randn({N, K}).to(at::kBFloat16);
          const at::Tensor b = with_bias ? at::randn({N}).to(at::kBFloat16) : at::Tensor();
          ASSERT_TRUE(CanUseSmallBatchBf16Linear(x, w, b));
          const at::Tensor got = SmallBatchBf16Linear(x, w, b);  // [M, 1, N]
          ASSERT_EQ(got.sizes(), (std::vector<int64_t>{M, 1, N}));
          at::Tensor expected = at::matmul(x.to(at::kFloat), w.to(at::kFloat).t());
          if (with_bias) expected = expected + b.to(at::kFloat);
          // One bf16 rounding of a float32 sum: relative error ~2^-8.
          const double tolerance = 1e-2 * expected.abs().max().item<double>();
          EXPECT_LE((got.to(at::kFloat) - expected).abs().max().item<double>(), tolerance)
              << "M=" << M << " N=" << N << " K=" << K;
        }
      }
    }
  }
}

// Each path (row at a time up to 8 token rows, 6-row tiles above) adds in a fixed
// order, so within a path a row's result does not depend on the other rows; the two
// paths may differ by a rounding step.
TEST(CpuKernelsTest, EachRowIsIndependentOfItsNeighbours) {
  if (!CpuHasBf16Dot()) {
    EXPECT_FALSE(CanUseSmallBatchBf16Linear(at::randn({1, 8}).to(at::kBFloat16),
                                            at::randn({8, 8}).to(at::kBFloat16), at::Tensor()));
    return;
  }
  const at::Tensor w = at::randn({300, 4864}).to(at::kBFloat16);
  const at::Tensor rows = at::randn({13, 4864}).to(at::kBFloat16);
  const at::Tensor eight = SmallBatchBf16Linear(rows.narrow(0, 0, 8).contiguous(), w, at::Tensor());
  for (int64_t r = 0; r < 8; ++r) {
    const at::Tensor alone = SmallBatchBf16Linear(rows.narrow(0, r, 1).contiguous(), w, at::Tensor());
    EXPECT_TRUE(at::equal(alone[0], eight[r])) << "row " << r;
  }
  const at::Tensor thirteen = SmallBatchBf16Linear(rows, w, at::Tensor());
  const at::Tensor nine = SmallBatchBf16Linear(rows.narrow(0, 4, 9).contiguous(), w, at::Tensor());
  for (int64_t r = 0; r < 9; ++r) {
    EXPECT_TRUE(at::equal(nine[r], thirteen[r + 4])) << "row " << r + 4;
  }
  const double scale = thirteen.to(at::kFloat).abs().max().item<double>();
  EXPECT_LE((thirteen.narrow(0, 0, 8).to(at::kFloat) - eight.to(at::kFloat)).abs().max().item<double>(),
            1e-2 * scale);
}

TEST(CpuKernelsTest, RmsNormMatchesTheTensorFormula) {
  at::manual_seed(5);
  const at::Tensor x = (at::randn({3, 5, 896}) * 3).to(at::kBFloat16);
  const at::Tensor weight = (1 + 0.1 * at::randn({896})).to(at::kBFloat16);
  ASSERT_TRUE(CanUseBf16RmsNorm(x, weight));
  const at::Tensor got = Bf16RmsNorm(x, weight, 1e-6);
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor expected =
      weight * (x32 * at::rsqrt(x32.pow(2).mean(-1, true) + 1e-6)).to(at::kBFloat16);
  // Summation order differs from libtorch's reduction: at most one bf16 step apart.
  EXPECT_LE((got.to(at::kFloat) - expected.to(at::kFloat)).abs().max().item<double>(),
            0.02 * expected.abs().max().item<double>());
  EXPECT_FALSE(CanUseBf16RmsNorm(x.to(at::kFloat), weight.to(at::kFloat)));
}

TEST(CpuKernelsTest, DecodeAttentionMatchesMaskedSoftmaxAttention) {
  at::manual_seed(6);
  const int64_t B = 3, H = 6, KVH = 2, S = 10, hd = 64, G = H / KVH;
  const at::Tensor q = at::randn({B, H, 1, hd}).to(at::kBFloat16);
  const at::Tensor keys = at::randn({B, KVH, S, hd}).to(at::kBFloat16);
  const at::Tensor values = at::randn({B, KVH, S, hd}).to(at::kBFloat16);
  const std::vector<int64_t> first = {0, 2, 5}, last = {9, 6, 5};  // Ragged rows.
  const double scale = 1.0 / 8.0;
  ASSERT_TRUE(CanUseBf16DecodeAttention(keys, /*query_len=*/1));
  const at::Tensor got = Bf16DecodeAttention(q, keys, values, first, last, scale);  // [B,1,H*hd]
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kv = h / G, n = last[b] - first[b] + 1;
      const at::Tensor k = keys[b][kv].narrow(0, first[b], n).to(at::kFloat);    // [n, hd]
      const at::Tensor v = values[b][kv].narrow(0, first[b], n).to(at::kFloat);  // [n, hd]
      const at::Tensor p = at::softmax(at::matmul(k, q[b][h][0].to(at::kFloat)) * scale, 0);
      const at::Tensor expected = at::matmul(p, v);                              // [hd]
      const at::Tensor row = got[b][0].narrow(0, h * hd, hd).to(at::kFloat);
      EXPECT_LE((row - expected).abs().max().item<double>(), 0.02) << "b=" << b << " h=" << h;
    }
  }
  EXPECT_FALSE(CanUseBf16DecodeAttention(keys, /*query_len=*/2));
  EXPECT_FALSE(CanUseBf16DecodeAttention(keys.to(at::kFloat), /*query_len=*/1));
}

}  // namespace
}  // namespace steerd
