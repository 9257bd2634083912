// The OpenAI API's JSON without a server (server/http/openai_protocol.h): what a request
// becomes in the core's terms (defaults, the vector from the field or the model name,
// token-id prompts, nulls), the response and chunk shapes the SDKs read (log-probabilities
// included), and how each error code becomes an HTTP status, an error type, a code and
// a Retry-After.
#include "server/http/openai_protocol.h"

#include <string>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/util/error_details.h"

namespace steerd {
namespace {

using ::nlohmann::json;

OpenAiRequest ParseOk(OpenAiEndpoint endpoint, const std::string& body) {
  absl::StatusOr<OpenAiRequest> request = ParseOpenAiRequest(endpoint, body);
  EXPECT_TRUE(request.ok()) << request.status() << " for " << body;
  return request.ok() ? *request : OpenAiRequest();
}

TEST(OpenAiProtocolTest, ChatDefaultsAreTheOpenAiApis) {
  const OpenAiRequest request = ParseOk(
      OpenAiEndpoint::kChatCompletions,
      R"({"model": "m", "messages": [{"role": "developer", "content": "be brief"},
          {"role": "user", "content": [{"type": "text", "text": "a"},
                                       {"type": "text", "text": "b"}]}]})");
  EXPECT_EQ(request.params.model, "m");
  EXPECT_EQ(request.params.temperature, 1.0);  // Not steerd.v1's greedy default.
  EXPECT_EQ(request.params.max_new_tokens, 0);  // The server's default.
  EXPECT_FALSE(request.stream);
  ASSERT_TRUE(request.params.messages.has_value());
  ASSERT_EQ(request.params.messages->size(), 2u);
  EXPECT_EQ((*request.params.messages)[0].role, ChatTurn::Role::kSystem);
  EXPECT_EQ((*request.params.messages)[1].content, "a\nb");
  EXPECT_TRUE(request.params.vector.empty());
}

TEST(OpenAiProtocolTest, CompletionsDefaultToSixteenTokensAndTakeTokenIds) {
  OpenAiRequest request =
      ParseOk(OpenAiEndpoint::kCompletions, R"({"model": "m", "prompt": "hello"})");
  EXPECT_EQ(request.params.max_new_tokens, 16);
  EXPECT_EQ(request.params.prompt, "hello");
  request = ParseOk(OpenAiEndpoint::kCompletions,
                    R"({"model": "m", "prompt": [[5, 6, 7]], "max_tokens": 3,
                        "logprobs": 0})");
  ASSERT_TRUE(request.params.prompt_token_ids.has_value());
  EXPECT_EQ(*request.params.prompt_token_ids, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_FALSE(request.params.prompt.has_value());
  EXPECT_EQ(request.params.max_new_tokens, 3);
  EXPECT_TRUE(request.params.return_logprobs);
}

TEST(OpenAiProtocolTest, TheVectorComesFromTheFieldOrTheModelName) {
  OpenAiRequest request =
      ParseOk(OpenAiEndpoint::kChatCompletions,
              R"({"model": "base", "messages": [{"role": "user", "content": "x"}],
                  "steering": {"vector": "tone@3", "scale": -0.5}})");
  EXPECT_EQ(request.params.model, "base");
  EXPECT_EQ(request.params.vector, "tone@3");
  EXPECT_EQ(request.params.scale, -0.5);
  request = ParseOk(OpenAiEndpoint::kChatCompletions,
                    R"({"model": "base:tone@2", "messages": [{"role": "user", "content": "x"}]})");
  EXPECT_EQ(request.model, "base:tone@2");  // Echoed as sent.
  EXPECT_EQ(request.params.model, "base");
  EXPECT_EQ(request.params.vector, "tone@2");
  EXPECT_EQ(request.params.scale, 1.0);
}

TEST(OpenAiProtocolTest, NullFieldsAndDefaultsOfUnimplementedFieldsAreAccepted) {
  const OpenAiRequest request = ParseOk(
      OpenAiEndpoint::kChatCompletions,
      R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": null,
          "max_tokens": null, "stop": null, "seed": null, "frequency_penalty": 0,
          "presence_penalty": 0, "logit_bias": {}, "tools": [], "tool_choice": "none",
          "response_format": {"type": "text"}, "store": false, "n": 1, "user": "u1",
          "stream": true, "stream_options": {"include_usage": true}, "top_k": -1,
          "max_completion_tokens": 7})");
  EXPECT_EQ(request.params.temperature, 1.0);
  EXPECT_EQ(request.params.max_new_tokens, 7);
  EXPECT_EQ(request.params.top_k, 0);
  EXPECT_TRUE(request.stream);
  EXPECT_TRUE(request.include_usage);
}

