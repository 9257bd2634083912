#include "server/api/training_convert.h"

#include <google/protobuf/util/time_util.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/api/grpc_status.h"
#include "server/util/error_details.h"

namespace steerd {
namespace {

std::vector<train::Example> ExamplesOf(const v1::InlineDataset& dataset) {
  std::vector<train::Example> examples;
  examples.reserve(dataset.examples_size());
  for (const v1::Example& example : dataset.examples()) {
    examples.push_back({example.prompt(), example.answer(), /*solution=*/""});
  }
  return examples;
}

absl::StatusOr<RewardType> RewardTypeOf(v1::RewardSpec::Type type) {
  switch (type) {
    case v1::RewardSpec::TYPE_UNSPECIFIED: return RewardType::kDefault;
    case v1::RewardSpec::TYPE_EXACT: return RewardType::kExact;
    case v1::RewardSpec::TYPE_NUMERIC: return RewardType::kNumeric;
    case v1::RewardSpec::TYPE_BOXED: return RewardType::kBoxed;
    case v1::RewardSpec::TYPE_REGEX: return RewardType::kRegex;
    default: break;
  }
  return InvalidFieldError(
      "reward.type",
      absl::StrCat(static_cast<int>(type),
                   " is unknown; use TYPE_EXACT, TYPE_NUMERIC, TYPE_BOXED or TYPE_REGEX"));
}

absl::StatusOr<JobAlgorithm> AlgorithmOf(v1::Algorithm algorithm) {
  switch (algorithm) {
    case v1::ALGORITHM_UNSPECIFIED:
    case v1::ALGORITHM_RLOO: return JobAlgorithm::kRloo;
    case v1::ALGORITHM_GRPO: return JobAlgorithm::kGrpo;
    case v1::ALGORITHM_SFT: return JobAlgorithm::kSft;
    default: break;
  }
  return InvalidFieldError(
      "algorithm",
      absl::StrCat(static_cast<int>(algorithm),
                   " is unknown; use ALGORITHM_RLOO, ALGORITHM_GRPO or ALGORITHM_SFT"));
}

JobHyperparameters HyperparametersOf(const v1::Hyperparameters& h) {
  JobHyperparameters out;
  out.steps = h.steps();
  out.prompts_per_step = h.prompts_per_step();
  out.rollouts_per_prompt = h.rollouts_per_prompt();
  out.learning_rate = h.learning_rate();
  out.max_new_tokens = h.max_new_tokens();
  if (h.has_temperature()) out.temperature = h.temperature();
  if (h.has_seed()) out.seed = h.seed();
  out.layers.assign(h.layers().begin(), h.layers().end());
  out.eval_every = h.eval_every();
  out.clip_epsilon = h.clip_epsilon();
  out.inner_epochs = h.inner_epochs();
  return out;
}

void ToProto(const JobHyperparameters& h, v1::Hyperparameters* out) {
  out->set_steps(h.steps);
  out->set_prompts_per_step(h.prompts_per_step);
  out->set_rollouts_per_prompt(h.rollouts_per_prompt);
  out->set_learning_rate(static_cast<float>(h.learning_rate));
  out->set_max_new_tokens(h.max_new_tokens);
  if (h.temperature.has_value()) out->set_temperature(static_cast<float>(*h.temperature));
  if (h.seed.has_value()) out->set_seed(*h.seed);
  for (int32_t layer : h.layers) out->add_layers(layer);
  out->set_eval_every(h.eval_every);
  out->set_clip_epsilon(static_cast<float>(h.clip_epsilon));
  out->set_inner_epochs(h.inner_epochs);
}

google::protobuf::Timestamp TimestampOf(absl::Time time) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(time));
}

// A record holds InfinitePast for "not yet" (not started, not ended): the field stays
// unset then.
bool IsSet(absl::Time time) { return time != absl::InfinitePast(); }

}  // namespace

