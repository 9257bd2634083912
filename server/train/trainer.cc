#include "server/train/trainer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/model/generator.h"
#include "server/model/safetensors.h"
#include "server/model/torch_util.h"
#include "server/util/status_macros.h"
#include "server/util/stopwatch.h"

namespace steerd::train {
namespace {

namespace fs = std::filesystem;
constexpr char kCheckpointFormat[] = "steerd.train-checkpoint.v1";

// SplitMix64 of two values: the seeds of everything a step draws.
uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9E3779B97F4A7C15ULL * (b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

absl::Status Diverged(int64_t step, const std::string& what, double learning_rate) {
  return absl::AbortedError(absl::StrCat(
      "training diverged at step ", step, ": ", what,
      " is not finite; lower the learning rate (it was ", learning_rate, ")"));
}

template <typename T>
absl::StatusOr<T> ParseName(const std::string& name, const char* what,
                            std::initializer_list<std::pair<const char*, T>> table) {
  std::string known;
  for (const auto& [key, value] : table) {
    if (name == key) return value;
    absl::StrAppend(&known, known.empty() ? "" : ", ", key);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ", what, " '", name, "'; expected one of ", known));
}

}  // namespace

absl::StatusOr<TrainableSet> ParseTrainableSet(const std::string& name) {
  return ParseName<TrainableSet>(name, "method",
                                 {{"steering", TrainableSet::kSteering},
                                  {"lora", TrainableSet::kLora},
                                  {"full", TrainableSet::kFull}});
}

absl::StatusOr<Objective> ParseObjective(const std::string& name) {
  return ParseName<Objective>(name, "objective",
                              {{"rl", Objective::kRl}, {"sft", Objective::kSft}});
}

absl::StatusOr<RlAlgorithm> ParseRlAlgorithm(const std::string& name) {
  return ParseName<RlAlgorithm>(name, "algorithm",
                                {{"rloo", RlAlgorithm::kRloo}, {"grpo", RlAlgorithm::kGrpo}});
}

absl::StatusOr<LrSchedule> ParseLrSchedule(const std::string& name) {
  return ParseName<LrSchedule>(name, "schedule",
                               {{"constant", LrSchedule::kConstant},
                                {"cosine", LrSchedule::kCosine}});
}

const char* TrainableSetName(TrainableSet set) {
  switch (set) {
    case TrainableSet::kSteering: return "steering";
    case TrainableSet::kLora: return "lora";
    case TrainableSet::kFull: return "full";
  }
  return "steering";
}

double DefaultLearningRate(TrainableSet method, Objective objective) {
  switch (method) {
    case TrainableSet::kSteering: return 1e-2;
    case TrainableSet::kLora: return 1e-3;
    // 1e-3 collapses RL on steerd-tiny; 1e-4 is the best of {1e-5, 1e-4, 1e-3}.
    case TrainableSet::kFull: return objective == Objective::kSft ? 1e-3 : 1e-4;
  }
  return 1e-3;
}

absl::Status ValidateTrainerOptions(const TrainerOptions& o, const ModelConfig& config) {
  auto bad = [](const std::string& message) { return absl::InvalidArgumentError(message); };
  auto in_range = [](double v, double lo, double hi) {
    return std::isfinite(v) && v >= lo && v <= hi;
  };
  if (o.steps < 1 || o.steps > 1000000) return bad("steps must be in [1, 1000000]");
  if (o.prompts_per_step < 1 || o.prompts_per_step > 4096) {
    return bad("prompts_per_step must be in [1, 4096]");
  }
  if (o.objective == Objective::kRl &&
      (o.rollouts_per_prompt < 2 || o.rollouts_per_prompt > 256)) {
    return bad("rollouts_per_prompt must be in [2, 256] (RLOO needs a baseline)");
  }
  if (o.batch_size < 1 || o.batch_size > 65536) return bad("batch_size must be in [1, 65536]");
  if (o.micro_batch < 1 || o.micro_batch > 4096) return bad("micro_batch must be in [1, 4096]");
  if (!in_range(o.learning_rate, 0.0, 10.0)) return bad("learning_rate must be in [0, 10]");
  if (!in_range(o.weight_decay, 0.0, 1.0)) return bad("weight_decay must be in [0, 1]");
  if (!in_range(o.adam_beta1, 0.0, 0.9999) || !in_range(o.adam_beta2, 0.0, 0.99999)) {
    return bad("Adam betas must be in [0, 1)");
  }
  if (!in_range(o.adam_epsilon, 1e-12, 1.0)) return bad("adam_epsilon must be in [1e-12, 1]");
  if (o.warmup_steps < 0 || o.warmup_steps > o.steps) {
    return bad("warmup_steps must be in [0, steps]");
  }
  if (!in_range(o.grad_clip, 0.0, 1e6)) return bad("grad_clip must be >= 0 (0 = off)");
  if (!in_range(o.temperature, 1e-3, 10.0)) return bad("temperature must be in [0.001, 10]");
  if (o.max_new_tokens < 1 || o.max_new_tokens >= config.max_position_embeddings) {
    return bad(absl::StrCat("max_new_tokens must be in [1, ", config.max_position_embeddings,
                            ") (the model's context)"));
  }
  if (o.grpo_epochs < 1 || o.grpo_epochs > 16) return bad("grpo_epochs must be in [1, 16]");
  if (!in_range(o.grpo_clip, 1e-3, 1.0)) return bad("grpo_clip must be in (0, 1]");
  std::vector<int64_t> layers = o.steering_layers;
  std::sort(layers.begin(), layers.end());
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] < 0 || layers[i] >= config.num_layers) {
      return bad(absl::StrCat("steering layer ", layers[i], " is out of range [0, ",
                              config.num_layers, ")"));
    }
    if (i > 0 && layers[i] == layers[i - 1]) {
      return bad(absl::StrCat("steering layer ", layers[i], " is listed twice"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainerOptions& options,
                                                         Transformer* model,
                                                         const Tokenizer* tokenizer,
                                                         std::vector<Example> train,
                                                         RolloutBackend* rollouts) {
  const ModelConfig& config = model->config();
  RETURN_IF_ERROR(ValidateTrainerOptions(options, config));
  std::unique_ptr<Trainer> t(new Trainer());
  t->options_ = options;
  t->model_ = model;
  t->tokenizer_ = tokenizer;
  ASSIGN_OR_RETURN(t->verifier_, Verifier::Create(options.reward));
  if (train.empty()) return absl::InvalidArgumentError("the training dataset is empty");
  if (tokenizer->eos_token_id().has_value()) {
    t->eos_id_ = *tokenizer->eos_token_id();
  } else if (!config.eos_token_ids.empty()) {
    t->eos_id_ = config.eos_token_ids[0];
  }
  const bool sft = options.objective == Objective::kSft;
  if (sft && t->eos_id_ < 0) {
    return absl::FailedPreconditionError(
        "SFT needs an end-of-sequence token: the model defines no eos_token_id");
  }
  const int64_t context = config.max_position_embeddings;
  for (size_t i = 0; i < train.size(); ++i) {
    const Example& e = train[i];
    if (e.answer.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("example ", i, " has no answer"));
    }
    absl::StatusOr<std::vector<int32_t>> encoded =
        tokenizer->Encode(e.prompt, options.add_special_tokens);
    if (!encoded.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("example ", i, ": ", encoded.status().message()));
    }
    std::vector<int32_t> prompt = *std::move(encoded);
    if (prompt.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("example ", i, " has an empty prompt"));
    }
    int64_t needed = static_cast<int64_t>(prompt.size()) + options.max_new_tokens;
    if (sft) {
      ASSIGN_OR_RETURN(std::vector<int32_t> target,
                       tokenizer->Encode(e.solution.empty() ? e.answer : e.solution));
      target.push_back(static_cast<int32_t>(t->eos_id_));
      needed = static_cast<int64_t>(prompt.size() + target.size());
      t->completion_ids_.push_back(std::move(target));
    }
    if (needed > context) {
      return absl::InvalidArgumentError(absl::StrCat(
          "example ", i, " is too long: ", prompt.size(), " prompt tokens and ",
          sft ? "its demonstration" : absl::StrCat(options.max_new_tokens, " new tokens"),
          " need ", needed, " positions but the model's context is ", context));
    }
    t->prompt_ids_.push_back(std::move(prompt));
  }
  t->train_ = std::move(train);

