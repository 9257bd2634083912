#include "server/model/generator.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/model/torch_util.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

// Length of the longest prefix of `text` that ends on a UTF-8 character boundary.
size_t CharBoundaryAtOrBefore(const std::string& text, size_t pos) {
  while (pos > 0 && pos < text.size() &&
         (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) {
    --pos;
  }
  return pos;
}

}  // namespace

std::vector<int64_t> EosIds(const ModelConfig& config, const Tokenizer* tokenizer) {
  std::vector<int64_t> ids = config.eos_token_ids;
  if (tokenizer != nullptr && tokenizer->eos_token_id().has_value()) {
    ids.push_back(*tokenizer->eos_token_id());
  }
  return ids;
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
  }
  return "none";
}

absl::Status ValidateGenerationRequest(const GenerationRequest& r, const ModelConfig& config,
                                       const Tokenizer* tokenizer) {
  if (r.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (int32_t id : r.prompt) {
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token id ", id,
                                                     " is out of range [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  if (r.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens ", r.max_new_tokens, " must be at least 1"));
  }
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.max_new_tokens;
  if (total > config.max_position_embeddings) {
    return absl::OutOfRangeError(absl::StrCat(
        "context overflow: ", r.prompt.size(), " prompt tokens + ", r.max_new_tokens,
        " new tokens exceed the model's context of ", config.max_position_embeddings));
  }
  RETURN_IF_ERROR(ValidateSamplingParams(r.sampling));
  if (!r.stop_strings.empty() && tokenizer == nullptr) {
    return absl::InvalidArgumentError("stop strings need a model with a tokenizer");
  }
  for (const std::string& stop : r.stop_strings) {
    if (stop.empty()) return absl::InvalidArgumentError("a stop string is empty");
  }
  if (r.steering.defined() && (r.steering.dim() != 2 || r.steering.size(0) != config.num_layers ||
                               r.steering.size(1) != config.hidden_size)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "steering vector shape does not match the model's [", config.num_layers, ", ",
        config.hidden_size, "]"));
  }
  if (!std::isfinite(r.steering_scale)) {
    return absl::InvalidArgumentError("steering scale is not finite");
  }
  return absl::OkStatus();
}

SequenceState::SequenceState(const GenerationRequest& request, const Tokenizer* tokenizer,
                             std::vector<int64_t> eos_ids)
    : request_(request),
      tokenizer_(tokenizer),
      eos_ids_(std::move(eos_ids)),
      sampler_(request.sampling),
      prompt_tokens_(static_cast<int64_t>(request.prompt.size())) {
  if (tokenizer_ != nullptr) detokenizer_.emplace(tokenizer_, /*skip_special_tokens=*/true);
  for (const std::string& stop : request_.stop_strings) {
    max_stop_length_ = std::max(max_stop_length_, stop.size());
  }
}

absl::Status KeepBatchRows(const std::vector<int64_t>& keep, bool any_kept_steered,
                           KvCache* cache, at::Tensor* steering) {
  RETURN_IF_ERROR(cache->SelectRows(keep));
  return SelectSteeringRows(keep, any_kept_steered, steering);
}

absl::Status SelectSteeringRows(const std::vector<int64_t>& keep, bool any_kept_steered,
                                at::Tensor* steering) {
  if (!steering->defined()) return absl::OkStatus();
  if (!any_kept_steered) {
    *steering = at::Tensor();
    return absl::OkStatus();
  }
  return CatchTorchErrors("selecting steering rows", [&]() -> absl::Status {
    *steering = steering->index_select(
        1, at::tensor(keep, at::TensorOptions().dtype(at::kLong)).to(steering->device()));
    return absl::OkStatus();
  });
}

absl::Status NonFiniteLogitsError(bool steered, int64_t token_index) {
  const std::map<std::string, std::string> metadata = {{"token_index",
                                                        absl::StrCat(token_index)}};
  if (steered) {
    return WithReason(
        absl::InvalidArgumentError(absl::StrCat(
            "the steered model's logits became NaN or infinite at generated token ",
            token_index,
            ": the steering vector, at this scale, is too large for the model; lower "
            "steering.scale or use a vector with smaller norms")),
        "NON_FINITE_LOGITS", metadata);
  }
  return WithReason(absl::InternalError(absl::StrCat(
                        "the model's logits became NaN or infinite at generated token ",
                        token_index)),
                    "NON_FINITE_LOGITS", metadata);
}

