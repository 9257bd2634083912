// The bf16 decode kernels: same numbers as a float32 reference (one rounding), row
// results independent of the other rows in the call, odd shapes (K not a multiple of
// 32, N not a multiple of the tile), and a dispatch decision that follows the CPU.
// The float32 kernels: close to at::linear / softmax attention, and each token row's
// result bitwise independent of M and of the rows sharing the call.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>

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
      // Row at a time (<= 8), then groups of 16 token lanes: one (9-16), two (17-32),
      // three in one pass (33-48), four in two passes (49-64).
      for (int64_t M : {1, 3, 4, 7, 8, 9, 16, 17, 31, 32, 33, 48, 50, 64}) {
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

// Each path (row at a time up to 8 token rows, 16-token lanes above) adds in a fixed
// order, so within a path a row's result does not depend on the other rows; the two
// paths may differ by a rounding step.
TEST(CpuKernelsTest, EachRowIsIndependentOfItsNeighbours) {
  if (!CpuHasBf16Dot()) {
    EXPECT_FALSE(CanUseSmallBatchBf16Linear(at::randn({1, 8}).to(at::kBFloat16),
                                            at::randn({8, 8}).to(at::kBFloat16), at::Tensor()));
    return;
  }
  for (int64_t K : {4864, 45}) {
    const at::Tensor w = at::randn({300, K}).to(at::kBFloat16);
    const at::Tensor rows = at::randn({64, K}).to(at::kBFloat16);
    const at::Tensor eight = SmallBatchBf16Linear(rows.narrow(0, 0, 8).contiguous(), w, at::Tensor());
    for (int64_t r = 0; r < 8; ++r) {
      const at::Tensor alone = SmallBatchBf16Linear(rows.narrow(0, r, 1).contiguous(), w, at::Tensor());
      EXPECT_TRUE(at::equal(alone[0], eight[r])) << "K=" << K << " row " << r;
    }
    // The lanes path with one group (9, 13 rows), two (20), three (40) and four (64).
    const at::Tensor all = SmallBatchBf16Linear(rows, w, at::Tensor());
    for (int64_t offset : {int64_t{4}, int64_t{19}, int64_t{23}}) {
      for (int64_t M : {int64_t{9}, int64_t{13}, int64_t{20}, int64_t{40}}) {
        const at::Tensor some = SmallBatchBf16Linear(rows.narrow(0, offset, M).contiguous(), w, at::Tensor());
        for (int64_t r = 0; r < M; ++r) {
          EXPECT_TRUE(at::equal(some[r], all[r + offset]))
              << "K=" << K << " M=" << M << " row " << r + offset;
        }
      }
    }
    const double scale = all.to(at::kFloat).abs().max().item<double>();
    EXPECT_LE((all.narrow(0, 0, 8).to(at::kFloat) - eight.to(at::kFloat)).abs().max().item<double>(),
              1e-2 * scale);
  }
}

// Greedy decoding's argmax must pick exactly what at::argmax picks: the first of tied
// maxima (also across vector lanes), the first NaN, index 0 for a row of -inf.
TEST(CpuKernelsTest, F32ArgmaxRowsMatchesAtArgmax) {
  const at::Tensor probe = at::zeros({2, 5});
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vl")) {
    EXPECT_FALSE(CanUseF32ArgmaxRows(probe));  // The sampler keeps at::argmax.
    return;
  }
  EXPECT_TRUE(CanUseF32ArgmaxRows(probe));
  EXPECT_FALSE(CanUseF32ArgmaxRows(at::zeros({2, 5}, at::kBFloat16)));
  EXPECT_FALSE(CanUseF32ArgmaxRows(at::zeros({5, 2}).t()));  // Strided.
  at::manual_seed(11);
  for (int64_t V : {1, 15, 16, 17, 1000, 151936}) {
    at::Tensor logits = at::randn({6, V});
    if (V >= 17) {
      logits[1][V - 1] = 100.0;  // Ties: the first wins, in another lane than the second.
      logits[1][3] = 100.0;
      logits[2][V / 2] = std::numeric_limits<float>::quiet_NaN();
      logits[2][V - 1] = std::numeric_limits<float>::quiet_NaN();
      logits[2][0] = 1000.0;
    }
    logits[3].fill_(-std::numeric_limits<float>::infinity());
    logits[4].fill_(0.5);  // All equal.
    const std::vector<int64_t> got = F32ArgmaxRows(logits);
    const at::Tensor expected = logits.argmax(-1);
    ASSERT_EQ(got.size(), 6u);
    for (int64_t b = 0; b < 6; ++b) {
      EXPECT_EQ(got[b], expected[b].item<int64_t>()) << "V=" << V << " row " << b;
    }
  }
}

// The fused bf16 SwiGLU rounds where libtorch 1.13's bf16 silu and multiply round
// (exp, 1 + exp, the quotient, the product); only its exp differs from ATen's, by float
// rounding, which rarely moves a bf16 result by one step.
TEST(CpuKernelsTest, Bf16SiluMulMatchesTheTensorOps) {
  const at::Tensor probe = at::zeros({2, 8}, at::kBFloat16);
  if (!__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl")) {
    EXPECT_FALSE(CanUseBf16SiluMul(probe));
    return;
  }
  EXPECT_TRUE(CanUseBf16SiluMul(probe));
  EXPECT_FALSE(CanUseBf16SiluMul(at::zeros({2, 7}, at::kBFloat16)));  // Odd: no halves.
  EXPECT_FALSE(CanUseBf16SiluMul(at::zeros({2, 8})));                 // float32
  at::manual_seed(5);
  for (int64_t I : {1, 15, 16, 17, 4864}) {
    at::Tensor gate_up = (at::randn({3, 1, 2 * I}) * 4).to(at::kBFloat16);
    gate_up[0][0][0] = -100.0;  // exp overflows in float: silu is -0.
    const at::Tensor got = Bf16SiluMul(gate_up);  // [3, 1, I]
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{3, 1, I}));
    const at::Tensor gate = gate_up.narrow(-1, 0, I).to(at::kFloat);
    const at::Tensor up = gate_up.narrow(-1, I, I).to(at::kFloat);
    auto bf16 = [](const at::Tensor& t) { return t.to(at::kBFloat16).to(at::kFloat); };
    const at::Tensor expected_f =
        bf16(bf16(gate / bf16(1 + bf16(at::exp(-gate)))) * up);  // The documented rounding.
    const at::Tensor got_f = got.to(at::kFloat);
    // One bf16 step is at most 2^-7 relative.
    EXPECT_TRUE(at::allclose(got_f, expected_f, /*rtol=*/1.0 / 128, /*atol=*/1e-30)) << "I=" << I;
    const double same = got_f.eq(expected_f).to(at::kDouble).mean().item<double>();
    // And ATen's own ops, whatever their rounding, within two steps.
    const at::Tensor aten = (at::silu(gate_up.narrow(-1, 0, I)) * gate_up.narrow(-1, I, I));
    EXPECT_TRUE(at::allclose(got_f, aten.to(at::kFloat), 1.0 / 64, 1e-30)) << "I=" << I;
    EXPECT_GE(same, 0.99) << "I=" << I;
  }
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

