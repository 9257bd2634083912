#include "server/storage/job_codec.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using json = nlohmann::json;

std::optional<absl::string_view> StateName(JobState state) {
  const absl::string_view name = JobStateName(state);
  if (name == "UNKNOWN") return std::nullopt;
  return name;
}

std::optional<JobState> ParseState(absl::string_view name) {
  for (JobState state : {JobState::kQueued, JobState::kRunning, JobState::kSucceeded,
                         JobState::kFailed, JobState::kCancelled}) {
    if (StateName(state) == name) return state;
  }
  return std::nullopt;
}

std::optional<absl::string_view> AlgorithmName(JobAlgorithm algorithm) {
  switch (algorithm) {
    case JobAlgorithm::kRloo:
      return "RLOO";
    case JobAlgorithm::kGrpo:
      return "GRPO";
    case JobAlgorithm::kSft:
      return "SFT";
  }
  return std::nullopt;
}

std::optional<JobAlgorithm> ParseAlgorithm(absl::string_view name) {
  for (JobAlgorithm algorithm : {JobAlgorithm::kRloo, JobAlgorithm::kGrpo, JobAlgorithm::kSft}) {
    if (AlgorithmName(algorithm) == name) return algorithm;
  }
  return std::nullopt;
}

// kDefault is kept as well: the store records what it is given, resolved or not.
std::optional<absl::string_view> RewardTypeName(RewardType type) {
  switch (type) {
    case RewardType::kDefault:
      return "DEFAULT";
    case RewardType::kExact:
      return "EXACT";
    case RewardType::kNumeric:
      return "NUMERIC";
    case RewardType::kBoxed:
      return "BOXED";
    case RewardType::kRegex:
      return "REGEX";
  }
  return std::nullopt;
}

std::optional<RewardType> ParseRewardType(absl::string_view name) {
  for (RewardType type : {RewardType::kDefault, RewardType::kExact, RewardType::kNumeric,
                          RewardType::kBoxed, RewardType::kRegex}) {
    if (RewardTypeName(type) == name) return type;
  }
  return std::nullopt;
}

// ---- Times: microseconds since the epoch, NULL for InfinitePast (unset).

absl::StatusOr<std::optional<int64_t>> TimeToMicros(absl::Time time, absl::string_view field) {
  if (time == absl::InfinitePast()) return std::nullopt;
  if (time == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError(
        absl::StrCat("job store: ", field, " is the infinite future"));
  }
  return absl::ToUnixMicros(time);  // Rounds down, as the vector store does.
}

// ---- JSON of the spec and the metrics.

// JSON has no NaN or infinities, and a loss can well be NaN; they are written as
// strings, as protobuf's JSON mapping does. Finite values are written in the shortest
// form that parses back to the same double (nlohmann's to_chars), -0.0 included.
json DoubleToJson(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  return value;
}

// Reads the fields of one JSON object. The first error is kept and later reads return
// defaults, so decoding reads like the struct it fills and checks once at the end.
class JsonReader {
 public:
  JsonReader(const json* object, std::string where, absl::Status* status)
      : object_(object), where_(std::move(where)), status_(status) {
    if (status_->ok() && (object_ == nullptr || !object_->is_object())) {
      *status_ = JobCorruptRow(absl::StrCat(where_, " is not a JSON object"));
    }
  }

  JsonReader Object(const char* key) {
    return JsonReader(Find(key, /*optional=*/false), absl::StrCat(where_, ".", key), status_);
  }

  std::string String(const char* key) {
    const json* value = Find(key, /*optional=*/false);
    if (value == nullptr) return {};
    if (!value->is_string()) return Fail<std::string>(key, "is not a string");
    return value->get<std::string>();
  }

  bool Bool(const char* key) {
    const json* value = Find(key, /*optional=*/false);
    if (value == nullptr) return false;
    if (!value->is_boolean()) return Fail<bool>(key, "is not a boolean");
    return value->get<bool>();
  }

  int32_t Int32(const char* key) { return Int32Of(Find(key, /*optional=*/false), key); }

  double Double(const char* key) { return DoubleOf(Find(key, /*optional=*/false), key); }