absl::StatusOr<std::string> SequenceState::Accept(const SampledToken& token) {
  if (finished()) return absl::FailedPreconditionError("the sequence has already finished");
  result_.tokens.push_back(token.id);
  if (request_.return_logprobs) result_.logprobs.push_back(token.logprob);
  const bool is_eos = !request_.ignore_eos &&
                      std::find(eos_ids_.begin(), eos_ids_.end(), token.id) != eos_ids_.end();
  if (is_eos) return Finish(FinishReason::kStop);
  // Checkpoints pad their vocabulary past the tokenizer's (Qwen2.5: 151936 rows for
  // 151665 tokens); such an id is kept as a token but has no text.
  if (detokenizer_.has_value() && token.id < tokenizer_->vocab_size()) {
    const size_t before = result_.text.size();
    ASSIGN_OR_RETURN(std::string piece, detokenizer_->Push(token.id));
    result_.text += piece;
    // A stop string can only end inside the new piece; search from where it could start.
    const size_t from = before > max_stop_length_ ? before - max_stop_length_ : 0;
    size_t cut = std::string::npos;
    for (const std::string& stop : request_.stop_strings) {
      const size_t at = result_.text.find(stop, from);
      if (at != std::string::npos) cut = std::min(cut, at);
    }
    if (cut != std::string::npos) {
      result_.text.resize(cut);
      return Finish(FinishReason::kStop);
    }
  }
  if (static_cast<int64_t>(result_.tokens.size()) >= request_.max_new_tokens) {
    return Finish(FinishReason::kLength);
  }
  return Release(/*final=*/false);
}

std::string SequenceState::Cancel() {
  if (finished()) return "";
  return Finish(FinishReason::kCancelled);
}

std::string SequenceState::Finish(FinishReason reason) {
  if (detokenizer_.has_value() && reason != FinishReason::kStop) {
    result_.text += detokenizer_->Finish();
  }
  result_.finish_reason = reason;
  return Release(/*final=*/true);
}

std::string SequenceState::Release(bool final) {
  size_t until = result_.text.size();
  if (!final && max_stop_length_ > 0) {
    // Hold back what could still grow into a stop string.
    const size_t hold = max_stop_length_ - 1;
    until = until > hold ? CharBoundaryAtOrBefore(result_.text, until - hold) : 0;
  }
  if (until <= emitted_) return "";
  std::string out = result_.text.substr(emitted_, until - emitted_);
  emitted_ = until;
  return out;
}

Generator::Generator(const Transformer* model, const Tokenizer* tokenizer,
                     const LoraAdapter* lora)
    : model_(model), tokenizer_(tokenizer), lora_(lora) {}

