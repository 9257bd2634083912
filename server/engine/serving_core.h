// The service's core, below the transport: the served models (each with its tokenizer,
// chat template, resident-vector cache and engine thread), tenants' vectors in the
// store, and admission of generation requests. The gRPC layer authenticates, converts
// protos into these plain types and calls one method per RPC; everything a request may
// get wrong is checked here with the status codes the protos document. Tenants are
// names: limits that need counters (rate, concurrency) are the caller's, limits that
// need the store or the model (stored vectors, max new tokens) are passed in.
// Thread-safety: every method may be called from any thread once Create() returned.
// The header is torch-free; libtorch stays behind the implementation.
#ifndef STEERD_SERVER_ENGINE_SERVING_CORE_H_
#define STEERD_SERVER_ENGINE_SERVING_CORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/engine/generation_observer.h"
#include "server/engine/metrics.h"
#include "server/engine/vector_directory.h"
#include "server/engine/vector_store.h"
#include "server/model/chat_template.h"

namespace steerd {

struct ModelSpec {
  std::string name;  // What requests call it.
  std::string dir;   // Hugging Face folder.
};

// A loaded model as the Models service describes it.
struct ModelInfo {
  std::string name;
  std::string architecture;
  int32_t num_layers = 0;
  int32_t hidden_size = 0;
  int32_t vocab_size = 0;
  int32_t max_context = 0;
  std::string dtype;   // "float32" or "bfloat16"
  std::string device;  // "cpu", "cuda:0"
  std::string fingerprint;
  std::string chat_template;  // Family name, empty when unrecognised.
  int64_t kv_cache_bytes = 0;      // The paged KV cache's pool ...
  int64_t kv_cache_positions = 0;  // ... and the positions it holds.
};

// One generation request in plain types (GenerateRequest without the proto).
struct GenerateParams {
  std::string model;
  std::optional<std::string> prompt;              // Raw text ...
  std::optional<std::vector<ChatTurn>> messages;  // ... or a conversation ...
  // ... or token ids, taken as they are (no special tokens added), each checked to be
  // in the model's vocabulary.
  std::optional<std::vector<int32_t>> prompt_token_ids;
  std::string vector;                             // "" = no steering; "name[@version]".
  double scale = 1.0;
  double temperature = 0.0;  // 0 = greedy; else (0, 2].
  double top_p = 0.0;        // 0 = 1.0; else [0, 1].
  int64_t top_k = 0;         // 0 = no limit.
  std::optional<uint64_t> seed;
  int64_t max_new_tokens = 0;  // 0 = the default (256).
  std::vector<std::string> stop;
  bool return_logprobs = false;
  bool ignore_eos = false;
};

class ServingCore {
 public:
  struct Options {
    std::vector<ModelSpec> models;
    std::string dtype = "auto";      // auto | f32 | bf16
    std::string device = "auto";     // auto | cpu | cuda
    // CPU intra-op threads of each model's engine; 0 = DefaultComputeThreads(1): all
    // cores but one (at least one), or OMP_NUM_THREADS when set. The engine's OpenMP team spins at its barriers: a team as large as the
    // machine collapses (50x slower steps, measured) as soon as gRPC threads need a core.
    int num_threads = 0;
    std::string weights = "mapped";  // mapped | hugepages
    int64_t max_batch_size = 64;     // Running sequences per model.
    int64_t max_waiting = 256;       // Queued requests per model before RESOURCE_EXHAUSTED.
    int64_t max_prefill_tokens = 4096;
    int64_t max_background_rows = 32;  // Rows training rollouts may hold per model.
    int64_t min_background_rows = 4;   // Rows they keep while serving is busy.
    int64_t vector_cache_size = 256;  // Unused vectors kept resident per model.
    int64_t max_prompt_tokens = 0;    // 0 = the model's context minus one.
    int64_t max_new_tokens = 0;       // Global cap; 0 = the model's context.
    int64_t default_max_new_tokens = 256;
    // The paged KV cache of each model: its bytes (0 = automatic: room for
    // max_batch_size rows of the model's whole context, but at most a quarter of the
    // machine's memory), in blocks of kv_block_size positions.
    int64_t kv_cache_bytes = 0;
    int64_t kv_block_size = 16;
    // Prompts reuse the cached keys and values of earlier prompts that start alike,
    // within one (tenant, vector version, scale).
    bool prefix_caching = true;
    // Unsteered prompts share cached prefixes across tenants too. Off by default: a
    // shared cache tells a tenant, through its time to first token, whether another
    // tenant sent the same text.
    bool share_unsteered_prefixes = false;
  };

