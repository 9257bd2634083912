// NormalizeJobSpec and RewardOptionsOf: every CreateJob rule of training.proto with
// its status code, a message naming the field and, for an invalid field, its path in
// google.rpc.BadRequest (reason INVALID_FIELD); the defaults filled in, and the datasets
// of inline and built-in-task jobs.
#include "server/engine/job_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "tests/testing/invalid_field.h"

namespace steerd {
namespace {

using ::testing::HasSubstr;

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

ModelInfo TinyModel() {
  ModelInfo model;
  model.name = "tiny";
  model.num_layers = 4;
  model.hidden_size = 64;
  model.max_context = 256;
  model.chat_template = "chatml";
  return model;
}

std::vector<train::Example> Examples(int64_t n) {
  std::vector<train::Example> examples;
  for (int64_t i = 0; i < n; ++i) {
    examples.push_back({absl::StrCat("Q: 1+", i, "\nA:"), absl::StrCat(1 + i), ""});
  }
  return examples;
}

// A valid request with inline examples; cases change one thing.
CreateJobParams GoodParams() {
  CreateJobParams params;
  params.spec.model = "tiny";
  params.spec.output_vector = "adder";
  params.examples = Examples(3);
  return params;
}

// A valid request on the built-in `arith` task with an evaluation split.
CreateJobParams TaskParams() {
  CreateJobParams params;
  params.spec.model = "tiny";
  params.spec.output_vector = "adder";
  params.spec.task = "arith";
  params.spec.eval.enabled = true;
  params.spec.eval.split = "test";
  return params;
}

JobSpecCaps SmallCaps() {
  JobSpecCaps caps;
  caps.task_train_examples = 40;
  caps.task_eval_examples = 20;
  return caps;
}

struct BadCase {
  std::string name;
  std::function<void(CreateJobParams*, ModelInfo*, JobLimits*, JobSpecCaps*)> change;
  absl::StatusCode code;
  std::string fragment;  // Part of the message, naming the field.
  // The field's path in google.rpc.BadRequest (reason INVALID_FIELD); empty for the
  // errors that are not about one field (a tenant's limit, the model's template).
  std::string field;
};

using P = CreateJobParams*;
using M = ModelInfo*;
using L = JobLimits*;
using C = JobSpecCaps*;
constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
constexpr absl::StatusCode kExhausted = absl::StatusCode::kResourceExhausted;

std::vector<BadCase> BadCases() {
  return {
      {"empty model", [](P p, M m, L, C) { p->spec.model = m->name = ""; }, kInvalid,
       "model is empty", "model"},
      {"empty output_vector", [](P p, M, L, C) { p->spec.output_vector = ""; }, kInvalid,
       "output_vector is empty", "output_vector"},
      {"output_vector with version", [](P p, M, L, C) { p->spec.output_vector = "adder@2"; },
       kInvalid, "output_vector must be a plain vector name", "output_vector"},
      {"output_vector bad start", [](P p, M, L, C) { p->spec.output_vector = "-adder"; },
       kInvalid, "output_vector must start with", "output_vector"},
      {"output_vector bad character", [](P p, M, L, C) { p->spec.output_vector = "a b"; },
       kInvalid, "output_vector contains", "output_vector"},
      {"output_vector too long",
       [](P p, M, L, C) { p->spec.output_vector = std::string(65, 'a'); }, kInvalid,
       "output_vector is 65 characters", "output_vector"},
      {"description too long",
       [](P p, M, L, C) { p->spec.description = std::string(1025, 'd'); }, kInvalid,
       "description is 1025 bytes", "description"},
      {"description not UTF-8", [](P p, M, L, C) { p->spec.description = "ok \xff"; },
       kInvalid, "description is invalid: text is not valid UTF-8", "description"},
      {"no dataset", [](P p, M, L, C) { p->examples.clear(); }, kInvalid, "no dataset", "dataset"},
      {"task and examples", [](P p, M, L, C) { p->spec.task = "arith"; }, kInvalid,
       "examples or task", "dataset"},
      {"unknown task",
       [](P p, M, L, C) {
         p->examples.clear();
         p->spec.task = "chess";
       },
       kInvalid, "known: arith, arith-words, hops", "task"},
      {"too many examples", [](P p, M, L, C) { p->examples = Examples(100001); }, kInvalid,
       "examples has 100001 examples; the maximum is 100000", "examples"},
      {"over the server's example cap",
       [](P, M, L, C c) {
         c->max_examples = 2;
       },
       kInvalid, "examples has 3 examples; this server's maximum is 2", "examples"},
      {"over the tenant's example limit", [](P, M, L l, C) { l->max_examples = 2; },
       kExhausted, "max_job_examples", ""},
      {"empty prompt", [](P p, M, L, C) { p->examples[1].prompt = ""; }, kInvalid,
       "examples[1].prompt is empty", "examples[1].prompt"},
      {"blank answer", [](P p, M, L, C) { p->examples[2].answer = " \t"; }, kInvalid,
       "examples[2].answer is empty", "examples[2].answer"},
      {"eval without a source", [](P p, M, L, C) { p->spec.eval.enabled = true; }, kInvalid,
       "eval has no examples: set eval.examples", "eval"},
      {"eval data while eval is off",
       [](P p, M, L, C) { p->eval_examples = Examples(2); }, kInvalid,
       "eval has examples or a split but is not enabled", "eval"},
      {"eval examples over the server's cap",
       [](P p, M, L, C c) {
         c->max_examples = 3;
         p->spec.eval.enabled = true;
         p->eval_examples = Examples(4);
       },
       kInvalid, "eval.examples has 4 examples; this server's maximum is 3", "eval.examples"},
      {"eval split without a task",
       [](P p, M, L, C) {
         p->spec.eval.enabled = true;
         p->spec.eval.split = "test";
       },
       kInvalid, "eval.split needs a built-in task", "eval.split"},
      {"eval split train",
       [](P p, M, L, C) {
         *p = TaskParams();
         p->spec.eval.split = "train";
       },
       kInvalid, "eval.split \"train\"", "eval.split"},
      {"eval split unknown",
       [](P p, M, L, C) {
         *p = TaskParams();
         p->spec.eval.split = "validation";
       },
       kInvalid, "eval.split \"validation\"", "eval.split"},
      {"eval split and examples",
       [](P p, M, L, C) {
         *p = TaskParams();
         p->eval_examples = Examples(2);
       },
       kInvalid, "eval.examples or eval.split", "eval"},
      {"eval example blank answer",
       [](P p, M, L, C) {
         p->spec.eval.enabled = true;
         p->eval_examples = Examples(2);
         p->eval_examples[0].answer = "";
       },
       kInvalid, "eval.examples[0].answer is empty", "eval.examples[0].answer"},
      {"eval examples over the tenant's limit",
       [](P p, M, L l, C) {
         l->max_examples = 3;
         p->spec.eval.enabled = true;
         p->eval_examples = Examples(4);
       },
       kExhausted, "eval.examples has 4 examples; the tenant's limit is 3 (max_job_examples)", ""},
      {"eval max_examples negative",
       [](P p, M, L, C) {
         *p = TaskParams();
         p->spec.eval.max_examples = -1;
       },
       kInvalid, "eval.max_examples -1", "eval.max_examples"},
      {"regex without pattern", [](P p, M, L, C) { p->spec.reward.type = RewardType::kRegex; },
       kInvalid, "reward.pattern is empty", "reward.pattern"},
      {"pattern with EXACT",
       [](P p, M, L, C) {
         p->spec.reward.type = RewardType::kExact;
         p->spec.reward.pattern = "(\\d+)";
       },
       kInvalid, "reward.pattern is set but reward.type is TYPE_EXACT", "reward.pattern"},
      {"pattern with the default type", [](P p, M, L, C) { p->spec.reward.pattern = "(\\d+)"; },
       kInvalid, "reward.pattern is set", "reward.pattern"},
      {"pattern does not compile",
       [](P p, M, L, C) {
         p->spec.reward.type = RewardType::kRegex;
         p->spec.reward.pattern = "(\\d+";
       },
       kInvalid, "reward.pattern is invalid: regex does not compile", "reward.pattern"},
      {"pattern too long",
       [](P p, M, L, C) {
         p->spec.reward.type = RewardType::kRegex;
         p->spec.reward.pattern = "(" + std::string(1024, 'a') + ")";
       },
       kInvalid, "reward.pattern is 1026 bytes", "reward.pattern"},
      {"correct_reward NaN", [](P p, M, L, C) { p->spec.reward.correct_reward = kNan; },
       kInvalid, "reward.correct_reward nan", "reward.correct_reward"},
      {"incorrect_reward out of range",
       [](P p, M, L, C) { p->spec.reward.incorrect_reward = -100.5; }, kInvalid,
       "reward.incorrect_reward -100.5", "reward.incorrect_reward"},
      {"format_reward infinite", [](P p, M, L, C) { p->spec.reward.format_reward = kInf; },
       kInvalid, "reward.format_reward inf", "reward.format_reward"},
      {"steps negative", [](P p, M, L, C) { p->spec.hyperparameters.steps = -1; }, kInvalid,
       "hyperparameters.steps -1", "hyperparameters.steps"},
      {"steps over the documented maximum",
       [](P p, M, L, C c) {
         c->max_steps = 0;
         p->spec.hyperparameters.steps = 100001;
       },
       kInvalid, "hyperparameters.steps is 100001; the maximum is 100000", "hyperparameters.steps"},
      {"steps over the server's cap",
       [](P p, M, L, C c) {
         c->max_steps = 50;
         p->spec.hyperparameters.steps = 51;
       },
       kInvalid, "hyperparameters.steps is 51; this server's maximum is 50",
       "hyperparameters.steps"},
      {"steps over the tenant's limit",
       [](P p, M, L l, C) {
         l->max_steps = 99;
         p->spec.hyperparameters.steps = 100;
       },
       kExhausted, "hyperparameters.steps is 100; the tenant's limit is 99 (max_job_steps)", ""},
      {"prompts_per_step negative",
       [](P p, M, L, C) { p->spec.hyperparameters.prompts_per_step = -2; }, kInvalid,
       "hyperparameters.prompts_per_step -2 must be in [1, 1024]",
       "hyperparameters.prompts_per_step"},
      {"prompts_per_step too large",
       [](P p, M, L, C) { p->spec.hyperparameters.prompts_per_step = 1025; }, kInvalid,
       "hyperparameters.prompts_per_step 1025", "hyperparameters.prompts_per_step"},
      {"one rollout per prompt",
       [](P p, M, L, C) { p->spec.hyperparameters.rollouts_per_prompt = 1; }, kInvalid,
       "hyperparameters.rollouts_per_prompt 1 must be in [2, 256]",
       "hyperparameters.rollouts_per_prompt"},
      {"too many rollouts",
       [](P p, M, L, C) { p->spec.hyperparameters.rollouts_per_prompt = 257; }, kInvalid,
       "hyperparameters.rollouts_per_prompt 257", "hyperparameters.rollouts_per_prompt"},
      {"learning_rate above 1",
       [](P p, M, L, C) { p->spec.hyperparameters.learning_rate = 2; }, kInvalid,
       "hyperparameters.learning_rate 2 must be finite and in (0, 1]",
       "hyperparameters.learning_rate"},
      {"learning_rate negative",
       [](P p, M, L, C) { p->spec.hyperparameters.learning_rate = -1e-3; }, kInvalid,
       "hyperparameters.learning_rate -0.001", "hyperparameters.learning_rate"},
      {"learning_rate NaN",
       [](P p, M, L, C) { p->spec.hyperparameters.learning_rate = kNan; }, kInvalid,
       "hyperparameters.learning_rate nan", "hyperparameters.learning_rate"},
      {"max_new_tokens over the context",
       [](P p, M, L, C) { p->spec.hyperparameters.max_new_tokens = 257; }, kInvalid,
       "hyperparameters.max_new_tokens 257 must be in [1, 256]", "hyperparameters.max_new_tokens"},
      {"max_new_tokens negative",
       [](P p, M, L, C) { p->spec.hyperparameters.max_new_tokens = -5; }, kInvalid,
       "hyperparameters.max_new_tokens -5", "hyperparameters.max_new_tokens"},
      {"temperature zero", [](P p, M, L, C) { p->spec.hyperparameters.temperature = 0.0; },
       kInvalid, "hyperparameters.temperature 0 must be in [0.001, 2]",
       "hyperparameters.temperature"},
      // Below the floor: before the fix CreateJob accepted it and the job then failed.
      {"temperature below the floor",
       [](P p, M, L, C) { p->spec.hyperparameters.temperature = 1e-4; }, kInvalid,
       "hyperparameters.temperature 0.0001 must be in [0.001, 2]", "hyperparameters.temperature"},
      {"temperature too high",
       [](P p, M, L, C) { p->spec.hyperparameters.temperature = 2.5; }, kInvalid,
       "hyperparameters.temperature 2.5", "hyperparameters.temperature"},
      {"temperature infinite",
       [](P p, M, L, C) { p->spec.hyperparameters.temperature = -kInf; }, kInvalid,
       "hyperparameters.temperature -inf", "hyperparameters.temperature"},
      {"layer past the last", [](P p, M, L, C) { p->spec.hyperparameters.layers = {0, 4}; },
       kInvalid, "hyperparameters.layers[1] 4 is outside [0, 4)", "hyperparameters.layers[1]"},
      {"negative layer", [](P p, M, L, C) { p->spec.hyperparameters.layers = {-1}; },
       kInvalid, "hyperparameters.layers[0] -1", "hyperparameters.layers[0]"},
      {"layer given twice", [](P p, M, L, C) { p->spec.hyperparameters.layers = {2, 1, 2}; },
       kInvalid, "hyperparameters.layers[2] 2 is given twice", "hyperparameters.layers[2]"},
      {"eval_every negative", [](P p, M, L, C) { p->spec.hyperparameters.eval_every = -1; },
       kInvalid, "hyperparameters.eval_every -1", "hyperparameters.eval_every"},
      {"eval_every without eval",
       [](P p, M, L, C) { p->spec.hyperparameters.eval_every = 5; }, kInvalid,
       "hyperparameters.eval_every 5 needs eval", "hyperparameters.eval_every"},
      {"clip_epsilon above 1",
       [](P p, M, L, C) { p->spec.hyperparameters.clip_epsilon = 1.5; }, kInvalid,
       "hyperparameters.clip_epsilon 1.5", "hyperparameters.clip_epsilon"},
      {"clip_epsilon negative",
       [](P p, M, L, C) { p->spec.hyperparameters.clip_epsilon = -0.1; }, kInvalid,
       "hyperparameters.clip_epsilon -0.1", "hyperparameters.clip_epsilon"},
      {"inner_epochs too many",
       [](P p, M, L, C) { p->spec.hyperparameters.inner_epochs = 17; }, kInvalid,
       "hyperparameters.inner_epochs 17 must be in [1, 16]", "hyperparameters.inner_epochs"},
      {"inner_epochs negative",
       [](P p, M, L, C) { p->spec.hyperparameters.inner_epochs = -1; }, kInvalid,
       "hyperparameters.inner_epochs -1", "hyperparameters.inner_epochs"},
      {"chat template the model lacks",
       [](P p, M m, L, C) {
         p->spec.apply_chat_template = true;
         m->chat_template = "";
       },
       absl::StatusCode::kFailedPrecondition, "no chat template", ""},
  };
}

TEST(JobSpecTest, RejectsEachBadRequestWithItsCodeAndField) {
  const std::vector<BadCase> cases = BadCases();
  ASSERT_GE(cases.size(), 30u);
  for (const BadCase& bad : cases) {
    SCOPED_TRACE(bad.name);
    CreateJobParams params = GoodParams();
    ModelInfo model = TinyModel();
    JobLimits limits;
    JobSpecCaps caps = SmallCaps();
    bad.change(&params, &model, &limits, &caps);
    absl::StatusOr<JobDatasets> result = NormalizeJobSpec(model, limits, caps, &params);
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), bad.code) << result.status();
    EXPECT_THAT(std::string(result.status().message()), HasSubstr(bad.fragment));
    // Programs read the field from google.rpc.BadRequest, not from the message.
    EXPECT_EQ(testing::InvalidField(result.status()), bad.field) << result.status();
    EXPECT_THAT(std::string(result.status().message()), HasSubstr(bad.field));
  }
}

