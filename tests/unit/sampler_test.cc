// Token selection: greedy, seeded sampling that ignores batch neighbours, top-k/top-p
// support, the sampled distribution itself, and parameter validation.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>

#include "server/model/sampler.h"

namespace steerd {
namespace {

using ::testing::HasSubstr;

SamplingParams Params(double temperature, double top_p = 1.0, int64_t top_k = 0,
                      uint64_t seed = 7) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_p = top_p;
  p.top_k = top_k;
  p.seed = seed;
  return p;
}

// Draws `n` tokens for one sequence, one step at a time.
std::vector<int32_t> Draw(SequenceSampler& sampler, const at::Tensor& logits, int n) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    auto tokens = SampleBatch(logits.unsqueeze(0), {&sampler}, false);
    EXPECT_TRUE(tokens.ok()) << tokens.status();
    out.push_back((*tokens)[0].id);
  }
  return out;
}

TEST(SamplerTest, GreedyPicksTheArgmaxAndReportsItsLogprob) {
  at::Tensor logits = at::tensor({0.1f, 2.0f, -1.0f, 1.9f}).unsqueeze(0);
  SequenceSampler greedy(Params(0.0));
  auto tokens = SampleBatch(logits, {&greedy}, true);
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ((*tokens)[0].id, 1);
  EXPECT_NEAR((*tokens)[0].logprob, at::log_softmax(logits, -1)[0][1].item<float>(), 1e-6);
}

TEST(SamplerTest, SameSeedSameTokensWhateverTheNeighbours) {
  at::manual_seed(0);
  const at::Tensor logits = at::randn({1000});
  SequenceSampler alone(Params(1.0, 0.9, 0, 42));
  const auto expected = Draw(alone, logits, 50);

  SequenceSampler mine(Params(1.0, 0.9, 0, 42));
  SequenceSampler neighbour(Params(0.7, 1.0, 5, 3));
  SequenceSampler greedy(Params(0.0));
  std::vector<int32_t> got;
  for (int i = 0; i < 50; ++i) {
    const at::Tensor batch = at::stack({at::randn({1000}), logits, at::randn({1000})});
    auto tokens = SampleBatch(batch, {&neighbour, &mine, &greedy}, false);
    ASSERT_TRUE(tokens.ok());
    got.push_back((*tokens)[1].id);
  }
  EXPECT_EQ(got, expected);
  SequenceSampler other_seed(Params(1.0, 0.9, 0, 43));
  EXPECT_NE(Draw(other_seed, logits, 50), expected);
}

TEST(SamplerTest, TopKAndTopPRestrictTheSupport) {
  const at::Tensor logits = at::log(at::tensor({0.5f, 0.2f, 0.15f, 0.1f, 0.05f}));
  SequenceSampler top_k(Params(1.0, 1.0, 2, 1));
  for (int32_t id : Draw(top_k, logits, 200)) EXPECT_LT(id, 2);
  // Nucleus 0.6: {0.5, 0.2} is the smallest prefix reaching it.
  SequenceSampler top_p(Params(1.0, 0.6, 0, 2));
  std::map<int32_t, int> seen;
  for (int32_t id : Draw(top_p, logits, 300)) ++seen[id];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[0], seen[1]);
  SequenceSampler k1(Params(1.0, 1.0, 1, 3));
  for (int32_t id : Draw(k1, logits, 20)) EXPECT_EQ(id, 0);
}

// The nucleus reaches past the first candidate threshold: a flat distribution over a
// large vocabulary where every token is below 1e-3.
TEST(SamplerTest, TopPOverAFlatLargeVocabulary) {
  const int64_t vocab = 5000;
  SequenceSampler sampler(Params(1.0, 0.5, 0, 9));
  std::map<int32_t, int> seen;
  for (int32_t id : Draw(sampler, at::zeros({vocab}), 400)) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, vocab);
    ++seen[id];
  }
  // Ties break by id, so the nucleus is the first half of the ids.
  for (const auto& [id, count] : seen) EXPECT_LT(id, vocab / 2 + 1);
  EXPECT_GT(seen.size(), 200u);
}

TEST(SamplerTest, SampledFrequenciesFollowTheTemperedDistribution) {
  const at::Tensor logits = at::tensor({1.0f, 0.0f, -1.0f, 0.5f});
  for (double temperature : {1.0, 0.5}) {
    const at::Tensor probs = at::softmax(logits / temperature, -1);
    SequenceSampler sampler(Params(temperature, 1.0, 0, 11));
    const int n = 20000;
    std::vector<int> counts(4);
    for (int32_t id : Draw(sampler, logits, n)) ++counts[id];
    for (int i = 0; i < 4; ++i) {
      const double p = probs[i].item<double>();
      const double sd = std::sqrt(p * (1 - p) / n);
      EXPECT_NEAR(static_cast<double>(counts[i]) / n, p, 5 * sd)
          << "token " << i << " at temperature " << temperature;
    }
  }
}