// ---- Float32 kernels ----

bool CpuHasAvx512F() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
}

TEST(CpuKernelsTest, F32DispatchFollowsTheCpuTheShapeAndAutograd) {
  const at::Tensor w = at::randn({40, 64});
  EXPECT_EQ(CanUseSmallBatchF32Linear(at::randn({1, 64}), w, at::Tensor()), CpuHasAvx512F());
  EXPECT_EQ(CanUseSmallBatchF32Linear(at::randn({kSmallBatchF32LinearMaxRows, 64}), w,
                                      at::randn({40})),
            CpuHasAvx512F());
  // Short rows may go up to the prefill limit, long ones only to the row limit.
  EXPECT_EQ(CanUseSmallBatchF32Linear(at::randn({kSmallBatchF32LinearMaxPrefillRows, 64}), w,
                                      at::Tensor()),
            CpuHasAvx512F());
  EXPECT_FALSE(CanUseSmallBatchF32Linear(at::randn({kSmallBatchF32LinearMaxPrefillRows + 1, 64}),
                                         w, at::Tensor()));
  const at::Tensor long_w = at::randn({8, 4096});
  EXPECT_FALSE(CanUseSmallBatchF32Linear(at::randn({kSmallBatchF32LinearMaxRows + 1, 4096}),
                                         long_w, at::Tensor()));
  // Other dtypes, non-contiguous input, a mismatched bias: the library path.
  EXPECT_FALSE(CanUseSmallBatchF32Linear(at::randn({1, 64}).to(at::kBFloat16),
                                         w.to(at::kBFloat16), at::Tensor()));
  EXPECT_FALSE(CanUseSmallBatchF32Linear(at::randn({64, 2}).t(), w, at::Tensor()));
  EXPECT_FALSE(CanUseSmallBatchF32Linear(at::randn({1, 64}), w, at::randn({41})));
  // Autograd never goes through the kernel.
  {
    at::AutoGradMode grad(true);
    const at::Tensor trainable = w.clone().set_requires_grad(true);
    EXPECT_FALSE(CanUseSmallBatchF32Linear(at::randn({1, 64}), trainable, at::Tensor()));
    EXPECT_FALSE(CanUseSmallBatchF32Linear(at::randn({1, 64}).set_requires_grad(true), w,
                                           at::Tensor()));
    EXPECT_FALSE(CanUseF32RmsNorm(at::randn({1, 64}).set_requires_grad(true), at::randn({64})));
  }
  EXPECT_FALSE(CanUseF32RmsNorm(at::randn({1, 64}).to(at::kBFloat16),
                                at::randn({64}).to(at::kBFloat16)));
  EXPECT_EQ(CanUseF32RmsNorm(at::randn({3, 64}), at::randn({64})), CpuHasAvx512F());
}

TEST(CpuKernelsTest, F32LinearMatchesAtLinearOnOddShapes) {
  if (!CpuHasAvx512F()) {
    EXPECT_FALSE(CanUseSmallBatchF32Linear(at::randn({1, 8}), at::randn({8, 8}), at::Tensor()));
    return;
  }
  at::manual_seed(7);
  for (int64_t K : {1, 5, 16, 45, 192, 512, 896}) {
    for (int64_t N : {1, 5, 16, 17, 64, 130}) {
      for (int64_t M : {1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 64, 128}) {
        for (bool with_bias : {false, true}) {
          const at::Tensor x = at::randn({M, 1, K});
          const at::Tensor w = at::randn({N, K});
          const at::Tensor b = with_bias ? at::randn({N}) : at::Tensor();
          ASSERT_TRUE(CanUseSmallBatchF32Linear(x, w, b));
          const at::Tensor got = SmallBatchF32Linear(x, w, b);  // [M, 1, N]
          ASSERT_EQ(got.sizes(), (std::vector<int64_t>{M, 1, N}));
          const at::Tensor expected = with_bias ? at::linear(x, w, b) : at::linear(x, w);
          // Float32 sums in another order: a few ulp of the terms' magnitude.
          const double tolerance =
              1e-6 * std::sqrt(static_cast<double>(K)) * (1 + std::sqrt(static_cast<double>(K)));
          EXPECT_LE((got - expected).abs().max().item<double>(), tolerance)
              << "M=" << M << " N=" << N << " K=" << K << " bias=" << with_bias;
        }
      }
    }
  }
}

// The property the serving batch relies on: a token row's output is the same bits
// whatever M is, wherever the row sits and whichever rows share the call (every tile
// shape, 4x4, 8x2 and 16x1, and the thread split take the same steps per output).
TEST(CpuKernelsTest, F32LinearRowsAreBitwiseIndependentOfTheBatch) {
  if (!CpuHasAvx512F()) return;
  at::manual_seed(8);
  const int64_t threads = at::get_num_threads();
  for (int64_t K : {45, 192, 512}) {
    const at::Tensor w = at::randn({130, K});
    const at::Tensor b = at::randn({130});
    const at::Tensor rows = at::randn({140, K});
    std::vector<at::Tensor> alone;
    for (int64_t r = 0; r < rows.size(0); ++r) {
      alone.push_back(SmallBatchF32Linear(rows.narrow(0, r, 1).contiguous(), w, b)[0]);
    }
    for (int num_threads : {1, 2}) {
      at::set_num_threads(num_threads);
      for (int64_t M : {1, 2, 3, 5, 6, 7, 8, 9, 13, 16, 31, 32, 33, 64, 127, 128}) {
        for (int64_t offset : {int64_t{0}, int64_t{3}, 140 - M}) {
          const at::Tensor x = rows.narrow(0, offset, M).contiguous();
          ASSERT_TRUE(CanUseSmallBatchF32Linear(x, w, b));
          const at::Tensor got = SmallBatchF32Linear(x, w, b);
          for (int64_t r = 0; r < M; ++r) {
            ASSERT_TRUE(at::equal(got[r], alone[offset + r]))
                << "K=" << K << " M=" << M << " offset=" << offset << " row " << r
                << " threads=" << num_threads;
          }
        }
      }
    }
  }
  at::set_num_threads(static_cast<int>(threads));
}