absl::StatusOr<std::vector<GenerationResult>> Generator::Generate(
    const std::vector<GenerationRequest>& requests, const TextCallback& on_text,
    GenerationStats* stats) {
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  if (requests.empty()) return std::vector<GenerationResult>();
  // Sampling never needs gradients, even from trainable weights or adapters.
  at::NoGradGuard no_grad;
  const ModelConfig& config = model_->config();
  for (size_t i = 0; i < requests.size(); ++i) {
    absl::Status status = ValidateGenerationRequest(requests[i], config, tokenizer_);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("request ", i, ": ", status.message()));
    }
  }
  const int64_t B = static_cast<int64_t>(requests.size());
  const std::vector<int64_t> eos_ids = EosIds(config, tokenizer_);

  std::vector<std::unique_ptr<SequenceState>> states;
  std::vector<SteeringRow> steering_rows;
  int64_t prompt_len = 0, max_new = 0;
  for (const GenerationRequest& r : requests) {
    states.push_back(std::make_unique<SequenceState>(r, tokenizer_, eos_ids));
    // Sampling never needs gradients: a trainable vector is used by value here.
    steering_rows.push_back({r.steering.defined() ? r.steering.detach() : r.steering,
                             r.steering_scale});
    prompt_len = std::max<int64_t>(prompt_len, r.prompt.size());
    max_new = std::max(max_new, r.max_new_tokens);
  }

  // Prefill: prompts left-padded to a common length.
  ForwardInput input;
  input.lora = lora_;
  std::vector<int64_t> padded(B * prompt_len, 0);
  input.left_pad.resize(B);
  for (int64_t b = 0; b < B; ++b) {
    const auto& prompt = requests[b].prompt;
    input.left_pad[b] = prompt_len - static_cast<int64_t>(prompt.size());
    std::copy(prompt.begin(), prompt.end(), padded.begin() + b * prompt_len + input.left_pad[b]);
  }
  ASSIGN_OR_RETURN(input.steering, model_->MakeSteeringBatch(steering_rows));
  RETURN_IF_ERROR(CatchTorchErrors("preparing the batch", [&]() -> absl::Status {
    input.tokens = at::tensor(padded, at::TensorOptions().dtype(at::kLong)).view({B, prompt_len});
    return absl::OkStatus();
  }));
  KvCache cache = model_->NewCache(B, prompt_len + max_new);
  ASSIGN_OR_RETURN(at::Tensor logits, model_->Forward(input, &cache));  // [B, V]
  input.left_pad.clear();
  const auto prefilled = Clock::now();
  int64_t decode_steps = 0;

  const bool any_logprobs = std::any_of(requests.begin(), requests.end(),
                                        [](const auto& r) { return r.return_logprobs; });
  std::vector<size_t> row_request(B);  // Batch row -> request index.
  for (int64_t b = 0; b < B; ++b) row_request[b] = b;
  while (!row_request.empty()) {
    std::vector<SequenceSampler*> samplers;
    for (size_t request : row_request) samplers.push_back(states[request]->sampler());
    ASSIGN_OR_RETURN(std::vector<SampledToken> sampled,
                     SampleBatch(logits, samplers, any_logprobs));
    std::vector<int64_t> keep;
    std::vector<int64_t> next_tokens;
    for (size_t row = 0; row < row_request.size(); ++row) {
      SequenceState& state = *states[row_request[row]];
      if (!sampled[row].finite) {
        return NonFiniteLogitsError(requests[row_request[row]].steering.defined(),
                                    state.result().tokens.size());
      }
      ASSIGN_OR_RETURN(std::string text, state.Accept(sampled[row]));
      if (on_text && !text.empty()) on_text(row_request[row], text);
      if (!state.finished()) {
        keep.push_back(static_cast<int64_t>(row));
        next_tokens.push_back(sampled[row].id);
      }
    }
    if (keep.empty()) break;
    if (keep.size() != row_request.size()) {
      // Finished rows leave the batch: their cache rows and steering rows go too.
      std::vector<size_t> remaining;
      bool any_steered = false;
      for (int64_t row : keep) {
        remaining.push_back(row_request[row]);
        any_steered |= requests[row_request[row]].steering.defined();
      }
      row_request = std::move(remaining);
      RETURN_IF_ERROR(KeepBatchRows(keep, any_steered, &cache, &input.steering));
    }
    const int64_t rows = static_cast<int64_t>(next_tokens.size());
    input.tokens = at::tensor(next_tokens, at::TensorOptions().dtype(at::kLong)).view({rows, 1});
    ASSIGN_OR_RETURN(logits, model_->Forward(input, &cache));
    ++decode_steps;
  }

  std::vector<GenerationResult> results;
  for (auto& state : states) results.push_back(state->result());
  if (stats != nullptr) {
    stats->prefill_seconds = std::chrono::duration<double>(prefilled - started).count();
    stats->decode_seconds = std::chrono::duration<double>(Clock::now() - prefilled).count();
    stats->decode_steps = decode_steps;
    stats->generated_tokens = 0;
    for (const auto& r : results) stats->generated_tokens += r.tokens.size();
  }
  return results;
}

}  // namespace steerd
