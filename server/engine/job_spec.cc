#include "server/engine/job_spec.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/escaping.h"
#include "server/engine/vector_ref.h"
#include "server/model/sampling_params.h"
#include "server/model/tokenizer_text.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

// Bounds and defaults as training.proto documents them.
constexpr int64_t kMaxRequestExamples = 100000;
constexpr int64_t kMaxSteps = 100000;
constexpr int32_t kDefaultSteps = 100;
constexpr int32_t kDefaultPromptsPerStep = 8;
constexpr int32_t kMaxPromptsPerStep = 1024;
// The offline trainer's default (TrainerOptions::rollouts_per_prompt), so a job run
// through the API matches `steerd train` unless told otherwise.
constexpr int32_t kDefaultRollouts = 8;
constexpr int32_t kMinRollouts = 2;  // A leave-one-out baseline needs another rollout.
constexpr int32_t kMaxRollouts = 256;
// Relative to each layer's residual-stream RMS: DefaultLearningRate(kSteering, ...).
constexpr double kDefaultLearningRate = 1e-2;
constexpr int32_t kDefaultMaxNewTokens = 64;
constexpr double kDefaultTemperature = 1.0;
constexpr double kMaxTemperature = 2.0;
constexpr double kDefaultClipEpsilon = 0.2;
constexpr int32_t kDefaultInnerEpochs = 1;
constexpr int32_t kMaxInnerEpochs = 16;
constexpr double kDefaultCorrectReward = 1.0;
constexpr double kDefaultIncorrectReward = -1.0;
constexpr double kMaxRewardMagnitude = 100.0;
constexpr size_t kMaxPatternBytes = 1024;
constexpr size_t kMaxDescriptionBytes = 1024;

const char* RewardTypeName(RewardType type) {
  switch (type) {
    case RewardType::kDefault: return "TYPE_UNSPECIFIED";
    case RewardType::kExact: return "TYPE_EXACT";
    case RewardType::kNumeric: return "TYPE_NUMERIC";
    case RewardType::kBoxed: return "TYPE_BOXED";
    case RewardType::kRegex: return "TYPE_REGEX";
  }
  return "unknown";
}

RewardType RewardTypeOf(train::VerifierKind kind) {
  switch (kind) {
    case train::VerifierKind::kBoxed: return RewardType::kBoxed;
    case train::VerifierKind::kNumeric: return RewardType::kNumeric;
    case train::VerifierKind::kExact: return RewardType::kExact;
    case train::VerifierKind::kRegex: return RewardType::kRegex;
  }
  return RewardType::kBoxed;
}

train::VerifierKind VerifierKindOf(RewardType type) {
  switch (type) {
    case RewardType::kExact: return train::VerifierKind::kExact;
    case RewardType::kNumeric: return train::VerifierKind::kNumeric;
    case RewardType::kRegex: return train::VerifierKind::kRegex;
    case RewardType::kBoxed:
    case RewardType::kDefault: break;
  }
  return train::VerifierKind::kBoxed;
}

// The pattern as the verifier takes it. training.proto promises the whole match when the
// pattern has no capture group, but Verifier always answers with group 1, so such a
// pattern is wrapped in one group (after its leading "(*...)" option settings, which
// PCRE2 accepts only at the very start). A pattern that does not compile is returned as
// it is, so Verifier::Create reports the error at the offsets the user wrote.
std::string VerifierPattern(const std::string& pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &error_code,
                                   &error_offset, /*ccontext=*/nullptr);
  if (code == nullptr) return pattern;
  uint32_t groups = 0;
  pcre2_pattern_info(code, PCRE2_INFO_CAPTURECOUNT, &groups);
  pcre2_code_free(code);
  if (groups > 0) return pattern;
  size_t start = 0;
  while (pattern.compare(start, 2, "(*") == 0) {
    const size_t close = pattern.find(')', start);
    if (close == std::string::npos) break;
    start = close + 1;
  }
  return absl::StrCat(pattern.substr(0, start), "(", pattern.substr(start), ")");
}

// "hyperparameters.<field> <value> must be <bound>": every bound message names the
// field as the request spells it.
absl::Status OutOfBounds(absl::string_view field, double value, absl::string_view bound) {
  return InvalidFieldError(absl::StrCat("hyperparameters.", field),
                           absl::StrCat(value, " must be ", bound));
}

