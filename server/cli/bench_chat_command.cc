// `steerd bench chat`: chat-shaped serving, where every turn of a conversation resends
// the system prompt and the whole history. Three measurements:
//  - Conversations: simulated users of two tenants (one steers with its vector, one does
//    not) hold multi-turn conversations at once against steerd in-process over gRPC
//    (localhost TCP), each turn's prompt being a shared system prompt, the history and a
//    new user message; once with the prefix cache on and once with it off, with the
//    same conversations. Time to first token of turns 2+, tokens/s over the whole
//    scenario, and the prefix cache's hit rate.
//  - Rows at one KV budget: a burst of requests with mixed prompt lengths against a
//    server whose KV cache holds 4 of the longest; the most rows the paged engine ran
//    at once, against what a contiguous cache (each row as long as the longest, the
//    layout before paging) holds in the same bytes: 4.
//  - Decode step time, paged vs contiguous: the model alone, 16 rows of a 512-token
//    context, alternating pairs of decode steps on each cache layout (medians of 64).
// Prints aligned lines and a last JSON line (only the JSON line with --json).
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/steerd_client.h"
#include "nlohmann/json.hpp"
#include "prometheus/metric_family.h"
#include "server/cli/bench_stats.h"
#include "server/cli/commands.h"
#include "server/cli/default_model.h"
#include "server/cli/process_info.h"
#include "server/cli/server_setup.h"
#include "server/cli/temp_dir.h"
#include "server/model/safetensors.h"
#include "server/model/tokenizer.h"
#include "server/model/torch_util.h"
#include "server/model/transformer.h"
#include "server/tenancy/sha256.h"
#include "server/util/status_macros.h"
#include "server/util/stopwatch.h"

namespace steerd {
namespace {

constexpr char kServedName[] = "bench";
constexpr char kSteeredTenant[] = "acme";
constexpr char kPlainTenant[] = "globex";
constexpr char kVectorName[] = "support";
// Rows of the longest request a contiguous cache of the burst's budget holds.
constexpr int64_t kContiguousRows = 4;
// The decode-step comparison: rows, context, steps per round, rounds.
constexpr int64_t kDecodeRows = 16;
constexpr int64_t kDecodeContext = 512;
constexpr int kDecodeSteps = 2;
constexpr int kDecodeRounds = 32;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

struct BenchChatFlags {
  std::string model_dir;
  std::string dtype;
  std::string device;
  int64_t threads = 0;
  int64_t users = 4;
  int64_t turns_min = 4;
  int64_t turns_max = 8;
  int64_t system_tokens = 1000;
  int64_t history_tokens = 1500;
  int64_t new_tokens = 32;
  int64_t burst = 24;
  int64_t max_batch = 64;
  bool json_only = false;
  // Which measurements run (--phases): the conversations, the burst, the decode steps.
  bool conversations = true, burst_rows = true, decode_steps = true;
};

absl::StatusOr<BenchChatFlags> ParseBenchChatFlags(const ParsedFlags& args) {
  BenchChatFlags f;
  f.model_dir = args.Get("model", "");
  if (f.model_dir.empty()) {
    ASSIGN_OR_RETURN(f.model_dir, FindDefaultModel());
  }
  f.dtype = args.Get("dtype", "auto");
  f.device = args.Get("device", "auto");
  ASSIGN_OR_RETURN(f.threads, args.GetInt("threads", f.threads));
  ASSIGN_OR_RETURN(f.users, args.GetInt("users", f.users));
  ASSIGN_OR_RETURN(f.turns_min, args.GetInt("turns-min", f.turns_min));
  ASSIGN_OR_RETURN(f.turns_max, args.GetInt("turns-max", f.turns_max));
  ASSIGN_OR_RETURN(f.system_tokens, args.GetInt("system-tokens", f.system_tokens));
  ASSIGN_OR_RETURN(f.history_tokens, args.GetInt("history-tokens", f.history_tokens));
  ASSIGN_OR_RETURN(f.new_tokens, args.GetInt("new-tokens", f.new_tokens));
  ASSIGN_OR_RETURN(f.burst, args.GetInt("burst", f.burst));
  ASSIGN_OR_RETURN(f.max_batch, args.GetInt("max-batch", f.max_batch));
  f.json_only = args.Bool("json");
  if (args.Has("phases")) {
    f.conversations = f.burst_rows = f.decode_steps = false;
    for (absl::string_view phase : absl::StrSplit(args.Get("phases"), ',')) {
      if (phase == "conversations") {
        f.conversations = true;
      } else if (phase == "rows") {
        f.burst_rows = true;
      } else if (phase == "decode") {
        f.decode_steps = true;
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            "--phases: '", phase, "' is not one of conversations, rows, decode"));
      }
    }
  }
  if (f.users < 2 || f.users > 256 || f.turns_min < 2 || f.turns_max < f.turns_min ||
      f.turns_max > 64 || f.system_tokens < 1 || f.history_tokens <= f.system_tokens ||
      f.new_tokens < 1 || f.burst < 1 || f.burst > 1024 || f.threads < 0 || f.max_batch < 1) {
    return absl::InvalidArgumentError(
        "--users 2-256, --turns-min >= 2, --turns-max from --turns-min to 64, "
        "--system-tokens >= 1, --history-tokens > --system-tokens, --new-tokens >= 1, "
        "--burst 1-1024, --threads >= 0, --max-batch >= 1");
  }
  return f;
}

