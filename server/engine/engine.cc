#include "server/engine/engine.h"

#include <ATen/Parallel.h>
#include <pthread.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/model/torch_util.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {

using Clock = std::chrono::steady_clock;

struct Engine::Sequence {
  EngineRequest request;
  std::shared_ptr<GenerationHandle> handle;
  std::unique_ptr<SequenceState> state;
  Clock::time_point submitted;
  Clock::time_point last_token;
  bool started = false;  // The first token was produced.
  int32_t last_token_id = 0;
  // The paged KV cache. `tokens` is what a prefill computes: the prompt, and after a
  // preemption the tokens generated so far too; `cached` positions of it are in
  // `blocks`, the row's block table.
  std::vector<int32_t> tokens;
  std::vector<uint64_t> block_hashes;  // Chain hashes of tokens' full blocks, when cached.
  std::vector<int32_t> blocks;
  int64_t cached = 0;
  bool admitted_before = false;  // A preempted sequence coming back.
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Options& options,
                                                       const Transformer* model,
                                                       const Tokenizer* tokenizer,
                                                       ModelMetrics metrics) {
  if (model == nullptr) return absl::InvalidArgumentError("Engine needs a model");
  if (options.max_batch_size < 1 || options.max_waiting < 1 || options.max_prefill_tokens < 1 ||
      options.max_background_rows < 0 || options.min_background_rows < 0 ||
      options.max_background_prefill_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine limits must be positive: max_batch_size ", options.max_batch_size,
        ", max_waiting ", options.max_waiting, ", max_prefill_tokens ",
        options.max_prefill_tokens, ", max_background_rows ", options.max_background_rows,
        ", min_background_rows ", options.min_background_rows));
  }
  if (options.kv_cache_blocks < 0 || options.kv_block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the KV cache needs a positive block size and a block count >= 0 (0 = automatic); "
        "got ", options.kv_cache_blocks, " blocks of ", options.kv_block_size));
  }
  std::unique_ptr<Engine> engine(new Engine(options, model, tokenizer, metrics));
  ASSIGN_OR_RETURN(engine->pool_, model->NewBlockPool(engine->kv_blocks_, options.kv_block_size));
  if (metrics.kv_blocks_total) metrics.kv_blocks_total->Set(engine->kv_blocks_);
  const int threads = at::get_num_threads();
  engine->thread_ = std::thread([e = engine.get(), threads] {
    // Named for top -H, perf and debuggers.
    pthread_setname_np(pthread_self(), "steerd-engine");
    // Thread-local settings: the caller's intra-op thread count, no autograd.
    at::set_num_threads(threads);
    c10::InferenceMode inference;
    e->Loop();
  });
  return engine;
}

Engine::Engine(const Options& options, const Transformer* model, const Tokenizer* tokenizer,
               ModelMetrics metrics)
    : options_(options),
      model_(model),
      tokenizer_(tokenizer),
      metrics_(metrics),
      eos_ids_(EosIds(model->config(), tokenizer)),
      kv_blocks_(options.kv_cache_blocks > 0
                     ? options.kv_cache_blocks
                     : options.max_batch_size *
                           ((std::max<int64_t>(1, model->config().max_position_embeddings) +
                             options.kv_block_size - 1) /
                            options.kv_block_size)) {}

