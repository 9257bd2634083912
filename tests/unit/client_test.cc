// The C++ client library and steerctl against an in-process fake steerd
// (tests/testing/fake_steerd_server.h): a real gRPC server on a free local port whose
// steerd.v1 services have canned behaviour (they check the authorization metadata, page
// their lists, stream chunks and scripted job events, fail with given codes) and gRPC's
// own grpc.health.v1 service. Covers the metadata sent, pagination, streamed chunks and
// job events in order, cancellation and deadlines, error codes, connection resolution,
// several replicas (address lists and their errors, round_robin balancing, UNAVAILABLE
// retried only while a call has no output, a replica down),
// steerctl's training-job flags and JSONL datasets, its progress output, its help (every
// command's --help names every flag of its table), and its output and exit codes as a
// subprocess.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "client/enum_names.h"
#include "client/job_progress.h"
#include "client/steerctl_commands.h"
#include "client/steerd_client.h"
#include "nlohmann/json.hpp"
#include "server/util/flags.h"
#include "steerd/v1/generation.grpc.pb.h"
#include "steerd/v1/models.grpc.pb.h"
#include "steerd/v1/training.grpc.pb.h"
#include "steerd/v1/vectors.grpc.pb.h"
#include "tests/testing/fake_steerd_server.h"
#include "tests/testing/subprocess.h"

namespace steerd::client {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::steerd::v1;
using ::steerd::testing::FakeSteerdServer;
using ::steerd::testing::kFailMidStreamPrompt;
using ::steerd::testing::kFakeApiKey;
using ::steerd::testing::kFakeExportBytes;
using ::steerd::testing::kFakeNumJobs;
using ::steerd::testing::kFakeNumModels;
using ::steerd::testing::kFakeNumVectors;
using ::steerd::testing::kForeverPrompt;
using ::steerd::testing::kUnavailableFirstPrompt;
using ::steerd::testing::kUnavailableMidStreamPrompt;
using ::steerd::testing::kUnavailableModel;
using ::steerd::testing::ObservedCalls;
using ::steerd::testing::ProcessRun;
using ::steerd::testing::RunShellCommand;
using ::steerd::testing::ShellCommand;
using ::steerd::testing::ShellQuote;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class ClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new FakeSteerdServer(); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(server_->ok());
    server_->observed().Reset();
  }

  static std::unique_ptr<SteerdClient> Connect(
      const std::string& key = kFakeApiKey, absl::Duration timeout = absl::Seconds(30)) {
    ClientOptions options;
    options.address = server_->address();
    options.api_key = key;
    options.timeout = timeout;
    absl::StatusOr<std::unique_ptr<SteerdClient>> client = SteerdClient::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  static ObservedCalls& observed() { return server_->observed(); }

  static FakeSteerdServer* server_;
};

FakeSteerdServer* ClientTest::server_ = nullptr;

TEST_F(ClientTest, SendsTheApiKeyAsBearerMetadata) {
  EXPECT_TRUE(Connect()->GetModel("m0").ok());

  absl::StatusOr<v1::Model> wrong = Connect("other-key")->GetModel("m0");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(wrong.status().message(), "unknown API key");

  absl::StatusOr<v1::Model> missing = Connect("")->GetModel("m0");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(missing.status().message(), "missing API key");
}

TEST_F(ClientTest, ErrorsKeepTheirCodeAndMessage) {
  auto client = Connect();
  absl::StatusOr<v1::Model> model = client->GetModel("nope");
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(model.status().message(), "model 'nope' is not loaded");

  v1::GenerateRequest request;
  request.set_model("wrong-fingerprint");
  request.set_prompt("hi");
  absl::StatusOr<v1::GenerateResponse> response = client->Generate(request);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kFailedPrecondition);

  EXPECT_EQ(client->CreateVector("m0", "x", "").status().code(),
            absl::StatusCode::kInvalidArgument);

  for (int code = 1; code <= 16; ++code) {
    const absl::Status status =
        FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(code), "m"));
    EXPECT_EQ(static_cast<int>(status.code()), code);
    EXPECT_EQ(status.message(), "m");
  }
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST_F(ClientTest, UnreachableServerIsUnavailable) {
  ClientOptions options;
  options.address = "127.0.0.1:1";
  auto client = SteerdClient::Create(options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->ListModels().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientTest, CreateRejectsBadOptions) {
  ClientOptions options;
  options.address = "";
  EXPECT_EQ(SteerdClient::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.address = "127.0.0.1:1";
  options.tls_ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(SteerdClient::Create(options).status().code(), absl::StatusCode::kNotFound);
}

// ------------------------------------------------- replicas: targets, balancing, retries

TEST(ChannelTargetTest, ListsOfIpAddressesBecomeMultiAddressTargets) {
  EXPECT_EQ(*ChannelTarget("127.0.0.1:1,127.0.0.1:2"), "ipv4:127.0.0.1:1,127.0.0.1:2");
  EXPECT_EQ(*ChannelTarget(" 10.0.0.5:50051 , 10.0.0.6:50051 "),
            "ipv4:10.0.0.5:50051,10.0.0.6:50051");
  EXPECT_EQ(*ChannelTarget("[::1]:1,[fe80::1]:2"), "ipv6:[::1]:1,[fe80::1]:2");
  // One address, a name or a target URI pass as they are: gRPC resolves them.
  for (const char* address :
       {"localhost:50051", "127.0.0.1:50051", "[::1]:50051", "dns:///steerd.ns.svc:50051",
        "ipv4:127.0.0.1:1,127.0.0.1:2", "ipv6:[::1]:1,[::1]:2", "unix:/run/steerd.sock"}) {
    EXPECT_EQ(*ChannelTarget(address), address);
  }
}

TEST(ChannelTargetTest, MalformedAddressesSayWhatIsWrong) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "the server address is empty"},
      {"  ", "the server address is empty"},
      {"127.0.0.1:1,,127.0.0.1:2", "address list '127.0.0.1:1,,127.0.0.1:2': entry 2 is empty"},
      {"127.0.0.1:1,", "entry 2 is empty"},
      {"host-a:50051,host-b:50051",
       "entry 1 'host-a:50051' is not an IP address: a list takes IP addresses only; for a "
       "name use dns:///host-a:50051"},
      {"127.0.0.1:1,127.0.0.2", "entry 2 '127.0.0.2' has no :PORT"},
      {"127.0.0.1:0,127.0.0.2:1", "entry 1 '127.0.0.1:0' has port '0', not a number from 1 to "
                                  "65535"},
      {"127.0.0.1:1,127.0.0.2:65536", "has port '65536'"},
      {"127.0.0.1:http,127.0.0.2:1", "has port 'http'"},
      {"127.0.0.1:+5,127.0.0.2:1", "has port '+5'"},
      {"127.0.0.1:1,[::1]:2", "entry 2 '[::1]:2' mixes IPv4 and IPv6 addresses"},
      {"::1:5,::1:6", "entry 1 '::1:5' is an IPv6 address without [brackets]"},
      {"[::1:5,[::1]:6", "entry 1 '[::1:5' is not [IPV6]:PORT"},
      {"127.0.0.1:1,127.0.0.1:1", "entry 2 '127.0.0.1:1' is listed twice"},
      {"300.0.0.1:1,127.0.0.1:2", "entry 1 '300.0.0.1:1' is not an IP address"},
      {"dns:///a:1,b:2", "a dns:/// target names one host"},
  };
  for (const auto& [address, message] : cases) {
    absl::StatusOr<std::string> target = ChannelTarget(address);
    EXPECT_EQ(target.status().code(), absl::StatusCode::kInvalidArgument) << address;
    EXPECT_THAT(std::string(target.status().message()), HasSubstr(message)) << address;
    ClientOptions options;
    options.address = address;
    EXPECT_EQ(SteerdClient::Create(options).status(), target.status()) << address;
  }
}

TEST(ServiceConfigTest, RoundRobinAndRetryOfUnavailableForEverySteerdService) {
  const nlohmann::json config = nlohmann::json::parse(ServiceConfigJson());
  EXPECT_EQ(config["loadBalancingConfig"], nlohmann::json::parse(R"([{"round_robin":{}}])"));
  ASSERT_EQ(config["methodConfig"].size(), 1u);
  const nlohmann::json& method = config["methodConfig"][0];
  EXPECT_EQ(method["name"], nlohmann::json::parse(
                                R"([{"service":"steerd.v1.Models"},{"service":"steerd.v1.Vectors"},
                                    {"service":"steerd.v1.Generation"},
                                    {"service":"steerd.v1.Training"}])"));
  EXPECT_EQ(method["retryPolicy"], nlohmann::json::parse(R"({
      "maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "2s",
      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]})"));
}

// Two or three fake replicas and clients of all of them.
class ReplicasTest : public ::testing::Test {
 protected:
  static std::unique_ptr<SteerdClient> ConnectTo(const std::string& address) {
    ClientOptions options;
    options.address = address;
    options.api_key = kFakeApiKey;
    options.timeout = absl::Seconds(30);
    absl::StatusOr<std::unique_ptr<SteerdClient>> client = SteerdClient::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  static int GetModelCalls(FakeSteerdServer& server) {
    absl::MutexLock lock(&server.observed().mu);
    return server.observed().get_model_calls;
  }

  static int Attempts(FakeSteerdServer& server, const std::string& call) {
    absl::MutexLock lock(&server.observed().mu);
    auto it = server.observed().attempts.find(call);
    return it == server.observed().attempts.end() ? 0 : it->second;
  }

  // Calls GetModel until each of `servers` has answered one (at most 200 calls): the
  // channel then has a connection to each. False when one was never reached.
  static bool UntilEveryServerAnswered(SteerdClient& client,
                                       const std::vector<FakeSteerdServer*>& servers) {
    for (int i = 0; i < 200; ++i) {
      EXPECT_TRUE(client.GetModel("m0").ok());
      bool all = true;
      for (FakeSteerdServer* server : servers) all = all && GetModelCalls(*server) > 0;
      if (all) return true;
    }
    return false;
  }
};

TEST_F(ReplicasTest, CallsToAListOfAddressesAreBalancedRoundRobin) {
  FakeSteerdServer a, b;
  ASSERT_TRUE(a.ok() && b.ok());
  auto client = ConnectTo(absl::StrCat(a.address(), ",", b.address()));
  ASSERT_TRUE(UntilEveryServerAnswered(*client, {&a, &b}));
  // With both connected, round_robin alternates: 10 calls make 5 on each (pick_first
  // would send all 10 to one).
  const int before_a = GetModelCalls(a);
  const int before_b = GetModelCalls(b);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(client->GetModel("m0").ok());
  EXPECT_EQ(GetModelCalls(a) - before_a, 5);
  EXPECT_EQ(GetModelCalls(b) - before_b, 5);

  // steerctl takes the same list.
  ProcessRun run = RunShellCommand(
      "env -u STEERD_ADDR -u STEERD_API_KEY -u STEERD_DATA_DIR " +
      ShellCommand(std::string(STEERD_BINARY_DIR) + "/bin/steerctl",
                   {"--addr", absl::StrCat(a.address(), ",", b.address()), "--api-key",
                    kFakeApiKey, "models"}));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("m4"));
}

