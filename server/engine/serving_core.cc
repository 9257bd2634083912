#include "server/engine/serving_core.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "server/engine/engine.h"
#include "server/engine/generate_validation.h"
#include "server/engine/served_model.h"
#include "server/engine/vector_cache.h"
#include "server/engine/vector_ref.h"
#include "server/engine/vector_upload.h"
#include "server/model/steering_file.h"
#include "server/model/tokenizer.h"
#include "server/model/torch_util.h"
#include "server/model/transformer.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

constexpr size_t kMaxDescriptionBytes = 1024;

std::string DTypeLabel(at::ScalarType type) {
  return type == at::kBFloat16 ? "bfloat16" : type == at::kHalf ? "float16" : "float32";
}

// A short text of the kind the served models see (words, digits, punctuation) to
// measure their residual-stream scale on.
constexpr char kResidualProbeText[] =
    "Q: What is (12+7)*3-5?\nA: Step by step: 12+7=19, 19*3=57, 57-5=52. The answer is 52.";

// The model's residual RMS per layer on kResidualProbeText, float32 on the host.
absl::StatusOr<std::vector<float>> MeasureResidualRms(const Transformer& model,
                                                      const Tokenizer& tokenizer) {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(kResidualProbeText));
  const int64_t max_len = std::max<int64_t>(1, model.config().max_position_embeddings);
  if (static_cast<int64_t>(ids.size()) > max_len) ids.resize(max_len);
  ASSIGN_OR_RETURN(at::Tensor rms, ResidualRms(model, {ids}));  // [L]
  std::vector<float> out;
  RETURN_IF_ERROR(CatchTorchErrors("reading the residual RMS", [&]() -> absl::Status {
    const at::Tensor host = rms.to(at::kCPU, at::kFloat).contiguous();
    out.assign(host.data_ptr<float>(), host.data_ptr<float>() + host.numel());
    return absl::OkStatus();
  }));
  return out;
}

// The blocks of a model's paged KV cache: --kv-cache-bytes worth, or automatically
// room for max_batch_size rows of the whole context, capped at a quarter of the
// machine's memory (pages are touched only as blocks fill, but the operator should not
// be surprised by what a full cache takes).
absl::StatusOr<int64_t> KvCacheBlocks(const ServingCore::Options& options,
                                      const ModelConfig& config, at::ScalarType dtype) {
  const int64_t block_size = options.kv_block_size;
  if (block_size < 1 || block_size > 1024 || (block_size & (block_size - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-block-size must be a power of two from 1 to 1024 positions, got ", block_size));
  }
  const int64_t block_bytes = KvBlockPool::BytesPerBlock(config, dtype, options.kv_block_size);
  int64_t bytes = options.kv_cache_bytes;
  if (bytes == 0) {
    const int64_t context = std::max<int64_t>(1, config.max_position_embeddings);
    const int64_t full = options.max_batch_size *
                         ((context + options.kv_block_size - 1) / options.kv_block_size) *
                         block_bytes;
    const int64_t memory = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
    bytes = memory > 0 ? std::min(full, memory / 4) : full;
  }
  const int64_t blocks = bytes / block_bytes;
  if (blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-cache-bytes ", bytes, " holds no block: one block of ", options.kv_block_size,
        " positions takes ", block_bytes, " bytes for this model"));
  }
  return blocks;
}

// Waits for one generation to end (warm-up only).
class BlockingObserver : public GenerationObserver {
 public:
  void OnAdmitted(const AdmittedGeneration&) override {}
  void OnTokens(TokenDelta) override {}
  void OnFinished(const GenerationSummary& summary) override {
    status_ = summary.status;
    done_.Notify();
  }
  absl::Status Wait() {
    done_.WaitForNotification();
    return status_;
  }

 private:
  absl::Notification done_;
  absl::Status status_;
};

}  // namespace

ServingCore::ServingCore(const Options& options, VectorStore* store, ServingMetrics* metrics)
    : options_(options),
      store_(store),
      directory_(std::make_unique<VectorDirectory>(VectorDirectory::Options(), store)),
      metrics_(metrics) {}

ServingCore::~ServingCore() = default;

