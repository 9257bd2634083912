// The engine of one served model: a single thread that owns the model, its paged KV
// cache and every running sequence, and runs continuous batching. RPC threads only
// Submit() requests and receive their tokens through an observer; the forward pass
// takes no lock. Each iteration admits waiting requests into free rows while the KV
// cache has blocks for their prompts (their prompts prefilled together, after whatever
// prefix of each the prefix cache holds), then runs one decode step for every running
// row; finished, cancelled and timed-out sequences leave between steps and free their
// rows and blocks at once. A request the cache cannot take yet waits (it never fails for
// memory); a running row that needs a block when none is left preempts the youngest row,
// which frees its blocks and waits at the front of its queue to be recomputed from its
// prompt and tokens so far (vLLM's preemption by recomputation). Only full blocks of a
// prompt enter the prefix cache: prefills compute with batch-invariant kernels, so a
// cached block holds exactly the bits a cold prefill would compute, while decode steps
// use faster kernels whose bf16 results differ by rounding. Rows carry
// different steering vectors (or none) in the same batch: the batch's steering tensor
// is rebuilt only when the set of rows changes. The waiting queue is bounded, so an
// overloaded server answers RESOURCE_EXHAUSTED at once instead of growing latency.
// Background requests (training) wait in a queue of their own and take rows only when
// no serving request waits, and no more rows than serving holds, so serving comes first.
// Thread-safety: Submit(), Drain(), Cancel() and the accessors may be called from any
// thread; observers are called on the engine thread and must not block.
#ifndef STEERD_SERVER_ENGINE_ENGINE_H_
#define STEERD_SERVER_ENGINE_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine/generation_observer.h"
#include "server/engine/metrics.h"
#include "server/engine/vector_cache.h"
#include "server/model/generator.h"
#include "server/model/tokenizer.h"
#include "server/model/transformer.h"

namespace steerd {

struct EngineRequest {
  GenerationRequest generation;  // Prompt ids, sampling, limits; `steering` unused.
  std::shared_ptr<const ResidentVector> vector;  // Pinned for the request's life; or null.
  double steering_scale = 1.0;
  std::shared_ptr<GenerationObserver> observer;
  // Background work (training rollouts and evaluations): admitted only when no serving
  // request waits, into at most Options::max_background_rows rows, and never refused
  // for a full queue (its producer bounds how much it submits).
  bool background = false;
  // What must be equal for two requests to share cached keys and values: the model,
  // tenant, steering vector version and scale, as a string the caller builds. Empty:
  // the request neither uses nor fills the prefix cache.
  std::string prefix_namespace;
};

class Engine {
 public:
  struct Options {
    int64_t max_batch_size = 64;     // Running sequences (rows of the batch).
    int64_t max_waiting = 256;       // Admitted requests waiting for a row.
    int64_t max_prefill_tokens = 4096;  // Prompt tokens prefilled per iteration (at
                                        // least one request is always admitted).
    // Rows background requests may hold at once; while serving rows run, no more than
    // those (but at least min_background_rows).
    int64_t max_background_rows = 32;
    int64_t min_background_rows = 4;
    int64_t max_background_prefill_tokens = 64;  // Background prompt tokens per iteration.
    // The paged KV cache: blocks of kv_block_size positions; 0 blocks = room for
    // max_batch_size rows of the model's whole context.
    int64_t kv_cache_blocks = 0;
    int64_t kv_block_size = 16;
    // Whether prompts reuse cached blocks of earlier prompts in the same namespace
    // (EngineRequest::prefix_namespace).
    bool prefix_caching = true;
  };

  // `model` and `tokenizer` must outlive the engine. Allocates the KV cache and starts
  // the engine thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Options& options,
                                                        const Transformer* model,
                                                        const Tokenizer* tokenizer,
                                                        ModelMetrics metrics);
  ~Engine();  // Cancels whatever still runs and joins the thread.

