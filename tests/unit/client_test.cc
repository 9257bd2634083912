// The C++ client library and steerctl against an in-process fake steerd: a real gRPC
// server on a free local port whose steerd.v1 services have canned behaviour (they
// check the authorization metadata, page their lists, stream chunks, fail with given
// codes) and gRPC's own grpc.health.v1 service. Covers the metadata sent, pagination,
// streamed chunks in order, cancellation and deadlines, error codes, connection
// resolution, and steerctl's output and exit codes as a subprocess.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "client/command_line.h"
#include "client/steerctl_commands.h"
#include "client/steerd_client.h"
#include "nlohmann/json.hpp"
#include "steerd/v1/generation.grpc.pb.h"
#include "steerd/v1/models.grpc.pb.h"
#include "steerd/v1/vectors.grpc.pb.h"
#include "tests/testing/subprocess.h"

namespace steerd::client {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::steerd::v1;
using ::steerd::testing::ProcessRun;
using ::steerd::testing::RunShellCommand;
using ::steerd::testing::ShellCommand;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kKey[] = "test-key";
constexpr int kNumModels = 5;
constexpr int kNumVectors = 5;
// Binary bytes with a NUL in the middle, as a safetensors file has.
const std::string kExportBytes("ST\0\x01\xff payload", 13);

// ------------------------------------------------------------------ the fake server

grpc::Status CheckAuth(grpc::ServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing API key");
  }
  if (std::string(it->second.data(), it->second.size()) !=
      absl::StrCat("Bearer ", kKey)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown API key");
  }
  return grpc::Status::OK;
}

// What the fake services saw, for assertions.
struct Observed {
  absl::Mutex mu;
  std::vector<std::string> model_page_tokens ABSL_GUARDED_BY(mu);
  std::vector<v1::ListVectorsRequest> vector_list_requests ABSL_GUARDED_BY(mu);
  v1::CreateVectorRequest last_create ABSL_GUARDED_BY(mu);
  v1::GenerateRequest last_generate ABSL_GUARDED_BY(mu);
  int streams_cancelled ABSL_GUARDED_BY(mu) = 0;

  void Reset() {
    absl::MutexLock lock(&mu);
    model_page_tokens.clear();
    vector_list_requests.clear();
    last_create.Clear();
    last_generate.Clear();
    streams_cancelled = 0;
  }
};

// Parses "page:<index>" tokens of the fake lists.
int PageStart(const std::string& token) {
  int start = 0;
  if (token.rfind("page:", 0) == 0) absl::SimpleAtoi(token.substr(5), &start);
  return start;
}

class FakeModels final : public v1::Models::Service {
 public:
  explicit FakeModels(Observed* observed) : observed_(observed) {}

  grpc::Status ListModels(grpc::ServerContext* context,
                          const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override {
    if (grpc::Status auth = CheckAuth(context); !auth.ok()) return auth;
    {
      absl::MutexLock lock(&observed_->mu);
      observed_->model_page_tokens.push_back(request->page_token());
    }
    const int size = request->page_size() > 0 ? request->page_size() : 2;
    const int start = PageStart(request->page_token());
    for (int i = start; i < std::min(start + size, kNumModels); ++i) {
      v1::Model* model = response->add_models();
      model->set_name(absl::StrCat("m", i));
      model->set_architecture("Qwen2ForCausalLM");
      model->set_num_layers(4);
      model->set_hidden_size(64);
      model->set_vocab_size(512);
      model->set_max_context(2048);
      model->set_dtype("float32");
      model->set_device("cpu");
      model->set_fingerprint("qwen2-4x64");
      model->set_chat_template("chatml");
    }
    if (start + size < kNumModels)
      response->set_next_page_token(absl::StrCat("page:", start + size));
    return grpc::Status::OK;
  }

  grpc::Status GetModel(grpc::ServerContext* context, const v1::GetModelRequest* request,
                        v1::Model* response) override {
    if (grpc::Status auth = CheckAuth(context); !auth.ok()) return auth;
    if (request->name() != "m0") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("model '", request->name(), "' is not loaded"));
    }
    response->set_name("m0");
    return grpc::Status::OK;
  }

 private:
  Observed* observed_;
};

