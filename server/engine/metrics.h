// The serving metrics steerd exports to Prometheus: RPCs by method and status code with
// latency histograms, and, per model, time to first token, inter-token latency, tokens
// generated, queue depth, batch size, running sequences, the paged KV cache (use,
// blocks, preemptions, evictions) and its prefix cache (queried and hit tokens), resident
// steering vectors and the vector cache's hits, misses and evictions, training jobs
// (queued, running, ended by state) and their steps; per tenant, requests and tokens.
// Tenants come from the operator's tenants file, so the tenant label set is bounded.
// steerd_queue_depth, steerd_running_sequences and steerd_kv_cache_usage are the load
// gauges routers and autoscalers read (vLLM's num_requests_waiting, num_requests_running
// and gpu_cache_usage_perc). The registry is exposed over HTTP by the server (prometheus-cpp's Exposer);
// tests read it through Collect().
// Thread-safety: every method may be called from any thread.
#ifndef STEERD_SERVER_ENGINE_METRICS_H_
#define STEERD_SERVER_ENGINE_METRICS_H_

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace steerd {

// The metrics of one served model, looked up once so the engine's hot path only
// touches atomics.
struct ModelMetrics {
  prometheus::Histogram* time_to_first_token = nullptr;  // seconds, admission to token 1
  prometheus::Histogram* inter_token_latency = nullptr;  // seconds between tokens
  prometheus::Histogram* batch_size = nullptr;           // rows per decode step
  prometheus::Counter* generated_tokens = nullptr;
  prometheus::Counter* prompt_tokens = nullptr;
  prometheus::Counter* decode_steps = nullptr;
  prometheus::Gauge* queue_depth = nullptr;              // requests waiting for a row
  prometheus::Gauge* running_sequences = nullptr;
  prometheus::Gauge* kv_cache_usage = nullptr;           // 0-1, see steerd_kv_cache_usage
  prometheus::Gauge* kv_blocks_used = nullptr;           // held by running sequences
  prometheus::Gauge* kv_blocks_cached = nullptr;         // prefix-cached, held by none
  prometheus::Gauge* kv_blocks_total = nullptr;
  prometheus::Counter* kv_preemptions = nullptr;
  prometheus::Counter* kv_evictions = nullptr;
  prometheus::Counter* prefix_cache_queried_tokens = nullptr;
  prometheus::Counter* prefix_cache_hit_tokens = nullptr;
  prometheus::Gauge* resident_vectors = nullptr;
  prometheus::Counter* vector_cache_hits = nullptr;
  prometheus::Counter* vector_cache_misses = nullptr;
  prometheus::Counter* vector_cache_evictions = nullptr;
  // Training jobs on the model.
  prometheus::Gauge* training_jobs_queued = nullptr;
  prometheus::Gauge* training_jobs_running = nullptr;
  prometheus::Counter* training_steps = nullptr;
  prometheus::Histogram* training_step_seconds = nullptr;  // wall time of one step
  prometheus::Counter* training_jobs_succeeded = nullptr;
  prometheus::Counter* training_jobs_failed = nullptr;
  prometheus::Counter* training_jobs_cancelled = nullptr;
};

class ServingMetrics {
 public:
  ServingMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // The metrics labelled with `model`; the same pointers for the same name.
  ModelMetrics ForModel(const std::string& model);

  // One finished request: `protocol` is "grpc" or "http", `rpc` the method
  // ("Generate") or HTTP route ("/v1/chat/completions"), `code` the gRPC status code
  // name ("OK", "NOT_FOUND", ...) its outcome maps to, whichever the protocol.
  void RecordRpc(const std::string& protocol, const std::string& rpc, const std::string& code,
                 double seconds);
  // Per tenant: one request, and tokens generated for it.
  void RecordTenantRequest(const std::string& tenant);
  void RecordTenantTokens(const std::string& tenant, double tokens);

  // The exposition text (what /metrics serves), for tests and debugging.
  std::string Render() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& rpc_requests_;
  prometheus::Family<prometheus::Histogram>& rpc_latency_;
  prometheus::Family<prometheus::Histogram>& time_to_first_token_;
  prometheus::Family<prometheus::Histogram>& inter_token_latency_;
  prometheus::Family<prometheus::Histogram>& batch_size_;
  prometheus::Family<prometheus::Counter>& generated_tokens_;
  prometheus::Family<prometheus::Counter>& prompt_tokens_;
  prometheus::Family<prometheus::Counter>& decode_steps_;
  prometheus::Family<prometheus::Gauge>& queue_depth_;
  prometheus::Family<prometheus::Gauge>& running_sequences_;
  prometheus::Family<prometheus::Gauge>& kv_cache_usage_;
  prometheus::Family<prometheus::Gauge>& kv_blocks_;
  prometheus::Family<prometheus::Counter>& kv_preemptions_;
  prometheus::Family<prometheus::Counter>& kv_evictions_;
  prometheus::Family<prometheus::Counter>& prefix_cache_tokens_;
  prometheus::Family<prometheus::Gauge>& resident_vectors_;
  prometheus::Family<prometheus::Counter>& vector_cache_hits_;
  prometheus::Family<prometheus::Counter>& vector_cache_misses_;
  prometheus::Family<prometheus::Counter>& vector_cache_evictions_;
  prometheus::Family<prometheus::Gauge>& training_jobs_;
  prometheus::Family<prometheus::Counter>& training_steps_;
  prometheus::Family<prometheus::Histogram>& training_step_seconds_;
  prometheus::Family<prometheus::Counter>& training_jobs_ended_;
  prometheus::Family<prometheus::Counter>& tenant_requests_;
  prometheus::Family<prometheus::Counter>& tenant_tokens_;

  absl::Mutex mu_;
  // Family::Add hashes the labels under the family's lock: cache what the request path
  // uses.
  std::map<std::tuple<std::string, std::string, std::string>,
           std::pair<prometheus::Counter*, prometheus::Histogram*>>
      rpc_metrics_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, prometheus::Counter*> tenant_request_counters_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, prometheus::Counter*> tenant_token_counters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_METRICS_H_