// Text of at least `tokens` tokens under `tokenizer`: words drawn from a small
// vocabulary of support-desk prose.
absl::StatusOr<std::string> TextOfTokens(const Tokenizer& tokenizer, int64_t tokens,
                                         std::mt19937_64& rng) {
  static const char* const kWords[] = {
      "the",     "customer", "account",  "billing", "invoice", "refund",  "policy",
      "please",  "explain",  "step",     "check",   "order",   "number",  "shipping",
      "answer",  "clearly",  "politely", "and",     "with",    "for",     "before",
      "after",   "always",   "never",    "support", "ticket",  "status",  "update",
      "product", "warranty", "return",   "within",  "days",    "of",      "purchase"};
  std::uniform_int_distribution<size_t> pick(0, std::size(kWords) - 1);
  std::string text;
  int64_t have = 0, words = 0;
  while (have < tokens) {
    // Add about the words the missing tokens take at the rate so far, then measure again
    // (it ends at most one word past `tokens`).
    const double per_word = words == 0 ? 8.0 : static_cast<double>(have) / words;
    const int64_t add = std::max<int64_t>(1, static_cast<int64_t>((tokens - have) / per_word));
    for (int64_t i = 0; i < add; ++i) absl::StrAppend(&text, " ", kWords[pick(rng)]);
    words += add;
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(text));
    have = static_cast<int64_t>(ids.size());
  }
  return text;
}

absl::StatusOr<std::string> RandomVectorFile(std::mt19937_64& rng, int64_t layers,
                                             int64_t hidden) {
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> values(layers * hidden);
  for (float& v : values) v = normal(rng);
  return SerializeSafetensors({{"steering", DType::kF32, {layers, hidden}, values.data()}},
                              {{"format", "steerd.steering.v1"}});
}

// One user's conversation: a tenant, and a user message per turn.
struct Conversation {
  bool steered = false;
  std::vector<std::string> messages;
};

// What one run of every conversation measured.
struct ChatRun {
  std::vector<double> ttft_later_ms;  // Turns 2+.
  std::vector<double> ttft_first_ms;  // Turn 1.
  int64_t tokens = 0;
  double seconds = 0;
  double hit_tokens = 0;
  double queried_tokens = 0;
  double last_prompt_tokens = 0;  // Mean prompt length of the users' last turns.
};

