// `steerd train`, `steerd eval` and `steerd inspect`: the trainer, the held-out
// evaluation and the logit-lens view of a steering vector, from the command line.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "server/cli/commands.h"
#include "server/cli/model_flags.h"
#include "server/cli/process_info.h"
#include "server/model/steering_file.h"
#include "server/model/torch_util.h"
#include "server/train/dataset.h"
#include "server/train/rewards.h"
#include "server/train/tasks.h"
#include "server/train/trainer.h"
#include "server/util/status_macros.h"
#include "server/util/stopwatch.h"

namespace steerd {
namespace {

using train::Example;
namespace fs = std::filesystem;

std::string Duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, seconds) + 0.5);
  return s >= 60 ? absl::StrFormat("%dm%02ds", s / 60, s % 60) : absl::StrFormat("%ds", s);
}

// --task NAME or --data FILE: where examples come from, and which verifier fits them.
struct DataSource {
  std::string task;  // Built-in task, or empty.
  std::string file;  // JSONL file, or empty.
  int64_t seed = 0;  // Task generator seed.
};

absl::StatusOr<DataSource> DataSourceFromArgs(const ParsedFlags& args) {
  if (args.Has("task") == args.Has("data")) {
    return absl::InvalidArgumentError("pass exactly one of --task NAME or --data FILE.jsonl");
  }
  DataSource source;
  source.task = args.Get("task", "");
  source.file = args.Get("data", "");
  ASSIGN_OR_RETURN(source.seed, args.GetInt("data-seed", 0));
  if (!source.task.empty()) RETURN_IF_ERROR(train::FindTask(source.task).status());
  return source;
}

absl::StatusOr<std::vector<Example>> LoadExamples(const DataSource& source, train::Split split,
                                                  int64_t count) {
  if (!source.file.empty()) return train::LoadJsonl(source.file);
  return train::GenerateTask(source.task, split, count, static_cast<uint64_t>(source.seed));
}

// --verifier/--regex/--correct-reward/--wrong-reward/--format-reward; the task's own
// verifier by default.
absl::StatusOr<train::RewardOptions> RewardOptionsFromArgs(const ParsedFlags& args,
                                                           const DataSource& source) {
  train::RewardOptions reward;
  if (!source.task.empty()) {
    ASSIGN_OR_RETURN(train::TaskInfo info, train::FindTask(source.task));
    reward.verifier = info.verifier;
  }
  if (args.Has("verifier")) {
    ASSIGN_OR_RETURN(reward.verifier, train::ParseVerifierKind(args.Get("verifier", "")));
  }
  reward.regex = args.Get("regex", "");
  ASSIGN_OR_RETURN(reward.correct_reward, args.GetDouble("correct-reward", 1.0));
  ASSIGN_OR_RETURN(reward.wrong_reward, args.GetDouble("wrong-reward", -1.0));
  ASSIGN_OR_RETURN(reward.format_reward, args.GetDouble("format-reward", 0.0));
  return reward;
}