// A count that 0 defaults: negative or above `max` is INVALID_ARGUMENT.
absl::Status DefaultCount(absl::string_view field, int32_t default_value, int64_t min,
                          int64_t max, int32_t* value) {
  if (*value == 0) *value = default_value;
  if (*value < min || *value > max) {
    return OutOfBounds(field, *value, absl::StrCat("in [", min, ", ", max, "] (0 means ",
                                                   default_value, ")"));
  }
  return absl::OkStatus();
}

// A real number that 0 defaults, within (0, max].
absl::Status DefaultPositive(absl::string_view field, double default_value, double max,
                             double* value) {
  if (*value == 0.0) *value = default_value;
  if (!std::isfinite(*value) || *value <= 0.0 || *value > max) {
    return OutOfBounds(field, *value, absl::StrCat("finite and in (0, ", max, "]"));
  }
  return absl::OkStatus();
}

absl::Status CheckReward(absl::string_view field, double value) {
  if (!std::isfinite(value) || std::abs(value) > kMaxRewardMagnitude) {
    return InvalidFieldError(absl::StrCat("reward.", field),
                             absl::StrCat(value, " must be finite and within [-100, 100]"));
  }
  return absl::OkStatus();
}

// Checks `value` of the request field `field` (described by `what`, e.g. "is 500" for
// hyperparameters.steps) against the documented bound, the server's cap and the
// tenant's limit (0: none). Past the first two is INVALID_ARGUMENT naming the field (no
// retry helps); past the tenant's own limit is RESOURCE_EXHAUSTED naming the limit, as
// common.proto's per-tenant limits are.
absl::Status CheckLimit(absl::string_view field, absl::string_view what, int64_t value,
                        int64_t documented_max, int64_t server_cap, int64_t tenant_limit,
                        absl::string_view limit_name) {
  if (value > documented_max) {
    return InvalidFieldError(field, absl::StrCat(what, "; the maximum is ", documented_max));
  }
  if (server_cap > 0 && value > server_cap) {
    return InvalidFieldError(field, absl::StrCat(what, "; this server's maximum is ", server_cap));
  }
  if (tenant_limit > 0 && value > tenant_limit) {
    return LimitError(absl::StatusCode::kResourceExhausted,
                      absl::StrCat(field, " ", what, "; the tenant's limit is ", tenant_limit,
                                   " (", limit_name, ")"),
                      limit_name, absl::StrCat(tenant_limit), value);
  }
  return absl::OkStatus();
}

// Examples given inline, as `field` ("examples" or "eval.examples").
absl::Status CheckInlineExamples(absl::string_view field,
                                 const std::vector<train::Example>& examples,
                                 const JobLimits& limits, const JobSpecCaps& caps) {
  if (examples.empty()) {
    return InvalidFieldError(
        field, absl::StrCat("is empty; give 1 to ", kMaxRequestExamples, " examples"));
  }
  const int64_t count = static_cast<int64_t>(examples.size());
  RETURN_IF_ERROR(CheckLimit(field, absl::StrCat("has ", count, " examples"), count,
                             kMaxRequestExamples, caps.max_examples, limits.max_examples,
                             "max_job_examples"));
  for (size_t i = 0; i < examples.size(); ++i) {
    // A blank answer is never extracted from a completion, so it could never be correct.
    if (examples[i].prompt.empty()) {
      return InvalidFieldError(absl::StrCat(field, "[", i, "].prompt"), "is empty");
    }
    if (absl::StripAsciiWhitespace(examples[i].answer).empty()) {
      return InvalidFieldError(absl::StrCat(field, "[", i, "].answer"), "is empty");
    }
  }
  return absl::OkStatus();
}

// How many problems to draw from a built-in task: the server's size, no more than the
// caps allow (the tenant did not ask for a size, so it is lowered, not refused).
int64_t TaskExampleCount(int64_t server_size, const JobLimits& limits, const JobSpecCaps& caps) {
  int64_t count = server_size;
  if (caps.max_examples > 0) count = std::min(count, caps.max_examples);
  if (limits.max_examples > 0) count = std::min(count, limits.max_examples);
  return std::max<int64_t>(count, 1);
}