double CounterSum(ServingMetrics& metrics, const std::string& name, const std::string& label,
                  const std::string& value) {
  double sum = 0;
  for (const prometheus::MetricFamily& family : metrics.registry()->Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      for (const prometheus::ClientMetric::Label& l : metric.label) {
        if (l.name == label && l.value == value) sum += metric.counter.value + metric.gauge.value;
      }
    }
  }
  return sum;
}

// A server for the benchmark: both tenants, the model under kServedName, the given KV
// cache and prefix caching. `keys` receives each tenant's API key.
struct ChatServer {
  std::unique_ptr<ComposedServer> server;
  std::unique_ptr<client::SteerdClient> steered;
  std::unique_ptr<client::SteerdClient> plain;
};

absl::StatusOr<ChatServer> StartChatServer(const BenchChatFlags& flags, const TempDir& dir,
                                           bool prefix_caching, int64_t kv_cache_bytes,
                                           int64_t max_batch) {
  static std::atomic<int> serial{0};
  ComposedServer::Options options;
  options.core.models = {{kServedName, flags.model_dir}};
  options.core.dtype = flags.dtype;
  options.core.device = flags.device;
  options.core.num_threads = static_cast<int>(flags.threads);
  options.core.max_batch_size = max_batch;
  options.core.max_waiting = 4096;
  options.core.prefix_caching = prefix_caching;
  options.core.kv_cache_bytes = kv_cache_bytes;
  options.server.listen_address = "127.0.0.1:0";
  options.data_dir = absl::StrCat(dir.path(), "/server", serial++);
  std::vector<std::pair<std::string, std::string>> keys;
  for (const char* name : {kSteeredTenant, kPlainTenant}) {
    const std::string key = absl::StrCat("sk-bench-", name);
    Tenant tenant;
    tenant.name = name;
    tenant.api_key_sha256_hex = Sha256Hex(key);
    tenant.limits.concurrent_generations = 4096;
    options.tenants.push_back(tenant);
    keys.emplace_back(name, key);
  }
  ChatServer chat;
  ASSIGN_OR_RETURN(chat.server, ComposedServer::Start(options));
  RETURN_IF_ERROR(chat.server->LoadModels());
  for (const auto& [name, key] : keys) {
    client::ClientOptions client_options;
    client_options.address = absl::StrCat("127.0.0.1:", chat.server->port());
    client_options.api_key = key;
    client_options.timeout = absl::Minutes(30);
    ASSIGN_OR_RETURN(auto c, client::SteerdClient::Create(client_options));
    (name == std::string(kSteeredTenant) ? chat.steered : chat.plain) = std::move(c);
  }
  return chat;
}