  const auto device_options = at::TensorOptions().dtype(at::kFloat).device(model->device());
  RETURN_IF_ERROR(CatchTorchErrors("creating trainable parameters", [&]() -> absl::Status {
    switch (options.method) {
      case TrainableSet::kSteering: {
        std::vector<int64_t> layers = options.steering_layers;
        if (layers.empty()) {
          layers.resize(config.num_layers);
          std::iota(layers.begin(), layers.end(), 0);
        }
        std::sort(layers.begin(), layers.end());
        t->steering_layers_ =
            at::tensor(layers, at::TensorOptions().dtype(at::kLong)).to(model->device());
        t->steering_param_ = at::zeros({static_cast<int64_t>(layers.size()), config.hidden_size},
                                       device_options)
                                 .set_requires_grad(true);  // [len(layers), d]
        t->params_ = {t->steering_param_};
        if (options.relative_steering_lr) {
          const std::vector<std::vector<int32_t>> sample(
              t->prompt_ids_.begin(),
              t->prompt_ids_.begin() + std::min<size_t>(16, t->prompt_ids_.size()));
          ASSIGN_OR_RETURN(at::Tensor rms, ResidualRms(*model, sample));  // [L]
          t->steering_lr_scale_ = rms.index_select(0, t->steering_layers_).view({-1, 1});
        } else {
          t->steering_lr_scale_ = at::ones({static_cast<int64_t>(layers.size()), 1},
                                           device_options);
        }
        break;
      }
      case TrainableSet::kLora: {
        LoraAdapter::Options lora = options.lora;
        lora.seed = Mix(options.seed, 0x10AA);
        ASSIGN_OR_RETURN(LoraAdapter adapter,
                         LoraAdapter::Create(config, lora, model->device()));
        t->lora_ = std::move(adapter);
        t->params_ = t->lora_->Parameters();
        break;
      }
      case TrainableSet::kFull:
        if (model->dtype() != at::kFloat) {
          return absl::FailedPreconditionError(
              "full fine-tuning needs float32 weights: load the model with --dtype f32");
        }
        RETURN_IF_ERROR(model->MakeWeightsTrainable());
        t->params_ = model->Weights();
        break;
    }
    for (const at::Tensor& p : t->params_) {
      t->adam_m_.push_back(at::zeros_like(p, device_options));
      t->adam_v_.push_back(at::zeros_like(p, device_options));
    }
    return absl::OkStatus();
  }));
  if (rollouts == nullptr) {
    t->local_rollouts_ = std::make_unique<LocalRollouts>(model, tokenizer, t->lora());
    rollouts = t->local_rollouts_.get();
  }
  t->rollouts_ = rollouts;
  return t;
}

absl::StatusOr<std::vector<GenerationResult>> LocalRollouts::Generate(
    std::vector<GenerationRequest> requests) {
  Generator generator(model_, tokenizer_, lora_);
  return generator.Generate(requests);
}

std::vector<const Example*> Trainer::ExamplesForStep(int64_t step, int64_t count) {
  // Step k takes the next `count` examples of an endless sequence of epochs, each a
  // seeded permutation of the dataset: a pure function of (seed, step).
  const int64_t n = static_cast<int64_t>(train_.size());
  std::vector<const Example*> out;
  for (int64_t j = step * count; j < (step + 1) * count; ++j) {
    const int64_t epoch = j / n;
    if (epoch != permutation_epoch_) {
      permutation_.resize(n);
      std::iota(permutation_.begin(), permutation_.end(), 0);
      std::mt19937_64 rng(Mix(options_.seed, static_cast<uint64_t>(epoch)));
      for (int64_t i = n - 1; i > 0; --i) {
        std::swap(permutation_[i], permutation_[rng() % static_cast<uint64_t>(i + 1)]);
      }
      permutation_epoch_ = epoch;
    }
    out.push_back(&train_[permutation_[j % n]]);
  }
  return out;
}

at::Tensor Trainer::CurrentSteering() const {
  if (!steering_param_.defined()) return at::Tensor();
  const ModelConfig& c = model_->config();
  if (steering_param_.size(0) == c.num_layers) return steering_param_;
  return at::zeros({c.num_layers, c.hidden_size}, steering_param_.options())
      .index_copy(0, steering_layers_, steering_param_);  // [L, d]
}

at::Tensor Trainer::SteeringVector() const {
  if (!steering_param_.defined()) return at::Tensor();
  at::NoGradGuard no_grad;
  return CurrentSteering().detach().clone();
}

int64_t Trainer::num_trainable_parameters() const {
  int64_t n = 0;
  for (const at::Tensor& p : params_) n += p.numel();
  return n;
}

int64_t Trainer::optimizer_state_bytes() const {
  int64_t bytes = 0;
  for (const auto* state : {&adam_m_, &adam_v_}) {
    for (const at::Tensor& t : *state) bytes += t.numel() * t.element_size();
  }
  return bytes;
}

double Trainer::LearningRateAt(int64_t step) const {
  const double base = options_.learning_rate > 0
                          ? options_.learning_rate
                          : DefaultLearningRate(options_.method, options_.objective);
  const int64_t warmup = options_.warmup_steps;
  if (warmup > 0 && step <= warmup) return base * step / warmup;
  if (options_.schedule == LrSchedule::kConstant || options_.steps <= warmup) return base;
  const double progress =
      static_cast<double>(step - warmup) / static_cast<double>(options_.steps - warmup);
  return base * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * std::min(progress, 1.0))));
}

