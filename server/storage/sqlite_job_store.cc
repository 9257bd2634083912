#include "server/storage/sqlite_job_store.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using json = nlohmann::json;
using sqlite::Statement;
using sqlite::Transaction;

// One migration per schema version: kMigrations[v - 1] takes the job tables from
// version v - 1 to v. The "jobs" row of the shared schema_version table holds v.
constexpr absl::string_view kComponent = "jobs";
constexpr const char* kMigrations[] = {
    // Version 1.
    // jobs: one row per job, never deleted. The columns are what the store queries by
    //   or updates; the spec, which never changes and is only ever read whole, is JSON
    //   (EncodeSpec), and so are the latest metrics (NULL: none yet). Times are
    //   microseconds since the Unix epoch; NULL start/end time: not started/ended.
    //   jobs_listing is List()'s order within a tenant; jobs_unfinished holds only the
    //   QUEUED and RUNNING jobs, for the active-jobs limit and ListUnfinished().
    // job_examples: the datasets, one row per example, apart so that listing jobs never
    //   reads them; `position` keeps each dataset's order.
    // job_checkpoints: at most one (the latest) per job.
    R"sql(
      CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        create_time_us INTEGER NOT NULL,
        state TEXT NOT NULL
          CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
        step INTEGER NOT NULL,
        metrics TEXT,
        error TEXT NOT NULL,
        vector_version INTEGER NOT NULL,
        start_time_us INTEGER,
        end_time_us INTEGER,
        spec TEXT NOT NULL
      );
      CREATE INDEX jobs_listing ON jobs (tenant, create_time_us DESC, id DESC);
      CREATE INDEX jobs_unfinished ON jobs (tenant, create_time_us, id)
        WHERE state IN ('QUEUED', 'RUNNING');
      CREATE TABLE job_examples (
        job_id TEXT NOT NULL REFERENCES jobs (id),
        dataset TEXT NOT NULL CHECK (dataset IN ('train', 'eval')),
        position INTEGER NOT NULL,
        prompt TEXT NOT NULL,
        answer TEXT NOT NULL,
        solution TEXT NOT NULL,
        PRIMARY KEY (job_id, dataset, position)
      );
      CREATE TABLE job_checkpoints (
        job_id TEXT PRIMARY KEY REFERENCES jobs (id),
        step INTEGER NOT NULL,
        metrics TEXT,
        bytes BLOB NOT NULL
      );
    )sql",
};
static_assert(sizeof(kMigrations) / sizeof(kMigrations[0]) == SqliteJobStore::kSchemaVersion,
              "one migration per schema version");

// Spelled exactly as in jobs_unfinished's WHERE clause: SQLite uses a partial index
// only for a query whose WHERE clause contains the index's condition term for term.
constexpr absl::string_view kUnfinished = "state IN ('QUEUED', 'RUNNING')";

// The jobs columns, in the order ReadJob() expects.
constexpr absl::string_view kColumns =
    "id, tenant, create_time_us, state, step, metrics, error, vector_version, "
    "start_time_us, end_time_us, spec";

absl::Status CorruptRow(absl::string_view what) {
  return absl::InternalError(absl::StrCat("job store: corrupt row: ", what));
}

absl::Status NotFound(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("job \"", id, "\" not found"));
}

absl::Status CheckId(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("job store: empty job id");
  return absl::OkStatus();
}

absl::Status CheckTenantAndId(const std::string& tenant, const std::string& id) {
  if (tenant.empty()) return absl::InvalidArgumentError("job store: empty tenant");
  return CheckId(id);
}

// ---- Enums, stored by name so that the database reads without this source.

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

absl::Time TimeFromColumn(const Statement& stmt, int column) {
  return stmt.IsNull(column) ? absl::InfinitePast() : absl::FromUnixMicros(stmt.Int(column));
}