absl::Status CheckDatasets(const JobLimits& limits, const JobSpecCaps& caps,
                           const CreateJobParams& params) {
  const JobSpec& spec = params.spec;
  if (spec.task.empty() && params.examples.empty()) {
    // The oneof `dataset` is what is missing: no one of its fields is more at fault.
    return InvalidFieldError(
        "dataset", absl::StrCat("is required, but no dataset was given: set examples (1 to ",
                                kMaxRequestExamples, ") or a built-in task"));
  }
  if (!spec.task.empty() && !params.examples.empty()) {
    // Only a caller other than the proto (a oneof) can give both.
    return InvalidFieldError("dataset", "has two sources; set one dataset: examples or task, "
                                        "not both");
  }
  if (!spec.task.empty()) {
    // FindTask's NOT_FOUND lists the known tasks; an unknown name is a bad argument.
    if (absl::Status found = train::FindTask(spec.task).status(); !found.ok()) {
      return InvalidFieldError("task", absl::StrCat("is invalid: ", found.message()));
    }
  } else {
    RETURN_IF_ERROR(CheckInlineExamples("examples", params.examples, limits, caps));
  }

  const JobEval& eval = spec.eval;
  if (!eval.enabled) {
    if (!eval.split.empty() || !params.eval_examples.empty()) {
      return InvalidFieldError("eval", "has examples or a split but is not enabled");
    }
    return absl::OkStatus();
  }
  if (eval.split.empty() && params.eval_examples.empty()) {
    return InvalidFieldError("eval", absl::StrCat("has no examples: set eval.examples (1 to ",
                                                  kMaxRequestExamples, ") or eval.split"));
  }
  if (!eval.split.empty() && !params.eval_examples.empty()) {
    // Only a caller other than the proto (a oneof) can give both.
    return InvalidFieldError(
        "eval", "has two sources; set one eval source: eval.examples or eval.split, not both");
  }
  if (!eval.split.empty()) {
    if (spec.task.empty()) {
      return InvalidFieldError(
          "eval.split", "needs a built-in task; with inline examples, give eval.examples");
    }
    auto split = train::ParseSplit(eval.split);
    // Evaluating on the training split would measure memorisation, not accuracy.
    if (!split.ok() || *split == train::Split::kTrain) {
      return InvalidFieldError(
          "eval.split", absl::StrCat("\"", absl::CHexEscape(eval.split), "\" is not a held-out ",
                                     "split of task \"", spec.task, "\"; use dev or test"));
    }
  } else {
    RETURN_IF_ERROR(CheckInlineExamples("eval.examples", params.eval_examples, limits, caps));
  }
  if (eval.max_examples < 0) {
    return InvalidFieldError("eval.max_examples",
                             absl::StrCat(eval.max_examples, " must not be negative"));
  }
  return absl::OkStatus();
}

// Validates the reward and fills its defaults in.
absl::Status NormalizeReward(const std::string& task, JobReward* reward) {
  if (reward->type != RewardType::kRegex && !reward->pattern.empty()) {
    return InvalidFieldError("reward.pattern", absl::StrCat("is set but reward.type is ",
                                                            RewardTypeName(reward->type),
                                                            "; a pattern is only used by "
                                                            "TYPE_REGEX"));
  }
  if (reward->type == RewardType::kRegex) {
    if (reward->pattern.empty()) {
      return InvalidFieldError("reward.pattern", "is empty; a TYPE_REGEX reward needs one");
    }
    if (reward->pattern.size() > kMaxPatternBytes) {
      return InvalidFieldError("reward.pattern", absl::StrCat("is ", reward->pattern.size(),
                                                              " bytes; the maximum is ",
                                                              kMaxPatternBytes));
    }
  }
  if (reward->type == RewardType::kDefault) {
    reward->type = task.empty() ? RewardType::kBoxed
                                : RewardTypeOf(train::FindTask(task)->verifier);
  }
  if (!reward->correct_reward.has_value()) reward->correct_reward = kDefaultCorrectReward;
  if (!reward->incorrect_reward.has_value()) reward->incorrect_reward = kDefaultIncorrectReward;
  RETURN_IF_ERROR(CheckReward("correct_reward", *reward->correct_reward));
  RETURN_IF_ERROR(CheckReward("incorrect_reward", *reward->incorrect_reward));
  RETURN_IF_ERROR(CheckReward("format_reward", reward->format_reward));
  return absl::OkStatus();
}