TEST_F(ReplicasTest, ADnsTargetReachesTheServer) {
  FakeSteerdServer server;
  ASSERT_TRUE(server.ok());
  // localhost may resolve to ::1 too, where nothing listens: round_robin skips it.
  const std::string port = server.address().substr(server.address().rfind(':') + 1);
  auto client = ConnectTo(absl::StrCat("dns:///localhost:", port));
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<v1::Model> model = client->GetModel("m0");
    ASSERT_TRUE(model.ok()) << model.status();
  }
  EXPECT_EQ(GetModelCalls(server), 4);
}

TEST_F(ReplicasTest, UnavailableIsRetriedAndOtherErrorsAreNot) {
  FakeSteerdServer server;
  ASSERT_TRUE(server.ok());
  auto client = ConnectTo(server.address());
  // The first attempt answers UNAVAILABLE, the retry succeeds.
  absl::StatusOr<v1::Model> model = client->GetModel("unavailable-once-1");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->name(), "unavailable-once-1");
  EXPECT_EQ(Attempts(server, "GetModel unavailable-once-1"), 2);
  // Always UNAVAILABLE: 5 attempts (maxAttempts), then the caller gets the error.
  EXPECT_EQ(client->GetModel(kUnavailableModel).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(Attempts(server, absl::StrCat("GetModel ", kUnavailableModel)), 5);
  // Another code is the answer: one attempt.
  EXPECT_EQ(client->GetModel("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Attempts(server, "GetModel nope"), 1);
}

TEST_F(ReplicasTest, AStreamIsRetriedOnlyBeforeItsFirstChunk) {
  FakeSteerdServer server;
  ASSERT_TRUE(server.ok());
  auto client = ConnectTo(server.address());
  v1::GenerateRequest request;
  request.set_model("m0");
  // UNAVAILABLE before any chunk: retried, and the caller sees one whole stream.
  request.set_prompt(kUnavailableFirstPrompt);
  std::vector<std::string> texts;
  absl::Status status = client->GenerateStream(request, [&](const v1::GenerateChunk& chunk) {
    texts.push_back(chunk.text());
    return true;
  });
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_THAT(texts, ElementsAre("t0 ", "t1 ", "t2 "));
  EXPECT_EQ(Attempts(server, absl::StrCat("GenerateStream ", request.prompt())), 2);

  // UNAVAILABLE after a chunk: the caller has seen output, so the error is its to
  // handle; a retry would replay the stream from its start.
  request.set_prompt(kUnavailableMidStreamPrompt);
  texts.clear();
  status = client->GenerateStream(request, [&](const v1::GenerateChunk& chunk) {
    texts.push_back(chunk.text());
    return true;
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_EQ(status.message(), "the replica went away mid-stream");
  EXPECT_THAT(texts, ElementsAre("t0 "));
  EXPECT_EQ(Attempts(server, absl::StrCat("GenerateStream ", request.prompt())), 1);
}

TEST_F(ReplicasTest, EveryCallSucceedsWhileOneReplicaIsDown) {
  // One address never answers (nothing listens on port 1).
  FakeSteerdServer live;
  ASSERT_TRUE(live.ok());
  auto client = ConnectTo(absl::StrCat("127.0.0.1:1,", live.address()));
  for (int i = 0; i < 20; ++i) {
    absl::Status status = client->GetModel("m0").status();
    ASSERT_TRUE(status.ok()) << "call " << i << ": " << status;
  }
  EXPECT_EQ(GetModelCalls(live), 20);

  // A replica that goes away while the client uses it.
  auto leaving = std::make_unique<FakeSteerdServer>();
  FakeSteerdServer staying;
  ASSERT_TRUE(leaving->ok() && staying.ok());
  client = ConnectTo(absl::StrCat(leaving->address(), ",", staying.address()));
  ASSERT_TRUE(UntilEveryServerAnswered(*client, {leaving.get(), &staying}));
  leaving.reset();
  const int before = GetModelCalls(staying);
  for (int i = 0; i < 20; ++i) {
    absl::Status status = client->GetModel("m0").status();
    ASSERT_TRUE(status.ok()) << "call " << i << " after the replica left: " << status;
  }
  EXPECT_EQ(GetModelCalls(staying) - before, 20);
}

TEST_F(ClientTest, ListModelsFollowsEveryPage) {
  absl::StatusOr<std::vector<v1::Model>> models = Connect()->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  std::vector<std::string> names;
  for (const v1::Model& model : *models) names.push_back(model.name());
  EXPECT_THAT(names, ElementsAre("m0", "m1", "m2", "m3", "m4"));
  absl::MutexLock lock(&observed().mu);
  EXPECT_THAT(observed().model_page_tokens, ElementsAre("", "page:2", "page:4"));
}

TEST_F(ClientTest, ListVectorsFollowsEveryPageWithTheSameFilters) {
  VectorFilter filter;
  filter.model = "m0";
  filter.name = "v";
  filter.all_versions = true;
  absl::StatusOr<std::vector<v1::Vector>> vectors = Connect()->ListVectors(filter);
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  ASSERT_EQ(vectors->size(), kFakeNumVectors);
  EXPECT_EQ((*vectors)[4].name(), "v4");
  absl::MutexLock lock(&observed().mu);
  ASSERT_EQ(observed().vector_list_requests.size(), 3);
  for (const v1::ListVectorsRequest& request : observed().vector_list_requests) {
    EXPECT_EQ(request.model(), "m0");
    EXPECT_EQ(request.name(), "v");
    EXPECT_TRUE(request.all_versions());
  }
  EXPECT_EQ(observed().vector_list_requests[2].page_token(), "page:4");
}

TEST_F(ClientTest, VectorCalls) {
  auto client = Connect();
  absl::StatusOr<v1::Vector> created =
      client->CreateVector("m0", "tone", kFakeExportBytes, "warmer replies");
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->name(), "tone");
  EXPECT_EQ(created->size_bytes(), static_cast<int64_t>(kFakeExportBytes.size()));
  {
    absl::MutexLock lock(&observed().mu);
    EXPECT_EQ(observed().last_create.safetensors(), kFakeExportBytes);
    EXPECT_EQ(observed().last_create.description(), "warmer replies");
  }
  absl::StatusOr<v1::Vector> got = client->GetVector("known@1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->version(), 1);
  EXPECT_EQ(client->GetVector("unknown").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<v1::ExportVectorResponse> exported = client->ExportVector("known");
  ASSERT_TRUE(exported.ok());
  EXPECT_EQ(exported->safetensors(), kFakeExportBytes);

  absl::StatusOr<v1::DeleteVectorResponse> deleted = client->DeleteVector("known");
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(deleted->deleted_size(), 2);
}

TEST_F(ClientTest, StreamDeliversChunksInOrder) {
  v1::GenerateRequest request;
  request.set_model("m0");
  request.set_prompt("hi");
  request.mutable_sampling()->set_max_new_tokens(6);
  request.mutable_sampling()->set_seed(1234);
  request.mutable_steering()->set_vector("tone");
  request.set_return_logprobs(true);
  std::vector<std::string> texts;
  v1::GenerateResponse total;
  absl::Status status =
      Connect()->GenerateStream(request, [&](const v1::GenerateChunk& c) {
        texts.push_back(c.text());
        AppendChunk(c, &total);
        return true;
      });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_THAT(texts, ElementsAre("t0 ", "t1 ", "t2 ", "t3 ", "t4 ", "t5 "));
  EXPECT_EQ(total.text(), "t0 t1 t2 t3 t4 t5 ");
  EXPECT_THAT(total.token_ids(), ElementsAre(100, 101, 102, 103, 104, 105));
  EXPECT_EQ(total.logprobs_size(), 6);
  EXPECT_EQ(total.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(total.usage().completion_tokens(), 6);
  EXPECT_EQ(total.seed(), 1234);
  EXPECT_EQ(total.vector().name(), "tone");
  EXPECT_EQ(total.vector().version(), 5);
}

TEST_F(ClientTest, CallbackReturningFalseCancelsTheStream) {
  v1::GenerateRequest request;
  request.set_model("m0");
  request.set_prompt(kForeverPrompt);
  int calls = 0;
  absl::Status status =
      Connect()->GenerateStream(request, [&](const v1::GenerateChunk& chunk) {
        EXPECT_EQ(chunk.token_ids(0), calls);
        return ++calls < 3;
      });
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_EQ(calls, 3);
  // The server sees the cancellation: its Write fails and the handler returns.
  absl::MutexLock lock(&observed().mu);
  EXPECT_TRUE(observed().mu.AwaitWithTimeout(
      absl::Condition(
          +[](int* cancelled) { return *cancelled > 0; }, &observed().streams_cancelled),
      absl::Seconds(30)));
}

TEST_F(ClientTest, CancellerStopsTheStreamFromAnotherThread) {
  v1::GenerateRequest request;
  request.set_model("m0");
  request.set_prompt(kForeverPrompt);
  StreamCanceller canceller;
  absl::Notification first_chunk;
  std::thread cancel_thread([&] {
    first_chunk.WaitForNotification();
    canceller.Cancel();
  });
  int calls = 0;
  absl::Status status = Connect()->GenerateStream(
      request,
      [&](const v1::GenerateChunk&) {
        if (++calls == 1) first_chunk.Notify();
        return true;
      },
      &canceller);
  cancel_thread.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_TRUE(canceller.cancelled());
  EXPECT_GE(calls, 1);
}

TEST_F(ClientTest, CancellerUsedBeforeTheCallCancelsAtOnce) {
  v1::GenerateRequest request;
  request.set_model("m0");
  request.set_prompt(kForeverPrompt);
  StreamCanceller canceller;
  canceller.Cancel();
  int calls = 0;
  absl::Status status = Connect()->GenerateStream(
      request, [&](const v1::GenerateChunk&) { return ++calls > 0; }, &canceller);
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_EQ(calls, 0);
}

TEST_F(ClientTest, StreamPastItsDeadlineIsDeadlineExceeded) {
  v1::GenerateRequest request;
  request.set_model("m0");
  request.set_prompt(kForeverPrompt);
  absl::Status status =
      Connect(kFakeApiKey, absl::Milliseconds(300))
          ->GenerateStream(request, [](const v1::GenerateChunk&) { return true; });
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
}

TEST_F(ClientTest, ErrorAfterSomeChunksEndsTheStreamWithIt) {
  v1::GenerateRequest request;
  request.set_model("m0");
  request.set_prompt(kFailMidStreamPrompt);
  int calls = 0;
  absl::Status status = Connect()->GenerateStream(
      request, [&](const v1::GenerateChunk&) { return ++calls > 0; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(status.message(), "engine failed mid-stream");
  EXPECT_EQ(calls, 2);
}

TEST_F(ClientTest, HealthUsesTheStandardService) {
  auto client = Connect("");  // health needs no key
  absl::StatusOr<ServingStatus> server = client->CheckHealth();
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(*server, ServingStatus::kServing);
  absl::StatusOr<ServingStatus> generation = client->CheckHealth("steerd.v1.Generation");
  ASSERT_TRUE(generation.ok()) << generation.status();
  EXPECT_EQ(*generation, ServingStatus::kNotServing);
  EXPECT_EQ(client->CheckHealth("no.such.Service").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_STREQ(ServingStatusName(ServingStatus::kNotServing), "NOT_SERVING");
}

// ------------------------------------------------------------------------ training

TEST_F(ClientTest, TrainingCallsSendTheKeyAndKeepErrors) {
  auto client = Connect();
  v1::CreateJobRequest request;
  request.set_model("m0");
  request.set_output_vector("tone");
  request.set_task("arith");
  absl::StatusOr<v1::Job> created = client->CreateJob(request);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->id(), "job-tone");
  EXPECT_EQ(created->state(), v1::Job::STATE_QUEUED);

  absl::StatusOr<v1::Job> got = client->GetJob("job-ok");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->state(), v1::Job::STATE_SUCCEEDED);
  EXPECT_EQ(got->vector().version(), 3);
  EXPECT_EQ(client->GetJob("nope").status(), absl::NotFoundError("job 'nope' not found"));

  absl::StatusOr<v1::Job> cancelled = client->CancelJob("job-cancel");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::Job::STATE_CANCELLED);
  EXPECT_EQ(client->CancelJob("job-ok").status().code(),
            absl::StatusCode::kFailedPrecondition);

  EXPECT_EQ(Connect("")->CreateJob(request).status(),
            absl::UnauthenticatedError("missing API key"));
  EXPECT_EQ(
      Connect("other-key")->WatchJob("job-ok", [](const v1::JobEvent&) { return true; }),
      absl::UnauthenticatedError("unknown API key"));

  absl::MutexLock lock(&observed().mu);
  const std::string bearer = absl::StrCat("Bearer ", kFakeApiKey);
  EXPECT_THAT(
      observed().training_authorizations,
      ElementsAre(bearer, bearer, bearer, bearer, bearer, "", "Bearer other-key"));
}

TEST_F(ClientTest, ListJobsFollowsEveryPageWithTheSameFilter) {
  JobFilter filter;
  absl::StatusOr<std::vector<v1::Job>> jobs = Connect()->ListJobs(filter);
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  std::vector<std::string> ids;
  for (const v1::Job& job : *jobs) ids.push_back(job.id());
  EXPECT_THAT(ids, ElementsAre("job-0", "job-1", "job-2", "job-3", "job-4"));

  filter.state = v1::Job::STATE_SUCCEEDED;
  filter.page_size = 1;
  jobs = Connect()->ListJobs(filter);
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 2);
  EXPECT_EQ((*jobs)[1].id(), "job-4");

  absl::MutexLock lock(&observed().mu);
  // A copy: clang's thread-safety analysis cannot follow a local reference to a guarded
  // member back to the lock held.
  const std::vector<v1::ListJobsRequest> requests = observed().job_list_requests;
  ASSERT_EQ(requests.size(), 3 + 2);
  EXPECT_EQ(requests[2].page_token(), "page:4");
  EXPECT_EQ(requests[3].state(), v1::Job::STATE_SUCCEEDED);
  EXPECT_EQ(requests[4].state(), v1::Job::STATE_SUCCEEDED);
  EXPECT_EQ(requests[4].page_size(), 1);
  EXPECT_EQ(requests[4].page_token(), "page:1");
}

TEST_F(ClientTest, WatchJobDeliversEveryEventInOrder) {
  std::vector<v1::JobEvent> events;
  absl::Status status = Connect()->WatchJob("job-ok", [&](const v1::JobEvent& event) {
    events.push_back(event);
    return true;
  });
  ASSERT_TRUE(status.ok()) << status;
  std::vector<std::string> kinds;
  for (const v1::JobEvent& event : events) {
    kinds.push_back(event.has_state_change()
                        ? client::ShortEnumName(event.state_change().state())
                        : absl::StrCat("step ", event.step_metrics().step()));
  }
  EXPECT_THAT(kinds, ElementsAre("QUEUED", "RUNNING", "step 1", "step 2", "step 3",
                                 "step 4", "SUCCEEDED"));
  EXPECT_EQ(events[0].state_change().previous_state(), v1::Job::STATE_UNSPECIFIED);
  EXPECT_EQ(events.back().job().vector().name(), "arith");

  EXPECT_EQ(Connect()->WatchJob("nope", [](const v1::JobEvent&) { return true; }).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Connect()->WatchJob("job-drain", [](const v1::JobEvent&) { return true; }),
            absl::UnavailableError("the server is draining"));
}

TEST_F(ClientTest, WatchJobCallbackOrCancellerStopsTheWatch) {
  int calls = 0;
  absl::Status status =
      Connect()->WatchJob("job-endless-callback", [&](const v1::JobEvent&) {
        ++calls;
        return false;
      });
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_EQ(calls, 1);

  StreamCanceller canceller;
  std::thread cancel_thread;
  status = Connect()->WatchJob(
      "job-endless-canceller",
      [&](const v1::JobEvent&) {
        cancel_thread = std::thread([&] { canceller.Cancel(); });
        return true;
      },
      &canceller);
  cancel_thread.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;

  // The server sees both cancellations.
  EXPECT_TRUE(
      observed().AwaitId(&observed().endless_watches_ended, "job-endless-callback"));
  EXPECT_TRUE(
      observed().AwaitId(&observed().endless_watches_ended, "job-endless-canceller"));
}

TEST_F(ClientTest, WatchJobHasItsOwnDeadline) {
  // job-slow takes 450 ms: past the per-call timeout, which a watch ignores.
  absl::Status status =
      Connect(kFakeApiKey, absl::Milliseconds(200))
          ->WatchJob("job-slow", [](const v1::JobEvent&) { return true; });
  EXPECT_TRUE(status.ok()) << status;

  ClientOptions options;
  options.address = server_->address();
  options.api_key = kFakeApiKey;
  options.watch_timeout = absl::Milliseconds(300);
  absl::StatusOr<std::unique_ptr<SteerdClient>> client = SteerdClient::Create(options);
  ASSERT_TRUE(client.ok());
  status = (*client)->WatchJob("job-endless-deadline",
                               [](const v1::JobEvent&) { return true; });
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
}

// ------------------------------------------------------------ connection resolution

class ResolveConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"STEERD_ADDR", "STEERD_API_KEY", "STEERD_DATA_DIR"}) {
      if (const char* value = getenv(name)) saved_.emplace_back(name, value);
      unsetenv(name);
    }
    dir_ = fs::path(::testing::TempDir()) / absl::StrCat("resolve_", getpid());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    for (const char* name : {"STEERD_ADDR", "STEERD_API_KEY", "STEERD_DATA_DIR"}) {
      unsetenv(name);
    }
    for (const auto& [name, value] : saved_) setenv(name.c_str(), value.c_str(), 1);
    fs::remove_all(dir_);
  }

  std::vector<std::pair<std::string, std::string>> saved_;
  fs::path dir_;
};

TEST_F(ResolveConnectionTest, FlagsThenEnvironmentThenKeyFileThenDefaults) {
  absl::StatusOr<ClientOptions> options =
      ResolveConnection("", "", (dir_ / "missing").string());
  ASSERT_TRUE(options.ok());
  EXPECT_EQ(options->address, "127.0.0.1:50051");
  EXPECT_EQ(options->api_key, "");

  std::ofstream(dir_ / "api_key") << "\n  file-key \n";
  options = ResolveConnection("", "", dir_.string());
  ASSERT_TRUE(options.ok());
  EXPECT_EQ(options->api_key, "file-key");

  setenv("STEERD_DATA_DIR", dir_.c_str(), 1);
  EXPECT_EQ(ResolveConnection("", "")->api_key, "file-key");

  setenv("STEERD_ADDR", "env-host:1", 1);
  setenv("STEERD_API_KEY", "env-key", 1);
  options = ResolveConnection("", "");
  EXPECT_EQ(options->address, "env-host:1");
  EXPECT_EQ(options->api_key, "env-key");

  options = ResolveConnection("flag-host:2", "flag-key", dir_.string());
  EXPECT_EQ(options->address, "flag-host:2");
  EXPECT_EQ(options->api_key, "flag-key");
}

// ---------------------------------------------------------------------- steerctl

class SteerctlTest : public ClientTest {
 protected:
  // build/bin/steerctl with the connection flags and `args`, isolated from the
  // caller's STEERD_* environment.
  static ProcessRun Steerctl(const std::vector<std::string>& args,
                             const std::string& key = kFakeApiKey) {
    std::vector<std::string> all = {"--addr", server_->address(), "--api-key", key};
    all.insert(all.end(), args.begin(), args.end());
    return RunShellCommand(
        "env -u STEERD_ADDR -u STEERD_API_KEY -u STEERD_DATA_DIR " +
        ShellCommand(std::string(STEERD_BINARY_DIR) + "/bin/steerctl", all));
  }

  static std::string TempPath(const std::string& name) {
    return (fs::path(::testing::TempDir()) / absl::StrCat(name, "_", getpid())).string();
  }
};

TEST_F(SteerctlTest, RpcErrorPrintsCodeAndMessageAndExitsOne) {
  ProcessRun run = Steerctl({"models"}, "wrong-key");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "steerctl: UNAUTHENTICATED: unknown API key\n");
  EXPECT_EQ(run.out, "");

  run = Steerctl({"vectors", "get", "missing@3"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "steerctl: NOT_FOUND: vector 'missing@3' not found\n");

  run = Steerctl(
      {"generate", "--model", "wrong-fingerprint", "--prompt", "x", "--no-stream"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, StartsWith("steerctl: FAILED_PRECONDITION: "));
}

TEST_F(SteerctlTest, UsageErrorsExitTwoWithUsage) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"frobnicate"},
           {"models", "--bogus"},
           {"vectors", "get"},
           {"vectors", "list", "--out", "x"},
           {"generate", "--model", "m0"},
           {"generate", "--model", "m0", "--prompt", "a", "--message", "user:b"},
           {"generate", "--model", "m0", "--message", "robot:hi"},
           {"generate", "--model", "m0", "--prompt", "a", "--top-k", "many"},
           {"generate", "--model", "m0", "--prompt", "a", "--scale", "2"},
       }) {
    ProcessRun run = Steerctl(args);
    EXPECT_EQ(run.exit_code, 2) << args[0] << " " << run.err;
    EXPECT_THAT(run.err, StartsWith("steerctl: ")) << args[0];
    EXPECT_THAT(run.err, HasSubstr("usage: steerctl")) << args[0];
  }
  for (const char* help : {"help", "--help", "-h"}) {
    ProcessRun run = Steerctl({help});
    EXPECT_EQ(run.exit_code, 0) << help;
    EXPECT_EQ(run.out, FormatCommandList(SteerctlProgram())) << help;
    EXPECT_EQ(run.err, "") << help;
  }
}

