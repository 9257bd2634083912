#include "server/engine/metrics.h"

#include "prometheus/text_serializer.h"

namespace steerd {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// Latencies from 0.5 ms to 60 s.
const Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  return *buckets;
}

const Histogram::BucketBoundaries& BatchBuckets() {
  static const auto* buckets =
      new Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256};
  return *buckets;
}

}  // namespace

ServingMetrics::ServingMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      rpc_requests_(BuildCounter()
                        .Name("steerd_rpc_requests_total")
                        .Help("Finished requests by protocol (grpc, http), method and "
                              "gRPC status code")
                        .Register(*registry_)),
      rpc_latency_(BuildHistogram()
                       .Name("steerd_rpc_latency_seconds")
                       .Help("Request latency from arrival to status, by protocol and method")
                       .Register(*registry_)),
      time_to_first_token_(BuildHistogram()
                               .Name("steerd_time_to_first_token_seconds")
                               .Help("From admission to the first generated token")
                               .Register(*registry_)),
      inter_token_latency_(BuildHistogram()
                               .Name("steerd_inter_token_latency_seconds")
                               .Help("Time between consecutive tokens of a sequence")
                               .Register(*registry_)),
      batch_size_(BuildHistogram()
                      .Name("steerd_batch_size")
                      .Help("Sequences in each decode step")
                      .Register(*registry_)),
      generated_tokens_(BuildCounter()
                            .Name("steerd_generated_tokens_total")
                            .Help("Tokens generated")
                            .Register(*registry_)),
      prompt_tokens_(BuildCounter()
                         .Name("steerd_prompt_tokens_total")
                         .Help("Prompt tokens prefilled")
                         .Register(*registry_)),
      decode_steps_(BuildCounter()
                        .Name("steerd_decode_steps_total")
                        .Help("Forward passes of the engine (prefill and decode)")
                        .Register(*registry_)),
      queue_depth_(BuildGauge()
                       .Name("steerd_queue_depth")
                       .Help("Requests waiting for a batch row (training rollouts, which "
                             "wait in a queue of their own, excluded)")
                       .Register(*registry_)),
      running_sequences_(BuildGauge()
                             .Name("steerd_running_sequences")
                             .Help("Sequences in the running batch (training rollouts "
                                   "included)")
                             .Register(*registry_)),
      kv_cache_usage_(BuildGauge()
                          .Name("steerd_kv_cache_usage")
                          .Help("Fraction (0-1) of the paged KV cache in use: blocks the "
                                "running sequences hold over the blocks of the pool "
                                "(--kv-cache-bytes); cached prefixes nobody holds count as "
                                "free, since any allocation may evict them")
                          .Register(*registry_)),
      kv_blocks_(BuildGauge()
                     .Name("steerd_kv_cache_blocks")
                     .Help("Blocks of the paged KV cache: state=used (held by running "
                           "sequences), cached (prefix-cache blocks nobody holds, evictable), "
                           "total (the pool)")
                     .Register(*registry_)),
      kv_preemptions_(BuildCounter()
                          .Name("steerd_kv_cache_preemptions_total")
                          .Help("Running sequences preempted because the KV cache was full: "
                                "their blocks were freed and they were queued again, to be "
                                "recomputed from their prompt and tokens so far")
                          .Register(*registry_)),
      kv_evictions_(BuildCounter()
                        .Name("steerd_kv_cache_evictions_total")
                        .Help("Cached prefix blocks nobody held, dropped to make room")
                        .Register(*registry_)),
      prefix_cache_tokens_(BuildCounter()
                               .Name("steerd_prefix_cache_tokens_total")
                               .Help("Prompt tokens of admitted sequences: result=queried (all "
                                     "of them), hit (found in the prefix cache, not computed)")
                               .Register(*registry_)),
      resident_vectors_(BuildGauge()
                            .Name("steerd_resident_vectors")
                            .Help("Steering vectors held on the model's device")
                            .Register(*registry_)),
      vector_cache_hits_(BuildCounter()
                             .Name("steerd_vector_cache_hits_total")
                             .Help("Requests whose vector was already resident")
                             .Register(*registry_)),
      vector_cache_misses_(BuildCounter()
                               .Name("steerd_vector_cache_misses_total")
                               .Help("Requests whose vector was loaded from the store")
                               .Register(*registry_)),
      vector_cache_evictions_(BuildCounter()
                                  .Name("steerd_vector_cache_evictions_total")
                                  .Help("Unused resident vectors evicted to make room")
                                  .Register(*registry_)),
      training_jobs_(
          BuildGauge()
              .Name("steerd_training_jobs")
              .Help("Training jobs this replica holds: claimed and about to start (state QUEUED) "
                    "or training (RUNNING)")
              .Register(*registry_)),
      training_steps_(BuildCounter()
                          .Name("steerd_training_steps_total")
                          .Help("Optimizer steps of training jobs")
                          .Register(*registry_)),
      training_step_seconds_(BuildHistogram()
                                 .Name("steerd_training_step_seconds")
                                 .Help("Wall time of one training step (rollouts, backward, "
                                       "update)")
                                 .Register(*registry_)),
      training_jobs_ended_(BuildCounter()
                               .Name("steerd_training_jobs_ended_total")
                               .Help("Training jobs that ended, by final state")
                               .Register(*registry_)),
      tenant_requests_(BuildCounter()
                           .Name("steerd_tenant_requests_total")
                           .Help("RPCs by tenant")
                           .Register(*registry_)),
      tenant_tokens_(BuildCounter()
                         .Name("steerd_tenant_generated_tokens_total")
                         .Help("Tokens generated by tenant")
                         .Register(*registry_)) {}