absl::StatusOr<std::pair<at::Tensor, at::Tensor>> Trainer::CompletionLogProbs(
    const std::vector<Sequence>& batch) const {
  const int64_t B = static_cast<int64_t>(batch.size());
  int64_t T = 0;
  for (const Sequence& s : batch) T = std::max<int64_t>(T, s.tokens.size());
  // Right padding: a causal model's earlier positions never see the pads.
  std::vector<int64_t> tokens(B * T, eos_id_ >= 0 ? eos_id_ : 0);
  std::vector<float> mask(B * (T - 1), 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    const Sequence& s = batch[b];
    std::copy(s.tokens.begin(), s.tokens.end(), tokens.begin() + b * T);
    // Position t predicts token t + 1: the completion's tokens are predicted from
    // positions prompt_length - 1 .. size - 2.
    for (int64_t t = s.prompt_length - 1; t + 1 < static_cast<int64_t>(s.tokens.size()); ++t) {
      mask[b * (T - 1) + t] = 1.0f;
    }
  }
  ForwardInput input;
  input.logits = ForwardInput::Logits::kAll;
  input.lora = lora();
  if (steering_param_.defined()) {
    std::vector<SteeringRow> rows(B, SteeringRow{CurrentSteering(), 1.0});
    ASSIGN_OR_RETURN(input.steering, model_->MakeSteeringBatch(rows));
  }
  return CatchTorchErrors(
      "computing log-probabilities", [&]() -> absl::StatusOr<std::pair<at::Tensor, at::Tensor>> {
        input.tokens = at::tensor(tokens, at::TensorOptions().dtype(at::kLong)).view({B, T});
        ASSIGN_OR_RETURN(at::Tensor logits, model_->Forward(input, nullptr));  // [B, T, V]
        at::Tensor targets = input.tokens.narrow(1, 1, T - 1).to(model_->device());
        at::Tensor logp = at::log_softmax(logits.narrow(1, 0, T - 1), -1)
                              .gather(2, targets.unsqueeze(-1))
                              .squeeze(-1);  // [B, T-1]
        at::Tensor m = at::tensor(mask).view({B, T - 1}).to(model_->device());
        return std::make_pair(logp, m);
      });
}

