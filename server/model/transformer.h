// The decoder-only transformer of the Llama and Qwen2 families, written directly in
// libtorch so that it computes what Hugging Face transformers computes (RMSNorm in
// float32, rotate-half RoPE with llama3/linear scaling, grouped-query attention with a
// causal mask and left padding, SwiGLU MLP, tied or untied LM head) and adds a
// steering vector to each decoder layer's output, with a different vector (or none)
// for every row of a batch, and optionally a LoRA adapter for the whole batch. Weights
// are frozen unless MakeWeightsTrainable() was called (full fine-tuning); when the
// steering tensor, the adapter or the weights require grad (and grad mode is on),
// gradients flow through the whole forward pass (the trainer's path).
// Thread-safety: the model is immutable after Create() (except for a trainer that owns
// it); Forward() is const and may be called from several threads with distinct caches,
// though steerd's engine calls it from one thread.
#ifndef STEERD_SERVER_MODEL_TRANSFORMER_H_
#define STEERD_SERVER_MODEL_TRANSFORMER_H_

#include <ATen/ATen.h>
// at::GradMode, at::NoGradGuard: ATen/ATen.h no longer brings them in libtorch 2.x.
#include <ATen/core/grad_mode.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/config.h"
#include "server/model/kv_cache.h"
#include "server/model/lora.h"
#include "server/model/paged_kv_cache.h"

namespace steerd {

struct PagedTokens;  // cpu_kernels.h: where the packed tokens of a paged forward sit.

// One row's steering: `vector` is [num_layers, hidden_size] (any float dtype, any
// device) or undefined for none; row l of `scale * vector` is added to layer l's output.
struct SteeringRow {
  at::Tensor vector;
  double scale = 1.0;
};

struct ForwardInput {
  at::Tensor tokens;              // [B, T] int64: T new tokens for every row.
  std::vector<int64_t> left_pad;  // [B] leading pad tokens per row, or empty for none.
                                  // Only rows whose cache is still empty may be padded.
  at::Tensor steering;            // [L, B, 1, d] compute dtype (MakeSteeringBatch), or
                                  // undefined when no row is steered.
  enum class Logits { kLast, kAll };
  Logits logits = Logits::kLast;  // kLast: only each row's last position (generation).
  const LoraAdapter* lora = nullptr;  // Applied to every row, or null.
  // When set, receives each decoder layer's output (after steering), [B, T, d] each:
  // the residual stream the trainer scales steering updates to.
  std::vector<at::Tensor>* layer_outputs = nullptr;
};

// A forward over the paged KV cache: row b appends tokens[b] to a sequence whose first
// cached[b] positions are already in its blocks (a prefill continues after a prefix-cache
// hit; a decode step is one token per row). Rows need no padding: their tokens are
// packed.
struct PagedForwardInput {
  std::vector<std::vector<int32_t>> tokens;  // [B][T_b], T_b >= 1: each row's new tokens
  std::vector<int64_t> cached;               // [B] positions already in the row's blocks
  // [B] each row's block table, covering positions [0, cached[b] + T_b); must outlive the
  // call.
  std::vector<const std::vector<int32_t>*> block_tables;
  at::Tensor steering;  // [L, B, 1, d] compute dtype (MakeSteeringBatch), or undefined.
  // A prefill: every linear takes a kernel whose rows do not depend on the rows sharing
  // the call (where the CPU has one), so a position's keys, values and logits are the
  // same bits whether its prompt was prefilled whole, after a cached prefix, or beside
  // other prompts: what makes prefix reuse exact. Decode steps keep the fastest kernels.
  bool prefill = false;
};

class Transformer {
 public:
  // Which implementations a forward's ops take.
  enum class KernelPath {
    kTensorOps,       // libtorch ops (and the bf16 kernels, which refuse autograd)
    kFast,            // generation: the CPU kernels
    kBatchInvariant,  // a paged prefill: see PagedForwardInput::prefill
  };

  struct Options {
    std::string model_dir;         // Hugging Face folder: config.json + safetensors.
    std::string dtype = "auto";    // auto | f32 | bf16 | f16 (auto: the checkpoint's).
    std::string device = "auto";   // auto | cpu | cuda
    int num_threads = 0;           // CPU intra-op threads; 0 = DefaultComputeThreads(0).
    std::string weights = "mapped";  // CPU weight memory: mapped | hugepages (see
                                     // weights.h).
  };

  static absl::StatusOr<std::unique_ptr<Transformer>> Create(const Options& options);

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  const at::Device& device() const { return device_; }
  // Bytes of parameters held (in the compute dtype).
  int64_t weight_bytes() const { return weight_bytes_; }

  // An empty cache sized for `batch` rows of up to `capacity` positions.
  KvCache NewCache(int64_t batch, int64_t capacity) const;

  // Stacks per-row steering into the [L, B, 1, d] tensor Forward() adds. Returns an
  // undefined tensor when no row is steered, so unsteered batches pay nothing. Keeps
  // the autograd graph of vectors that require grad.
  absl::StatusOr<at::Tensor> MakeSteeringBatch(const std::vector<SteeringRow>& rows) const;

  // Runs the new tokens of every row through the model, appending them to `cache`
  // (may be null: then each row starts empty and nothing is kept). Returns float32
  // logits: [B, V] for Logits::kLast, [B, T, V] for kAll.
  absl::StatusOr<at::Tensor> Forward(const ForwardInput& input, KvCache* cache) const;