absl::StatusOr<std::unique_ptr<ServingCore>> ServingCore::Create(const Options& options,
                                                                 VectorStore* store,
                                                                 ServingMetrics* metrics) {
  if (store == nullptr || metrics == nullptr) {
    return absl::InvalidArgumentError("ServingCore needs a vector store and metrics");
  }
  if (options.models.empty()) return absl::InvalidArgumentError("no model to serve");
  if (options.vector_cache_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("vector cache size ",
                                                   options.vector_cache_size,
                                                   " must be at least 1"));
  }
  std::unique_ptr<ServingCore> core(new ServingCore(options, store, metrics));
  for (const ModelSpec& spec : options.models) {
    RETURN_IF_ERROR(ValidateVectorName(spec.name, "model name"));
    if (core->models_.count(spec.name) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("model name \"", spec.name,
                                                     "\" is given twice"));
    }
    auto served = std::make_unique<ServedModel>();
    Transformer::Options model_options;
    model_options.model_dir = spec.dir;
    model_options.dtype = options.dtype;
    model_options.device = options.device;
    model_options.num_threads =
        options.num_threads > 0 ? options.num_threads : DefaultComputeThreads(/*spare_cores=*/1);
    model_options.weights = options.weights;
    auto model = Transformer::Create(model_options);
    if (!model.ok()) {
      return absl::Status(model.status().code(), absl::StrCat("model \"", spec.name, "\": ",
                                                              model.status().message()));
    }
    served->model = std::move(*model);
    auto tokenizer = Tokenizer::Load(spec.dir);
    if (!tokenizer.ok()) {
      return absl::Status(tokenizer.status().code(),
                          absl::StrCat("model \"", spec.name, "\" needs a tokenizer: ",
                                       tokenizer.status().message()));
    }
    served->tokenizer = std::move(*tokenizer);
    auto chat = ChatTemplate::ForTokenizer(*served->tokenizer);
    if (chat.ok()) served->chat_template = std::move(*chat);
    auto residual_rms = MeasureResidualRms(*served->model, *served->tokenizer);
    if (!residual_rms.ok()) {
      return absl::Status(residual_rms.status().code(),
                          absl::StrCat("model \"", spec.name, "\": ",
                                       residual_rms.status().message()));
    }
    served->residual_rms = std::move(*residual_rms);

    const ModelConfig& config = served->model->config();
    ModelInfo& info = served->info;
    info.name = spec.name;
    info.architecture = config.architecture_name;
    info.num_layers = config.num_layers;
    info.hidden_size = config.hidden_size;
    info.vocab_size = config.vocab_size;
    info.max_context = config.max_position_embeddings;
    info.dtype = DTypeLabel(served->model->dtype());
    info.device = served->model->device().str();
    info.fingerprint = ModelFingerprint(config);
    info.chat_template = served->chat_template ? served->chat_template->family() : "";

    const ModelMetrics model_metrics = metrics->ForModel(spec.name);
    served->metrics = model_metrics;
    VectorCache::Options cache_options;
    cache_options.capacity = options.vector_cache_size;
    cache_options.dtype = served->model->dtype();
    cache_options.device = served->model->device();
    served->vectors = std::make_unique<VectorCache>(cache_options, config.num_layers,
                                                    config.hidden_size, model_metrics);
    Engine::Options engine_options;
    ASSIGN_OR_RETURN(engine_options.kv_cache_blocks,
                     KvCacheBlocks(options, config, served->model->dtype()));
    engine_options.kv_block_size = options.kv_block_size;
    engine_options.prefix_caching = options.prefix_caching;
    const int64_t block_bytes =
        KvBlockPool::BytesPerBlock(config, served->model->dtype(), options.kv_block_size);
    info.kv_cache_bytes = engine_options.kv_cache_blocks * block_bytes;
    info.kv_cache_positions = engine_options.kv_cache_blocks * options.kv_block_size;
    engine_options.max_batch_size = options.max_batch_size;
    engine_options.max_waiting = options.max_waiting;
    engine_options.max_prefill_tokens = options.max_prefill_tokens;
    engine_options.max_background_rows = options.max_background_rows;
    engine_options.min_background_rows = options.min_background_rows;
    ASSIGN_OR_RETURN(served->engine,
                     Engine::Create(engine_options, served->model.get(),
                                    served->tokenizer.get(), model_metrics));
    core->models_[spec.name] = std::move(served);
  }
  return core;
}

