// The public API over gRPC, as clients see it. Service tests, on the composed server
// inside this process (tests/testing/in_process_server.h): API keys and tenant
// isolation, per-tenant limits, a table of bad requests each answered with its
// documented status code, error details and a message naming the problem (while a
// well-formed stream keeps running), client deadlines, and the Prometheus metrics.
// Process tests, on the real binary (tests/testing/server_process.h), for what needs a
// process: flags, a damaged store refusing to start, persistence across a clean restart
// and SIGKILL, draining on SIGTERM.
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/steerd_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/model/safetensors.h"
#include "server/model/tokenizer.h"
#include "server/tenancy/sha256.h"
#include "server/util/error_details.h"
#include "server/tenancy/tenants.h"
#include "tests/testing/in_process_server.h"
#include "tests/testing/server_process.h"

namespace steerd {
namespace {

namespace v1 = ::steerd::v1;
using ::steerd::testing::InProcessServer;
using ::steerd::testing::MetricSum;
using ::steerd::testing::ServerProcess;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kModel[] = "steerd-tiny";
constexpr int kLayers = 4;
constexpr int kHidden = 192;
constexpr int kContext = 256;
constexpr char kPrompt[] = "Q: (12+7)*3-5\nA:";

// One API key per tenant of the shared server's tenants file.
constexpr char kAlphaKey[] = "sk-test-alpha-6b1f0c27e9";
constexpr char kBetaKey[] = "sk-test-beta-93d2aa8150";
constexpr char kLimitedKey[] = "sk-test-limited-0c55e1d4";
constexpr char kBusyKey[] = "sk-test-busy-71a9b3e2f6";
constexpr char kSlowKey[] = "sk-test-slow-2e84d90b17";

// The oversize-request case needs a limit well below the 16 MiB default.
constexpr int kMaxMessageBytes = 1 << 20;

bool WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  return static_cast<bool>(out);
}

// A steering file [rows, cols] of N(0, sigma^2) values with `metadata`.
std::string VectorFile(uint64_t seed, float sigma = 0.5f,
                       const std::map<std::string, std::string>& metadata =
                           {{"format", "steerd.steering.v1"}},
                       int64_t rows = kLayers, int64_t cols = kHidden) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> values(rows * cols);
  for (float& v : values) v = normal(rng);
  auto bytes =
      SerializeSafetensors({{"steering", DType::kF32, {rows, cols}, values.data()}}, metadata);
  return bytes.ok() ? *bytes : std::string();
}

// A file whose tensors are given explicitly (names, dtypes, shapes); zero-filled.
struct RawTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};
std::string TensorsFile(const std::vector<RawTensor>& tensors,
                        const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::vector<char>> storage;
  std::vector<TensorToWrite> writes;
  for (const RawTensor& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    storage.emplace_back(n * DTypeSize(t.dtype), 0);
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    writes.push_back({tensors[i].name, tensors[i].dtype, tensors[i].shape, storage[i].data()});
  }
  auto bytes = SerializeSafetensors(writes, metadata);
  return bytes.ok() ? *bytes : std::string();
}

// A valid steering file with one value replaced.
std::string VectorFileWithValue(float value) {
  std::vector<float> values(kLayers * kHidden, 0.25f);
  values[kHidden + 7] = value;
  auto bytes = SerializeSafetensors({{"steering", DType::kF32, {kLayers, kHidden}, values.data()}},
                                    {{"format", "steerd.steering.v1"}});
  return bytes.ok() ? *bytes : std::string();
}

v1::GenerateRequest Request(const std::string& prompt, int max_new_tokens,
                            const std::string& vector = "", bool ignore_eos = false) {
  v1::GenerateRequest request;
  request.set_model(kModel);
  request.set_prompt(prompt);
  request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
  request.set_ignore_eos(ignore_eos);
  if (!vector.empty()) request.mutable_steering()->set_vector(vector);
  return request;
}

// A long generation: 240 tokens with the end-of-sequence token ignored (the prompt and
// they fill most of the 256-token context).
v1::GenerateRequest LongRequest() {
  return Request("Q: 1+1\nA:", kContext - 16, "", /*ignore_eos=*/true);
}

std::vector<int32_t> Ids(const v1::GenerateResponse& response) {
  return {response.token_ids().begin(), response.token_ids().end()};
}

// Streams one request and folds the chunks; `chunks` counts them.
absl::StatusOr<v1::GenerateResponse> Stream(client::SteerdClient& client,
                                            const v1::GenerateRequest& request,
                                            int* chunks = nullptr) {
  v1::GenerateResponse response;
  int seen = 0;
  absl::Status status = client.GenerateStream(request, [&](const v1::GenerateChunk& chunk) {
    client::AppendChunk(chunk, &response);
    ++seen;
    return true;
  });
  if (chunks != nullptr) *chunks = seen;
  if (!status.ok()) return status;
  return response;
}

double Metric(const InProcessServer& server, const std::string& name,
              const std::map<std::string, std::string>& labels = {}) {
  return MetricSum(server.ScrapeMetrics(), name, labels).value_or(-1.0);
}

// Polls `condition` (which makes RPCs or scrapes) until it holds or `timeout` passes.
bool Eventually(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    // Each round trip to the server paces the loop; yield the core between rounds.
    std::this_thread::yield();
  }
  return condition();
}

// A GenerateStream running on its own thread, folded into one response.
class BackgroundStream {
 public:
  // When `hold` is given, the stream stops reading after its first chunk until `hold`
  // is notified (the server keeps generating; the call stays open).
  BackgroundStream(client::SteerdClient* client, v1::GenerateRequest request,
                   absl::Notification* hold = nullptr)
      : thread_([this, client, request = std::move(request), hold] {
          absl::Status status = client->GenerateStream(
              request,
              [&](const v1::GenerateChunk& chunk) {
                int chunks;
                {
                  absl::MutexLock lock(&mu_);
                  client::AppendChunk(chunk, &response_);
                  chunks = ++chunks_;
                }
                if (hold != nullptr && chunks == 1) hold->WaitForNotification();
                return true;
              },
              &canceller_);
          absl::MutexLock lock(&mu_);
          status_ = status;
          done_ = true;
        }) {}

  ~BackgroundStream() {
    canceller_.Cancel();
    if (thread_.joinable()) thread_.join();
  }

  // True once a chunk arrived (false when the call ended first or time ran out).
  bool WaitForFirstChunk(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto started = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return chunks_ > 0 || done_; };
    mu_.AwaitWithTimeout(absl::Condition(&started), timeout);
    return chunks_ > 0;
  }

  void Cancel() { canceller_.Cancel(); }

  // Waits for the call to end; its status.
  absl::Status Join() {
    if (thread_.joinable()) thread_.join();
    absl::MutexLock lock(&mu_);
    return status_;
  }

  v1::GenerateResponse response() {
    absl::MutexLock lock(&mu_);
    return response_;
  }

 private:
  client::StreamCanceller canceller_;
  absl::Mutex mu_;
  v1::GenerateResponse response_ ABSL_GUARDED_BY(mu_);
  int chunks_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;  // Last: starts once the members above exist.
};

// Calls with hand-made `authorization` metadata (none when nullopt), for what the
// client library does not send: malformed keys, negative page sizes, raw page tokens.
class RawCaller {
 public:
  RawCaller(const std::string& address, std::optional<std::string> authorization)
      : channel_(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())),
        authorization_(std::move(authorization)),
        models_(v1::Models::NewStub(channel_)),
        vectors_(v1::Vectors::NewStub(channel_)),
        generation_(v1::Generation::NewStub(channel_)) {}

  absl::Status ListModels(const v1::ListModelsRequest& request) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ListModelsResponse response;
    return client::FromGrpcStatus(models_->ListModels(&context, request, &response));
  }
  absl::Status ListVectors(const v1::ListVectorsRequest& request,
                           v1::ListVectorsResponse* response = nullptr) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ListVectorsResponse local;
    return client::FromGrpcStatus(
        vectors_->ListVectors(&context, request, response ? response : &local));
  }
  absl::Status Generate(const v1::GenerateRequest& request,
                        v1::GenerateResponse* response = nullptr) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::GenerateResponse local;
    return client::FromGrpcStatus(
        generation_->Generate(&context, request, response ? response : &local));
  }
  // The vector RPCs with every request field settable (the client library sends
  // "name@version" strings only, never the typed version).
  absl::Status GetVector(const v1::GetVectorRequest& request, v1::Vector* response = nullptr) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::Vector local;
    return client::FromGrpcStatus(
        vectors_->GetVector(&context, request, response ? response : &local));
  }
  absl::Status ExportVector(const v1::ExportVectorRequest& request) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ExportVectorResponse response;
    return client::FromGrpcStatus(vectors_->ExportVector(&context, request, &response));
  }
  absl::Status DeleteVector(const v1::DeleteVectorRequest& request) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::DeleteVectorResponse response;
    return client::FromGrpcStatus(vectors_->DeleteVector(&context, request, &response));
  }

  // grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo, list_services: the
  // raw response bytes (service names appear in them as plain strings).
  absl::StatusOr<std::string> ListServicesByReflection() {
    grpc::GenericStub stub(channel_);
    grpc::CompletionQueue cq;
    grpc::ClientContext context;
    Prepare(&context);
    auto call = stub.PrepareCall(
        &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
    auto step = [&](intptr_t want) {
      void* tag = nullptr;
      bool ok = false;
      return cq.Next(&tag, &ok) && ok && tag == reinterpret_cast<void*>(want);
    };
    // ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
    const std::string request("\x3a\x00", 2);
    grpc::Slice slice(request);
    grpc::ByteBuffer buffer(&slice, 1);
    grpc::ByteBuffer reply;
    call->StartCall(reinterpret_cast<void*>(1));
    bool ok = step(1);
    if (ok) {
      call->Write(buffer, reinterpret_cast<void*>(2));
      ok = step(2);
    }
    if (ok) {
      call->WritesDone(reinterpret_cast<void*>(3));
      ok = step(3);
    }
    bool read = false;
    if (ok) {
      call->Read(&reply, reinterpret_cast<void*>(4));
      read = step(4);
    }
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(5));
    void* tag;
    bool finished;
    cq.Next(&tag, &finished);
    cq.Shutdown();
    while (cq.Next(&tag, &finished)) {
    }
    if (!status.ok()) return client::FromGrpcStatus(status);
    if (!read) return absl::InternalError("no reflection response");
    std::vector<grpc::Slice> slices;
    if (!reply.Dump(&slices).ok()) return absl::InternalError("cannot read the response");
    std::string bytes;
    for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    return bytes;
  }

 private:
  void Prepare(grpc::ClientContext* context) const {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    if (authorization_.has_value()) context->AddMetadata("authorization", *authorization_);
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::optional<std::string> authorization_;
  std::unique_ptr<v1::Models::Stub> models_;
  std::unique_ptr<v1::Vectors::Stub> vectors_;
  std::unique_ptr<v1::Generation::Stub> generation_;
};