  // Runs each row's new tokens through the model over the paged cache `pool`, writing
  // their keys and values into the rows' blocks. Returns the float32 logits of each
  // row's last new token, [B, V]. No autograd.
  absl::StatusOr<at::Tensor> ForwardPaged(const PagedForwardInput& input,
                                          KvBlockPool* pool) const;
  // A pool for this model's shape, dtype and device.
  absl::StatusOr<std::unique_ptr<KvBlockPool>> NewBlockPool(int64_t num_blocks,
                                                            int64_t block_size) const;

  // The logit-lens view of directions in the residual stream: for each row v of
  // `vectors` ([N, d]), the logits lm_head (final_norm * v) that it adds, [N, V] float32
  // on CPU (the final norm's scaling is left out: it does not change the ranking).
  absl::StatusOr<at::Tensor> LogitLens(const at::Tensor& vectors) const;

  // Full fine-tuning: replaces every weight by an owned copy (mapped files are
  // read-only) that requires grad. Call before any other thread uses the model.
  absl::Status MakeWeightsTrainable();
  bool weights_trainable() const { return weights_trainable_; }
  // Every distinct weight tensor (a tied head counted once), in a fixed order.
  std::vector<at::Tensor> Weights() const;
  // The weights under their Hugging Face names (gate/up as views of the fused tensor),
  // for writing a checkpoint.
  std::vector<std::pair<std::string, at::Tensor>> NamedWeights() const;

 private:
  struct Layer {
    at::Tensor input_norm;           // [d]
    at::Tensor q_w, k_w, v_w, o_w;   // [H*hd, d], [KVH*hd, d], [KVH*hd, d], [d, H*hd]
    at::Tensor q_b, k_b, v_b, o_b;   // biases or undefined
    at::Tensor post_norm;            // [d]
    at::Tensor gate_up_w;            // [2I, d]: gate_proj rows, then up_proj rows
    at::Tensor gate_up_b;            // [2I] or undefined
    at::Tensor down_w;               // [d, I]
    at::Tensor down_b;               // [d] or undefined
  };

  Transformer() = default;
  absl::Status Validate(const ForwardInput& input, const KvCache* cache) const;
  // `path`: which kernels the ops may take (see ForwardImpl).
  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, KernelPath path) const;
  // `mask` is [B, T, S], or undefined for the fused bf16 / float32 decode path.
  at::Tensor Attention(const Layer& layer, const at::Tensor& h, const at::Tensor& cos,
                       const at::Tensor& sin, const at::Tensor& mask, int64_t layer_index,
                       KvCache* cache, const std::vector<int64_t>& start,
                       const std::vector<int64_t>& write_at, int64_t key_len,
                       const LoraAdapter* lora, KernelPath path) const;
  at::Tensor Mlp(const Layer& layer, const at::Tensor& h, int64_t layer_index,
                 const LoraAdapter* lora, KernelPath path) const;
  at::Tensor ForwardImpl(const ForwardInput& input, KvCache* cache) const;
  absl::Status ValidatePaged(const PagedForwardInput& input, const KvBlockPool& pool) const;
  at::Tensor ForwardPagedImpl(const PagedForwardInput& input, KvBlockPool* pool) const;
  // Attention of the packed tokens `h` ([N, d]), where `tokens` places them, over the
  // pool: writes their keys and values, returns the o_proj output [N, d].
  at::Tensor PagedAttention(const Layer& layer, const at::Tensor& h, const at::Tensor& cos,
                            const at::Tensor& sin, int64_t layer_index, KvBlockPool* pool,
                            const PagedForwardInput& input,
                            const PagedTokens& tokens, KernelPath path) const;

  ModelConfig config_;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::Device(at::kCPU);
  int64_t weight_bytes_ = 0;
  bool weights_trainable_ = false;
  at::Tensor embed_;       // [V, d]
  at::Tensor final_norm_;  // [d]
  at::Tensor lm_head_;     // [V, d] (embed_ when tied)
  at::Tensor inv_freq_;    // [hd / 2] float32, with rope scaling applied
  std::vector<Layer> layers_;
};

// The scale of each decoder layer's output (the residual stream steering adds to):
// for every layer, the median over all positions of `prompts` of the position's RMS
// over the hidden dimension. A median, because models keep a few positions (often the
// first) orders of magnitude above the rest, which a mean would follow. Returns [L]
// float32 on the model's device; INVALID_ARGUMENT without a non-empty prompt.
absl::StatusOr<at::Tensor> ResidualRms(const Transformer& model,
                                       const std::vector<std::vector<int32_t>>& prompts);

// Hugging Face's RoPE inverse frequencies for `config` (float32 [head_dim / 2]),
// including llama3 and linear scaling.
at::Tensor RopeInverseFrequencies(const ModelConfig& config);

// RoPE cos and sin tables, each [B, T, head_dim] float32, for `positions` [B, T] int64
// (emb = cat(f, f), f = position * inv_freq in float32). The supported rope types all
// have an attention scaling of 1.
std::pair<at::Tensor, at::Tensor> RopeCosSin(const at::Tensor& inv_freq,
                                             const at::Tensor& positions);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_TRANSFORMER_H_