TEST(CpuKernelsTest, F32RmsNormMatchesTheTensorFormula) {
  if (!CpuHasAvx512F()) return;
  at::manual_seed(9);
  for (int64_t d : {1, 15, 64, 192, 200}) {
    const at::Tensor x = at::randn({3, 5, d}) * 3;
    const at::Tensor weight = 1 + 0.1 * at::randn({d});
    ASSERT_TRUE(CanUseF32RmsNorm(x, weight));
    const at::Tensor got = F32RmsNorm(x, weight, 1e-6);
    const at::Tensor expected = weight * (x * at::rsqrt(x.pow(2).mean(-1, true) + 1e-6));
    EXPECT_LE((got - expected).abs().max().item<double>(), 1e-5) << "d=" << d;
    // Row by row the same bits.
    for (int64_t r = 0; r < 5; ++r) {
      EXPECT_TRUE(at::equal(F32RmsNorm(x[1][r].contiguous(), weight, 1e-6), got[1][r]));
    }
  }
}

// Reference attention for one head of row b in float64.
at::Tensor ReferenceHead(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                         int64_t b, int64_t h, int64_t kv, int64_t first, int64_t last,
                         double scale) {
  const int64_t n = last - first + 1;
  const at::Tensor k = keys[b][kv].narrow(0, first, n).to(at::kDouble);
  const at::Tensor v = values[b][kv].narrow(0, first, n).to(at::kDouble);
  const at::Tensor p = at::softmax(at::matmul(k, q[b][h][0].to(at::kDouble)) * scale, 0);
  return at::matmul(p, v);
}

TEST(CpuKernelsTest, F32DecodeAttentionMatchesSoftmaxAttention) {
  if (!CpuHasAvx512F()) return;
  at::manual_seed(10);
  for (int64_t hd : {8, 16, 32, 40, 64, 128, 200}) {
    const int64_t B = 4, H = 6, KVH = 2, S = 45, G = H / KVH;
    const at::Tensor q = at::randn({B, H, 1, hd});
    const at::Tensor keys = at::randn({B, KVH, S, hd}) * 2;
    const at::Tensor values = at::randn({B, KVH, S, hd});
    // Ragged rows: one column, a partial block, exactly 16, a long one.
    const std::vector<int64_t> first = {7, 2, 0, 3}, last = {7, 12, 15, 44};
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    ASSERT_TRUE(CanUseF32DecodeAttention(keys, /*query_len=*/1));
    const at::Tensor got = F32DecodeAttention(q, keys, values, first, last, scale);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{B, 1, H * hd}));
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        const at::Tensor expected =
            ReferenceHead(q, keys, values, b, h, h / G, first[b], last[b], scale);
        const at::Tensor row = got[b][0].narrow(0, h * hd, hd).to(at::kDouble);
        EXPECT_LE((row - expected).abs().max().item<double>(), 1e-5)
            << "hd=" << hd << " b=" << b << " h=" << h;
      }
    }
  }
  EXPECT_FALSE(CanUseF32DecodeAttention(at::randn({1, 1, 4, 8}), /*query_len=*/2));
  EXPECT_FALSE(CanUseF32DecodeAttention(at::randn({1, 1, 4, 8}).to(at::kBFloat16), 1));
}

// A row's attention is the same bits alone or in a batch, and wherever its columns sit
// in its cache slot (a continuous batch places rows at unrelated columns).
TEST(CpuKernelsTest, F32DecodeAttentionRowsAreBitwiseIndependent) {
  if (!CpuHasAvx512F()) return;
  at::manual_seed(11);
  const int64_t B = 5, H = 6, KVH = 2, S = 70, hd = 32;
  const at::Tensor q = at::randn({B, H, 1, hd});
  const at::Tensor keys = at::randn({B, KVH, S, hd});
  const at::Tensor values = at::randn({B, KVH, S, hd});
  const std::vector<int64_t> first = {0, 5, 9, 1, 30}, last = {40, 5, 50, 16, 69};
  const at::Tensor batch = F32DecodeAttention(q, keys, values, first, last, 0.2);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = last[b] - first[b] + 1;
    // The row alone, its columns moved to start at 3 of a longer slot.
    const at::Tensor k = at::zeros({1, KVH, n + 10, hd}), v = at::zeros({1, KVH, n + 10, hd});
    k.narrow(2, 3, n).copy_(keys.narrow(0, b, 1).narrow(2, first[b], n));
    v.narrow(2, 3, n).copy_(values.narrow(0, b, 1).narrow(2, first[b], n));
    const at::Tensor alone =
        F32DecodeAttention(q.narrow(0, b, 1), k, v, {3}, {3 + n - 1}, 0.2);
    EXPECT_TRUE(at::equal(alone[0], batch[b])) << "row " << b;
  }
}

// The fused decode step against the tensor ops it replaces: RoPE as Hugging Face writes
// it, the cache write, then attention; rows at unrelated lengths.
// A decode step for the fused RoPE kernels (three rows at unrelated cache columns), and
// what the transformer's tensor ops make of it: the rotated query, and the caches with
// the rotated key and the value written. The kernels then run on q..cache_v.
struct RopeStep {
  static constexpr int64_t B = 3, H = 6, KVH = 2, S = 40;
  const std::vector<int64_t> first = {0, 4, 10}, write_at = {20, 4, 39};
  at::Tensor q, k, v, cos, sin, cache_k, cache_v;  // [B, 1, H * hd], ..., [B, KVH, S, hd]
  at::Tensor q_rot, expected_k, expected_v;        // [B, H, 1, hd], [B, KVH, S, hd]
  double scale;

