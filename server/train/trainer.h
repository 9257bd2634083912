// Training over a frozen (or, for `full`, trainable) Transformer: the trainable sets of
// the paper's comparison (a steering vector `[L, d]`, LoRA adapters, every weight)
// crossed with two objectives: supervised next-token loss on demonstrations (`sft`)
// and reinforcement learning with verifiable rewards (`rl`). RL is the recipe of
// Sinii et al. (EMNLP 2025) by default: all rollouts of a step sampled in one batch
// from the current parameters, RLOO advantages (leave-one-out mean, no std), the
// token-level normalised REINFORCE loss `-(1/total generated tokens) * sum_i A_i *
// sum_t log p`, one AdamW step per rollout batch, no KL; `grpo` instead uses
// std-normalised advantages with a clipped importance ratio over several inner epochs.
// Everything a step draws (prompts, sampling seeds) is a function of (seed, step), so
// the same seed gives the same run and a run resumed from a checkpoint continues
// exactly as if it had never stopped. With `steering`, no weight has a gradient or
// optimizer state: the optimizer holds 2 * L * d floats. Not thread-safe: one trainer
// owns its model while it runs.
#ifndef STEERD_SERVER_TRAIN_TRAINER_H_
#define STEERD_SERVER_TRAIN_TRAINER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/generator.h"
#include "server/model/lora.h"
#include "server/model/safetensors.h"
#include "server/model/tokenizer.h"
#include "server/model/transformer.h"
#include "server/train/rewards.h"
#include "server/train/tasks.h"

namespace steerd::train {

enum class TrainableSet { kSteering, kLora, kFull };
enum class Objective { kRl, kSft };
enum class RlAlgorithm { kRloo, kGrpo };
enum class LrSchedule { kConstant, kCosine };

absl::StatusOr<TrainableSet> ParseTrainableSet(const std::string& name);  // steering|lora|full
absl::StatusOr<Objective> ParseObjective(const std::string& name);        // rl|sft
absl::StatusOr<RlAlgorithm> ParseRlAlgorithm(const std::string& name);    // rloo|grpo
absl::StatusOr<LrSchedule> ParseLrSchedule(const std::string& name);      // constant|cosine
const char* TrainableSetName(TrainableSet set);

struct TrainerOptions {
  TrainableSet method = TrainableSet::kSteering;
  Objective objective = Objective::kRl;
  RlAlgorithm algorithm = RlAlgorithm::kRloo;
  std::vector<int64_t> steering_layers;  // Layers whose rows train; empty = all.
  // Steering only: the learning rate is relative to each layer's residual-stream RMS
  // (measured on training prompts at start), so one default fits models whose hidden
  // states differ in scale by orders of magnitude; false = absolute, as the paper.
  bool relative_steering_lr = true;
  LoraAdapter::Options lora;             // `lora` only.

  int64_t steps = 100;
  int64_t prompts_per_step = 8;     // RL: distinct prompts per step.
  int64_t rollouts_per_prompt = 8;  // RL: samples per prompt (>= 2 for a baseline).
  int64_t batch_size = 32;          // SFT: examples per step.
  int64_t micro_batch = 32;         // Sequences per forward/backward (bounds activations).

  double learning_rate = 0.0;  // 0: DefaultLearningRate(method, objective).
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  int64_t warmup_steps = 0;                     // Linear warm-up from 0.
  LrSchedule schedule = LrSchedule::kConstant;  // After warm-up; cosine decays to 10%.
  double grad_clip = 2.0;                       // Global grad-norm clip; 0 = off.

  double temperature = 1.0;     // Rollout sampling.
  int64_t max_new_tokens = 64;  // Rollout and evaluation length.
  int64_t grpo_epochs = 2;
  double grpo_clip = 0.2;