  // Queues a request. RESOURCE_EXHAUSTED when the waiting queue is full; UNAVAILABLE
  // while draining. The observer hears about the request only when this returns OK.
  absl::StatusOr<std::shared_ptr<GenerationHandle>> Submit(EngineRequest request);

  // Stops admitting (Submit fails with UNAVAILABLE), lets running and waiting requests
  // finish until `deadline`, then ends the rest with finish reason kCancelled and stops
  // the thread. Returns when the thread has stopped.
  void Drain(absl::Time deadline);

  int64_t waiting() const;
  int64_t running() const { return running_count_.load(std::memory_order_relaxed); }
  int64_t kv_cache_blocks() const { return kv_blocks_; }
  int64_t kv_block_size() const { return options_.kv_block_size; }

 private:
  struct Sequence;

  Engine(const Options& options, const Transformer* model, const Tokenizer* tokenizer,
         ModelMetrics metrics);
  void Loop();
  // Takes waiting requests that fit (rows, prefill budget, KV blocks: each taken
  // sequence holds its blocks); blocks while there is nothing to do.
  std::vector<std::unique_ptr<Sequence>> TakeWork(bool have_running);
  // Gives `sequence` its cached prefix and the blocks for the rest of its prompt, unless
  // that would overrun `budget` prefill tokens (with `tokens` taken so far) or the pool.
  // `pending` holds the chain hashes other sequences of this round will register:
  // a sequence about to compute one of them waits one round and then hits the cache.
  bool Reserve(Sequence& sequence, int64_t budget, int64_t* tokens,
               std::vector<uint64_t>* pending) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Prefills `joining` and appends the sequences that did not finish at once.
  void Prefill(std::vector<std::unique_ptr<Sequence>> joining);
  // Gives every running row the block its next token goes to, preempting the youngest
  // rows while the pool has none.
  void GrowForDecode();
  // Frees running row `row`'s blocks and queues it again at the front of its queue.
  void Preempt(int64_t row);
  void DecodeStep();
  // Sends the sampled tokens to their sequences; returns the rows to keep.
  std::vector<int64_t> AcceptTokens(const std::vector<Sequence*>& rows,
                                    const std::vector<SampledToken>& tokens);
  // Drops running rows that were cancelled; with `end_all`, ends every row.
  void DropCancelled(bool end_all);
  void KeepRows(const std::vector<int64_t>& keep);
  // Appends `joined_rows` rows (their steering [L, joined_rows, 1, d], or undefined when
  // none is steered) to the batch's steering, before they join running_.
  absl::Status AppendSteering(const at::Tensor& joined, int64_t joined_rows);
  // Sets running_count_ and the running-sequences and KV-cache gauges from running_ and
  // the pool; after every change of the batch and every decode step.
  void PublishBatchGauges();
  // Ends the sequence: its observer hears `status`, its blocks go back to the pool.
  void FinishSequence(Sequence& sequence, absl::Status status);
  void FailAll(const absl::Status& status);

  const Options options_;
  const Transformer* model_;
  const Tokenizer* tokenizer_;
  const ModelMetrics metrics_;
  const std::vector<int64_t> eos_ids_;
  const int64_t kv_blocks_;  // Blocks of the pool.

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Sequence>> waiting_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Sequence>> background_waiting_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;  // End everything now and exit.
  std::atomic<int64_t> running_count_{0};

  // Engine thread only (TakeWork uses the pool under mu_, still on the engine thread).
  std::vector<std::unique_ptr<Sequence>> running_;
  std::unique_ptr<KvBlockPool> pool_;
  int64_t reported_evictions_ = 0;  // pool_->evictions() already counted in the metric
  // Row b steers running_[b]; kept in step with the cache's rows as sequences join
  // and leave, so a decode step never rebuilds it.
  at::Tensor steering_batch_;  // [L, running, 1, d] or undefined when no row is steered

  std::thread thread_;
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_ENGINE_H_