TEST(OpenAiProtocolTest, ANumberTooLargeForADoubleIsAnInvalidBodyNotAnException) {
  // nlohmann throws out_of_range, not parse_error, for it (found by the fuzzer).
  for (const char* body : {R"({"model": "m", "temperature": 1E999})", "{1111E1111111}"}) {
    absl::StatusOr<OpenAiRequest> request =
        ParseOpenAiRequest(OpenAiEndpoint::kChatCompletions, body);
    ASSERT_FALSE(request.ok()) << body;
    EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(request.status().message().find("not valid JSON"), std::string::npos)
        << request.status();
  }
}

TEST(OpenAiProtocolTest, RefusalsNameTheField) {
  struct Case {
    std::string body;
    std::string param;
  };
  const Case cases[] = {
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}})",
       "logit_bias"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4,
           "max_completion_tokens": 5})",
       "max_completion_tokens"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
           "steering": {"vector": "v", "weight": 2}})",
       "steering.weight"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": []}]})",
       "messages[0].tool_calls"},
      {R"({"model": "m", "messages": [{"role": "user"}]})", "messages[0].content"},
      {R"({"model": "m", "messages": []})", ""},  // Empty: the core refuses it.
  };
  for (const Case& c : cases) {
    absl::StatusOr<OpenAiRequest> request =
        ParseOpenAiRequest(OpenAiEndpoint::kChatCompletions, c.body);
    if (c.param.empty()) {
      EXPECT_TRUE(request.ok()) << c.body;
      continue;
    }
    ASSERT_FALSE(request.ok()) << c.body;
    EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
    const json error = json::parse(ToHttpError(request.status()).body)["error"];
    EXPECT_EQ(error["param"], c.param) << error.dump();
    EXPECT_EQ(error["type"], "invalid_request_error");
  }
}

OpenAiResponseContext Context(OpenAiEndpoint endpoint) {
  OpenAiResponseContext context;
  context.endpoint = endpoint;
  context.id = "chatcmpl-1";
  context.created = 1700000000;
  context.model = "base:tone";
  context.system_fingerprint = "qwen2:4x192";
  context.admitted.vector_name = "tone";
  context.admitted.vector_version = 4;
  context.scale = 0.5;
  return context;
}