absl::Status BindTime(Statement& stmt, int index, std::optional<int64_t> micros) {
  return micros.has_value() ? stmt.BindInt(index, *micros) : stmt.BindNull(index);
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
      *status_ = CorruptRow(absl::StrCat(where_, " is not a JSON object"));
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
    if (status_->ok()) *status_ = CorruptRow(absl::StrCat(where_, ".", key, " ", problem));
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
  if (value.is_discarded()) return CorruptRow(absl::StrCat(what, " is not valid JSON"));
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
absl::StatusOr<std::optional<JobMetrics>> DecodeMetrics(const Statement& stmt, int column,
                                                        const std::string& where) {
  if (stmt.IsNull(column)) return std::nullopt;
  ASSIGN_OR_RETURN(const json parsed, ParseJson(stmt.Text(column), where));
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

absl::Status BindOptionalText(Statement& stmt, int index, const std::optional<std::string>& text) {
  return text.has_value() ? stmt.BindText(index, *text) : stmt.BindNull(index);
}

// Reads kColumns from the current row of `stmt`, starting at column 0.
absl::StatusOr<JobRecord> ReadJob(const Statement& stmt) {
  JobRecord job;
  job.id = stmt.Text(0);
  job.tenant = stmt.Text(1);
  job.create_time = absl::FromUnixMicros(stmt.Int(2));
  const std::string state = stmt.Text(3);
  const std::optional<JobState> parsed_state = ParseState(state);
  if (!parsed_state.has_value()) {
    return CorruptRow(absl::StrCat("job \"", job.id, "\" has unknown state \"", state, "\""));
  }
  job.state = *parsed_state;
  const int64_t step = stmt.Int(4);
  if (step < std::numeric_limits<int32_t>::min() || step > std::numeric_limits<int32_t>::max()) {
    return CorruptRow(absl::StrCat("job \"", job.id, "\" has step ", step));
  }
  job.step = static_cast<int32_t>(step);
  ASSIGN_OR_RETURN(job.metrics,
                   DecodeMetrics(stmt, 5, absl::StrCat("job \"", job.id, "\" metrics")));
  job.error = DecodeStatus(stmt.Text(6));
  job.vector_version = stmt.Int(7);
  job.start_time = TimeFromColumn(stmt, 8);
  job.end_time = TimeFromColumn(stmt, 9);
  ASSIGN_OR_RETURN(job.spec, DecodeSpec(stmt.Text(10), job.id));
  return job;
}

// The mutable part of a job, encoded for binding; shared by Create() and Update().
struct EncodedProgress {
  absl::string_view state;
  std::optional<std::string> metrics;
  std::optional<int64_t> start_time_us;
  std::optional<int64_t> end_time_us;
};

absl::StatusOr<EncodedProgress> EncodeProgress(const JobRecord& job) {
  EncodedProgress encoded;
  const std::optional<absl::string_view> state = StateName(job.state);
  if (!state.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("job store: unknown job state ", static_cast<int>(job.state)));
  }
  encoded.state = *state;
  ASSIGN_OR_RETURN(encoded.metrics, EncodeMetrics(job.metrics));
  ASSIGN_OR_RETURN(encoded.start_time_us, TimeToMicros(job.start_time, "start_time"));
  ASSIGN_OR_RETURN(encoded.end_time_us, TimeToMicros(job.end_time, "end_time"));
  return encoded;
}

// Whether job `id` exists (in any tenant).
absl::StatusOr<bool> JobExists(sqlite::Database& db, const std::string& id) {
  Statement select(db, "looking a job up");
  RETURN_IF_ERROR(select.Prepare("SELECT 1 FROM jobs WHERE id = ?1"));
  RETURN_IF_ERROR(select.BindText(1, id));
  return select.Step();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Create(const Options& options) {
  sqlite::Database::Options open;
  open.path = options.path;
  open.busy_timeout = options.busy_timeout;
  open.label = "job store";
  open.component = std::string(kComponent);
  open.migrations = kMigrations;
  ASSIGN_OR_RETURN(std::unique_ptr<sqlite::Database> db, sqlite::Database::Open(open));
  Options resolved = options;
  if (!resolved.clock) resolved.clock = [] { return absl::Now(); };
  return absl::WrapUnique(new SqliteJobStore(std::move(resolved), std::move(db)));
}

SqliteJobStore::~SqliteJobStore() = default;

absl::Status SqliteJobStore::Create(const JobRecord& job, const JobDatasets& datasets,
                                    int64_t max_active_jobs) {
  RETURN_IF_ERROR(CheckTenantAndId(job.tenant, job.id));
  if (job.state != JobState::kQueued) {
    return absl::InvalidArgumentError(absl::StrCat("job store: job \"", job.id,
                                                   "\" must be created QUEUED, not state ",
                                                   static_cast<int>(job.state)));
  }
  if (job.create_time == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError("job store: create_time is the infinite future");
  }
  ASSIGN_OR_RETURN(const std::string spec, EncodeSpec(job.spec));
  ASSIGN_OR_RETURN(const EncodedProgress progress, EncodeProgress(job));

  absl::MutexLock lock(&mu_);
  const absl::Time create_time =
      job.create_time == absl::InfinitePast() ? options_.clock() : job.create_time;
  Transaction txn(*db_);
  RETURN_IF_ERROR(txn.BeginImmediate());
  ASSIGN_OR_RETURN(const bool exists, JobExists(*db_, job.id));
  if (exists) {
    return absl::AlreadyExistsError(absl::StrCat("job \"", job.id, "\" already exists"));
  }
  if (max_active_jobs >= 0) {
    Statement count(*db_, "counting active jobs");
    RETURN_IF_ERROR(count.Prepare(
        absl::StrCat("SELECT COUNT(*) FROM jobs WHERE tenant = ?1 AND ", kUnfinished)));
    RETURN_IF_ERROR(count.BindText(1, job.tenant));
    RETURN_IF_ERROR(count.Step().status());
    const int64_t active = count.Int(0);
    if (active >= max_active_jobs) {
      return LimitError(
          absl::StatusCode::kResourceExhausted,
          absl::StrCat("queued_jobs limit of ", max_active_jobs, " reached (", active,
                       " jobs queued or running); wait for one to finish or cancel one"),
          "queued_jobs", absl::StrCat(max_active_jobs), active);
    }
  }
  {
    // Bound without a copy (SQLITE_STATIC): it must outlive the statement.
    const std::string error = EncodeStatus(job.error);
    Statement insert(*db_, "inserting the job");
    RETURN_IF_ERROR(
        insert.Prepare("INSERT INTO jobs (id, tenant, create_time_us, state, step, metrics, error, "
                       "vector_version, start_time_us, end_time_us, spec) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"));
    RETURN_IF_ERROR(insert.BindText(1, job.id));
    RETURN_IF_ERROR(insert.BindText(2, job.tenant));
    RETURN_IF_ERROR(insert.BindInt(3, absl::ToUnixMicros(create_time)));
    RETURN_IF_ERROR(insert.BindText(4, progress.state));
    RETURN_IF_ERROR(insert.BindInt(5, job.step));
    RETURN_IF_ERROR(BindOptionalText(insert, 6, progress.metrics));
    RETURN_IF_ERROR(insert.BindText(7, error));
    RETURN_IF_ERROR(insert.BindInt(8, job.vector_version));
    RETURN_IF_ERROR(BindTime(insert, 9, progress.start_time_us));
    RETURN_IF_ERROR(BindTime(insert, 10, progress.end_time_us));
    RETURN_IF_ERROR(insert.BindText(11, spec));
    RETURN_IF_ERROR(insert.Run());
  }
  {
    // Prepared once for all examples: a dataset may hold 100,000 of them.
    Statement insert(*db_, "inserting the job's examples");
    RETURN_IF_ERROR(insert.Prepare(
        "INSERT INTO job_examples (job_id, dataset, position, prompt, answer, solution) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
    auto insert_all = [&](absl::string_view dataset,
                          const std::vector<train::Example>& examples) -> absl::Status {
      for (size_t i = 0; i < examples.size(); ++i) {
        RETURN_IF_ERROR(insert.Reset());
        RETURN_IF_ERROR(insert.BindText(1, job.id));
        RETURN_IF_ERROR(insert.BindText(2, dataset));
        RETURN_IF_ERROR(insert.BindInt(3, static_cast<int64_t>(i)));
        RETURN_IF_ERROR(insert.BindText(4, examples[i].prompt));
        RETURN_IF_ERROR(insert.BindText(5, examples[i].answer));
        RETURN_IF_ERROR(insert.BindText(6, examples[i].solution));
        RETURN_IF_ERROR(insert.Run());
      }
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(insert_all("train", datasets.train));
    RETURN_IF_ERROR(insert_all("eval", datasets.eval));
  }
  return txn.Commit();
}

absl::StatusOr<JobRecord> SqliteJobStore::Get(const std::string& tenant, const std::string& id) {
  RETURN_IF_ERROR(CheckTenantAndId(tenant, id));
  absl::MutexLock lock(&mu_);
  Statement select(*db_, "reading a job");
  RETURN_IF_ERROR(select.Prepare(
      absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = ?1 AND tenant = ?2")));
  RETURN_IF_ERROR(select.BindText(1, id));
  RETURN_IF_ERROR(select.BindText(2, tenant));
  ASSIGN_OR_RETURN(const bool row, select.Step());
  if (!row) return NotFound(id);
  return ReadJob(select);
}

absl::StatusOr<JobPage> SqliteJobStore::List(const JobListQuery& query) {
  if (query.tenant.empty()) return absl::InvalidArgumentError("job store: empty tenant");
  if (query.limit < 0) {
    return absl::InvalidArgumentError(absl::StrCat("job store: negative list limit ", query.limit));
  }
  std::optional<absl::string_view> state;
  if (query.state.has_value()) {
    state = StateName(*query.state);
    if (!state.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("job store: unknown job state ", static_cast<int>(*query.state)));
    }
  }
  // The SQL text only varies by which fixed fragments are present; every value is a
  // bound parameter. Ids compare bytewise (SQLite's BINARY collation).
  std::string sql = absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE tenant = ?1");
  if (state.has_value()) absl::StrAppend(&sql, " AND state = ?2");
  if (!query.after_id.empty()) {
    // "Strictly after (create_time, id)" in (create_time DESC, id DESC) order; the first
    // conjunct lets the index seek.
    absl::StrAppend(&sql,
                    " AND create_time_us <= ?3"
                    " AND (create_time_us < ?3 OR id < ?4)");
  }
  absl::StrAppend(&sql, " ORDER BY create_time_us DESC, id DESC LIMIT ?5");

  absl::MutexLock lock(&mu_);
  int64_t after_time_us = 0;
  if (!query.after_id.empty()) {
    // The cursor is a job of the tenant's, even if it no longer matches the filter
    // (its state changed since the previous page): its position is what counts.
    Statement cursor(*db_, "reading the list cursor");
    RETURN_IF_ERROR(
        cursor.Prepare("SELECT create_time_us FROM jobs WHERE id = ?1 AND tenant = ?2"));
    RETURN_IF_ERROR(cursor.BindText(1, query.after_id));
    RETURN_IF_ERROR(cursor.BindText(2, query.tenant));
    ASSIGN_OR_RETURN(const bool row, cursor.Step());
    if (!row) {
      return absl::InvalidArgumentError(
          absl::StrCat("job store: after_id \"", query.after_id, "\" is not a job of the tenant"));
    }
    after_time_us = cursor.Int(0);
  }
  Statement select(*db_, "listing jobs");
  RETURN_IF_ERROR(select.Prepare(sql));
  RETURN_IF_ERROR(select.BindText(1, query.tenant));
  if (state.has_value()) RETURN_IF_ERROR(select.BindText(2, *state));
  if (!query.after_id.empty()) {
    RETURN_IF_ERROR(select.BindInt(3, after_time_us));
    RETURN_IF_ERROR(select.BindText(4, query.after_id));
  }
  // One row past the page tells whether more follow.
  const int64_t limit = std::min(query.limit, std::numeric_limits<int64_t>::max() - 1);
  RETURN_IF_ERROR(select.BindInt(5, limit + 1));
  JobPage page;
  while (true) {
    ASSIGN_OR_RETURN(const bool row, select.Step());
    if (!row) break;
    if (static_cast<int64_t>(page.jobs.size()) == limit) {
      page.more = true;
      break;
    }
    ASSIGN_OR_RETURN(JobRecord job, ReadJob(select));
    page.jobs.push_back(std::move(job));
  }
  return page;
}

absl::Status SqliteJobStore::Update(const JobRecord& job) {
  RETURN_IF_ERROR(CheckTenantAndId(job.tenant, job.id));
  ASSIGN_OR_RETURN(const EncodedProgress progress, EncodeProgress(job));
  absl::MutexLock lock(&mu_);
  // One statement: atomic, and durable when it returns (autocommit, synchronous=FULL).
  // Bound without a copy (SQLITE_STATIC): it must outlive the statement.
  const std::string error = EncodeStatus(job.error);
  Statement update(*db_, "updating a job");
  RETURN_IF_ERROR(update.Prepare(
      "UPDATE jobs SET state = ?3, step = ?4, metrics = ?5, error = ?6, vector_version = ?7, "
      "start_time_us = ?8, end_time_us = ?9 WHERE id = ?1 AND tenant = ?2"));
  RETURN_IF_ERROR(update.BindText(1, job.id));
  RETURN_IF_ERROR(update.BindText(2, job.tenant));
  RETURN_IF_ERROR(update.BindText(3, progress.state));
  RETURN_IF_ERROR(update.BindInt(4, job.step));
  RETURN_IF_ERROR(BindOptionalText(update, 5, progress.metrics));
  RETURN_IF_ERROR(update.BindText(6, error));
  RETURN_IF_ERROR(update.BindInt(7, job.vector_version));
  RETURN_IF_ERROR(BindTime(update, 8, progress.start_time_us));
  RETURN_IF_ERROR(BindTime(update, 9, progress.end_time_us));
  RETURN_IF_ERROR(update.Run());
  if (db_->Changes() == 0) return NotFound(job.id);
  return absl::OkStatus();
}

absl::StatusOr<JobDatasets> SqliteJobStore::ReadDatasets(const std::string& id) {
  RETURN_IF_ERROR(CheckId(id));
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const bool exists, JobExists(*db_, id));
  if (!exists) return NotFound(id);
  Statement select(*db_, "reading a job's examples");
  RETURN_IF_ERROR(
      select.Prepare("SELECT dataset, prompt, answer, solution FROM job_examples "
                     "WHERE job_id = ?1 ORDER BY dataset, position"));
  RETURN_IF_ERROR(select.BindText(1, id));
  JobDatasets datasets;
  while (true) {
    ASSIGN_OR_RETURN(const bool row, select.Step());
    if (!row) break;
    const std::string dataset = select.Text(0);
    std::vector<train::Example>* examples = nullptr;
    if (dataset == "train") {
      examples = &datasets.train;
    } else if (dataset == "eval") {
      examples = &datasets.eval;
    } else {
      return CorruptRow(
          absl::StrCat("job \"", id, "\" has an example of dataset \"", dataset, "\""));
    }
    examples->push_back({select.Text(1), select.Text(2), select.Text(3)});
  }
  return datasets;
}

absl::Status SqliteJobStore::SaveCheckpoint(const std::string& id,
                                            const JobCheckpoint& checkpoint) {
  RETURN_IF_ERROR(CheckId(id));
  ASSIGN_OR_RETURN(const std::optional<std::string> metrics, EncodeMetrics(checkpoint.metrics));
  absl::MutexLock lock(&mu_);
  Transaction txn(*db_);
  RETURN_IF_ERROR(txn.BeginImmediate());
  ASSIGN_OR_RETURN(const bool exists, JobExists(*db_, id));
  if (!exists) return NotFound(id);
  Statement upsert(*db_, "saving a checkpoint");
  RETURN_IF_ERROR(upsert.Prepare(
      "INSERT INTO job_checkpoints (job_id, step, metrics, bytes) VALUES (?1, ?2, ?3, ?4) "
      "ON CONFLICT (job_id) DO UPDATE SET step = excluded.step, metrics = excluded.metrics, "
      "bytes = excluded.bytes"));
  RETURN_IF_ERROR(upsert.BindText(1, id));
  RETURN_IF_ERROR(upsert.BindInt(2, checkpoint.step));
  RETURN_IF_ERROR(BindOptionalText(upsert, 3, metrics));
  RETURN_IF_ERROR(upsert.BindBlob(4, checkpoint.bytes));
  RETURN_IF_ERROR(upsert.Run());
  return txn.Commit();
}

absl::StatusOr<std::optional<JobCheckpoint>> SqliteJobStore::LoadCheckpoint(const std::string& id) {
  RETURN_IF_ERROR(CheckId(id));
  absl::MutexLock lock(&mu_);
  Statement select(*db_, "loading a checkpoint");
  RETURN_IF_ERROR(
      select.Prepare("SELECT step, metrics, bytes FROM job_checkpoints WHERE job_id = ?1"));
  RETURN_IF_ERROR(select.BindText(1, id));
  ASSIGN_OR_RETURN(const bool row, select.Step());
  if (!row) return std::nullopt;
  JobCheckpoint checkpoint;
  const int64_t step = select.Int(0);
  if (step < std::numeric_limits<int32_t>::min() || step > std::numeric_limits<int32_t>::max()) {
    return CorruptRow(absl::StrCat("checkpoint of job \"", id, "\" has step ", step));
  }
  checkpoint.step = static_cast<int32_t>(step);
  ASSIGN_OR_RETURN(
      checkpoint.metrics,
      DecodeMetrics(select, 1, absl::StrCat("checkpoint of job \"", id, "\" metrics")));
  checkpoint.bytes = select.Blob(2);
  return checkpoint;
}

absl::Status SqliteJobStore::DeleteCheckpoint(const std::string& id) {
  RETURN_IF_ERROR(CheckId(id));
  absl::MutexLock lock(&mu_);
  Statement del(*db_, "deleting a checkpoint");
  RETURN_IF_ERROR(del.Prepare("DELETE FROM job_checkpoints WHERE job_id = ?1"));
  RETURN_IF_ERROR(del.BindText(1, id));
  return del.Run();
}

absl::StatusOr<std::vector<JobRecord>> SqliteJobStore::ListUnfinished() {
  absl::MutexLock lock(&mu_);
  Statement select(*db_, "listing unfinished jobs");
  RETURN_IF_ERROR(select.Prepare(absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE ", kUnfinished,
                                              " ORDER BY create_time_us, id")));
  std::vector<JobRecord> jobs;
  while (true) {
    ASSIGN_OR_RETURN(const bool row, select.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(JobRecord job, ReadJob(select));
    jobs.push_back(std::move(job));
  }
  return jobs;
}

absl::StatusOr<int64_t> SqliteJobStore::DeleteEndedBefore(absl::Time cutoff) {
  // Ended jobs always have an end time; the state test keeps a job that is still
  // QUEUED or RUNNING safe whatever its timestamps say.
  constexpr char kEnded[] =
      "state IN ('SUCCEEDED', 'FAILED', 'CANCELLED') AND end_time_us IS NOT NULL "
      "AND end_time_us < ?1";
  const int64_t cutoff_us = absl::ToUnixMicros(cutoff);
  absl::MutexLock lock(&mu_);
  Transaction txn(*db_);
  RETURN_IF_ERROR(txn.BeginImmediate());
  for (const char* table : {"job_examples", "job_checkpoints"}) {
    Statement del(*db_, absl::StrCat("deleting expired jobs' ", table));
    RETURN_IF_ERROR(del.Prepare(absl::StrCat("DELETE FROM ", table,
                                             " WHERE job_id IN (SELECT id FROM jobs WHERE ",
                                             kEnded, ")")));
    RETURN_IF_ERROR(del.BindInt(1, cutoff_us));
    RETURN_IF_ERROR(del.Run());
  }
  Statement del(*db_, "deleting expired jobs");
  RETURN_IF_ERROR(del.Prepare(absl::StrCat("DELETE FROM jobs WHERE ", kEnded)));
  RETURN_IF_ERROR(del.BindInt(1, cutoff_us));
  RETURN_IF_ERROR(del.Run());
  const int64_t deleted = db_->Changes();
  RETURN_IF_ERROR(txn.Commit());
  return deleted;
}

}  // namespace steerd