  uint64_t seed = 0;
  RewardOptions reward;
  // Whether prompts are encoded with the tokenizer's post-processor (a BOS token, when
  // it has one), as the server encodes a raw prompt; false for text that already
  // carries its special tokens (a rendered chat template) and for the offline CLI.
  bool add_special_tokens = false;
};

// Generates a batch of requests (each with its own steering, sampling and seed) and
// returns the results in order: where a trainer's rollouts and an evaluation's
// completions come from. LocalRollouts generates in-process on the calling thread; the
// server sends them to the serving engine, into the batch with live traffic.
class RolloutBackend {
 public:
  virtual ~RolloutBackend() = default;
  virtual absl::StatusOr<std::vector<GenerationResult>> Generate(
      std::vector<GenerationRequest> requests) = 0;
};

// A Generator over the model on the calling thread.
class LocalRollouts : public RolloutBackend {
 public:
  // `model`, `tokenizer` and `lora` (may be null) must outlive this.
  LocalRollouts(const Transformer* model, const Tokenizer* tokenizer, const LoraAdapter* lora)
      : model_(model), tokenizer_(tokenizer), lora_(lora) {}
  absl::StatusOr<std::vector<GenerationResult>> Generate(
      std::vector<GenerationRequest> requests) override;

 private:
  const Transformer* model_;
  const Tokenizer* tokenizer_;
  const LoraAdapter* lora_;
};

// Per-method defaults, tuned on steerd-tiny (BENCHMARKS.md): steering 1e-2 (relative to
// the residual RMS), LoRA 1e-3, full 1e-4 for RL and 1e-3 for SFT.
double DefaultLearningRate(TrainableSet method, Objective objective);

// INVALID_ARGUMENT naming the option that is out of bounds.
absl::Status ValidateTrainerOptions(const TrainerOptions& options, const ModelConfig& config);

struct StepMetrics {
  int64_t step = 0;  // 1-based: the number of optimizer steps taken.
  double loss = 0.0;
  double reward_mean = 0.0;  // RL: mean reward of the step's rollouts.
  double accuracy = 0.0;     // RL: fraction of rollouts the verifier accepts.
  double grad_norm = 0.0;    // Before clipping.
  double learning_rate = 0.0;
  int64_t tokens = 0;  // Tokens the loss covered (generated tokens for RL).
  double rollout_seconds = 0.0;
  double seconds = 0.0;  // Whole step.
};

class Trainer {
 public:
  // `model`, `tokenizer` and `rollouts` (null: LocalRollouts over the model) must
  // outlive the trainer. `train` is validated here: an empty dataset, an example
  // without an answer (or, for SFT, nothing to learn), or a prompt that leaves no room
  // for max_new_tokens in the context is INVALID_ARGUMENT naming the example. `full`
  // makes the model's weights trainable; `steering` never writes to the model, so the
  // model may serve other threads meanwhile (Forward is const).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TrainerOptions& options,
                                                         Transformer* model,
                                                         const Tokenizer* tokenizer,
                                                         std::vector<Example> train,
                                                         RolloutBackend* rollouts = nullptr);

  // One optimizer step. A non-finite loss, gradient or parameter ends the run with
  // ABORTED ("training diverged ...") and leaves the parameters of the last good step.
  absl::StatusOr<StepMetrics> Step();
  int64_t step() const { return step_; }
  const TrainerOptions& options() const { return options_; }

  // The steering vector [L, d] float32 on the model's device (zero rows for layers
  // that do not train); undefined unless the method is `steering`.
  at::Tensor SteeringVector() const;
  // Per trained layer, what the steering learning rate is multiplied by ([n] float32).
  at::Tensor steering_lr_scale() const { return steering_lr_scale_; }
  const LoraAdapter* lora() const { return lora_ ? &*lora_ : nullptr; }
  int64_t num_trainable_parameters() const;
  int64_t optimizer_state_bytes() const;  // Adam's two moments.

  // Trainable tensors, Adam moments and the step, in a safetensors file (atomic write).
  absl::Status SaveCheckpoint(const std::string& path) const;
  // Restores a checkpoint written by a trainer with the same method and shapes.
  absl::Status LoadCheckpoint(const std::string& path);
  // The same checkpoint as bytes (for a store that keeps it, not a file), and back.
  absl::StatusOr<std::string> SerializeCheckpoint() const;
  absl::Status RestoreCheckpoint(std::string bytes, std::string source);

 private:
  struct Sequence {
    std::vector<int32_t> tokens;  // Prompt then completion.
    int64_t prompt_length = 0;    // Loss covers tokens [prompt_length, end).
    double weight = 1.0;          // Advantage (RL) or 1 (SFT).
  };