  std::optional<double> OptionalDouble(const char* key) {
    const json* value = Find(key, /*optional=*/true);
    if (value == nullptr) return std::nullopt;
    return DoubleOf(value, key);
  }

  std::optional<uint64_t> OptionalUint64(const char* key) {
    const json* value = Find(key, /*optional=*/true);
    if (value == nullptr) return std::nullopt;
    if (!value->is_number_unsigned()) {
      return Fail<std::optional<uint64_t>>(key, "is not an unsigned integer");
    }
    return value->get<uint64_t>();
  }

  std::vector<int32_t> Int32List(const char* key) {
    const json* value = Find(key, /*optional=*/false);
    if (value == nullptr) return {};
    if (!value->is_array()) return Fail<std::vector<int32_t>>(key, "is not an array");
    std::vector<int32_t> list;
    for (const json& item : *value) list.push_back(Int32Of(&item, key));
    return list;
  }

  // Reads an enum stored by name with `parse`.
  template <typename Enum, typename Parse>
  Enum Enumerator(const char* key, Parse parse) {
    const std::string name = String(key);
    if (!status_->ok()) return Enum{};
    const std::optional<Enum> value = parse(name);
    if (!value.has_value())
      return Fail<Enum>(key, absl::StrCat("has unknown value \"", name, "\""));
    return *value;
  }

 private:
  // The value of `key`; nullptr when absent (an error unless optional) or after an
  // error. JSON null counts as absent.
  const json* Find(const char* key, bool optional) {
    if (!status_->ok()) return nullptr;
    const auto it = object_->find(key);
    if (it == object_->end() || it->is_null()) {
      if (!optional) Fail<int>(key, "is missing");
      return nullptr;
    }
    return &*it;
  }

  int32_t Int32Of(const json* value, const char* key) {
    if (value == nullptr || !status_->ok()) return 0;
    if (!value->is_number_integer()) return Fail<int32_t>(key, "is not an integer");
    if (value->is_number_unsigned() &&
        value->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
      return Fail<int32_t>(key, "is out of range");
    }
    const int64_t number = value->get<int64_t>();
    if (number < std::numeric_limits<int32_t>::min() ||
        number > std::numeric_limits<int32_t>::max()) {
      return Fail<int32_t>(key, "is out of range");
    }
    return static_cast<int32_t>(number);
  }

  double DoubleOf(const json* value, const char* key) {
    if (value == nullptr || !status_->ok()) return 0.0;
    if (value->is_number()) return value->get<double>();
    if (value->is_string()) {
      const std::string& text = value->get_ref<const std::string&>();
      if (text == "NaN") return std::numeric_limits<double>::quiet_NaN();
      if (text == "Infinity") return std::numeric_limits<double>::infinity();
      if (text == "-Infinity") return -std::numeric_limits<double>::infinity();
    }
    return Fail<double>(key, "is not a number");
  }

  template <typename T>
  T Fail(const char* key, absl::string_view problem) {
    if (status_->ok()) *status_ = JobCorruptRow(absl::StrCat(where_, ".", key, " ", problem));
    return T{};
  }

  const json* const object_;
  const std::string where_;
  absl::Status* const status_;
};

// Dumps `value`, refusing (rather than replacing) invalid UTF-8, since the store must
// give back exactly what it was given.
absl::StatusOr<std::string> DumpJson(const json& value, absl::string_view what) {
  try {
    return value.dump(/*indent=*/-1, /*indent_char=*/' ', /*ensure_ascii=*/false,
                      json::error_handler_t::strict);
  } catch (const json::exception&) {
    return absl::InvalidArgumentError(absl::StrCat("job store: ", what, " is not valid UTF-8"));
  }
}

absl::StatusOr<json> ParseJson(const std::string& text, absl::string_view what) {
  json value = json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return JobCorruptRow(absl::StrCat(what, " is not valid JSON"));
  return value;
}