absl::StatusOr<train::TrainerOptions> TrainerOptionsFromArgs(const ParsedFlags& args,
                                                             const DataSource& source) {
  train::TrainerOptions o;
  ASSIGN_OR_RETURN(o.method, train::ParseTrainableSet(args.Get("method", "steering")));
  ASSIGN_OR_RETURN(o.objective, train::ParseObjective(args.Get("objective", "rl")));
  ASSIGN_OR_RETURN(o.algorithm, train::ParseRlAlgorithm(args.Get("algorithm", "rloo")));
  ASSIGN_OR_RETURN(o.schedule, train::ParseLrSchedule(args.Get("schedule", "constant")));
  if (args.Has("layers")) {
    ASSIGN_OR_RETURN(o.steering_layers, args.GetIntList("layers"));
  }
  ASSIGN_OR_RETURN(o.lora.rank, args.GetInt("lora-rank", o.lora.rank));
  ASSIGN_OR_RETURN(o.lora.alpha, args.GetDouble("lora-alpha", 2.0 * o.lora.rank));
  if (args.Has("lora-targets")) {
    o.lora.targets.clear();
    for (absl::string_view name :
         absl::StrSplit(args.Get("lora-targets", ""), ',', absl::SkipWhitespace())) {
      ASSIGN_OR_RETURN(LoraTarget target, ParseLoraTarget(std::string(name)));
      o.lora.targets.push_back(target);
    }
  }
  o.relative_steering_lr = !args.Bool("absolute-lr");
  ASSIGN_OR_RETURN(o.steps, args.GetInt("steps", o.steps));
  ASSIGN_OR_RETURN(o.prompts_per_step, args.GetInt("prompts-per-step", o.prompts_per_step));
  ASSIGN_OR_RETURN(o.rollouts_per_prompt, args.GetInt("rollouts", o.rollouts_per_prompt));
  ASSIGN_OR_RETURN(o.batch_size, args.GetInt("batch-size", o.batch_size));
  ASSIGN_OR_RETURN(o.micro_batch, args.GetInt("micro-batch", o.micro_batch));
  ASSIGN_OR_RETURN(o.learning_rate, args.GetDouble("lr", 0.0));
  ASSIGN_OR_RETURN(o.weight_decay, args.GetDouble("weight-decay", o.weight_decay));
  ASSIGN_OR_RETURN(o.warmup_steps, args.GetInt("warmup", o.warmup_steps));
  ASSIGN_OR_RETURN(o.grad_clip, args.GetDouble("grad-clip", o.grad_clip));
  ASSIGN_OR_RETURN(o.temperature, args.GetDouble("temperature", o.temperature));
  ASSIGN_OR_RETURN(o.max_new_tokens, args.GetInt("max-new-tokens", o.max_new_tokens));
  ASSIGN_OR_RETURN(o.grpo_epochs, args.GetInt("grpo-epochs", o.grpo_epochs));
  ASSIGN_OR_RETURN(o.grpo_clip, args.GetDouble("grpo-clip", o.grpo_clip));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  o.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(o.reward, RewardOptionsFromArgs(args, source));
  return o;
}

// One line of progress: a redrawn bar on a terminal, plain log lines otherwise.
class Progress {
 public:
  Progress(int64_t total, bool quiet) : total_(total), quiet_(quiet), tty_(isatty(2)) {}

  void Step(const train::StepMetrics& m, bool rl, double elapsed, int64_t first_step,
            double dev_accuracy) {
    if (quiet_) return;
    tokens_ += m.tokens;
    const double per_step = elapsed / static_cast<double>(m.step - first_step);
    const std::string eta = Duration(per_step * static_cast<double>(total_ - m.step));
    std::string stats =
        rl ? absl::StrFormat("reward %+.3f  acc %5.1f%%", m.reward_mean, 100 * m.accuracy)
           : absl::StrFormat("loss %.4f", m.loss);
    if (dev_accuracy >= 0) absl::StrAppendFormat(&stats, "  dev %5.1f%%", 100 * dev_accuracy);
    const std::string tail = absl::StrFormat("%s  %.0f tok/s  ETA %s", stats,
                                             static_cast<double>(tokens_) / elapsed, eta);
    if (tty_) {
      constexpr int kWidth = 24;
      const int filled = static_cast<int>(kWidth * m.step / total_);
      std::fprintf(stderr, "\r[%s%s] %lld/%lld  %s\x1b[K", std::string(filled, '#').c_str(),
                   std::string(kWidth - filled, '.').c_str(), static_cast<long long>(m.step),
                   static_cast<long long>(total_), tail.c_str());
      if (m.step == total_) std::fputc('\n', stderr);
    } else {
      const int64_t every = std::max<int64_t>(1, total_ / 50);
      if (m.step % every == 0 || m.step == total_ || dev_accuracy >= 0) {
        std::fprintf(stderr, "step %lld/%lld  %s  grad %.3f  lr %.2g\n",
                     static_cast<long long>(m.step), static_cast<long long>(total_),
                     tail.c_str(), m.grad_norm, m.learning_rate);
      }
    }
  }

  void Line(const std::string& text) {
    if (quiet_) return;
    std::fprintf(stderr, "%s%s\n", tty_ ? "\r\x1b[K" : "", text.c_str());
  }