TEST(JobSpecTest, FillsEveryDefault) {
  CreateJobParams params = GoodParams();
  absl::StatusOr<JobDatasets> datasets =
      NormalizeJobSpec(TinyModel(), JobLimits(), SmallCaps(), &params);
  ASSERT_TRUE(datasets.ok()) << datasets.status();
  const JobSpec& spec = params.spec;
  EXPECT_EQ(spec.algorithm, JobAlgorithm::kRloo);
  EXPECT_EQ(spec.reward.type, RewardType::kBoxed);  // Inline examples.
  EXPECT_EQ(spec.reward.correct_reward, 1.0);
  EXPECT_EQ(spec.reward.incorrect_reward, -1.0);
  EXPECT_EQ(spec.reward.format_reward, 0.0);
  const JobHyperparameters& h = spec.hyperparameters;
  EXPECT_EQ(h.steps, 100);
  EXPECT_EQ(h.prompts_per_step, 8);
  EXPECT_EQ(h.rollouts_per_prompt, 8);
  EXPECT_DOUBLE_EQ(h.learning_rate, 1e-2);
  EXPECT_EQ(h.max_new_tokens, 64);
  EXPECT_EQ(h.temperature, 1.0);
  ASSERT_TRUE(h.seed.has_value());
  EXPECT_LT(*h.seed, uint64_t{1} << 63);
  EXPECT_TRUE(h.layers.empty());
  EXPECT_EQ(h.eval_every, 0);
  EXPECT_DOUBLE_EQ(h.clip_epsilon, 0.2);
  EXPECT_EQ(h.inner_epochs, 1);
  EXPECT_FALSE(spec.eval.enabled);
  EXPECT_EQ(datasets->train.size(), 3u);
  EXPECT_EQ(datasets->train[2].answer, "3");
  EXPECT_TRUE(datasets->eval.empty());
}