TEST_F(SteerctlTest, CommandTableIsConsistent) {
  EXPECT_TRUE(CheckProgramDef(SteerctlProgram()).ok()) << CheckProgramDef(SteerctlProgram());
}

// `steerctl COMMAND --help` for every command of the table: exit 0, no RPC, and every
// flag of the command's table in the text (which is what FormatHelp makes of it).
TEST_F(SteerctlTest, EveryCommandsHelpNamesEveryFlag) {
  // Without the line breaks and indentation of the wrapped summaries.
  const std::string list =
      absl::StrJoin(absl::StrSplit(FormatCommandList(SteerctlProgram()),
                                   absl::ByAnyChar(" \n"), absl::SkipEmpty()),
                    " ");
  for (const CommandDef& command : SteerctlProgram().commands) {
    std::vector<std::string> args = absl::StrSplit(command.name, ' ');
    args.erase(args.begin());
    EXPECT_THAT(list, HasSubstr(absl::StrJoin(args, " "))) << command.name;
    EXPECT_THAT(list, HasSubstr(command.summary)) << command.name;
    args.push_back("--help");
    // With a wrong key, any RPC would fail.
    ProcessRun run = Steerctl(args, "wrong-key");
    EXPECT_EQ(run.exit_code, 0) << command.name << ": " << run.err;
    EXPECT_EQ(run.err, "") << command.name;
    EXPECT_EQ(run.out, FormatHelp(command)) << command.name;
    EXPECT_THAT(run.out, StartsWith("usage: " + command.name)) << command.name;
    for (absl::string_view line : absl::StrSplit(run.out, '\n')) {
      EXPECT_LE(line.size(), 80u) << command.name << ": " << line;
    }
    for (const FlagDef& flag : command.flags) {
      EXPECT_THAT(run.out, HasSubstr("--" + flag.name + " ")) << command.name;
      EXPECT_THAT(run.out, HasSubstr(flag.value_name)) << command.name << " --" << flag.name;
    }
    // -h and `steerctl help COMMAND` print the same, in-process.
    args.back() = "-h";
    std::ostringstream out, err;
    EXPECT_EQ(RunSteerctl(args, out, err), 0) << command.name;
    EXPECT_EQ(out.str(), run.out) << command.name;
  }
  std::ostringstream out, err;
  EXPECT_EQ(RunSteerctl({"help", "vectors", "get"}, out, err), 0);
  EXPECT_THAT(out.str(), StartsWith("usage: steerctl vectors get NAME[@VERSION] [flags]\n"));
}