v1::Vector MakeVector(const std::string& name, int64_t version) {
  v1::Vector vector;
  vector.set_name(name);
  vector.set_version(version);
  vector.set_model("m0");
  vector.set_model_fingerprint("qwen2-4x64");
  vector.set_num_layers(4);
  vector.set_hidden_size(64);
  vector.set_dtype("F32");
  vector.set_sha256("0123456789abcdef0123456789abcdef");
  vector.set_size_bytes(1136);
  vector.mutable_create_time()->set_seconds(1700000000);
  vector.set_source(v1::Vector::UPLOAD);
  return vector;
}

class FakeVectors final : public v1::Vectors::Service {
 public:
  explicit FakeVectors(Observed* observed) : observed_(observed) {}

  grpc::Status CreateVector(grpc::ServerContext* context,
                            const v1::CreateVectorRequest* request,
                            v1::Vector* response) override {
    if (grpc::Status auth = CheckAuth(context); !auth.ok()) return auth;
    {
      absl::MutexLock lock(&observed_->mu);
      observed_->last_create = *request;
    }
    if (request->safetensors().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty safetensors bytes");
    }
    *response = MakeVector(request->name(), 3);
    response->set_model(request->model());
    response->set_size_bytes(static_cast<int64_t>(request->safetensors().size()));
    response->set_description(request->description());
    return grpc::Status::OK;
  }

  grpc::Status GetVector(grpc::ServerContext* context,
                         const v1::GetVectorRequest* request,
                         v1::Vector* response) override {
    if (grpc::Status auth = CheckAuth(context); !auth.ok()) return auth;
    if (request->name() == "known") {
      *response = MakeVector("known", 2);
    } else if (request->name() == "known@1") {
      *response = MakeVector("known", 1);
    } else {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("vector '", request->name(), "' not found"));
    }
    return grpc::Status::OK;
  }

  grpc::Status ListVectors(grpc::ServerContext* context,
                           const v1::ListVectorsRequest* request,
                           v1::ListVectorsResponse* response) override {
    if (grpc::Status auth = CheckAuth(context); !auth.ok()) return auth;
    {
      absl::MutexLock lock(&observed_->mu);
      observed_->vector_list_requests.push_back(*request);
    }
    const int size = request->page_size() > 0 ? request->page_size() : 2;
    const int start = PageStart(request->page_token());
    for (int i = start; i < std::min(start + size, kNumVectors); ++i) {
      *response->add_vectors() = MakeVector(absl::StrCat("v", i), i + 1);
    }
    if (start + size < kNumVectors)
      response->set_next_page_token(absl::StrCat("page:", start + size));
    return grpc::Status::OK;
  }

  grpc::Status ExportVector(grpc::ServerContext* context,
                            const v1::ExportVectorRequest* request,
                            v1::ExportVectorResponse* response) override {
    if (grpc::Status auth = CheckAuth(context); !auth.ok()) return auth;
    if (request->name() != "known") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such vector");
    }
    *response->mutable_vector() = MakeVector("known", 2);
    response->set_safetensors(kExportBytes);
    return grpc::Status::OK;
  }

  grpc::Status DeleteVector(grpc::ServerContext* context,
                            const v1::DeleteVectorRequest* request,
                            v1::DeleteVectorResponse* response) override {
    if (grpc::Status auth = CheckAuth(context); !auth.ok()) return auth;
    if (request->name() != "known") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such vector");
    }
    for (int version : {1, 2}) {
      v1::VectorRef* ref = response->add_deleted();
      ref->set_name("known");
      ref->set_version(version);
    }
    return grpc::Status::OK;
  }

 private:
  Observed* observed_;
};

// Prompts with special behaviour in the fake Generation service.
constexpr char kForever[] = "forever";            // streams until cancelled
constexpr char kFailMidStream[] = "fail-midway";  // 2 chunks, then INTERNAL