ModelMetrics ServingMetrics::ForModel(const std::string& model) {
  const prometheus::Labels labels = {{"model", model}};
  ModelMetrics m;
  m.time_to_first_token = &time_to_first_token_.Add(labels, LatencyBuckets());
  m.inter_token_latency = &inter_token_latency_.Add(labels, LatencyBuckets());
  m.batch_size = &batch_size_.Add(labels, BatchBuckets());
  m.generated_tokens = &generated_tokens_.Add(labels);
  m.prompt_tokens = &prompt_tokens_.Add(labels);
  m.decode_steps = &decode_steps_.Add(labels);
  m.queue_depth = &queue_depth_.Add(labels);
  m.running_sequences = &running_sequences_.Add(labels);
  m.kv_cache_usage = &kv_cache_usage_.Add(labels);
  m.kv_blocks_used = &kv_blocks_.Add({{"model", model}, {"state", "used"}});
  m.kv_blocks_cached = &kv_blocks_.Add({{"model", model}, {"state", "cached"}});
  m.kv_blocks_total = &kv_blocks_.Add({{"model", model}, {"state", "total"}});
  m.kv_preemptions = &kv_preemptions_.Add(labels);
  m.kv_evictions = &kv_evictions_.Add(labels);
  m.prefix_cache_queried_tokens =
      &prefix_cache_tokens_.Add({{"model", model}, {"result", "queried"}});
  m.prefix_cache_hit_tokens = &prefix_cache_tokens_.Add({{"model", model}, {"result", "hit"}});
  m.resident_vectors = &resident_vectors_.Add(labels);
  m.vector_cache_hits = &vector_cache_hits_.Add(labels);
  m.vector_cache_misses = &vector_cache_misses_.Add(labels);
  m.vector_cache_evictions = &vector_cache_evictions_.Add(labels);
  m.training_jobs_queued = &training_jobs_.Add({{"model", model}, {"state", "QUEUED"}});
  m.training_jobs_running = &training_jobs_.Add({{"model", model}, {"state", "RUNNING"}});
  m.training_steps = &training_steps_.Add(labels);
  m.training_step_seconds = &training_step_seconds_.Add(
      labels, prometheus::Histogram::BucketBoundaries{0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100});
  m.training_jobs_succeeded = &training_jobs_ended_.Add({{"model", model}, {"state", "SUCCEEDED"}});
  m.training_jobs_failed = &training_jobs_ended_.Add({{"model", model}, {"state", "FAILED"}});
  m.training_jobs_cancelled = &training_jobs_ended_.Add({{"model", model}, {"state", "CANCELLED"}});
  return m;
}

void ServingMetrics::RecordRpc(const std::string& protocol, const std::string& rpc,
                               const std::string& code, double seconds) {
  prometheus::Counter* counter;
  prometheus::Histogram* latency;
  {
    absl::MutexLock lock(&mu_);
    auto& entry = rpc_metrics_[{protocol, rpc, code}];
    if (entry.first == nullptr) {
      entry.first =
          &rpc_requests_.Add({{"protocol", protocol}, {"rpc", rpc}, {"code", code}});
      entry.second =
          &rpc_latency_.Add({{"protocol", protocol}, {"rpc", rpc}}, LatencyBuckets());
    }
    counter = entry.first;
    latency = entry.second;
  }
  counter->Increment();
  latency->Observe(seconds);
}

void ServingMetrics::RecordTenantRequest(const std::string& tenant) {
  prometheus::Counter* counter;
  {
    absl::MutexLock lock(&mu_);
    auto& slot = tenant_request_counters_[tenant];
    if (slot == nullptr) slot = &tenant_requests_.Add({{"tenant", tenant}});
    counter = slot;
  }
  counter->Increment();
}

void ServingMetrics::RecordTenantTokens(const std::string& tenant, double tokens) {
  prometheus::Counter* counter;
  {
    absl::MutexLock lock(&mu_);
    auto& slot = tenant_token_counters_[tenant];
    if (slot == nullptr) slot = &tenant_tokens_.Add({{"tenant", tenant}});
    counter = slot;
  }
  counter->Increment(tokens);
}

std::string ServingMetrics::Render() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace steerd