// Starts the server with `args` and one compute thread: the tiny model needs no more,
// and on a loaded 2-core machine a second thread mostly waits for the first.
absl::StatusOr<std::unique_ptr<ServerProcess>> StartServer(const std::string& data_dir,
                                                           std::vector<std::string> args = {}) {
  args.insert(args.begin(), {"--threads", "1"});
  return ServerProcess::Start({data_dir, std::move(args)});
}

std::string TenantJson(const std::string& name, const std::string& key,
                       const std::string& limits) {
  return absl::StrCat(R"({"name": ")", name, R"(", "api_key_sha256": ")", Sha256Hex(key),
                      R"(", "limits": {)", limits, "}}");
}

// ---------------------------------------------------------------------------------------
// One server with five tenants for auth, isolation, limits, bad input, deadlines and
// metrics.
class ServerApiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = steerd::testing::MakeTempDir("steerd-api");
    const std::string tenants_path = dir + "/tenants.json";
    const std::string tenants = absl::StrCat(
        R"({"tenants": [)",
        absl::StrJoin({TenantJson("alpha", kAlphaKey, ""), TenantJson("beta", kBetaKey, ""),
                       TenantJson("limited", kLimitedKey,
                                  R"("stored_vectors": 2, "max_new_tokens": 16)"),
                       TenantJson("busy", kBusyKey, R"("concurrent_generations": 2)"),
                       // One request, then the next token in 1000 s.
                       TenantJson("slow", kSlowKey, R"("requests_per_second": 0.001)")},
                      ", "),
        "]}");
    ASSERT_TRUE(WriteFile(tenants_path, tenants));
    InProcessServer::Options options;
    options.data_dir = dir + "/data";
    auto loaded = LoadTenantsFile(tenants_path);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    options.tenants = *loaded;
    options.max_message_bytes = kMaxMessageBytes;
    auto server = InProcessServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    alpha_ = server_->Client(kAlphaKey);
    beta_ = server_->Client(kBetaKey);
    ASSERT_NE(alpha_, nullptr);
    ASSERT_NE(beta_, nullptr);
  }

  static InProcessServer* server_;
  std::unique_ptr<client::SteerdClient> alpha_;
  std::unique_ptr<client::SteerdClient> beta_;
};

InProcessServer* ServerApiTest::server_ = nullptr;

TEST_F(ServerApiTest, EveryRpcNeedsAValidKeyExceptHealthAndReflection) {
  // No key, an unknown key: the client library's own calls.
  for (const std::string& key : {std::string(), std::string("sk-test-nobody-5f3a9c")}) {
    SCOPED_TRACE(key.empty() ? "no key" : "unknown key");
    auto client = server_->Client(key);
    const std::string expected = key.empty() ? "missing API key" : "unknown API key";
    const std::string reason = key.empty() ? "API_KEY_MISSING" : "API_KEY_INVALID";
    auto check = [&](const absl::Status& status, const char* rpc) {
      EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << rpc << ": " << status;
      EXPECT_THAT(std::string(status.message()), HasSubstr(expected)) << rpc;
      const std::optional<ErrorDetails> details = GetErrorDetails(status);
      ASSERT_TRUE(details.has_value()) << rpc;
      EXPECT_EQ(details->reason, reason) << rpc;
    };
    check(client->ListModels().status(), "ListModels");
    check(client->GetModel(kModel).status(), "GetModel");
    check(client->CreateVector(kModel, "v", VectorFile(1)).status(), "CreateVector");
    check(client->GetVector("v").status(), "GetVector");
    check(client->ListVectors({}).status(), "ListVectors");
    check(client->ExportVector("v").status(), "ExportVector");
    check(client->DeleteVector("v").status(), "DeleteVector");
    check(client->Generate(Request(kPrompt, 4)).status(), "Generate");
    check(Stream(*client, Request(kPrompt, 4)).status(), "GenerateStream");
    // Authentication comes before anything else is checked: an invalid request
    // without a key is UNAUTHENTICATED, not INVALID_ARGUMENT.
    check(client->Generate(v1::GenerateRequest()).status(), "Generate (empty request)");
    check(client->CreateVector("", "", "").status(), "CreateVector (empty request)");
  }
  // Malformed authorization metadata.
  for (const char* header : {"Basic c2stdGVzdC1hbHBoYQ==", "Bearer", "Bearer   ",
                             "sk-test-alpha-6b1f0c27e9", "Bearer sk-test alpha"}) {
    SCOPED_TRACE(header);
    RawCaller raw(server_->address(), std::string(header));
    const absl::Status status = raw.ListModels({});
    EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("authorization")) << status;
    EXPECT_EQ(raw.Generate(Request(kPrompt, 4)).code(), absl::StatusCode::kUnauthenticated);
  }
  // The right key in hand-made metadata works (the scheme is case-insensitive), so the
  // failures above are about the metadata, not the raw stubs.
  EXPECT_TRUE(RawCaller(server_->address(), absl::StrCat("Bearer ", kAlphaKey))
                  .ListModels({}).ok());
  EXPECT_TRUE(RawCaller(server_->address(), absl::StrCat("bearer  ", kAlphaKey))
                  .ListModels({}).ok());
  // One tenant's key is not another's: beta's key lists beta's (empty) vectors.
  ASSERT_TRUE(alpha_->CreateVector(kModel, "auth-probe", VectorFile(2)).ok());
  auto beta_list = beta_->ListVectors({});
  ASSERT_TRUE(beta_list.ok()) << beta_list.status();
  for (const auto& v : *beta_list) EXPECT_NE(v.name(), "auth-probe");

  // Health and reflection answer without a key.
  auto keyless = server_->Client("");
  auto health = keyless->CheckHealth();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::ServingStatus::kServing);
  for (const char* service : {"steerd.v1.Generation", "steerd.v1.Vectors", "steerd.v1.Models"}) {
    auto one = keyless->CheckHealth(service);
    ASSERT_TRUE(one.ok()) << service << ": " << one.status();
    EXPECT_EQ(*one, client::ServingStatus::kServing) << service;
  }
  auto services = RawCaller(server_->address(), std::nullopt).ListServicesByReflection();
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, HasSubstr("steerd.v1.Generation"));
  EXPECT_THAT(*services, HasSubstr("steerd.v1.Vectors"));
  EXPECT_THAT(*services, HasSubstr("steerd.v1.Models"));
}

