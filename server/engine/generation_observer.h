// What a generation request gives back while it runs, independent of the transport:
// token deltas and one final summary, delivered to an observer the RPC layer
// implements, and a handle the RPC layer uses to cancel. Torch-free, so the gRPC layer
// can use it without libtorch in its headers.
// Thread-safety: GenerationHandle may be used from any thread; observer calls come from
// the engine thread (see engine.h).
#ifndef STEERD_SERVER_ENGINE_GENERATION_OBSERVER_H_
#define STEERD_SERVER_ENGINE_GENERATION_OBSERVER_H_

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "server/model/finish_reason.h"

namespace steerd {

// Tokens a sequence produced since the previous delta.
struct TokenDelta {
  std::string text;  // Final text only (never a partial character or stop-string prefix).
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;  // With return_logprobs.
};

struct GenerationSummary {
  // OK, or the error that ended the sequence: CANCELLED when the client cancelled (or
  // its deadline passed), INTERNAL for an engine failure.
  absl::Status status;
  FinishReason finish_reason = FinishReason::kNone;  // kCancelled: ended by the server.
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// What was decided when a request was admitted.
struct AdmittedGeneration {
  int64_t prompt_tokens = 0;
  std::string vector_name;     // Empty without steering.
  int64_t vector_version = 0;  // The version "name" resolved to at admission.
  uint64_t seed = 0;           // The request's seed, or the one the server drew.
};

// Receives one request's output. OnAdmitted is called once on the submitting thread
// before the request reaches the engine; then OnTokens may be called many times and
// OnFinished exactly once, on the engine thread.
class GenerationObserver {
 public:
  virtual ~GenerationObserver() = default;
  virtual void OnAdmitted(const AdmittedGeneration& admitted) = 0;
  virtual void OnTokens(TokenDelta delta) = 0;
  virtual void OnFinished(const GenerationSummary& summary) = 0;
};

// A handle on a submitted request: cancelling it ends the sequence before the next
// decode step and frees its row.
class GenerationHandle {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_GENERATION_OBSERVER_H_