absl::StatusOr<double> Trainer::Backward(const std::vector<Sequence>& sequences,
                                         double normaliser,
                                         const std::vector<at::Tensor>* old_logprobs,
                                         std::vector<at::Tensor>* record_logprobs) {
  double total = 0.0;
  const int64_t micro = options_.micro_batch;
  for (size_t first = 0, chunk = 0; first < sequences.size(); first += micro, ++chunk) {
    std::vector<Sequence> part(
        sequences.begin() + first,
        sequences.begin() + std::min(sequences.size(), first + static_cast<size_t>(micro)));
    ASSIGN_OR_RETURN(auto logp_mask, CompletionLogProbs(part));
    // Named references, not a structured binding: C++17 lets no lambda capture one.
    at::Tensor& logp = logp_mask.first;   // [b, T-1]
    at::Tensor& mask = logp_mask.second;  // [b, T-1]
    RETURN_IF_ERROR(CatchTorchErrors("backward pass", [&]() -> absl::Status {
      std::vector<float> w;
      for (const Sequence& s : part) w.push_back(static_cast<float>(s.weight));
      at::Tensor weights = at::tensor(w).view({-1, 1}).to(logp.device());  // [b, 1]
      at::Tensor objective;                                                 // [b, T-1]
      if (old_logprobs == nullptr) {
        objective = logp * weights;
      } else {
        // PPO-style clipped surrogate: the ratio to the rollout policy's probabilities.
        at::Tensor ratio = at::exp(logp - (*old_logprobs)[chunk]);
        const double eps = options_.grpo_clip;
        objective = at::min(ratio * weights, ratio.clamp(1.0 - eps, 1.0 + eps) * weights);
      }
      at::Tensor loss = -(objective * mask).sum() / normaliser;
      if (record_logprobs != nullptr) record_logprobs->push_back(logp.detach());
      loss.backward();
      total += loss.item<double>();
      return absl::OkStatus();
    }));
  }
  return total;
}