absl::StatusOr<CreateJobParams> FromProto(const v1::CreateJobRequest& request) {
  CreateJobParams params;
  JobSpec& spec = params.spec;
  spec.model = request.model();
  spec.output_vector = request.output_vector();
  switch (request.dataset_case()) {
    case v1::CreateJobRequest::kExamples:
      params.examples = ExamplesOf(request.examples());
      break;
    case v1::CreateJobRequest::kTask:
      spec.task = request.task();
      break;
    case v1::CreateJobRequest::DATASET_NOT_SET:
      break;  // NormalizeJobSpec names what is missing.
  }
  if (request.has_eval()) {
    const v1::EvalSpec& eval = request.eval();
    spec.eval.enabled = true;
    switch (eval.source_case()) {
      case v1::EvalSpec::kExamples:
        params.eval_examples = ExamplesOf(eval.examples());
        break;
      case v1::EvalSpec::kSplit:
        spec.eval.split = eval.split();
        break;
      case v1::EvalSpec::SOURCE_NOT_SET:
        break;
    }
    spec.eval.max_examples = eval.max_examples();
  }
  if (request.has_reward()) {
    const v1::RewardSpec& reward = request.reward();
    auto type = RewardTypeOf(reward.type());
    if (!type.ok()) return type.status();
    spec.reward.type = *type;
    spec.reward.pattern = reward.pattern();
    if (reward.has_correct_reward()) spec.reward.correct_reward = reward.correct_reward();
    if (reward.has_incorrect_reward()) spec.reward.incorrect_reward = reward.incorrect_reward();
    spec.reward.format_reward = reward.format_reward();
  }
  auto algorithm = AlgorithmOf(request.algorithm());
  if (!algorithm.ok()) return algorithm.status();
  spec.algorithm = *algorithm;
  if (request.has_hyperparameters()) {
    spec.hyperparameters = HyperparametersOf(request.hyperparameters());
  }
  spec.apply_chat_template = request.apply_chat_template();
  spec.description = request.description();
  return params;
}

absl::StatusOr<std::optional<JobState>> JobStateFilter(v1::Job::State state) {
  if (state == v1::Job::STATE_UNSPECIFIED) return std::optional<JobState>();
  if (!v1::Job::State_IsValid(state)) {
    return InvalidFieldError(
        "state", absl::StrCat(static_cast<int>(state),
                              " is unknown; use STATE_QUEUED, STATE_RUNNING, STATE_SUCCEEDED, "
                              "STATE_FAILED or STATE_CANCELLED"));
  }
  // JobState is numbered as the proto.
  return std::optional<JobState>(static_cast<JobState>(state));
}

v1::Job::State ToProto(JobState state) { return static_cast<v1::Job::State>(state); }

void ToProto(const JobMetrics& metrics, v1::JobMetrics* out) {
  out->set_step(metrics.step);
  out->set_reward_mean(static_cast<float>(metrics.reward_mean));
  out->set_accuracy(static_cast<float>(metrics.accuracy));
  out->set_loss(static_cast<float>(metrics.loss));
  out->set_tokens_per_second(static_cast<float>(metrics.tokens_per_second));
  out->set_eta_seconds(static_cast<float>(metrics.eta_seconds));
  if (metrics.eval_accuracy.has_value()) {
    out->set_eval_accuracy(static_cast<float>(*metrics.eval_accuracy));
  }
}

void ToProto(const JobRecord& job, v1::Job* out) {
  const JobSpec& spec = job.spec;
  out->set_id(job.id);
  out->set_model(spec.model);
  out->set_output_vector(spec.output_vector);
  out->set_task(spec.task);
  out->set_algorithm(static_cast<v1::Algorithm>(spec.algorithm));  // Numbered as the proto.
  ToProto(spec.hyperparameters, out->mutable_hyperparameters());
  out->set_state(ToProto(job.state));
  out->mutable_progress()->set_step(job.step);
  out->mutable_progress()->set_total_steps(spec.hyperparameters.steps);
  if (job.metrics.has_value()) ToProto(*job.metrics, out->mutable_metrics());
  if (!job.error.ok()) *out->mutable_error() = ToRpcStatus(job.error);
  if (job.state == JobState::kSucceeded && job.vector_version > 0) {
    out->mutable_vector()->set_name(spec.output_vector);
    out->mutable_vector()->set_version(job.vector_version);
  }
  if (IsSet(job.create_time)) *out->mutable_create_time() = TimestampOf(job.create_time);
  if (IsSet(job.start_time)) *out->mutable_start_time() = TimestampOf(job.start_time);
  if (IsSet(job.end_time)) *out->mutable_end_time() = TimestampOf(job.end_time);
  out->set_replica(job.replica);
}

void ToProto(const JobEvent& event, v1::JobEvent* out) {
  if (IsSet(event.time)) *out->mutable_time() = TimestampOf(event.time);
  ToProto(event.job, out->mutable_job());
  switch (event.kind) {
    case JobEvent::Kind::kStateChange: {
      v1::StateChange* change = out->mutable_state_change();
      change->set_previous_state(event.previous_state.has_value()
                                     ? ToProto(*event.previous_state)
                                     : v1::Job::STATE_UNSPECIFIED);
      change->set_state(ToProto(event.job.state));
      break;
    }
    case JobEvent::Kind::kMetrics:
      ToProto(event.metrics, out->mutable_step_metrics());
      break;
  }
}

JobLimits JobLimitsOf(const TenantLimits& limits) {
  JobLimits out;
  out.max_active_jobs = limits.queued_jobs;
  out.max_stored_vectors = limits.stored_vectors;
  out.max_steps = limits.max_job_steps;
  out.max_examples = limits.max_job_examples;
  return out;
}

}  // namespace steerd
