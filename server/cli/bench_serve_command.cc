// `steerd bench serve`: the whole server as clients see it. Starts steerd in-process
// (the composition `steerd serve` uses, on 127.0.0.1:0 over a temporary data directory)
// and drives it with the client library over real gRPC on localhost TCP, so every
// number includes tokenization, admission, the vector store, the engine's batching,
// protobuf and the network stack. Two measurements:
//  - Closed-loop throughput and latency: at each concurrency c, c client threads issue
//    GenerateStream requests back to back, each stream steered by its own vector or all
//    unsteered; tokens/s over a fixed window, time to first token (TTFT) and
//    inter-token latency (ITL) percentiles.
//  - The first-token cost of a vector that is not yet resident on the device (read
//    from SQLite, validated, uploaded) against one that is.
//  - Streaming over the OpenAI-compatible HTTP API (--http-concurrency c, default 32;
//    0 skips it): the closed loop at c with mixed vectors through gRPC GenerateStream and
//    through POST /v1/completions with server-sent events, interleaved gRPC/HTTP/HTTP/gRPC.
//  - Serving under training (--training-concurrency c, default 8; 0 skips it): the
//    unsteered closed loop at c with and without a training job (built-in arith task)
//    running on the same model, interleaved without/with/with/without, and the job's
//    seconds per step with that traffic and without any.
// Prints aligned lines and a last JSON line (only the JSON line with --json).
#include <ATen/Parallel.h>
#include <httplib.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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
#include "server/util/status_macros.h"
#include "server/util/stopwatch.h"

