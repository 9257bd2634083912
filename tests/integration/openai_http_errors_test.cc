// The OpenAI-compatible HTTP API against bad input, over raw sockets to the composed
// server in this process (tests/testing/in_process_server.h): malformed JSON, wrong
// types, unknown and unsupported fields, invalid UTF-8, bodies over the limit, nesting,
// a malformed request line, unknown routes, missing keys and more are each answered
// with the matching HTTP status and an OpenAI-style error that names what is wrong;
// a client that never reads its stream and one that leaves mid-stream have their
// generations cancelled; and after all of it the server still answers a good request
// exactly as gRPC does, and its metrics count the HTTP requests by protocol.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/tenancy/sha256.h"
#include "tests/testing/in_process_server.h"
#include "tests/testing/server_process.h"

namespace steerd {
namespace {

namespace v1 = ::steerd::v1;
using ::nlohmann::json;
using ::steerd::testing::InProcessServer;
using ::steerd::testing::MetricSum;

constexpr char kModel[] = "steerd-tiny";
constexpr char kKey[] = "sk-test-openai-errors-9a41";
constexpr int64_t kMaxBody = 1 << 20;  // The server's body limit in this test.

// A connected loopback socket, closed on destruction.
class Connection {
 public:
  explicit Connection(int port, int receive_buffer_bytes = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    if (receive_buffer_bytes > 0) {
      setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer_bytes,
                 sizeof(receive_buffer_bytes));
    }
    timeval timeout{30, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~Connection() { Close(); }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  bool connected() const { return connected_; }

  bool Send(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += n;
    }
    return true;
  }
  // Everything until the server closes the connection (or 30 s pass).
  std::string ReadAll() {
    std::string out;
    char buffer[16384];
    ssize_t n;
    while ((n = recv(fd_, buffer, sizeof(buffer), 0)) > 0) out.append(buffer, n);
    return out;
  }
  // At least `bytes` bytes (or what came before the connection closed).
  std::string ReadSome(size_t bytes) {
    std::string out;
    char buffer[4096];
    while (out.size() < bytes) {
      const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      out.append(buffer, n);
    }
    return out;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

struct HttpResponse {
  int status = 0;
  std::string headers;  // Lower-cased.
  std::string body;     // De-chunked.
};

HttpResponse ParseResponse(const std::string& raw) {
  HttpResponse response;
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos || raw.size() < 12) return response;
  absl::SimpleAtoi(raw.substr(9, 3), &response.status);
  response.headers = absl::AsciiStrToLower(raw.substr(0, end));
  std::string body = raw.substr(end + 4);
  if (absl::StrContains(response.headers, "transfer-encoding: chunked")) {
    std::string plain;
    size_t at = 0;
    while (at < body.size()) {
      const size_t line = body.find("\r\n", at);
      if (line == std::string::npos) break;
      size_t size = 0;
      if (!absl::SimpleHexAtoi(body.substr(at, line - at), &size) || size == 0) break;
      plain += body.substr(line + 2, size);
      at = line + 2 + size + 2;
    }
    body = plain;
  }
  response.body = body;
  return response;
}

std::string Request(const std::string& method, const std::string& path,
                    const std::string& body, bool authorized = true,
                    const std::string& extra_headers = "") {
  std::string request = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: localhost\r\n",
                                     "Connection: close\r\n", extra_headers);
  if (authorized) absl::StrAppend(&request, "Authorization: Bearer ", kKey, "\r\n");
  if (!body.empty() || method == "POST") {
    absl::StrAppend(&request, "Content-Type: application/json\r\nContent-Length: ",
                    body.size(), "\r\n");
  }
  return absl::StrCat(request, "\r\n", body);
}

std::string Chat(const std::string& fields) {
  return absl::StrCat(R"({"model": "steerd-tiny", "messages": [{"role": "user", )",
                      R"("content": "Q: 2+3\nA:"}], "max_tokens": 8, "temperature": 0)",
                      fields.empty() ? "" : ", ", fields, "}");
}

class OpenAiHttpErrorsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    InProcessServer::Options options;
    options.data_dir = steerd::testing::MakeTempDir("steerd-openai-errors") + "/data";
    options.tenants = {Tenant{"alpha", Sha256Hex(kKey), {}}};
    options.http = true;
    options.max_message_bytes = kMaxBody;
    options.http_write_timeout = absl::Seconds(1);
    // Small enough that one stream of the tiny model's context overflows it.
    options.http_send_buffer_bytes = 8 << 10;
    auto server = InProcessServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  static int port() {
    const std::string address = server_->http_address();
    int port = 0;
    EXPECT_TRUE(absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port));
    return port;
  }