Engine::~Engine() {
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::shared_ptr<GenerationHandle>> Engine::Submit(EngineRequest request) {
  // Every admitted request must be able to finish alone in the pool, or a full pool
  // could never make room for it.
  const int64_t prompt = request.generation.prompt.size();
  const int64_t longest = std::min<int64_t>(
      prompt + std::max<int64_t>(0, request.generation.max_new_tokens),
      std::max<int64_t>(prompt + 1, model_->config().max_position_embeddings));
  const int64_t blocks = (longest + options_.kv_block_size - 1) / options_.kv_block_size;
  if (blocks > kv_blocks_) {
    return WithReason(
        absl::InvalidArgumentError(absl::StrCat(
            "the request needs up to ", longest, " positions of KV cache (", prompt,
            " prompt tokens plus max_new_tokens) but this server's KV cache holds ",
            kv_blocks_ * options_.kv_block_size,
            " (--kv-cache-bytes); shorten the prompt or lower max_new_tokens")),
        "KV_CACHE_TOO_SMALL",
        {{"needed_positions", absl::StrCat(longest)},
         {"kv_cache_positions", absl::StrCat(kv_blocks_ * options_.kv_block_size)}});
  }
  auto sequence = std::make_unique<Sequence>();
  sequence->state =
      std::make_unique<SequenceState>(request.generation, tokenizer_, eos_ids_);
  sequence->request = std::move(request);
  sequence->handle = std::make_shared<GenerationHandle>();
  sequence->submitted = Clock::now();
  std::shared_ptr<GenerationHandle> handle = sequence->handle;
  absl::MutexLock lock(&mu_);
  if (draining_) {
    return DrainingError();
  }
  if (sequence->request.background) {
    background_waiting_.push_back(std::move(sequence));
    return handle;
  }
  if (static_cast<int64_t>(waiting_.size()) >= options_.max_waiting) {
    ErrorDetails details;
    details.reason = "QUEUE_FULL";
    details.metadata = {{"limit", "max_waiting"},
                        {"limit_value", absl::StrCat(options_.max_waiting)}};
    details.retry_delay = absl::Seconds(1);
    return WithErrorDetails(
        absl::ResourceExhaustedError(absl::StrCat(
            "the server is overloaded: ", waiting_.size(),
            " requests are already waiting for this model (max_waiting); retry later")),
        details);
  }
  waiting_.push_back(std::move(sequence));
  if (metrics_.queue_depth) metrics_.queue_depth->Set(waiting_.size());
  return handle;
}

void Engine::Drain(absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return waiting_.empty() && background_waiting_.empty() && running_count_.load() == 0;
    };
    // The engine thread takes mu_ every iteration, which re-evaluates the condition.
    mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

int64_t Engine::waiting() const {
  absl::MutexLock lock(&mu_);
  return waiting_.size();
}

void Engine::Loop() {
  while (true) {
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      stop = stop_;
    }
    if (stop) {
      DropCancelled(/*end_all=*/true);
      std::deque<std::unique_ptr<Sequence>> waiting;
      {
        absl::MutexLock lock(&mu_);
        waiting.swap(waiting_);
        for (auto& sequence : background_waiting_) waiting.push_back(std::move(sequence));
        background_waiting_.clear();
      }
      for (auto& sequence : waiting) {
        sequence->state->Cancel();
        FinishSequence(*sequence, absl::OkStatus());
      }
      return;
    }
    DropCancelled(/*end_all=*/false);
    std::vector<std::unique_ptr<Sequence>> joining = TakeWork(!running_.empty());
    if (!joining.empty()) {
      Prefill(std::move(joining));
      // A client may have cancelled while its first token was delivered: its row
      // leaves before the decode step that follows.
      DropCancelled(/*end_all=*/false);
    }
    if (!running_.empty()) DecodeStep();
  }
}