TEST(JobSpecTest, DrawsADifferentSeedForEachJob) {
  CreateJobParams a = GoodParams();
  CreateJobParams b = GoodParams();
  ASSERT_TRUE(NormalizeJobSpec(TinyModel(), JobLimits(), SmallCaps(), &a).ok());
  ASSERT_TRUE(NormalizeJobSpec(TinyModel(), JobLimits(), SmallCaps(), &b).ok());
  EXPECT_NE(*a.spec.hyperparameters.seed, *b.spec.hyperparameters.seed);
}

TEST(JobSpecTest, KeepsGivenValues) {
  CreateJobParams params = GoodParams();
  params.spec.algorithm = JobAlgorithm::kGrpo;
  params.spec.apply_chat_template = true;
  params.spec.description = "sums";
  params.spec.reward.type = RewardType::kNumeric;
  params.spec.reward.correct_reward = 2.0;
  params.spec.reward.incorrect_reward = 0.0;
  params.spec.reward.format_reward = 0.5;
  JobHyperparameters& h = params.spec.hyperparameters;
  h.steps = 7;
  h.prompts_per_step = 3;
  h.rollouts_per_prompt = 4;
  h.learning_rate = 0.5;
  h.max_new_tokens = 256;  // The whole context is allowed.
  h.temperature = 0.7;
  h.seed = ~uint64_t{0};  // A caller's seed may use all 64 bits.
  h.layers = {3, 0};
  h.clip_epsilon = 1.0;
  h.inner_epochs = 16;
  JobLimits limits;
  limits.max_steps = 7;
  limits.max_examples = 3;
  ASSERT_TRUE(NormalizeJobSpec(TinyModel(), limits, SmallCaps(), &params).ok());
  EXPECT_EQ(params.spec.algorithm, JobAlgorithm::kGrpo);
  EXPECT_EQ(params.spec.reward.type, RewardType::kNumeric);
  EXPECT_EQ(params.spec.reward.correct_reward, 2.0);
  EXPECT_EQ(params.spec.reward.incorrect_reward, 0.0);
  EXPECT_EQ(h.steps, 7);
  EXPECT_EQ(h.prompts_per_step, 3);
  EXPECT_EQ(h.rollouts_per_prompt, 4);
  EXPECT_EQ(h.learning_rate, 0.5);
  EXPECT_EQ(h.max_new_tokens, 256);
  EXPECT_EQ(h.temperature, 0.7);
  EXPECT_EQ(h.seed, ~uint64_t{0});
  EXPECT_EQ(h.layers, (std::vector<int32_t>{3, 0}));
  EXPECT_EQ(h.clip_epsilon, 1.0);
  EXPECT_EQ(h.inner_epochs, 16);
}