TEST(OpenAiProtocolTest, ChatResponseCarriesUsageVectorVersionAndLogprobs) {
  GenerationSummary summary;
  summary.finish_reason = FinishReason::kLength;
  summary.prompt_tokens = 10;
  summary.completion_tokens = 2;
  TokenLogprobs logprobs{{"Hi", "\xe2\x82"}, {-0.25f, -1.5f}};  // A partial character.
  const json out = json::parse(CompletionResponseJson(
      Context(OpenAiEndpoint::kChatCompletions), "Hi", logprobs, summary));
  EXPECT_EQ(out["object"], "chat.completion");
  EXPECT_EQ(out["model"], "base:tone");
  EXPECT_EQ(out["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(out["choices"][0]["message"]["content"], "Hi");
  EXPECT_EQ(out["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(out["usage"]["total_tokens"], 12);
  EXPECT_EQ(out["steering"]["vector"], "tone");
  EXPECT_EQ(out["steering"]["version"], 4);
  EXPECT_EQ(out["steering"]["scale"], 0.5);
  const json& content = out["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], "Hi");
  EXPECT_EQ(content[0]["logprob"], -0.25);
  EXPECT_EQ(content[1]["bytes"], json::array({0xe2, 0x82}));  // Exact, where text cannot be.
  EXPECT_TRUE(content[1]["top_logprobs"].empty());
}

TEST(OpenAiProtocolTest, CompletionChunksAndTheUsageChunk) {
  const OpenAiResponseContext context = Context(OpenAiEndpoint::kCompletions);
  const std::string event = CompletionChunkEvent(
      context, /*first=*/false, "abc", TokenLogprobs{{"abc"}, {-0.5f}}, std::nullopt,
      /*include_usage=*/true);
  ASSERT_EQ(event.rfind("data: ", 0), 0u);
  ASSERT_EQ(event.substr(event.size() - 2), "\n\n");
  const json chunk = json::parse(event.substr(6));
  EXPECT_EQ(chunk["object"], "text_completion");
  EXPECT_EQ(chunk["choices"][0]["text"], "abc");
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(chunk["choices"][0]["logprobs"]["token_logprobs"], json::array({-0.5}));
  EXPECT_TRUE(chunk.contains("usage") && chunk["usage"].is_null());

  GenerationSummary summary;
  summary.prompt_tokens = 3;
  summary.completion_tokens = 4;
  const json usage = json::parse(UsageChunkEvent(context, summary).substr(6));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 4);
}

TEST(OpenAiProtocolTest, ChatChunksOpenWithTheRole) {
  const OpenAiResponseContext context = Context(OpenAiEndpoint::kChatCompletions);
  const json first = json::parse(CompletionChunkEvent(context, /*first=*/true, "", std::nullopt,
                                                      std::nullopt, false)
                                     .substr(6));
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "");
  EXPECT_FALSE(first.contains("usage"));
  // A chunk's log-probabilities read as the whole response's do.
  const TokenLogprobs logprobs{{"a\"b", "\xe2\x82"}, {-0.123456789f, -2.0f}};
  const json chunk = json::parse(CompletionChunkEvent(context, /*first=*/false, "a\"b\xe2\x82",
                                                      logprobs, std::nullopt, false)
                                     .substr(6));
  GenerationSummary summary;
  const json whole = json::parse(
      CompletionResponseJson(context, "a\"b\xe2\x82", logprobs, summary));
  EXPECT_EQ(chunk["choices"][0]["delta"]["content"], whole["choices"][0]["message"]["content"]);
  const json& streamed = chunk["choices"][0]["logprobs"]["content"];
  const json& answered = whole["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(streamed.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(streamed[i]["token"], answered[i]["token"]);
    EXPECT_EQ(streamed[i]["bytes"], answered[i]["bytes"]);
    EXPECT_EQ(streamed[i]["logprob"].get<float>(), answered[i]["logprob"].get<float>());
  }
  EXPECT_EQ(chunk["steering"], whole["steering"]);
  const json last = json::parse(CompletionChunkEvent(context, /*first=*/false, "",
                                                     std::nullopt, FinishReason::kStop, false)
                                    .substr(6));
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
}

TEST(OpenAiProtocolTest, ErrorsMapToHttpStatusTypeCodeAndRetryAfter) {
  const HttpError limited = ToHttpError(LimitError(
      absl::StatusCode::kResourceExhausted, "too many requests", "requests_per_minute", "60",
      std::nullopt, absl::Milliseconds(1500)));
  EXPECT_EQ(limited.status, 429);
  EXPECT_EQ(limited.retry_after_seconds, 2);  // Rounded up.
  const json error = json::parse(limited.body)["error"];
  EXPECT_EQ(error["type"], "rate_limit_error");
  EXPECT_EQ(error["code"], "requests_per_minute_limit");

  EXPECT_EQ(ToHttpError(absl::UnauthenticatedError("x")).status, 401);
  EXPECT_EQ(ToHttpError(absl::PermissionDeniedError("x")).status, 403);
  EXPECT_EQ(ToHttpError(absl::NotFoundError("x")).status, 404);
  EXPECT_EQ(ToHttpError(absl::FailedPreconditionError("x")).status, 400);
  EXPECT_EQ(ToHttpError(absl::InternalError("x")).status, 500);
  const HttpError draining = ToHttpError(DrainingError());
  EXPECT_EQ(draining.status, 503);
  EXPECT_TRUE(draining.retry_after_seconds.has_value());
  EXPECT_EQ(json::parse(draining.body)["error"]["code"], "draining");
  // The core's gRPC field paths read as the OpenAI fields.
  const json renamed = json::parse(
      ToHttpError(InvalidFieldError("sampling.max_new_tokens", "9999 is too many")).body);
  EXPECT_EQ(renamed["error"]["message"], "max_tokens 9999 is too many");
  EXPECT_EQ(renamed["error"]["param"], "max_tokens");
}

TEST(OpenAiProtocolTest, ModelListHasTheBaseModelsThenTheCallersVectors) {
  ModelInfo model;
  model.name = "base";
  StoredVector vector;
  vector.model = "base";
  vector.name = "tone";
  vector.create_time = absl::FromUnixSeconds(1700000000);
  const json list = json::parse(ModelListJson({model}, {vector}));
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 2u);
  EXPECT_EQ(list["data"][0]["id"], "base");
  EXPECT_EQ(list["data"][1]["id"], "base:tone");
  EXPECT_EQ(list["data"][1]["parent"], "base");
  EXPECT_EQ(list["data"][1]["created"], 1700000000);
}

}  // namespace
}  // namespace steerd
