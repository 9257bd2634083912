// `steerd serve`: the composition of the server from flags. Starts the gRPC port first
// (health NOT_SERVING), loads and warms the models, then serves until SIGTERM or
// SIGINT, when it drains: health NOT_SERVING, no new generations, in-flight ones finish
// or are ended within --drain-seconds, exit 0.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "server/api/api_server.h"
#include "server/api/metrics_http.h"
#include "server/cli/commands.h"
#include "server/cli/default_model.h"
#include "server/cli/server_setup.h"
#include "server/cli/store_flags.h"
#include "server/engine/serving_core.h"
#include "server/storage/postgres.h"
#include "server/tenancy/tenants.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

bool IsLoopback(const std::string& address) {
  return absl::StartsWith(address, "127.") || absl::StartsWith(address, "localhost:") ||
         absl::StartsWith(address, "[::1]:") || absl::StartsWith(address, "unix:");
}

// "--model NAME=DIR" (repeatable) or "--model DIR" (named after the folder); none: the
// embedded default model.
absl::StatusOr<std::vector<ModelSpec>> ModelSpecs(const ParsedFlags& args) {
  std::vector<ModelSpec> specs;
  for (const std::string& value : args.GetAll("model")) {
    ModelSpec spec;
    const size_t eq = value.find('=');
    if (eq == std::string::npos) {
      spec.dir = value;
      spec.name = std::filesystem::path(value).lexically_normal().filename().string();
      if (spec.name.empty()) {
        spec.name = std::filesystem::path(value).lexically_normal().parent_path().filename();
      }
    } else {
      spec.name = value.substr(0, eq);
      spec.dir = value.substr(eq + 1);
    }
    specs.push_back(spec);
  }
  if (specs.empty()) {
    ASSIGN_OR_RETURN(std::string dir, FindDefaultModel());
    specs.push_back({kDefaultModelName, dir});
  }
  return specs;
}

// INVALID_ARGUMENT naming the flag when `value` is below `min`.
absl::Status RequireAtLeast(const char* flag, int64_t value, int64_t min) {
  if (value >= min) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag, " must be at least ", min, ", got ", value));
}