TEST(JobSpecTest, DefaultStepsAreLoweredToTheCaps) {
  CreateJobParams params = GoodParams();
  JobLimits limits;
  limits.max_steps = 30;
  JobSpecCaps caps = SmallCaps();
  caps.max_steps = 40;
  ASSERT_TRUE(NormalizeJobSpec(TinyModel(), limits, caps, &params).ok());
  EXPECT_EQ(params.spec.hyperparameters.steps, 30);
  params = GoodParams();
  ASSERT_TRUE(NormalizeJobSpec(TinyModel(), JobLimits(), caps, &params).ok());
  EXPECT_EQ(params.spec.hyperparameters.steps, 40);
}

TEST(JobSpecTest, DefaultMaxNewTokensLeavesRoomForThePrompt) {
  ModelInfo model = TinyModel();
  model.max_context = 32;
  CreateJobParams params = GoodParams();
  ASSERT_TRUE(NormalizeJobSpec(model, JobLimits(), SmallCaps(), &params).ok());
  EXPECT_EQ(params.spec.hyperparameters.max_new_tokens, 31);
}

TEST(JobSpecTest, TaskJobGetsTheTaskSplitsAndReward) {
  CreateJobParams params = TaskParams();
  params.spec.eval.max_examples = 7;
  params.spec.hyperparameters.eval_every = 10;
  const JobSpecCaps caps = SmallCaps();
  absl::StatusOr<JobDatasets> datasets = NormalizeJobSpec(TinyModel(), JobLimits(), caps, &params);
  ASSERT_TRUE(datasets.ok()) << datasets.status();
  auto task = train::FindTask("arith");
  ASSERT_TRUE(task.ok());
  EXPECT_EQ(RewardOptionsOf(params.spec).verifier, task->verifier);
  EXPECT_NE(params.spec.reward.type, RewardType::kDefault);

  auto train_split = train::GenerateTask("arith", train::Split::kTrain, caps.task_train_examples, 0);
  ASSERT_TRUE(train_split.ok());
  ASSERT_EQ(datasets->train.size(), train_split->size());
  for (size_t i = 0; i < train_split->size(); ++i) {
    EXPECT_EQ(datasets->train[i].prompt, (*train_split)[i].prompt);
    EXPECT_EQ(datasets->train[i].answer, (*train_split)[i].answer);
  }
  auto test_split = train::GenerateTask("arith", train::Split::kTest, caps.task_eval_examples, 0);
  ASSERT_TRUE(test_split.ok());
  ASSERT_EQ(datasets->eval.size(), 7u);  // Cut to eval.max_examples.
  for (size_t i = 0; i < datasets->eval.size(); ++i) {
    EXPECT_EQ(datasets->eval[i].prompt, (*test_split)[i].prompt);
  }
}