  RopeStep(int64_t hd, at::ScalarType dtype) : scale(1.0 / std::sqrt(static_cast<double>(hd))) {
    q = at::randn({B, 1, H * hd}).to(dtype);
    k = at::randn({B, 1, KVH * hd}).to(dtype);
    v = at::randn({B, 1, KVH * hd}).to(dtype);
    const at::Tensor angles = at::rand({B, 1, 1, hd / 2}) * 50;
    const at::Tensor emb = at::cat({angles, angles}, -1);
    cos = emb.cos().to(dtype);  // [B, 1, 1, hd]
    sin = emb.sin().to(dtype);
    cache_k = at::randn({B, KVH, S, hd}).to(dtype);
    cache_v = at::randn({B, KVH, S, hd}).to(dtype);
    auto rope = [&](const at::Tensor& x) {  // [B, heads, 1, hd], as the transformer does
      const int64_t half = hd / 2;
      const at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
      return x * cos + rotated * sin;
    };
    q_rot = rope(q.view({B, 1, H, hd}).transpose(1, 2));
    const at::Tensor k_rot = rope(k.view({B, 1, KVH, hd}).transpose(1, 2));
    expected_k = cache_k.clone();
    expected_v = cache_v.clone();
    for (int64_t b = 0; b < B; ++b) {
      expected_k[b].narrow(1, write_at[b], 1).copy_(k_rot[b]);
      expected_v[b].narrow(1, write_at[b], 1).copy_(v.view({B, 1, KVH, hd}).transpose(1, 2)[b]);
    }
  }
};

// The fused bf16 step rounds RoPE where ATen's bf16 ops round, so the cache it writes
// and the attention it returns are bit for bit those of the tensor ops followed by
// Bf16DecodeAttention.
TEST(CpuKernelsTest, Bf16RopeDecodeAttentionEqualsTheTensorOps) {
  const at::Tensor probe = at::zeros({1, 1, 4, 8}, at::kBFloat16);
  if (!__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl")) {
    EXPECT_FALSE(CanUseBf16RopeDecodeAttention(probe, 1));
    return;
  }
  EXPECT_TRUE(CanUseBf16RopeDecodeAttention(probe, 1));
  EXPECT_FALSE(CanUseBf16RopeDecodeAttention(probe, 2));  // One new position only.
  EXPECT_FALSE(CanUseBf16RopeDecodeAttention(at::zeros({1, 1, 4, 7}, at::kBFloat16), 1));
  EXPECT_FALSE(CanUseBf16RopeDecodeAttention(at::zeros({1, 1, 4, 8}), 1));  // float32
  at::manual_seed(21);
  for (int64_t hd : {8, 40, 64, 128}) {
    RopeStep step(hd, at::kBFloat16);
    const at::Tensor got =
        Bf16RopeDecodeAttention(step.q, step.k, step.v, step.cos, step.sin, step.cache_k,
                                step.cache_v, step.first, step.write_at, step.scale);
    EXPECT_TRUE(at::equal(step.cache_k, step.expected_k)) << "hd=" << hd;
    EXPECT_TRUE(at::equal(step.cache_v, step.expected_v)) << "hd=" << hd;
    const at::Tensor reference = Bf16DecodeAttention(step.q_rot, step.expected_k, step.expected_v,
                                                     step.first, step.write_at, step.scale);
    EXPECT_TRUE(at::equal(got, reference)) << "hd=" << hd;
  }
}

TEST(CpuKernelsTest, F32RopeDecodeAttentionMatchesTheTensorOps) {
  if (!CpuHasAvx512F()) return;
  at::manual_seed(12);
  for (int64_t hd : {8, 32, 40, 64, 128}) {
    RopeStep step(hd, at::kFloat);
    const int64_t B = RopeStep::B, H = RopeStep::H, KVH = RopeStep::KVH;
    ASSERT_TRUE(CanUseF32RopeDecodeAttention(step.cache_k, 1));
    const at::Tensor got =
        F32RopeDecodeAttention(step.q, step.k, step.v, step.cos, step.sin, step.cache_k,
                               step.cache_v, step.first, step.write_at, step.scale);
    // The cache now holds the rotated key (one fused multiply-add from the formula's
    // two products and a sum) and the value as given; nothing else moved.
    EXPECT_LE((step.cache_k - step.expected_k).abs().max().item<double>(), 1e-5) << "hd=" << hd;
    EXPECT_TRUE(at::equal(step.cache_v, step.expected_v)) << "hd=" << hd;
    const at::Tensor reference = F32DecodeAttention(step.q_rot, step.expected_k, step.expected_v,
                                                    step.first, step.write_at, step.scale);
    EXPECT_LE((got - reference).abs().max().item<double>(), 1e-5) << "hd=" << hd;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        const at::Tensor exact =
            ReferenceHead(step.q_rot, step.expected_k, step.expected_v, b, h, h / (H / KVH),
                          step.first[b], step.write_at[b], step.scale);
        EXPECT_LE((got[b][0].narrow(0, h * hd, hd).to(at::kDouble) - exact).abs().max()
                      .item<double>(),
                  1e-5);
      }
    }
  }
  EXPECT_FALSE(CanUseF32RopeDecodeAttention(at::randn({1, 1, 4, 7}), 1));  // Odd head_dim.
}

TEST(CpuKernelsTest, F32RopeDecodeAttentionRowsAreBitwiseIndependent) {
  if (!CpuHasAvx512F()) return;
  at::manual_seed(13);
  const int64_t B = 4, H = 6, KVH = 2, S = 50, hd = 32;
  const at::Tensor q = at::randn({B, 1, H * hd}), k = at::randn({B, 1, KVH * hd});
  const at::Tensor v = at::randn({B, 1, KVH * hd});
  const at::Tensor cos = at::randn({B, 1, 1, hd}), sin = at::randn({B, 1, 1, hd});
  const at::Tensor keys = at::randn({B, KVH, S, hd}), values = at::randn({B, KVH, S, hd});
  const std::vector<int64_t> first = {0, 7, 30, 2}, write_at = {33, 7, 49, 20};
  at::Tensor batch_k = keys.clone(), batch_v = values.clone();
  const at::Tensor batch =
      F32RopeDecodeAttention(q, k, v, cos, sin, batch_k, batch_v, first, write_at, 0.2);
  for (int64_t b = 0; b < B; ++b) {
    // Alone, its visible columns moved to start at column 1.
    const int64_t n = write_at[b] - first[b];  // Cached columns before the new one.
    at::Tensor k1 = at::zeros({1, KVH, n + 5, hd}), v1 = at::zeros({1, KVH, n + 5, hd});
    k1.narrow(2, 1, n).copy_(keys.narrow(0, b, 1).narrow(2, first[b], n));
    v1.narrow(2, 1, n).copy_(values.narrow(0, b, 1).narrow(2, first[b], n));
    const at::Tensor alone =
        F32RopeDecodeAttention(q.narrow(0, b, 1), k.narrow(0, b, 1), v.narrow(0, b, 1),
                               cos.narrow(0, b, 1), sin.narrow(0, b, 1), k1, v1, {1}, {1 + n}, 0.2);
    EXPECT_TRUE(at::equal(alone[0], batch[b])) << "row " << b;
    EXPECT_TRUE(at::equal(k1[0].narrow(1, 1 + n, 1), batch_k[b].narrow(1, write_at[b], 1)));
  }
}