  static HttpResponse Exchange(const std::string& raw_request) {
    Connection connection(port());
    EXPECT_TRUE(connection.connected());
    connection.Send(raw_request);
    return ParseResponse(connection.ReadAll());
  }

  // The greedy gRPC answer to Chat("").
  static std::string GrpcChatText() {
    v1::GenerateRequest request;
    request.set_model(kModel);
    v1::ChatMessage* message = request.mutable_messages()->add_messages();
    message->set_role(v1::ChatMessage::ROLE_USER);
    message->set_content("Q: 2+3\nA:");
    request.mutable_sampling()->set_max_new_tokens(8);
    auto response = server_->Client(kKey)->Generate(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? response->text() : "";
  }

  static double HttpRequests(const std::string& code) {
    return MetricSum(server_->ScrapeMetrics(), "steerd_rpc_requests_total",
                     {{"protocol", "http"}, {"rpc", "/v1/chat/completions"}, {"code", code}})
        .value_or(0);
  }

  static InProcessServer* server_;
};

InProcessServer* OpenAiHttpErrorsTest::server_ = nullptr;

struct BadInput {
  std::string name;
  std::string request;  // The raw HTTP request.
  int status;
  std::string message;  // A substring of error.message.
  std::string param;    // error.param, when the error names a field.
};

std::vector<BadInput> BadInputs() {
  const std::string chat = "/v1/chat/completions";
  const std::string completions = "/v1/completions";
  std::string invalid_utf8 = Chat("");
  invalid_utf8.replace(invalid_utf8.find("2+3"), 3, "2\xff\xfe");
  std::string deep(200, '[');
  deep = absl::StrCat(R"({"model": "steerd-tiny", "messages": )", deep, std::string(200, ']'),
                      "}");
  const std::string huge = Chat(absl::StrCat(R"("user": ")", std::string(kMaxBody, 'x'), "\""));
  return {
      {"malformed JSON", Request("POST", chat, R"({"model": "steerd-tiny", "messages": [)"),
       400, "not valid JSON", ""},
      {"a body that is not an object", Request("POST", chat, "[1, 2, 3]"), 400,
       "must be a JSON object", ""},
      {"an empty body", Request("POST", chat, ""), 400, "body is empty", ""},
      {"invalid UTF-8", Request("POST", chat, invalid_utf8), 400, "UTF-8", ""},
      {"nesting too deep", Request("POST", chat, deep), 400, "nests", ""},
      {"a body over the limit", Request("POST", chat, huge), 413, "over this server's limit",
       ""},
      {"messages of the wrong type",
       Request("POST", chat, R"({"model": "steerd-tiny", "messages": "hi"})"), 400,
       "messages must be an array, not a string", "messages"},
      {"max_tokens a string", Request("POST", chat, Chat(R"("max_tokens": "8")")), 400,
       "max_tokens must be an integer, not a string", "max_tokens"},
      {"max_tokens a fraction", Request("POST", chat, Chat(R"("max_tokens": 1.5)")), 400,
       "max_tokens must be an integer", "max_tokens"},
      {"max_tokens zero", Request("POST", chat, Chat(R"("max_tokens": 0)")), 400,
       "at least 1", "max_tokens"},
      {"max_tokens over the context", Request("POST", chat, Chat(R"("max_tokens": 100000)")),
       400, "max_tokens 100000 exceeds", "max_tokens"},
      {"temperature a string", Request("POST", chat, Chat(R"("temperature": "hot")")), 400,
       "temperature must be a number", "temperature"},
      {"temperature out of range", Request("POST", chat, Chat(R"("temperature": 7)")), 400,
       "temperature 7", "temperature"},
      {"seed a boolean", Request("POST", chat, Chat(R"("seed": true)")), 400,
       "seed must be an integer, not a boolean", "seed"},
      {"stop a number", Request("POST", chat, Chat(R"("stop": 5)")), 400,
       "stop must be a string or an array of strings", "stop"},
      {"an unknown field", Request("POST", chat, Chat(R"("temprature": 0.5)")), 400,
       "Unrecognized request argument supplied: temprature", "temprature"},
      {"an unsupported field", Request("POST", chat, Chat(R"("frequency_penalty": 0.5)")),
       400, "frequency_penalty is not supported", "frequency_penalty"},
      {"n above 1", Request("POST", chat, Chat(R"("n": 3)")), 400, "one choice per request",
       "n"},
      {"top_logprobs", Request("POST", chat, Chat(R"("logprobs": true, "top_logprobs": 3)")),
       400, "top_logprobs 3 is not supported", "top_logprobs"},
      {"stream_options without stream",
       Request("POST", chat, Chat(R"("stream_options": {"include_usage": true})")), 400,
       "only allowed when stream is true", "stream_options"},
      {"a tool message",
       Request("POST", chat,
               R"({"model": "steerd-tiny", "messages": [{"role": "tool", "content": "x"}]})"),
       400, "\"tool\" is not one of", "messages[0].role"},
      {"an image part",
       Request("POST", chat,
               R"({"model": "steerd-tiny", "messages": [{"role": "user", "content": )"
               R"([{"type": "image_url", "image_url": {"url": "x"}}]}]})"),
       400, "content[0].image_url is not a known field", "messages[0].content[0].image_url"},
      {"no model", Request("POST", chat, R"({"messages": [{"role": "user", "content": "x"}]})"),
       400, "model is missing", "model"},
      {"an unknown model",
       Request("POST", chat,
               R"({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})"),
       404, "model \"gpt-9\" is not loaded", ""},
      {"an unknown vector",
       Request("POST", chat, Chat(R"("steering": {"vector": "nope", "scale": 1})")), 404,
       "nope", ""},
      {"a vector named twice",
       Request("POST", chat,
               R"({"model": "steerd-tiny:a", "steering": {"vector": "b"}, "messages": )"
               R"([{"role": "user", "content": "x"}]})"),
       400, "name it in one of them", "steering.vector"},
      {"a steering scale out of range",
       Request("POST", chat, Chat(R"("steering": {"vector": "v", "scale": 1000})")), 400,
       "steering.scale", "steering.scale"},
      {"two prompts", Request("POST", completions,
                              R"({"model": "steerd-tiny", "prompt": ["a", "b"]})"),
       400, "steerd takes one per request", "prompt"},
      {"a token id outside the vocabulary",
       Request("POST", completions, R"({"model": "steerd-tiny", "prompt": [1, 99999999]})"),
       400, "not in model \"steerd-tiny\"'s vocabulary", "prompt[1]"},
      {"no API key", Request("POST", chat, Chat(""), /*authorized=*/false), 401, "", ""},
      {"a wrong API key",
       Request("POST", chat, Chat(""), /*authorized=*/false,
               "Authorization: Bearer sk-wrong\r\n"),
       401, "", ""},
      {"an unknown route", Request("POST", "/v1/embeddings", "{}"), 404,
       "Invalid URL (POST /v1/embeddings)", ""},
      {"a malformed request line", "NONSENSE\r\n\r\n", 400, "", ""},
  };
}