TEST_F(ServerApiTest, AnotherTenantsVectorIsNotFoundAndUntouched) {
  ASSERT_TRUE(alpha_->CreateVector(kModel, "secret", VectorFile(10)).ok());
  auto created = alpha_->CreateVector(kModel, "secret", VectorFile(11), "alpha's own");
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_EQ(created->version(), 2);
  auto exported_before = alpha_->ExportVector("secret");
  ASSERT_TRUE(exported_before.ok());
  auto generated_before = alpha_->Generate(Request(kPrompt, 12, "secret"));
  ASSERT_TRUE(generated_before.ok()) << generated_before.status();

  // Beta sees nothing of it, and cannot tell it from a name that exists nowhere
  // ("zzzzzz": same length, so messages can be compared after substitution).
  auto expect_hidden = [&](const std::string& what,
                           const std::function<absl::Status(const std::string&)>& call,
                           const std::string& ref, const std::string& absent_ref) {
    SCOPED_TRACE(what);
    const absl::Status hidden = call(ref);
    const absl::Status absent = call(absent_ref);
    EXPECT_EQ(hidden.code(), absl::StatusCode::kNotFound) << hidden;
    EXPECT_EQ(absent.code(), absl::StatusCode::kNotFound) << absent;
    EXPECT_EQ(std::string(hidden.message()),
              absl::StrReplaceAll(absent.message(), {{"zzzzzz", "secret"}}));
    EXPECT_THAT(std::string(hidden.message()), Not(HasSubstr("alpha")));
    EXPECT_THAT(std::string(hidden.message()), Not(HasSubstr(created->sha256())));
  };
  for (const auto& [ref, absent] : std::vector<std::pair<std::string, std::string>>{
           {"secret", "zzzzzz"}, {"secret@1", "zzzzzz@1"}, {"secret@2", "zzzzzz@2"}}) {
    expect_hidden("GetVector " + ref, [&](const std::string& r) { return beta_->GetVector(r).status(); },
                  ref, absent);
    expect_hidden("ExportVector " + ref,
                  [&](const std::string& r) { return beta_->ExportVector(r).status(); }, ref, absent);
    expect_hidden("DeleteVector " + ref,
                  [&](const std::string& r) { return beta_->DeleteVector(r).status(); }, ref, absent);
    expect_hidden("Generate with " + ref,
                  [&](const std::string& r) {
                    return beta_->Generate(Request(kPrompt, 4, r)).status();
                  },
                  ref, absent);
    expect_hidden("GenerateStream with " + ref,
                  [&](const std::string& r) {
                    return Stream(*beta_, Request(kPrompt, 4, r)).status();
                  },
                  ref, absent);
  }
  auto beta_all = beta_->ListVectors({"", "", /*all_versions=*/true});
  ASSERT_TRUE(beta_all.ok()) << beta_all.status();
  EXPECT_THAT(*beta_all, ::testing::IsEmpty());
  auto beta_named = beta_->ListVectors({kModel, "secret", /*all_versions=*/true});
  ASSERT_TRUE(beta_named.ok()) << beta_named.status();
  EXPECT_THAT(*beta_named, ::testing::IsEmpty());

  // Beta's own "secret" is its version 1: names and versions are per tenant.
  auto beta_secret = beta_->CreateVector(kModel, "secret", VectorFile(12));
  ASSERT_TRUE(beta_secret.ok()) << beta_secret.status();
  EXPECT_EQ(beta_secret->version(), 1);
  auto beta_only = beta_->ListVectors({"", "", /*all_versions=*/true});
  ASSERT_TRUE(beta_only.ok());
  ASSERT_EQ(beta_only->size(), 1u);
  EXPECT_EQ((*beta_only)[0].sha256(), beta_secret->sha256());
  ASSERT_TRUE(beta_->DeleteVector("secret").ok());

  // Alpha's vector is unchanged: both versions, same bytes, same generation.
  auto alpha_all = alpha_->ListVectors({"", "secret", /*all_versions=*/true});
  ASSERT_TRUE(alpha_all.ok());
  ASSERT_EQ(alpha_all->size(), 2u);
  EXPECT_EQ((*alpha_all)[0].version(), 2);
  EXPECT_EQ((*alpha_all)[1].version(), 1);
  auto exported_after = alpha_->ExportVector("secret");
  ASSERT_TRUE(exported_after.ok());
  EXPECT_EQ(exported_after->vector().version(), 2);
  EXPECT_EQ(exported_after->vector().sha256(), created->sha256());
  EXPECT_EQ(exported_after->vector().description(), "alpha's own");
  EXPECT_EQ(exported_after->safetensors(), exported_before->safetensors());
  EXPECT_EQ(Sha256Hex(exported_after->safetensors()), created->sha256());
  auto generated_after = alpha_->Generate(Request(kPrompt, 12, "secret"));
  ASSERT_TRUE(generated_after.ok());
  EXPECT_EQ(Ids(*generated_after), Ids(*generated_before));
  EXPECT_EQ(generated_after->vector().version(), 2);
}

TEST_F(ServerApiTest, StoredVectorsLimitCountsVersions) {
  auto limited = server_->Client(kLimitedKey);
  ASSERT_TRUE(limited->CreateVector(kModel, "one", VectorFile(20)).ok());
  ASSERT_TRUE(limited->CreateVector(kModel, "one", VectorFile(21)).ok());
  for (const char* name : {"one", "two"}) {
    auto over = limited->CreateVector(kModel, name, VectorFile(22));
    EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted) << over.status();
    EXPECT_THAT(std::string(over.status().message()), HasSubstr("stored_vectors")) << name;
    // A program reads the limit from google.rpc.ErrorInfo, not from the English.
    const std::optional<ErrorDetails> details = GetErrorDetails(over.status());
    ASSERT_TRUE(details.has_value()) << over.status();
    EXPECT_EQ(details->reason, "STORED_VECTORS_LIMIT");
    EXPECT_EQ(details->metadata.at("limit"), "stored_vectors");
    EXPECT_EQ(details->metadata.at("limit_value"), "2");
    EXPECT_EQ(details->metadata.at("value"), "2");
    EXPECT_FALSE(details->retry_delay.has_value()) << "waiting does not help";
  }
  // Other tenants are not limited by it.
  EXPECT_TRUE(alpha_->CreateVector(kModel, "two", VectorFile(23)).ok());
  // Deleting a version makes room; the version number is not reused.
  ASSERT_TRUE(limited->DeleteVector("one@2").ok());
  auto again = limited->CreateVector(kModel, "one", VectorFile(24));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->version(), 3);
  EXPECT_EQ(limited->CreateVector(kModel, "two", VectorFile(25)).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(ServerApiTest, MaxNewTokensLimitRejectsMoreAndLowersTheDefault) {
  auto limited = server_->Client(kLimitedKey);
  auto over = limited->Generate(Request(kPrompt, 17));
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted) << over.status();
  EXPECT_THAT(std::string(over.status().message()), HasSubstr("max_new_tokens"));
  auto over_stream = Stream(*limited, Request(kPrompt, 200));
  EXPECT_EQ(over_stream.status().code(), absl::StatusCode::kResourceExhausted);
  // At the limit: allowed. Unset (0 = 256): lowered to the limit.
  auto at_limit = limited->Generate(Request(kPrompt, 16, "", /*ignore_eos=*/true));
  ASSERT_TRUE(at_limit.ok()) << at_limit.status();
  EXPECT_EQ(at_limit->token_ids_size(), 16);
  auto defaulted = limited->Generate(Request(kPrompt, 0, "", /*ignore_eos=*/true));
  ASSERT_TRUE(defaulted.ok()) << defaulted.status();
  EXPECT_EQ(defaulted->token_ids_size(), 16);
  EXPECT_EQ(defaulted->finish_reason(), v1::FINISH_REASON_LENGTH);
  // Alpha has no such limit.
  auto alpha = alpha_->Generate(Request(kPrompt, 40, "", /*ignore_eos=*/true));
  ASSERT_TRUE(alpha.ok()) << alpha.status();
  EXPECT_EQ(alpha->token_ids_size(), 40);
}

TEST_F(ServerApiTest, RequestsPerSecondLimitAppliesToAnyRpcOfThatTenantOnly) {
  auto slow = server_->Client(kSlowKey);
  ASSERT_TRUE(slow->ListModels().ok());  // The bucket's one token.
  const std::vector<std::pair<const char*, absl::Status>> calls = {
      {"ListModels", slow->ListModels().status()},
      {"GetVector", slow->GetVector("anything").status()},
      {"CreateVector", slow->CreateVector(kModel, "v", VectorFile(30)).status()},
      {"Generate", slow->Generate(Request(kPrompt, 4)).status()},
      {"GenerateStream", Stream(*slow, Request(kPrompt, 4)).status()}};
  for (const auto& [rpc, status] : calls) {
    EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << rpc << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("requests_per_second")) << rpc;
    const std::optional<ErrorDetails> details = GetErrorDetails(status);
    ASSERT_TRUE(details.has_value()) << rpc;
    EXPECT_EQ(details->reason, "REQUESTS_PER_SECOND_LIMIT") << rpc;
    ASSERT_TRUE(details->retry_delay.has_value()) << rpc << ": retrying later helps";
    EXPECT_GT(*details->retry_delay, absl::ZeroDuration()) << rpc;
  }
  EXPECT_TRUE(alpha_->ListModels().ok());
  EXPECT_TRUE(beta_->ListModels().ok());
}

TEST_F(ServerApiTest, ConcurrentGenerationsLimitHoldsWhileStreamsRun) {
  auto busy = server_->Client(kBusyKey);
  // Two long streams hold the tenant's two slots; a third generation, unary or
  // streamed, is refused while they run. The streams are then cancelled: if one of them
  // had already finished, the attempt proves nothing and is repeated.
  bool conclusive = false;
  for (int attempt = 0; attempt < 3 && !conclusive; ++attempt) {
    SCOPED_TRACE(absl::StrCat("attempt ", attempt));
    BackgroundStream first(busy.get(), LongRequest());
    BackgroundStream second(busy.get(), LongRequest());
    ASSERT_TRUE(first.WaitForFirstChunk(absl::Seconds(60)));
    ASSERT_TRUE(second.WaitForFirstChunk(absl::Seconds(60)));
    const absl::Status unary = busy->Generate(Request(kPrompt, 4)).status();
    const absl::Status streamed = Stream(*busy, Request(kPrompt, 4)).status();
    // Other tenants are not limited by busy's streams.
    const absl::Status other = alpha_->Generate(Request(kPrompt, 4)).status();
    first.Cancel();
    second.Cancel();
    const absl::Status first_end = first.Join();
    const absl::Status second_end = second.Join();
    if (first_end.ok() || second_end.ok()) continue;  // A slot may have been free.
    conclusive = true;
    EXPECT_EQ(first_end.code(), absl::StatusCode::kCancelled) << first_end;
    EXPECT_EQ(second_end.code(), absl::StatusCode::kCancelled) << second_end;
    for (const absl::Status& status : {unary, streamed}) {
      EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
      EXPECT_THAT(std::string(status.message()), HasSubstr("concurrent_generations"));
    }
    EXPECT_TRUE(other.ok()) << other;
  }
  ASSERT_TRUE(conclusive) << "the held streams kept finishing before the third call";
  // The cancelled streams give their slots back (once the server has seen the cancels).
  absl::Status last;
  EXPECT_TRUE(Eventually(
      [&] {
        last = busy->Generate(Request(kPrompt, 4)).status();
        if (!last.ok() && last.code() != absl::StatusCode::kResourceExhausted) return true;
        return last.ok();
      },
      absl::Seconds(20)));
  EXPECT_TRUE(last.ok()) << last;
}