TEST(CpuKernelsTest, F32SiluMulMatchesTheTensorOps) {
  if (!CpuHasAvx512F()) return;
  at::manual_seed(14);
  for (int64_t I : {1, 16, 45, 512}) {
    at::Tensor gate_up = at::randn({3, 2, 2 * I}) * 6;
    gate_up[0][0][0] = 95.0f;   // exp(-x) underflows: silu(x) = x.
    if (I > 1) gate_up[0][0][1] = -95.0f;  // exp(-x) overflows: silu(x) = -0.
    ASSERT_TRUE(CanUseF32SiluMul(gate_up));
    const at::Tensor got = F32SiluMul(gate_up);
    const at::Tensor expected = at::silu(gate_up.narrow(-1, 0, I)) * gate_up.narrow(-1, I, I);
    ASSERT_EQ(got.sizes(), expected.sizes());
    EXPECT_TRUE(at::allclose(got, expected, /*rtol=*/1e-6, /*atol=*/1e-6)) << "I=" << I;
    EXPECT_FALSE(at::isnan(got).any().item<bool>());
  }
  EXPECT_FALSE(CanUseF32SiluMul(at::randn({2, 5})));  // Odd width.
  EXPECT_FALSE(CanUseF32SiluMul(at::randn({2, 6}).to(at::kBFloat16)));
}

// ---- Paged packed attention and the batch-invariant linear ----

bool CpuHasPagedAttention(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? __builtin_cpu_supports("avx512bw") &&
                                      __builtin_cpu_supports("avx512vl")
                                : CpuHasAvx512F();
}

// A paged pool and its sequences' block tables: sequence b owns blocks for
// `capacity[b]` positions, drawn in shuffled order from the pool (which has spare
// blocks), so consecutive positions of a sequence sit in unrelated blocks.
struct PagedCache {
  at::Tensor keys, values;                  // [KVH, num_blocks, block_size, hd]
  std::vector<std::vector<int32_t>> tables;  // [B][blocks of b]
  int64_t block_size;

  PagedCache(const std::vector<int64_t>& capacity, int64_t KVH, int64_t block_size,
             int64_t hd, at::ScalarType dtype)
      : block_size(block_size) {
    int64_t needed = 0;
    for (int64_t c : capacity) needed += (c + block_size - 1) / block_size;
    const int64_t num_blocks = needed + 3;
    keys = at::randn({KVH, num_blocks, block_size, hd}).to(dtype);  // Garbage until written.
    values = at::randn({KVH, num_blocks, block_size, hd}).to(dtype);
    const at::Tensor order = at::randperm(num_blocks, at::kLong);
    int64_t next = 0;
    for (int64_t c : capacity) {
      tables.emplace_back();
      for (int64_t j = 0; j < (c + block_size - 1) / block_size; ++j) {
        tables.back().push_back(static_cast<int32_t>(order[next++].item<int64_t>()));
      }
    }
  }

  std::vector<const int32_t*> Tables() const {
    std::vector<const int32_t*> out;
    for (const auto& t : tables) out.push_back(t.data());
    return out;
  }
  // Position p of sequence b, KV head kv: [hd] (a view into the pool).
  at::Tensor Key(int64_t b, int64_t kv, int64_t p) const {
    return keys[kv][tables[b][p / block_size]][p % block_size];
  }
  at::Tensor Value(int64_t b, int64_t kv, int64_t p) const {
    return values[kv][tables[b][p / block_size]][p % block_size];
  }
  // Positions [0, n) of sequence b as a contiguous [KVH, n, hd] tensor.
  at::Tensor Gather(const at::Tensor& pool, int64_t b, int64_t n) const {
    std::vector<at::Tensor> rows;
    for (int64_t p = 0; p < n; ++p) {
      // [KVH, hd]
      rows.push_back(pool.select(1, tables[b][p / block_size]).select(1, p % block_size));
    }
    return at::stack(rows, 1);
  }
};

at::Tensor RunRopeDecode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& cos, const at::Tensor& sin, at::Tensor& cache_k,
                         at::Tensor& cache_v, const std::vector<int64_t>& write_at,
                         double scale) {
  const std::vector<int64_t> first(write_at.size(), 0);
  return q.scalar_type() == at::kBFloat16
             ? Bf16RopeDecodeAttention(q, k, v, cos, sin, cache_k, cache_v, first, write_at, scale)
             : F32RopeDecodeAttention(q, k, v, cos, sin, cache_k, cache_v, first, write_at, scale);
}