void Trainer::ClearGradients() {
  for (const at::Tensor& p : params_) {
    if (p.grad().defined()) p.mutable_grad().reset();
  }
}

absl::StatusOr<double> Trainer::OptimizerStep(double learning_rate) {
  return CatchTorchErrors("optimizer step", [&]() -> absl::StatusOr<double> {
    at::NoGradGuard no_grad;
    double norm_sq = 0.0;
    for (const at::Tensor& p : params_) {
      if (p.grad().defined()) norm_sq += p.grad().pow(2).sum().item<double>();
    }
    const double norm = std::sqrt(norm_sq);
    if (!std::isfinite(norm)) {
      ClearGradients();
      return Diverged(step_ + 1, "the gradient norm", learning_rate);
    }
    const double clip = options_.grad_clip > 0 && norm > options_.grad_clip
                            ? options_.grad_clip / (norm + 1e-6)
                            : 1.0;
    ++adam_steps_;
    const double b1 = options_.adam_beta1, b2 = options_.adam_beta2;
    const double correction1 = 1.0 - std::pow(b1, static_cast<double>(adam_steps_));
    const double correction2 = 1.0 - std::pow(b2, static_cast<double>(adam_steps_));
    for (size_t i = 0; i < params_.size(); ++i) {
      at::Tensor p = params_[i];
      if (!p.grad().defined()) continue;
      at::Tensor g = p.grad() * clip;
      adam_m_[i].mul_(b1).add_(g, 1.0 - b1);
      adam_v_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
      if (options_.weight_decay > 0) p.mul_(1.0 - learning_rate * options_.weight_decay);
      at::Tensor denom = (adam_v_[i] / correction2).sqrt_().add_(options_.adam_epsilon);
      if (p.is_same(steering_param_)) {
        p.sub_(adam_m_[i] / denom * steering_lr_scale_ * (learning_rate / correction1));
      } else {
        p.addcdiv_(adam_m_[i], denom, -learning_rate / correction1);
      }
      p.mutable_grad().reset();
    }
    return norm;
  });
}

absl::StatusOr<StepMetrics> Trainer::Step() {
  const auto started = Clock::now();
  StepMetrics metrics;
  metrics.step = step_ + 1;
  metrics.learning_rate = LearningRateAt(step_ + 1);
  std::vector<Sequence> sequences;
  if (options_.objective == Objective::kSft) {
    const std::vector<const Example*> examples = ExamplesForStep(step_, options_.batch_size);
    int64_t tokens = 0;
    for (const Example* e : examples) {
      const size_t i = e - train_.data();
      Sequence s;
      s.tokens = prompt_ids_[i];
      s.prompt_length = static_cast<int64_t>(s.tokens.size());
      s.tokens.insert(s.tokens.end(), completion_ids_[i].begin(), completion_ids_[i].end());
      tokens += static_cast<int64_t>(completion_ids_[i].size());
      sequences.push_back(std::move(s));
    }
    metrics.tokens = tokens;
    ASSIGN_OR_RETURN(metrics.loss, Backward(sequences, static_cast<double>(tokens), nullptr,
                                            nullptr));
    if (!std::isfinite(metrics.loss)) {
      ClearGradients();
      return Diverged(metrics.step, "the loss", metrics.learning_rate);
    }
    ASSIGN_OR_RETURN(metrics.grad_norm, OptimizerStep(metrics.learning_rate));
  } else {
    ASSIGN_OR_RETURN(metrics, RlStep(&sequences, metrics));
  }
  ++step_;
  metrics.seconds = SecondsSince(started);
  return metrics;
}