absl::StatusOr<std::string> EncodeSpec(const JobSpec& spec) {
  const std::optional<absl::string_view> algorithm = AlgorithmName(spec.algorithm);
  if (!algorithm.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("job store: unknown algorithm ", static_cast<int>(spec.algorithm)));
  }
  const std::optional<absl::string_view> reward_type = RewardTypeName(spec.reward.type);
  if (!reward_type.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("job store: unknown reward type ", static_cast<int>(spec.reward.type)));
  }
  json reward = {
      {"type", std::string(*reward_type)},
      {"pattern", spec.reward.pattern},
      {"format_reward", DoubleToJson(spec.reward.format_reward)},
  };
  // Optional fields are absent when unset.
  if (spec.reward.correct_reward.has_value()) {
    reward["correct_reward"] = DoubleToJson(*spec.reward.correct_reward);
  }
  if (spec.reward.incorrect_reward.has_value()) {
    reward["incorrect_reward"] = DoubleToJson(*spec.reward.incorrect_reward);
  }
  const JobHyperparameters& h = spec.hyperparameters;
  json hyperparameters = {
      {"steps", h.steps},
      {"prompts_per_step", h.prompts_per_step},
      {"rollouts_per_prompt", h.rollouts_per_prompt},
      {"learning_rate", DoubleToJson(h.learning_rate)},
      {"max_new_tokens", h.max_new_tokens},
      {"layers", h.layers},
      {"eval_every", h.eval_every},
      {"clip_epsilon", DoubleToJson(h.clip_epsilon)},
      {"inner_epochs", h.inner_epochs},
  };
  if (h.temperature.has_value()) hyperparameters["temperature"] = DoubleToJson(*h.temperature);
  // A uint64 JSON number: nlohmann keeps all 64 bits (no detour through double).
  if (h.seed.has_value()) hyperparameters["seed"] = *h.seed;
  const json encoded = {
      {"model", spec.model},
      {"output_vector", spec.output_vector},
      {"task", spec.task},
      {"eval",
       {{"enabled", spec.eval.enabled},
        {"split", spec.eval.split},
        {"max_examples", spec.eval.max_examples}}},
      {"reward", std::move(reward)},
      {"algorithm", std::string(*algorithm)},
      {"hyperparameters", std::move(hyperparameters)},
      {"apply_chat_template", spec.apply_chat_template},
      {"description", spec.description},
  };
  return DumpJson(encoded, "the spec");
}

absl::StatusOr<JobSpec> DecodeSpec(const std::string& text, const std::string& id) {
  const std::string where = absl::StrCat("job \"", id, "\" spec");
  ASSIGN_OR_RETURN(const json parsed, ParseJson(text, where));
  absl::Status status;
  JsonReader reader(&parsed, where, &status);
  JobSpec spec;
  spec.model = reader.String("model");
  spec.output_vector = reader.String("output_vector");
  spec.task = reader.String("task");
  JsonReader eval = reader.Object("eval");
  spec.eval.enabled = eval.Bool("enabled");
  spec.eval.split = eval.String("split");
  spec.eval.max_examples = eval.Int32("max_examples");
  JsonReader reward = reader.Object("reward");
  spec.reward.type = reward.Enumerator<RewardType>("type", ParseRewardType);
  spec.reward.pattern = reward.String("pattern");
  spec.reward.correct_reward = reward.OptionalDouble("correct_reward");
  spec.reward.incorrect_reward = reward.OptionalDouble("incorrect_reward");
  spec.reward.format_reward = reward.Double("format_reward");
  spec.algorithm = reader.Enumerator<JobAlgorithm>("algorithm", ParseAlgorithm);
  JsonReader h = reader.Object("hyperparameters");
  JobHyperparameters& hp = spec.hyperparameters;
  hp.steps = h.Int32("steps");
  hp.prompts_per_step = h.Int32("prompts_per_step");
  hp.rollouts_per_prompt = h.Int32("rollouts_per_prompt");
  hp.learning_rate = h.Double("learning_rate");
  hp.max_new_tokens = h.Int32("max_new_tokens");
  hp.temperature = h.OptionalDouble("temperature");
  hp.seed = h.OptionalUint64("seed");
  hp.layers = h.Int32List("layers");
  hp.eval_every = h.Int32("eval_every");
  hp.clip_epsilon = h.Double("clip_epsilon");
  hp.inner_epochs = h.Int32("inner_epochs");
  spec.apply_chat_template = reader.Bool("apply_chat_template");
  spec.description = reader.String("description");
  RETURN_IF_ERROR(status);
  return spec;
}