namespace steerd {
namespace {

namespace fs = std::filesystem;

// The name the benchmark serves its model under; requests and vectors use it.
constexpr char kServedName[] = "bench";
// Each run's warm-up before its window opens: every stream has started (and, steered,
// its vector is in the batch), so the window sees the steady state of the closed loop.
constexpr double kWarmupSeconds = 1.0;
// Fresh vectors whose first use is timed against a resident one.
constexpr int kColdVectors = 20;
// Spread of the random vectors' values: N(0, 0.5^2), like a trained vector's size.
constexpr float kVectorSigma = 0.5f;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// A question in the format the default model was trained on ("Q: (12+7)*3-5\nA:"),
// with varied numbers and shapes so prompts are real text of realistic length.
std::string ArithmeticPrompt(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> number(2, 99), shape(0, 3);
  const int a = number(rng), b = number(rng), c = number(rng) % 12 + 2, d = number(rng);
  switch (shape(rng)) {
    case 0:
      return absl::StrCat("Q: (", a, "+", b, ")*", c, "-", d, "\nA:");
    case 1:
      return absl::StrCat("Q: ", a, "*", c, "+", b, "-", d, "\nA:");
    case 2:
      return absl::StrCat("Q: ", a, "+", b, "*", c, "\nA:");
    default:
      return absl::StrCat("Q: (", a, "-", b, ")*(", c, "+", d % 10, ")\nA:");
  }
}

// A steering file [layers, hidden] of N(0, sigma^2) values: random values give every
// vector its own sha256, so none is resident before its first use.
absl::StatusOr<std::string> RandomVectorFile(std::mt19937_64& rng, int64_t layers, int64_t hidden) {
  std::normal_distribution<float> normal(0.0f, kVectorSigma);
  std::vector<float> values(layers * hidden);
  for (float& v : values) v = normal(rng);
  return SerializeSafetensors({{"steering", DType::kF32, {layers, hidden}, values.data()}},
                              {{"format", "steerd.steering.v1"}});
}

v1::GenerateRequest MakeRequest(const std::string& prompt, const std::string& vector,
                                int64_t new_tokens, bool logprobs = false) {
  v1::GenerateRequest request;
  request.set_model(kServedName);
  request.set_prompt(prompt);
  request.set_ignore_eos(true);
  request.set_return_logprobs(logprobs);
  request.mutable_sampling()->set_max_new_tokens(static_cast<int32_t>(new_tokens));
  if (!vector.empty()) request.mutable_steering()->set_vector(vector);
  return request;
}

// The server's decode-step histogram (rows per step), read in-process: how full the
// batch really was, which tells a client-side limit from a server-side one.
struct BatchCounters {
  double rows = 0.0;   // Sum of rows over decode steps.
  double steps = 0.0;  // Decode steps.
  double cache_hits = 0.0;
  double cache_misses = 0.0;
};

BatchCounters ReadCounters(ServingMetrics& metrics) {
  BatchCounters counters;
  for (const prometheus::MetricFamily& family : metrics.registry()->Collect()) {
    for (const prometheus::ClientMetric& metric : family.metric) {
      if (family.name == "steerd_batch_size") {
        counters.rows += metric.histogram.sample_sum;
        counters.steps += static_cast<double>(metric.histogram.sample_count);
      } else if (family.name == "steerd_vector_cache_hits_total") {
        counters.cache_hits += metric.counter.value;
      } else if (family.name == "steerd_vector_cache_misses_total") {
        counters.cache_misses += metric.counter.value;
      }
    }
  }
  return counters;
}

// What one closed-loop run measured.
struct RunResult {
  double window_seconds = 0.0;
  int64_t tokens = 0;           // Tokens whose chunk arrived inside the window.
  int64_t requests = 0;         // Requests started inside the window.
  std::vector<double> ttft_ms;  // Requests started inside the window.
  std::vector<double> itl_ms;   // Tokens whose chunk arrived inside the window.
  double mean_batch = 0.0;      // Server side: rows per decode step in the window.
  double tok_s() const { return tokens / window_seconds; }
};

// One client thread's share of a run.
struct StreamSamples {
  int64_t tokens = 0;
  int64_t requests = 0;
  std::vector<double> ttft_ms;
  std::vector<double> itl_ms;
  absl::Status status;
};

// Sends one streamed request (greedy, ignore_eos) and calls `on_tokens` with the number
// of tokens each chunk carries, as it arrives.
using StreamOnce = std::function<absl::Status(const std::string& prompt,
                                              const std::string& vector, int64_t new_tokens,
                                              const std::function<void(int)>& on_tokens)>;
// Makes the StreamOnce of one client thread (each keeps its own connection).
using StreamerFactory = std::function<StreamOnce()>;

// GenerateStream over the shared gRPC channel.
StreamerFactory GrpcStreamer(client::SteerdClient& client, bool logprobs) {
  return [&client, logprobs]() -> StreamOnce {
    return [&client, logprobs](const std::string& prompt, const std::string& vector,
                               int64_t new_tokens, const std::function<void(int)>& on_tokens) {
      return client.GenerateStream(MakeRequest(prompt, vector, new_tokens, logprobs),
                                   [&](const v1::GenerateChunk& chunk) {
                                     on_tokens(chunk.token_ids_size());
                                     return true;
                                   });
    };
  };
}

// POST /v1/completions with "stream": true on a keep-alive connection of this thread,
// the same request as GrpcStreamer's with logprobs (whose lists count each chunk's
// tokens), reading the server-sent events as they come.
StreamerFactory HttpStreamer(int port, const std::string& api_key) {
  return [port, api_key]() -> StreamOnce {
    auto http = std::make_shared<httplib::Client>("127.0.0.1", port);
    http->set_keep_alive(true);
    http->set_tcp_nodelay(true);  // As SDKs' HTTP stacks do (Node's undici, httpx).
    http->set_read_timeout(300, 0);
    return [http, api_key](const std::string& prompt, const std::string& vector,
                           int64_t new_tokens,
                           const std::function<void(int)>& on_tokens) -> absl::Status {
      nlohmann::json body = {{"model", kServedName}, {"prompt", prompt},
                             {"max_tokens", new_tokens}, {"temperature", 0},
                             {"ignore_eos", true}, {"stream", true}, {"logprobs", 0}};
      if (!vector.empty()) body["steering"] = {{"vector", vector}};
      std::string pending;  // Bytes of an event not complete yet.
      absl::Status error;
      httplib::Request request;
      request.method = "POST";
      request.path = "/v1/completions";
      request.headers = {{"Authorization", absl::StrCat("Bearer ", api_key)},
                         {"Content-Type", "application/json"}};
      request.body = body.dump();
      request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
        pending.append(data, size);
        size_t end;
        while ((end = pending.find("\n\n")) != std::string::npos) {
          const std::string event = pending.substr(0, end);
          pending.erase(0, end + 2);
          if (event.rfind("data: {", 0) != 0) continue;  // [DONE], comments.
          if (event.rfind("data: {\"error\"", 0) == 0) {
            error = absl::InternalError(event.substr(6));
            return false;
          }
          // The chunk's tokens are the entries of its token_logprobs list, numbers
          // separated by commas: counted without parsing the JSON, so that the client,
          // which shares the machine, costs the server's measurement as little as gRPC's.
          const size_t list = event.find("\"token_logprobs\":[");
          if (list == std::string::npos) continue;
          const size_t open = list + 18, close = event.find(']', open);
          if (close == std::string::npos || close == open) continue;
          on_tokens(1 + static_cast<int>(std::count(event.begin() + open,
                                                    event.begin() + close, ',')));
        }
        return true;
      };
      httplib::Response response;
      httplib::Error transport = httplib::Error::Success;
      if (!http->send(request, response, transport)) {
        return error.ok() ? absl::UnavailableError(absl::StrCat(
                                "HTTP request failed: ", httplib::to_string(transport)))
                          : error;
      }
      if (response.status != 200) {
        return absl::InternalError(absl::StrCat("HTTP ", response.status, ": ", response.body));
      }
      return error;
    };
  };
}

// `concurrency` threads issue streams back to back until the window closes; thread i
// steers with vectors[i] (no steering when `vectors` is empty or vectors[i] is). Requests
// started in the window run to completion, so latencies are never cut short; tokens
// count when their chunk arrives inside the window.
absl::StatusOr<RunResult> RunClosedLoop(const StreamerFactory& streamer,
                                        ServingMetrics& metrics,
                                        const std::vector<std::string>& vectors, int concurrency,
                                        int64_t new_tokens, double seconds, uint64_t seed) {
  const Clock::time_point start = Clock::now();
  const Clock::time_point window_start = start + std::chrono::duration_cast<Clock::duration>(
                                                     std::chrono::duration<double>(kWarmupSeconds));
  const Clock::time_point window_end = window_start + std::chrono::duration_cast<Clock::duration>(
                                                          std::chrono::duration<double>(seconds));
  std::vector<StreamSamples> samples(concurrency);
  std::vector<std::thread> threads;
  for (int i = 0; i < concurrency; ++i) {
    threads.emplace_back([&, i] {
      StreamSamples& mine = samples[i];
      std::mt19937_64 rng(seed * 1000003 + i);
      const std::string vector = vectors.empty() ? "" : vectors[i];
      const StreamOnce stream = streamer();
      while (true) {
        const Clock::time_point call_start = Clock::now();
        if (call_start >= window_end) return;
        const bool started_in_window = call_start >= window_start;
        bool first = true;
        Clock::time_point previous;
        mine.status = stream(ArithmeticPrompt(rng), vector, new_tokens, [&](int tokens) {
          const Clock::time_point now = Clock::now();
          if (tokens == 0) return;  // The last chunk may carry only the summary.
          const bool in_window = now >= window_start && now < window_end;
          if (in_window) mine.tokens += tokens;
          if (first) {
            if (started_in_window) mine.ttft_ms.push_back(Ms(now - call_start));
            first = false;
          } else if (in_window) {
            // Chunks coalesce the tokens produced while the previous write was in
            // flight: each of them gets an equal share of the gap.
            const double gap = Ms(now - previous) / tokens;
            mine.itl_ms.insert(mine.itl_ms.end(), tokens, gap);
          }
          previous = now;
        });
        if (!mine.status.ok()) return;
        if (started_in_window) ++mine.requests;
      }
    });
  }
  std::this_thread::sleep_until(window_start);
  const BatchCounters before = ReadCounters(metrics);
  std::this_thread::sleep_until(window_end);
  const BatchCounters after = ReadCounters(metrics);
  for (std::thread& t : threads) t.join();

  RunResult result;
  result.window_seconds = seconds;
  for (StreamSamples& s : samples) {
    if (!s.status.ok()) {
      return absl::Status(s.status.code(),
                          absl::StrCat("a benchmark stream failed: ", s.status.message()));
    }
    result.tokens += s.tokens;
    result.requests += s.requests;
    result.ttft_ms.insert(result.ttft_ms.end(), s.ttft_ms.begin(), s.ttft_ms.end());
    result.itl_ms.insert(result.itl_ms.end(), s.itl_ms.begin(), s.itl_ms.end());
  }
  const double steps = after.steps - before.steps;
  result.mean_batch = steps > 0 ? (after.rows - before.rows) / steps : 0.0;
  return result;
}

// One configuration (concurrency, steered or not) over its runs.
struct ConfigResult {
  std::vector<double> tok_s_runs;
  std::vector<double> ttft_ms, itl_ms;  // Pooled over the runs.
  int64_t requests = 0;
  double mean_batch = 0.0;  // Mean over the runs.
  double tok_s() const {
    double sum = 0.0;
    for (double v : tok_s_runs) sum += v;
    return tok_s_runs.empty() ? 0.0 : sum / tok_s_runs.size();
  }
  void Add(const RunResult& run) {
    tok_s_runs.push_back(run.tok_s());
    ttft_ms.insert(ttft_ms.end(), run.ttft_ms.begin(), run.ttft_ms.end());
    itl_ms.insert(itl_ms.end(), run.itl_ms.begin(), run.itl_ms.end());
    requests += run.requests;
    mean_batch += (run.mean_batch - mean_batch) / tok_s_runs.size();
  }
};

// Time to the first chunk carrying a token of one stream on an otherwise idle server.
absl::StatusOr<double> TimeToFirstToken(client::SteerdClient& client,
                                        const v1::GenerateRequest& request) {
  const Clock::time_point start = Clock::now();
  double ttft_ms = -1.0;
  RETURN_IF_ERROR(client.GenerateStream(request, [&](const v1::GenerateChunk& chunk) {
    if (ttft_ms < 0 && chunk.token_ids_size() > 0) ttft_ms = Ms(Clock::now() - start);
    return true;
  }));
  if (ttft_ms < 0) return absl::InternalError("a stream ended without a token");
  return ttft_ms;
}

struct ColdResult {
  std::vector<double> cold_ms, warm_ms, unsteered_ms;
  BatchCounters cache;  // Hits and misses during the measurement.
};

// For fresh vectors one at a time on the idle server: the TTFT of the first request
// using it (a cache miss: store read, validation, device upload on the RPC thread),
// then of a second (resident), then of an unsteered one, all with the same prompt.
absl::StatusOr<ColdResult> MeasureColdVectors(client::SteerdClient& client, ServingMetrics& metrics,
                                              int64_t layers, int64_t hidden,
                                              std::mt19937_64& rng) {
  ColdResult result;
  const BatchCounters before = ReadCounters(metrics);
  constexpr int64_t kTokens = 4;  // TTFT is what is timed; a few tokens keep it a stream.
  for (int k = 0; k < kColdVectors; ++k) {
    ASSIGN_OR_RETURN(std::string bytes, RandomVectorFile(rng, layers, hidden));
    const std::string name = absl::StrCat("cold-", k);
    RETURN_IF_ERROR(client.CreateVector(kServedName, name, std::move(bytes)).status());
    const std::string prompt = ArithmeticPrompt(rng);
    ASSIGN_OR_RETURN(double cold, TimeToFirstToken(client, MakeRequest(prompt, name, kTokens)));
    ASSIGN_OR_RETURN(double warm, TimeToFirstToken(client, MakeRequest(prompt, name, kTokens)));
    ASSIGN_OR_RETURN(double plain, TimeToFirstToken(client, MakeRequest(prompt, "", kTokens)));
    result.cold_ms.push_back(cold);
    result.warm_ms.push_back(warm);
    result.unsteered_ms.push_back(plain);
  }
  const BatchCounters after = ReadCounters(metrics);
  result.cache.cache_hits = after.cache_hits - before.cache_hits;
  result.cache.cache_misses = after.cache_misses - before.cache_misses;
  return result;
}


// A long training job on the served model (it runs until cancelled), RUNNING with at
// least one step done when this returns.
absl::StatusOr<JobRecord> StartTrainingJob(TrainingManager& training, const std::string& tenant) {
  CreateJobParams params;
  params.spec.model = kServedName;
  params.spec.output_vector = "bench-training";
  params.spec.task = "arith";
  params.spec.hyperparameters.steps = 100000;
  params.spec.hyperparameters.seed = 1;
  ASSIGN_OR_RETURN(JobRecord job, training.CreateJob(tenant, JobLimits{}, std::move(params)));
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (job.state == JobState::kQueued || job.step < 1) {
    if (IsTerminal(job.state)) {
      return absl::InternalError(absl::StrCat("the training job ended: ", job.error.message()));
    }
    if (absl::Now() > deadline) return absl::DeadlineExceededError("the job did not start");
    absl::SleepFor(absl::Milliseconds(20));
    ASSIGN_OR_RETURN(job, training.GetJob(tenant, job.id));
  }
  return job;
}

// Cancels the job and waits until it has ended.
absl::Status StopTrainingJob(TrainingManager& training, const std::string& tenant,
                             const std::string& id) {
  ASSIGN_OR_RETURN(JobRecord job, training.CancelJob(tenant, id));
  while (!IsTerminal(job.state)) {
    absl::SleepFor(absl::Milliseconds(20));
    ASSIGN_OR_RETURN(job, training.GetJob(tenant, id));
  }
  return absl::OkStatus();
}

// Seconds per step of a running job over `seconds` of wall time, from its progress.
absl::StatusOr<double> SecondsPerStep(TrainingManager& training, const std::string& tenant,
                                      const std::string& id,
                                      const std::function<absl::Status()>& during) {
  ASSIGN_OR_RETURN(JobRecord before, training.GetJob(tenant, id));
  const auto started = Clock::now();
  RETURN_IF_ERROR(during());
  const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
  ASSIGN_OR_RETURN(JobRecord after, training.GetJob(tenant, id));
  const int steps = after.step - before.step;
  return steps > 0 ? elapsed / steps : elapsed;
}

// The command line of `steerd bench serve`, checked, with what follows from it.
struct BenchServeFlags {
  std::string model_dir;
  std::vector<int64_t> concurrencies;
  double seconds = 0.0;
  int64_t new_tokens = 0;
  int64_t threads = 0;
  int64_t max_batch = 0;
  int64_t training_c = 0;
  int64_t http_c = 0;
  bool json_only = false;
  std::string dtype;
  std::string device;
  int64_t max_concurrency = 0;  // Of --concurrency and --http-concurrency.
  // One distinct vector per stream at the highest concurrency, at least 32.
  int64_t num_vectors = 0;
};

absl::StatusOr<BenchServeFlags> ParseBenchServeFlags(const ParsedFlags& args) {
  BenchServeFlags flags;
  flags.model_dir = args.Get("model", "");
  if (flags.model_dir.empty()) {
    ASSIGN_OR_RETURN(flags.model_dir, FindDefaultModel());
  }
  flags.concurrencies = {1, 8, 32};
  if (args.Has("concurrency")) {
    ASSIGN_OR_RETURN(flags.concurrencies, args.GetIntList("concurrency"));
  }
  ASSIGN_OR_RETURN(flags.seconds, args.GetDouble("seconds", 5.0));
  ASSIGN_OR_RETURN(flags.new_tokens, args.GetInt("new-tokens", 64));
  ASSIGN_OR_RETURN(flags.threads, args.GetInt("threads", 0));
  ASSIGN_OR_RETURN(flags.max_batch, args.GetInt("max-batch", 64));
  ASSIGN_OR_RETURN(flags.training_c, args.GetInt("training-concurrency", 8));
  ASSIGN_OR_RETURN(flags.http_c, args.GetInt("http-concurrency", 32));
  flags.json_only = args.Bool("json");
  flags.dtype = args.Get("dtype", "auto");
  flags.device = args.Get("device", "auto");
  if (flags.concurrencies.empty()) return absl::InvalidArgumentError("--concurrency is empty");
  for (int64_t c : flags.concurrencies) {
    if (c < 1 || c > 1024) {
      return absl::InvalidArgumentError("--concurrency values must be in [1, 1024]");
    }
  }
  if (!(flags.seconds > 0.0) || flags.new_tokens < 1 || flags.threads < 0 ||
      flags.max_batch < 1 || flags.training_c < 0 || flags.training_c > 1024 ||
      flags.http_c < 0 || flags.http_c > 1024) {
    return absl::InvalidArgumentError(
        "--seconds > 0, --new-tokens >= 1, --threads >= 0, --max-batch >= 1, "
        "--training-concurrency and --http-concurrency in [0, 1024]");
  }
  flags.max_concurrency = std::max(
      flags.http_c, *std::max_element(flags.concurrencies.begin(), flags.concurrencies.end()));
  flags.num_vectors = std::max<int64_t>(32, flags.max_concurrency);
  return flags;
}

// The server under test and a client of it. Members are destroyed in reverse order: the
// client, then the server, then its data directory.
struct BenchServeSetup {
  TempDir data_dir;
  Tenant tenant;
  std::string api_key;
  std::unique_ptr<ComposedServer> server;
  ModelInfo info;
  int num_threads = 0;
  unsigned cores = 0;
  std::unique_ptr<client::SteerdClient> client;
};

// Set-up, not measured: starts steerd in-process over a temporary data directory with
// limits the benchmark cannot hit, loads the model, connects a client over gRPC and
// prints what runs where (unless --json).
absl::StatusOr<BenchServeSetup> SetUpBenchServer(const BenchServeFlags& flags) {
  ASSIGN_OR_RETURN(TempDir data_dir, TempDir::Create("steerd-bench-serve"));
  ASSIGN_OR_RETURN(DefaultKey key, LoadOrCreateDefaultKey(data_dir.path()));
  Tenant tenant = MakeDefaultTenant(key.key);
  // The tenant's concurrency limit must not be what the benchmark measures.
  tenant.limits.concurrent_generations = std::max<int64_t>(64, flags.max_concurrency);
  tenant.limits.stored_vectors = flags.num_vectors + kColdVectors + 16;

  ComposedServer::Options options;
  options.core.models = {{kServedName, flags.model_dir}};
  options.core.dtype = flags.dtype;
  options.core.device = flags.device;
  options.core.num_threads = static_cast<int>(flags.threads);
  options.core.max_batch_size = flags.max_batch;
  options.core.max_waiting = std::max<int64_t>(256, flags.max_concurrency);
  // Room for every vector the benchmark creates: the resident ones stay resident, and
  // only a vector's first use ever misses.
  options.core.vector_cache_size = flags.num_vectors + kColdVectors + 16;
  options.server.listen_address = "127.0.0.1:0";
  if (flags.http_c > 0) {
    options.http.emplace();
    options.http->listen_address = "127.0.0.1:0";
    options.http->threads = static_cast<int>(flags.http_c) + 8;
  }
  options.tenants = {tenant};
  options.data_dir = data_dir.path();
  ASSIGN_OR_RETURN(auto server, ComposedServer::Start(options));
  RETURN_IF_ERROR(server->LoadModels());
  ASSIGN_OR_RETURN(ModelInfo info, server->core()->GetModel(kServedName));
  const int num_threads = at::get_num_threads();
  const unsigned cores = std::thread::hardware_concurrency();

  client::ClientOptions client_options;
  client_options.address = absl::StrCat("127.0.0.1:", server->port());
  client_options.api_key = key.key;
  client_options.timeout = absl::Seconds(300);
  ASSIGN_OR_RETURN(auto client, client::SteerdClient::Create(client_options));

  if (!flags.json_only) {
    std::printf("steerd bench serve: %s (%s, %d layers x %d, %s on %s), %d threads, %u cores, %s\n",
                flags.model_dir.c_str(), info.architecture.c_str(), info.num_layers,
                info.hidden_size, info.dtype.c_str(), info.device.c_str(), num_threads, cores,
                CpuModel().c_str());
    std::printf(
        "  in-process server on 127.0.0.1:%d, client over gRPC (one channel); "
        "greedy, ignore_eos, %lld new tokens, max batch %lld\n",
        server->port(), static_cast<long long>(flags.new_tokens),
        static_cast<long long>(flags.max_batch));
    std::fflush(stdout);
  }
  return BenchServeSetup{std::move(data_dir), std::move(tenant), key.key,
                         std::move(server),   std::move(info),   num_threads,
                         cores,               std::move(client)};
}

// Warm-up, not measured: uploads `num_vectors` steering vectors and makes each resident
// with one request, so no timed stream pays a vector's first use. Returns their names.
absl::StatusOr<std::vector<std::string>> UploadResidentVectors(client::SteerdClient& client,
                                                               const ModelInfo& info,
                                                               int64_t num_vectors,
                                                               std::mt19937_64& rng) {
  std::vector<std::string> vectors;
  for (int64_t i = 0; i < num_vectors; ++i) {
    ASSIGN_OR_RETURN(std::string bytes, RandomVectorFile(rng, info.num_layers, info.hidden_size));
    const std::string name = absl::StrCat("stream-", i);
    RETURN_IF_ERROR(client.CreateVector(kServedName, name, std::move(bytes)).status());
    RETURN_IF_ERROR(client.Generate(MakeRequest(ArithmeticPrompt(rng), name, 1)).status());
    vectors.push_back(name);
  }
  return vectors;
}

// Results of the concurrency sweep by (concurrency, steered).
using SweepResults = std::map<std::pair<int64_t, bool>, ConfigResult>;

// Measures closed-loop throughput, TTFT and ITL at each --concurrency, unsteered and with
// a resident vector of its own per stream. Each concurrency runs unsteered, steered,
// steered, unsteered: a linear drift in the machine's speed then weighs both alike, and
// each reports the mean of its two runs. `run_seed` numbers the runs.
absl::StatusOr<SweepResults> MeasureConcurrencySweep(BenchServeSetup& setup,
                                                     const BenchServeFlags& flags,
                                                     const std::vector<std::string>& vectors,
                                                     uint64_t& run_seed) {
  SweepResults results;
  for (int64_t c : flags.concurrencies) {
    for (bool steered : {false, true, true, false}) {
      const std::vector<std::string> run_vectors =
          steered ? std::vector<std::string>(vectors.begin(), vectors.begin() + c)
                  : std::vector<std::string>();
      ASSIGN_OR_RETURN(RunResult run,
                       RunClosedLoop(GrpcStreamer(*setup.client, false), *setup.server->metrics(),
                                     run_vectors,
                                     static_cast<int>(c), flags.new_tokens, flags.seconds,
                                     run_seed++));
      if (!flags.json_only) {
        std::fprintf(stderr, "  run c=%lld %-9s %10.1f tok/s, mean batch %.1f\n",
                     static_cast<long long>(c), steered ? "steered" : "unsteered", run.tok_s(),
                     run.mean_batch);
      }
      results[{c, steered}].Add(run);
    }
  }
  return results;
}

// Serving under training: the unsteered closed loop with and without a training job.
struct TrainingResult {
  ConfigResult without_training, with_training;
  std::vector<double> step_seconds_loaded, step_seconds_idle;
};

// Measures the unsteered closed loop at --training-concurrency without, with, with and
// without a training job running on the same model (a fresh job each time), and the
// job's seconds per step under that traffic and on an otherwise idle server. Empty when
// --training-concurrency is 0.
absl::StatusOr<TrainingResult> MeasureServingUnderTraining(BenchServeSetup& setup,
                                                           const BenchServeFlags& flags,
                                                           uint64_t& run_seed) {
  TrainingResult result;
  ConfigResult& without_training = result.without_training;
  ConfigResult& with_training = result.with_training;
  if (flags.training_c > 0) {
    TrainingManager& training = *setup.server->training();
    const std::string& tenant_name = setup.tenant.name;
    for (bool with_job : {false, true, true, false}) {
      auto run_once = [&]() -> absl::StatusOr<RunResult> {
        return RunClosedLoop(GrpcStreamer(*setup.client, false), *setup.server->metrics(), {},
                             static_cast<int>(flags.training_c), flags.new_tokens,
                             flags.seconds, run_seed++);
      };
      if (!with_job) {
        ASSIGN_OR_RETURN(RunResult run, run_once());
        without_training.Add(run);
        continue;
      }
      ASSIGN_OR_RETURN(JobRecord job, StartTrainingJob(training, tenant_name));
      RunResult run;
      ASSIGN_OR_RETURN(double loaded, SecondsPerStep(training, tenant_name, job.id,
                                                     [&]() -> absl::Status {
                                                       ASSIGN_OR_RETURN(run, run_once());
                                                       return absl::OkStatus();
                                                     }));
      ASSIGN_OR_RETURN(double idle, SecondsPerStep(training, tenant_name, job.id,
                                                   [&]() -> absl::Status {
                                                     absl::SleepFor(
                                                         absl::Seconds(flags.seconds));
                                                     return absl::OkStatus();
                                                   }));
      RETURN_IF_ERROR(StopTrainingJob(training, tenant_name, job.id));
      with_training.Add(run);
      result.step_seconds_loaded.push_back(loaded);
      result.step_seconds_idle.push_back(idle);
      if (!flags.json_only) {
        std::fprintf(stderr, "  run c=%lld with training %10.1f tok/s, %.3f s/step (idle %.3f)\n",
                     static_cast<long long>(flags.training_c), run.tok_s(), loaded, idle);
      }
    }
  }
  return result;
}

// Streaming over the OpenAI-compatible HTTP API against gRPC streaming.
struct HttpResult {
  ConfigResult grpc, http;
};

// Measures the closed loop at --http-concurrency with mixed vectors (every third stream
// unsteered, the others each with its own resident vector), through GenerateStream and
// through POST /v1/completions streamed, in the order gRPC, HTTP, HTTP, gRPC. Both ask
// for log-probabilities, which is how the HTTP client counts a chunk's tokens. Empty
// when --http-concurrency is 0.
absl::StatusOr<HttpResult> MeasureHttpStreaming(BenchServeSetup& setup,
                                                const BenchServeFlags& flags,
                                                const std::vector<std::string>& vectors,
                                                uint64_t& run_seed) {
  HttpResult result;
  if (flags.http_c == 0) return result;
  std::vector<std::string> mixed(vectors.begin(), vectors.begin() + flags.http_c);
  for (size_t i = 0; i < mixed.size(); i += 3) mixed[i].clear();
  for (bool http : {false, true, true, false}) {
    const StreamerFactory streamer =
        http ? HttpStreamer(setup.server->http_port(), setup.api_key)
             : GrpcStreamer(*setup.client, /*logprobs=*/true);
    ASSIGN_OR_RETURN(RunResult run,
                     RunClosedLoop(streamer, *setup.server->metrics(), mixed,
                                   static_cast<int>(flags.http_c), flags.new_tokens,
                                   flags.seconds, run_seed++));
    if (!flags.json_only) {
      std::fprintf(stderr, "  run c=%lld %-4s stream %10.1f tok/s, mean batch %.1f\n",
                   static_cast<long long>(flags.http_c), http ? "HTTP" : "gRPC", run.tok_s(),
                   run.mean_batch);
    }
    (http ? result.http : result.grpc).Add(run);
  }
  return result;
}

// Everything the measured phases produced, for the report.
struct BenchServeMeasurements {
  SweepResults results;
  ColdResult cold;
  TrainingResult training;
  HttpResult http;
};

// The report: the aligned text (unless --json), then one JSON line with every number.
void ReportBenchServe(const BenchServeFlags& flags, const BenchServeSetup& setup,
                      const BenchServeMeasurements& measured) {
  const SweepResults& results = measured.results;
  const ColdResult& cold = measured.cold;
  const ConfigResult& without_training = measured.training.without_training;
  const ConfigResult& with_training = measured.training.with_training;
  const std::vector<double>& step_seconds_loaded = measured.training.step_seconds_loaded;
  const std::vector<double>& step_seconds_idle = measured.training.step_seconds_idle;
  const std::vector<int64_t>& concurrencies = flags.concurrencies;
  // The sweep's highest (flags.max_concurrency also counts --http-concurrency).
  const int64_t max_concurrency = *std::max_element(concurrencies.begin(), concurrencies.end());
  const int64_t training_c = flags.training_c;
  const double seconds = flags.seconds;
  const int64_t new_tokens = flags.new_tokens;
  const int64_t max_batch = flags.max_batch;
  const std::string& model_dir = flags.model_dir;
  const bool json_only = flags.json_only;
  const ModelInfo& info = setup.info;
  const int num_threads = setup.num_threads;
  const unsigned cores = setup.cores;

  const double cold_ms = Median(cold.cold_ms);
  const double warm_ms = Median(cold.warm_ms);
  const double idle_unsteered_ms = Median(cold.unsteered_ms);

  nlohmann::json result;
  for (int64_t c : concurrencies) {
    for (bool steered : {false, true}) {
      const ConfigResult& r = results.at({c, steered});
      const std::string suffix = absl::StrCat("_c", c, steered ? "_steered" : "");
      result["tok_s" + suffix] = r.tok_s();
      if (!steered) result[absl::StrCat("tok_s_c", c, "_unsteered")] = r.tok_s();
      result["tok_s_runs" + suffix] = r.tok_s_runs;
      result["p50_ttft_ms" + suffix] = Percentile(r.ttft_ms, 0.5);
      result["p99_ttft_ms" + suffix] = Percentile(r.ttft_ms, 0.99);
      result["p50_itl_ms" + suffix] = Percentile(r.itl_ms, 0.5);
      result["p99_itl_ms" + suffix] = Percentile(r.itl_ms, 0.99);
      result["mean_batch" + suffix] = r.mean_batch;
      result["requests" + suffix] = r.requests;
    }
    result[absl::StrCat("steered_over_unsteered_c", c)] =
        results.at({c, true}).tok_s() / results.at({c, false}).tok_s();
  }
  const int64_t min_c = *std::min_element(concurrencies.begin(), concurrencies.end());
  const std::string scaling_key = absl::StrCat("c", max_concurrency, "_over_c", min_c);
  const double scaling =
      results.at({max_concurrency, false}).tok_s() / results.at({min_c, false}).tok_s();
  if (max_concurrency != min_c) result[scaling_key] = scaling;
  if (training_c > 0) {
    const std::string c = absl::StrCat("_c", training_c);
    const double p99_without = Percentile(without_training.itl_ms, 0.99);
    const double p99_with = Percentile(with_training.itl_ms, 0.99);
    result["p99_itl_ms" + c + "_without_training"] = p99_without;
    result["p99_itl_ms" + c + "_with_training"] = p99_with;
    result["p50_itl_ms" + c + "_without_training"] = Percentile(without_training.itl_ms, 0.5);
    result["p50_itl_ms" + c + "_with_training"] = Percentile(with_training.itl_ms, 0.5);
    result["itl_p99_training_ratio"] = p99_with / p99_without;
    result["tok_s" + c + "_without_training"] = without_training.tok_s();
    result["tok_s" + c + "_with_training"] = with_training.tok_s();
    result["training_seconds_per_step_under_load"] = Median(step_seconds_loaded);
    result["training_seconds_per_step_idle"] = Median(step_seconds_idle);
  }
  const HttpResult& http = measured.http;
  if (flags.http_c > 0) {
    for (const auto& [name, r] : {std::make_pair("grpc", &http.grpc),
                                  std::make_pair("http", &http.http)}) {
      const std::string suffix = absl::StrCat("_c", flags.http_c, "_", name, "_stream");
      result["tok_s" + suffix] = r->tok_s();
      result["tok_s_runs" + suffix] = r->tok_s_runs;
      result["p50_ttft_ms" + suffix] = Percentile(r->ttft_ms, 0.5);
      result["p99_ttft_ms" + suffix] = Percentile(r->ttft_ms, 0.99);
      result["p50_itl_ms" + suffix] = Percentile(r->itl_ms, 0.5);
      result["p99_itl_ms" + suffix] = Percentile(r->itl_ms, 0.99);
    }
    result["http_over_grpc_tok_s"] = http.http.tok_s() / http.grpc.tok_s();
  }
  result["cold_vector_extra_ms"] = cold_ms - warm_ms;
  result["cold_ttft_ms"] = cold_ms;
  result["warm_ttft_ms"] = warm_ms;
  result["unsteered_idle_ttft_ms"] = idle_unsteered_ms;
  result["cold_vectors"] = kColdVectors;
  result["cold_cache_misses"] = cold.cache.cache_misses;
  result["cold_cache_hits"] = cold.cache.cache_hits;
  result["tok_s_aggregation"] = "mean of 2 runs, order unsteered-steered-steered-unsteered";
  result["latency_aggregation"] = "percentiles over both runs' samples pooled";
  result["seconds"] = seconds;
  result["warmup_seconds"] = kWarmupSeconds;
  result["new_tokens"] = new_tokens;
  result["max_batch"] = max_batch;
  result["model"] = model_dir;
  result["dtype"] = info.dtype;
  result["device"] = info.device;
  result["threads"] = num_threads;
  result["cores"] = cores;
  result["cpu"] = CpuModel();

  if (!json_only) {
    std::printf(
        "  each configuration: %.0f s warm-up + %g s window, run twice in the order "
        "unsteered, steered, steered, unsteered;\n"
        "  tok/s = mean of the two runs; latency percentiles over both runs' samples; "
        "batch = server rows per decode step\n",
        kWarmupSeconds, seconds);
    std::printf("  %11s  %-9s  %10s  %9s  %9s  %8s  %8s  %8s  %5s\n", "concurrency", "vectors",
                "tok/s", "ttft p50", "ttft p99", "itl p50", "itl p99", "requests", "batch");
    for (int64_t c : concurrencies) {
      for (bool steered : {false, true}) {
        const ConfigResult& r = results.at({c, steered});
        std::printf("  %11lld  %-9s  %10.1f  %9.2f  %9.2f  %8.3f  %8.3f  %8lld  %5.1f\n",
                    static_cast<long long>(c), steered ? "own each" : "none", r.tok_s(),
                    Percentile(r.ttft_ms, 0.5), Percentile(r.ttft_ms, 0.99),
                    Percentile(r.itl_ms, 0.5), Percentile(r.itl_ms, 0.99),
                    static_cast<long long>(r.requests), r.mean_batch);
      }
    }
    std::printf("  (latencies in ms)\n");
    std::vector<std::pair<std::string, std::string>> table;
    table.push_back({absl::StrCat("steered / unsteered tok/s, c", max_concurrency),
                     absl::StrFormat("%.3f", results.at({max_concurrency, true}).tok_s() /
                                                 results.at({max_concurrency, false}).tok_s())});
    if (max_concurrency != min_c) {
      table.push_back({absl::StrCat("c", max_concurrency, " / c", min_c, " tok/s, unsteered"),
                       absl::StrFormat("%.2f", scaling)});
    }
    table.push_back({absl::StrCat("cold vector TTFT, median of ", kColdVectors, " (ms)"),
                     absl::StrFormat("%.2f", cold_ms)});
    table.push_back({"resident vector TTFT (ms)", absl::StrFormat("%.2f", warm_ms)});
    table.push_back(
        {"unsteered TTFT, idle server (ms)", absl::StrFormat("%.2f", idle_unsteered_ms)});
    table.push_back({"cold vector extra (ms)", absl::StrFormat("%.2f", cold_ms - warm_ms)});
    table.push_back(
        {"vector cache in the cold test",
         absl::StrFormat("%.0f misses, %.0f hits (expected %d and %d)", cold.cache.cache_misses,
                         cold.cache.cache_hits, kColdVectors, kColdVectors)});
    if (training_c > 0) {
      const double p99_without = Percentile(without_training.itl_ms, 0.99);
      const double p99_with = Percentile(with_training.itl_ms, 0.99);
      table.push_back({absl::StrCat("itl p99 c", training_c, " without / with training (ms)"),
                       absl::StrFormat("%.3f / %.3f (x%.2f)", p99_without, p99_with,
                                       p99_with / p99_without)});
      table.push_back({absl::StrCat("tok/s c", training_c, " without / with training"),
                       absl::StrFormat("%.1f / %.1f", without_training.tok_s(),
                                       with_training.tok_s())});
      table.push_back({"training s/step under load / idle",
                       absl::StrFormat("%.3f / %.3f", Median(step_seconds_loaded),
                                       Median(step_seconds_idle))});
    }
    if (flags.http_c > 0) {
      table.push_back(
          {absl::StrCat("tok/s c", flags.http_c, " gRPC / HTTP stream"),
           absl::StrFormat("%.1f / %.1f (HTTP x%.3f)", http.grpc.tok_s(), http.http.tok_s(),
                           http.http.tok_s() / http.grpc.tok_s())});
      table.push_back({absl::StrCat("ttft p50 c", flags.http_c, " gRPC / HTTP (ms)"),
                       absl::StrFormat("%.2f / %.2f", Percentile(http.grpc.ttft_ms, 0.5),
                                       Percentile(http.http.ttft_ms, 0.5))});
      table.push_back({absl::StrCat("itl p99 c", flags.http_c, " gRPC / HTTP (ms)"),
                       absl::StrFormat("%.3f / %.3f", Percentile(http.grpc.itl_ms, 0.99),
                                       Percentile(http.http.itl_ms, 0.99))});
    }
    for (const auto& [name, value] : table) {
      std::printf("  %-36s %s\n", name.c_str(), value.c_str());
    }
  }
  std::cout << result.dump() << std::endl;
}

absl::Status BenchServe(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(const BenchServeFlags flags, ParseBenchServeFlags(args));
  ASSIGN_OR_RETURN(BenchServeSetup setup, SetUpBenchServer(flags));
  std::mt19937_64 rng(20240601);
  ASSIGN_OR_RETURN(const std::vector<std::string> vectors,
                   UploadResidentVectors(*setup.client, setup.info, flags.num_vectors, rng));
  BenchServeMeasurements measured;
  uint64_t run_seed = 1;
  ASSIGN_OR_RETURN(measured.results,
                   MeasureConcurrencySweep(setup, flags, vectors, run_seed));
  ASSIGN_OR_RETURN(measured.cold,
                   MeasureColdVectors(*setup.client, *setup.server->metrics(),
                                      setup.info.num_layers, setup.info.hidden_size, rng));
  ASSIGN_OR_RETURN(measured.training, MeasureServingUnderTraining(setup, flags, run_seed));
  ASSIGN_OR_RETURN(measured.http, MeasureHttpStreaming(setup, flags, vectors, run_seed));
  ReportBenchServe(flags, setup, measured);
  return absl::OkStatus();
}

}  // namespace

absl::Status RunBenchServeCommand(const ParsedFlags& args) { return BenchServe(args); }

}  // namespace steerd