// A paged decode step (one token per sequence, in an order unrelated to the sequences)
// gives bit for bit what the contiguous fused decode kernels give on a cache holding
// the same keys and values, and writes the same rotated key and value.
TEST(CpuKernelsTest, PagedDecodeEqualsTheContiguousDecodeKernels) {
  struct Shape {
    int64_t H, KVH, hd, block_size;
  };
  at::manual_seed(31);
  for (at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
    if (!CpuHasPagedAttention(dtype)) {
      EXPECT_FALSE(CanUsePagedRopeAttention(at::zeros({4, 2, 16, 64}, dtype)));
      continue;
    }
    for (const Shape& shape : {Shape{14, 2, 64, 16}, Shape{5, 1, 40, 16}, Shape{9, 3, 8, 8},
                               Shape{12, 4, 128, 16}, Shape{7, 7, 32, 4}}) {
      const int64_t H = shape.H, KVH = shape.KVH, hd = shape.hd;
      const std::vector<int64_t> write_at = {0, 17, 47, 100, 15};  // Column of the new token.
      const int64_t B = static_cast<int64_t>(write_at.size()), S = 101;
      PagedCache paged({1, 18, 48, 101, 16}, KVH, shape.block_size, hd, dtype);
      at::Tensor cache_k = at::randn({B, KVH, S, hd}).to(dtype);
      at::Tensor cache_v = at::randn({B, KVH, S, hd}).to(dtype);
      for (int64_t b = 0; b < B; ++b) {  // The cached positions, in both layouts.
        for (int64_t kv = 0; kv < KVH; ++kv) {
          for (int64_t p = 0; p < write_at[b]; ++p) {
            paged.Key(b, kv, p).copy_(cache_k[b][kv][p]);
            paged.Value(b, kv, p).copy_(cache_v[b][kv][p]);
          }
        }
      }
      const at::Tensor q = at::randn({B, 1, H * hd}).to(dtype);
      const at::Tensor k = at::randn({B, 1, KVH * hd}).to(dtype);
      const at::Tensor v = at::randn({B, 1, KVH * hd}).to(dtype);
      const at::Tensor angles = at::rand({B, 1, hd / 2}) * 50;
      const at::Tensor cos = at::cat({angles, angles}, -1).cos().to(dtype);  // [B, 1, hd]
      const at::Tensor sin = at::cat({angles, angles}, -1).sin().to(dtype);
      const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
      const at::Tensor expected =
          RunRopeDecode(q, k, v, cos, sin, cache_k, cache_v, write_at, scale);  // [B, 1, H*hd]

      // The paged call takes the rows in another order.
      const std::vector<int64_t> order = {3, 0, 4, 2, 1};
      const at::Tensor index = at::tensor(order, at::kLong);
      PagedTokens tokens;
      tokens.block_tables = paged.Tables();
      for (int64_t b : order) {
        tokens.row.push_back(b);
        tokens.position.push_back(write_at[b]);
      }
      ASSERT_TRUE(CanUsePagedRopeAttention(paged.keys));
      const at::Tensor got = PagedRopeAttention(
          q.view({B, H * hd}).index_select(0, index), k.view({B, KVH * hd}).index_select(0, index),
          v.view({B, KVH * hd}).index_select(0, index), cos.view({B, hd}).index_select(0, index),
          sin.view({B, hd}).index_select(0, index), paged.keys, paged.values, tokens, scale);
      ASSERT_EQ(got.sizes(), (std::vector<int64_t>{B, H * hd}));
      for (int64_t i = 0; i < B; ++i) {
        const int64_t b = order[i];
        EXPECT_TRUE(at::equal(got[i], expected[b][0]))
            << at::toString(dtype) << " H=" << H << " KVH=" << KVH << " hd=" << hd << " row " << b;
        const at::Tensor keys = paged.Gather(paged.keys, b, write_at[b] + 1);  // [KVH, n, hd]
        const at::Tensor values = paged.Gather(paged.values, b, write_at[b] + 1);
        EXPECT_TRUE(at::equal(keys, cache_k[b].narrow(1, 0, write_at[b] + 1))) << "row " << b;
        EXPECT_TRUE(at::equal(values, cache_v[b].narrow(1, 0, write_at[b] + 1))) << "row " << b;
      }
    }
  }
}

// RoPE as the transformer's tensor ops write it: x * cos + rotate_half(x) * sin.
// x: [..., hd], cos, sin broadcast to it.
at::Tensor TensorRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

