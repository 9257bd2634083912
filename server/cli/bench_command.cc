// `steerd bench decode`: decode throughput of the model runtime against the machine's
// own limits. It measures memory read bandwidth in the same run, so batch-1 decode
// (which must stream every weight once per token) is reported as a fraction of what
// the hardware allows, and reports load time, peak memory, batched throughput, the
// cost of per-row steering and tokenizer speed. Prints a table and a last JSON line.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/cli/commands.h"
#include "server/cli/model_flags.h"
#include "server/cli/process_info.h"
#include "server/cli/tokenize_command.h"
#include "server/model/generator.h"
#include "server/model/tokenizer.h"
#include "server/model/torch_util.h"
#include "server/model/transformer.h"
#include "server/util/status_macros.h"
#include "server/util/stopwatch.h"

namespace steerd {
namespace {

namespace fs = std::filesystem;


// Memory read bandwidth: the best of several summations of a 1 GiB buffer, far larger
// than any cache, with the same threads the model uses.
double MeasureReadBandwidthGbs() {
  const int64_t floats = int64_t{1} << 28;  // 1 GiB
  at::Tensor buffer = at::ones({floats}, at::kFloat);
  double best = 0.0;
  for (int i = 0; i < 6; ++i) {
    const auto start = Clock::now();
    volatile float sum = buffer.sum().item<float>();
    (void)sum;
    best = std::max(best, static_cast<double>(floats) * 4 / SecondsSince(start) / 1e9);
  }
  return best;
}

// Real English text for the tokenizer: Debian's licence texts.
std::string RealText() {
  std::string text;
  for (const char* name : {"GPL-3", "Apache-2.0", "LGPL-3", "MPL-2.0", "GPL-2", "Artistic"}) {
    std::ifstream in(fs::path("/usr/share/common-licenses") / name);
    std::stringstream content;
    content << in.rdbuf();
    text += content.str();
  }
  return text;
}

struct DecodeRun {
  double tok_s = 0.0;    // Best decode tokens per second over the repeats.
  double seconds = 0.0;  // Decode seconds of the best repeat.
};

absl::StatusOr<DecodeRun> BenchDecode(const Transformer& model, const Tokenizer* tokenizer,
                                      const std::vector<int32_t>& prompt, int64_t batch,
                                      int64_t new_tokens, const std::vector<at::Tensor>& vectors,
                                      int repeats) {
  std::vector<GenerationRequest> requests(batch);
  for (int64_t b = 0; b < batch; ++b) {
    requests[b].prompt = prompt;
    requests[b].max_new_tokens = new_tokens;
    requests[b].ignore_eos = true;
    if (!vectors.empty()) requests[b].steering = vectors[b % vectors.size()];
  }
  Generator generator(&model, tokenizer);
  DecodeRun best;
  for (int r = 0; r < repeats; ++r) {
    GenerationStats stats;
    ASSIGN_OR_RETURN(auto results, generator.Generate(requests, nullptr, &stats));
    const double tok_s = static_cast<double>(batch * stats.decode_steps) / stats.decode_seconds;
    if (tok_s > best.tok_s) best = {tok_s, stats.decode_seconds};
  }
  return best;
}

}  // namespace

absl::Status RunBenchDecodeCommand(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(Transformer::Options options, TransformerOptionsFromArgs(args));
  std::vector<int64_t> batches = {1, 16};
  if (args.Has("batch")) {
    ASSIGN_OR_RETURN(batches, args.GetIntList("batch"));
  }
  ASSIGN_OR_RETURN(int64_t new_tokens, args.GetInt("new-tokens", 32));
  ASSIGN_OR_RETURN(int64_t prompt_tokens, args.GetInt("prompt-tokens", 16));
  ASSIGN_OR_RETURN(int64_t repeats, args.GetInt("repeats", 3));
  if (new_tokens < 2 || prompt_tokens < 1 || repeats < 1) {
    return absl::InvalidArgumentError("--new-tokens >= 2, --prompt-tokens >= 1, --repeats >= 1");
  }
  for (int64_t b : batches) {
    if (b < 1 || b > 1024) return absl::InvalidArgumentError("--batch sizes must be in [1, 1024]");
  }

  const auto load_start = Clock::now();
  ASSIGN_OR_RETURN(auto model, Transformer::Create(options));
  std::unique_ptr<Tokenizer> tokenizer;
  if (fs::exists(fs::path(options.model_dir) / "tokenizer.json")) {
    ASSIGN_OR_RETURN(tokenizer, Tokenizer::Load(options.model_dir));
  }
  const double load_seconds = SecondsSince(load_start);
  const ModelConfig& config = model->config();

  const std::string text = RealText();
  std::vector<int32_t> prompt;
  if (tokenizer != nullptr) {
    ASSIGN_OR_RETURN(prompt, tokenizer->Encode(text.substr(0, 4096)));
  }
  prompt.resize(prompt_tokens, 1);  // Pads with id 1 when the text is short or absent.

  // Warm-up: first-touch of mapped weights and one-time kernel setup.
  RETURN_IF_ERROR(BenchDecode(*model, tokenizer.get(), prompt, 1, 4, {}, 1).status());

  nlohmann::json result;
  std::vector<std::pair<std::string, std::string>> table;
  for (int64_t batch : batches) {
    ASSIGN_OR_RETURN(DecodeRun run, BenchDecode(*model, tokenizer.get(), prompt, batch,
                                                new_tokens, {}, static_cast<int>(repeats)));
    result[absl::StrCat("decode_tok_s_b", batch)] = run.tok_s;
    table.push_back({absl::StrCat("decode tok/s, batch ", batch), absl::StrCat(run.tok_s)});
  }

  // Steering cost: 16 rows with 16 different vectors vs the same rows unsteered,
  // alternated so drift in machine speed hits both alike.
  const int64_t steer_batch = 16;
  std::vector<at::Tensor> vectors;
  for (int64_t i = 0; i < steer_batch; ++i) {
    vectors.push_back(at::randn({config.num_layers, config.hidden_size}) * 0.01);
  }
  double steered = 1e30, unsteered = 1e30;
  for (int64_t r = 0; r < std::max<int64_t>(repeats, 3); ++r) {
    ASSIGN_OR_RETURN(DecodeRun plain,
                     BenchDecode(*model, tokenizer.get(), prompt, steer_batch, new_tokens, {}, 1));
    ASSIGN_OR_RETURN(DecodeRun steer, BenchDecode(*model, tokenizer.get(), prompt, steer_batch,
                                                  new_tokens, vectors, 1));
    unsteered = std::min(unsteered, plain.seconds);
    steered = std::min(steered, steer.seconds);
  }
  const double steering_overhead = steered / unsteered - 1.0;

  double tokenizer_mb_s = 0.0;
  if (tokenizer != nullptr) {
    ASSIGN_OR_RETURN(tokenizer_mb_s, MeasureTokenizerMbPerSecond(*tokenizer, text, 2.0));
  }

  // Peak memory of the model work, read before the bandwidth probe allocates 1 GiB.
  const int64_t peak_rss = PeakRssBytes();
  const double bandwidth = MeasureReadBandwidthGbs();

  // Bytes one decode step must stream at batch 1: every weight, except that an
  // untied embedding table is only gathered from.
  int64_t bytes_per_step = model->weight_bytes();
  if (!config.tie_word_embeddings) {
    bytes_per_step -= config.vocab_size * config.hidden_size * at::elementSize(model->dtype());
  }
  const double b1 = result.value("decode_tok_s_b1", 0.0);
  result["bandwidth_gbs"] = bandwidth;
  result["weight_bytes"] = model->weight_bytes();
  result["load_seconds"] = load_seconds;
  result["peak_rss_bytes"] = peak_rss;
  result["peak_rss_over_weights"] = static_cast<double>(peak_rss) / model->weight_bytes();
  result["bound_fraction_b1"] = b1 * bytes_per_step / (bandwidth * 1e9);
  result["steering_overhead_b16"] = steering_overhead;
  result["tokenizer_mb_s"] = tokenizer_mb_s;
  result["dtype"] = ScalarTypeName(model->dtype());
  result["threads"] = at::get_num_threads();
  result["new_tokens"] = new_tokens;
  result["prompt_tokens"] = prompt_tokens;
  result["cpu"] = CpuModel();

  table.insert(table.begin(),
               {{"memory read bandwidth (GB/s)", absl::StrCat(bandwidth)},
                {"weights (bytes)", absl::StrCat(model->weight_bytes())},
                {"load (s)", absl::StrCat(load_seconds)},
                {"peak RSS (bytes)", absl::StrCat(peak_rss)}});
  table.push_back({"batch-1 bandwidth bound fraction",
                   absl::StrCat(result["bound_fraction_b1"].get<double>())});
  table.push_back({"steering overhead, batch 16", absl::StrCat(steering_overhead)});
  table.push_back({"tokenizer (MB/s)", absl::StrCat(tokenizer_mb_s)});
  std::printf("steerd bench decode: %s, %lld layers x %lld, %s, %d threads, %s\n",
              options.model_dir.c_str(), static_cast<long long>(config.num_layers),
              static_cast<long long>(config.hidden_size), ScalarTypeName(model->dtype()).c_str(),
              at::get_num_threads(), CpuModel().c_str());
  for (const auto& [name, value] : table) std::printf("  %-36s %s\n", name.c_str(), value.c_str());
  if (args.Bool("json")) std::cout << result.dump() << "\n";
  return absl::OkStatus();
}

}  // namespace steerd