class FakeGeneration final : public v1::Generation::Service {
 public:
  explicit FakeGeneration(Observed* observed) : observed_(observed) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::GenerateResponse* response) override {
    if (grpc::Status auth = CheckAuth(context); !auth.ok()) return auth;
    Record(*request);
    if (request->model() == "wrong-fingerprint") {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "vector fingerprint differs from the model's");
    }
    response->set_text("Hello, world");
    response->add_token_ids(11);
    response->add_token_ids(12);
    response->set_finish_reason(v1::STOP);
    response->mutable_usage()->set_prompt_tokens(4);
    response->mutable_usage()->set_completion_tokens(2);
    response->set_seed(request->sampling().has_seed() ? request->sampling().seed() : 42);
    return grpc::Status::OK;
  }

  grpc::Status GenerateStream(grpc::ServerContext* context,
                              const v1::GenerateRequest* request,
                              grpc::ServerWriter<v1::GenerateChunk>* writer) override {
    if (grpc::Status auth = CheckAuth(context); !auth.ok()) return auth;
    Record(*request);
    if (request->prompt() == kForever) {
      // Flow control blocks Write until the client reads; it fails once the call is
      // cancelled or past its deadline.
      for (int i = 0;; ++i) {
        v1::GenerateChunk chunk;
        chunk.set_text(absl::StrCat("t", i, " "));
        chunk.add_token_ids(i);
        if (!writer->Write(chunk)) break;
      }
      absl::MutexLock lock(&observed_->mu);
      ++observed_->streams_cancelled;
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    const int n = request->prompt() == kFailMidStream ? 2
                  : request->sampling().max_new_tokens() > 0
                      ? request->sampling().max_new_tokens()
                      : 3;
    for (int i = 0; i < n; ++i) {
      v1::GenerateChunk chunk;
      chunk.set_text(absl::StrCat("t", i, " "));
      chunk.add_token_ids(100 + i);
      if (request->return_logprobs()) chunk.add_logprobs(-0.5f * (i + 1));
      const bool last = i + 1 == n && request->prompt() != kFailMidStream;
      if (last) {
        chunk.set_finish_reason(v1::LENGTH);
        chunk.mutable_usage()->set_prompt_tokens(7);
        chunk.mutable_usage()->set_completion_tokens(n);
        chunk.set_seed(request->sampling().has_seed() ? request->sampling().seed() : 99);
        if (request->has_steering()) {
          const std::string& ref = request->steering().vector();
          chunk.mutable_vector()->set_name(ref.substr(0, ref.find('@')));
          chunk.mutable_vector()->set_version(5);
        }
      }
      if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "gone");
    }
    if (request->prompt() == kFailMidStream) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "engine failed mid-stream");
    }
    return grpc::Status::OK;
  }

 private:
  void Record(const v1::GenerateRequest& request) {
    absl::MutexLock lock(&observed_->mu);
    observed_->last_generate = request;
  }

  Observed* observed_;
};

class FakeServer {
 public:
  explicit FakeServer(std::shared_ptr<grpc::ServerCredentials> credentials =
                          grpc::InsecureServerCredentials())
      : models_(&observed_), vectors_(&observed_), generation_(&observed_) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", credentials, &port_);
    builder.RegisterService(&models_);
    builder.RegisterService(&vectors_);
    builder.RegisterService(&generation_);
    server_ = builder.BuildAndStart();
    server_->GetHealthCheckService()->SetServingStatus("steerd.v1.Generation", false);
  }
  ~FakeServer() { server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5))); }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  bool ok() const { return server_ != nullptr && port_ > 0; }
  Observed& observed() { return observed_; }

 private:
  Observed observed_;
  FakeModels models_;
  FakeVectors vectors_;
  FakeGeneration generation_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// ----------------------------------------------------------------------- the tests

class ClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new FakeServer(); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(server_->ok());
    server_->observed().Reset();
  }

  static std::unique_ptr<SteerdClient> Connect(
      const std::string& key = kKey, absl::Duration timeout = absl::Seconds(30)) {
    ClientOptions options;
    options.address = server_->address();
    options.api_key = key;
    options.timeout = timeout;
    absl::StatusOr<std::unique_ptr<SteerdClient>> client = SteerdClient::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  static Observed& observed() { return server_->observed(); }

  static FakeServer* server_;
};

FakeServer* ClientTest::server_ = nullptr;

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
  ASSERT_EQ(vectors->size(), kNumVectors);
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
      client->CreateVector("m0", "tone", kExportBytes, "warmer replies");
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->name(), "tone");
  EXPECT_EQ(created->size_bytes(), static_cast<int64_t>(kExportBytes.size()));
  {
    absl::MutexLock lock(&observed().mu);
    EXPECT_EQ(observed().last_create.safetensors(), kExportBytes);
    EXPECT_EQ(observed().last_create.description(), "warmer replies");
  }
  absl::StatusOr<v1::Vector> got = client->GetVector("known@1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->version(), 1);
  EXPECT_EQ(client->GetVector("unknown").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<v1::ExportVectorResponse> exported = client->ExportVector("known");
  ASSERT_TRUE(exported.ok());
  EXPECT_EQ(exported->safetensors(), kExportBytes);

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
  EXPECT_EQ(total.finish_reason(), v1::LENGTH);
  EXPECT_EQ(total.usage().completion_tokens(), 6);
  EXPECT_EQ(total.seed(), 1234);
  EXPECT_EQ(total.vector().name(), "tone");
  EXPECT_EQ(total.vector().version(), 5);
}

TEST_F(ClientTest, CallbackReturningFalseCancelsTheStream) {
  v1::GenerateRequest request;
  request.set_model("m0");
  request.set_prompt(kForever);
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
  request.set_prompt(kForever);
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
  request.set_prompt(kForever);
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
  request.set_prompt(kForever);
  absl::Status status =
      Connect(kKey, absl::Milliseconds(300))
          ->GenerateStream(request, [](const v1::GenerateChunk&) { return true; });
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
}

TEST_F(ClientTest, ErrorAfterSomeChunksEndsTheStreamWithIt) {
  v1::GenerateRequest request;
  request.set_model("m0");
  request.set_prompt(kFailMidStream);
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

// ---------------------------------------------------------------- the flag parser

TEST(CommandLineTest, PositionalValuesRepeatedAndBooleanFlags) {
  FlagSpec spec;
  spec.value_flags = {"model"};
  spec.repeated_flags = {"stop"};
  spec.bool_flags = {"json"};
  absl::StatusOr<CommandLine> line =
      CommandLine::Parse({"vectors", "--model=m", "get", "--stop", "a", "--json",
                          "--stop", "--b", "--", "--literal"},
                         spec);
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_THAT(line->positional(), ElementsAre("vectors", "get", "--literal"));
  EXPECT_EQ(line->Get("model"), "m");
  EXPECT_THAT(line->GetAll("stop"), ElementsAre("a", "--b"));
  EXPECT_TRUE(line->Bool("json"));
  EXPECT_FALSE(line->CheckAllowed({"model", "stop"}, "x").ok());
  EXPECT_TRUE(line->CheckAllowed({"model", "stop", "json"}, "x").ok());

  EXPECT_FALSE(CommandLine::Parse({"--nope"}, spec).ok());
  EXPECT_FALSE(CommandLine::Parse({"--model"}, spec).ok());
  EXPECT_FALSE(CommandLine::Parse({"--model", "a", "--model", "b"}, spec).ok());
  EXPECT_FALSE(CommandLine::Parse({"--json=1"}, spec).ok());
  EXPECT_FALSE(CommandLine::Parse({"-x"}, spec).ok());
}

// ---------------------------------------------------------------------- steerctl

class SteerctlTest : public ClientTest {
 protected:
  // build/bin/steerctl with the connection flags and `args`, isolated from the
  // caller's STEERD_* environment.
  static ProcessRun Steerctl(const std::vector<std::string>& args,
                             const std::string& key = kKey) {
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
  ProcessRun help = Steerctl({"help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_EQ(help.out, kSteerctlUsage);
}

TEST_F(SteerctlTest, ModelsAsTableAndJson) {
  ProcessRun run = Steerctl({"models"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  std::vector<std::string> lines;
  std::istringstream in(run.out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 1 + kNumModels);
  EXPECT_THAT(lines[0], StartsWith("NAME  ARCHITECTURE      LAYERS"));
  EXPECT_THAT(lines[1], StartsWith("m0    Qwen2ForCausalLM  4 "));

  run = Steerctl({"models", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json json = nlohmann::json::parse(run.out);
  ASSERT_EQ(json["models"].size(), kNumModels);
  EXPECT_EQ(json["models"][4]["name"], "m4");
  EXPECT_EQ(json["models"][0]["num_layers"], 4);
}

TEST_F(SteerctlTest, ConnectionFromEnvironmentAndDataDir) {
  const std::string binary = std::string(STEERD_BINARY_DIR) + "/bin/steerctl";
  ProcessRun run = RunShellCommand(
      absl::StrCat("env -u STEERD_DATA_DIR STEERD_ADDR=", server_->address(),
                   " STEERD_API_KEY=", kKey, " ", binary, " models"));
  EXPECT_EQ(run.exit_code, 0) << run.err;

  const fs::path dir = TempPath("data_dir");
  fs::create_directories(dir);
  std::ofstream(dir / "api_key") << kKey << "\n";
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
  std::ofstream(upload, std::ios::binary) << kExportBytes;
  ProcessRun run = Steerctl({"vectors", "create", "--model", "m0", "--name", "tone",
                             "--file", upload, "--description", "warm", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json created = nlohmann::json::parse(run.out);
  EXPECT_EQ(created["name"], "tone");
  EXPECT_EQ(created["description"], "warm");
  {
    absl::MutexLock lock(&observed().mu);
    EXPECT_EQ(observed().last_create.safetensors(), kExportBytes);
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
  EXPECT_EQ(bytes.str(), kExportBytes);

  run = Steerctl({"vectors", "delete", "known"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "deleted known@1\ndeleted known@2\n");

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
  const v1::GenerateRequest& request = observed().last_generate;
  ASSERT_EQ(request.messages().messages_size(), 2);
  EXPECT_EQ(request.messages().messages(0).role(), v1::ChatMessage::SYSTEM);
  EXPECT_EQ(request.messages().messages(1).role(), v1::ChatMessage::USER);
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
  EXPECT_EQ(json["finish_reason"], "LENGTH");
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
  ProcessRun run = Steerctl({"generate", "--model", "m0", "--prompt", kFailMidStream});
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
  FakeServer tls_server(grpc::SslServerCredentials(ssl));
  ASSERT_TRUE(tls_server.ok());

  ClientOptions options;
  options.address = tls_server.address();
  options.api_key = kKey;
  options.tls_ca_file = cert;
  absl::StatusOr<std::unique_ptr<SteerdClient>> client = SteerdClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<std::vector<v1::Model>> models = (*client)->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->size(), kNumModels);

  options.tls_ca_file = "";  // plaintext to a TLS port
  client = SteerdClient::Create(options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->ListModels().status().code(), absl::StatusCode::kUnavailable);

  ProcessRun run =
      RunShellCommand("env -u STEERD_ADDR -u STEERD_API_KEY -u STEERD_DATA_DIR " +
                      ShellCommand(std::string(STEERD_BINARY_DIR) + "/bin/steerctl",
                                   {"--addr", tls_server.address(), "--api-key", kKey,
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
  const int code = RunSteerctl({"--addr", server_->address(), "--api-key", kKey,
                                "generate", "--model", "m0", "--prompt", "hi"},
                               out, err);
  ASSERT_EQ(code, 0) << err.str();
  EXPECT_THAT(buffer.flushes, ElementsAre("t0 ", "t0 t1 ", "t0 t1 t2 ", "t0 t1 t2 \n"));
}

}  // namespace
}  // namespace steerd::client