absl::Status NormalizeHyperparameters(const ModelInfo& model, const JobLimits& limits,
                                      const JobSpecCaps& caps, const JobEval& eval,
                                      JobHyperparameters* h) {
  if (h->steps < 0) return OutOfBounds("steps", h->steps, "positive (0 means 100)");
  if (h->steps == 0) {
    // Like an unset max_new_tokens of a generation, an unset step count is lowered to
    // the caps rather than refused: the tenant did not ask for more.
    int64_t steps = kDefaultSteps;
    if (caps.max_steps > 0) steps = std::min(steps, caps.max_steps);
    if (limits.max_steps > 0) steps = std::min(steps, limits.max_steps);
    h->steps = static_cast<int32_t>(steps);
  }
  RETURN_IF_ERROR(CheckLimit("hyperparameters.steps", absl::StrCat("is ", h->steps), h->steps,
                             kMaxSteps, caps.max_steps, limits.max_steps, "max_job_steps"));
  RETURN_IF_ERROR(DefaultCount("prompts_per_step", kDefaultPromptsPerStep, 1, kMaxPromptsPerStep,
                               &h->prompts_per_step));
  RETURN_IF_ERROR(DefaultCount("rollouts_per_prompt", kDefaultRollouts, kMinRollouts,
                               kMaxRollouts, &h->rollouts_per_prompt));
  RETURN_IF_ERROR(DefaultPositive("learning_rate", kDefaultLearningRate, 1.0,
                                  &h->learning_rate));

  // A prompt needs at least one token of the context.
  const int32_t default_max_new =
      std::max(1, std::min(kDefaultMaxNewTokens, model.max_context - 1));
  RETURN_IF_ERROR(DefaultCount("max_new_tokens", default_max_new, 1,
                               std::max(1, model.max_context), &h->max_new_tokens));

  if (!h->temperature.has_value()) h->temperature = kDefaultTemperature;
  if (!std::isfinite(*h->temperature) || *h->temperature < kMinTemperature ||
      *h->temperature > kMaxTemperature) {
    return OutOfBounds("temperature", *h->temperature,
                       absl::StrCat("in [", kMinTemperature, ", 2] (unset means 1)"));
  }
  if (!h->seed.has_value()) {
    // 63 bits: the seed is shown in Job.hyperparameters and stored, and stays positive
    // wherever it passes through a signed 64-bit integer.
    absl::BitGen bitgen;
    h->seed = absl::Uniform<uint64_t>(bitgen, 0, uint64_t{1} << 63);
  }

  std::vector<bool> seen(std::max(0, model.num_layers), false);
  for (size_t i = 0; i < h->layers.size(); ++i) {
    const int32_t layer = h->layers[i];
    const std::string field = absl::StrCat("hyperparameters.layers[", i, "]");
    if (layer < 0 || layer >= model.num_layers) {
      return InvalidFieldError(field, absl::StrCat(layer, " is outside [0, ", model.num_layers,
                                                   "): model \"", model.name, "\" has ",
                                                   model.num_layers, " layers"));
    }
    if (seen[layer]) return InvalidFieldError(field, absl::StrCat(layer, " is given twice"));
    seen[layer] = true;
  }

  if (h->eval_every < 0) return OutOfBounds("eval_every", h->eval_every, ">= 0");
  if (h->eval_every > 0 && !eval.enabled) {
    return InvalidFieldError("hyperparameters.eval_every",
                             absl::StrCat(h->eval_every, " needs eval data; set eval"));
  }
  RETURN_IF_ERROR(DefaultPositive("clip_epsilon", kDefaultClipEpsilon, 1.0, &h->clip_epsilon));
  RETURN_IF_ERROR(DefaultCount("inner_epochs", kDefaultInnerEpochs, 1, kMaxInnerEpochs,
                               &h->inner_epochs));
  return absl::OkStatus();
}

// The built-in task's `split`, `count` problems drawn with data seed 0.
absl::StatusOr<std::vector<train::Example>> TaskExamples(const std::string& task,
                                                         train::Split split, int64_t count) {
  auto examples = train::GenerateTask(task, split, count, /*seed=*/0);
  if (!examples.ok()) {
    // The sizes are the server's configuration, not the request's.
    return absl::InternalError(absl::StrCat("cannot draw ", count, " problems of task \"", task,
                                            "\" split ", train::SplitName(split), ": ",
                                            examples.status().message()));
  }
  return examples;
}

}  // namespace

