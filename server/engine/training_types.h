// Plain types of training jobs, shared by the job store, the training manager and the
// gRPC layer: what a tenant asked for (JobSpec, the proto's CreateJobRequest without
// its dataset), where the job is (JobRecord) and the metrics of its steps. A JobSpec is
// stored only after NormalizeJobSpec() filled every default in, so a stored job always
// says exactly what it runs with. Torch-free.
#ifndef STEERD_SERVER_ENGINE_TRAINING_TYPES_H_
#define STEERD_SERVER_ENGINE_TRAINING_TYPES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace steerd {

// Numbered as the proto's Job.State.
enum class JobState { kQueued = 1, kRunning = 2, kSucceeded = 3, kFailed = 4, kCancelled = 5 };
// "QUEUED", "RUNNING", ...: the proto's Job.State names without their STATE_ prefix,
// as stored in the job store and used as metric labels (kept stable when the proto
// names gained the prefix); "UNKNOWN" for a value out of range.
inline const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued: return "QUEUED";
    case JobState::kRunning: return "RUNNING";
    case JobState::kSucceeded: return "SUCCEEDED";
    case JobState::kFailed: return "FAILED";
    case JobState::kCancelled: return "CANCELLED";
  }
  return "UNKNOWN";
}
inline bool IsTerminal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed ||
         state == JobState::kCancelled;
}

// Numbered as the proto's Algorithm (0, unspecified, never stored).
enum class JobAlgorithm { kRloo = 1, kGrpo = 2, kSft = 3 };

// Numbered as the proto's RewardSpec.Type; kDefault is resolved before storing.
enum class RewardType { kDefault = 0, kExact = 1, kNumeric = 2, kBoxed = 3, kRegex = 4 };

struct JobReward {
  RewardType type = RewardType::kDefault;
  std::string pattern;  // kRegex only.
  std::optional<double> correct_reward;    // Unset: 1.0.
  std::optional<double> incorrect_reward;  // Unset: -1.0.
  double format_reward = 0.0;
};

// The proto's Hyperparameters: 0 or unset means the default (see training.proto) in a
// request; after NormalizeJobSpec every field holds the value in effect.
struct JobHyperparameters {
  int32_t steps = 0;
  int32_t prompts_per_step = 0;
  int32_t rollouts_per_prompt = 0;
  double learning_rate = 0.0;
  int32_t max_new_tokens = 0;
  std::optional<double> temperature;
  std::optional<uint64_t> seed;
  std::vector<int32_t> layers;  // Empty: all layers.
  int32_t eval_every = 0;
  double clip_epsilon = 0.0;
  int32_t inner_epochs = 0;
};

// Where a job's evaluation examples come from.
struct JobEval {
  bool enabled = false;
  std::string split;         // A built-in task's split; empty for inline examples.
  int32_t max_examples = 0;  // 0: all.
};

struct JobSpec {
  std::string model;
  std::string output_vector;
  std::string task;  // Built-in task; empty when the examples came inline.
  JobEval eval;
  JobReward reward;
  JobAlgorithm algorithm = JobAlgorithm::kRloo;
  JobHyperparameters hyperparameters;
  bool apply_chat_template = false;
  std::string description;
};

// The proto's JobMetrics.
struct JobMetrics {
  int32_t step = 0;
  double reward_mean = 0.0;
  double accuracy = 0.0;
  double loss = 0.0;
  double tokens_per_second = 0.0;
  double eta_seconds = 0.0;
  std::optional<double> eval_accuracy;
};

// What the server allows every job (TrainingManager::Options::caps), whatever a
// tenant's limits: the one definition job specs are checked against.
struct JobSpecCaps {
  int64_t max_examples = 100000;       // Per dataset.
  int64_t max_steps = 100000;          // Per job.
  int64_t task_train_examples = 5000;  // Problems drawn from a built-in task's train split.
  int64_t task_eval_examples = 500;    // ... and from its evaluation split.
};

// A job as stored and as the API shows it.
struct JobRecord {
  std::string id;  // Assigned by the manager, unique on the server.
  std::string tenant;
  JobSpec spec;
  JobState state = JobState::kQueued;
  int32_t step = 0;  // Optimizer steps completed (Progress.step).
  std::optional<JobMetrics> metrics;
  absl::Status error;          // Not OK exactly when FAILED: code, message, details.
  int64_t vector_version = 0;  // Of spec.output_vector, set when SUCCEEDED.
  absl::Time create_time = absl::InfinitePast();
  absl::Time start_time = absl::InfinitePast();  // InfinitePast: not started.
  absl::Time end_time = absl::InfinitePast();    // InfinitePast: not ended.
  // The replica holding the job's lease (JobStore::ClaimJob); empty when none. Read
  // from the store; Create and Update ignore it.
  std::string replica;
  // The epoch of the lease the writer holds: when non-zero, Update is fenced by it.
  // Not a stored field of the job (the store keeps the lease's own epoch).
  int64_t lease_epoch = 0;
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_TRAINING_TYPES_H_
