// The Training protos <-> the manager's plain types (server/api/training_convert.h):
// optional fields stay optional, unknown enum values are INVALID_ARGUMENT naming their
// field (INVALID_FIELD), and a Job shows every default NormalizeJobSpec filled in, with
// "not yet" timestamps unset.
#include "server/api/training_convert.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <google/protobuf/text_format.h>

#include <functional>
#include <string>

#include "google/rpc/error_details.pb.h"
#include "server/engine/job_spec.h"
#include "server/util/error_details.h"
#include "tests/testing/invalid_field.h"

namespace steerd {
namespace {

using ::testing::HasSubstr;

v1::CreateJobRequest ParseRequest(const std::string& text) {
  v1::CreateJobRequest request;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &request)) << text;
  return request;
}

TEST(TrainingConvertTest, CreateJobRequestKeepsEveryField) {
  const v1::CreateJobRequest request = ParseRequest(R"pb(
    model: "tiny"
    output_vector: "adder"
    examples {
      examples { prompt: "1+1=" answer: "2" }
      examples { prompt: "2+2=" answer: "4" }
    }
    eval { examples { examples { prompt: "3+3=" answer: "6" } } max_examples: 1 }
    reward { type: TYPE_REGEX pattern: "(\\d+)" correct_reward: 0 format_reward: 0.5 }
    algorithm: ALGORITHM_GRPO
    hyperparameters {
      steps: 10
      prompts_per_step: 2
      rollouts_per_prompt: 4
      learning_rate: 0.5
      max_new_tokens: 12
      temperature: 0
      seed: 7
      layers: [ 1, 3 ]
      eval_every: 5
      clip_epsilon: 0.25
      inner_epochs: 2
    }
    apply_chat_template: true
    description: "sums"
  )pb");
  absl::StatusOr<CreateJobParams> params = FromProto(request);
  ASSERT_TRUE(params.ok()) << params.status();
  const JobSpec& spec = params->spec;
  EXPECT_EQ(spec.model, "tiny");
  EXPECT_EQ(spec.output_vector, "adder");
  EXPECT_TRUE(spec.task.empty());
  ASSERT_EQ(params->examples.size(), 2u);
  EXPECT_EQ(params->examples[1].prompt, "2+2=");
  EXPECT_EQ(params->examples[1].answer, "4");
  EXPECT_TRUE(spec.eval.enabled);
  EXPECT_TRUE(spec.eval.split.empty());
  EXPECT_EQ(spec.eval.max_examples, 1);
  ASSERT_EQ(params->eval_examples.size(), 1u);
  EXPECT_EQ(spec.reward.type, RewardType::kRegex);
  EXPECT_EQ(spec.reward.pattern, "(\\d+)");
  EXPECT_EQ(spec.reward.correct_reward, 0.0);  // Set to 0, not unset.
  EXPECT_FALSE(spec.reward.incorrect_reward.has_value());
  EXPECT_EQ(spec.reward.format_reward, 0.5);
  EXPECT_EQ(spec.algorithm, JobAlgorithm::kGrpo);
  const JobHyperparameters& h = spec.hyperparameters;
  EXPECT_EQ(h.steps, 10);
  EXPECT_EQ(h.prompts_per_step, 2);
  EXPECT_EQ(h.rollouts_per_prompt, 4);
  EXPECT_EQ(h.learning_rate, 0.5);
  EXPECT_EQ(h.max_new_tokens, 12);
  EXPECT_EQ(h.temperature, 0.0);  // Set (and invalid), not unset.
  EXPECT_EQ(h.seed, 7u);
  EXPECT_EQ(h.layers, (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(h.eval_every, 5);
  EXPECT_EQ(h.clip_epsilon, 0.25);
  EXPECT_EQ(h.inner_epochs, 2);
  EXPECT_TRUE(spec.apply_chat_template);
  EXPECT_EQ(spec.description, "sums");
}

TEST(TrainingConvertTest, UnsetFieldsStayUnset) {
  absl::StatusOr<CreateJobParams> params =
      FromProto(ParseRequest(R"pb(model: "tiny" output_vector: "v" task: "arith")pb"));
  ASSERT_TRUE(params.ok()) << params.status();
  const JobSpec& spec = params->spec;
  EXPECT_EQ(spec.task, "arith");
  EXPECT_TRUE(params->examples.empty());
  EXPECT_FALSE(spec.eval.enabled);
  EXPECT_EQ(spec.algorithm, JobAlgorithm::kRloo);  // ALGORITHM_UNSPECIFIED.
  EXPECT_EQ(spec.reward.type, RewardType::kDefault);
  EXPECT_FALSE(spec.reward.correct_reward.has_value());
  EXPECT_FALSE(spec.hyperparameters.temperature.has_value());
  EXPECT_FALSE(spec.hyperparameters.seed.has_value());
  EXPECT_EQ(spec.hyperparameters.steps, 0);
}

TEST(TrainingConvertTest, EvalSplitAndEmptyEval) {
  absl::StatusOr<CreateJobParams> params = FromProto(ParseRequest(R"pb(
    model: "tiny" output_vector: "v" task: "arith" eval { split: "dev" }
  )pb"));
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_TRUE(params->spec.eval.enabled);
  EXPECT_EQ(params->spec.eval.split, "dev");
  // An eval message without a source is kept enabled, so validation names it.
  params = FromProto(ParseRequest(R"pb(model: "tiny" output_vector: "v" eval {})pb"));
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_TRUE(params->spec.eval.enabled);
}

TEST(TrainingConvertTest, UnknownEnumValuesAreInvalidAndNameTheirField) {
  auto create = [](const std::function<void(v1::CreateJobRequest*)>& change) {
    v1::CreateJobRequest request = ParseRequest(R"pb(model: "tiny" output_vector: "v")pb");
    change(&request);
    return FromProto(request).status();
  };
  const struct {
    std::string name;
    absl::Status status;
    std::string fragment;  // Part of the message, naming the field.
    std::string field;     // The field google.rpc.BadRequest names.
  } cases[] = {
      {"algorithm",
       create([](auto* r) { r->set_algorithm(static_cast<v1::Algorithm>(9)); }),
       "algorithm 9 is unknown", "algorithm"},
      {"reward type",
       create([](auto* r) {
         r->set_algorithm(v1::ALGORITHM_SFT);
         r->mutable_reward()->set_type(static_cast<v1::RewardSpec::Type>(17));
       }),
       "reward.type 17 is unknown", "reward.type"},
      {"job state filter", JobStateFilter(static_cast<v1::Job::State>(6)).status(),
       "state 6 is unknown", "state"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(c.status.code(), absl::StatusCode::kInvalidArgument) << c.status;
    EXPECT_THAT(std::string(c.status.message()), HasSubstr(c.fragment));
    EXPECT_EQ(testing::InvalidField(c.status), c.field) << c.status;
  }

  EXPECT_FALSE(JobStateFilter(v1::Job::STATE_UNSPECIFIED)->has_value());
  EXPECT_EQ(JobStateFilter(v1::Job::STATE_RUNNING)->value(), JobState::kRunning);
  EXPECT_EQ(JobStateFilter(v1::Job::STATE_CANCELLED)->value(), JobState::kCancelled);
}

JobRecord NormalizedJob() {
  absl::StatusOr<CreateJobParams> params = FromProto(ParseRequest(R"pb(
    model: "tiny" output_vector: "adder" examples { examples { prompt: "1+1=" answer: "2" } }
  )pb"));
  EXPECT_TRUE(params.ok()) << params.status();
  ModelInfo model;
  model.name = "tiny";
  model.num_layers = 2;
  model.max_context = 128;
  EXPECT_TRUE(NormalizeJobSpec(model, JobLimits(), JobSpecCaps(), &*params).ok());
  JobRecord job;
  job.id = "job-1";
  job.tenant = "acme";
  job.spec = params->spec;
  job.create_time = absl::FromUnixSeconds(1700000000);
  return job;
}

TEST(TrainingConvertTest, QueuedJobShowsDefaultsAndNoStartOrEnd) {
  const JobRecord job = NormalizedJob();
  v1::Job proto;
  ToProto(job, &proto);
  EXPECT_EQ(proto.id(), "job-1");
  EXPECT_EQ(proto.model(), "tiny");
  EXPECT_EQ(proto.output_vector(), "adder");
  EXPECT_EQ(proto.task(), "");
  EXPECT_EQ(proto.algorithm(), v1::ALGORITHM_RLOO);
  EXPECT_EQ(proto.state(), v1::Job::STATE_QUEUED);
  EXPECT_EQ(proto.hyperparameters().steps(), 100);
  EXPECT_EQ(proto.hyperparameters().rollouts_per_prompt(), 8);
  EXPECT_FLOAT_EQ(proto.hyperparameters().learning_rate(), 1e-2f);
  EXPECT_EQ(proto.hyperparameters().max_new_tokens(), 64);
  EXPECT_TRUE(proto.hyperparameters().has_temperature());
  EXPECT_EQ(proto.hyperparameters().temperature(), 1.0f);
  EXPECT_TRUE(proto.hyperparameters().has_seed());
  EXPECT_EQ(proto.hyperparameters().seed(), *job.spec.hyperparameters.seed);
  EXPECT_FLOAT_EQ(proto.hyperparameters().clip_epsilon(), 0.2f);
  EXPECT_EQ(proto.hyperparameters().inner_epochs(), 1);
  EXPECT_EQ(proto.progress().step(), 0);
  EXPECT_EQ(proto.progress().total_steps(), 100);
  EXPECT_FALSE(proto.has_metrics());
  EXPECT_FALSE(proto.has_vector());
  EXPECT_EQ(proto.create_time().seconds(), 1700000000);
  EXPECT_FALSE(proto.has_start_time());
  EXPECT_FALSE(proto.has_end_time());
}

TEST(TrainingConvertTest, SucceededJobNamesItsVector) {
  JobRecord job = NormalizedJob();
  job.state = JobState::kSucceeded;
  job.step = 100;
  job.vector_version = 3;
  job.start_time = absl::FromUnixSeconds(1700000010);
  job.end_time = absl::FromUnixSeconds(1700000070);
  JobMetrics metrics;
  metrics.step = 100;
  metrics.reward_mean = 0.5;
  metrics.accuracy = 0.75;
  metrics.loss = 1.25;
  metrics.tokens_per_second = 300;
  metrics.eval_accuracy = 0.625;
  job.metrics = metrics;
  v1::Job proto;
  ToProto(job, &proto);
  EXPECT_EQ(proto.state(), v1::Job::STATE_SUCCEEDED);
  EXPECT_EQ(proto.vector().name(), "adder");
  EXPECT_EQ(proto.vector().version(), 3);
  EXPECT_EQ(proto.progress().step(), 100);
  EXPECT_EQ(proto.start_time().seconds(), 1700000010);
  EXPECT_EQ(proto.end_time().seconds(), 1700000070);
  EXPECT_EQ(proto.metrics().step(), 100);
  EXPECT_EQ(proto.metrics().accuracy(), 0.75f);
  EXPECT_EQ(proto.metrics().loss(), 1.25f);
  EXPECT_EQ(proto.metrics().tokens_per_second(), 300.0f);
  ASSERT_TRUE(proto.metrics().has_eval_accuracy());
  EXPECT_EQ(proto.metrics().eval_accuracy(), 0.625f);

  job.state = JobState::kFailed;
  job.error = WithReason(absl::InvalidArgumentError("training diverged"), "NON_FINITE_LOGITS",
                         {{"token_index", "3"}});
  proto.Clear();
  ToProto(job, &proto);
  EXPECT_FALSE(proto.has_vector());
  EXPECT_EQ(proto.error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(proto.error().message(), "training diverged");
  ASSERT_EQ(proto.error().details_size(), 1);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(proto.error().details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "NON_FINITE_LOGITS");
  EXPECT_EQ(info.domain(), "steerd");
  EXPECT_EQ(info.metadata().at("token_index"), "3");
}

TEST(TrainingConvertTest, Events) {
  JobEvent first;
  first.time = absl::FromUnixSeconds(1700000001);
  first.job = NormalizedJob();
  v1::JobEvent proto;
  ToProto(first, &proto);
  EXPECT_EQ(proto.time().seconds(), 1700000001);
  ASSERT_TRUE(proto.has_state_change());
  EXPECT_EQ(proto.state_change().previous_state(), v1::Job::STATE_UNSPECIFIED);
  EXPECT_EQ(proto.state_change().state(), v1::Job::STATE_QUEUED);
  EXPECT_EQ(proto.job().id(), "job-1");

  JobEvent running = first;
  running.previous_state = JobState::kQueued;
  running.job.state = JobState::kRunning;
  proto.Clear();
  ToProto(running, &proto);
  EXPECT_EQ(proto.state_change().previous_state(), v1::Job::STATE_QUEUED);
  EXPECT_EQ(proto.state_change().state(), v1::Job::STATE_RUNNING);

  JobEvent step = running;
  step.kind = JobEvent::Kind::kMetrics;
  step.metrics.step = 4;
  step.metrics.reward_mean = -0.5;
  step.job.step = 4;
  step.job.metrics = step.metrics;
  proto.Clear();
  ToProto(step, &proto);
  ASSERT_TRUE(proto.has_step_metrics());
  EXPECT_EQ(proto.step_metrics().step(), 4);
  EXPECT_EQ(proto.step_metrics().reward_mean(), -0.5f);
  EXPECT_FALSE(proto.step_metrics().has_eval_accuracy());
  EXPECT_EQ(proto.job().progress().step(), 4);
}

TEST(TrainingConvertTest, JobLimitsComeFromTheTenantsFile) {
  absl::StatusOr<std::vector<Tenant>> tenants = ParseTenantsJson(
      R"({"tenants": [{"name": "acme", "api_key_sha256": ")" + std::string(64, 'a') +
          R"(", "limits": {"queued_jobs": 2, "stored_vectors": 10,
                           "max_job_steps": 500, "max_job_examples": 2000}}]})",
      "tenants.json");
  ASSERT_TRUE(tenants.ok()) << tenants.status();
  const JobLimits limits = JobLimitsOf((*tenants)[0].limits);
  EXPECT_EQ(limits.max_active_jobs, 2);
  EXPECT_EQ(limits.max_stored_vectors, 10);
  EXPECT_EQ(limits.max_steps, 500);
  EXPECT_EQ(limits.max_examples, 2000);

  const JobLimits defaults = JobLimitsOf(TenantLimits());
  EXPECT_EQ(defaults.max_active_jobs, 4);
  EXPECT_EQ(defaults.max_steps, 0);
  EXPECT_EQ(defaults.max_examples, 0);

  EXPECT_FALSE(ParseTenantsJson(R"({"tenants": [{"name": "acme", "api_key_sha256": ")" +
                                    std::string(64, 'a') +
                                    R"(", "limits": {"max_job_steps": -1}}]})",
                                "tenants.json")
                   .ok());
}

}  // namespace
}  // namespace steerd