// The context bounds, exactly: a prompt of max_context tokens is refused, one of
// max_context - 1 gets one token; max_new_tokens may equal max_context (generation
// then stops when the context is full).
TEST_F(ServerApiTest, PromptAndMaxNewTokensBoundsAtTheContextSize) {
  auto tokenizer = Tokenizer::Load(std::string(STEERD_SOURCE_DIR) + "/models/steerd-tiny");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto count = [&](const std::string& text) {
    auto ids = (*tokenizer)->Encode(text, /*add_special_tokens=*/true);
    return ids.ok() ? static_cast<int>(ids->size()) : -1;
  };
  // Grow a prompt one character at a time to exactly kContext - 1, then kContext tokens.
  const std::string alphabet = "Q: 12+7*3-5 (steps)\nA: ";
  std::string prompt;
  for (size_t i = 0; count(prompt) < kContext - 1; ++i) prompt += alphabet[i % alphabet.size()];
  ASSERT_EQ(count(prompt), kContext - 1);
  std::string full;
  for (char c : alphabet) {
    if (count(prompt + c) == kContext) {
      full = prompt + c;
      break;
    }
  }
  ASSERT_EQ(count(full), kContext);

  auto refused = alpha_->Generate(Request(full, 1));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("the prompt is 256 tokens"));
  auto last_slot = alpha_->Generate(Request(prompt, 0, "", /*ignore_eos=*/true));
  ASSERT_TRUE(last_slot.ok()) << last_slot.status();
  EXPECT_EQ(last_slot->usage().prompt_tokens(), kContext - 1);
  EXPECT_EQ(last_slot->token_ids_size(), 1);
  EXPECT_EQ(last_slot->finish_reason(), v1::FINISH_REASON_LENGTH);

  auto whole_context = Stream(*alpha_, Request(kPrompt, kContext, "", /*ignore_eos=*/true));
  ASSERT_TRUE(whole_context.ok()) << whole_context.status();
  EXPECT_EQ(whole_context->usage().prompt_tokens() + whole_context->token_ids_size(), kContext);
  EXPECT_EQ(whole_context->usage().completion_tokens(), whole_context->token_ids_size());
  EXPECT_EQ(whole_context->finish_reason(), v1::FINISH_REASON_LENGTH);
}

// ---------------------------------------------------------------------------------------
// Bad requests: each row is one call, its exact status code and a substring of the
// message that names the problem.
struct BadCase {
  std::string name;
  std::function<absl::Status()> call;
  absl::StatusCode code;
  std::string message;
};