TEST(SamplerTest, InvalidParametersAreNamed) {
  EXPECT_THAT(std::string(ValidateSamplingParams(Params(-0.1)).message()), HasSubstr("temperature"));
  EXPECT_THAT(std::string(ValidateSamplingParams(Params(NAN)).message()), HasSubstr("temperature"));
  EXPECT_THAT(std::string(ValidateSamplingParams(Params(1.0, 0.0)).message()), HasSubstr("top_p"));
  EXPECT_THAT(std::string(ValidateSamplingParams(Params(1.0, 1.0, -2)).message()),
              HasSubstr("top_k"));
  EXPECT_TRUE(ValidateSamplingParams(Params(0.7, 0.95, 40)).ok());
  // The documented floor: above 0, nothing below kMinTemperature.
  EXPECT_THAT(std::string(ValidateSamplingParams(Params(1e-38)).message()),
              HasSubstr("must be 0 (greedy) or in [0.001, 100]"));
  EXPECT_TRUE(ValidateSamplingParams(Params(kMinTemperature)).ok());
  SequenceSampler s(Params(0.0));
  EXPECT_EQ(SampleBatch(at::zeros({2, 4}), {&s}, false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Non-finite logits (a huge steering vector, a model that overflows) fail their own row
// only, whatever the sampling mode; the other rows get exactly the tokens they get
// alone. Before the fix, top-k indexed an empty candidate set (SIGSEGV) and top-p
// returned token 0 with status OK.
TEST(SamplerTest, NonFiniteRowsAreFlaggedAndTheirNeighboursUnaffected) {
  at::manual_seed(3);
  const at::Tensor good = at::randn({64});
  const float kNan = std::numeric_limits<float>::quiet_NaN();
  const float kInf = std::numeric_limits<float>::infinity();
  std::vector<at::Tensor> bad_rows = {
      at::full({64}, kNan),                                   // all NaN
      at::randn({64}).index_fill(0, at::tensor({int64_t{5}}), kNan),  // one NaN
      at::randn({64}).index_fill(0, at::tensor({int64_t{9}}), kInf),  // one +inf
      at::full({64}, -kInf),                                  // no finite logit at all
      at::full({64}, 3e38f),  // finite, but * 1/temperature overflows to inf
  };
  const std::vector<SamplingParams> modes = {
      Params(0.0), Params(1e-3, 1.0, 5), Params(1e-3, 0.9), Params(1.0), Params(0.7, 0.9, 5)};
  for (size_t m = 0; m < modes.size(); ++m) {
    for (size_t r = 0; r < bad_rows.size(); ++r) {
      // 3e38 overflows only when scaled by 1/temperature > 1.13: greedy never scales,
      // and at temperature 1 it is a valid (uniform) distribution.
      if (r == 4 && (m == 0 || m == 3)) continue;
      SequenceSampler alone(Params(0.8, 0.95, 10, 5));
      auto expected = SampleBatch(good.unsqueeze(0), {&alone}, true);
      ASSERT_TRUE(expected.ok());
      SequenceSampler bad(modes[m]);
      SequenceSampler neighbour(Params(0.8, 0.95, 10, 5));
      auto tokens = SampleBatch(at::stack({bad_rows[r], good}), {&bad, &neighbour}, true);
      ASSERT_TRUE(tokens.ok()) << tokens.status();
      EXPECT_FALSE((*tokens)[0].finite) << "mode " << m << ", row " << r;
      EXPECT_TRUE((*tokens)[1].finite);
      EXPECT_EQ((*tokens)[1].id, (*expected)[0].id);
      EXPECT_FLOAT_EQ((*tokens)[1].logprob, (*expected)[0].logprob);
    }
  }
}

// Greedy on huge but finite logits is still a valid choice.
TEST(SamplerTest, GreedyOnHugeFiniteLogitsIsFinite) {
  SequenceSampler greedy(Params(0.0));
  auto tokens = SampleBatch(at::tensor({3e38f, -3e38f, 1.0f}).unsqueeze(0), {&greedy}, false);
  ASSERT_TRUE(tokens.ok());
  EXPECT_TRUE((*tokens)[0].finite);
  EXPECT_EQ((*tokens)[0].id, 0);
}

TEST(SamplerTest, DrawRefusesWhatIsNotADistribution) {
  std::vector<float> nan(16, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> zero(16, 0.0f);
  for (const SamplingParams& params : {Params(1.0), Params(1.0, 1.0, 4), Params(1.0, 0.5)}) {
    SequenceSampler sampler(params);
    EXPECT_EQ(sampler.Draw(nan.data(), 16), -1);
    EXPECT_EQ(sampler.Draw(zero.data(), 16), -1);
  }
}

}  // namespace
}  // namespace steerd
