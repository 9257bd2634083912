// Fuzzes the OpenAI HTTP API's JSON (server/http/openai_protocol.h) as a request body
// reaches it from any client: the first byte picks the endpoint, the rest is the body.
// A parsed request must pass on only what the core's own validation then judges; the
// error of a refused one must be valid JSON. And the stream chunks written by hand for
// the same bytes as generated text and token bytes must always be valid JSON that reads
// back the text (when it is UTF-8), so no generated text can break a client's stream.
#include <cstddef>
#include <cstdint>
#include <string>

#include "nlohmann/json.hpp"
#include "server/engine/generate_validation.h"
#include "server/http/openai_protocol.h"

namespace {

bool IsUtf8(const std::string& text) {
  try {
    (void)nlohmann::json(text).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const steerd::OpenAiEndpoint endpoint = (data[0] & 1) != 0
                                              ? steerd::OpenAiEndpoint::kCompletions
                                              : steerd::OpenAiEndpoint::kChatCompletions;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  auto request = steerd::ParseOpenAiRequest(endpoint, body);
  if (request.ok()) {
    (void)steerd::ValidateGenerateParams(request->params);
  } else {
    const steerd::HttpError error = steerd::ToHttpError(request.status());
    if (error.status < 400 || !nlohmann::json::accept(error.body)) __builtin_trap();
  }

  steerd::OpenAiResponseContext context;
  context.endpoint = endpoint;
  context.id = "chatcmpl-1";
  context.model = body.substr(0, 16);
  context.admitted.vector_name = body.substr(0, 8);
  const steerd::TokenLogprobs logprobs{{body, body.substr(body.empty() ? 0 : 1)}, {-1, 0}};
  const std::string event = steerd::CompletionChunkEvent(context, (data[0] & 2) != 0, body,
                                                         logprobs, std::nullopt,
                                                         (data[0] & 4) != 0);
  if (event.compare(0, 6, "data: ") != 0 || event.substr(event.size() - 2) != "\n\n") {
    __builtin_trap();
  }
  const nlohmann::json chunk =
      nlohmann::json::parse(event.substr(6, event.size() - 8), nullptr, false);
  if (chunk.is_discarded()) __builtin_trap();
  if (IsUtf8(body) && endpoint == steerd::OpenAiEndpoint::kCompletions &&
      chunk["choices"][0]["text"] != body) {
    __builtin_trap();
  }
  return 0;
}
