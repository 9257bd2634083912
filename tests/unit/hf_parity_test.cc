// Parity with Hugging Face transformers on the reference fixtures
// (../shared/fixtures/hf-reference): logits with and without steering, left-padded
// batches, greedy generation with the KV cache (tokens and every step's logits), the
// gradient of a sequence log-likelihood with respect to the steering tensor, and RoPE.
#include <gtest/gtest.h>

#include <string>

#include "server/model/generator.h"
#include "server/model/transformer.h"
#include "tests/testing/fixtures.h"

namespace steerd {
namespace {

using ::steerd::testing::FixturePath;
using ::steerd::testing::IdsTensor;
using ::steerd::testing::JsonToFloatTensor;
using ::steerd::testing::JsonToIds;
using ::steerd::testing::MaxAbsDiff;
using ::steerd::testing::ReadJsonOrDie;

constexpr double kLogitTolerance = 1e-4;

struct Folder {
  std::string name;
  bool full_cases;  // The bf16 folder has forward and base generation only.
};

// Every folder: forward logits and greedy generation.
class HfParityTest : public ::testing::TestWithParam<Folder> {
 protected:
  void SetUp() override {
    dir_ = FixturePath("hf-reference/" + GetParam().name);
    cases_ = ReadJsonOrDie(dir_ + "/cases.json");
    Transformer::Options options;
    options.model_dir = dir_;
    options.dtype = "f32";  // Hugging Face ran (and upcast the bf16 weights) in float32.
    options.device = "cpu";
    auto model = Transformer::Create(options);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    steering_ = JsonToFloatTensor(cases_["steering_vector"]["values"]);
  }

  // Logits [T, V] of one unpadded sequence.
  at::Tensor Logits(const std::vector<int32_t>& ids, const at::Tensor& steering) {
    ForwardInput input;
    input.tokens = IdsTensor(ids);
    input.logits = ForwardInput::Logits::kAll;
    auto batch = model_->MakeSteeringBatch({{steering, 1.0}});
    EXPECT_TRUE(batch.ok()) << batch.status();
    input.steering = *batch;
    auto logits = model_->Forward(input, nullptr);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return (*logits)[0];
  }