// A prefill of three sequences in one call (one from position 0, one after 20 cached
// positions, one after 5; the tokens in shuffled order, so that a token may come before
// those it attends to) equals feeding the same tokens one call each in position order,
// bit for bit, and masked softmax attention within float rounding.
TEST(CpuKernelsTest, PagedPrefillEqualsTokenByTokenAndSoftmaxAttention) {
  at::manual_seed(32);
  const int64_t H = 6, KVH = 2, hd = 64, block_size = 16, G = H / KVH;
  const std::vector<int64_t> cached = {0, 20, 5}, fresh = {13, 9, 30};
  const int64_t B = 3;
  for (at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
    if (!CpuHasPagedAttention(dtype)) continue;
    PagedCache batched({13, 29, 35}, KVH, block_size, hd, dtype);
    PagedCache single = batched;  // Same tables; its own pool copies.
    single.keys = batched.keys.clone();
    single.values = batched.values.clone();
    const at::Tensor initial_keys = batched.keys.clone(), initial_values = batched.values.clone();
    // Token by token: the sequences interleaved, each in position order.
    PagedTokens in_order;
    std::vector<int64_t> next = cached;
    for (bool more = true; more;) {
      more = false;
      for (int64_t b = 0; b < B; ++b) {
        for (int step = 0; step < 1 + b && next[b] < cached[b] + fresh[b]; ++step) {
          in_order.row.push_back(b);
          in_order.position.push_back(next[b]++);
          more = true;
        }
      }
    }
    const int64_t N = static_cast<int64_t>(in_order.row.size());
    ASSERT_EQ(N, 13 + 9 + 30);
    // The packed call: the same tokens shuffled (token i of the call is shuffled[i] of
    // in_order, and so are its operands).
    const at::Tensor shuffled = at::randperm(N, at::kLong);
    PagedTokens tokens;
    tokens.block_tables = batched.Tables();
    for (int64_t i = 0; i < N; ++i) {
      tokens.row.push_back(in_order.row[shuffled[i].item<int64_t>()]);
      tokens.position.push_back(in_order.position[shuffled[i].item<int64_t>()]);
    }
    const at::Tensor q = at::randn({N, H * hd}).to(dtype);
    const at::Tensor k = at::randn({N, KVH * hd}).to(dtype);
    const at::Tensor v = at::randn({N, KVH * hd}).to(dtype);
    const at::Tensor angles = at::rand({N, hd / 2}) * 50;
    const at::Tensor cos = at::cat({angles, angles}, -1).cos().to(dtype);  // [N, hd]
    const at::Tensor sin = at::cat({angles, angles}, -1).sin().to(dtype);
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    const at::Tensor got =
        PagedRopeAttention(q, k, v, cos, sin, batched.keys, batched.values, tokens, scale);

    // Token by token, in position order, on the other pool.
    PagedTokens one;
    one.block_tables = single.Tables();
    for (int64_t j = 0; j < N; ++j) {
      const int64_t i = at::nonzero(shuffled == j).item<int64_t>();  // Its place in the call.
      one.row = {tokens.row[i]};
      one.position = {tokens.position[i]};
      const at::Tensor alone =
          PagedRopeAttention(q.narrow(0, i, 1), k.narrow(0, i, 1), v.narrow(0, i, 1),
                             cos.narrow(0, i, 1), sin.narrow(0, i, 1), single.keys,
                             single.values, one, scale);
      EXPECT_TRUE(at::equal(alone[0], got[i]))
          << at::toString(dtype) << " sequence " << one.row[0] << " position " << one.position[0];
    }
    EXPECT_TRUE(at::equal(single.keys, batched.keys));
    EXPECT_TRUE(at::equal(single.values, batched.values));

    // What was written: the rotated keys and the values at the tokens' positions, and
    // nothing else (cached positions and spare slots keep their contents).
    const at::Tensor k_rot = TensorRope(k.view({N, KVH, hd}), cos.unsqueeze(1), sin.unsqueeze(1));
    at::Tensor expected_keys = initial_keys.clone(), expected_values = initial_values.clone();
    for (int64_t i = 0; i < N; ++i) {
      const int64_t b = tokens.row[i], p = tokens.position[i];
      const int64_t block = batched.tables[b][p / block_size];
      expected_keys.select(1, block).select(1, p % block_size).copy_(k_rot[i]);
      expected_values.select(1, block).select(1, p % block_size).copy_(v.view({N, KVH, hd})[i]);
    }
    EXPECT_TRUE(at::equal(batched.values, expected_values));
    if (dtype == at::kBFloat16) {  // Rounded where the bf16 tensor ops round.
      EXPECT_TRUE(at::equal(batched.keys, expected_keys));
    } else {  // One fused multiply-add for the formula's products and sum.
      EXPECT_LE((batched.keys - expected_keys).abs().max().item<double>(), 1e-5);
    }

    // Masked softmax attention in float64 over each token's positions [0, p].
    const at::Tensor q_rot = TensorRope(q.view({N, H, hd}), cos.unsqueeze(1), sin.unsqueeze(1));
    double worst = 0;
    for (int64_t i = 0; i < N; ++i) {
      const int64_t b = tokens.row[i], p = tokens.position[i];
      const at::Tensor keys = batched.Gather(batched.keys, b, p + 1).to(at::kDouble);  // [KVH, n, hd]
      const at::Tensor values = batched.Gather(batched.values, b, p + 1).to(at::kDouble);
      for (int64_t h = 0; h < H; ++h) {
        const at::Tensor weights =
            at::softmax(at::matmul(keys[h / G], q_rot[i][h].to(at::kDouble)) * scale, 0);
        const at::Tensor expected = at::matmul(weights, values[h / G]);  // [hd]
        const at::Tensor row = got[i].narrow(0, h * hd, hd).to(at::kDouble);
        worst = std::max(worst, (row - expected).abs().max().item<double>());
      }
    }
    // bf16: the output is rounded once to bf16 (|values| < ~4: 2^-6 apart at most).
    EXPECT_LE(worst, dtype == at::kBFloat16 ? 0.02 : 1e-5) << at::toString(dtype);
  }
}

TEST(CpuKernelsTest, PagedAttentionRefusesWhatItCannotRead) {
  for (at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
    const bool cpu = CpuHasPagedAttention(dtype);
    EXPECT_EQ(CanUsePagedRopeAttention(at::zeros({4, 2, 16, 64}, dtype)), cpu);
    EXPECT_FALSE(CanUsePagedRopeAttention(at::zeros({4, 2, 16, 63}, dtype)));   // Odd hd.
    EXPECT_FALSE(CanUsePagedRopeAttention(at::zeros({4, 2, 16, 258}, dtype)));  // hd > 256.
    EXPECT_FALSE(CanUsePagedRopeAttention(at::zeros({4, 2, 12, 64}, dtype)));   // Block size.
    EXPECT_FALSE(CanUsePagedRopeAttention(at::zeros({2, 16, 64}, dtype)));      // 3 dims.
    EXPECT_FALSE(CanUsePagedRopeAttention(at::zeros({4, 16, 2, 64}, dtype).transpose(1, 2)));
    EXPECT_FALSE(CanUsePagedRopeAttention(at::zeros({4, 2, 16, 64}, dtype).set_requires_grad(true)));
  }
  EXPECT_FALSE(CanUsePagedRopeAttention(at::zeros({4, 2, 16, 64}, at::kDouble)));
  EXPECT_FALSE(CanUsePagedRopeAttention(at::zeros({2, 4, 16, 64}, at::kHalf)));
  EXPECT_FALSE(CanUsePagedRopeAttention(at::Tensor()));
  if (!CpuHasAvx512F()) return;
  // Operands that do not fit throw c10::Error (caught at the model boundary).
  const int64_t H = 4, KVH = 2, hd = 8;
  at::Tensor pool_k = at::zeros({KVH, 3, 4, hd}), pool_v = at::zeros({KVH, 3, 4, hd});
  const std::vector<int32_t> table = {2, 0};
  PagedTokens tokens{{0}, {5}, {table.data()}};
  const at::Tensor q = at::randn({1, H * hd}), k = at::randn({1, KVH * hd});
  const at::Tensor cos = at::randn({1, hd});
  EXPECT_EQ(PagedRopeAttention(q, k, k, cos, cos, pool_k, pool_v, tokens, 1.0).sizes(),
            (std::vector<int64_t>{1, H * hd}));
  PagedTokens past_table{{0}, {8}, {table.data()}};  // Block 2 of a 2-block table.
  const std::vector<int32_t> bad_ids = {2, 3};       // Block 3 of a 3-block pool.
  PagedTokens bad_block{{0}, {5}, {bad_ids.data()}};
  PagedTokens bad_row{{1}, {5}, {table.data()}};
  PagedTokens bad_position{{0}, {-1}, {table.data()}};
  PagedTokens ragged{{0}, {}, {table.data()}};
  EXPECT_THROW(PagedRopeAttention(q, k, k, cos, cos, pool_k, pool_v, bad_block, 1.0), c10::Error);
  EXPECT_THROW(PagedRopeAttention(q, k, k, cos, cos, pool_k, pool_v, bad_row, 1.0), c10::Error);
  EXPECT_THROW(PagedRopeAttention(q, k, k, cos, cos, pool_k, pool_v, bad_position, 1.0),
               c10::Error);
  EXPECT_THROW(PagedRopeAttention(q, k, k, cos, cos, pool_k, pool_v, ragged, 1.0), c10::Error);
  (void)past_table;  // Reading past a table's end cannot be detected: the caller's duty.
  EXPECT_THROW(PagedRopeAttention(at::randn({1, 3 * hd}), k, k, cos, cos, pool_k, pool_v, tokens,
                                  1.0),
               c10::Error);  // 3 query heads for 2 KV heads.
  EXPECT_THROW(PagedRopeAttention(q, k.to(at::kBFloat16), k, cos, cos, pool_k, pool_v, tokens, 1.0),
               c10::Error);
  EXPECT_THROW(PagedRopeAttention(q, k, k, at::randn({2, hd}), cos, pool_k, pool_v, tokens, 1.0),
               c10::Error);
  at::Tensor small_v = at::zeros({KVH, 2, 4, hd});
  EXPECT_THROW(PagedRopeAttention(q, k, k, cos, cos, pool_k, small_v, tokens, 1.0), c10::Error);
}