absl::Status ServingCore::Warmup() {
  for (auto& [name, served] : models_) {
    const ModelConfig& config = served->model->config();
    // One unsteered and one steered row through prefill and a few decode steps.
    auto zero = std::make_shared<ResidentVector>();
    // A named pointer for the lambda: C++17 lets no lambda capture a structured binding.
    const Transformer* model = served->model.get();
    RETURN_IF_ERROR(CatchTorchErrors("warming up", [&]() -> absl::Status {
      zero->vector = at::zeros({config.num_layers, config.hidden_size},
                               at::TensorOptions()
                                   .dtype(model->dtype())
                                   .device(model->device()));  // [L, d]
      return absl::OkStatus();
    }));
    // One request at a time: the warm-up goes through the serving queue, which may
    // hold a single request (--max-waiting 1).
    for (int i = 0; i < 2; ++i) {
      EngineRequest request;
      request.generation.prompt = {0, 1, 2, 3};
      request.generation.max_new_tokens = 4;
      request.generation.ignore_eos = true;
      if (i == 1) request.vector = zero;
      auto observer = std::make_shared<BlockingObserver>();
      request.observer = observer;
      RETURN_IF_ERROR(served->engine->Submit(std::move(request)).status());
      absl::Status status = observer->Wait();
      if (!status.ok()) {
        return absl::Status(status.code(), absl::StrCat("warming up model \"", name, "\": ",
                                                        status.message()));
      }
    }
  }
  return absl::OkStatus();
}

void ServingCore::Drain(absl::Time deadline) {
  // Every engine drains at the same time: each has the whole deadline.
  std::vector<std::thread> drains;
  for (auto& [name, served] : models_) {
    Engine* engine = served->engine.get();
    drains.emplace_back([engine, deadline] { engine->Drain(deadline); });
  }
  for (auto& t : drains) t.join();
}

std::vector<ModelInfo> ServingCore::ListModels() const {
  std::vector<ModelInfo> out;
  for (const auto& [name, served] : models_) out.push_back(served->info);
  return out;
}

absl::StatusOr<ServingCore::ServedModel*> ServingCore::FindModel(const std::string& name) const {
  if (name.empty()) return absl::InvalidArgumentError("model is empty");
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrCat("model \"", name.substr(0, 128),
                                            "\" is not loaded on this server"));
  }
  return it->second.get();
}

absl::StatusOr<ModelInfo> ServingCore::GetModel(const std::string& name) const {
  ASSIGN_OR_RETURN(ServedModel * served, FindModel(name));
  return served->info;
}

absl::StatusOr<std::vector<std::string>> ServingCore::TokenBytes(
    const std::string& model, const std::vector<int32_t>& ids) const {
  ASSIGN_OR_RETURN(ServedModel * served, FindModel(model));
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (int32_t id : ids) {
    ASSIGN_OR_RETURN(std::string bytes, served->tokenizer->TokenBytes(id));
    out.push_back(std::move(bytes));
  }
  return out;
}

absl::StatusOr<StoredVector> ServingCore::CreateVector(const std::string& tenant,
                                                       int64_t max_stored_vectors,
                                                       const std::string& model,
                                                       const std::string& name,
                                                       std::string safetensors,
                                                       const std::string& description) {
  return StoreVector(tenant, max_stored_vectors, model, name, std::move(safetensors),
                     description, /*job_id=*/"", /*lease_epoch=*/0);
}

absl::StatusOr<StoredVector> ServingCore::PublishTrainedVector(
    const std::string& tenant, int64_t max_stored_vectors, const std::string& model,
    const std::string& name, std::string safetensors, const std::string& description,
    const std::string& job_id, int64_t lease_epoch) {
  return StoreVector(tenant, max_stored_vectors, model, name, std::move(safetensors),
                     description, job_id, lease_epoch);
}

absl::StatusOr<StoredVector> ServingCore::StoreVector(const std::string& tenant,
                                                      int64_t max_stored_vectors,
                                                      const std::string& model,
                                                      const std::string& name,
                                                      std::string safetensors,
                                                      const std::string& description,
                                                      const std::string& job_id,
                                                      int64_t lease_epoch) {
  if (model.empty()) return absl::InvalidArgumentError("model is empty");
  RETURN_IF_ERROR(ValidateVectorName(name, "name"));
  if (description.size() > kMaxDescriptionBytes) {
    return absl::InvalidArgumentError(absl::StrCat("description is ", description.size(),
                                                   " bytes; the maximum is 1024"));
  }
  ASSIGN_OR_RETURN(ServedModel * served, FindModel(model));
  VectorTarget target;
  target.model = model;
  target.fingerprint = served->info.fingerprint;
  target.num_layers = served->info.num_layers;
  target.hidden_size = served->info.hidden_size;
  target.residual_rms = served->residual_rms;
  ASSIGN_OR_RETURN(ValidatedVector validated,
                   ValidateVectorUpload(std::move(safetensors), target));
  StoredVector metadata;
  metadata.tenant = tenant;
  metadata.name = name;
  metadata.model = model;
  metadata.model_fingerprint = target.fingerprint;
  metadata.num_layers = target.num_layers;
  metadata.hidden_size = target.hidden_size;
  metadata.dtype = validated.dtype;
  metadata.sha256 = validated.sha256;
  metadata.size_bytes = validated.safetensors.size();
  metadata.layer_norms = validated.layer_norms;
  metadata.source =
      job_id.empty() ? StoredVector::Source::kUpload : StoredVector::Source::kTraining;
  metadata.job_id = job_id;
  metadata.job_lease_epoch = lease_epoch;
  metadata.description = description;
  ASSIGN_OR_RETURN(StoredVector stored,
                   store_->Create(metadata, validated.safetensors, max_stored_vectors));
  ApplyVectorChange({0, tenant, stored.name, stored.version, VectorChange::Kind::kCreated});
  return stored;
}