TEST_F(ServerApiTest, BadInputTableGetsDocumentedErrorsAndServerKeepsServing) {
  client::SteerdClient& alpha = *alpha_;
  ASSERT_TRUE(alpha.CreateVector(kModel, "table-ok", VectorFile(40, /*sigma=*/3.0f)).ok());
  // What a well-formed generation gives before any bad request.
  const v1::GenerateRequest good = Request(kPrompt, 24, "", /*ignore_eos=*/true);
  const v1::GenerateRequest good_steered =
      Request(kPrompt, 24, "table-ok@1", /*ignore_eos=*/true);
  auto reference = alpha.Generate(good);
  auto reference_steered = alpha.Generate(good_steered);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_TRUE(reference_steered.ok()) << reference_steered.status();
  ASSERT_NE(Ids(*reference), Ids(*reference_steered));  // The vector matters.
  const v1::GenerateRequest long_request =
      Request(kPrompt, kContext - 24, "table-ok@1", /*ignore_eos=*/true);
  auto long_reference = alpha.Generate(long_request);
  ASSERT_TRUE(long_reference.ok()) << long_reference.status();

  const std::string base = VectorFile(41);
  std::string long_prompt;
  for (int i = 0; long_prompt.size() < 6000; ++i) {
    absl::StrAppend(&long_prompt, "Q: (", i * 37 % 91, "+", i * 13 % 47, ")*", i % 9, " ");
  }
  std::string oversize(2 << 20, '\0');
  std::mt19937 rng(7);
  for (char& c : oversize) c = static_cast<char>(rng());

  std::vector<BadCase> cases;
  using Code = absl::StatusCode;
  auto create = [&](std::string name, std::string model, std::string vector_name,
                    std::string bytes, Code code, std::string message,
                    std::string description = "") {
    cases.push_back({std::move(name),
                     [&alpha, model, vector_name, bytes, description] {
                       return alpha.CreateVector(model, vector_name, bytes, description).status();
                     },
                     code, std::move(message)});
  };
  auto upload = [&](std::string name, std::string bytes, Code code, std::string message) {
    create(std::move(name), kModel, "bad-upload", std::move(bytes), code, std::move(message));
  };
  // Vector files.
  upload("NaN value", VectorFileWithValue(std::nanf("")), Code::kInvalidArgument, "non-finite");
  // Before the fix accepted, and at scale 100 it crashed the server (top-k) or gave NaN
  // logprobs with status OK.
  upload("huge finite values (3e38)", VectorFileWithValue(3e38f), Code::kInvalidArgument,
         "overflows the model's activations");
  // Before the fix stored verbatim (15 MiB of metadata on a 3 KiB vector).
  upload("100 KiB of metadata",
         VectorFile(50, 0.5f, {{"format", "steerd.steering.v1"},
                               {"notes", std::string(100 << 10, 'm')}}),
         Code::kInvalidArgument, "__metadata__");
  upload("+Inf value", VectorFileWithValue(std::numeric_limits<float>::infinity()),
         Code::kInvalidArgument, "non-finite");
  upload("-Inf value", VectorFileWithValue(-std::numeric_limits<float>::infinity()),
         Code::kInvalidArgument, "non-finite");
  upload("wrong hidden size", VectorFile(43, 0.5f, {}, kLayers, kHidden - 1),
         Code::kFailedPrecondition, "does not match model");
  upload("wrong layer count", VectorFile(44, 0.5f, {}, kLayers + 1, kHidden),
         Code::kFailedPrecondition, "does not match model");
  upload("1-D tensor", TensorsFile({{"steering", DType::kF32, {kLayers * kHidden}}}),
         Code::kInvalidArgument, "1 dimensions");
  upload("3-D tensor", TensorsFile({{"steering", DType::kF32, {1, kLayers, kHidden}}}),
         Code::kInvalidArgument, "3 dimensions");
  upload("extra tensor", TensorsFile({{"steering", DType::kF32, {kLayers, kHidden}},
                                      {"bias", DType::kF32, {kHidden}}}),
         Code::kInvalidArgument, "\"bias\" besides \"steering\"");
  upload("three tensors", TensorsFile({{"steering", DType::kF32, {kLayers, kHidden}},
                                       {"a", DType::kF32, {1}}, {"b", DType::kF32, {1}}}),
         Code::kInvalidArgument, "besides \"steering\"");
  upload("tensor not named steering", TensorsFile({{"vector", DType::kF32, {kLayers, kHidden}}}),
         Code::kInvalidArgument, "no tensor named \"steering\"");
  upload("dtype I32", TensorsFile({{"steering", DType::kI32, {kLayers, kHidden}}}),
         Code::kInvalidArgument, "dtype I32");
  upload("dtype F16", TensorsFile({{"steering", DType::kF16, {kLayers, kHidden}}}),
         Code::kInvalidArgument, "dtype F16");
  upload("dtype F64", TensorsFile({{"steering", DType::kF64, {kLayers, kHidden}}}),
         Code::kInvalidArgument, "dtype F64");
  upload("wrong model_fingerprint",
         VectorFile(45, 0.5f, {{"format", "steerd.steering.v1"}, {"model_fingerprint", "llama:32x4096"}}),
         Code::kFailedPrecondition, "fingerprint");
  upload("metadata num_layers disagrees", VectorFile(46, 0.5f, {{"num_layers", "5"}}),
         Code::kInvalidArgument, "num_layers");
  upload("metadata hidden_size disagrees", VectorFile(47, 0.5f, {{"hidden_size", "x"}}),
         Code::kInvalidArgument, "hidden_size");
  upload("bad format metadata", VectorFile(48, 0.5f, {{"format", "steerd.steering.v0"}}),
         Code::kInvalidArgument, "format");
  upload("malformed bytes", "this is not a safetensors file", Code::kInvalidArgument,
         "malformed safetensors");
  upload("header length past the end", std::string("\xff\xff\x00\x00\x00\x00\x00\x00{}", 10),
         Code::kInvalidArgument, "malformed safetensors");
  upload("truncated data", base.substr(0, base.size() - 100), Code::kInvalidArgument,
         "malformed safetensors");
  upload("empty bytes", "", Code::kInvalidArgument, "empty");
  create("unknown model", "no-such-model", "v", base, Code::kNotFound, "not loaded");
  create("empty model", "", "v", base, Code::kInvalidArgument, "model is empty");
  create("empty name", kModel, "", base, Code::kInvalidArgument, "name is empty");
  create("name of 65 characters", kModel, std::string(65, 'a'), base, Code::kInvalidArgument,
         "maximum is 64");
  create("name with a space", kModel, "my vector", base, Code::kInvalidArgument,
         "contains the character ' '");
  create("name with a slash", kModel, "a/b", base, Code::kInvalidArgument,
         "contains the character '/'");
  create("name with '@'", kModel, "a@1", base, Code::kInvalidArgument,
         "contains the character '@'");
  create("name starting with '-'", kModel, "-vector", base, Code::kInvalidArgument,
         "must start with a letter or a digit");
  create("name starting with '.'", kModel, ".vector", base, Code::kInvalidArgument,
         "must start with a letter or a digit");
  create("description over 1024 bytes", kModel, "v", base, Code::kInvalidArgument,
         "description", std::string(1025, 'd'));
  create("request over --max-message-bytes", kModel, "v", oversize, Code::kResourceExhausted,
         "larger than max");

  // References.
  for (const char* ref : {"a@", "a@0", "a@x", "a@-1", "a@1.5", "a@99999999999999999999"}) {
    cases.push_back({absl::StrCat("GetVector \"", ref, "\""),
                     [&alpha, ref] { return alpha.GetVector(ref).status(); },
                     Code::kInvalidArgument, "malformed version"});
  }
  cases.push_back({"ExportVector \"a@0\"", [&alpha] { return alpha.ExportVector("a@0").status(); },
                   Code::kInvalidArgument, "malformed version"});
  cases.push_back({"DeleteVector \"a@x\"", [&alpha] { return alpha.DeleteVector("a@x").status(); },
                   Code::kInvalidArgument, "malformed version"});
  cases.push_back({"GetVector \"\"", [&alpha] { return alpha.GetVector("").status(); },
                   Code::kInvalidArgument, "is empty"});
  cases.push_back({"DeleteVector \"-a\"", [&alpha] { return alpha.DeleteVector("-a").status(); },
                   Code::kInvalidArgument, "must start with a letter or a digit"});
  cases.push_back({"GetVector of an absent version",
                   [&alpha] { return alpha.GetVector("table-ok@99").status(); }, Code::kNotFound,
                   "not found"});
  // The typed version beside the reference string (common.proto): never both, never
  // negative. Raw requests, since the client library sends strings only.
  RawCaller raw(server_->address(), absl::StrCat("Bearer ", kAlphaKey));
  auto vector_request = [](auto request, std::string name, int64_t version) {
    request.set_name(std::move(name));
    request.set_version(version);
    return request;
  };
  cases.push_back({"GetVector name \"table-ok@1\" with version 1",
                   [&raw, vector_request] {
                     return raw.GetVector(vector_request(v1::GetVectorRequest(), "table-ok@1", 1));
                   },
                   Code::kInvalidArgument,
                   "name \"table-ok@1\" carries a version and version is 1"});
  cases.push_back({"GetVector version -1",
                   [&raw, vector_request] {
                     return raw.GetVector(vector_request(v1::GetVectorRequest(), "table-ok", -1));
                   },
                   Code::kInvalidArgument, "version -1 is negative"});
  cases.push_back({"ExportVector name \"table-ok@1\" with version 2",
                   [&raw, vector_request] {
                     return raw.ExportVector(
                         vector_request(v1::ExportVectorRequest(), "table-ok@1", 2));
                   },
                   Code::kInvalidArgument, "carries a version and version is 2"});
  cases.push_back({"DeleteVector version -5",
                   [&raw, vector_request] {
                     return raw.DeleteVector(
                         vector_request(v1::DeleteVectorRequest(), "table-ok", -5));
                   },
                   Code::kInvalidArgument, "version -5 is negative"});
  cases.push_back({"DeleteVector name \"table-ok@1\" with version 1",
                   [&raw, vector_request] {
                     return raw.DeleteVector(
                         vector_request(v1::DeleteVectorRequest(), "table-ok@1", 1));
                   },
                   Code::kInvalidArgument, "carries a version and version is 1"});
  cases.push_back({"GetVector of an absent typed version",
                   [&raw, vector_request] {
                     return raw.GetVector(vector_request(v1::GetVectorRequest(), "table-ok", 99));
                   },
                   Code::kNotFound, "not found"});

  // Listing.
  auto list_vectors = [&raw](int32_t page_size, std::string token, std::string model,
                             std::string name) {
    return [&raw, page_size, token, model, name] {
      v1::ListVectorsRequest request;
      request.set_page_size(page_size);
      request.set_page_token(token);
      request.set_model(model);
      request.set_name(name);
      return raw.ListVectors(request);
    };
  };
  cases.push_back({"ListVectors negative page_size", list_vectors(-1, "", "", ""),
                   Code::kInvalidArgument, "page_size"});
  cases.push_back({"ListVectors garbage page_token", list_vectors(0, "garbage!!", "", ""),
                   Code::kInvalidArgument, "page_token"});
  cases.push_back({"ListVectors base64 page_token of nothing",
                   list_vectors(0, "cDF8YWJjfDF8eA", "", ""), Code::kInvalidArgument,
                   "page_token"});
  // A real token, replayed with different fields.
  ASSERT_TRUE(alpha.CreateVector(kModel, "table-ok", VectorFile(49)).ok());
  v1::ListVectorsRequest first_page;
  first_page.set_page_size(1);
  first_page.set_name("table-ok");
  first_page.set_all_versions(true);
  v1::ListVectorsResponse first_response;
  ASSERT_TRUE(raw.ListVectors(first_page, &first_response).ok());
  ASSERT_EQ(first_response.vectors_size(), 1);
  ASSERT_FALSE(first_response.next_page_token().empty());
  v1::ListVectorsRequest second_page = first_page;
  second_page.set_page_token(first_response.next_page_token());
  v1::ListVectorsResponse second_response;
  ASSERT_TRUE(raw.ListVectors(second_page, &second_response).ok());
  ASSERT_EQ(second_response.vectors_size(), 1);
  EXPECT_EQ(second_response.vectors(0).version(), first_response.vectors(0).version() - 1);
  cases.push_back({"ListVectors page_token replayed with other filters",
                   list_vectors(1, first_response.next_page_token(), "", "table-ok"),
                   Code::kInvalidArgument, "page_token"});
  cases.push_back({"ListVectors malformed name filter", list_vectors(0, "", "", "a b"),
                   Code::kInvalidArgument, "name filter"});
  cases.push_back({"ListVectors unknown model filter", list_vectors(0, "", "no-such-model", ""),
                   Code::kNotFound, "not loaded"});
  cases.push_back({"ListModels negative page_size",
                   [&raw] {
                     v1::ListModelsRequest request;
                     request.set_page_size(-5);
                     return raw.ListModels(request);
                   },
                   Code::kInvalidArgument, "page_size"});
  cases.push_back({"ListModels garbage page_token",
                   [&raw] {
                     v1::ListModelsRequest request;
                     request.set_page_token("%%%");
                     return raw.ListModels(request);
                   },
                   Code::kInvalidArgument, "page_token"});
  cases.push_back({"GetModel empty name", [&alpha] { return alpha.GetModel("").status(); },
                   Code::kInvalidArgument, "empty"});
  cases.push_back({"GetModel unknown", [&alpha] { return alpha.GetModel("no-such-model").status(); },
                   Code::kNotFound, "not loaded"});

  // Generation: every case both unary and streamed; a streamed error comes before any
  // chunk.
  auto generate = [&](std::string name, std::function<void(v1::GenerateRequest*)> edit,
                      Code code, std::string message) {
    v1::GenerateRequest request = Request(kPrompt, 8);
    edit(&request);
    cases.push_back({absl::StrCat("Generate: ", name),
                     [&alpha, request] { return alpha.Generate(request).status(); }, code,
                     message});
    cases.push_back({absl::StrCat("GenerateStream: ", name),
                     [&alpha, request]() -> absl::Status {
                       int chunks = 0;
                       absl::Status status = Stream(alpha, request, &chunks).status();
                       if (chunks != 0) {
                         return absl::InternalError(
                             absl::StrCat(chunks, " chunks before the error: ", status.ToString()));
                       }
                       return status;
                     },
                     code, message});
  };
  generate("empty model", [](auto* r) { r->set_model(""); }, Code::kInvalidArgument,
           "model is empty");
  generate("unknown model", [](auto* r) { r->set_model("no-such-model"); }, Code::kNotFound,
           "not loaded");
  generate("no input", [](auto* r) { r->clear_input(); }, Code::kInvalidArgument, "no input");
  generate("empty prompt", [](auto* r) { r->set_prompt(""); }, Code::kInvalidArgument,
           "prompt is empty");
  generate("empty messages", [](auto* r) { r->mutable_messages(); }, Code::kInvalidArgument,
           "messages is empty");
  generate("ROLE_UNSPECIFIED message",
           [](auto* r) {
             auto* m = r->mutable_messages()->add_messages();
             m->set_role(v1::ChatMessage::ROLE_UNSPECIFIED);
             m->set_content("hi");
           },
           Code::kInvalidArgument, "role is unspecified");
  generate("SYSTEM message not first",
           [](auto* r) {
             auto* user = r->mutable_messages()->add_messages();
             user->set_role(v1::ChatMessage::ROLE_USER);
             user->set_content("2+2?");
             auto* system = r->mutable_messages()->add_messages();
             system->set_role(v1::ChatMessage::ROLE_SYSTEM);
             system->set_content("be brief");
           },
           Code::kInvalidArgument, "messages[1] is a SYSTEM message");
  generate("prompt longer than the context", [&](auto* r) { r->set_prompt(long_prompt); },
           Code::kInvalidArgument, "leaves no room to generate");
  generate("max_new_tokens negative",
           [](auto* r) { r->mutable_sampling()->set_max_new_tokens(-1); },
           Code::kInvalidArgument, "max_new_tokens -1");
  generate("max_new_tokens over the context",
           [](auto* r) { r->mutable_sampling()->set_max_new_tokens(kContext + 1); },
           Code::kInvalidArgument, "max_new_tokens 257 exceeds");
  generate("temperature NaN", [](auto* r) { r->mutable_sampling()->set_temperature(std::nanf("")); },
           Code::kInvalidArgument, "temperature");
  generate("temperature negative", [](auto* r) { r->mutable_sampling()->set_temperature(-0.5f); },
           Code::kInvalidArgument, "temperature");
  generate("temperature over 2", [](auto* r) { r->mutable_sampling()->set_temperature(2.5f); },
           Code::kInvalidArgument, "temperature");
  generate("temperature infinite",
           [](auto* r) {
             r->mutable_sampling()->set_temperature(std::numeric_limits<float>::infinity());
           },
           Code::kInvalidArgument, "temperature");
  // Below the temperature floor: before the fix 1e-38 with top_k killed the server
  // (SIGSEGV) and with top_p returned OK with token 0 repeated.
  generate("temperature 1e-38 with top_k",
           [](auto* r) {
             r->mutable_sampling()->set_temperature(1e-38f);
             r->mutable_sampling()->set_top_k(5);
           },
           Code::kInvalidArgument, "must be 0 (greedy) or within [0.001, 2]");
  generate("temperature 1e-38 with top_p",
           [](auto* r) {
             r->mutable_sampling()->set_temperature(1e-38f);
             r->mutable_sampling()->set_top_p(0.9f);
           },
           Code::kInvalidArgument, "must be 0 (greedy) or within [0.001, 2]");
  // Proto3 refuses invalid UTF-8 in a string field; before the fix gRPC answered
  // UNIMPLEMENTED with an empty message.
  {
    // An invalid field is named in google.rpc.BadRequest.
    v1::GenerateRequest request = good;
    request.mutable_sampling()->set_top_k(-3);
    const absl::Status status = alpha.Generate(request).status();
    const std::optional<ErrorDetails> details = GetErrorDetails(status);
    ASSERT_TRUE(details.has_value()) << status;
    EXPECT_EQ(details->reason, "INVALID_FIELD");
    ASSERT_EQ(details->field_violations.size(), 1u);
    EXPECT_EQ(details->field_violations[0].field, "sampling.top_k");
    EXPECT_EQ(details->field_violations[0].description, "-3 must not be negative");
  }
  generate("prompt with invalid UTF-8", [](auto* r) { r->set_prompt("Q: \xff\xfe 1+1\nA:"); },
           Code::kInvalidArgument, "not a valid steerd.v1.GenerateRequest");
  cases.push_back({"GetJob with a 9000-byte id",
                   [&alpha] { return alpha.GetJob(std::string(9000, 'j')).status(); },
                   Code::kInvalidArgument, "id is 9000 bytes long"});
  cases.push_back({"CancelJob with a 9000-byte id",
                   [&alpha] { return alpha.CancelJob(std::string(9000, 'j')).status(); },
                   Code::kInvalidArgument, "id is 9000 bytes long"});
  generate("top_p over 1", [](auto* r) { r->mutable_sampling()->set_top_p(1.5f); },
           Code::kInvalidArgument, "top_p");
  generate("top_p negative", [](auto* r) { r->mutable_sampling()->set_top_p(-0.1f); },
           Code::kInvalidArgument, "top_p");
  generate("top_k negative", [](auto* r) { r->mutable_sampling()->set_top_k(-1); },
           Code::kInvalidArgument, "top_k");
  generate("scale NaN",
           [](auto* r) {
             r->mutable_steering()->set_vector("table-ok");
             r->mutable_steering()->set_scale(std::nanf(""));
           },
           Code::kInvalidArgument, "scale");
  generate("scale over 100",
           [](auto* r) {
             r->mutable_steering()->set_vector("table-ok");
             r->mutable_steering()->set_scale(100.5f);
           },
           Code::kInvalidArgument, "scale");
  generate("scale under -100",
           [](auto* r) {
             r->mutable_steering()->set_vector("table-ok");
             r->mutable_steering()->set_scale(-101.0f);
           },
           Code::kInvalidArgument, "scale");
  generate("17 stop strings",
           [](auto* r) {
             for (int i = 0; i < 17; ++i) r->mutable_sampling()->add_stop(absl::StrCat("s", i));
           },
           Code::kInvalidArgument, "sampling.stop has 17 strings");
  generate("empty stop string", [](auto* r) { r->mutable_sampling()->add_stop(""); },
           Code::kInvalidArgument, "sampling.stop[0]");
  generate("stop string over 256 bytes",
           [](auto* r) {
             r->mutable_sampling()->add_stop("ok");
             r->mutable_sampling()->add_stop(std::string(257, 'x'));
           },
           Code::kInvalidArgument, "sampling.stop[1] is 257 bytes");
  generate("steering with an empty vector", [](auto* r) { r->mutable_steering(); },
           Code::kInvalidArgument, "steering.vector is empty");
  generate("steering with a malformed reference",
           [](auto* r) { r->mutable_steering()->set_vector("table-ok@0"); },
           Code::kInvalidArgument, "malformed version");
  generate("steering with a malformed name",
           [](auto* r) { r->mutable_steering()->set_vector("table ok"); },
           Code::kInvalidArgument, "contains the character");
  generate("steering with an absent vector",
           [](auto* r) { r->mutable_steering()->set_vector("no-such-vector"); }, Code::kNotFound,
           "not found");
  generate("steering with an absent version",
           [](auto* r) { r->mutable_steering()->set_vector("table-ok@7"); }, Code::kNotFound,
           "not found");
  generate("steering version given twice",
           [](auto* r) {
             r->mutable_steering()->set_vector("table-ok@1");
             r->mutable_steering()->set_version(1);
           },
           Code::kInvalidArgument,
           "steering.vector \"table-ok@1\" carries a version and steering.version is 1");
  generate("steering version negative",
           [](auto* r) {
             r->mutable_steering()->set_vector("table-ok");
             r->mutable_steering()->set_version(-1);
           },
           Code::kInvalidArgument, "steering.version -1 is negative");
  generate("steering with an absent typed version",
           [](auto* r) {
             r->mutable_steering()->set_vector("table-ok");
             r->mutable_steering()->set_version(7);
           },
           Code::kNotFound, "not found");
  ASSERT_GE(cases.size(), 25u);

  // A well-formed stream runs through the whole table: it stops reading after its
  // first chunk until the table is done (the server keeps generating meanwhile).
  absl::Notification table_done;
  BackgroundStream concurrent(&alpha, long_request, &table_done);
  ASSERT_TRUE(concurrent.WaitForFirstChunk(absl::Seconds(60)));

  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    const absl::Status status = c.call();
    EXPECT_EQ(status.code(), c.code) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message)) << status;
    // Every refusal carries a reason (google.rpc.ErrorInfo) a program can branch on,
    // except the one gRPC itself gives for an oversized message.
    // (EXPECT, not ASSERT: the concurrent stream below must be released whatever fails.)
    if (c.code != Code::kResourceExhausted || c.message != "larger than max") {
      const std::optional<ErrorDetails> details = GetErrorDetails(status);
      EXPECT_TRUE(details.has_value() && !details->reason.empty()) << status;
    }
  }
  table_done.Notify();

  const absl::Status concurrent_status = concurrent.Join();
  ASSERT_TRUE(concurrent_status.ok()) << concurrent_status;
  const v1::GenerateResponse streamed = concurrent.response();
  EXPECT_EQ(streamed.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(Ids(streamed), Ids(*long_reference));
  EXPECT_EQ(streamed.text(), long_reference->text());
  EXPECT_EQ(streamed.vector().name(), "table-ok");
  EXPECT_EQ(streamed.vector().version(), 1);

  // Nothing was stored by the rejected uploads, and the server still serves exactly
  // what it served before.
  auto stored = alpha.ListVectors({"", "", /*all_versions=*/true});
  ASSERT_TRUE(stored.ok()) << stored.status();
  for (const auto& v : *stored) {
    EXPECT_NE(v.name(), "bad-upload");
    EXPECT_NE(v.name(), "v");
  }
  auto after = alpha.Generate(good);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(Ids(*after), Ids(*reference));
  auto after_steered = Stream(alpha, good_steered);
  ASSERT_TRUE(after_steered.ok()) << after_steered.status();
  EXPECT_EQ(Ids(*after_steered), Ids(*reference_steered));

  // The typed version says what "@1" says. table-ok has a version 2 by now, so a bare
  // name would resolve differently: the same tokens show version 1 was used.
  v1::GenerateRequest typed = Request(kPrompt, 24, "table-ok", /*ignore_eos=*/true);
  typed.mutable_steering()->set_version(1);
  v1::GenerateResponse typed_response;
  const absl::Status typed_status = raw.Generate(typed, &typed_response);
  ASSERT_TRUE(typed_status.ok()) << typed_status;
  EXPECT_EQ(Ids(typed_response), Ids(*reference_steered));
  EXPECT_EQ(typed_response.vector().name(), "table-ok");
  EXPECT_EQ(typed_response.vector().version(), 1);
  auto typed_stream = Stream(alpha, typed);
  ASSERT_TRUE(typed_stream.ok()) << typed_stream.status();
  EXPECT_EQ(Ids(*typed_stream), Ids(*reference_steered));
  v1::GetVectorRequest get_typed;
  get_typed.set_name("table-ok");
  get_typed.set_version(1);
  v1::Vector typed_vector;
  ASSERT_TRUE(raw.GetVector(get_typed, &typed_vector).ok());
  EXPECT_EQ(typed_vector.version(), 1);
  auto health = alpha.CheckHealth();
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(*health, client::ServingStatus::kServing);
}