std::vector<std::unique_ptr<Engine::Sequence>> Engine::TakeWork(bool have_running) {
  std::vector<std::unique_ptr<Sequence>> taken, cancelled;
  {
    absl::MutexLock lock(&mu_);
    if (!have_running) {
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || !waiting_.empty() || !background_waiting_.empty();
      };
      mu_.Await(absl::Condition(&has_work));
      if (stop_) return taken;
    }
    // Cancelled requests leave the queues at once, wherever they are in them.
    for (auto* queue : {&waiting_, &background_waiting_}) {
      for (auto it = queue->begin(); it != queue->end();) {
        if ((*it)->handle->cancelled()) {
          cancelled.push_back(std::move(*it));
          it = queue->erase(it);
        } else {
          ++it;
        }
      }
    }
    int64_t tokens = 0;
    std::vector<uint64_t> pending;  // Chain hashes this round's prefills will register.
    // Takes the front of `queue` while rows, the prefill budget and the KV cache allow
    // and `room` says yes (at least one request when nothing else joins and the cache
    // has room).
    auto admit = [&](std::deque<std::unique_ptr<Sequence>>& queue, int64_t budget, auto room)
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      while (!queue.empty() &&
             static_cast<int64_t>(running_.size() + taken.size()) < options_.max_batch_size &&
             room()) {
        if (!Reserve(*queue.front(), taken.empty() ? -1 : budget, &tokens, &pending)) break;
        taken.push_back(std::move(queue.front()));
        queue.pop_front();
      }
    };
    admit(waiting_, options_.max_prefill_tokens, [] { return true; });
    if (waiting_.empty() && !background_waiting_.empty()) {
      // Background prefill is metered in small slices: a long prefill is a long pause
      // for every running serving row.
      int64_t background_rows = 0;
      for (const auto& sequence : running_) background_rows += sequence->request.background;
      const int64_t serving_rows =
          static_cast<int64_t>(running_.size() + taken.size()) - background_rows;
      // While serving rows run, background rows are at most as many (and at least a
      // few, so training advances): a decode step's cost grows with its rows, so serving
      // latency at most about doubles.
      const int64_t cap =
          serving_rows == 0
              ? options_.max_background_rows
              : std::min(options_.max_background_rows,
                         std::max(serving_rows, options_.min_background_rows));
      admit(background_waiting_,
            std::min(options_.max_prefill_tokens, tokens + options_.max_background_prefill_tokens),
            [&] { return background_rows++ < cap; });
    }
    if (metrics_.queue_depth) metrics_.queue_depth->Set(waiting_.size());
  }
  for (auto& sequence : cancelled) {
    FinishSequence(*sequence, absl::CancelledError("the request was cancelled"));
  }
  return taken;
}

bool Engine::Reserve(Sequence& s, int64_t budget, int64_t* tokens,
                     std::vector<uint64_t>* pending) {
  const int64_t block_size = pool_->block_size();
  const std::string& name_space = s.request.prefix_namespace;
  const bool caching = options_.prefix_caching && !name_space.empty();
  if (s.tokens.empty()) {
    // First admission, or back from a preemption: the prompt and what it generated.
    s.tokens = s.request.generation.prompt;
    const std::vector<int32_t>& generated = s.state->result().tokens;
    s.tokens.insert(s.tokens.end(), generated.begin(), generated.end());
    if (caching) s.block_hashes = pool_->ChainHashes(name_space, s.tokens);
  }
  const int64_t length = s.tokens.size();
  // The last token is always computed: its logits pick the next token.
  std::vector<int32_t> matched =
      caching ? pool_->Match(name_space, s.tokens, s.block_hashes, (length - 1) / block_size)
              : std::vector<int32_t>();
  const int64_t hit = static_cast<int64_t>(matched.size());
  const int64_t computed = length - hit * block_size;
  // Another prefill of this round computes the block this one would start with: wait a
  // round, then take it from the cache (rollouts of one prompt share its prefill).
  const bool duplicate =
      caching && hit < static_cast<int64_t>(s.block_hashes.size()) &&
      std::find(pending->begin(), pending->end(), s.block_hashes[hit]) != pending->end();
  std::vector<int32_t> fresh;
  if (duplicate || (budget >= 0 && *tokens + computed > budget) ||
      !pool_->Allocate(pool_->BlocksFor(length) - hit, &fresh)) {
    pool_->Release(matched);
    return false;
  }
  *tokens += computed;
  s.blocks = std::move(matched);
  s.blocks.insert(s.blocks.end(), fresh.begin(), fresh.end());
  s.cached = hit * block_size;
  if (caching) {
    const int64_t registered =
        static_cast<int64_t>(s.request.generation.prompt.size()) / block_size;
    for (int64_t i = hit; i < registered; ++i) pending->push_back(s.block_hashes[i]);
  }
  if (!s.admitted_before) {
    if (metrics_.prefix_cache_queried_tokens) {
      metrics_.prefix_cache_queried_tokens->Increment(length);
    }
    if (metrics_.prefix_cache_hit_tokens) {
      metrics_.prefix_cache_hit_tokens->Increment(hit * block_size);
    }
  }
  return true;
}