TEST_F(OpenAiHttpErrorsTest, BadInputsGetClearErrorsAndTheServerKeepsServing) {
  const std::vector<BadInput> cases = BadInputs();
  ASSERT_GE(cases.size(), 20u);
  for (const BadInput& bad : cases) {
    SCOPED_TRACE(bad.name);
    const HttpResponse response = Exchange(bad.request);
    EXPECT_EQ(response.status, bad.status) << response.body;
    const json body = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(body.is_object() && body.contains("error")) << response.body;
    const json& error = body["error"];
    ASSERT_TRUE(error["message"].is_string()) << response.body;
    EXPECT_FALSE(error["message"].get<std::string>().empty());
    EXPECT_TRUE(error["type"].is_string()) << response.body;
    EXPECT_TRUE(error["code"].is_string()) << response.body;
    EXPECT_TRUE(absl::StrContains(error["message"].get<std::string>(), bad.message))
        << "expected \"" << bad.message << "\" in: " << response.body;
    if (!bad.param.empty()) {
      EXPECT_EQ(error["param"], bad.param) << response.body;
    }
    EXPECT_EQ(error["type"], bad.status == 401   ? "authentication_error"
                             : bad.status == 404 ? "not_found_error"
                                                 : "invalid_request_error")
        << response.body;
    if (bad.status == 401) {
      EXPECT_TRUE(absl::StrContains(response.headers, "www-authenticate: bearer"));
    }
  }
  // Still serving, and exactly.
  const HttpResponse good = Exchange(Request("POST", "/v1/chat/completions", Chat("")));
  ASSERT_EQ(good.status, 200) << good.body;
  EXPECT_EQ(json::parse(good.body)["choices"][0]["message"]["content"], GrpcChatText());
}

