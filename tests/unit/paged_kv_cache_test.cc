// The paged KV cache: block accounting, the prefix cache's hash chains (namespaces kept
// apart, collisions verified, least recently released evicted first), and the paged
// forward: it computes what the contiguous forward computes, and a prompt continued
// after a cached prefix gives the same bits as the whole prompt prefilled at once.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/model/paged_kv_cache.h"
#include "server/model/transformer.h"
#include "tests/testing/fixtures.h"

namespace steerd {
namespace {

using ::steerd::testing::FixturePath;
using ::steerd::testing::JsonToFloatTensor;
using ::steerd::testing::MaxAbsDiff;
using ::steerd::testing::ReadJsonOrDie;

ModelConfig TinyConfig() {
  ModelConfig config;
  config.num_layers = 2;
  config.num_kv_heads = 1;
  config.head_dim = 4;
  return config;
}

std::unique_ptr<KvBlockPool> PoolOrDie(int64_t blocks, int64_t block_size = 4) {
  KvBlockPool::Options options;
  options.num_blocks = blocks;
  options.block_size = block_size;
  auto pool = KvBlockPool::Create(TinyConfig(), at::kFloat, at::Device(at::kCPU), options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? std::move(*pool) : nullptr;
}

std::vector<int32_t> Iota(int n, int first = 1) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

// Allocates `n` blocks and registers them as `prompt`'s first n blocks under `ns`.
std::vector<int32_t> CacheChain(KvBlockPool& pool, const std::string& ns,
                                const std::vector<int32_t>& prompt, int n) {
  const std::vector<uint64_t> hashes = pool.ChainHashes(ns, prompt);
  std::vector<int32_t> blocks;
  EXPECT_TRUE(pool.Allocate(n, &blocks));
  for (int i = 0; i < n && i < static_cast<int>(blocks.size()); ++i) {
    pool.Register(blocks[i], i, ns, prompt, hashes);
  }
  return blocks;
}

TEST(KvBlockPoolTest, AllocatesAndReleasesWholeBlocks) {
  auto pool = PoolOrDie(4);
  EXPECT_EQ(pool->BlocksFor(0), 0);
  EXPECT_EQ(pool->BlocksFor(4), 1);
  EXPECT_EQ(pool->BlocksFor(5), 2);
  EXPECT_EQ(pool->keys(0).sizes(), (std::vector<int64_t>{1, 4, 4, 4}));
  std::vector<int32_t> a, b;
  ASSERT_TRUE(pool->Allocate(3, &a));
  EXPECT_EQ(pool->used_blocks(), 3);
  EXPECT_FALSE(pool->Allocate(2, &b)) << "only one block is left";
  EXPECT_TRUE(b.empty()) << "a refused allocation takes nothing";
  pool->Release(a);
  EXPECT_EQ(pool->used_blocks(), 0);
  EXPECT_TRUE(pool->Allocate(4, &b));
  std::sort(b.begin(), b.end());
  EXPECT_EQ(b, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(KvBlockPool::BytesPerBlock(TinyConfig(), at::kBFloat16, 16), 2 * 2 * 1 * 16 * 4 * 2);
}

TEST(KvBlockPoolTest, BadOptionsAreRefused) {
  KvBlockPool::Options options;
  options.num_blocks = 0;
  EXPECT_FALSE(KvBlockPool::Create(TinyConfig(), at::kFloat, at::Device(at::kCPU), options).ok());
  options.num_blocks = 1;
  options.block_size = 0;
  EXPECT_FALSE(KvBlockPool::Create(TinyConfig(), at::kFloat, at::Device(at::kCPU), options).ok());
}

TEST(KvBlockPoolTest, MatchFindsTheLongestRegisteredChainOfFullBlocks) {
  auto pool = PoolOrDie(8);
  const std::vector<int32_t> prompt = Iota(10);  // two full blocks of 4, and 2 tokens
  ASSERT_EQ(pool->ChainHashes("ns", prompt).size(), 2u);
  EXPECT_TRUE(pool->Match("ns", prompt, pool->ChainHashes("ns", prompt), 2).empty())
      << "nothing registered yet";
  const std::vector<int32_t> blocks = CacheChain(*pool, "ns", prompt, 2);
  EXPECT_EQ(pool->cached_blocks(), 2);

  // A longer prompt with the same start takes both blocks, a shorter one only the first.
  std::vector<int32_t> longer = Iota(30);
  std::vector<int32_t> hit = pool->Match("ns", longer, pool->ChainHashes("ns", longer), 7);
  EXPECT_EQ(hit, (std::vector<int32_t>{blocks[0], blocks[1]}));
  std::vector<int32_t> capped = pool->Match("ns", longer, pool->ChainHashes("ns", longer), 1);
  EXPECT_EQ(capped, (std::vector<int32_t>{blocks[0]}));
  // A prompt that differs in the second block shares only the first.
  std::vector<int32_t> forked = Iota(10);
  forked[5] = 99;
  EXPECT_EQ(pool->Match("ns", forked, pool->ChainHashes("ns", forked), 2).size(), 1u);
  // The same tokens under another namespace share nothing: the chain starts elsewhere.
  EXPECT_TRUE(pool->Match("other", prompt, pool->ChainHashes("other", prompt), 2).empty());
  EXPECT_TRUE(pool->Match("", prompt, pool->ChainHashes("", prompt), 2).empty());
}

TEST(KvBlockPoolTest, AHashThatDoesNotMatchTheStoredChainIsAMiss) {
  auto pool = PoolOrDie(4);
  const std::vector<int32_t> prompt = Iota(8);
  const std::vector<uint64_t> hashes = pool->ChainHashes("tenant-a", prompt);
  CacheChain(*pool, "tenant-a", prompt, 2);
  // Another namespace's lookup forged to carry tenant-a's hashes (a collision): the
  // stored namespace and tokens are checked, so it misses.
  EXPECT_TRUE(pool->Match("tenant-b", prompt, hashes, 2).empty());
  std::vector<int32_t> other_tokens = Iota(8, 50);
  EXPECT_TRUE(pool->Match("tenant-a", other_tokens, hashes, 2).empty());
}

TEST(KvBlockPoolTest, HeldBlocksAreNeverEvictedAndTailsGoFirst) {
  auto pool = PoolOrDie(4);
  const std::vector<int32_t> prompt = Iota(12);
  const std::vector<uint64_t> hashes = pool->ChainHashes("ns", prompt);
  pool->Release(CacheChain(*pool, "ns", prompt, 3));
  EXPECT_EQ(pool->used_blocks(), 0);
  EXPECT_EQ(pool->available_blocks(), 4);
  EXPECT_EQ(pool->cached_blocks(), 3);

  // Two blocks needed: the free one, then the chain's last block.
  std::vector<int32_t> other;
  ASSERT_TRUE(pool->Allocate(2, &other));
  EXPECT_EQ(pool->evictions(), 1);
  EXPECT_EQ(pool->Match("ns", prompt, hashes, 3).size(), 2u) << "the head survives";
  // The two matched blocks are held now: nothing more can be taken.
  std::vector<int32_t> more;
  EXPECT_FALSE(pool->Allocate(1, &more));
  EXPECT_EQ(pool->used_blocks(), 4);
}

TEST(KvBlockPoolTest, ASecondCopyOfACachedChainStaysPrivate) {
  auto pool = PoolOrDie(4);
  const std::vector<int32_t> prompt = Iota(4);
  const std::vector<uint64_t> hashes = pool->ChainHashes("ns", prompt);
  std::vector<int32_t> first, second;
  ASSERT_TRUE(pool->Allocate(1, &first));
  ASSERT_TRUE(pool->Allocate(1, &second));
  pool->Register(first[0], 0, "ns", prompt, hashes);
  pool->Register(second[0], 0, "ns", prompt, hashes);
  EXPECT_EQ(pool->cached_blocks(), 1);
  pool->Release(second);
  EXPECT_EQ(pool->available_blocks(), 3);
  EXPECT_EQ(pool->evictions(), 0) << "the private copy went back to the free list";
}

// A dtype and a block size: powers of two take the CPU kernel (PagedRopeAttention),
// others the tensor-op path that other devices take.
struct PagedCase {
  std::string dtype;
  int64_t block_size;
};

class PagedForwardTest : public ::testing::TestWithParam<PagedCase> {
 protected:
  void SetUp() override {
    Transformer::Options options;
    options.model_dir = FixturePath("hf-reference/qwen2-tiny");
    options.dtype = GetParam().dtype;
    options.device = "cpu";
    auto model = Transformer::Create(options);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    steering_ = JsonToFloatTensor(
        ReadJsonOrDie(options.model_dir + "/cases.json")["steering_vector"]["values"]);
    auto pool = model_->NewBlockPool(/*num_blocks=*/64, GetParam().block_size);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = std::move(*pool);
  }

  std::vector<int32_t> Prompt(int n, int salt = 0) const {
    std::vector<int32_t> p(n);
    for (int i = 0; i < n; ++i) p[i] = (i * 7 + 3 + salt * 13) % model_->config().vocab_size;
    return p;
  }

  // Prefills tokens [from, end) of `prompt` for one row whose first `from` positions are
  // in `blocks`; returns the last position's logits [1, V].
  at::Tensor Prefill(const std::vector<int32_t>& prompt, int64_t from,
                     std::vector<int32_t>* blocks, bool steered) {
    const int64_t need = pool_->BlocksFor(prompt.size()) - static_cast<int64_t>(blocks->size());
    EXPECT_TRUE(pool_->Allocate(std::max<int64_t>(0, need), blocks));
    PagedForwardInput input;
    input.tokens = {std::vector<int32_t>(prompt.begin() + from, prompt.end())};
    input.cached = {from};
    input.block_tables = {blocks};
    input.prefill = true;
    if (steered) input.steering = Steering(1);
    auto logits = model_->ForwardPaged(input, pool_.get());
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : at::Tensor();
  }

  at::Tensor Steering(int64_t rows) const {
    std::vector<SteeringRow> per_row(rows, SteeringRow{steering_, 1.0});
    auto steering = model_->MakeSteeringBatch(per_row);
    EXPECT_TRUE(steering.ok());
    return *steering;
  }

  std::unique_ptr<Transformer> model_;
  std::unique_ptr<KvBlockPool> pool_;
  at::Tensor steering_;
};

TEST_P(PagedForwardTest, MatchesTheWholeSequenceForward) {
  const std::vector<int32_t> prompt = Prompt(11);
  for (bool steered : {false, true}) {
    SCOPED_TRACE(steered ? "steered" : "unsteered");
    std::vector<int32_t> blocks;
    at::Tensor paged = Prefill(prompt, 0, &blocks, steered);  // [1, V]
    ForwardInput whole;
    whole.tokens = at::tensor(std::vector<int64_t>(prompt.begin(), prompt.end()),
                              at::TensorOptions().dtype(at::kLong)).view({1, -1});
    if (steered) whole.steering = Steering(1);
    auto reference = model_->Forward(whole, nullptr);  // [1, V]
    ASSERT_TRUE(reference.ok()) << reference.status();
    const double tolerance = GetParam().dtype == "f32" ? 1e-4 : 0.1;
    EXPECT_LT(MaxAbsDiff(paged, *reference), tolerance);
    pool_->Release(blocks);
  }
}

TEST_P(PagedForwardTest, DecodeStepsOfSeveralRowsMatchTheContiguousCache) {
  // Three rows of different lengths decode two tokens together, paged and contiguous.
  const std::vector<std::vector<int32_t>> prompts = {Prompt(5, 1), Prompt(9, 2), Prompt(4, 3)};
  std::vector<std::vector<int32_t>> tables(3);
  PagedForwardInput prefill;
  for (int b = 0; b < 3; ++b) {
    ASSERT_TRUE(pool_->Allocate(pool_->BlocksFor(prompts[b].size() + 2), &tables[b]));
    prefill.tokens.push_back(prompts[b]);
    prefill.cached.push_back(0);
    prefill.block_tables.push_back(&tables[b]);
  }
  prefill.prefill = true;
  prefill.steering = Steering(3);
  ASSERT_TRUE(model_->ForwardPaged(prefill, pool_.get()).ok());
  for (int step = 0; step < 2; ++step) {
    PagedForwardInput decode;
    decode.steering = prefill.steering;
    for (int b = 0; b < 3; ++b) {
      decode.tokens.push_back({static_cast<int32_t>(10 + step + b)});
      decode.cached.push_back(prompts[b].size() + step);
      decode.block_tables.push_back(&tables[b]);
    }
    auto paged = model_->ForwardPaged(decode, pool_.get());  // [3, V]
    ASSERT_TRUE(paged.ok()) << paged.status();
    for (int b = 0; b < 3; ++b) {
      std::vector<int64_t> whole(prompts[b].begin(), prompts[b].end());
      for (int s = 0; s <= step; ++s) whole.push_back(10 + s + b);
      ForwardInput input;
      input.tokens = at::tensor(whole, at::TensorOptions().dtype(at::kLong)).view({1, -1});
      input.steering = Steering(1);
      auto reference = model_->Forward(input, nullptr);
      ASSERT_TRUE(reference.ok());
      EXPECT_LT(MaxAbsDiff(paged->narrow(0, b, 1), *reference),
                GetParam().dtype == "f32" ? 1e-4 : 0.1)
          << "row " << b << " step " << step;
    }
  }
}

// Exactness holds where the CPU kernels run (every linear and the attention of a
// position depend only on its own row).
class PagedPrefillExactnessTest : public PagedForwardTest {};

TEST_P(PagedPrefillExactnessTest, AContinuedPrefillGivesTheSameBitsAsAWholeOne) {
  // The prefix-cache case: blocks [0, 8) computed by one prefill, the rest by another,
  // against the same prompt in one go.
  const std::vector<int32_t> prompt = Prompt(13);
  for (bool steered : {false, true}) {
    SCOPED_TRACE(steered ? "steered" : "unsteered");
    std::vector<int32_t> whole_blocks, split_blocks;
    const at::Tensor whole = Prefill(prompt, 0, &whole_blocks, steered);
    const std::vector<int32_t> head(prompt.begin(), prompt.begin() + 8);
    Prefill(head, 0, &split_blocks, steered);
    const at::Tensor continued = Prefill(prompt, 8, &split_blocks, steered);
    EXPECT_TRUE(at::equal(whole, continued)) << MaxAbsDiff(whole, continued);
    // The keys and values of the shared blocks are the same bits too.
    for (int64_t l = 0; l < model_->config().num_layers; ++l) {
      for (int i = 0; i < 2; ++i) {
        EXPECT_TRUE(at::equal(pool_->keys(l).select(1, whole_blocks[i]),
                              pool_->keys(l).select(1, split_blocks[i])));
        EXPECT_TRUE(at::equal(pool_->values(l).select(1, whole_blocks[i]),
                              pool_->values(l).select(1, split_blocks[i])));
      }
    }
    pool_->Release(whole_blocks);
    pool_->Release(split_blocks);
  }
}

TEST_P(PagedForwardTest, BadInputIsAnError) {
  std::vector<int32_t> blocks;
  ASSERT_TRUE(pool_->Allocate(1, &blocks));
  PagedForwardInput input;
  EXPECT_FALSE(model_->ForwardPaged(input, pool_.get()).ok()) << "no rows";
  input.tokens = {{1, 2, 3, 4, 5}};
  input.cached = {0};
  input.block_tables = {&blocks};
  EXPECT_FALSE(model_->ForwardPaged(input, pool_.get()).ok()) << "5 positions in one block of 4";
  input.tokens = {{1, static_cast<int32_t>(model_->config().vocab_size)}};
  EXPECT_FALSE(model_->ForwardPaged(input, pool_.get()).ok()) << "token out of range";
  input.tokens = {{1}};
  std::vector<int32_t> bad = {static_cast<int32_t>(pool_->num_blocks())};
  input.block_tables = {&bad};
  EXPECT_FALSE(model_->ForwardPaged(input, pool_.get()).ok()) << "block outside the pool";
  input.block_tables = {&blocks};
  input.steering = Steering(2);
  EXPECT_FALSE(model_->ForwardPaged(input, pool_.get()).ok()) << "steering for two rows";
  EXPECT_FALSE(model_->ForwardPaged(input, nullptr).ok());
}

std::string CaseName(const ::testing::TestParamInfo<PagedCase>& info) {
  return absl::StrCat(info.param.dtype, "_block", info.param.block_size);
}

INSTANTIATE_TEST_SUITE_P(Cases, PagedForwardTest,
                         ::testing::Values(PagedCase{"f32", 4}, PagedCase{"bf16", 4},
                                           PagedCase{"f32", 3}, PagedCase{"bf16", 3}),
                         CaseName);
INSTANTIATE_TEST_SUITE_P(Cases, PagedPrefillExactnessTest,
                         ::testing::Values(PagedCase{"f32", 4}, PagedCase{"bf16", 4}),
                         CaseName);

}  // namespace
}  // namespace steerd