void Engine::Prefill(std::vector<std::unique_ptr<Sequence>> joining) {
  const int64_t n = joining.size();
  PagedForwardInput input;
  input.prefill = true;
  std::vector<SteeringRow> steering;
  int64_t prompt_tokens = 0;
  for (const auto& s : joining) {
    input.tokens.emplace_back(s->tokens.begin() + s->cached, s->tokens.end());
    input.cached.push_back(s->cached);
    input.block_tables.push_back(&s->blocks);
    if (!s->admitted_before) prompt_tokens += s->request.generation.prompt.size();
    const auto& vector = s->request.vector;
    steering.push_back({vector ? vector->vector : at::Tensor(), s->request.steering_scale});
  }
  absl::StatusOr<at::Tensor> logits = [&]() -> absl::StatusOr<at::Tensor> {
    ASSIGN_OR_RETURN(input.steering, model_->MakeSteeringBatch(steering));
    return model_->ForwardPaged(input, pool_.get());  // [n, V]
  }();
  if (metrics_.decode_steps) metrics_.decode_steps->Increment();
  if (metrics_.prompt_tokens) metrics_.prompt_tokens->Increment(prompt_tokens);
  std::vector<Sequence*> rows;
  std::vector<SequenceSampler*> samplers;
  bool any_logprobs = false;
  for (auto& s : joining) {
    rows.push_back(s.get());
    samplers.push_back(s->state->sampler());
    any_logprobs |= s->request.generation.return_logprobs;
  }
  absl::StatusOr<std::vector<SampledToken>> sampled =
      logits.ok() ? SampleBatch(*logits, samplers, any_logprobs) : logits.status();
  if (!sampled.ok()) {
    const absl::Status error = absl::InternalError(
        absl::StrCat("prefill failed: ", sampled.status().message()));
    for (auto& s : joining) FinishSequence(*s, error);
    return;
  }
  const int64_t block_size = pool_->block_size();
  for (auto& s : joining) {
    const int64_t first_computed = s->cached / block_size;  // Blocks before it were hits.
    s->cached = s->tokens.size();
    s->admitted_before = true;
    // The prompt's full blocks are cached for later prompts (generated tokens' blocks
    // are not: see the header).
    if (options_.prefix_caching && !s->block_hashes.empty()) {
      const int64_t full = static_cast<int64_t>(s->request.generation.prompt.size()) / block_size;
      for (int64_t i = first_computed; i < full; ++i) {
        pool_->Register(s->blocks[i], i, s->request.prefix_namespace, s->tokens, s->block_hashes);
      }
    }
  }
  const std::vector<int64_t> keep = AcceptTokens(rows, *sampled);
  if (keep.empty()) return;
  at::Tensor joined_steering = input.steering;
  absl::Status status = absl::OkStatus();
  if (static_cast<int64_t>(keep.size()) < n) {
    bool any_steered = false;
    for (int64_t row : keep) any_steered |= joining[row]->request.vector != nullptr;
    status = SelectSteeringRows(keep, any_steered, &joined_steering);
  }
  // The joiners' steering rows were built for the prefill: the batch's grow by them.
  if (status.ok()) status = AppendSteering(joined_steering, keep.size());
  if (!status.ok()) {
    for (int64_t row : keep) FinishSequence(*joining[row], absl::InternalError(status.message()));
    FailAll(absl::InternalError(status.message()));
    return;
  }
  for (int64_t row : keep) running_.push_back(std::move(joining[row]));
  PublishBatchGauges();
}

void Engine::PublishBatchGauges() {
  running_count_.store(running_.size());
  if (metrics_.running_sequences) metrics_.running_sequences->Set(running_.size());
  const int64_t used = pool_->used_blocks();
  if (metrics_.kv_cache_usage) {
    metrics_.kv_cache_usage->Set(static_cast<double>(used) / static_cast<double>(kv_blocks_));
  }
  if (metrics_.kv_blocks_used) metrics_.kv_blocks_used->Set(used);
  if (metrics_.kv_blocks_cached) {
    metrics_.kv_blocks_cached->Set(pool_->available_blocks() - pool_->free_blocks());
  }
  if (metrics_.kv_evictions && pool_->evictions() > reported_evictions_) {
    metrics_.kv_evictions->Increment(pool_->evictions() - reported_evictions_);
  }
  reported_evictions_ = pool_->evictions();
}