  // Loads every model (tokenizer and chat template too) and starts its engine. `store`
  // and `metrics` must outlive the core.
  static absl::StatusOr<std::unique_ptr<ServingCore>> Create(const Options& options,
                                                             VectorStore* store,
                                                             ServingMetrics* metrics);
  ~ServingCore();

  // Runs a short generation on every model (first-call allocations, thread pools).
  absl::Status Warmup();
  // Stops admitting, finishes in-flight work until `deadline`, ends the rest.
  void Drain(absl::Time deadline);

  std::vector<ModelInfo> ListModels() const;  // Ordered by name.
  absl::StatusOr<ModelInfo> GetModel(const std::string& name) const;
  // The bytes each token stands for in `model`'s vocabulary (not necessarily whole UTF-8
  // characters), as the OpenAI API's log-probabilities report them.
  absl::StatusOr<std::vector<std::string>> TokenBytes(const std::string& model,
                                                      const std::vector<int32_t>& ids) const;

  absl::StatusOr<StoredVector> CreateVector(const std::string& tenant,
                                            int64_t max_stored_vectors,
                                            const std::string& model, const std::string& name,
                                            std::string safetensors,
                                            const std::string& description);
  // CreateVector for a vector a training job produced: stored with source TRAINING and
  // the job's id, and, in the same store transaction, the job ends SUCCEEDED with this
  // version if its lease still has `lease_epoch` (see StoredVector::job_lease_epoch).
  absl::StatusOr<StoredVector> PublishTrainedVector(const std::string& tenant,
                                                    int64_t max_stored_vectors,
                                                    const std::string& model,
                                                    const std::string& name,
                                                    std::string safetensors,
                                                    const std::string& description,
                                                    const std::string& job_id,
                                                    int64_t lease_epoch);
  absl::StatusOr<StoredVector> GetVector(const std::string& tenant, const std::string& ref);
  // `query.model` is checked to name a loaded model when set.
  absl::StatusOr<VectorPage> ListVectors(const VectorListQuery& query);
  absl::StatusOr<std::pair<StoredVector, std::string>> ExportVector(const std::string& tenant,
                                                                    const std::string& ref);
  absl::StatusOr<std::vector<StoredVector>> DeleteVector(const std::string& tenant,
                                                         const std::string& ref);
  // A change another replica made to the shared store (its change feed): what
  // generations resolve "name" and "name@version" to from now on follows it. This
  // replica's own creates and deletes apply themselves.
  void ApplyVectorChange(const VectorChange& change);

  // Validates, tokenizes (or renders and tokenizes), resolves the vector to the version
  // current now and pins it, and queues the request. `tenant_max_new_tokens` (0 = none)
  // is the tenant's own cap. The observer hears OnAdmitted before this returns OK.
  absl::StatusOr<std::shared_ptr<GenerationHandle>> StartGeneration(
      const std::string& tenant, int64_t tenant_max_new_tokens, const GenerateParams& params,
      std::shared_ptr<GenerationObserver> observer);

  // A loaded model with its engine, for in-process users of the engine (the training
  // manager); defined in served_model.h, which needs torch. NOT_FOUND when not loaded.
  struct ServedModel;
  absl::StatusOr<ServedModel*> FindModel(const std::string& name) const;

 private:
  ServingCore(const Options& options, VectorStore* store, ServingMetrics* metrics);
  absl::StatusOr<StoredVector> StoreVector(const std::string& tenant, int64_t max_stored_vectors,
                                           const std::string& model, const std::string& name,
                                           std::string safetensors,
                                           const std::string& description,
                                           const std::string& job_id, int64_t lease_epoch);

  const Options options_;
  VectorStore* store_;
  // Resolves generations' vector references without a store read when it can.
  std::unique_ptr<VectorDirectory> directory_;
  ServingMetrics* metrics_;
  std::map<std::string, std::unique_ptr<ServedModel>> models_;  // Fixed after Create().
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_SERVING_CORE_H_