// A call whose client deadline passes mid-generation ends DEADLINE_EXCEEDED for the
// client, and the server ends the sequence (recorded as cancelled, fewer tokens than
// asked for) and frees its row. Generation speed varies with the machine's load, so the
// deadline adapts: halved when the call finished in time, doubled when it expired
// before generation started; only a call cut mid-generation is judged.
TEST_F(ServerApiTest, ClientDeadlineEndsGenerationAndFreesItsRow) {
  const std::map<std::string, std::string> model = {{"model", kModel}};
  const v1::GenerateRequest request = LongRequest();
  const int max_new_tokens = request.sampling().max_new_tokens();
  for (const bool streamed : {true, false}) {
    const std::string rpc = streamed ? "GenerateStream" : "Generate";
    SCOPED_TRACE(rpc);
    auto rpcs = [&](const std::string& text, const std::string& code) {
      return MetricSum(text, "steerd_rpc_requests_total", {{"rpc", rpc}, {"code", code}})
          .value_or(0);
    };
    // Calls the server has finished: as it ran to the end, or cut short.
    auto ended = [&](const std::string& text) {
      return rpcs(text, "OK") + rpcs(text, "CANCELLED") + rpcs(text, "DEADLINE_EXCEEDED");
    };
    auto cut = [&](const std::string& text) {
      return rpcs(text, "CANCELLED") + rpcs(text, "DEADLINE_EXCEEDED");
    };
    absl::Duration deadline = absl::Milliseconds(150);
    bool conclusive = false;
    for (int attempt = 0; attempt < 10 && !conclusive; ++attempt) {
      SCOPED_TRACE(absl::StrCat("attempt ", attempt, ", deadline ",
                                absl::FormatDuration(deadline)));
      ASSERT_TRUE(Eventually(
          [&] { return Metric(*server_, "steerd_running_sequences", model) == 0.0; },
          absl::Seconds(20)));
      const std::string before = server_->ScrapeMetrics();
      // On alpha's channel, connected already: the deadline is spent on the call only.
      client::ClientOptions options = alpha_->options();
      options.timeout = deadline;
      auto hasty = client::SteerdClient::CreateWithChannel(alpha_->channel(), options);
      int chunks = 0;
      v1::GenerateResponse folded;
      const absl::Status status =
          streamed ? hasty->GenerateStream(request,
                                              [&](const v1::GenerateChunk& chunk) {
                                                client::AppendChunk(chunk, &folded);
                                                ++chunks;
                                                return true;
                                              })
                   : hasty->Generate(request).status();
      if (status.ok()) {  // Finished within the deadline.
        deadline = std::max(deadline / 2, absl::Milliseconds(2));
        continue;
      }
      ASSERT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
      EXPECT_EQ(folded.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
      // The server ends the call and frees the row.
      std::string after;
      const bool recorded = Eventually(
          [&] {
            after = server_->ScrapeMetrics();
            return MetricSum(after, "steerd_running_sequences", model).value_or(-1) == 0.0 &&
                   ended(after) > ended(before);
          },
          absl::Seconds(5));
      if (!recorded) {  // The call never reached a handler; nothing may keep running.
        EXPECT_TRUE(Eventually(
            [&] { return Metric(*server_, "steerd_running_sequences", model) == 0.0; },
            absl::Seconds(20)));
        deadline *= 2;
        continue;
      }
      const double generated =
          MetricSum(after, "steerd_generated_tokens_total", model).value_or(0) -
          MetricSum(before, "steerd_generated_tokens_total", model).value_or(0);
      // It ended just as time ran out (on a loaded machine the engine may finish every
      // token before the cancel reaches it, while the call is recorded as cut).
      if (rpcs(after, "OK") > rpcs(before, "OK") || generated >= max_new_tokens) {
        deadline = std::max(deadline / 2, absl::Milliseconds(2));
        continue;
      }
      if (generated == 0) {  // Expired before the first token.
        deadline *= 2;
        continue;
      }
      conclusive = true;
      EXPECT_GE(cut(after), cut(before) + 1);
      EXPECT_LT(generated, max_new_tokens);
      EXPECT_LE(folded.token_ids_size(), generated);
    }
    EXPECT_TRUE(conclusive) << "no call was cut by its deadline mid-generation";
  }
  // The server is unharmed.
  auto after = alpha_->Generate(Request(kPrompt, 4, "", /*ignore_eos=*/true));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->token_ids_size(), 4);
}