absl::Status Engine::AppendSteering(const at::Tensor& joined, int64_t joined_rows) {
  if (!joined.defined() && !steering_batch_.defined()) return absl::OkStatus();
  return CatchTorchErrors("extending the steering batch", [&]() -> absl::Status {
    const ModelConfig& config = model_->config();
    const int64_t old_rows = running_.size();
    auto zeros = [&](int64_t rows) {  // [L, rows, 1, d]: rows without a vector
      return at::zeros({config.num_layers, rows, 1, config.hidden_size},
                       at::TensorOptions().dtype(model_->dtype()).device(model_->device()));
    };
    at::Tensor right = joined.defined() ? joined : zeros(joined_rows);
    if (old_rows == 0) {
      steering_batch_ = right;
    } else {
      at::Tensor left = steering_batch_.defined() ? steering_batch_ : zeros(old_rows);
      steering_batch_ = at::cat({left, right}, /*dim=*/1);  // [L, old + joined, 1, d]
    }
    return absl::OkStatus();
  });
}

void Engine::GrowForDecode() {
  const int64_t block_size = pool_->block_size();
  for (size_t row = 0; row < running_.size(); ++row) {
    Sequence& s = *running_[row];
    // The next token is written at position `cached`.
    if (s.cached < static_cast<int64_t>(s.blocks.size()) * block_size) continue;
    bool grown = false;
    while (!grown) {
      grown = pool_->Allocate(1, &s.blocks);
      if (grown) break;
      // The youngest row goes first (it has waited least and holds the fewest tokens
      // worth of work); when that is this row, it waits instead of growing.
      const int64_t victim = static_cast<int64_t>(running_.size()) - 1;
      Preempt(victim);
      if (victim == static_cast<int64_t>(row)) return;
    }
  }
}

void Engine::Preempt(int64_t row) {
  std::unique_ptr<Sequence> sequence = std::move(running_[row]);
  pool_->Release(sequence->blocks);
  sequence->blocks.clear();
  sequence->cached = 0;
  sequence->tokens.clear();  // Rebuilt (prompt + tokens so far) when it is admitted again.
  sequence->block_hashes.clear();
  std::vector<int64_t> keep;
  for (int64_t r = 0; r < static_cast<int64_t>(running_.size()); ++r) {
    if (r != row) keep.push_back(r);
  }
  KeepRows(keep);
  if (metrics_.kv_preemptions) metrics_.kv_preemptions->Increment();
  absl::MutexLock lock(&mu_);
  auto& queue = sequence->request.background ? background_waiting_ : waiting_;
  queue.push_front(std::move(sequence));
  if (metrics_.queue_depth) metrics_.queue_depth->Set(waiting_.size());
}

void Engine::DecodeStep() {
  GrowForDecode();
  const int64_t rows = running_.size();
  if (rows == 0) return;
  PagedForwardInput input;
  std::vector<Sequence*> sequences;
  std::vector<SequenceSampler*> samplers;
  bool any_logprobs = false;
  for (int64_t b = 0; b < rows; ++b) {
    Sequence& s = *running_[b];
    input.tokens.push_back({s.last_token_id});
    input.cached.push_back(s.cached);
    input.block_tables.push_back(&s.blocks);
    sequences.push_back(&s);
    samplers.push_back(s.state->sampler());
    any_logprobs |= s.request.generation.return_logprobs;
  }
  input.steering = steering_batch_;
  absl::StatusOr<std::vector<SampledToken>> sampled = [&]()
      -> absl::StatusOr<std::vector<SampledToken>> {
    ASSIGN_OR_RETURN(at::Tensor logits, model_->ForwardPaged(input, pool_.get()));  // [rows, V]
    return SampleBatch(logits, samplers, any_logprobs);
  }();
  if (metrics_.decode_steps) metrics_.decode_steps->Increment();
  if (metrics_.batch_size) metrics_.batch_size->Observe(rows);
  if (!sampled.ok()) {
    FailAll(absl::InternalError(absl::StrCat("decode step failed: ", sampled.status().message())));
    return;
  }
  for (Sequence* s : sequences) ++s->cached;
  KeepRows(AcceptTokens(sequences, *sampled));
  // Every row left holds one more token (KeepRows publishes only when rows leave).
  PublishBatchGauges();
}