TEST_F(SteerctlTest, AMalformedAddressIsAUsageErrorNamingWhereItCameFrom) {
  const std::string steerctl = std::string(STEERD_BINARY_DIR) + "/bin/steerctl";
  ProcessRun run = RunShellCommand(
      "env -u STEERD_ADDR -u STEERD_API_KEY -u STEERD_DATA_DIR " +
      ShellCommand(steerctl, {"--addr", "steerd-0:50051,steerd-1:50051", "--api-key",
                              kFakeApiKey, "models"}));
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, StartsWith("steerctl: flag --addr: address list "
                                  "'steerd-0:50051,steerd-1:50051': entry 1 "
                                  "'steerd-0:50051' is not an IP address"));
  EXPECT_THAT(run.err, HasSubstr("dns:///steerd-0:50051"));
  EXPECT_THAT(run.err, HasSubstr("usage: steerctl models [flags]"));

  run = RunShellCommand("env -u STEERD_API_KEY -u STEERD_DATA_DIR STEERD_ADDR=" +
                        ShellQuote(absl::StrCat(server_->address(), ",")) + " " +
                        ShellCommand(steerctl, {"--api-key", kFakeApiKey, "models"}));
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, StartsWith(absl::StrCat("steerctl: $STEERD_ADDR: address list '",
                                               server_->address(), ",': entry 2 is empty")));
}

