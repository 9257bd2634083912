// `steerd logits` and `steerd generate`: one model, one sequence, from the command line.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/cli/commands.h"
#include "server/cli/model_flags.h"
#include "server/model/generator.h"
#include "server/model/steering_file.h"
#include "server/model/tokenizer.h"
#include "server/model/transformer.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

absl::StatusOr<std::vector<int32_t>> IdsFlag(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(std::vector<int64_t> ids, args.GetIntList("ids"));
  std::vector<int32_t> out;
  for (int64_t id : ids) {
    if (id < 0 || id > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("--ids: ", id, " is not a token id"));
    }
    out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

}  // namespace

absl::Status RunLogitsCommand(const ParsedFlags& args) {
  if (!args.Bool("json")) {
    return absl::InvalidArgumentError("logits prints JSON only: pass --json");
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, IdsFlag(args));
  ASSIGN_OR_RETURN(auto model, LoadModelFromArgs(args));
  ASSIGN_OR_RETURN(SteeringRow steering, LoadSteeringFromArgs(args, model->config()));
  ForwardInput input;
  input.tokens = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()),
                            at::TensorOptions().dtype(at::kLong))
                     .view({1, -1});
  input.logits = ForwardInput::Logits::kAll;
  ASSIGN_OR_RETURN(input.steering, model->MakeSteeringBatch({steering}));
  ASSIGN_OR_RETURN(at::Tensor logits, model->Forward(input, nullptr));  // [1, T, V]
  const at::Tensor rows = logits[0].to(at::kCPU).contiguous();
  nlohmann::json out = nlohmann::json::object();
  out["logits"] = nlohmann::json::array();
  for (int64_t t = 0; t < rows.size(0); ++t) {
    const float* row = rows[t].data_ptr<float>();
    out["logits"].push_back(std::vector<float>(row, row + rows.size(1)));
  }
  std::cout << out.dump() << "\n";
  return absl::OkStatus();
}

absl::Status RunGenerateCommand(const ParsedFlags& args) {
  if (args.Has("prompt") == args.Has("ids")) {
    return absl::InvalidArgumentError("pass exactly one of --prompt TEXT or --ids 1,2,3");
  }
  ASSIGN_OR_RETURN(auto model, LoadModelFromArgs(args));
  ASSIGN_OR_RETURN(auto tokenizer, LoadTokenizerIfPresent(args.Get("model", "")));

  GenerationRequest request;
  if (args.Has("prompt")) {
    if (tokenizer == nullptr) {
      return absl::FailedPreconditionError(
          "--prompt needs tokenizer.json in the model folder (or pass --ids)");
    }
    ASSIGN_OR_RETURN(request.prompt, tokenizer->Encode(args.Get("prompt", "")));
  } else {
    ASSIGN_OR_RETURN(request.prompt, IdsFlag(args));
  }
  ASSIGN_OR_RETURN(request.max_new_tokens, args.GetInt("max-new-tokens", 64));
  ASSIGN_OR_RETURN(request.sampling.temperature, args.GetDouble("temperature", 0.0));
  ASSIGN_OR_RETURN(request.sampling.top_p, args.GetDouble("top-p", 1.0));
  ASSIGN_OR_RETURN(request.sampling.top_k, args.GetInt("top-k", 0));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  request.sampling.seed = static_cast<uint64_t>(seed);
  if (args.Has("stop")) request.stop_strings.push_back(args.Get("stop", ""));
  request.ignore_eos = args.Bool("ignore-eos");
  request.return_logprobs = args.Bool("logprobs");
  ASSIGN_OR_RETURN(SteeringRow steering, LoadSteeringFromArgs(args, model->config()));
  request.steering = steering.vector;
  request.steering_scale = steering.scale;

  const bool json = args.Bool("json");
  Generator generator(model.get(), tokenizer.get());
  TextCallback stream;
  if (!json) {
    stream = [](size_t, const std::string& text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    };
  }
  ASSIGN_OR_RETURN(std::vector<GenerationResult> results, generator.Generate({request}, stream));
  const GenerationResult& result = results[0];
  if (json) {
    nlohmann::json out;
    out["ids"] = result.tokens;
    out["text"] = result.text;
    out["finish_reason"] = FinishReasonName(result.finish_reason);
    if (request.return_logprobs) out["logprobs"] = result.logprobs;
    std::cout << out.dump(-1, ' ', /*ensure_ascii=*/false,
                          nlohmann::json::error_handler_t::replace)
              << "\n";
  } else if (tokenizer == nullptr) {
    for (size_t i = 0; i < result.tokens.size(); ++i) {
      std::printf("%s%d", i ? " " : "", result.tokens[i]);
    }
    std::printf("\n");
  } else {
    std::printf("\n");
  }
  return absl::OkStatus();
}

}  // namespace steerd