// Every user holds its conversation at once; each turn waits for the previous answer.
absl::StatusOr<ChatRun> RunConversations(ChatServer& chat, const std::string& system,
                                         const std::vector<Conversation>& conversations,
                                         int64_t new_tokens) {
  ServingMetrics& metrics = *chat.server->metrics();
  const double hit_before =
      CounterSum(metrics, "steerd_prefix_cache_tokens_total", "result", "hit");
  const double queried_before =
      CounterSum(metrics, "steerd_prefix_cache_tokens_total", "result", "queried");
  struct UserSamples {
    std::vector<double> first, later;
    int64_t tokens = 0;
    int64_t last_prompt_tokens = 0;
    absl::Status status;
  };
  std::vector<UserSamples> samples(conversations.size());
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (size_t u = 0; u < conversations.size(); ++u) {
    threads.emplace_back([&, u] {
      const Conversation& conversation = conversations[u];
      UserSamples& mine = samples[u];
      client::SteerdClient& client = conversation.steered ? *chat.steered : *chat.plain;
      std::string history = system;
      for (size_t turn = 0; turn < conversation.messages.size(); ++turn) {
        absl::StrAppend(&history, "\nUser:", conversation.messages[turn], "\nAssistant:");
        v1::GenerateRequest request;
        request.set_model(kServedName);
        request.set_prompt(history);
        request.set_ignore_eos(true);
        request.mutable_sampling()->set_max_new_tokens(static_cast<int32_t>(new_tokens));
        if (conversation.steered) request.mutable_steering()->set_vector(kVectorName);
        const Clock::time_point call_start = Clock::now();
        bool first = true;
        std::string answer;
        mine.status = client.GenerateStream(request, [&](const v1::GenerateChunk& chunk) {
          if (chunk.token_ids_size() > 0 && first) {
            (turn == 0 ? mine.first : mine.later).push_back(Ms(Clock::now() - call_start));
            first = false;
          }
          mine.tokens += chunk.token_ids_size();
          answer += chunk.text();
          if (chunk.has_usage()) mine.last_prompt_tokens = chunk.usage().prompt_tokens();
          return true;
        });
        if (!mine.status.ok()) return;
        history += answer;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ChatRun run;
  run.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (UserSamples& s : samples) {
    if (!s.status.ok()) {
      return absl::Status(s.status.code(),
                          absl::StrCat("a conversation failed: ", s.status.message()));
    }
    run.ttft_first_ms.insert(run.ttft_first_ms.end(), s.first.begin(), s.first.end());
    run.ttft_later_ms.insert(run.ttft_later_ms.end(), s.later.begin(), s.later.end());
    run.tokens += s.tokens;
    run.last_prompt_tokens += static_cast<double>(s.last_prompt_tokens) / samples.size();
  }
  run.hit_tokens =
      CounterSum(metrics, "steerd_prefix_cache_tokens_total", "result", "hit") - hit_before;
  run.queried_tokens =
      CounterSum(metrics, "steerd_prefix_cache_tokens_total", "result", "queried") -
      queried_before;
  return run;
}

// The burst: requests with prompts of log-uniform length up to the longest history, all
// at once, against a cache of kContiguousRows longest requests; the most rows running
// at once (sampled every millisecond).
absl::StatusOr<int64_t> MaxPagedRows(const BenchChatFlags& flags, const TempDir& dir,
                                     const ModelInfo& info, const Tokenizer& tokenizer,
                                     std::mt19937_64& rng) {
  const int64_t longest = flags.history_tokens + flags.new_tokens;
  // Positions -> bytes: the pool's bytes over its positions, as the server reported.
  const double bytes_per_position =
      static_cast<double>(info.kv_cache_bytes) / static_cast<double>(info.kv_cache_positions);
  const int64_t budget =
      static_cast<int64_t>(std::ceil(kContiguousRows * longest * bytes_per_position));
  ASSIGN_OR_RETURN(ChatServer chat, StartChatServer(flags, dir, /*prefix_caching=*/false, budget,
                                                    /*max_batch=*/1024));
  std::vector<std::string> prompts;
  std::uniform_real_distribution<double> log_length(
      std::log(32.0), std::log(static_cast<double>(flags.history_tokens)));
  for (int64_t i = 0; i < flags.burst; ++i) {
    ASSIGN_OR_RETURN(std::string text,
                     TextOfTokens(tokenizer, static_cast<int64_t>(std::exp(log_length(rng))), rng));
    prompts.push_back(std::move(text));
  }
  std::atomic<bool> done{false};
  std::atomic<int64_t> most{0};
  ServingMetrics& metrics = *chat.server->metrics();
  std::thread sampler([&] {
    while (!done.load()) {
      const int64_t running = static_cast<int64_t>(
          CounterSum(metrics, "steerd_running_sequences", "model", kServedName));
      most.store(std::max(most.load(), running));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  std::vector<absl::Status> statuses(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      v1::GenerateRequest request;
      request.set_model(kServedName);
      request.set_prompt(prompts[i]);
      request.set_ignore_eos(true);
      request.mutable_sampling()->set_max_new_tokens(static_cast<int32_t>(flags.new_tokens));
      statuses[i] = chat.plain->Generate(request).status();
    });
  }
  for (std::thread& t : threads) t.join();
  done.store(true);
  sampler.join();
  for (const absl::Status& status : statuses) RETURN_IF_ERROR(status);
  return most.load();
}

// Median decode step (ms) of each layout: 16 rows of random tokens prefilled to 512
// positions (or the model's context), then pairs of decode steps on the contiguous and
// the paged cache, in ABBA order.
struct DecodeTimes {
  int64_t context = 0;
  double contiguous_ms = 0;
  double paged_ms = 0;
};

absl::StatusOr<DecodeTimes> DecodeStepTimes(const BenchChatFlags& flags,
                                                          std::mt19937_64& rng) {
  Transformer::Options options;
  options.model_dir = flags.model_dir;
  options.dtype = flags.dtype;
  options.device = flags.device;
  options.num_threads = static_cast<int>(flags.threads > 0 ? flags.threads : 0);
  ASSIGN_OR_RETURN(std::unique_ptr<Transformer> model, Transformer::Create(options));
  if (flags.threads == 0) at::set_num_threads(DefaultComputeThreads(/*spare_cores=*/1));
  const int64_t context =
      std::min<int64_t>(kDecodeContext, model->config().max_position_embeddings);
  const int64_t B = kDecodeRows, prompt = context - kDecodeRounds * kDecodeSteps - 1;
  const int64_t vocab = model->config().vocab_size;
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
  std::vector<std::vector<int32_t>> prompts(B, std::vector<int32_t>(prompt));
  for (auto& p : prompts) {
    for (int32_t& t : p) t = token(rng);
  }
  // Contiguous: the layout before paging (KvCache, Transformer::Forward).
  KvCache contiguous = model->NewCache(B, context);
  {
    std::vector<int64_t> flat;
    for (const auto& p : prompts) flat.insert(flat.end(), p.begin(), p.end());
    ForwardInput input;
    input.tokens = at::tensor(flat, at::TensorOptions().dtype(at::kLong)).view({B, prompt});
    RETURN_IF_ERROR(model->Forward(input, &contiguous).status());
  }
  // Paged: the engine's layout.
  ASSIGN_OR_RETURN(std::unique_ptr<KvBlockPool> pool,
                   model->NewBlockPool(B * (context / 16 + 1), 16));
  std::vector<std::vector<int32_t>> tables(B);
  std::vector<int64_t> lengths(B, prompt);
  for (auto& table : tables) pool->Allocate(pool->BlocksFor(context), &table);
  {
    PagedForwardInput input;
    input.prefill = true;
    for (int64_t b = 0; b < B; ++b) {
      input.tokens.push_back(prompts[b]);
      input.cached.push_back(0);
      input.block_tables.push_back(&tables[b]);
    }
    RETURN_IF_ERROR(model->ForwardPaged(input, pool.get()).status());
  }
  std::vector<double> contiguous_ms, paged_ms;
  auto contiguous_steps = [&]() -> absl::Status {
    for (int step = 0; step < kDecodeSteps; ++step) {
      std::vector<int64_t> next(B);
      for (int64_t& t : next) t = token(rng);
      ForwardInput input;
      input.tokens = at::tensor(next, at::TensorOptions().dtype(at::kLong)).view({B, 1});
      const Clock::time_point start = Clock::now();
      RETURN_IF_ERROR(model->Forward(input, &contiguous).status());
      contiguous_ms.push_back(SecondsSince(start) * 1e3);
    }
    return absl::OkStatus();
  };
  auto paged_steps = [&]() -> absl::Status {
    for (int step = 0; step < kDecodeSteps; ++step) {
      PagedForwardInput input;
      for (int64_t b = 0; b < B; ++b) {
        input.tokens.push_back({token(rng)});
        input.cached.push_back(lengths[b]++);
        input.block_tables.push_back(&tables[b]);
      }
      const Clock::time_point start = Clock::now();
      RETURN_IF_ERROR(model->ForwardPaged(input, pool.get()).status());
      paged_ms.push_back(SecondsSince(start) * 1e3);
    }
    return absl::OkStatus();
  };
  // ABBA: each layout goes first in half the rounds, so neither always runs on the
  // caches the other left.
  for (int round = 0; round < kDecodeRounds; ++round) {
    RETURN_IF_ERROR(round % 2 == 0 ? contiguous_steps() : paged_steps());
    RETURN_IF_ERROR(round % 2 == 0 ? paged_steps() : contiguous_steps());
  }
  return DecodeTimes{context, Median(contiguous_ms), Median(paged_ms)};
}

absl::Status BenchChat(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(const BenchChatFlags flags, ParseBenchChatFlags(args));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(flags.model_dir));
  ASSIGN_OR_RETURN(TempDir dir, TempDir::Create("steerd-bench-chat"));
  std::mt19937_64 rng(20261207);

  // The workload: one system prompt; per user a tenant and messages sized so that the
  // last turn's prompt is about --history-tokens long.
  ASSIGN_OR_RETURN(const std::string system, TextOfTokens(*tokenizer, flags.system_tokens, rng));
  ASSIGN_OR_RETURN(const std::vector<int32_t> markers, tokenizer->Encode("\nUser:\nAssistant:"));
  std::vector<Conversation> conversations(flags.users);
  std::uniform_int_distribution<int64_t> turns(flags.turns_min, flags.turns_max);
  for (int64_t u = 0; u < flags.users; ++u) {
    Conversation& c = conversations[u];
    c.steered = u % 2 == 0;
    const int64_t n = turns(rng);
    const int64_t growth = (flags.history_tokens - flags.system_tokens) / n;
    const int64_t message_tokens = std::max<int64_t>(
        4, growth - flags.new_tokens - static_cast<int64_t>(markers.size()));
    for (int64_t t = 0; t < n; ++t) {
      ASSIGN_OR_RETURN(std::string message, TextOfTokens(*tokenizer, message_tokens, rng));
      c.messages.push_back(std::move(message));
    }
  }

  ChatRun cached, uncached;
  ModelInfo info;
  nlohmann::json out;
  out["model"] = flags.model_dir;
  for (bool prefix_caching : {true, false}) {
    // A server is started even without the conversations: the rows phase needs its
    // model's figures (info).
    ASSIGN_OR_RETURN(ChatServer chat, StartChatServer(flags, dir, prefix_caching,
                                                      /*kv_cache_bytes=*/0, flags.max_batch));
    ASSIGN_OR_RETURN(info, chat.server->core()->GetModel(kServedName));
    out["dtype"] = info.dtype;
    if (!flags.conversations) break;
    ASSIGN_OR_RETURN(std::string file, RandomVectorFile(rng, info.num_layers, info.hidden_size));
    RETURN_IF_ERROR(chat.steered->CreateVector(kServedName, kVectorName, file).status());
    if (!flags.json_only && prefix_caching) {
      std::printf(
          "steerd bench chat: %s (%s, %d layers x %d, %s on %s), %d threads, %u cores, %s\n",
          flags.model_dir.c_str(), info.architecture.c_str(), info.num_layers, info.hidden_size,
          info.dtype.c_str(), info.device.c_str(), at::get_num_threads(),
          std::thread::hardware_concurrency(), CpuModel().c_str());
      std::printf("  %lld users (half steered) x %lld-%lld turns, system prompt %lld tokens, "
                  "history up to ~%lld, %lld new tokens per turn\n",
                  static_cast<long long>(flags.users), static_cast<long long>(flags.turns_min),
                  static_cast<long long>(flags.turns_max),
                  static_cast<long long>(flags.system_tokens),
                  static_cast<long long>(flags.history_tokens),
                  static_cast<long long>(flags.new_tokens));
      std::fflush(stdout);
    }
    ASSIGN_OR_RETURN(ChatRun run, RunConversations(chat, system, conversations, flags.new_tokens));
    (prefix_caching ? cached : uncached) = std::move(run);
    if (!flags.json_only) {
      const ChatRun& r = prefix_caching ? cached : uncached;
      std::printf(
          "  prefix cache %-3s: TTFT turns 2+ p50 %.1f ms p99 %.1f ms (turn 1 p50 %.1f ms), "
          "%.1f tok/s, %.0f s, last prompts %.0f tokens\n",
          prefix_caching ? "on" : "off", Median(r.ttft_later_ms), Percentile(r.ttft_later_ms, 0.99),
          Median(r.ttft_first_ms), r.tokens / r.seconds, r.seconds, r.last_prompt_tokens);
      std::fflush(stdout);
    }
  }
  if (flags.conversations) {
    out["users"] = flags.users;
    out["system_tokens"] = flags.system_tokens;
    out["history_tokens"] = flags.history_tokens;
    out["last_prompt_tokens_mean"] = cached.last_prompt_tokens;
    out["ttft_p50_ms_cached"] = Median(cached.ttft_later_ms);
    out["ttft_p50_ms_uncached"] = Median(uncached.ttft_later_ms);
    out["ttft_p99_ms_cached"] = Percentile(cached.ttft_later_ms, 0.99);
    out["ttft_p99_ms_uncached"] = Percentile(uncached.ttft_later_ms, 0.99);
    out["ttft_turn1_p50_ms_cached"] = Median(cached.ttft_first_ms);
    out["ttft_turn1_p50_ms_uncached"] = Median(uncached.ttft_first_ms);
    out["prefix_hit_rate"] =
        cached.queried_tokens > 0 ? cached.hit_tokens / cached.queried_tokens : 0.0;
    out["tok_s_cached"] = cached.tokens / cached.seconds;
    out["tok_s_uncached"] = uncached.tokens / uncached.seconds;
  }
  if (flags.burst_rows) {
    ASSIGN_OR_RETURN(const int64_t paged_rows, MaxPagedRows(flags, dir, info, *tokenizer, rng));
    out["max_concurrent_rows_paged"] = paged_rows;
    out["max_concurrent_rows_contiguous"] = kContiguousRows;
    if (!flags.json_only) {
      std::printf("  rows at one KV budget (%lld longest requests), mixed lengths: paged %lld, "
                  "contiguous %lld\n",
                  static_cast<long long>(kContiguousRows), static_cast<long long>(paged_rows),
                  static_cast<long long>(kContiguousRows));
    }
  }
  if (flags.decode_steps) {
    ASSIGN_OR_RETURN(const DecodeTimes step_ms, DecodeStepTimes(flags, rng));
    out["decode_step_ms_contiguous"] = step_ms.contiguous_ms;
    out["decode_step_ms_paged"] = step_ms.paged_ms;
    out["decode_slowdown_paged"] = step_ms.paged_ms / step_ms.contiguous_ms - 1.0;
    if (!flags.json_only) {
      std::printf("  decode step, %lld rows at %lld positions: contiguous %.2f ms, paged %.2f ms "
                  "(%+.1f%%)\n",
                  static_cast<long long>(kDecodeRows), static_cast<long long>(step_ms.context),
                  step_ms.contiguous_ms, step_ms.paged_ms,
                  100.0 * (step_ms.paged_ms / step_ms.contiguous_ms - 1.0));
    }
  }
  std::cout << out.dump() << std::endl;
  return absl::OkStatus();
}

}  // namespace

absl::Status RunBenchChatCommand(const ParsedFlags& args) { return BenchChat(args); }

}  // namespace steerd
