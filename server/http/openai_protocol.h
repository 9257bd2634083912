// The OpenAI HTTP API's JSON, apart from the HTTP server: requests of
// /v1/chat/completions and /v1/completions parsed into the core's GenerateParams, and
// the responses, stream chunks, model lists and errors written back, in the shapes the
// official SDKs read. A request is refused (INVALID_ARGUMENT naming the field by its
// OpenAI name) for malformed JSON or invalid UTF-8, a wrong type, an unknown field (as
// the OpenAI API refuses them), and an OpenAI field steerd does not implement given a
// value other than its default, so a client never gets an answer to a question it did
// not ask. The steering vector comes as the extension field
// `steering: {"vector": "name[@version]", "scale": 1.0}` or as the model
// "BASE:VECTOR[@VERSION]". Two more extensions, as other servers take them: top_k, and
// ignore_eos (generate max_tokens tokens whatever the model says). Torch-free and
// stateless, so the parser can be fuzzed alone.
// Thread-safety: free functions of their arguments.
#ifndef STEERD_SERVER_HTTP_OPENAI_PROTOCOL_H_
#define STEERD_SERVER_HTTP_OPENAI_PROTOCOL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/engine/generation_observer.h"
#include "server/engine/serving_core.h"

namespace steerd {

enum class OpenAiEndpoint { kChatCompletions, kCompletions };

// The most a JSON body may nest; deeper bodies are refused before they are parsed.
inline constexpr int kMaxJsonDepth = 32;
// The most token ids a /v1/completions prompt may list.
inline constexpr int64_t kMaxPromptTokenIds = 1 << 20;

struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kChatCompletions;
  // The core's request: params.model is the base model, params.vector the vector from
  // either `steering.vector` or the model name's suffix.
  GenerateParams params;
  std::string model;  // `model` as the client sent it, echoed in every response.
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // chat: logprobs true; completions: logprobs 0.
};

// Parses a request body. Defaults as the OpenAI API's: greedy only at temperature 0
// (the API's default temperature is 1), and /v1/completions' max_tokens 16; chat's
// max_tokens unset leaves the server's default.
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint,
                                                 absl::string_view body);

// "BASE:VECTOR[@VERSION]" -> {"BASE", "VECTOR[@VERSION]"}; no colon -> {model, ""}.
std::pair<std::string, std::string> SplitModelAndVector(absl::string_view model);

// What one response or chunk says besides its tokens.
struct OpenAiResponseContext {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kChatCompletions;
  std::string id;  // "chatcmpl-..." or "cmpl-..."
  int64_t created = 0;  // Unix seconds.
  std::string model;    // As the client sent it.
  std::string system_fingerprint;
  AdmittedGeneration admitted;  // The vector and version used.
  double scale = 1.0;
};

// Log-probabilities of generated tokens: the bytes each token stands for and its
// log-probability.
struct TokenLogprobs {
  std::vector<std::string> token_bytes;
  std::vector<float> logprobs;
};

// A whole (non-streamed) response.
std::string CompletionResponseJson(const OpenAiResponseContext& context,
                                   const std::string& text,
                                   const std::optional<TokenLogprobs>& logprobs,
                                   const GenerationSummary& summary);

// One stream chunk, as `data: {...}\n\n`. `first` adds the chat role; `finish` the
// finish_reason; `include_usage` adds "usage": null, as the API does when the client
// asked for a usage chunk.
std::string CompletionChunkEvent(const OpenAiResponseContext& context, bool first,
                                 const std::string& text,
                                 const std::optional<TokenLogprobs>& logprobs,
                                 const std::optional<FinishReason>& finish, bool include_usage);
// The last chunk before [DONE] with stream_options.include_usage: no choices, the usage.
std::string UsageChunkEvent(const OpenAiResponseContext& context,
                            const GenerationSummary& summary);
// An error inside a stream that already answered 200.
std::string ErrorEvent(const absl::Status& status);
inline constexpr char kDoneEvent[] = "data: [DONE]\n\n";

// GET /v1/models: each loaded model, then each of `vectors` (the caller's own, latest
// versions) as "BASE:VECTOR" with "parent": BASE, as multi-adapter servers list them.
std::string ModelListJson(const std::vector<ModelInfo>& models,
                          const std::vector<StoredVector>& vectors);
// GET /v1/models/{id}.
std::string ModelJson(const std::string& id, const std::string& parent, int64_t created);

// An error as the OpenAI API answers it: the HTTP status that matches the code (400,
// 401, 403, 404, 409, 413, 429, 500, 503, ...), and
// {"error": {"message", "type", "param", "code"}} where `code` is steerd's error reason
// in lower case and `param` the OpenAI name of the invalid field. Field names in the
// message are OpenAI's too (`max_tokens`, not `sampling.max_new_tokens`).
struct HttpError {
  int status = 500;
  std::string body;
  std::optional<int64_t> retry_after_seconds;  // For the Retry-After header.
};
HttpError ToHttpError(const absl::Status& status);
int HttpStatusFor(absl::StatusCode code);

}  // namespace steerd

#endif  // STEERD_SERVER_HTTP_OPENAI_PROTOCOL_H_