  Trainer() = default;
  // What a checkpoint holds: the tensors (pointing into keep_alive) and the metadata.
  struct CheckpointContents {
    std::vector<at::Tensor> keep_alive;
    std::vector<TensorToWrite> tensors;
    std::map<std::string, std::string> metadata;
  };
  CheckpointContents Checkpoint() const;
  absl::Status Restore(const SafetensorsFile& file);
  std::vector<const Example*> ExamplesForStep(int64_t step, int64_t count);
  at::Tensor CurrentSteering() const;  // [L, d] with the graph to the parameter.
  // Per-token log-probabilities of each sequence's completion: [B, T-1] float32 with a
  // mask [B, T-1] of the positions the loss covers.
  absl::StatusOr<std::pair<at::Tensor, at::Tensor>> CompletionLogProbs(
      const std::vector<Sequence>& batch) const;
  absl::StatusOr<StepMetrics> RlStep(std::vector<Sequence>* sequences, StepMetrics metrics);
  absl::StatusOr<double> Backward(const std::vector<Sequence>& sequences, double normaliser,
                                  const std::vector<at::Tensor>* old_logprobs,
                                  std::vector<at::Tensor>* record_logprobs);
  absl::StatusOr<double> OptimizerStep(double learning_rate);
  // Drops accumulated gradients (after a step that cannot be applied).
  void ClearGradients();
  double LearningRateAt(int64_t step) const;
  // Root-mean-square of each decoder layer's output over some training prompts: [L].

  TrainerOptions options_;
  Transformer* model_ = nullptr;
  const Tokenizer* tokenizer_ = nullptr;
  std::unique_ptr<Verifier> verifier_;
  std::unique_ptr<RolloutBackend> local_rollouts_;  // When Create() was given none.
  RolloutBackend* rollouts_ = nullptr;
  std::vector<Example> train_;
  std::vector<std::vector<int32_t>> prompt_ids_;      // Per training example.
  std::vector<std::vector<int32_t>> completion_ids_;  // SFT targets (with eos).
  int64_t eos_id_ = -1;

  at::Tensor steering_param_;   // [len(layers), d] float32 (steering)
  at::Tensor steering_layers_;  // [len(layers)] int64 on the model's device
  at::Tensor steering_lr_scale_;  // [len(layers), 1] float32: residual RMS, or ones
  std::optional<LoraAdapter> lora_;
  std::vector<at::Tensor> params_;  // Every trainable tensor.
  std::vector<at::Tensor> adam_m_, adam_v_;
  int64_t step_ = 0;
  int64_t adam_steps_ = 0;            // Optimizer updates (GRPO takes several per step).
  std::vector<int64_t> permutation_;  // Of train_, for the cached epoch.
  int64_t permutation_epoch_ = -1;
};

struct EvalOptions {
  int64_t max_new_tokens = 64;
  int64_t batch_size = 128;   // Sequences generated together.
  double temperature = 0.0;   // 0 = greedy (the held-out metric); > 0 samples.
  uint64_t seed = 0;          // Example i samples with seed + i.
  bool add_special_tokens = false;  // As TrainerOptions::add_special_tokens.
  RolloutBackend* rollouts = nullptr;  // Null: LocalRollouts over the model.
};

struct EvalResult {
  int64_t n = 0;
  int64_t correct = 0;
  double accuracy = 0.0;
  std::vector<std::string> completions;  // Per example.
  double seconds = 0.0;
};

// Generation (greedy by default) on every example, scored by `verifier`. `steering` ([L, d]) may be
// undefined and `lora` null.
absl::StatusOr<EvalResult> Evaluate(const Transformer& model, const Tokenizer& tokenizer,
                                    const std::vector<Example>& examples, const Verifier& verifier,
                                    const at::Tensor& steering, const LoraAdapter* lora,
                                    const EvalOptions& options);

// Writes a Hugging Face model folder (config.json, model.safetensors in `dtype`, the
// tokenizer files of `tokenizer_dir`) from a model's current weights.
absl::Status WriteModelFolder(const Transformer& model, const std::string& tokenizer_dir,
                              const std::string& out_dir, at::ScalarType dtype);

}  // namespace steerd::train

#endif  // STEERD_SERVER_TRAIN_TRAINER_H_