TEST_F(SteerctlTest, FlagErrorsNameTheFlag) {
  ProcessRun run = Steerctl({"models", "--colour", "red"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err,
              StartsWith("steerctl: unknown flag --colour (see steerctl models --help)\n"));
  EXPECT_THAT(run.err, HasSubstr("usage: steerctl models [flags]"));

  run = Steerctl({"vectors", "list", "--model", "m0", "--model=m1"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, StartsWith("steerctl: flag --model given twice"));

  run = Steerctl({"generate", "--model", "m0", "--prompt", "a", "--prompt", "b"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, StartsWith("steerctl: flag --prompt given twice"));

  // Repeatable flags may be repeated.
  run = Steerctl({"generate", "--model", "m0", "--message", "user:a", "--message",
                  "assistant:b", "--message", "user:c", "--stop", "x", "--stop", "y",
                  "--no-stream"});
  EXPECT_EQ(run.exit_code, 0) << run.err;

  run = Steerctl({"jobs", "get"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, StartsWith("steerctl: missing ID\n"));
}

TEST_F(SteerctlTest, ModelsAsTableAndJson) {
  ProcessRun run = Steerctl({"models"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  std::vector<std::string> lines;
  std::istringstream in(run.out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 1 + kFakeNumModels);
  EXPECT_THAT(lines[0], StartsWith("NAME  ARCHITECTURE      LAYERS"));
  EXPECT_THAT(lines[1], StartsWith("m0    Qwen2ForCausalLM  4 "));

  run = Steerctl({"models", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json json = nlohmann::json::parse(run.out);
  ASSERT_EQ(json["models"].size(), kFakeNumModels);
  EXPECT_EQ(json["models"][4]["name"], "m4");
  EXPECT_EQ(json["models"][0]["num_layers"], 4);
}

TEST_F(SteerctlTest, ConnectionFromEnvironmentAndDataDir) {
  const std::string binary = std::string(STEERD_BINARY_DIR) + "/bin/steerctl";
  ProcessRun run = RunShellCommand(
      absl::StrCat("env -u STEERD_DATA_DIR STEERD_ADDR=", server_->address(),
                   " STEERD_API_KEY=", kFakeApiKey, " ", binary, " models"));
  EXPECT_EQ(run.exit_code, 0) << run.err;

  const fs::path dir = TempPath("data_dir");
  fs::create_directories(dir);
  std::ofstream(dir / "api_key") << kFakeApiKey << "\n";
  run = RunShellCommand(absl::StrCat(
      "env -u STEERD_API_KEY -u STEERD_DATA_DIR STEERD_ADDR=", server_->address(), " ",
      binary, " --data-dir ", dir.string(), " models"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  run = RunShellCommand(
      absl::StrCat("env -u STEERD_API_KEY STEERD_DATA_DIR=", dir.string(), " ", binary,
                   " --addr ", server_->address(), " models"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  fs::remove_all(dir);
}

TEST_F(SteerctlTest, VectorsCreateListExportDelete) {
  const std::string upload = TempPath("upload.safetensors");
  std::ofstream(upload, std::ios::binary) << kFakeExportBytes;
  ProcessRun run = Steerctl({"vectors", "create", "--model", "m0", "--name", "tone",
                             "--file", upload, "--description", "warm", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json created = nlohmann::json::parse(run.out);
  EXPECT_EQ(created["name"], "tone");
  EXPECT_EQ(created["description"], "warm");
  {
    absl::MutexLock lock(&observed().mu);
    EXPECT_EQ(observed().last_create.safetensors(), kFakeExportBytes);
  }

  run = Steerctl({"vectors", "list", "--model", "m0", "--all-versions"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, StartsWith("VECTOR  MODEL  SHAPE  DTYPE  SIZE"));
  EXPECT_THAT(run.out, HasSubstr("\nv4@5    m0     4x64   F32    1.1KiB  upload  "
                                 "2023-11-14T22:13:20Z  0123456789ab  -\n"));

  const std::string exported = TempPath("exported.safetensors");
  run = Steerctl({"vectors", "export", "known", "--out", exported});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, StartsWith("wrote known@2 (13 bytes"));
  std::ifstream in(exported, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  EXPECT_EQ(bytes.str(), kFakeExportBytes);

  run = Steerctl({"vectors", "delete", "known"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "deleted known@1\ndeleted known@2\n");

  // The server's machine-readable reason is printed with the code.
  run = Steerctl({"vectors", "create", "--model", "m0", "--name", "over-limit", "--file",
                  upload});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err,
            "steerctl: RESOURCE_EXHAUSTED [STORED_VECTORS_LIMIT]: stored_vectors limit of 2 "
            "reached\n");

  run = Steerctl({"vectors", "create", "--model", "m0", "--name", "x", "--file",
                  "/nonexistent/file"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, StartsWith("steerctl: NOT_FOUND: cannot open /nonexistent/file"));
  fs::remove(upload);
  fs::remove(exported);
}

TEST_F(SteerctlTest, GenerateStreamsTextAndSendsEveryOption) {
  ProcessRun run = Steerctl({"generate",
                             "--model",
                             "m0",
                             "--message",
                             "system:be brief",
                             "--message",
                             "user:hi: there",
                             "--vector",
                             "tone@2",
                             "--scale",
                             "-1.5",
                             "--temperature",
                             "0.7",
                             "--top-p",
                             "0.9",
                             "--top-k",
                             "40",
                             "--seed",
                             "18446744073709551615",
                             "--max-new-tokens",
                             "4",
                             "--stop",
                             "END",
                             "--stop",
                             "\n\n",
                             "--logprobs",
                             "--ignore-eos",
                             "--verbose"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "t0 t1 t2 t3 \n");
  EXPECT_EQ(run.err,
            "finish_reason=LENGTH prompt_tokens=7 completion_tokens=4 vector=tone@5 "
            "seed=18446744073709551615\n");
  absl::MutexLock lock(&observed().mu);
  // A copy: clang's thread-safety analysis cannot follow a local reference to a guarded
  // member back to the lock held.
  const v1::GenerateRequest request = observed().last_generate;
  ASSERT_EQ(request.messages().messages_size(), 2);
  EXPECT_EQ(request.messages().messages(0).role(), v1::ChatMessage::ROLE_SYSTEM);
  EXPECT_EQ(request.messages().messages(1).role(), v1::ChatMessage::ROLE_USER);
  EXPECT_EQ(request.messages().messages(1).content(), "hi: there");
  EXPECT_EQ(request.steering().vector(), "tone@2");
  EXPECT_FLOAT_EQ(request.steering().scale(), -1.5f);
  EXPECT_FLOAT_EQ(request.sampling().temperature(), 0.7f);
  EXPECT_FLOAT_EQ(request.sampling().top_p(), 0.9f);
  EXPECT_EQ(request.sampling().top_k(), 40);
  EXPECT_EQ(request.sampling().seed(), 18446744073709551615ull);
  EXPECT_EQ(request.sampling().max_new_tokens(), 4);
  EXPECT_THAT(request.sampling().stop(), ElementsAre("END", "\n\n"));
  EXPECT_TRUE(request.return_logprobs());
  EXPECT_TRUE(request.ignore_eos());
}

TEST_F(SteerctlTest, GenerateJsonAndMessagesFile) {
  const std::string file = TempPath("messages.json");
  std::ofstream(file) << R"({"messages": [{"role": "user", "content": "2+2?"}]})";
  ProcessRun run = Steerctl(
      {"generate", "--model", "m0", "--messages-file", file, "--logprobs", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json json = nlohmann::json::parse(run.out);
  EXPECT_EQ(json["text"], "t0 t1 t2 ");
  EXPECT_EQ(json["token_ids"], nlohmann::json({100, 101, 102}));
  EXPECT_EQ(json["logprobs"].size(), 3);
  // --json is proto3 JSON: enum values by their proto names (AIP-126 prefixes).
  EXPECT_EQ(json["finish_reason"], "FINISH_REASON_LENGTH");
  EXPECT_EQ(json["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(json["seed"], "99");  // proto3 JSON writes 64-bit integers as strings
  {
    absl::MutexLock lock(&observed().mu);
    EXPECT_EQ(observed().last_generate.messages().messages(0).content(), "2+2?");
  }

  run = Steerctl({"generate", "--model", "m0", "--prompt", "x", "--no-stream", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(nlohmann::json::parse(run.out)["text"], "Hello, world");

  run = Steerctl({"generate", "--model", "m0", "--prompt", "x", "--no-stream"});
  EXPECT_EQ(run.out, "Hello, world\n");

  std::ofstream(file) << R"([{"role": "user", "content": 5}])";
  run = Steerctl({"generate", "--model", "m0", "--messages-file", file});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, StartsWith("steerctl: INVALID_ARGUMENT: "));
  fs::remove(file);
}

TEST_F(SteerctlTest, StreamErrorAfterTextEndsTheLineThenReports) {
  ProcessRun run = Steerctl({"generate", "--model", "m0", "--prompt", kFailMidStreamPrompt});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.out, "t0 t1 \n");
  EXPECT_EQ(run.err, "steerctl: INTERNAL: engine failed mid-stream\n");
}

TEST_F(SteerctlTest, Health) {
  ProcessRun run = Steerctl({"health"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "SERVING\n");
  run = Steerctl({"health", "--service", "steerd.v1.Generation", "--json"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(nlohmann::json::parse(run.out)["status"], "NOT_SERVING");
  run = Steerctl({"health", "--service", "nope"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, StartsWith("steerctl: NOT_FOUND: "));
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST_F(SteerctlTest, TlsWithTheServersCertificateAuthority) {
  // A self-signed certificate for 127.0.0.1 that is its own CA.
  const fs::path dir = TempPath("tls");
  fs::create_directories(dir);
  const std::string cert = (dir / "cert.pem").string();
  const std::string key = (dir / "key.pem").string();
  ProcessRun openssl = RunShellCommand(absl::StrCat(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
      "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
      key, " -out ", cert));
  // scripts/install-deps.sh installs the openssl tool: no certificate is a failure.
  ASSERT_EQ(openssl.exit_code, 0) << "openssl cannot make a certificate: " << openssl.err;

  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({ReadAll(key), ReadAll(cert)});
  FakeSteerdServer tls_server(grpc::SslServerCredentials(ssl));
  ASSERT_TRUE(tls_server.ok());

  ClientOptions options;
  options.address = tls_server.address();
  options.api_key = kFakeApiKey;
  options.tls_ca_file = cert;
  absl::StatusOr<std::unique_ptr<SteerdClient>> client = SteerdClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<std::vector<v1::Model>> models = (*client)->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->size(), kFakeNumModels);

  options.tls_ca_file = "";  // plaintext to a TLS port
  client = SteerdClient::Create(options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->ListModels().status().code(), absl::StatusCode::kUnavailable);

  ProcessRun run =
      RunShellCommand("env -u STEERD_ADDR -u STEERD_API_KEY -u STEERD_DATA_DIR " +
                      ShellCommand(std::string(STEERD_BINARY_DIR) + "/bin/steerctl",
                                   {"--addr", tls_server.address(), "--api-key", kFakeApiKey,
                                    "--tls-ca", cert, "health"}));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "SERVING\n");
  fs::remove_all(dir);
}

// A stream buffer that remembers what had been written at every flush.
class FlushRecorder : public std::stringbuf {
 public:
  std::vector<std::string> flushes;

 protected:
  int sync() override {
    flushes.push_back(str());
    return 0;
  }
};

TEST_F(SteerctlTest, InProcessGenerateFlushesEveryChunk) {
  FlushRecorder buffer;
  std::ostream out(&buffer);
  std::ostringstream err;
  const int code = RunSteerctl({"--addr", server_->address(), "--api-key", kFakeApiKey,
                                "generate", "--model", "m0", "--prompt", "hi"},
                               out, err);
  ASSERT_EQ(code, 0) << err.str();
  EXPECT_THAT(buffer.flushes, ElementsAre("t0 ", "t0 t1 ", "t0 t1 t2 ", "t0 t1 t2 \n"));
}

// ------------------------------------------------------------- steerctl: training

// RunSteerctl in this process with the connection flags and `args`; `terminal` as if
// stdout were a terminal.
ProcessRun SteerctlInProcess(const std::string& address,
                             const std::vector<std::string>& args,
                             bool terminal = false) {
  std::vector<std::string> all = {"--addr", address, "--api-key", kFakeApiKey};
  all.insert(all.end(), args.begin(), args.end());
  std::ostringstream out;
  std::ostringstream err;
  ProcessRun run;
  run.exit_code = RunSteerctl(all, out, err, terminal);
  run.out = out.str();
  run.err = err.str();
  return run;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class SteerctlJobsTest : public SteerctlTest {
 protected:
  ProcessRun Run(const std::vector<std::string>& args, bool terminal = false) {
    return SteerctlInProcess(server_->address(), args, terminal);
  }

  static std::vector<v1::CreateJobRequest> Creates() {
    absl::MutexLock lock(&observed().mu);
    return observed().job_creates;
  }
};

TEST_F(SteerctlJobsTest, CreateSendsEveryFlagToItsField) {
  ProcessRun run = Run({"jobs",
                        "create",
                        "--model",
                        "m0",
                        "--output",
                        "arith",
                        "--task",
                        "arith",
                        "--eval-split",
                        "test",
                        "--eval-max",
                        "50",
                        "--eval-every",
                        "5",
                        "--algorithm",
                        "GRPO",
                        "--reward",
                        "regex",
                        "--pattern",
                        "answer: (\\d+)",
                        "--correct-reward",
                        "2",
                        "--incorrect-reward",
                        "0",
                        "--format-reward",
                        "0.25",
                        "--steps",
                        "20",
                        "--prompts-per-step",
                        "4",
                        "--rollouts",
                        "8",
                        "--lr",
                        "0.01",
                        "--max-new-tokens",
                        "64",
                        "--temperature",
                        "0.8",
                        "--seed",
                        "18446744073709551615",
                        "--layers",
                        "0,2,3",
                        "--clip-epsilon",
                        "0.3",
                        "--inner-epochs",
                        "2",
                        "--chat",
                        "--description",
                        "arith steering"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out,
            "ID         STATE   STEP  MODEL  OUTPUT  CREATED               RESULT\n"
            "job-arith  QUEUED  0/4   m0     arith   2023-11-14T22:13:20Z  -\n");
  std::vector<v1::CreateJobRequest> creates = Creates();
  ASSERT_EQ(creates.size(), 1);
  const v1::CreateJobRequest& request = creates[0];
  EXPECT_EQ(request.model(), "m0");
  EXPECT_EQ(request.output_vector(), "arith");
  EXPECT_EQ(request.task(), "arith");
  EXPECT_EQ(request.eval().split(), "test");
  EXPECT_EQ(request.eval().max_examples(), 50);
  EXPECT_EQ(request.algorithm(), v1::ALGORITHM_GRPO);
  EXPECT_EQ(request.reward().type(), v1::RewardSpec::TYPE_REGEX);
  EXPECT_EQ(request.reward().pattern(), "answer: (\\d+)");
  EXPECT_FLOAT_EQ(request.reward().correct_reward(), 2);
  // 0 is a value given, not the default (-1).
  EXPECT_TRUE(request.reward().has_incorrect_reward());
  EXPECT_FLOAT_EQ(request.reward().incorrect_reward(), 0);
  EXPECT_FLOAT_EQ(request.reward().format_reward(), 0.25f);
  const v1::Hyperparameters& hp = request.hyperparameters();
  EXPECT_EQ(hp.steps(), 20);
  EXPECT_EQ(hp.prompts_per_step(), 4);
  EXPECT_EQ(hp.rollouts_per_prompt(), 8);
  EXPECT_FLOAT_EQ(hp.learning_rate(), 0.01f);
  EXPECT_EQ(hp.max_new_tokens(), 64);
  EXPECT_FLOAT_EQ(hp.temperature(), 0.8f);
  EXPECT_EQ(hp.seed(), 18446744073709551615ull);
  EXPECT_THAT(hp.layers(), ElementsAre(0, 2, 3));
  EXPECT_EQ(hp.eval_every(), 5);
  EXPECT_FLOAT_EQ(hp.clip_epsilon(), 0.3f);
  EXPECT_EQ(hp.inner_epochs(), 2);
  EXPECT_TRUE(request.apply_chat_template());
  EXPECT_EQ(request.description(), "arith steering");
}

TEST_F(SteerctlJobsTest, CreateLeavesUnsetFlagsToTheServer) {
  ProcessRun run = Run({"jobs", "create", "--model", "m0", "--output", "plain", "--task",
                        "arith", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json job = nlohmann::json::parse(run.out);
  EXPECT_EQ(job["id"], "job-plain");
  EXPECT_EQ(job["state"], "STATE_QUEUED");
  EXPECT_EQ(job["output_vector"], "plain");
  const v1::CreateJobRequest request = Creates().at(0);
  EXPECT_FALSE(request.has_eval());
  EXPECT_FALSE(request.has_reward());
  EXPECT_FALSE(request.has_hyperparameters());
  EXPECT_FALSE(request.hyperparameters().has_temperature());
  EXPECT_FALSE(request.hyperparameters().has_seed());
  EXPECT_EQ(request.algorithm(), v1::ALGORITHM_UNSPECIFIED);
  EXPECT_FALSE(request.apply_chat_template());
}

TEST_F(SteerctlJobsTest, CreateReadsJsonlDatasets) {
  const std::string train = TempPath("train.jsonl");
  const std::string eval = TempPath("eval.jsonl");
  std::ofstream(train) << "{\"prompt\": \"Q: 2+2\\nA:\", \"answer\": \"4\"}\n"
                          "\n"
                          "{\"prompt\": \"Q: 3*3\\nA:\", \"answer\": \"9\", "
                          "\"solution\": \"3*3 = 9\", \"other\": 1}\n";
  std::ofstream(eval) << "{\"prompt\": \"Q: 1+1\\nA:\", \"answer\": \"2\"}";
  ProcessRun run =
      Run({"jobs", "create", "--model", "m0", "--output", "sft", "--data", train,
           "--eval-data", eval, "--eval-max", "1", "--algorithm", "sft"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const v1::CreateJobRequest request = Creates().at(0);
  EXPECT_EQ(request.dataset_case(), v1::CreateJobRequest::kExamples);
  ASSERT_EQ(request.examples().examples_size(), 2);
  EXPECT_EQ(request.examples().examples(0).prompt(), "Q: 2+2\nA:");
  EXPECT_EQ(request.examples().examples(0).answer(), "4");
  EXPECT_EQ(request.examples().examples(1).answer(), "9");
  ASSERT_EQ(request.eval().examples().examples_size(), 1);
  EXPECT_EQ(request.eval().examples().examples(0).answer(), "2");
  EXPECT_EQ(request.eval().max_examples(), 1);
  EXPECT_EQ(request.algorithm(), v1::ALGORITHM_SFT);
  fs::remove(train);
  fs::remove(eval);
}

TEST_F(SteerctlJobsTest, BadDatasetsNameFileAndLineBeforeAnyRpc) {
  const std::string good = TempPath("good.jsonl");
  const std::string bad = TempPath("bad.jsonl");
  std::ofstream(good) << "{\"prompt\": \"p\", \"answer\": \"a\"}\n";
  std::ofstream(bad) << "{\"prompt\": \"p\", \"answer\": \"a\"}\n{\"prompt\": \"q\"}\n";
  ProcessRun run =
      Run({"jobs", "create", "--model", "m0", "--output", "x", "--data", bad});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, absl::StrCat("steerctl: INVALID_ARGUMENT: ", bad,
                                  ":2: missing \"answer\" (every example needs one)\n"));

  run = Run(
      {"train", "--model", "m0", "--output", "x", "--data", good, "--eval-data", bad});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err,
              StartsWith(absl::StrCat("steerctl: INVALID_ARGUMENT: ", bad, ":2: ")));

  std::ofstream(bad) << "\n  \n";
  run = Run({"jobs", "create", "--model", "m0", "--output", "x", "--data", bad});
  EXPECT_EQ(run.err, absl::StrCat("steerctl: INVALID_ARGUMENT: ", bad,
                                  ": the dataset is empty\n"));

  run = Run({"jobs", "create", "--model", "m0", "--output", "x", "--data",
             "/nonexistent/train.jsonl"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "steerctl: NOT_FOUND: /nonexistent/train.jsonl: cannot open\n");
  EXPECT_TRUE(Creates().empty());
  fs::remove(good);
  fs::remove(bad);
}

TEST_F(SteerctlJobsTest, BadValuesAreUsageErrorsBeforeAnyRpc) {
  const std::vector<std::string> base = {"jobs", "create",   "--model",
                                         "m0",   "--output", "x"};
  const std::vector<std::string> task = {"--task", "arith"};
  struct Case {
    std::vector<std::string> args;  // after `base` and `task`
    std::string message;
    bool with_task = true;
  };
  const std::vector<Case> cases = {
      {{}, "give exactly one of --task or --data", false},
      {{"--data", "d.jsonl"}, "give exactly one of --task or --data"},
      {{"--steps", "0"}, "flag --steps: 0 is not in [1, 100000]"},
      {{"--steps", "ten"}, "flag --steps: 'ten' is not an integer"},
      {{"--prompts-per-step", "2000"},
       "flag --prompts-per-step: 2000 is not in [1, 1024]"},
      {{"--rollouts", "1"}, "flag --rollouts: 1 is not in [2, 256]"},
      {{"--lr", "0"}, "flag --lr: 0 is not in (0, 1]"},
      {{"--lr", "nan"}, "flag --lr: 'nan' is not a finite number"},
      {{"--max-new-tokens", "0"}, "flag --max-new-tokens: 0 is not in [1, 2147483647]"},
      {{"--max-new-tokens", "3000000000"},
       "flag --max-new-tokens: 3000000000 is not in [1, 2147483647]"},
      {{"--temperature", "2.5"}, "flag --temperature: 2.5 is not in (0, 2]"},
      {{"--seed", "-1"}, "flag --seed: '-1' is not a non-negative integer"},
      {{"--layers", "0,x"}, "flag --layers: 'x' is not a layer index"},
      {{"--layers", "0,,1"}, "flag --layers: '' is not a layer index"},
      {{"--layers", "1,1"}, "flag --layers: layer 1 is given twice"},
      {{"--algorithm", "ppo"}, "flag --algorithm: unknown value 'ppo' (rloo, grpo, sft)"},
      {{"--reward", "fuzzy"},
       "flag --reward: unknown value 'fuzzy' (exact, numeric, boxed, regex)"},
      {{"--reward", "regex"}, "--reward regex needs --pattern"},
      {{"--pattern", "x"}, "--pattern needs --reward regex"},
      {{"--correct-reward", "101"}, "flag --correct-reward: 101 is not in [-100, 100]"},
      {{"--format-reward", "inf"}, "flag --format-reward: 'inf' is not a finite number"},
      {{"--data", "d.jsonl", "--eval-split", "test"}, "--eval-split needs --task", false},
      {{"--eval-split", "test", "--eval-data", "e.jsonl"},
       "give at most one of --eval-split or --eval-data"},
      {{"--eval-max", "5"}, "--eval-max needs --eval-split or --eval-data"},
      {{"--eval-every", "5"}, "--eval-every needs --eval-split or --eval-data"},
      {{"--eval-split", "test", "--eval-max", "-1"},
       "flag --eval-max: -1 is not in [0, 2147483647]"},
      {{"--clip-epsilon", "0.2"}, "--clip-epsilon is for --algorithm grpo only"},
      {{"--algorithm", "sft", "--inner-epochs", "2"},
       "--inner-epochs is for --algorithm grpo only"},
      {{"--algorithm", "grpo", "--inner-epochs", "17"},
       "flag --inner-epochs: 17 is not in [1, 16]"},
      {{"--algorithm", "grpo", "--clip-epsilon", "0"},
       "flag --clip-epsilon: 0 is not in (0, 1]"},
      {{"--algorithm", "sft", "--rollouts", "4"},
       "--rollouts is not used by --algorithm sft (no rollouts)"},
      {{"--algorithm", "sft", "--temperature", "1"},
       "--temperature is not used by --algorithm sft (no rollouts)"},
      {{"--all"}, "unknown flag --all (see steerctl jobs create --help)"},
      {{"extra"}, "unexpected argument 'extra'"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = base;
    if (c.with_task) args.insert(args.end(), task.begin(), task.end());
    args.insert(args.end(), c.args.begin(), c.args.end());
    ProcessRun run = Run(args);
    const std::string what = absl::StrJoin(c.args, " ");
    EXPECT_EQ(run.exit_code, 2) << what;
    EXPECT_THAT(run.err, StartsWith(absl::StrCat("steerctl: ", c.message))) << what;
    EXPECT_THAT(run.err, HasSubstr("usage: steerctl")) << what;
  }
  ProcessRun run = Run({"jobs", "create", "--output", "x", "--task", "arith"});
  EXPECT_THAT(run.err, StartsWith("steerctl: missing required flag --model\n"));
  run = Run({"train", "--model", "m0", "--task", "arith"});
  EXPECT_THAT(run.err, StartsWith("steerctl: missing required flag --output\n"));
  EXPECT_TRUE(Creates().empty());
}

TEST_F(SteerctlJobsTest, ListPrintsOnePageOrAllAsATable) {
  ProcessRun run = Run({"jobs", "list"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out,
            "ID     STATE      STEP  MODEL  OUTPUT  CREATED               RESULT\n"
            "job-0  SUCCEEDED  4/4   m0     arith   2023-11-14T22:13:20Z  arith@5\n"
            "job-1  RUNNING    2/4   m0     arith   2023-11-14T22:13:20Z  -\n");
  EXPECT_EQ(run.err, "more jobs: steerctl jobs list --all\n");

  run = Run({"jobs", "list", "--all"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  std::vector<std::string> lines = Lines(run.out);
  ASSERT_EQ(lines.size(), 1 + kFakeNumJobs);
  EXPECT_EQ(lines[3],
            "job-2  FAILED     4/4   m0     arith   2023-11-14T22:13:20Z  "
            "out of memory");
  EXPECT_EQ(lines[4], "job-3  CANCELLED  4/4   m0     arith   2023-11-14T22:13:20Z  -");
  EXPECT_EQ(run.err, "");

  run = Run({"jobs", "list", "--state", "Failed", "--page-size", "10"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(Lines(run.out).size(), 2);
  {
    absl::MutexLock lock(&observed().mu);
    const v1::ListJobsRequest& last = observed().job_list_requests.back();
    EXPECT_EQ(last.state(), v1::Job::STATE_FAILED);
    EXPECT_EQ(last.page_size(), 10);
  }

  run = Run({"jobs", "list", "--state", "queued"});
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_EQ(run.out, "");
  EXPECT_EQ(run.err, "no jobs\n");

  run = Run({"jobs", "list", "--all", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json json = nlohmann::json::parse(run.out);
  ASSERT_EQ(json["jobs"].size(), kFakeNumJobs);
  EXPECT_EQ(json["jobs"][0]["vector"]["name"], "arith");

  run = Run({"jobs", "list", "--state", "done"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err,
              StartsWith("steerctl: flag --state: unknown value 'done' (queued, running, "
                         "succeeded, failed, cancelled)"));
  EXPECT_EQ(Run({"jobs", "list", "--page-size", "-1"}).exit_code, 2);
}

TEST_F(SteerctlJobsTest, GetAndCancel) {
  ProcessRun run = Run({"jobs", "get", "job-fail"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(Lines(run.out),
              ElementsAre(StartsWith("ID        STATE   STEP"),
                          "job-fail  FAILED  1/4   m0     arith   2023-11-14T22:13:20Z  "
                          "out of memory"));
  run = Run({"jobs", "get", "job-ok", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(nlohmann::json::parse(run.out)["vector"]["version"], "3");
  run = Run({"jobs", "get", "nope"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "steerctl: NOT_FOUND: job 'nope' not found\n");
  EXPECT_EQ(Run({"jobs", "get"}).exit_code, 2);
  EXPECT_EQ(Run({"jobs", "frobnicate"}).exit_code, 2);

  run = Run({"jobs", "cancel", "job-cancel"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("\njob-cancel  CANCELLED  0/4 "));
  EXPECT_EQ(run.err, "");
  run = Run({"jobs", "cancel", "job-run"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.err,
            "job job-run stops after its current step (steerctl jobs watch job-run shows "
            "the end)\n");
  run = Run({"jobs", "cancel", "job-ok"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "steerctl: FAILED_PRECONDITION: job 'job-ok' already SUCCEEDED\n");
}

// The plain lines of job-ok's events (stdout is not a terminal).
constexpr char kJobOkLines[] =
    "job job-ok: QUEUED\n"
    "job job-ok: RUNNING\n"
    "step 1/4  reward -0.25  acc 25.0%  ETA 30s\n"
    "step 2/4  reward 0.00  acc 50.0%  eval 40.0%  ETA 20s\n"
    "step 3/4  reward 0.25  acc 75.0%  eval 60.0%  ETA 10s\n"
    "step 4/4  reward 0.50  acc 100.0%  eval 80.0%\n"
    "job job-ok: SUCCEEDED\n"
    "arith@3\n";

TEST_F(SteerctlJobsTest, WatchPrintsPlainLinesAndExitsByOutcome) {
  // The binary, with stdout a pipe.
  ProcessRun run = Steerctl({"jobs", "watch", "job-ok"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, kJobOkLines);
  EXPECT_EQ(run.err, "");

  run = Steerctl({"jobs", "watch", "job-fail"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.out,
            "job job-fail: QUEUED\n"
            "job job-fail: RUNNING\n"
            "step 1/4  reward -0.25  acc 25.0%  ETA 30s\n"
            "job job-fail: FAILED\n");
  EXPECT_EQ(run.err, "steerctl: job job-fail FAILED: out of memory\n");

  run = Steerctl({"jobs", "watch", "job-cancel"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.out, "job job-cancel: QUEUED\njob job-cancel: CANCELLED\n");
  EXPECT_EQ(run.err, "steerctl: job job-cancel was CANCELLED\n");

  run = Steerctl({"jobs", "watch", "job-drain"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err,
            "steerctl: UNAVAILABLE: the server is draining (job job-drain goes on; "
            "steerctl jobs watch job-drain watches it again)\n");

  run = Steerctl({"jobs", "watch", "job-unended"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(
      run.err,
      "steerctl: INTERNAL: the watch of job job-unended ended while it is RUNNING\n");

  run = Steerctl({"jobs", "watch", "nope"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "steerctl: NOT_FOUND: job 'nope' not found\n");

  run = Steerctl({"jobs", "watch", "job-ok"}, "wrong-key");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "steerctl: UNAUTHENTICATED: unknown API key\n");
}

TEST_F(SteerctlJobsTest, TrainCreatesThenWatches) {
  ProcessRun run = Steerctl({"train", "--model", "m0", "--task", "arith", "--output",
                             "ok", "--steps", "4", "--timeout", "0.2"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, kJobOkLines);
  std::vector<v1::CreateJobRequest> creates = Creates();
  ASSERT_EQ(creates.size(), 1);
  EXPECT_EQ(creates[0].hyperparameters().steps(), 4);
  EXPECT_EQ(creates[0].output_vector(), "ok");

  run = Steerctl({"train", "--model", "m0", "--task", "arith", "--output", "fail"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "steerctl: job job-fail FAILED: out of memory\n");
  run = Steerctl({"train", "--model", "m0", "--task", "arith", "--output", "cancel"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "steerctl: job job-cancel was CANCELLED\n");

  // The job is created but the watch cannot find it: the error says it exists.
  run = Steerctl({"train", "--model", "m0", "--task", "arith", "--output", "lost"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err,
            "steerctl: NOT_FOUND: job 'job-lost' not found (job job-lost goes on; "
            "steerctl jobs watch job-lost watches it again)\n");

  run = Steerctl({"train", "--model", "missing", "--task", "arith", "--output", "ok"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "steerctl: NOT_FOUND: model 'missing' is not loaded\n");
  EXPECT_EQ(run.out, "");
}

TEST_F(SteerctlJobsTest, WatchJsonPrintsOneEventPerLine) {
  ProcessRun run = Run({"jobs", "watch", "job-ok", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  std::vector<std::string> lines = Lines(run.out);
  ASSERT_EQ(lines.size(), 7);
  for (const std::string& line : lines) {
    EXPECT_TRUE(nlohmann::json::accept(line)) << line;
  }
  const nlohmann::json first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(first["state_change"]["previous_state"], "STATE_UNSPECIFIED");
  EXPECT_EQ(first["state_change"]["state"], "STATE_QUEUED");
  EXPECT_EQ(nlohmann::json::parse(lines[2])["step_metrics"]["step"], 1);
  const nlohmann::json last = nlohmann::json::parse(lines[6]);
  EXPECT_EQ(last["job"]["state"], "STATE_SUCCEEDED");
  EXPECT_EQ(last["job"]["vector"]["name"], "arith");

  run = Run({"train", "--model", "m0", "--task", "arith", "--output", "fail", "--json"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(Lines(run.out).size(), 4);
  EXPECT_EQ(run.err, "steerctl: job job-fail FAILED: out of memory\n");
}

TEST_F(SteerctlJobsTest, WatchOnATerminalRedrawsOneLine) {
  ProcessRun run = Run({"jobs", "watch", "job-ok"}, /*terminal=*/true);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out,
            "job job-ok: QUEUED\n"
            "job job-ok: RUNNING\n"
            "\r[..........] step 0/4"
            "\r[##........] step 1/4  reward -0.25  acc 25.0%  ETA 30s"
            "\r[#####.....] step 2/4  reward 0.00  acc 50.0%  eval 40.0%  ETA 20s"
            "\r[#######...] step 3/4  reward 0.25  acc 75.0%  eval 60.0%  ETA 10s"
            // No ETA at the last step: spaces cover the longer line before.
            "\r[##########] step 4/4  reward 0.50  acc 100.0%  eval 80.0%        "
            "\r[##########] step 4/4  reward 0.50  acc 100.0%  eval 80.0%\n"
            "job job-ok: SUCCEEDED\n"
            "arith@3\n");
}

TEST_F(SteerctlJobsTest, InterruptStopsWatchingAndSaysTheJobGoesOn) {
  const std::string pid_file = TempPath("watch.pid");
  const std::string out_file = TempPath("watch.out");
  fs::remove(pid_file);
  fs::remove(out_file);
  // A foreground shell that writes its pid and becomes steerctl (a background job of a
  // script would ignore SIGINT, and so would steerctl). stdout goes to a file, to see
  // when steerctl is watching.
  const std::string script =
      absl::StrCat("echo $$ > ", ShellQuote(pid_file),
                   "; exec env -u STEERD_ADDR -u STEERD_API_KEY -u STEERD_DATA_DIR ",
                   ShellCommand(std::string(STEERD_BINARY_DIR) + "/bin/steerctl",
                                {"--addr", server_->address(), "--api-key", kFakeApiKey, "jobs",
                                 "watch", "job-endless-sigint"}),
                   " > ", ShellQuote(out_file));
  ProcessRun run;
  std::thread runner([&] { run = RunShellCommand("sh -c " + ShellQuote(script)); });
  // The first event is printed: steerctl is in the watch, with its SIGINT handler.
  const std::string first_line = "job job-endless-sigint: RUNNING\n";
  for (int i = 0; i < 3000 && ReadAll(out_file) != first_line; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  int pid = 0;
  EXPECT_TRUE(absl::SimpleAtoi(ReadAll(pid_file), &pid));
  // Without a pid the fake server ends the watch after a minute.
  if (pid > 0) {
    EXPECT_EQ(kill(pid, SIGINT), 0);
  }
  runner.join();
  EXPECT_EQ(run.exit_code, 130);
  EXPECT_EQ(ReadAll(out_file), first_line);
  EXPECT_EQ(
      run.err,
      "steerctl: stopped watching job job-endless-sigint; it goes on (steerctl jobs "
      "cancel job-endless-sigint stops it)\n");
  // The watch ended on the server too.
  EXPECT_TRUE(
      observed().AwaitId(&observed().endless_watches_ended, "job-endless-sigint"));
  fs::remove(pid_file);
  fs::remove(out_file);
}

// -------------------------------------------------------------- the progress line

v1::Job RunningJob(int step, int total) {
  v1::Job job;
  job.set_id("j1");
  job.set_algorithm(v1::ALGORITHM_RLOO);
  job.set_state(v1::Job::STATE_RUNNING);
  job.mutable_progress()->set_step(step);
  job.mutable_progress()->set_total_steps(total);
  return job;
}

TEST(JobProgressTest, ProgressLine) {
  v1::Job job = RunningJob(0, 100);
  EXPECT_EQ(FormatProgressLine(job), "[..........] step 0/100");

  job = RunningJob(12, 100);
  v1::JobMetrics* metrics = job.mutable_metrics();
  metrics->set_reward_mean(0.41f);
  metrics->set_accuracy(0.625f);
  metrics->set_eta_seconds(80);
  EXPECT_EQ(FormatProgressLine(job),
            "[#.........] step 12/100  reward 0.41  acc 62.5%  ETA 1m20s");
  metrics->set_eval_accuracy(0.8f);
  metrics->set_reward_mean(-1.5f);
  job.mutable_progress()->set_step(55);
  EXPECT_EQ(FormatProgressLine(job),
            "[#####.....] step 55/100  reward -1.50  acc 62.5%  eval 80.0%  ETA 1m20s");
  EXPECT_EQ(FormatJobProgress(job),
            "step 55/100  reward -1.50  acc 62.5%  eval 80.0%  ETA 1m20s");

  // Ended: a full bar and no estimate.
  job.set_state(v1::Job::STATE_SUCCEEDED);
  job.mutable_progress()->set_step(100);
  EXPECT_EQ(FormatProgressLine(job),
            "[##########] step 100/100  reward -1.50  acc 62.5%  eval 80.0%");

  // SFT has no rollouts: its loss instead of reward and accuracy.
  job = RunningJob(3, 4);
  job.set_algorithm(v1::ALGORITHM_SFT);
  job.mutable_metrics()->set_loss(1.23456f);
  EXPECT_EQ(FormatProgressLine(job), "[#######...] step 3/4  loss 1.235");

  // Nonsense progress neither overflows the bar nor crashes.
  EXPECT_EQ(FormatProgressLine(RunningJob(7, 0)), "[..........] step 7/0");
  EXPECT_EQ(FormatProgressLine(RunningJob(9, 4)), "[##########] step 9/4");
  EXPECT_EQ(FormatProgressLine(RunningJob(-1, 4)), "[..........] step -1/4");
}

TEST(JobProgressTest, Durations) {
  EXPECT_EQ(FormatDuration(0), "0s");
  EXPECT_EQ(FormatDuration(0.4), "0s");
  EXPECT_EQ(FormatDuration(-5), "0s");
  EXPECT_EQ(FormatDuration(std::nan("")), "0s");
  EXPECT_EQ(FormatDuration(45), "45s");
  EXPECT_EQ(FormatDuration(59.6), "1m00s");
  EXPECT_EQ(FormatDuration(80), "1m20s");
  EXPECT_EQ(FormatDuration(3599), "59m59s");
  EXPECT_EQ(FormatDuration(3600), "1h00m");
  EXPECT_EQ(FormatDuration(7530), "2h06m");
  EXPECT_EQ(FormatDuration(1e300), "277777777h47m");
}

TEST(JobProgressTest, StateLinesAndRefs) {
  v1::Job job = RunningJob(0, 4);
  EXPECT_EQ(FormatStateLine(job), "job j1: RUNNING");
  v1::VectorRef ref;
  ref.set_name("arith");
  ref.set_version(12);
  EXPECT_EQ(FormatVectorRef(ref), "arith@12");
  EXPECT_TRUE(IsTerminalState(v1::Job::STATE_CANCELLED));
  EXPECT_FALSE(IsTerminalState(v1::Job::STATE_QUEUED));
}

// People see enum values without the AIP-126 prefix, as before the prefix existed.
TEST(EnumNamesTest, ShortNamesDropTheEnumPrefix) {
  EXPECT_EQ(EnumValuePrefix(*v1::FinishReason_descriptor()), "FINISH_REASON_");
  EXPECT_EQ(EnumValuePrefix(*v1::Job::State_descriptor()), "STATE_");
  EXPECT_EQ(EnumValuePrefix(*v1::RewardSpec::Type_descriptor()), "TYPE_");
  EXPECT_EQ(ShortEnumName(v1::FINISH_REASON_LENGTH), "LENGTH");
  EXPECT_EQ(ShortEnumName(v1::Job::STATE_SUCCEEDED), "SUCCEEDED");
  EXPECT_EQ(ShortEnumName(v1::ALGORITHM_GRPO), "GRPO");
  EXPECT_EQ(ShortEnumName(v1::ChatMessage::ROLE_ASSISTANT), "ASSISTANT");
  EXPECT_EQ(ShortEnumName(v1::Vector::SOURCE_TRAINING), "TRAINING");
  // The zero values always had the prefix and keep it.
  EXPECT_EQ(ShortEnumName(v1::Job::STATE_UNSPECIFIED), "STATE_UNSPECIFIED");
  // A value from a newer server: its number.
  EXPECT_EQ(ShortEnumName(static_cast<v1::Job::State>(42)), "42");
}

TEST(EnumNamesTest, FindsValuesByShortOrFullName) {
  const auto* states = v1::Job::State_descriptor();
  ASSERT_NE(FindEnumValue(*states, "QUEUED"), nullptr);
  EXPECT_EQ(FindEnumValue(*states, "QUEUED")->number(), v1::Job::STATE_QUEUED);
  ASSERT_NE(FindEnumValue(*states, "STATE_QUEUED"), nullptr);
  EXPECT_EQ(FindEnumValue(*states, "STATE_QUEUED")->number(), v1::Job::STATE_QUEUED);
  EXPECT_EQ(FindEnumValue(*states, "PAUSED"), nullptr);
}

}  // namespace
}  // namespace steerd::client