absl::StatusOr<StepMetrics> Trainer::RlStep(std::vector<Sequence>* sequences,
                                            StepMetrics metrics) {
  const auto started = Clock::now();
  const int64_t G = options_.rollouts_per_prompt;
  const std::vector<const Example*> examples =
      ExamplesForStep(step_, options_.prompts_per_step);
  // Every rollout of the step in one batch, sampled from the current parameters.
  std::vector<GenerationRequest> requests;
  at::Tensor steering = SteeringVector();
  for (size_t p = 0; p < examples.size(); ++p) {
    for (int64_t g = 0; g < G; ++g) {
      GenerationRequest r;
      r.prompt = prompt_ids_[examples[p] - train_.data()];
      r.sampling.temperature = options_.temperature;
      r.sampling.seed = Mix(Mix(options_.seed, static_cast<uint64_t>(step_)),
                            static_cast<uint64_t>(p * G + g));
      r.max_new_tokens = options_.max_new_tokens;
      r.steering = steering;
      requests.push_back(std::move(r));
    }
  }
  ASSIGN_OR_RETURN(std::vector<GenerationResult> results, rollouts_->Generate(requests));
  metrics.rollout_seconds = SecondsSince(started);

  std::vector<double> rewards(results.size());
  int64_t correct = 0, generated = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    const Example& e = *examples[i / G];
    rewards[i] = verifier_->Reward(results[i].text, e.answer);
    correct += verifier_->IsCorrect(results[i].text, e.answer) ? 1 : 0;
    generated += static_cast<int64_t>(results[i].tokens.size());
  }
  metrics.reward_mean =
      std::accumulate(rewards.begin(), rewards.end(), 0.0) / static_cast<double>(rewards.size());
  metrics.accuracy = static_cast<double>(correct) / static_cast<double>(results.size());
  metrics.tokens = generated;

  for (size_t p = 0; p < examples.size(); ++p) {
    const double* r = &rewards[p * G];
    const double sum = std::accumulate(r, r + G, 0.0), mean = sum / G;
    double var = 0.0;
    for (int64_t g = 0; g < G; ++g) var += (r[g] - mean) * (r[g] - mean);
    const double std_dev = std::sqrt(var / G);
    for (int64_t g = 0; g < G; ++g) {
      const size_t i = p * G + g;
      const double advantage = options_.algorithm == RlAlgorithm::kRloo
                                   ? r[g] - (sum - r[g]) / static_cast<double>(G - 1)
                                   : (r[g] - mean) / (std_dev + 1e-6);
      // A zero advantage contributes nothing but its tokens to the normaliser.
      if (advantage == 0.0 || results[i].tokens.empty()) continue;
      Sequence s;
      s.tokens = requests[i].prompt;
      s.prompt_length = static_cast<int64_t>(s.tokens.size());
      s.tokens.insert(s.tokens.end(), results[i].tokens.begin(), results[i].tokens.end());
      s.weight = advantage;
      sequences->push_back(std::move(s));
    }
  }
  if (sequences->empty()) {
    // Every group agreed: no signal this step, and no update.
    metrics.grad_norm = 0.0;
    return metrics;
  }
  const double normaliser = static_cast<double>(std::max<int64_t>(generated, 1));
  const int64_t epochs = options_.algorithm == RlAlgorithm::kGrpo ? options_.grpo_epochs : 1;
  std::vector<at::Tensor> old_logprobs;
  for (int64_t epoch = 0; epoch < epochs; ++epoch) {
    // The first epoch is on-policy (ratio 1: the plain REINFORCE gradient) and records
    // the rollout policy's log-probabilities for the clipped later epochs.
    ASSIGN_OR_RETURN(double loss, Backward(*sequences, normaliser,
                                           epoch == 0 ? nullptr : &old_logprobs,
                                           epoch == 0 && epochs > 1 ? &old_logprobs : nullptr));
    if (!std::isfinite(loss)) {
      ClearGradients();
      return Diverged(metrics.step, "the loss", metrics.learning_rate);
    }
    if (epoch == 0) metrics.loss = loss;
    ASSIGN_OR_RETURN(double norm, OptimizerStep(metrics.learning_rate));
    if (epoch == 0) metrics.grad_norm = norm;
  }
  return metrics;
}