TEST_F(ServerApiTest, MetricsDescribeTheTraffic) {
  const std::map<std::string, std::string> model = {{"model", kModel}};
  const std::string before = server_->ScrapeMetrics();
  ASSERT_FALSE(before.empty());
  auto value = [](const std::string& text, const std::string& name,
                  const std::map<std::string, std::string>& labels) {
    return MetricSum(text, name, labels).value_or(0.0);
  };
  // Traffic: a new vector (one cache miss, then a hit), generations unary and
  // streamed, and one failing call.
  ASSERT_TRUE(alpha_->CreateVector(kModel, "metrics", VectorFile(60)).ok());
  auto first = alpha_->Generate(Request(kPrompt, 10, "metrics", /*ignore_eos=*/true));
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = Stream(*alpha_, Request(kPrompt, 10, "metrics", /*ignore_eos=*/true));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(alpha_->GetVector("no-such-vector").status().code(), absl::StatusCode::kNotFound);
  const std::string after = server_->ScrapeMetrics();

  for (const char* name :
       {"steerd_rpc_requests_total", "steerd_rpc_latency_seconds_count",
        "steerd_time_to_first_token_seconds_count", "steerd_inter_token_latency_seconds_count",
        "steerd_generated_tokens_total", "steerd_queue_depth", "steerd_batch_size_count",
        "steerd_running_sequences", "steerd_kv_cache_usage", "steerd_resident_vectors",
        "steerd_vector_cache_hits_total",
        "steerd_vector_cache_misses_total", "steerd_tenant_requests_total"}) {
    EXPECT_TRUE(MetricSum(after, name).has_value()) << name << " missing:\n" << after;
  }
  auto delta = [&](const std::string& name, const std::map<std::string, std::string>& labels) {
    return value(after, name, labels) - value(before, name, labels);
  };
  EXPECT_EQ(delta("steerd_rpc_requests_total", {{"rpc", "CreateVector"}, {"code", "OK"}}), 1);
  EXPECT_EQ(delta("steerd_rpc_requests_total", {{"rpc", "Generate"}, {"code", "OK"}}), 1);
  EXPECT_EQ(delta("steerd_rpc_requests_total", {{"rpc", "GenerateStream"}, {"code", "OK"}}), 1);
  EXPECT_EQ(delta("steerd_rpc_requests_total", {{"rpc", "GetVector"}, {"code", "NOT_FOUND"}}), 1);
  EXPECT_EQ(delta("steerd_vector_cache_misses_total", model), 1);
  EXPECT_EQ(delta("steerd_vector_cache_hits_total", model), 1);
  EXPECT_EQ(delta("steerd_generated_tokens_total", model), 20);
  EXPECT_EQ(delta("steerd_time_to_first_token_seconds_count", model), 2);
  EXPECT_EQ(delta("steerd_inter_token_latency_seconds_count", model), 18);
  EXPECT_GE(delta("steerd_batch_size_count", model), 9);
  EXPECT_EQ(delta("steerd_tenant_requests_total", {{"tenant", "alpha"}}), 4);
  EXPECT_EQ(delta("steerd_tenant_requests_total", {{"tenant", "beta"}}), 0);
  EXPECT_EQ(delta("steerd_tenant_generated_tokens_total", {{"tenant", "alpha"}}), 20);
  EXPECT_GE(value(after, "steerd_resident_vectors", model), 1);
  // Gauges settle once the engine has retired the finished rows.
  EXPECT_TRUE(Eventually(
      [&] {
        const std::string now = server_->ScrapeMetrics();
        return value(now, "steerd_running_sequences", model) == 0 &&
               value(now, "steerd_queue_depth", model) == 0 &&
               value(now, "steerd_kv_cache_usage", model) == 0;
      },
      absl::Seconds(20)));
}

// ---------------------------------------------------------------------------------------
// Persistence across restarts on one data directory.


// Queue and batch flags: --max-waiting 1 starts (before the fix the warm-up's two
// requests overflowed a queue of one most of the time, "server is overloaded"); values
// below 1 are flag errors naming the flag, not that misleading message. So are
// connection ages that are zero, negative or not durations.
TEST(ServerFlagsTest, QueueFlagsStartAtOneAndRefuseZeroByName) {
  const std::string dir = testing::MakeTempDir("steerd-flags");
  for (int i = 0; i < 3; ++i) {
    auto server =
        ServerProcess::Start({dir + "/data", {"--threads", "1", "--max-waiting", "1"}});
    ASSERT_TRUE(server.ok()) << server.status();
    auto health = (*server)->Client()->CheckHealth();
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(*health, client::ServingStatus::kServing);
  }
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"--max-waiting", "0"}, {"--max-batch", "0"},
        {"--vector-cache-size", "0"}, {"--job-retention-days", "-1"},
        {"--max-connection-age", "0"}, {"--max-connection-age", "5 minutes"},
        {"--max-connection-age-grace", "-1s"}}) {
    auto server = ServerProcess::Start({dir + "/data", bad});
    ASSERT_FALSE(server.ok()) << bad[0];
    EXPECT_THAT(std::string(server.status().message()), HasSubstr(bad[0])) << server.status();
    EXPECT_THAT(std::string(server.status().message()), Not(HasSubstr("overloaded")));
  }
}