// Each row of BatchInvariantLinear is the same bits whatever M is and whichever rows
// share the call, and close to at::linear.
TEST(CpuKernelsTest, BatchInvariantLinearRowsDoNotDependOnTheBatch) {
  at::manual_seed(33);
  const int64_t rows = 200;
  for (at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
    // K and N off the tiles' multiples; the long rows make the paths' summation orders
    // show in some bf16 roundings.
    for (const auto& [K, N] : {std::pair<int64_t, int64_t>{67, 45}, {256, 40}, {2000, 301}}) {
      const at::Tensor x = at::randn({rows, K}).to(dtype);
      const at::Tensor w = (at::randn({N, K}) / std::sqrt(static_cast<double>(K))).to(dtype);
      for (const at::Tensor& bias : {at::randn({N}).to(dtype), at::Tensor()}) {
        const bool cpu = dtype == at::kBFloat16 ? CpuHasBf16Dot() : CpuHasAvx512F();
        ASSERT_EQ(CanUseBatchInvariantLinear(x, w, bias), cpu);
        if (!cpu) continue;
        const at::Tensor all = BatchInvariantLinear(x, w, bias);  // [rows, N]
        ASSERT_EQ(all.sizes(), (std::vector<int64_t>{rows, N}));
        const at::Tensor reference = at::linear(x.to(at::kFloat), w.to(at::kFloat),
                                                bias.defined() ? bias.to(at::kFloat) : bias);
        // bf16: one rounding of a float32 sum (within 2^-8 relative, plus the sum's order).
        const double tolerance = dtype == at::kBFloat16 ? 0.02 : 1e-5;
        EXPECT_LE((all.to(at::kFloat) - reference).abs().max().item<double>(),
                  tolerance * (1 + reference.abs().max().item<double>()));
        for (int64_t M : {1, 3, 8, 9, 64, 65, 200}) {
          // The first M rows, and M rows picked from all over in a shuffled order.
          EXPECT_TRUE(at::equal(BatchInvariantLinear(x.narrow(0, 0, M), w, bias),
                                all.narrow(0, 0, M)))
              << at::toString(dtype) << " K=" << K << " M=" << M;
          const at::Tensor picked = at::randperm(rows, at::kLong).narrow(0, 0, M);
          EXPECT_TRUE(at::equal(BatchInvariantLinear(x.index_select(0, picked), w, bias),
                                all.index_select(0, picked)))
              << at::toString(dtype) << " K=" << K << " M=" << M << " (shuffled)";
        }
        // A leading batch dimension is rows as well.
        EXPECT_TRUE(at::equal(BatchInvariantLinear(x.view({4, 50, K}), w, bias),
                              all.view({4, 50, N})));
      }
    }
  }
}

TEST(CpuKernelsTest, BatchInvariantLinearRefusesWhatItCannotRead) {
  const at::Tensor w = at::randn({40, 64});
  EXPECT_EQ(CanUseBatchInvariantLinear(at::randn({1000, 64}), w, at::Tensor()), CpuHasAvx512F());
  EXPECT_EQ(CanUseBatchInvariantLinear(at::randn({1000, 64}).to(at::kBFloat16),
                                       w.to(at::kBFloat16), at::Tensor()),
            CpuHasBf16Dot());
  EXPECT_FALSE(CanUseBatchInvariantLinear(at::randn({2, 64}, at::kDouble), w.to(at::kDouble),
                                          at::Tensor()));
  EXPECT_FALSE(CanUseBatchInvariantLinear(at::randn({2, 64}), w.to(at::kBFloat16), at::Tensor()));
  EXPECT_FALSE(CanUseBatchInvariantLinear(at::randn({2, 63}), w, at::Tensor()));   // K differs.
  EXPECT_FALSE(CanUseBatchInvariantLinear(at::randn({64, 2}).t(), w, at::Tensor()));
  EXPECT_FALSE(CanUseBatchInvariantLinear(at::randn({2, 64}), w, at::randn({39})));
  EXPECT_FALSE(CanUseBatchInvariantLinear(at::randn({2, 64}), w, at::randn({40}, at::kDouble)));
  EXPECT_FALSE(CanUseBatchInvariantLinear(at::randn({2, 0}), at::randn({40, 0}), at::Tensor()));
  EXPECT_FALSE(CanUseBatchInvariantLinear(at::randn({2, 0}).to(at::kBFloat16),
                                          at::randn({40, 0}).to(at::kBFloat16), at::Tensor()));
  EXPECT_FALSE(CanUseBatchInvariantLinear(at::Tensor(), w, at::Tensor()));
  EXPECT_FALSE(CanUseBatchInvariantLinear(at::randn({2, 64}), at::Tensor(), at::Tensor()));
  {
    at::AutoGradMode grad(true);
    EXPECT_FALSE(CanUseBatchInvariantLinear(at::randn({2, 64}), w.clone().set_requires_grad(true),
                                            at::Tensor()));
  }
}

}  // namespace
}  // namespace steerd