absl::StatusOr<std::optional<std::string>> EncodeMetrics(const std::optional<JobMetrics>& metrics) {
  if (!metrics.has_value()) return std::nullopt;
  json encoded = {
      {"step", metrics->step},
      {"reward_mean", DoubleToJson(metrics->reward_mean)},
      {"accuracy", DoubleToJson(metrics->accuracy)},
      {"loss", DoubleToJson(metrics->loss)},
      {"tokens_per_second", DoubleToJson(metrics->tokens_per_second)},
      {"eta_seconds", DoubleToJson(metrics->eta_seconds)},
  };
  if (metrics->eval_accuracy.has_value()) {
    encoded["eval_accuracy"] = DoubleToJson(*metrics->eval_accuracy);
  }
  return DumpJson(encoded, "the metrics");
}

// Column `column` of the current row: NULL is no metrics.

}  // namespace

absl::Status JobCorruptRow(absl::string_view what) {
  return absl::InternalError(absl::StrCat("job store: corrupt row: ", what));
}

absl::Status JobNotFound(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("job \"", id, "\" not found"));
}

absl::Status JobAlreadyExists(const std::string& id) {
  return absl::AlreadyExistsError(absl::StrCat("job \"", id, "\" already exists"));
}

absl::Status CheckJobId(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("job store: empty job id");
  return absl::OkStatus();
}

absl::Status CheckJobTenantAndId(const std::string& tenant, const std::string& id) {
  if (tenant.empty()) return absl::InvalidArgumentError("job store: empty tenant");
  return CheckJobId(id);
}

absl::Status CheckNewJob(const JobRecord& job) {
  RETURN_IF_ERROR(CheckJobTenantAndId(job.tenant, job.id));
  if (job.state != JobState::kQueued) {
    return absl::InvalidArgumentError(absl::StrCat("job store: job \"", job.id,
                                                   "\" must be created QUEUED, not state ",
                                                   static_cast<int>(job.state)));
  }
  if (job.create_time == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError("job store: create_time is the infinite future");
  }
  return absl::OkStatus();
}

absl::Status CheckJobListQuery(const JobListQuery& query) {
  if (query.tenant.empty()) return absl::InvalidArgumentError("job store: empty tenant");
  if (query.limit < 0) {
    return absl::InvalidArgumentError(absl::StrCat("job store: negative list limit ", query.limit));
  }
  if (query.state.has_value() && !StateName(*query.state).has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("job store: unknown job state ", static_cast<int>(*query.state)));
  }
  return absl::OkStatus();
}

absl::Status QueuedJobsLimitError(int64_t max_active_jobs, int64_t active) {
  return LimitError(absl::StatusCode::kResourceExhausted,
                    absl::StrCat("queued_jobs limit of ", max_active_jobs, " reached (", active,
                                 " jobs queued or running); wait for one to finish or cancel one"),
                    "queued_jobs", absl::StrCat(max_active_jobs), active);
}

absl::Status LeaseLostError(const std::string& id, int64_t epoch) {
  return WithReason(
      absl::FailedPreconditionError(absl::StrCat(
          "job \"", id, "\": this replica's lease (epoch ", epoch,
          ") is no longer the job's: another replica took the job over, or it ended")),
      "LEASE_LOST", {{"job_id", id}});
}

absl::Status JobCancelledError(const std::string& id) {
  return WithReason(absl::FailedPreconditionError(absl::StrCat(
                        "job \"", id, "\" was cancelled; its vector is not published")),
                    "JOB_CANCELLED", {{"job_id", id}});
}

std::string AttemptsExhaustedError(int32_t attempts) {
  return EncodeStatus(WithReason(
      absl::UnavailableError(absl::StrCat(
          "the job was started ", attempts,
          " times and each time its replica stopped without finishing it (it died, hung or "
          "lost the database past its lease); giving up after --job-max-attempts ",
          attempts)),
      "ATTEMPTS_EXHAUSTED", {{"attempts", absl::StrCat(attempts)}}));
}

std::string LeaseInterval(absl::Duration ttl) {
  return absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(ttl)), " milliseconds");
}

std::optional<absl::string_view> JobStateStoreName(JobState state) { return StateName(state); }