absl::Status ValidateJobId(const std::string& id) {
  if (id.empty()) return InvalidFieldError("id", "is empty");
  if (id.size() > kMaxJobIdBytes) {
    return InvalidFieldError("id", absl::StrCat("is ", id.size(),
                                                " bytes long; job ids are at most ",
                                                kMaxJobIdBytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<JobDatasets> NormalizeJobSpec(const ModelInfo& model, const JobLimits& limits,
                                             const JobSpecCaps& caps, CreateJobParams* params) {
  JobSpec& spec = params->spec;
  if (spec.model.empty()) return InvalidFieldError("model", "is empty");
  if (spec.model != model.name) {
    return absl::InternalError(absl::StrCat("job spec for model \"", spec.model,
                                            "\" checked against model \"", model.name, "\""));
  }
  if (spec.output_vector.empty()) return InvalidFieldError("output_vector", "is empty");
  if (spec.output_vector.find('@') != std::string::npos) {
    return InvalidFieldError(
        "output_vector", "must be a plain vector name; a job publishes the next version "
                         "itself, so \"@version\" is not allowed");
  }
  RETURN_IF_ERROR(ValidateVectorName(spec.output_vector, "output_vector"));
  if (spec.description.size() > kMaxDescriptionBytes) {
    return InvalidFieldError("description", absl::StrCat("is ", spec.description.size(),
                                                         " bytes; the maximum is ",
                                                         kMaxDescriptionBytes));
  }
  if (absl::Status utf8 = tokenizer_text::ValidateUtf8(spec.description); !utf8.ok()) {
    return InvalidFieldError("description", absl::StrCat("is invalid: ", utf8.message()));
  }

  RETURN_IF_ERROR(CheckDatasets(limits, caps, *params));
  RETURN_IF_ERROR(NormalizeReward(spec.task, &spec.reward));
  if (spec.reward.type == RewardType::kRegex) {
    // Compiles the pattern exactly as the trainer will.
    const train::RewardOptions options = RewardOptionsOf(spec);
    auto verifier = train::Verifier::Create(options);
    if (!verifier.ok()) {
      return InvalidFieldError(
          "reward.pattern",
          absl::StrCat(options.regex == spec.reward.pattern
                           ? "is invalid: "
                           : "has no capture group, and wrapped in one to capture the whole "
                             "match: ",
                       verifier.status().message()));
    }
  }
  RETURN_IF_ERROR(
      NormalizeHyperparameters(model, limits, caps, spec.eval, &spec.hyperparameters));
  if (spec.apply_chat_template && model.chat_template.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model \"", model.name,
        "\" has no chat template steerd recognises; set apply_chat_template to false"));
  }

  JobDatasets datasets;
  if (spec.task.empty()) {
    datasets.train = std::move(params->examples);
    datasets.eval = std::move(params->eval_examples);
  } else {
    ASSIGN_OR_RETURN(datasets.train,
                     TaskExamples(spec.task, train::Split::kTrain,
                                  TaskExampleCount(caps.task_train_examples, limits, caps)));
    if (!spec.eval.split.empty()) {
      ASSIGN_OR_RETURN(datasets.eval,
                       TaskExamples(spec.task, *train::ParseSplit(spec.eval.split),
                                    TaskExampleCount(caps.task_eval_examples, limits, caps)));
    }
  }
  params->examples.clear();
  params->eval_examples.clear();
  if (spec.eval.max_examples > 0 &&
      static_cast<int64_t>(datasets.eval.size()) > spec.eval.max_examples) {
    datasets.eval.resize(spec.eval.max_examples);
  }
  return datasets;
}

train::RewardOptions RewardOptionsOf(const JobSpec& spec) {
  const JobReward& reward = spec.reward;
  train::RewardOptions options;
  options.verifier = VerifierKindOf(reward.type);
  if (reward.type == RewardType::kRegex) options.regex = VerifierPattern(reward.pattern);
  // training.proto adds format_reward to every completion with an extractable answer;
  // the verifier adds it to wrong answers only, so a correct answer carries it here.
  options.correct_reward =
      reward.correct_reward.value_or(kDefaultCorrectReward) + reward.format_reward;
  options.wrong_reward = reward.incorrect_reward.value_or(kDefaultIncorrectReward);
  options.format_reward = reward.format_reward;
  return options;
}

}  // namespace steerd
