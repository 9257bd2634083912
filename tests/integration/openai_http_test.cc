// The OpenAI-compatible HTTP API as an existing chatbot backend meets it: the official
// `openai` JavaScript SDK (tests/http/openai_sdk_scenario.mjs, run with Node.js against
// the composed server in this process, tests/testing/in_process_server.h) lists models,
// makes chat and text completions streamed and not, with a steering vector given as the
// `steering` extension field or as the model "BASE:VECTOR", gets the errors of a wrong
// key, another tenant's vector and bad fields, and runs 32 concurrent streams with mixed
// vectors. Every text, finish reason and token count must equal gRPC Generate's for the
// same request on the same server (greedy decoding makes them deterministic), so the
// HTTP layer is checked as a translation that adds and loses nothing. Node.js and the
// pinned SDK come from scripts/install-test-node.sh; without them the tests fail and say
// so instead of skipping, so a missing install never passes as a green suite.
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/steerd_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/model/safetensors.h"
#include "server/tenancy/sha256.h"
#include "tests/testing/in_process_server.h"
#include "tests/testing/server_process.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/timeouts.h"

namespace steerd {
namespace {

namespace v1 = ::steerd::v1;
using ::nlohmann::json;
using ::steerd::testing::InProcessServer;

constexpr char kModel[] = "steerd-tiny";
constexpr int kLayers = 4;
constexpr int kHidden = 192;
constexpr char kAlphaKey[] = "sk-test-openai-alpha-3b9e";
constexpr char kBetaKey[] = "sk-test-openai-beta-71c4";
constexpr char kAlphaVector[] = "tone";     // Alpha's only vector.
constexpr char kBetaVector[] = "secret";    // Beta's only vector: alpha must not see it.
constexpr int kMaxTokens = 24;
// Chat messages (and, the first, the completion prompt). Four prompts against the
// scenario's three vector modes: the 32 concurrent streams cover all twelve pairs.
const std::vector<std::string> kPrompts = {"(12+7)*3-5", "6*6*2+4+5", "17-4*3+8",
                                           "9*(8-5)+2"};
constexpr int kConcurrentStreams = 32;  // As in openai_sdk_scenario.mjs.

const std::string kScenario =
    std::string(STEERD_SOURCE_DIR) + "/tests/http/openai_sdk_scenario.mjs";
const std::string kSdkPackage =
    std::string(STEERD_SOURCE_DIR) + "/tests/http/node/node_modules/openai/package.json";
constexpr char kInstallHint[] =
    "run scripts/install-test-node.sh (Node.js from Debian and the openai SDK pinned in "
    "tests/http/node/package-lock.json)";

// A steering file [L, d] of N(0, sigma^2) values. Alpha's is strong enough (sigma 3) to
// change the tiny model's greedy answers, which the steered comparisons need to mean
// anything (sigma 1 does not, for the first prompt).
std::string VectorFile(uint64_t seed, float sigma = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> values(kLayers * kHidden);
  for (float& v : values) v = normal(rng);
  auto bytes = SerializeSafetensors({{"steering", DType::kF32, {kLayers, kHidden}, values.data()}},
                                    {{"format", "steerd.steering.v1"}});
  return bytes.ok() ? *bytes : std::string();
}

// `program` as the shell would find it (the first executable PATH entry), or "".
std::string FindOnPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  for (absl::string_view dir : absl::StrSplit(path, ':')) {
    // An empty entry is the current directory, for the shell as here.
    const std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", program);
    std::error_code error;
    if (access(candidate.c_str(), X_OK) == 0 &&
        !std::filesystem::is_directory(candidate, error)) {
      return candidate;
    }
  }
  return "";
}

// What gRPC Generate returned for one request: the answer the HTTP API must give.
struct Reference {
  std::string text;
  std::string finish_reason;  // OpenAI's name: "stop" or "length".
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

std::string OpenAiFinishReason(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    default:
      return absl::StrCat("unexpected gRPC finish reason ", v1::FinishReason_Name(reason));
  }
}

enum class Input { kChatMessage, kPrompt };

// The gRPC request the scenario's HTTP request stands for: greedy (temperature unset
// means 0 in steerd.v1), the same length, the vector at scale 1.
v1::GenerateRequest GrpcRequest(Input input, const std::string& text,
                                const std::string& vector) {
  v1::GenerateRequest request;
  request.set_model(kModel);
  if (input == Input::kChatMessage) {
    v1::ChatMessage* message = request.mutable_messages()->add_messages();
    message->set_role(v1::ChatMessage::ROLE_USER);
    message->set_content(text);
  } else {
    request.set_prompt(text);
  }
  request.mutable_sampling()->set_max_new_tokens(kMaxTokens);
  if (!vector.empty()) {
    request.mutable_steering()->set_vector(vector);
    request.mutable_steering()->set_scale(1.0f);
  }
  return request;
}

absl::StatusOr<Reference> GrpcReference(client::SteerdClient& client, Input input,
                                        const std::string& text, const std::string& vector) {
  auto response = client.Generate(GrpcRequest(input, text, vector));
  if (!response.ok()) return response.status();
  return Reference{response->text(), OpenAiFinishReason(response->finish_reason()),
                   response->usage().prompt_tokens(), response->usage().completion_tokens()};
}

// JSON text of `value`, for comparing observations with EXPECT_EQ: both sides print
// readably, and a missing or mistyped field is a failed comparison, not an exception.
std::string Json(const json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

class OpenAiSdkTest : public ::testing::Test {
 protected:
  // The scenario's observations and the gRPC references, gathered once for all tests.
  struct Run {
    std::string failure;  // Why there is nothing to compare; empty when all went well.
    json observed;
    // chat[p][0]: kPrompts[p] as a chat message without a vector; chat[p][1]: with alpha's.
    std::vector<std::array<Reference, 2>> chat;
    Reference completion;  // kPrompts[0] as a raw prompt, no vector.
  };

  static void SetUpTestSuite() {
    run_ = new Run();
    run_->failure = RunScenario(run_);
  }
  static void TearDownTestSuite() {
    delete run_;
    run_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(run_->failure.empty()) << run_->failure; }

  // The observation at `pointer` (e.g. "/chat/text") as JSON text; "null" when absent.
  static std::string Observed(const std::string& pointer) {
    const json::json_pointer at(pointer);
    return run_->observed.contains(at) ? Json(run_->observed.at(at)) : "null";
  }

  // An observed response or stream (at `pointer`) says what `expected` says: the same
  // text, finish reason and token counts.
  static void ExpectAnswer(const std::string& pointer, const Reference& expected) {
    SCOPED_TRACE(pointer);
    EXPECT_EQ(Observed(pointer + "/text"), Json(expected.text));
    EXPECT_EQ(Observed(pointer + "/finish_reason"), Json(expected.finish_reason));
    EXPECT_EQ(Observed(pointer + "/usage/prompt_tokens"), Json(expected.prompt_tokens));
    EXPECT_EQ(Observed(pointer + "/usage/completion_tokens"), Json(expected.completion_tokens));
    EXPECT_EQ(Observed(pointer + "/usage/total_tokens"),
              Json(expected.prompt_tokens + expected.completion_tokens));
  }

  // The `steering` object of a steered response: alpha's vector, the version it
  // resolved to (the only one, 1) and the scale.
  static void ExpectSteering(const std::string& pointer) {
    SCOPED_TRACE(pointer);
    EXPECT_EQ(Observed(pointer + "/steering/vector"), Json(kAlphaVector));
    EXPECT_EQ(Observed(pointer + "/steering/version"), Json(1));
    // Compared as a number: 1.0 written by a JavaScript client reads back as 1.
    const json::json_pointer scale(pointer + "/steering/scale");
    ASSERT_TRUE(run_->observed.contains(scale) && run_->observed.at(scale).is_number())
        << Observed(pointer + "/steering");
    EXPECT_EQ(run_->observed.at(scale).get<double>(), 1.0);
  }

  // An observed failure (at `pointer`): the HTTP status and an OpenAI error body
  // {"error": {"message", "type", ...}} whose message contains `message_part`.
  static void ExpectError(const std::string& pointer, int status,
                          const std::string& message_part) {
    SCOPED_TRACE(pointer);
    EXPECT_EQ(Observed(pointer + "/status"), Json(status)) << Observed(pointer);
    const json::json_pointer message(pointer + "/error/message");
    ASSERT_TRUE(run_->observed.contains(message) && run_->observed.at(message).is_string())
        << "no OpenAI error body: " << Observed(pointer);
    EXPECT_FALSE(run_->observed.at(message).get<std::string>().empty()) << Observed(pointer);
    // A substring, not std::regex: GCC 12's <regex> fails the ASan build's -Werror with
    // a false maybe-uninitialized warning.
    EXPECT_TRUE(absl::StrContains(run_->observed.at(message).get<std::string>(), message_part))
        << "the message does not contain \"" << message_part << "\": " << Observed(pointer);
    const json::json_pointer type(pointer + "/error/type");
    EXPECT_TRUE(run_->observed.contains(type) && run_->observed.at(type).is_string())
        << Observed(pointer);
  }

  // The strings of the array at `pointer` (other items as JSON text); empty when absent.
  static std::vector<std::string> ObservedStrings(const std::string& pointer) {
    const json::json_pointer at(pointer);
    std::vector<std::string> strings;
    if (!run_->observed.contains(at) || !run_->observed.at(at).is_array()) return strings;
    for (const json& item : run_->observed.at(at)) {
      strings.push_back(item.is_string() ? item.get<std::string>() : Json(item));
    }
    return strings;
  }

  static Run* run_;

 private:
  // Starts the server, computes the references over gRPC and runs the scenario;
  // returns why it could not (empty on success).
  static std::string RunScenario(Run* run) {
    const std::string node = FindOnPath("node");
    if (node.empty()) return absl::StrCat("node is not on PATH: ", kInstallHint);
    if (!std::filesystem::exists(kSdkPackage)) {
      return absl::StrCat(kSdkPackage, " is missing: ", kInstallHint);
    }

    InProcessServer::Options options;
    options.data_dir = steerd::testing::MakeTempDir("steerd-openai") + "/data";
    options.tenants = {Tenant{"alpha", Sha256Hex(kAlphaKey), {}},
                       Tenant{"beta", Sha256Hex(kBetaKey), {}}};
    options.http = true;
    auto server = InProcessServer::Start(options);
    if (!server.ok()) return absl::StrCat("the server did not start: ", server.status().ToString());
    auto alpha = (*server)->Client(kAlphaKey);
    auto beta = (*server)->Client(kBetaKey);
    if (auto created = alpha->CreateVector(kModel, kAlphaVector, VectorFile(21, 3.0f));
        !created.ok()) {
      return absl::StrCat("CreateVector ", kAlphaVector, ": ", created.status().ToString());
    }
    if (auto created = beta->CreateVector(kModel, kBetaVector, VectorFile(22)); !created.ok()) {
      return absl::StrCat("CreateVector ", kBetaVector, ": ", created.status().ToString());
    }

    for (const std::string& prompt : kPrompts) {
      std::array<Reference, 2> references;
      for (int steered = 0; steered < 2; ++steered) {
        auto reference = GrpcReference(*alpha, Input::kChatMessage, prompt,
                                       steered ? kAlphaVector : "");
        if (!reference.ok()) return absl::StrCat("gRPC Generate: ", reference.status().ToString());
        references[steered] = *reference;
      }
      run->chat.push_back(references);
    }
    auto completion = GrpcReference(*alpha, Input::kPrompt, kPrompts[0], "");
    if (!completion.ok()) return absl::StrCat("gRPC Generate: ", completion.status().ToString());
    run->completion = *completion;

    // The scenario bounds each request (120 s); `timeout` bounds the whole process, so a
    // server that never answers fails the test instead of hanging it.
    const int64_t limit_seconds =
        absl::ToInt64Seconds(steerd::testing::ScaledTimeout(absl::Seconds(300)));
    const std::vector<std::pair<std::string, std::string>> environment = {
        {"STEERD_HTTP_URL", absl::StrCat("http://", (*server)->http_address())},
        {"STEERD_KEY", kAlphaKey},
        {"STEERD_OTHER_KEY", kBetaKey},
        {"STEERD_MODEL", kModel},
        {"STEERD_VECTOR", kAlphaVector},
        {"STEERD_OTHER_VECTOR", kBetaVector},
        {"STEERD_PROMPTS", json(kPrompts).dump()},
        {"STEERD_MAX_TOKENS", absl::StrCat(kMaxTokens)},
    };
    std::string command = absl::StrCat("timeout --kill-after=10 ", limit_seconds, " env");
    for (const auto& [name, value] : environment) {
      absl::StrAppend(&command, " ", name, "=", steerd::testing::ShellQuote(value));
    }
    absl::StrAppend(&command, " ", steerd::testing::ShellCommand(node, {kScenario}));
    const steerd::testing::ProcessRun scenario = steerd::testing::RunShellCommand(command);

    const std::string output =
        absl::StrCat("\nstdout:\n", scenario.out, "\nstderr:\n", scenario.err);
    if (scenario.exit_code == 124 || scenario.exit_code == 137) {
      return absl::StrCat("the scenario ran over ", limit_seconds, " s", output);
    }
    run->observed = json::parse(scenario.out, nullptr, /*allow_exceptions=*/false);
    if (run->observed.is_discarded() || !run->observed.is_object()) {
      return absl::StrCat("the scenario (exit code ", scenario.exit_code,
                          ") printed no JSON object", output);
    }
    if (run->observed.contains("fatal") || scenario.exit_code != 0) {
      return absl::StrCat("the scenario failed (exit code ", scenario.exit_code, ")", output);
    }
    return "";
  }
};

OpenAiSdkTest::Run* OpenAiSdkTest::run_ = nullptr;

TEST_F(OpenAiSdkTest, ModelsListTheBaseModelAndOnlyTheCallersOwnVectors) {
  const std::string alpha_view = absl::StrCat(kModel, ":", kAlphaVector);
  const std::string beta_view = absl::StrCat(kModel, ":", kBetaVector);
  const std::vector<std::string> alpha_models = ObservedStrings("/models");
  const std::vector<std::string> beta_models = ObservedStrings("/other_models");
  EXPECT_THAT(alpha_models, ::testing::Contains(kModel));
  EXPECT_THAT(alpha_models, ::testing::Contains(alpha_view));
  EXPECT_THAT(alpha_models, ::testing::Not(::testing::Contains(beta_view)));
  EXPECT_THAT(beta_models, ::testing::Contains(kModel));
  EXPECT_THAT(beta_models, ::testing::Contains(beta_view));
  EXPECT_THAT(beta_models, ::testing::Not(::testing::Contains(alpha_view)));
}

TEST_F(OpenAiSdkTest, ChatCompletionStreamedOrNotEqualsGrpcGenerate) {
  const Reference& expected = run_->chat[0][0];
  ExpectAnswer("/chat", expected);
  ExpectAnswer("/chat_stream", expected);
  EXPECT_EQ(Observed("/chat/object"), Json("chat.completion"));
  EXPECT_EQ(Observed("/chat/role"), Json("assistant"));
  EXPECT_EQ(Observed("/chat/choices"), Json(1));
  EXPECT_EQ(Observed("/chat/steering"), "null");
  // A non-empty id, the same on every chunk of a stream.
  const json::json_pointer id("/chat/id");
  EXPECT_TRUE(run_->observed.contains(id) && run_->observed.at(id).is_string() &&
              !run_->observed.at(id).get<std::string>().empty())
      << Observed("/chat/id");
  EXPECT_EQ(ObservedStrings("/chat_stream/ids").size(), 1u) << Observed("/chat_stream/ids");
  EXPECT_EQ(Observed("/chat_stream/objects"), Json(json::array({"chat.completion.chunk"})));
  EXPECT_EQ(Observed("/chat_stream/role"), Json("assistant"));
  // The usage chunk that stream_options.include_usage asks for has no choices.
  EXPECT_EQ(Observed("/chat_stream/usage_chunk_choices"), Json(0));
  EXPECT_EQ(Observed("/chat_stream/steering"), "null");
}

TEST_F(OpenAiSdkTest, SteeredChatCompletionEqualsGrpcGenerateWithTheVector) {
  const Reference& unsteered = run_->chat[0][0];
  const Reference& steered = run_->chat[0][1];
  // Otherwise the comparisons below would pass with the vector ignored.
  ASSERT_NE(steered.text, unsteered.text)
      << "the vector does not change the greedy answer: pick another VectorFile seed";
  // The vector as the extension field, streamed or not, and as the model's suffix.
  ExpectAnswer("/chat_vector", steered);
  ExpectAnswer("/chat_vector_stream", steered);
  ExpectAnswer("/chat_model_vector", steered);
  ExpectSteering("/chat_vector");
  ExpectSteering("/chat_vector_stream");
  ExpectSteering("/chat_model_vector");
  // The model is echoed as the client named it.
  EXPECT_EQ(Observed("/chat_vector/model"), Json(kModel));
  EXPECT_EQ(Observed("/chat_model_vector/model"),
            Json(absl::StrCat(kModel, ":", kAlphaVector)));
}

TEST_F(OpenAiSdkTest, CompletionStreamedOrNotEqualsGrpcGenerateOnThePrompt) {
  ExpectAnswer("/completion", run_->completion);
  ExpectAnswer("/completion_stream", run_->completion);
  EXPECT_EQ(Observed("/completion/object"), Json("text_completion"));
  EXPECT_EQ(Observed("/completion/choices"), Json(1));
  EXPECT_EQ(Observed("/completion_stream/objects"), Json(json::array({"text_completion"})));
  EXPECT_EQ(Observed("/completion_stream/usage_chunk_choices"), Json(0));
}

TEST_F(OpenAiSdkTest, ErrorsComeBackAsOpenAiErrorsWithTheMatchingHttpStatus) {
  ExpectError("/unauthorized", 401, "");
  // Beta's vector does not exist for alpha, exactly like a name nobody has.
  ExpectError("/other_tenant_vector", 404, "");
  ExpectError("/bad_field", 400, "temperature");
  ExpectError("/bad_n", 400, "n 2 is not supported");
}

TEST_F(OpenAiSdkTest, ThirtyTwoConcurrentStreamsWithMixedVectorsEqualGrpcGenerate) {
  const json::json_pointer concurrent("/concurrent");
  ASSERT_TRUE(run_->observed.contains(concurrent) && run_->observed.at(concurrent).is_array() &&
              run_->observed.at(concurrent).size() == kConcurrentStreams)
      << Observed("/concurrent");
  for (int i = 0; i < kConcurrentStreams; ++i) {
    // The scenario's plan: prompt i % |prompts|; no vector, the steering field or the
    // model suffix by i % 3.
    const int prompt = i % static_cast<int>(kPrompts.size());
    const bool steered = i % 3 != 0;
    SCOPED_TRACE(absl::StrCat("stream ", i, " (prompt ", prompt, ", ",
                              steered ? "steered" : "unsteered", ")"));
    const std::string stream = absl::StrCat("/concurrent/", i);
    EXPECT_EQ(Observed(stream + "/i"), Json(i));
    EXPECT_EQ(Observed(stream + "/prompt_index"), Json(prompt));
    EXPECT_EQ(Observed(stream + "/error"), "null");
    const Reference& expected = run_->chat[prompt][steered ? 1 : 0];
    EXPECT_EQ(Observed(stream + "/text"), Json(expected.text));
    EXPECT_EQ(Observed(stream + "/finish_reason"), Json(expected.finish_reason));
    EXPECT_EQ(Observed(stream + "/usage/completion_tokens"), Json(expected.completion_tokens));
  }
}

}  // namespace
}  // namespace steerd