// A damaged database refuses to start, naming the path and what SQLite found; before
// the fix the server started, reported SERVING, and every query failed with INTERNAL.
TEST(ServerStoreTest, ADamagedDatabaseRefusesToStart) {
  const std::string dir = testing::MakeTempDir("steerd-damaged");
  const std::string db = dir + "/data/steerd.db";
  {
    auto server = ServerProcess::Start({dir + "/data", {"--threads", "1"}});
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    for (int i = 0; i < 8; ++i) {
      ASSERT_TRUE(client->CreateVector(kModel, absl::StrCat("v", i), VectorFile(60 + i)).ok());
    }
    (*server)->Signal(SIGTERM);
    ASSERT_TRUE((*server)->Wait(absl::Seconds(60)).ok());
  }
  const auto size = std::filesystem::file_size(db);
  ASSERT_GT(size, 2 * 4096u);
  {
    std::fstream file(db, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(4096);
    const std::string junk(size - 4096, '\x5a');
    file.write(junk.data(), junk.size());
  }
  auto damaged = ServerProcess::Start({dir + "/data", {"--threads", "1"}});
  ASSERT_FALSE(damaged.ok());
  EXPECT_THAT(std::string(damaged.status().message()), HasSubstr(db)) << damaged.status();
  EXPECT_THAT(std::string(damaged.status().message()), HasSubstr("damaged"));

  // A file that is not a database at all, zero bytes of header included.
  ASSERT_TRUE(WriteFile(db, std::string(4096, '\0') + "junk"));
  std::filesystem::remove(db + "-wal");
  std::filesystem::remove(db + "-shm");
  auto junk = ServerProcess::Start({dir + "/data", {"--threads", "1"}});
  ASSERT_FALSE(junk.ok());
  EXPECT_THAT(std::string(junk.status().message()), HasSubstr(db)) << junk.status();
}

TEST(ServerPersistenceTest, VectorsSurviveCleanRestartAndSigkill) {
  const std::string dir = steerd::testing::MakeTempDir("steerd-persist");
  auto server = StartServer(dir);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  const std::string bf16_values(kLayers * kHidden * 2, '\x3e');  // BF16 0.1855...
  auto bf16 = SerializeSafetensors(
      {{"steering", DType::kBF16, {kLayers, kHidden}, bf16_values.data()}}, {});
  ASSERT_TRUE(bf16.ok());
  auto keep1 = client->CreateVector(kModel, "keep", VectorFile(70), "first");
  auto keep2 = client->CreateVector(kModel, "keep", VectorFile(71));
  auto half = client->CreateVector(kModel, "half", *bf16);
  ASSERT_TRUE(keep1.ok() && keep2.ok() && half.ok());
  EXPECT_EQ(half->dtype(), "BF16");
  ASSERT_TRUE(client->DeleteVector("keep@2").ok());
  auto before = client->Generate(Request(kPrompt, 24, "keep"));
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->vector().version(), 1);

  // Clean restart. (Closing the connection first spares the server's shutdown its grace
  // period for open connections.)
  client.reset();
  (*server)->Signal(SIGTERM);
  auto exit_code = (*server)->Wait(absl::Seconds(60));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << (*server)->output();
  server = StartServer(dir);
  ASSERT_TRUE(server.ok()) << server.status();
  client = (*server)->Client();
  for (const auto* created : {&*keep1, &*half}) {
    SCOPED_TRACE(created->name());
    auto got = client->GetVector(absl::StrCat(created->name(), "@", created->version()));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->sha256(), created->sha256());
    EXPECT_EQ(got->size_bytes(), created->size_bytes());
    EXPECT_EQ(got->description(), created->description());
    EXPECT_EQ(got->dtype(), created->dtype());
    EXPECT_THAT(got->layer_norms(), ::testing::ElementsAreArray(created->layer_norms()));
    auto exported = client->ExportVector(created->name());
    ASSERT_TRUE(exported.ok()) << exported.status();
    EXPECT_EQ(Sha256Hex(exported->safetensors()), created->sha256());
  }
  EXPECT_EQ(client->GetVector("keep@2").status().code(), absl::StatusCode::kNotFound);
  auto after = client->Generate(Request(kPrompt, 24, "keep"));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(Ids(*after), Ids(*before));
  EXPECT_EQ(after->vector().version(), 1);
  // Version 2 was deleted before the restart; it is not reused.
  auto keep3 = client->CreateVector(kModel, "keep", VectorFile(72));
  ASSERT_TRUE(keep3.ok()) << keep3.status();
  EXPECT_EQ(keep3->version(), 3);

  // SIGKILL the moment CreateVector returns: the vector is durable.
  auto crash = client->CreateVector(kModel, "crash", VectorFile(73));
  (*server)->Signal(SIGKILL);
  ASSERT_TRUE(crash.ok()) << crash.status();
  exit_code = (*server)->Wait(absl::Seconds(60));
  ASSERT_TRUE(exit_code.ok());
  EXPECT_EQ(*exit_code, 128 + SIGKILL);
  server = StartServer(dir);
  ASSERT_TRUE(server.ok()) << server.status();
  client = (*server)->Client();
  auto recovered = client->ExportVector("crash");
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_EQ(recovered->vector().version(), 1);
  EXPECT_EQ(recovered->vector().sha256(), crash->sha256());
  EXPECT_EQ(Sha256Hex(recovered->safetensors()), crash->sha256());
  auto keep = client->GetVector("keep");
  ASSERT_TRUE(keep.ok());
  EXPECT_EQ(keep->version(), 3);
  EXPECT_EQ(keep->sha256(), keep3->sha256());
  auto steered = client->Generate(Request(kPrompt, 8, "crash"));
  ASSERT_TRUE(steered.ok()) << steered.status();
  EXPECT_EQ(steered->vector().name(), "crash");
  auto keep4 = client->CreateVector(kModel, "keep", VectorFile(74));
  ASSERT_TRUE(keep4.ok());
  EXPECT_EQ(keep4->version(), 4);
}

// ---------------------------------------------------------------------------------------
// Draining on SIGTERM.

TEST(ServerDrainTest, SigtermDrainsInFlightStreamsAndExitsZero) {
  const std::string dir = steerd::testing::MakeTempDir("steerd-drain");
  // Long enough for the streams to finish on an idle machine; on a loaded one they may
  // be ended (CANCELLED) instead, which is also a clean end.
  auto server = StartServer(dir, {"--drain-seconds", "5"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  std::vector<std::unique_ptr<BackgroundStream>> streams;
  for (int i = 0; i < 6; ++i) {
    v1::GenerateRequest request = LongRequest();
    request.mutable_sampling()->set_max_new_tokens(200);
    streams.push_back(std::make_unique<BackgroundStream>(client.get(), request));
  }
  for (auto& s : streams) ASSERT_TRUE(s->WaitForFirstChunk(absl::Seconds(60)));

  (*server)->Signal(SIGTERM);
  // Health flips to NOT_SERVING while the streams drain.
  client::ServingStatus health = client::ServingStatus::kServing;
  EXPECT_TRUE(Eventually(
      [&] {
        auto h = client->CheckHealth();
        if (h.ok()) health = *h;
        return h.ok() && *h == client::ServingStatus::kNotServing;
      },
      absl::Seconds(20)))
      << "last health " << client::ServingStatusName(health);
  // New generations are refused: UNAVAILABLE from the draining server, or from the
  // channel once the port has closed.
  for (int i = 0; i < 2; ++i) {
    auto refused = i == 0 ? client->Generate(Request(kPrompt, 4)).status()
                          : Stream(*client, Request(kPrompt, 4)).status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  }
  // Every in-flight stream ends cleanly with its last chunk.
  for (auto& s : streams) {
    const absl::Status status = s->Join();
    ASSERT_TRUE(status.ok()) << status;
    const v1::GenerateResponse r = s->response();
    EXPECT_THAT(r.finish_reason(),
                ::testing::AnyOf(v1::FINISH_REASON_LENGTH, v1::FINISH_REASON_STOP,
                                 v1::FINISH_REASON_CANCELLED));
    EXPECT_EQ(r.usage().completion_tokens(), r.token_ids_size());
    if (r.finish_reason() == v1::FINISH_REASON_LENGTH) {
      EXPECT_EQ(r.token_ids_size(), 200);
    }
  }
  // Closing the connection spares the shutdown its grace period for open connections.
  streams.clear();
  client.reset();
  auto exit_code = (*server)->Wait(absl::Seconds(60));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << (*server)->output();
  EXPECT_THAT((*server)->output(), HasSubstr("drained; exiting"));
}

TEST(ServerDrainTest, ZeroDrainSecondsEndsLongGenerationAsCancelled) {
  const std::string dir = steerd::testing::MakeTempDir("steerd-drain0");
  auto server = StartServer(dir, {"--drain-seconds", "0"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  // 16 rows of 240 tokens each: far from done when SIGTERM follows their first chunks.
  std::vector<std::unique_ptr<BackgroundStream>> streams;
  for (int i = 0; i < 16; ++i) {
    streams.push_back(std::make_unique<BackgroundStream>(client.get(), LongRequest()));
  }
  for (auto& s : streams) ASSERT_TRUE(s->WaitForFirstChunk(absl::Seconds(60)));
  (*server)->Signal(SIGTERM);
  int cancelled = 0;
  for (auto& s : streams) {
    const absl::Status status = s->Join();
    ASSERT_TRUE(status.ok()) << status;
    const v1::GenerateResponse r = s->response();
    EXPECT_THAT(r.finish_reason(),
                ::testing::AnyOf(v1::FINISH_REASON_LENGTH, v1::FINISH_REASON_CANCELLED));
    EXPECT_EQ(r.usage().completion_tokens(), r.token_ids_size());
    if (r.finish_reason() == v1::FINISH_REASON_CANCELLED) {
      ++cancelled;
      EXPECT_LT(r.token_ids_size(), LongRequest().sampling().max_new_tokens());
    }
  }
  EXPECT_GT(cancelled, 0);
  streams.clear();
  client.reset();
  auto exit_code = (*server)->Wait(absl::Seconds(60));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << (*server)->output();
}

}  // namespace
}  // namespace steerd