Trainer::CheckpointContents Trainer::Checkpoint() const {
  CheckpointContents c;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (const auto& [prefix, t] : {std::pair{"param", params_[i]},
                                    std::pair{"adam_m", adam_m_[i]},
                                    std::pair{"adam_v", adam_v_[i]}}) {
      at::Tensor cpu = t.detach().to(at::kCPU, at::kFloat).contiguous();
      c.tensors.push_back({absl::StrCat(prefix, ".", i), DType::kF32,
                           std::vector<int64_t>(cpu.sizes().begin(), cpu.sizes().end()),
                           cpu.data_ptr()});
      c.keep_alive.push_back(std::move(cpu));
    }
  }
  c.metadata = {{"format", kCheckpointFormat},
                {"method", TrainableSetName(options_.method)},
                {"step", absl::StrCat(step_)},
                {"adam_steps", absl::StrCat(adam_steps_)},
                {"num_params", absl::StrCat(params_.size())}};
  return c;
}

absl::Status Trainer::SaveCheckpoint(const std::string& path) const {
  const CheckpointContents c = Checkpoint();
  return WriteSafetensors(path, c.tensors, c.metadata);
}

absl::StatusOr<std::string> Trainer::SerializeCheckpoint() const {
  const CheckpointContents c = Checkpoint();
  return SerializeSafetensors(c.tensors, c.metadata);
}

absl::Status Trainer::LoadCheckpoint(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  return Restore(*file);
}

absl::Status Trainer::RestoreCheckpoint(std::string bytes, std::string source) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   SafetensorsFile::FromBuffer(std::move(bytes), std::move(source)));
  return Restore(*file);
}

absl::Status Trainer::Restore(const SafetensorsFile& file) {
  const std::string& path = file.source();
  const auto& meta = file.metadata();
  auto get = [&](const char* key) {
    auto it = meta.find(key);
    return it == meta.end() ? std::string() : it->second;
  };
  if (get("format") != kCheckpointFormat) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a steerd training checkpoint"));
  }
  if (get("method") != TrainableSetName(options_.method)) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": checkpoint of a '",
                                                      get("method"), "' run, not '",
                                                      TrainableSetName(options_.method), "'"));
  }
  int64_t step = 0, adam_steps = 0, count = 0;
  if (!absl::SimpleAtoi(get("step"), &step) || !absl::SimpleAtoi(get("adam_steps"), &adam_steps) ||
      !absl::SimpleAtoi(get("num_params"), &count) ||
      count != static_cast<int64_t>(params_.size())) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": checkpoint does not match this run's parameters"));
  }
  RETURN_IF_ERROR(CatchTorchErrors("loading checkpoint", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      for (auto& [prefix, t] : {std::pair<const char*, at::Tensor*>{"param", &params_[i]},
                                std::pair<const char*, at::Tensor*>{"adam_m", &adam_m_[i]},
                                std::pair<const char*, at::Tensor*>{"adam_v", &adam_v_[i]}}) {
        ASSIGN_OR_RETURN(TensorView view, file.Get(absl::StrCat(prefix, ".", i)));
        if (view.dtype != DType::kF32 ||
            view.shape != std::vector<int64_t>(t->sizes().begin(), t->sizes().end())) {
          return absl::FailedPreconditionError(absl::StrCat(
              path, ": tensor ", view.name, " does not match this run's parameters"));
        }
        ASSIGN_OR_RETURN(at::Tensor src, TensorFromView(view, nullptr));
        t->copy_(src);
      }
    }
    return absl::OkStatus();
  }));
  step_ = step;
  adam_steps_ = adam_steps;
  return absl::OkStatus();
}