void ServingCore::ApplyVectorChange(const VectorChange& change) { directory_->Apply(change); }

absl::StatusOr<StoredVector> ServingCore::GetVector(const std::string& tenant,
                                                    const std::string& ref) {
  ASSIGN_OR_RETURN(VectorReference parsed, ParseVectorReference(ref, "name"));
  return store_->Get(tenant, parsed.name, parsed.version);
}

absl::StatusOr<VectorPage> ServingCore::ListVectors(const VectorListQuery& query) {
  if (!query.name.empty()) RETURN_IF_ERROR(ValidateVectorName(query.name, "name filter"));
  if (!query.model.empty()) RETURN_IF_ERROR(FindModel(query.model).status());
  return store_->List(query);
}

absl::StatusOr<std::pair<StoredVector, std::string>> ServingCore::ExportVector(
    const std::string& tenant, const std::string& ref) {
  ASSIGN_OR_RETURN(StoredVector vector, GetVector(tenant, ref));
  ASSIGN_OR_RETURN(std::string bytes, store_->ReadBytes(tenant, vector.name, vector.version));
  return std::make_pair(std::move(vector), std::move(bytes));
}

absl::StatusOr<std::vector<StoredVector>> ServingCore::DeleteVector(const std::string& tenant,
                                                                    const std::string& ref) {
  ASSIGN_OR_RETURN(VectorReference parsed, ParseVectorReference(ref, "name"));
  ASSIGN_OR_RETURN(std::vector<StoredVector> deleted,
                   store_->Delete(tenant, parsed.name, parsed.version));
  for (const StoredVector& vector : deleted) {
    ApplyVectorChange({0, tenant, vector.name, vector.version, VectorChange::Kind::kDeleted});
  }
  return deleted;
}