 private:
  int64_t total_;
  bool quiet_;
  bool tty_;
  int64_t tokens_ = 0;
};

}  // namespace

absl::Status RunTrainCommand(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(DataSource source, DataSourceFromArgs(args));
  ASSIGN_OR_RETURN(train::TrainerOptions options, TrainerOptionsFromArgs(args, source));
  ASSIGN_OR_RETURN(Transformer::Options model_options, TransformerOptionsFromArgs(args));
  // Full fine-tuning updates float32 master weights.
  if (options.method == train::TrainableSet::kFull && model_options.dtype == "auto") {
    model_options.dtype = "f32";
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Transformer> model, Transformer::Create(model_options));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(model_options.model_dir));

  ASSIGN_OR_RETURN(int64_t train_count, args.GetInt("train-count", 5000));
  ASSIGN_OR_RETURN(int64_t eval_count, args.GetInt("eval-count", 200));
  ASSIGN_OR_RETURN(int64_t test_count, args.GetInt("test-count", 500));
  ASSIGN_OR_RETURN(int64_t eval_every, args.GetInt("eval-every", 0));
  ASSIGN_OR_RETURN(int64_t checkpoint_every, args.GetInt("checkpoint-every", 0));
  if (eval_every < 0 || checkpoint_every < 0) {
    return absl::InvalidArgumentError("--eval-every and --checkpoint-every must be >= 0");
  }
  const std::string checkpoint = args.Get("checkpoint", "");
  if ((checkpoint_every > 0 || args.Bool("resume")) && checkpoint.empty()) {
    return absl::InvalidArgumentError("--checkpoint-every and --resume need --checkpoint FILE");
  }
  ASSIGN_OR_RETURN(std::vector<Example> train_set,
                   LoadExamples(source, train::Split::kTrain, train_count));
  std::vector<Example> dev_set, test_set;
  if (args.Has("eval-data")) {
    ASSIGN_OR_RETURN(dev_set, train::LoadJsonl(args.Get("eval-data", "")));
  } else if (!source.task.empty() && eval_every > 0) {
    ASSIGN_OR_RETURN(dev_set, train::GenerateTask(source.task, train::Split::kDev, eval_count,
                                                  static_cast<uint64_t>(source.seed)));
  }
  if (eval_every > 0 && dev_set.empty()) {
    return absl::InvalidArgumentError("--eval-every needs --task or --eval-data");
  }
  const bool rl = options.objective == train::Objective::kRl;
  if (!source.task.empty() && rl) {
    ASSIGN_OR_RETURN(test_set, train::GenerateTask(source.task, train::Split::kTest, test_count,
                                                   static_cast<uint64_t>(source.seed)));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<train::Verifier> verifier,
                   train::Verifier::Create(options.reward));
  ASSIGN_OR_RETURN(std::unique_ptr<train::Trainer> trainer,
                   train::Trainer::Create(options, model.get(), tokenizer.get(),
                                          std::move(train_set)));
  Progress progress(options.steps, args.Bool("quiet"));
  if (options.method == train::TrainableSet::kSteering && options.relative_steering_lr) {
    const at::Tensor scale = trainer->steering_lr_scale().to(at::kCPU).flatten();
    std::string rms;
    for (int64_t i = 0; i < scale.size(0); ++i) {
      absl::StrAppendFormat(&rms, "%s%.3g", i ? " " : "", scale[i].item<double>());
    }
    progress.Line(absl::StrCat("steering lr relative to the residual RMS per layer: ", rms));
  }
  if (args.Bool("resume") && fs::exists(checkpoint)) {
    RETURN_IF_ERROR(trainer->LoadCheckpoint(checkpoint));
    progress.Line(absl::StrCat("resumed from ", checkpoint, " at step ", trainer->step()));
  }
  train::EvalOptions eval_options;
  eval_options.max_new_tokens = options.max_new_tokens;
  auto evaluate = [&](const std::vector<Example>& examples) {
    return train::Evaluate(*model, *tokenizer, examples, *verifier, trainer->SteeringVector(),
                           trainer->lora(), eval_options);
  };

  const auto started = Clock::now();
  const int64_t first_step = trainer->step();
  double last_dev = -1.0;
  while (trainer->step() < options.steps) {
    ASSIGN_OR_RETURN(train::StepMetrics m, trainer->Step());
    double dev = -1.0;
    if (eval_every > 0 && (m.step % eval_every == 0 || m.step == options.steps)) {
      ASSIGN_OR_RETURN(train::EvalResult result, evaluate(dev_set));
      dev = last_dev = result.accuracy;
    }
    progress.Step(m, rl, SecondsSince(started), first_step, dev);
    if (checkpoint_every > 0 && (m.step % checkpoint_every == 0 || m.step == options.steps)) {
      RETURN_IF_ERROR(trainer->SaveCheckpoint(checkpoint));
    }
  }
  const double train_seconds = SecondsSince(started);
  const int64_t steps_run = trainer->step() - first_step;

  nlohmann::json summary;
  summary["method"] = train::TrainableSetName(options.method);
  summary["objective"] = rl ? "rl" : "sft";
  summary["steps"] = options.steps;
  summary["seed"] = options.seed;
  summary["train_seconds"] = train_seconds;
  summary["seconds_per_step"] = steps_run > 0 ? train_seconds / steps_run : 0.0;
  summary["trainable_parameters"] = trainer->num_trainable_parameters();
  summary["optimizer_state_bytes"] = trainer->optimizer_state_bytes();
  if (last_dev >= 0) summary["dev_accuracy"] = last_dev;
  if (!test_set.empty()) {
    ASSIGN_OR_RETURN(train::EvalResult result, evaluate(test_set));
    summary["test_accuracy"] = result.accuracy;
    summary["test_n"] = result.n;
    progress.Line(absl::StrFormat("test accuracy %.1f%% (%d/%d) on %s", 100 * result.accuracy,
                                  result.correct, result.n, source.task));
  }

  if (args.Has("out")) {
    const std::string out = args.Get("out", "");
    switch (options.method) {
      case train::TrainableSet::kSteering: {
        std::map<std::string, std::string> metadata = {
            {"task", source.task.empty() ? source.file : source.task},
            {"steps", absl::StrCat(options.steps)},
            {"seed", absl::StrCat(options.seed)}};
        if (summary.contains("test_accuracy")) {
          metadata["test_accuracy"] = absl::StrCat(summary["test_accuracy"].get<double>());
        }
        RETURN_IF_ERROR(SaveSteeringFile(out, trainer->SteeringVector(), model->config(),
                                         fs::path(model_options.model_dir).filename().string(),
                                         metadata));
        break;
      }
      case train::TrainableSet::kLora:
        RETURN_IF_ERROR(trainer->lora()->Save(out));
        break;
      case train::TrainableSet::kFull: {
        const std::string dtype = args.Get("save-dtype", "f32");
        if (dtype != "f32" && dtype != "bf16") {
          return absl::InvalidArgumentError("--save-dtype must be f32 or bf16");
        }
        RETURN_IF_ERROR(train::WriteModelFolder(*model, model_options.model_dir, out,
                                                dtype == "bf16" ? at::kBFloat16 : at::kFloat));
        break;
      }
    }
    summary["out"] = out;
    progress.Line(absl::StrCat("wrote ", out));
  }
  summary["peak_rss_bytes"] = PeakRssBytes();
  if (args.Bool("json")) std::cout << summary.dump() << "\n";
  return absl::OkStatus();
}