absl::StatusOr<EvalResult> Evaluate(const Transformer& model, const Tokenizer& tokenizer,
                                    const std::vector<Example>& examples,
                                    const Verifier& verifier, const at::Tensor& steering,
                                    const LoraAdapter* lora, const EvalOptions& options) {
  const auto started = Clock::now();
  if (examples.empty()) return absl::InvalidArgumentError("the evaluation dataset is empty");
  if (options.batch_size < 1) return absl::InvalidArgumentError("batch_size must be >= 1");
  EvalResult out;
  LocalRollouts local(&model, &tokenizer, lora);
  RolloutBackend* rollouts = options.rollouts != nullptr ? options.rollouts : &local;
  for (size_t first = 0; first < examples.size(); first += options.batch_size) {
    const size_t last = std::min(examples.size(), first + options.batch_size);
    std::vector<GenerationRequest> requests;
    for (size_t i = first; i < last; ++i) {
      GenerationRequest r;
      absl::StatusOr<std::vector<int32_t>> prompt =
          tokenizer.Encode(examples[i].prompt, options.add_special_tokens);
      if (!prompt.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("example ", i, ": ", prompt.status().message()));
      }
      r.prompt = *std::move(prompt);
      r.max_new_tokens = options.max_new_tokens;
      r.steering = steering;
      r.sampling.temperature = options.temperature;
      r.sampling.seed = options.seed + i;
      if (static_cast<int64_t>(r.prompt.size()) + r.max_new_tokens >
          model.config().max_position_embeddings) {
        return absl::InvalidArgumentError(absl::StrCat(
            "example ", i, ": ", r.prompt.size(), " prompt tokens leave no room for ",
            r.max_new_tokens, " new tokens in the model's context of ",
            model.config().max_position_embeddings));
      }
      requests.push_back(std::move(r));
    }
    ASSIGN_OR_RETURN(std::vector<GenerationResult> results,
                     rollouts->Generate(std::move(requests)));
    for (size_t i = first; i < last; ++i) {
      const std::string& text = results[i - first].text;
      out.correct += verifier.IsCorrect(text, examples[i].answer) ? 1 : 0;
      out.completions.push_back(text);
    }
  }
  out.n = static_cast<int64_t>(examples.size());
  out.accuracy = static_cast<double>(out.correct) / static_cast<double>(out.n);
  out.seconds = SecondsSince(started);
  return out;
}

absl::Status WriteModelFolder(const Transformer& model, const std::string& tokenizer_dir,
                              const std::string& out_dir, at::ScalarType dtype) {
  std::error_code error;
  fs::create_directories(out_dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat(out_dir, ": cannot create: ", error.message()));
  }
  ASSIGN_OR_RETURN(DType file_dtype, FromScalarType(dtype));
  std::vector<at::Tensor> keep_alive;
  std::vector<TensorToWrite> tensors;
  RETURN_IF_ERROR(CatchTorchErrors("writing weights", [&]() -> absl::Status {
    for (const auto& [name, tensor] : model.NamedWeights()) {
      at::Tensor cpu = tensor.detach().to(at::kCPU, dtype).contiguous();
      tensors.push_back({name, file_dtype,
                         std::vector<int64_t>(cpu.sizes().begin(), cpu.sizes().end()),
                         cpu.data_ptr()});
      keep_alive.push_back(std::move(cpu));
    }
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(WriteSafetensors((fs::path(out_dir) / "model.safetensors").string(), tensors,
                                   {{"format", "pt"}}));
  ModelConfig config = model.config();
  config.torch_dtype = dtype == at::kBFloat16 ? "bfloat16" : "float32";
  {
    const std::string json = ModelConfigToJson(config);
    const fs::path path = fs::path(out_dir) / "config.json";
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(json.data(), 1, json.size(), f) != json.size() ||
        std::fclose(f) != 0) {
      return absl::InternalError(absl::StrCat(path.string(), ": write failed"));
    }
  }
  if (fs::equivalent(tokenizer_dir, out_dir, error)) return absl::OkStatus();
  for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path from = fs::path(tokenizer_dir) / file;
    if (!fs::exists(from)) continue;
    fs::copy_file(from, fs::path(out_dir) / file, fs::copy_options::overwrite_existing, error);
    if (error) return absl::InternalError(absl::StrCat("copying ", file, ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace steerd::train