TEST(JobSpecTest, DevSplitIsAllowed) {
  CreateJobParams params = TaskParams();
  params.spec.eval.split = "dev";
  absl::StatusOr<JobDatasets> datasets =
      NormalizeJobSpec(TinyModel(), JobLimits(), SmallCaps(), &params);
  ASSERT_TRUE(datasets.ok()) << datasets.status();
  EXPECT_EQ(datasets->eval.size(), 20u);
}

TEST(JobSpecTest, TaskDatasetsAreLoweredToTheTenantsLimit) {
  CreateJobParams params = TaskParams();
  JobLimits limits;
  limits.max_examples = 15;
  absl::StatusOr<JobDatasets> datasets = NormalizeJobSpec(TinyModel(), limits, SmallCaps(), &params);
  ASSERT_TRUE(datasets.ok()) << datasets.status();
  EXPECT_EQ(datasets->train.size(), 15u);
  EXPECT_EQ(datasets->eval.size(), 15u);
}

TEST(JobSpecTest, InlineEvalExamplesAreCutToMaxExamples) {
  CreateJobParams params = GoodParams();
  params.spec.eval.enabled = true;
  params.spec.eval.max_examples = 2;
  params.eval_examples = Examples(5);
  absl::StatusOr<JobDatasets> datasets =
      NormalizeJobSpec(TinyModel(), JobLimits(), SmallCaps(), &params);
  ASSERT_TRUE(datasets.ok()) << datasets.status();
  ASSERT_EQ(datasets->eval.size(), 2u);
  EXPECT_EQ(datasets->eval[1].answer, "2");
  EXPECT_EQ(datasets->train.size(), 3u);
}