absl::Status RunEvalCommand(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(DataSource source, DataSourceFromArgs(args));
  ASSIGN_OR_RETURN(train::Split split, train::ParseSplit(args.Get("split", "test")));
  ASSIGN_OR_RETURN(int64_t count, args.GetInt("count", split == train::Split::kTest ? 500 : 200));
  ASSIGN_OR_RETURN(std::vector<Example> examples, LoadExamples(source, split, count));
  // --prefix forces the first words of the completion (appended to every prompt).
  const std::string prefix = args.Get("prefix", "");
  for (Example& e : examples) e.prompt += prefix;

  ASSIGN_OR_RETURN(std::unique_ptr<Transformer> model, LoadModelFromArgs(args));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(args.Get("model", "")));
  ASSIGN_OR_RETURN(SteeringRow steering, LoadSteeringFromArgs(args, model->config()));
  std::optional<LoraAdapter> lora;
  if (args.Has("lora")) {
    ASSIGN_OR_RETURN(lora, LoraAdapter::Load(args.Get("lora", ""), model->config(),
                                             model->device()));
  }
  ASSIGN_OR_RETURN(train::RewardOptions reward, RewardOptionsFromArgs(args, source));
  ASSIGN_OR_RETURN(std::unique_ptr<train::Verifier> verifier, train::Verifier::Create(reward));
  train::EvalOptions options;
  ASSIGN_OR_RETURN(options.max_new_tokens, args.GetInt("max-new-tokens", 64));
  ASSIGN_OR_RETURN(options.batch_size, args.GetInt("batch-size", options.batch_size));
  ASSIGN_OR_RETURN(options.temperature, args.GetDouble("temperature", 0.0));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  options.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(int64_t show, args.GetInt("show", 0));
  at::Tensor vector = steering.vector;
  if (vector.defined() && steering.scale != 1.0) vector = vector * steering.scale;
  ASSIGN_OR_RETURN(train::EvalResult result,
                   train::Evaluate(*model, *tokenizer, examples, *verifier, vector,
                                   lora ? &*lora : nullptr, options));
  for (int64_t i = 0; i < std::min<int64_t>(show, result.n); ++i) {
    std::printf("--- %s\n>>> %s\n(expected %s)\n", examples[i].prompt.c_str(),
                result.completions[i].c_str(), examples[i].answer.c_str());
  }
  if (args.Bool("json")) {
    nlohmann::json out = {{"accuracy", result.accuracy}, {"n", result.n}};
    std::cout << out.dump() << "\n";
  } else {
    std::printf("accuracy %.4f (%lld/%lld) in %.1f s\n", result.accuracy,
                static_cast<long long>(result.correct), static_cast<long long>(result.n),
                result.seconds);
  }
  return absl::OkStatus();
}

