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
  for (int64_t K : {32, 45, 896}) {
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

TEST(CpuKernelsTest, EachRowIsIndependentOfItsNeighbours) {
  if (!CpuHasBf16Dot()) {
    EXPECT_FALSE(CanUseSmallBatchBf16Linear(at::randn({1, 8}).to(at::kBFloat16),
                                            at::randn({8, 8}).to(at::kBFloat16), at::Tensor()));
    return;
  }
  const at::Tensor w = at::randn({300, 896}).to(at::kBFloat16);
  const at::Tensor rows = at::randn({13, 896}).to(at::kBFloat16);
  const at::Tensor together = SmallBatchBf16Linear(rows, w, at::Tensor());
  for (int64_t r = 0; r < rows.size(0); ++r) {
    const at::Tensor alone = SmallBatchBf16Linear(rows.narrow(0, r, 1).contiguous(), w, at::Tensor());
    EXPECT_TRUE(at::equal(alone[0], together[r])) << "row " << r;
  }
}

}  // namespace
}  // namespace steerd