absl::StatusOr<std::shared_ptr<GenerationHandle>> ServingCore::StartGeneration(
    const std::string& tenant, int64_t tenant_max_new_tokens, const GenerateParams& params,
    std::shared_ptr<GenerationObserver> observer) {
  RETURN_IF_ERROR(ValidateGenerateParams(params));
  std::optional<VectorReference> ref;
  if (!params.vector.empty()) {
    ASSIGN_OR_RETURN(ref, ParseVectorReference(params.vector, "steering.vector"));
  }
  ASSIGN_OR_RETURN(ServedModel * served, FindModel(params.model));
  const ModelInfo& info = served->info;
  const int64_t context = info.max_context;
  if (params.max_new_tokens > context) {
    return InvalidFieldError("sampling.max_new_tokens",
                             absl::StrCat(params.max_new_tokens, " exceeds model \"",
                                          info.name, "\"'s context of ", context, " tokens"));
  }
  if (options_.max_new_tokens > 0 && params.max_new_tokens > options_.max_new_tokens) {
    return InvalidFieldError("sampling.max_new_tokens",
                             absl::StrCat(params.max_new_tokens,
                                          " exceeds this server's maximum of ",
                                          options_.max_new_tokens));
  }
  if (tenant_max_new_tokens > 0 && params.max_new_tokens > tenant_max_new_tokens) {
    return LimitError(absl::StatusCode::kResourceExhausted,
                      absl::StrCat("sampling.max_new_tokens ", params.max_new_tokens,
                                   " is over the tenant's limit of ", tenant_max_new_tokens,
                                   " (max_new_tokens)"),
                      "max_new_tokens", absl::StrCat(tenant_max_new_tokens),
                      params.max_new_tokens);
  }
  int64_t max_new = params.max_new_tokens > 0 ? params.max_new_tokens
                                              : options_.default_max_new_tokens;
  if (options_.max_new_tokens > 0) max_new = std::min(max_new, options_.max_new_tokens);
  if (tenant_max_new_tokens > 0) max_new = std::min(max_new, tenant_max_new_tokens);

  // The tokens the model continues.
  std::vector<int32_t> prompt;
  if (params.prompt_token_ids.has_value()) {
    prompt = *params.prompt_token_ids;
    const int32_t vocab = served->tokenizer->vocab_size();
    for (size_t i = 0; i < prompt.size(); ++i) {
      if (prompt[i] < 0 || prompt[i] >= vocab) {
        return InvalidFieldError(absl::StrCat("prompt[", i, "]"),
                                 absl::StrCat("token id ", prompt[i], " is not in model \"",
                                              info.name, "\"'s vocabulary [0, ", vocab, ")"));
      }
    }
  }
  std::string text;
  if (params.prompt_token_ids.has_value()) {
    // Taken as given.
  } else if (params.messages.has_value()) {
    if (!served->chat_template.has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model \"", info.name,
          "\" has no chat template steerd recognises; send a raw prompt instead of messages"));
    }
    ASSIGN_OR_RETURN(text, served->chat_template->Render(*params.messages));
  } else {
    text = *params.prompt;
  }
  // A rendered conversation carries its own special tokens (BOS included), as Hugging
  // Face's apply_chat_template tokenizes it.
  if (!params.prompt_token_ids.has_value()) {
    ASSIGN_OR_RETURN(prompt,
                     served->tokenizer->Encode(text, /*add_special_tokens=*/!params.messages));
  }
  const int64_t prompt_tokens = prompt.size();
  if (prompt_tokens == 0) return absl::InvalidArgumentError("the prompt encodes to no tokens");
  if (prompt_tokens >= context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt is ", prompt_tokens, " tokens; model \"", info.name, "\"'s context is ",
        context, " tokens, which leaves no room to generate"));
  }
  if (options_.max_prompt_tokens > 0 && prompt_tokens > options_.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt is ", prompt_tokens,
                                                   " tokens; this server accepts at most ",
                                                   options_.max_prompt_tokens));
  }

  EngineRequest request;
  AdmittedGeneration admitted;
  admitted.prompt_tokens = prompt_tokens;
  if (ref.has_value()) {
    // From memory when this replica knows the version (or the name's latest), so that
    // generation goes on while the store is unreachable.
    ASSIGN_OR_RETURN(StoredVector vector, directory_->Resolve(tenant, ref->name, ref->version));
    if (vector.model_fingerprint != info.fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat(
          "vector \"", vector.name, "@", vector.version, "\" was made for model fingerprint \"",
          vector.model_fingerprint, "\" but model \"", info.name, "\" has \"",
          info.fingerprint, "\""));
    }
    const std::string source = absl::StrCat("vector \"", vector.name, "@", vector.version, "\"");
    auto load = [&]() -> absl::StatusOr<std::vector<float>> {
      ASSIGN_OR_RETURN(std::string bytes, store_->ReadBytes(tenant, vector.name, vector.version));
      return ReadVectorValues(std::move(bytes), source);
    };
    ASSIGN_OR_RETURN(request.vector, served->vectors->Acquire(vector.sha256, load));
    request.steering_scale = params.scale;
    // Steering changes every layer's keys and values after the first: a cached prefix
    // is this tenant's, under this exact version (and its bytes) and scale.
    request.prefix_namespace =
        absl::StrCat(info.name, "\x1f", tenant, "\x1f", vector.name, "@", vector.version,
                     "\x1f", vector.sha256, "\x1f", absl::StrFormat("%a", params.scale));
    admitted.vector_name = vector.name;
    admitted.vector_version = vector.version;
  }
  admitted.seed = params.seed.has_value() ? *params.seed : std::random_device()();
  if (!params.seed.has_value()) {
    admitted.seed = (admitted.seed << 32) ^ std::random_device()();
  }

  if (!ref.has_value()) {
    // Unsteered: the tenant's own, unless the operator lets tenants share.
    request.prefix_namespace = absl::StrCat(
        info.name, "\x1f", options_.share_unsteered_prefixes ? "" : tenant, "\x1f-");
  }
  GenerationRequest& generation = request.generation;
  generation.prompt = std::move(prompt);
  generation.sampling.temperature = params.temperature;
  generation.sampling.top_p = params.top_p == 0.0 ? 1.0 : params.top_p;
  generation.sampling.top_k = params.top_k >= info.vocab_size ? 0 : params.top_k;
  generation.sampling.seed = admitted.seed;
  generation.max_new_tokens = std::min(max_new, context - prompt_tokens);
  generation.stop_strings = params.stop;
  generation.ignore_eos = params.ignore_eos;
  generation.return_logprobs = params.return_logprobs;
  RETURN_IF_ERROR(ValidateGenerationRequest(generation, served->model->config(),
                                            served->tokenizer.get()));
  observer->OnAdmitted(admitted);
  request.observer = std::move(observer);
  return served->engine->Submit(std::move(request));
}

}  // namespace steerd