TEST(JobSpecTest, RegexWithoutGroupAnswersWithTheWholeMatch) {
  for (const std::string pattern : {"\\d+", "(*UCP)\\d+"}) {
    SCOPED_TRACE(pattern);
    CreateJobParams params = GoodParams();
    params.spec.reward.type = RewardType::kRegex;
    params.spec.reward.pattern = pattern;
    ASSERT_TRUE(NormalizeJobSpec(TinyModel(), JobLimits(), SmallCaps(), &params).ok());
    EXPECT_EQ(params.spec.reward.pattern, pattern);  // Stored as requested.
    auto verifier = train::Verifier::Create(RewardOptionsOf(params.spec));
    ASSERT_TRUE(verifier.ok()) << verifier.status();
    EXPECT_EQ((*verifier)->Extract("3 then 42 done"), "42");
  }
}

TEST(JobSpecTest, RegexGroupOneIsTheAnswer) {
  CreateJobParams params = GoodParams();
  params.spec.reward.type = RewardType::kRegex;
  params.spec.reward.pattern = "answer: (\\w+)";
  ASSERT_TRUE(NormalizeJobSpec(TinyModel(), JobLimits(), SmallCaps(), &params).ok());
  const train::RewardOptions options = RewardOptionsOf(params.spec);
  EXPECT_EQ(options.regex, "answer: (\\w+)");
  auto verifier = train::Verifier::Create(options);
  ASSERT_TRUE(verifier.ok()) << verifier.status();
  EXPECT_EQ((*verifier)->Extract("answer: 7 answer: nine"), "nine");
}

TEST(JobSpecTest, RewardFollowsTheProto) {
  // (correct ? correct_reward : incorrect_reward) + format_reward when an answer could
  // be extracted, whether or not it is correct.
  CreateJobParams params = GoodParams();
  params.spec.reward.correct_reward = 2.0;
  params.spec.reward.incorrect_reward = -0.5;
  params.spec.reward.format_reward = 0.25;
  ASSERT_TRUE(NormalizeJobSpec(TinyModel(), JobLimits(), SmallCaps(), &params).ok());
  auto verifier = train::Verifier::Create(RewardOptionsOf(params.spec));
  ASSERT_TRUE(verifier.ok()) << verifier.status();
  EXPECT_DOUBLE_EQ((*verifier)->Reward("so \\boxed{4}", "4"), 2.25);
  EXPECT_DOUBLE_EQ((*verifier)->Reward("so \\boxed{5}", "4"), -0.25);
  EXPECT_DOUBLE_EQ((*verifier)->Reward("no idea", "4"), -0.5);
}

}  // namespace
}  // namespace steerd