TEST_F(OpenAiHttpErrorsTest, AClientThatNeverReadsItsStreamIsCutOffAndOthersAreServed) {
  const double cancelled_before = HttpRequests("CANCELLED");
  // A long stream (200 tokens with log-probabilities, some 80 KB) to a client with a
  // tiny receive buffer that never reads: the server's writes wait once the 8 KiB send
  // buffer is full, and after its write timeout (1 s here) it gives up on the client
  // and cancels the generation.
  Connection stuck(port(), /*receive_buffer_bytes=*/1024);
  ASSERT_TRUE(stuck.connected());
  ASSERT_TRUE(stuck.Send(Request(
      "POST", "/v1/chat/completions",
      Chat(R"("max_tokens": 200, "ignore_eos": true, "stream": true, "logprobs": true)"))));
  // Meanwhile others are answered.
  const std::string expected = GrpcChatText();
  for (int i = 0; i < 3; ++i) {
    const HttpResponse good = Exchange(Request("POST", "/v1/chat/completions", Chat("")));
    ASSERT_EQ(good.status, 200) << good.body;
    EXPECT_EQ(json::parse(good.body)["choices"][0]["message"]["content"], expected);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (HttpRequests("CANCELLED") == cancelled_before &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(HttpRequests("CANCELLED"), cancelled_before + 1);
}

TEST_F(OpenAiHttpErrorsTest, AClientThatLeavesMidStreamCancelsItsGeneration) {
  const double cancelled_before = HttpRequests("CANCELLED");
  const double ok_before = HttpRequests("OK");
  {
    Connection leaving(port());
    ASSERT_TRUE(leaving.connected());
    ASSERT_TRUE(leaving.Send(Request("POST", "/v1/chat/completions",
                                     Chat(R"("max_tokens": 200, "ignore_eos": true, )"
                                          R"("stream": true)"))));
    const std::string first = leaving.ReadSome(1);
    ASSERT_TRUE(absl::StrContains(first, "200 OK")) << first;
  }  // Closed after the first bytes.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (HttpRequests("CANCELLED") == cancelled_before &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(HttpRequests("CANCELLED"), cancelled_before + 1);
  EXPECT_EQ(HttpRequests("OK"), ok_before);
}

TEST_F(OpenAiHttpErrorsTest, MetricsCountHttpRequestsByProtocolBesideGrpc) {
  const std::string before = server_->ScrapeMetrics();
  const HttpResponse good = Exchange(Request("POST", "/v1/chat/completions", Chat("")));
  ASSERT_EQ(good.status, 200) << good.body;
  GrpcChatText();
  const std::string after = server_->ScrapeMetrics();
  auto delta = [&](const std::map<std::string, std::string>& labels) {
    return MetricSum(after, "steerd_rpc_requests_total", labels).value_or(0) -
           MetricSum(before, "steerd_rpc_requests_total", labels).value_or(0);
  };
  EXPECT_EQ(delta({{"protocol", "http"}, {"rpc", "/v1/chat/completions"}, {"code", "OK"}}), 1);
  EXPECT_EQ(delta({{"protocol", "grpc"}, {"rpc", "Generate"}, {"code", "OK"}}), 1);
}

TEST_F(OpenAiHttpErrorsTest, HealthAnswersWithoutAKey) {
  const HttpResponse health = Exchange(Request("GET", "/health", "", /*authorized=*/false));
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(json::parse(health.body)["status"], "serving");
}

// SIGTERM on the `steerd serve` process: /health turns 503, new requests are refused
// with 503, and streams in flight run to their end ([DONE]) before the process exits 0.
TEST(OpenAiHttpDrainTest, SigtermLetsHttpStreamsFinish) {
  const std::string dir = steerd::testing::MakeTempDir("steerd-openai-drain");
  auto server = steerd::testing::ServerProcess::Start(
      {dir, {"--threads", "1", "--drain-seconds", "20", "--http-listen", "127.0.0.1:0"}});
  ASSERT_TRUE(server.ok()) << server.status();
  const int http_port = (*server)->http_port();
  ASSERT_NE(http_port, 0) << (*server)->output();
  const std::string key = (*server)->default_key();
  auto request = [&](const std::string& method, const std::string& path,
                     const std::string& body) {
    std::string text = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: x\r\n",
                                    "Connection: close\r\nAuthorization: Bearer ", key, "\r\n");
    if (method == "POST") {
      absl::StrAppend(&text, "Content-Type: application/json\r\nContent-Length: ",
                      body.size(), "\r\n");
    }
    return absl::StrCat(text, "\r\n", body);
  };
  std::vector<std::unique_ptr<Connection>> streams;
  for (int i = 0; i < 8; ++i) {
    streams.push_back(std::make_unique<Connection>(http_port));
    ASSERT_TRUE(streams.back()->Send(request(
        "POST", "/v1/chat/completions",
        Chat(R"("max_tokens": 200, "ignore_eos": true, "stream": true)"))));
  }
  std::vector<std::string> received;
  for (auto& stream : streams) received.push_back(stream->ReadSome(1));
  (*server)->Signal(SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  bool not_serving = false;  // /health said 503, or the port has closed.
  while (!not_serving && std::chrono::steady_clock::now() < deadline) {
    Connection probe(http_port);
    not_serving = !probe.connected() ||
                  (probe.Send(request("GET", "/health", "")) &&
                   ParseResponse(probe.ReadAll()).status == 503);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(not_serving);
  // New generations are refused while the drain goes on (or the port has closed).
  Connection late(http_port);
  if (late.connected() && late.Send(request("POST", "/v1/chat/completions", Chat("")))) {
    const HttpResponse refused = ParseResponse(late.ReadAll());
    if (refused.status != 0) {
      EXPECT_EQ(refused.status, 503) << refused.body;
    }
  }
  for (size_t i = 0; i < streams.size(); ++i) {
    const std::string all = received[i] + streams[i]->ReadAll();
    EXPECT_TRUE(absl::StrContains(all, "200 OK")) << all.substr(0, 200);
    EXPECT_TRUE(absl::StrContains(all, "data: [DONE]")) << all.substr(all.size() - 300);
    EXPECT_TRUE(absl::StrContains(all, R"("finish_reason":"length")"))
        << all.substr(all.size() - 300);
  }
  auto exit_code = (*server)->Wait(absl::Seconds(60));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << (*server)->output();
}

}  // namespace
}  // namespace steerd