  std::string dir_;
  nlohmann::json cases_;
  std::unique_ptr<Transformer> model_;
  at::Tensor steering_;  // [L, d]
};

TEST_P(HfParityTest, ForwardLogitsMatchWithAndWithoutSteering) {
  ASSERT_EQ(cases_["forward"].size(), 3u);
  for (const auto& c : cases_["forward"]) {
    const auto ids = JsonToIds(c["input_ids"]);
    SCOPED_TRACE("sequence length " + std::to_string(ids.size()));
    EXPECT_LE(MaxAbsDiff(Logits(ids, at::Tensor()), JsonToFloatTensor(c["logits"])),
              kLogitTolerance);
    EXPECT_LE(MaxAbsDiff(Logits(ids, steering_), JsonToFloatTensor(c["steered_logits"])),
              kLogitTolerance);
  }
}

// The float32 folders, which also hold padded, gradient and RoPE cases.
class HfFullParityTest : public HfParityTest {};

TEST_P(HfFullParityTest, LeftPaddedBatchRowsMatch) {
  const auto& padded = cases_["padded_batch"];
  const at::Tensor ids = JsonToFloatTensor(padded["input_ids"]).to(at::kLong);  // [2, 11]
  const at::Tensor mask = JsonToFloatTensor(padded["attention_mask"]).to(at::kLong);
  for (bool steered : {false, true}) {
    ForwardInput input;
    input.tokens = ids;
    input.logits = ForwardInput::Logits::kAll;
    for (int64_t b = 0; b < ids.size(0); ++b) {
      input.left_pad.push_back(ids.size(1) - mask[b].sum().item<int64_t>());
    }
    auto batch = model_->MakeSteeringBatch(
        {{steered ? steering_ : at::Tensor(), 1.0}, {steered ? steering_ : at::Tensor(), 1.0}});
    ASSERT_TRUE(batch.ok());
    input.steering = *batch;
    auto logits = model_->Forward(input, nullptr);  // [2, 11, V]
    ASSERT_TRUE(logits.ok()) << logits.status();
    for (int64_t b = 0; b < ids.size(0); ++b) {
      const auto& seq = padded["sequences"][b];
      const int64_t pad = seq["num_pad"].get<int64_t>();
      ASSERT_EQ(pad, input.left_pad[b]);
      const at::Tensor got = (*logits)[b].narrow(0, pad, ids.size(1) - pad);
      EXPECT_LE(MaxAbsDiff(got, JsonToFloatTensor(seq[steered ? "steered_logits" : "logits"])),
                kLogitTolerance)
          << "row " << b << (steered ? " steered" : "");
      if (!steered) {
        // Hugging Face's plain call counts the pads in the positions; RoPE is relative,
        // so the unpadded rows agree with it too.
        EXPECT_LE(MaxAbsDiff(got, JsonToFloatTensor(seq["logits_default_position_ids"])),
                  kLogitTolerance)
            << "row " << b;
      }
    }
  }
}

TEST_P(HfParityTest, GreedyGenerationIsTokenExact) {
  const auto& gen = cases_["generate"];
  const auto prompt = JsonToIds(gen["prompt"]);
  std::vector<bool> variants = {false};
  if (GetParam().full_cases) variants.push_back(true);
  for (bool steered : variants) {
    GenerationRequest request;
    request.prompt = prompt;
    request.max_new_tokens = gen["max_new_tokens"].get<int64_t>();
    request.ignore_eos = true;
    if (steered) request.steering = steering_;
    Generator generator(model_.get(), nullptr);
    auto results = generator.Generate({request});
    ASSERT_TRUE(results.ok()) << results.status();
    const auto expected = JsonToIds(gen[steered ? "steered_new_tokens" : "new_tokens"]);
    EXPECT_EQ((*results)[0].tokens, expected) << (steered ? "steered" : "base");
    EXPECT_EQ((*results)[0].finish_reason, FinishReason::kLength);
  }
}

// Every step's logits through the KV cache, not just the argmax: a broken cache can
// still reproduce a repeated token.
TEST_P(HfParityTest, CachedDecodeStepLogitsMatch) {
  const auto& gen = cases_["generate"];
  const auto prompt = JsonToIds(gen["prompt"]);
  std::vector<bool> variants = {false};
  if (GetParam().full_cases) variants.push_back(true);
  for (bool steered : variants) {
    const auto tokens = JsonToIds(gen[steered ? "steered_new_tokens" : "new_tokens"]);
    const at::Tensor expected =
        JsonToFloatTensor(gen[steered ? "steered_step_logits" : "step_logits"]);
    KvCache cache = model_->NewCache(1, 8);  // Small on purpose: exercises growth.
    ForwardInput input;
    input.tokens = IdsTensor(prompt);
    auto batch = model_->MakeSteeringBatch({{steered ? steering_ : at::Tensor(), 1.0}});
    ASSERT_TRUE(batch.ok());
    input.steering = *batch;
    for (size_t step = 0; step < tokens.size(); ++step) {
      auto logits = model_->Forward(input, &cache);  // [1, V]
      ASSERT_TRUE(logits.ok()) << logits.status();
      EXPECT_LE(MaxAbsDiff((*logits)[0], expected[step]), kLogitTolerance)
          << "step " << step << (steered ? " steered" : "");
      input.tokens = IdsTensor({tokens[step]});
    }
    EXPECT_EQ(cache.num_tokens(0), static_cast<int64_t>(prompt.size() + tokens.size() - 1));
  }
}

TEST_P(HfFullParityTest, SteeringGradientMatches) {
  const auto& grad_case = cases_["gradient"];
  const auto ids = JsonToIds(grad_case["input_ids"]);
  at::Tensor steering = steering_.clone().set_requires_grad(true);
  ForwardInput input;
  input.tokens = IdsTensor(ids);
  input.logits = ForwardInput::Logits::kAll;
  auto batch = model_->MakeSteeringBatch({{steering, 1.0}});
  ASSERT_TRUE(batch.ok());
  input.steering = *batch;
  auto logits = model_->Forward(input, nullptr);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const int64_t T = static_cast<int64_t>(ids.size());
  at::Tensor logprobs = at::log_softmax((*logits)[0].narrow(0, 0, T - 1), -1);  // [T-1, V]
  at::Tensor targets = IdsTensor(ids)[0].narrow(0, 1, T - 1).unsqueeze(1);
  at::Tensor loss = logprobs.gather(1, targets).sum();
  loss.backward();
  const double expected_loss = grad_case["loss"].get<double>();
  EXPECT_NEAR(loss.item<double>(), expected_loss, 1e-4 * std::max(1.0, std::abs(expected_loss)));
  const at::Tensor expected = JsonToFloatTensor(grad_case["grad_S"]);
  ASSERT_TRUE(steering.grad().defined());
  const double scale = std::max(1.0, expected.abs().max().item<double>());
  EXPECT_LE(MaxAbsDiff(steering.grad(), expected), 1e-4 * scale);
}

TEST_P(HfFullParityTest, RopeInverseFrequenciesMatch) {
  const at::Tensor expected = JsonToFloatTensor(cases_["rope_inv_freq"]);
  EXPECT_EQ(MaxAbsDiff(RopeInverseFrequencies(model_->config()), expected), 0.0);
}

// llama3 RoPE for real model shapes, including the smooth-interpolation band that the
// tiny model's 4 frequencies never reach.
TEST(RopeReferenceTest, Llama3InverseFrequenciesAndTablesMatch) {
  const auto reference = ReadJsonOrDie(FixturePath("hf-reference/rope_llama3_reference.json"));
  std::vector<int64_t> positions;
  for (const auto& p : reference["positions"]) positions.push_back(p.get<int64_t>());
  const at::Tensor position_tensor =
      at::tensor(positions, at::TensorOptions().dtype(at::kLong)).view({1, -1});
  ASSERT_EQ(reference["configs"].size(), 4u);
  for (const auto& [name, c] : reference["configs"].items()) {
    SCOPED_TRACE(name);
    ModelConfig config;
    config.head_dim = c["head_dim"].get<int64_t>();
    config.rope_theta = c["rope_theta"].get<double>();
    const at::Tensor unscaled = RopeInverseFrequencies(config);
    EXPECT_EQ(MaxAbsDiff(unscaled, JsonToFloatTensor(c["inv_freq_unscaled"])), 0.0);
    const auto& s = c["rope_scaling"];
    config.rope_scaling.type = RopeScaling::Type::kLlama3;
    config.rope_scaling.factor = s["factor"].get<double>();
    config.rope_scaling.low_freq_factor = s["low_freq_factor"].get<double>();
    config.rope_scaling.high_freq_factor = s["high_freq_factor"].get<double>();
    config.rope_scaling.original_max_position_embeddings =
        s["original_max_position_embeddings"].get<int64_t>();
    const at::Tensor inv_freq = RopeInverseFrequencies(config);
    EXPECT_EQ(MaxAbsDiff(inv_freq, JsonToFloatTensor(c["inv_freq"])), 0.0);
    auto [cos, sin] = RopeCosSin(inv_freq, position_tensor);
    EXPECT_LE(MaxAbsDiff(cos[0], JsonToFloatTensor(c["cos"])), 1e-6);
    EXPECT_LE(MaxAbsDiff(sin[0], JsonToFloatTensor(c["sin"])), 1e-6);
  }
}

std::string FolderTestName(const ::testing::TestParamInfo<Folder>& info) {
  std::string name = info.param.name;
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfParityTest,
                         ::testing::Values(Folder{"qwen2-tiny", true}, Folder{"llama-tiny", true},
                                           Folder{"llama-tiny-bf16-sharded", false}),
                         FolderTestName);
INSTANTIATE_TEST_SUITE_P(Fixtures, HfFullParityTest,
                         ::testing::Values(Folder{"qwen2-tiny", true}, Folder{"llama-tiny", true}),
                         FolderTestName);

}  // namespace
}  // namespace steerd