std::vector<int64_t> Engine::AcceptTokens(const std::vector<Sequence*>& rows,
                                          const std::vector<SampledToken>& tokens) {
  const Clock::time_point now = Clock::now();
  // Counted before any observer hears of its token, so a client that has its response
  // finds its tokens in the metrics (as the latency histograms below already are).
  if (metrics_.generated_tokens) metrics_.generated_tokens->Increment(rows.size());
  std::vector<int64_t> keep;
  for (size_t row = 0; row < rows.size(); ++row) {
    Sequence& s = *rows[row];
    const double since = std::chrono::duration<double>(
        now - (s.started ? s.last_token : s.submitted)).count();
    if (s.started) {
      if (metrics_.inter_token_latency) metrics_.inter_token_latency->Observe(since);
    } else if (metrics_.time_to_first_token) {
      metrics_.time_to_first_token->Observe(since);
    }
    s.started = true;
    s.last_token = now;
    s.last_token_id = tokens[row].id;
    if (!tokens[row].finite) {
      // This row only: its neighbours' logits are computed independently of it.
      FinishSequence(s, NonFiniteLogitsError(s.request.vector != nullptr,
                                             s.state->result().tokens.size()));
      continue;
    }
    absl::StatusOr<std::string> text = s.state->Accept(tokens[row]);
    if (!text.ok()) {
      FinishSequence(s, absl::InternalError(text.status().message()));
      continue;
    }
    TokenDelta delta;
    delta.text = std::move(*text);
    delta.token_ids.push_back(tokens[row].id);
    if (s.request.generation.return_logprobs) delta.logprobs.push_back(tokens[row].logprob);
    s.request.observer->OnTokens(std::move(delta));
    if (s.state->finished()) {
      FinishSequence(s, absl::OkStatus());
    } else {
      keep.push_back(row);
    }
  }
  return keep;
}

void Engine::DropCancelled(bool end_all) {
  std::vector<int64_t> keep;
  for (size_t row = 0; row < running_.size(); ++row) {
    Sequence& s = *running_[row];
    if (end_all) {
      // Ended by the server: the client gets what was generated, finish reason
      // CANCELLED.
      std::string rest = s.state->Cancel();
      if (!rest.empty()) s.request.observer->OnTokens({std::move(rest), {}, {}});
      FinishSequence(s, absl::OkStatus());
    } else if (s.handle->cancelled()) {
      s.state->Cancel();
      FinishSequence(s, absl::CancelledError("the request was cancelled"));
    } else {
      keep.push_back(row);
    }
  }
  KeepRows(keep);
}

void Engine::KeepRows(const std::vector<int64_t>& keep) {
  if (keep.size() == running_.size()) return;
  if (keep.empty()) {
    running_.clear();
    steering_batch_ = at::Tensor();
  } else {
    std::vector<std::unique_ptr<Sequence>> kept;
    bool any_steered = false;
    for (int64_t row : keep) {
      any_steered |= running_[row]->request.vector != nullptr;
      kept.push_back(std::move(running_[row]));
    }
    running_ = std::move(kept);
    const absl::Status status = SelectSteeringRows(keep, any_steered, &steering_batch_);
    if (!status.ok()) FailAll(absl::InternalError(status.message()));
  }
  PublishBatchGauges();
}

void Engine::FinishSequence(Sequence& sequence, absl::Status status) {
  GenerationSummary summary;
  summary.status = std::move(status);
  summary.finish_reason = sequence.state->result().finish_reason;
  summary.prompt_tokens = sequence.request.generation.prompt.size();
  summary.completion_tokens = sequence.state->result().tokens.size();
  sequence.request.observer->OnFinished(summary);
  // Release the pinned vector and the blocks now rather than when the row's memory is
  // reused.
  sequence.request.vector.reset();
  pool_->Release(sequence.blocks);
  sequence.blocks.clear();
}

void Engine::FailAll(const absl::Status& status) {
  for (auto& s : running_) FinishSequence(*s, status);
  running_.clear();
  steering_batch_ = at::Tensor();
  PublishBatchGauges();
}

}  // namespace steerd