// "--kv-cache-bytes": a byte count, optionally with a binary unit (KiB, MiB, GiB, TiB;
// K, M, G, T too).
absl::StatusOr<int64_t> ParseByteSize(const std::string& text) {
  static constexpr std::pair<const char*, int> kUnits[] = {
      {"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40},
      {"K", 10},   {"M", 20},   {"G", 30},   {"T", 40}};
  absl::string_view number = text;
  int shift = 0;
  for (const auto& [unit, bits] : kUnits) {
    if (absl::ConsumeSuffix(&number, unit)) {
      shift = bits;
      break;
    }
  }
  int64_t value = 0;
  if (!absl::SimpleAtoi(number, &value) || value < 1 ||
      value > (std::numeric_limits<int64_t>::max() >> shift)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-cache-bytes: '", text, "' is not a positive size (bytes, or with KiB, MiB, GiB)"));
  }
  return value << shift;
}

absl::Status Serve(const ParsedFlags& args) {
  ServingCore::Options core_options;
  ASSIGN_OR_RETURN(core_options.models, ModelSpecs(args));
  core_options.dtype = args.Get("dtype", "auto");
  core_options.device = args.Get("device", "auto");
  ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  core_options.num_threads = static_cast<int>(threads);
  core_options.weights = args.Get("weights", "mapped");
  ASSIGN_OR_RETURN(core_options.max_batch_size, args.GetInt("max-batch", 64));
  RETURN_IF_ERROR(RequireAtLeast("max-batch", core_options.max_batch_size, 1));
  ASSIGN_OR_RETURN(core_options.max_waiting, args.GetInt("max-waiting", 256));
  RETURN_IF_ERROR(RequireAtLeast("max-waiting", core_options.max_waiting, 1));
  ASSIGN_OR_RETURN(core_options.vector_cache_size, args.GetInt("vector-cache-size", 256));
  RETURN_IF_ERROR(RequireAtLeast("vector-cache-size", core_options.vector_cache_size, 1));
  ASSIGN_OR_RETURN(core_options.max_prompt_tokens, args.GetInt("max-prompt-tokens", 0));
  ASSIGN_OR_RETURN(core_options.max_new_tokens, args.GetInt("max-new-tokens", 0));
  ASSIGN_OR_RETURN(core_options.max_background_rows,
                   args.GetInt("training-rows", core_options.max_background_rows));
  // The rows training keeps while serving is busy. Without the flag the default is
  // capped by --training-rows, so that flag alone takes any value (the engine's cap on
  // background rows is the same either way).
  core_options.min_background_rows =
      std::min(core_options.min_background_rows, core_options.max_background_rows);
  if (args.Has("min-training-rows")) {
    ASSIGN_OR_RETURN(core_options.min_background_rows,
                     args.GetInt("min-training-rows", core_options.min_background_rows));
    if (core_options.min_background_rows < 1 ||
        core_options.min_background_rows > core_options.max_background_rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--min-training-rows must be between 1 and --training-rows (",
          core_options.max_background_rows, "), got ", core_options.min_background_rows));
    }
  }
  if (args.Has("kv-cache-bytes")) {
    ASSIGN_OR_RETURN(core_options.kv_cache_bytes, ParseByteSize(args.Get("kv-cache-bytes")));
  }
  ASSIGN_OR_RETURN(core_options.kv_block_size,
                   args.GetInt("kv-block-size", core_options.kv_block_size));
  core_options.prefix_caching = !args.Bool("no-prefix-cache");
  core_options.share_unsteered_prefixes = args.Bool("share-prefixes");
  ASSIGN_OR_RETURN(int64_t drain_seconds, args.GetInt("drain-seconds", 30));
  ApiServer::Options server_options;
  server_options.listen_address = args.Get("listen", "127.0.0.1:50051");
  server_options.tls_cert_file = args.Get("tls-cert", "");
  server_options.tls_key_file = args.Get("tls-key", "");
  ASSIGN_OR_RETURN(server_options.max_message_bytes,
                   args.GetInt("max-message-bytes", 16 << 20));
  ASSIGN_OR_RETURN(server_options.max_connection_age,
                   args.GetDuration("max-connection-age", server_options.max_connection_age));
  ASSIGN_OR_RETURN(server_options.max_connection_age_grace,
                   args.GetDuration("max-connection-age-grace",
                                    server_options.max_connection_age_grace));
  std::optional<OpenAiHttpServer::Options> http_options;
  if (args.Has("http-listen")) {
    http_options.emplace();
    http_options->listen_address = args.Get("http-listen", "");
    http_options->tls_cert_file = server_options.tls_cert_file;
    http_options->tls_key_file = server_options.tls_key_file;
    http_options->max_body_bytes = server_options.max_message_bytes;
    ASSIGN_OR_RETURN(int64_t threads, args.GetInt("http-threads", http_options->threads));
    if (threads < 1 || threads > 4096) {
      return absl::InvalidArgumentError(
          absl::StrCat("--http-threads must be from 1 to 4096, got ", threads));
    }
    http_options->threads = static_cast<int>(threads);
  }
  std::string metrics_listen = args.Get("metrics-listen", "127.0.0.1:9090");
  if (args.Has("metrics-port")) {
    ASSIGN_OR_RETURN(int64_t port, args.GetInt("metrics-port", 9090));
    metrics_listen = absl::StrCat("127.0.0.1:", port);
  }
  const std::string data_dir = args.Get("data-dir", "data");
  // A bad URL is a configuration error: refused before anything starts.
  const std::string store_url = StoreUrlFromFlags(args);
  if (!store_url.empty()) RETURN_IF_ERROR(postgres::CheckUrl(store_url));

  // Tenants: the file, or the default tenant whose key lives in the data directory.
  std::vector<Tenant> tenants;
  if (args.Has("tenants")) {
    ASSIGN_OR_RETURN(tenants, LoadTenantsFile(args.Get("tenants", "")));
  } else {
    for (const std::string& address :
         {server_options.listen_address,
          http_options.has_value() ? http_options->listen_address : std::string()}) {
      if (!address.empty() && !IsLoopback(address)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "without --tenants the server runs a single default tenant and listens on "
            "localhost only; pass --tenants FILE to listen on ",
            address));
      }
    }
    ASSIGN_OR_RETURN(DefaultKey key, LoadOrCreateDefaultKey(data_dir));
    if (!key.warning.empty()) std::fprintf(stderr, "warning: %s\n", key.warning.c_str());
    if (key.created) {
      std::printf("created the default tenant's API key (also in %s):\n  %s\n",
                  key.path.c_str(), key.key.c_str());
    } else {
      std::printf("the default tenant's API key is in %s\n", key.path.c_str());
    }
    tenants.push_back(MakeDefaultTenant(key.key));
  }
  ComposedServer::Options composed_options;
  composed_options.core = core_options;
  TrainingManager::Options& training = composed_options.training;
  ASSIGN_OR_RETURN(training.max_running_jobs_per_model,
                   args.GetInt("max-training-jobs", training.max_running_jobs_per_model));
  ASSIGN_OR_RETURN(training.checkpoint_every,
                   args.GetInt("checkpoint-every", training.checkpoint_every));
  // Ended jobs and their datasets are deleted this many days after they end; 0 keeps
  // them forever.
  ASSIGN_OR_RETURN(int64_t retention_days, args.GetInt("job-retention-days", 30));
  if (retention_days < 0 || retention_days > 36500) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--job-retention-days must be 0 (keep forever) to 36500, got ", retention_days));
  }
  training.job_retention =
      retention_days == 0 ? absl::InfiniteDuration() : absl::Hours(24 * retention_days);
  ASSIGN_OR_RETURN(training.lease_ttl, args.GetDuration("job-lease-ttl", training.lease_ttl));
  if (training.lease_ttl < absl::Seconds(1) || training.lease_ttl > absl::Minutes(10)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--job-lease-ttl must be from 1s to 10m, got ",
                     absl::FormatDuration(training.lease_ttl)));
  }
  ASSIGN_OR_RETURN(const int64_t max_attempts,
                   args.GetInt("job-max-attempts", training.max_attempts));
  if (max_attempts < 1 || max_attempts > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("--job-max-attempts must be from 1 to 100, got ", max_attempts));
  }
  training.max_attempts = static_cast<int32_t>(max_attempts);
  composed_options.server = server_options;
  composed_options.http = http_options;
  composed_options.tenants = std::move(tenants);
  composed_options.data_dir = data_dir;
  composed_options.store_url = store_url;
  composed_options.replica_id = ReplicaIdFromFlags(args);
  ASSIGN_OR_RETURN(auto composed, ComposedServer::Start(composed_options));
  std::printf("replica %s, store %s\n", composed_options.replica_id.c_str(),
              composed->store_description().c_str());
  std::printf("listening on %s (port %d)%s\n", server_options.listen_address.c_str(),
              composed->port(), server_options.tls_cert_file.empty() ? "" : " with TLS");
  if (http_options.has_value()) {
    std::printf("OpenAI-compatible HTTP API on %s (http port %d)%s\n",
                http_options->listen_address.c_str(), composed->http_port(),
                server_options.tls_cert_file.empty() ? "" : " with TLS");
  }

  // Declared after `composed`, whose metrics it reads, so it stops first.
  std::unique_ptr<MetricsHttpServer> metrics_server;
  if (metrics_listen != "off") {
    ServingMetrics* metrics = composed->metrics();
    ASSIGN_OR_RETURN(metrics_server, MetricsHttpServer::Start(metrics_listen, [metrics] {
                       return metrics->Render();
                     }));
    std::printf("metrics on %s (metrics port %d)\n", metrics_listen.c_str(),
                metrics_server->port());
  }
  std::fflush(stdout);

  RETURN_IF_ERROR(composed->LoadModels());
  for (const ModelInfo& info : composed->core()->ListModels()) {
    std::printf("serving model %s (%s, %d layers x %d, %s on %s, chat template %s)\n",
                info.name.c_str(), info.architecture.c_str(), info.num_layers,
                info.hidden_size, info.dtype.c_str(), info.device.c_str(),
                info.chat_template.empty() ? "none" : info.chat_template.c_str());
    std::printf("  KV cache: %.1f MiB, %lld positions in blocks of %lld; prefix cache %s\n",
                static_cast<double>(info.kv_cache_bytes) / (1 << 20),
                static_cast<long long>(info.kv_cache_positions),
                static_cast<long long>(core_options.kv_block_size),
                !core_options.prefix_caching             ? "off"
                : core_options.share_unsteered_prefixes ? "on (unsteered prefixes shared)"
                                                        : "on (per tenant)");
  }
  std::fflush(stdout);

  // The signals were blocked in every thread (see RunServeCommand); wait for one here.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::printf("received %s: draining for up to %lld s\n",
              signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
              static_cast<long long>(drain_seconds));
  std::fflush(stdout);
  composed->Drain(absl::Now() + absl::Seconds(drain_seconds));
  std::printf("drained; exiting\n");
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace

absl::Status RunServeCommand(const ParsedFlags& args) {
  // Block the shutdown signals before any thread starts, so every thread inherits the
  // mask and only sigwait() in Serve() receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return Serve(args);
}

}  // namespace steerd
