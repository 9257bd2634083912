// `steerd bench paper-table`: the central comparison of "Steering LLM Reasoning Through
// Bias-Only Adaptation" on this model and machine. It trains a steering vector, LoRA
// adapters (rank 1 and 8) and the full model with the same RL recipe and budget on one
// task, several seeds each, and prints method, trainable parameters, optimizer state,
// peak RSS, seconds per step and held-out accuracy (mean +- std over seeds). Each run
// is a child `steerd train` process, so its peak RSS is its own.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"
#include "server/cli/commands.h"
#include "server/cli/process_info.h"
#include "server/model/config.h"
#include "server/model/weights.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

std::string ShellQuote(const std::string& s) {
  return "'" + absl::StrReplaceAll(s, {{"'", "'\\''"}}) + "'";
}

// Runs `steerd <args>` and returns the JSON object on its last line of stdout.
absl::StatusOr<nlohmann::json> RunSteerdJson(const std::vector<std::string>& args) {
  std::string command = ShellQuote("/proc/self/exe");
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) command = ShellQuote(std::string(self, n));
  for (const std::string& a : args) absl::StrAppend(&command, " ", ShellQuote(a));
  std::FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError(absl::StrCat("cannot run: ", command));
  std::string output, last_line;
  char buffer[4096];
  while (std::fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  const int status = pclose(pipe);
  if (status != 0) {
    return absl::InternalError(absl::StrCat("`", command, "` failed (status ", status, ")"));
  }
  while (!output.empty() && output.back() == '\n') output.pop_back();
  last_line = output.substr(output.rfind('\n') == std::string::npos ? 0 : output.rfind('\n') + 1);
  nlohmann::json parsed = nlohmann::json::parse(last_line, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_object()) {
    return absl::InternalError(absl::StrCat("`", command, "` printed no JSON summary"));
  }
  return parsed;
}

struct Method {
  std::string label;              // "lora r=8"
  std::vector<std::string> flags;  // Passed to `steerd train`.
  std::string key;                // JSON key prefix: "steering", "lora_r8", ...
};

double Mean(const std::vector<double>& v) {
  double sum = 0.0;
  for (double x : v) sum += x;
  return v.empty() ? 0.0 : sum / v.size();
}

double StdDev(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  const double m = Mean(v);
  double sq = 0.0;
  for (double x : v) sq += (x - m) * (x - m);
  return std::sqrt(sq / (v.size() - 1));
}

}  // namespace

absl::Status RunPaperTableCommand(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(std::string model, args.Required("model"));
  const std::string task = args.Get("task", "arith");
  ASSIGN_OR_RETURN(int64_t seeds, args.GetInt("seeds", 3));
  if (seeds < 1) return absl::InvalidArgumentError("--seeds must be >= 1");
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model));
  int64_t base_params = 0;
  for (const auto& [name, shape] : ExpectedWeightShapes(config)) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    base_params += n;
  }
  // The shared recipe: everything but the method and its learning rate is the same.
  std::vector<std::string> recipe = {"--model", model, "--task", task, "--json", "--quiet"};
  for (const char* flag : {"steps", "prompts-per-step", "rollouts", "test-count", "threads"}) {
    if (args.Has(flag)) {
      recipe.push_back(absl::StrCat("--", flag));
      recipe.push_back(args.Get(flag, ""));
    }
  }
  ASSIGN_OR_RETURN(nlohmann::json base,
                   RunSteerdJson({"eval", "--model", model, "--task", task, "--json"}));
  const double base_acc = base.value("accuracy", 0.0);

  const std::vector<Method> methods = {
      {"steering", {"--method", "steering"}, "steering"},
      {"lora r=1", {"--method", "lora", "--lora-rank", "1"}, "lora_r1"},
      {"lora r=8", {"--method", "lora", "--lora-rank", "8"}, "lora"},
      {"full", {"--method", "full"}, "full"},
  };
  nlohmann::json result = {{"task", task}, {"seeds", seeds}, {"base_acc", base_acc},
                           {"base_parameters", base_params}, {"cpu", CpuModel()}};
  std::printf("steerd bench paper-table: %s, task %s, %lld seeds, %s\n", model.c_str(),
              task.c_str(), static_cast<long long>(seeds), CpuModel().c_str());
  std::printf("%-10s %12s %10s %14s %12s %8s %16s\n", "method", "trainable", "% of base",
              "optim. bytes", "peak RSS MB", "s/step", "test acc");
  std::printf("%-10s %12s %10s %14s %12s %8s %10.1f%%\n", "base", "-", "-", "-", "-", "-",
              100 * base_acc);
  for (const Method& m : methods) {
    std::vector<double> accs, per_step, rss;
    nlohmann::json last;
    for (int64_t seed = 0; seed < seeds; ++seed) {
      std::vector<std::string> cmd = {"train"};
      cmd.insert(cmd.end(), recipe.begin(), recipe.end());
      cmd.insert(cmd.end(), m.flags.begin(), m.flags.end());
      cmd.push_back("--seed");
      cmd.push_back(absl::StrCat(seed));
      ASSIGN_OR_RETURN(last, RunSteerdJson(cmd));
      accs.push_back(last.value("test_accuracy", 0.0));
      per_step.push_back(last.value("seconds_per_step", 0.0));
      rss.push_back(last.value("peak_rss_bytes", 0.0));
    }
    const int64_t trainable = last.value("trainable_parameters", int64_t{0});
    const int64_t optimizer_bytes = last.value("optimizer_state_bytes", int64_t{0});
    std::printf("%-10s %12lld %9.4f%% %14lld %12.1f %8.3f %7.1f%% +- %4.1f\n", m.label.c_str(),
                static_cast<long long>(trainable), 100.0 * trainable / base_params,
                static_cast<long long>(optimizer_bytes), Mean(rss) / 1e6, Mean(per_step),
                100 * Mean(accs), 100 * StdDev(accs));
    std::fflush(stdout);
    result[m.key + "_acc"] = Mean(accs);
    result[m.key + "_acc_std"] = StdDev(accs);
    result[m.key + "_trainable_parameters"] = trainable;
    result[m.key + "_optimizer_state_bytes"] = optimizer_bytes;
    result[m.key + "_seconds_per_step"] = Mean(per_step);
    result[m.key + "_peak_rss_bytes"] = Mean(rss);
  }
  const double full_gain = result["full_acc"].get<double>() - base_acc;
  const double steering_gain = result["steering_acc"].get<double>() - base_acc;
  result["steering_recovery"] = full_gain > 0 ? steering_gain / full_gain : 0.0;
  result["optimizer_state_ratio_full_over_steering"] =
      static_cast<double>(result["full_optimizer_state_bytes"].get<int64_t>()) /
      static_cast<double>(std::max<int64_t>(1, result["steering_optimizer_state_bytes"].get<int64_t>()));
  std::printf("steering recovers %.1f%% of full fine-tuning's gain over the base, with %.0fx "
              "less optimizer state\n",
              100 * result["steering_recovery"].get<double>(),
              result["optimizer_state_ratio_full_over_steering"].get<double>());
  if (args.Bool("json")) std::cout << result.dump() << "\n";
  return absl::OkStatus();
}

}  // namespace steerd