absl::StatusOr<std::optional<std::string>> EncodeJobMetrics(
    const std::optional<JobMetrics>& metrics) {
  return EncodeMetrics(metrics);
}

absl::StatusOr<std::optional<JobMetrics>> DecodeJobMetrics(const std::optional<std::string>& text,
                                                            const std::string& where) {
  if (!text.has_value()) return std::nullopt;
  ASSIGN_OR_RETURN(const json parsed, ParseJson(*text, where));
  absl::Status status;
  JsonReader reader(&parsed, where, &status);
  JobMetrics metrics;
  metrics.step = reader.Int32("step");
  metrics.reward_mean = reader.Double("reward_mean");
  metrics.accuracy = reader.Double("accuracy");
  metrics.loss = reader.Double("loss");
  metrics.tokens_per_second = reader.Double("tokens_per_second");
  metrics.eta_seconds = reader.Double("eta_seconds");
  metrics.eval_accuracy = reader.OptionalDouble("eval_accuracy");
  RETURN_IF_ERROR(status);
  return metrics;
}

absl::StatusOr<JobProgressColumns> EncodeJobProgress(const JobRecord& job) {
  JobProgressColumns encoded;
  const std::optional<absl::string_view> state = StateName(job.state);
  if (!state.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("job store: unknown job state ", static_cast<int>(job.state)));
  }
  encoded.state = std::string(*state);
  encoded.step = job.step;
  ASSIGN_OR_RETURN(encoded.metrics, EncodeMetrics(job.metrics));
  encoded.error = EncodeStatus(job.error);
  encoded.vector_version = job.vector_version;
  ASSIGN_OR_RETURN(encoded.start_time_us, TimeToMicros(job.start_time, "start_time"));
  ASSIGN_OR_RETURN(encoded.end_time_us, TimeToMicros(job.end_time, "end_time"));
  return encoded;
}

absl::StatusOr<JobColumns> EncodeJob(const JobRecord& job, absl::Time create_time) {
  JobColumns columns;
  columns.id = job.id;
  columns.tenant = job.tenant;
  ASSIGN_OR_RETURN(const std::optional<int64_t> create_time_us,
                   TimeToMicros(create_time, "create_time"));
  if (!create_time_us.has_value()) {
    return absl::InvalidArgumentError("job store: create_time is the infinite past");
  }
  columns.create_time_us = *create_time_us;
  ASSIGN_OR_RETURN(columns.progress, EncodeJobProgress(job));
  ASSIGN_OR_RETURN(columns.spec, EncodeSpec(job.spec));
  return columns;
}

absl::StatusOr<JobRecord> DecodeJob(const JobColumns& columns) {
  const JobProgressColumns& progress = columns.progress;
  JobRecord job;
  job.id = columns.id;
  job.tenant = columns.tenant;
  job.create_time = absl::FromUnixMicros(columns.create_time_us);
  const std::optional<JobState> state = ParseState(progress.state);
  if (!state.has_value()) {
    return JobCorruptRow(
        absl::StrCat("job \"", job.id, "\" has unknown state \"", progress.state, "\""));
  }
  job.state = *state;
  if (progress.step < std::numeric_limits<int32_t>::min() ||
      progress.step > std::numeric_limits<int32_t>::max()) {
    return JobCorruptRow(absl::StrCat("job \"", job.id, "\" has step ", progress.step));
  }
  job.step = static_cast<int32_t>(progress.step);
  ASSIGN_OR_RETURN(job.metrics,
                   DecodeJobMetrics(progress.metrics,
                                    absl::StrCat("job \"", job.id, "\" metrics")));
  job.error = DecodeStatus(progress.error);
  job.vector_version = progress.vector_version;
  auto time = [](const std::optional<int64_t>& micros) {
    return micros.has_value() ? absl::FromUnixMicros(*micros) : absl::InfinitePast();
  };
  job.start_time = time(progress.start_time_us);
  job.end_time = time(progress.end_time_us);
  ASSIGN_OR_RETURN(job.spec, DecodeSpec(columns.spec, job.id));
  job.replica = columns.lease_owner.value_or("");
  return job;
}

}  // namespace steerd