absl::Status RunInspectCommand(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(int64_t top, args.GetInt("top", 8));
  if (top < 1) return absl::InvalidArgumentError("--top must be >= 1");
  ASSIGN_OR_RETURN(std::unique_ptr<Transformer> model, LoadModelFromArgs(args));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(args.Get("model", "")));
  ASSIGN_OR_RETURN(SteeringRow steering, LoadSteeringFromArgs(args, model->config()));
  ASSIGN_OR_RETURN(at::Tensor lens, model->LogitLens(steering.vector * steering.scale));  // [L, V]
  const at::Tensor norms = steering.vector.norm(2, {1}).to(at::kCPU);                  // [L]
  const int64_t k = std::min<int64_t>(top, lens.size(1));
  const auto [values, indices] = lens.to(at::kCPU).topk(k, 1);
  nlohmann::json layers = nlohmann::json::array();
  for (int64_t l = 0; l < lens.size(0); ++l) {
    nlohmann::json boosted = nlohmann::json::array();
    std::string line = absl::StrFormat("layer %2d  norm %8.4f  boosts", l, norms[l].item<double>());
    for (int64_t j = 0; j < k; ++j) {
      const int32_t id = static_cast<int32_t>(indices[l][j].item<int64_t>());
      std::string text = "?";
      if (id < tokenizer->vocab_size()) {
        ASSIGN_OR_RETURN(text, tokenizer->Decode({id}));
      }
      const double logit = values[l][j].item<double>();
      boosted.push_back({{"id", id}, {"token", text}, {"logit", logit}});
      nlohmann::json quoted = text;
      absl::StrAppendFormat(&line, "  %s %+.2f", quoted.dump(-1, ' ', false,
                                                             nlohmann::json::error_handler_t::replace),
                            logit);
    }
    layers.push_back({{"layer", l}, {"norm", norms[l].item<double>()}, {"boosts", boosted}});
    if (!args.Bool("json")) std::printf("%s\n", line.c_str());
  }
  if (args.Bool("json")) std::cout << nlohmann::json{{"layers", layers}}.dump() << "\n";
  return absl::OkStatus();
}

}  // namespace steerd
