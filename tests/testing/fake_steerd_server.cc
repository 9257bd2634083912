#include "tests/testing/fake_steerd_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/enum_names.h"
#include "server/api/grpc_status.h"
#include "server/util/error_details.h"
#include "steerd/v1/generation.grpc.pb.h"
#include "steerd/v1/models.grpc.pb.h"
#include "steerd/v1/training.grpc.pb.h"
#include "steerd/v1/vectors.grpc.pb.h"

namespace steerd::testing {
namespace {

grpc::Status CheckAuth(grpc::ServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing API key");
  }
  if (std::string(it->second.data(), it->second.size()) !=
      absl::StrCat("Bearer ", kFakeApiKey)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown API key");
  }
  return grpc::Status::OK;
}

// Parses "page:<index>" tokens of the fake lists.
int PageStart(const std::string& token) {
  int start = 0;
  if (token.rfind("page:", 0) == 0) absl::SimpleAtoi(token.substr(5), &start);
  return start;
}

class FakeModels final : public v1::Models::Service {
 public:
  explicit FakeModels(ObservedCalls* observed) : observed_(observed) {}

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
    for (int i = start; i < std::min(start + size, kFakeNumModels); ++i) {
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
    if (start + size < kFakeNumModels)
      response->set_next_page_token(absl::StrCat("page:", start + size));
    return grpc::Status::OK;
  }

  grpc::Status GetModel(grpc::ServerContext* context, const v1::GetModelRequest* request,
                        v1::Model* response) override {
    if (grpc::Status auth = CheckAuth(context); !auth.ok()) return auth;
    int attempt;
    {
      absl::MutexLock lock(&observed_->mu);
      ++observed_->get_model_calls;
      attempt = ++observed_->attempts[absl::StrCat("GetModel ", request->name())];
    }
    if (request->name() == kUnavailableModel ||
        (request->name().rfind(kUnavailableOnceModel, 0) == 0 && attempt == 1)) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is starting");
    }
    if (request->name().rfind(kUnavailableOnceModel, 0) == 0) {
      response->set_name(request->name());
      return grpc::Status::OK;
    }
    if (request->name() != "m0") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("model '", request->name(), "' is not loaded"));
    }
    response->set_name("m0");
    return grpc::Status::OK;
  }

 private:
  ObservedCalls* observed_;
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
  vector.set_source(v1::Vector::SOURCE_UPLOAD);
  return vector;
}

class FakeVectors final : public v1::Vectors::Service {
 public:
  explicit FakeVectors(ObservedCalls* observed) : observed_(observed) {}

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
    if (request->name() == "over-limit") {  // As the real server refuses a tenant's limit.
      return ToGrpcStatus(LimitError(absl::StatusCode::kResourceExhausted,
                                     "stored_vectors limit of 2 reached", "stored_vectors",
                                     "2", 2));
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
    for (int i = start; i < std::min(start + size, kFakeNumVectors); ++i) {
      *response->add_vectors() = MakeVector(absl::StrCat("v", i), i + 1);
    }
    if (start + size < kFakeNumVectors)
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
    response->set_safetensors(kFakeExportBytes);
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
  ObservedCalls* observed_;
};

class FakeGeneration final : public v1::Generation::Service {
 public:
  explicit FakeGeneration(ObservedCalls* observed) : observed_(observed) {}

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
    response->set_finish_reason(v1::FINISH_REASON_STOP);
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
    int attempt;
    {
      absl::MutexLock lock(&observed_->mu);
      attempt = ++observed_->attempts[absl::StrCat("GenerateStream ", request->prompt())];
    }
    if (request->prompt() == kUnavailableFirstPrompt && attempt == 1) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is draining");
    }
    if (request->prompt() == kUnavailableMidStreamPrompt) {
      v1::GenerateChunk chunk;
      chunk.set_text("t0 ");
      chunk.add_token_ids(100);
      if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "gone");
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the replica went away mid-stream");
    }
    if (request->prompt() == kForeverPrompt) {
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
    const int n = request->prompt() == kFailMidStreamPrompt ? 2
                  : request->sampling().max_new_tokens() > 0
                      ? request->sampling().max_new_tokens()
                      : 3;
    for (int i = 0; i < n; ++i) {
      v1::GenerateChunk chunk;
      chunk.set_text(absl::StrCat("t", i, " "));
      chunk.add_token_ids(100 + i);
      if (request->return_logprobs()) chunk.add_logprobs(-0.5f * (i + 1));
      const bool last = i + 1 == n && request->prompt() != kFailMidStreamPrompt;
      if (last) {
        chunk.set_finish_reason(v1::FINISH_REASON_LENGTH);
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
    if (request->prompt() == kFailMidStreamPrompt) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "engine failed mid-stream");
    }
    return grpc::Status::OK;
  }

 private:
  void Record(const v1::GenerateRequest& request) {
    absl::MutexLock lock(&observed_->mu);
    observed_->last_generate = request;
  }

  ObservedCalls* observed_;
};

constexpr char kEndless[] = "job-endless";  // a prefix

v1::Job MakeJob(const std::string& id, v1::Job::State state) {
  v1::Job job;
  job.set_id(id);
  job.set_model("m0");
  job.set_output_vector("arith");
  job.set_task("arith");
  job.set_algorithm(v1::ALGORITHM_RLOO);
  job.mutable_hyperparameters()->set_steps(4);
  job.set_state(state);
  job.mutable_progress()->set_total_steps(4);
  job.mutable_create_time()->set_seconds(1700000000);
  return job;
}

// Builds a scripted event stream, keeping the job snapshot current.
class JobScript {
 public:
  explicit JobScript(const std::string& id) : job_(MakeJob(id, v1::Job::STATE_QUEUED)) {}

  JobScript& State(v1::Job::State state) {
    const v1::Job::State previous =
        events_.empty() ? v1::Job::STATE_UNSPECIFIED : job_.state();
    job_.set_state(state);
    if (state == v1::Job::STATE_SUCCEEDED) {
      job_.mutable_vector()->set_name("arith");
      job_.mutable_vector()->set_version(3);
    }
    if (state == v1::Job::STATE_FAILED) {
      *job_.mutable_error() = ToRpcStatus(absl::InternalError("out of memory"));
    }
    v1::JobEvent& event = Add();
    event.mutable_state_change()->set_previous_state(previous);
    event.mutable_state_change()->set_state(state);
    return *this;
  }

  // Metrics of `step`: reward and accuracy rise with it, an evaluation from step 2.
  JobScript& Step(int step) {
    job_.mutable_progress()->set_step(step);
    v1::JobMetrics* metrics = job_.mutable_metrics();
    metrics->set_step(step);
    metrics->set_reward_mean(-0.5f + 0.25f * step);
    metrics->set_accuracy(0.25f * step);
    metrics->set_loss(1.0f / step);
    metrics->set_eta_seconds(10.0f * (4 - step));
    if (step >= 2) metrics->set_eval_accuracy(0.2f * step);
    *Add().mutable_step_metrics() = *metrics;
    return *this;
  }

  const std::vector<v1::JobEvent>& events() const { return events_; }
  const v1::Job& job() const { return job_; }

 private:
  v1::JobEvent& Add() {
    events_.emplace_back();
    events_.back().mutable_time()->set_seconds(1700000000 + events_.size());
    *events_.back().mutable_job() = job_;
    return events_.back();
  }

  v1::Job job_;
  std::vector<v1::JobEvent> events_;
};

bool IsEndless(const std::string& id) {
  return id.rfind(kEndless, 0) == 0 || id == "job-run";
}

// The script of a known job id; nullopt for an unknown one.
std::optional<JobScript> ScriptOf(const std::string& id) {
  JobScript script(id);
  if (id == "job-ok" || id == "job-slow") {
    script.State(v1::Job::STATE_QUEUED).State(v1::Job::STATE_RUNNING);
    if (id == "job-ok") script.Step(1).Step(2).Step(3).Step(4);
    script.State(v1::Job::STATE_SUCCEEDED);
  } else if (id == "job-fail") {
    script.State(v1::Job::STATE_QUEUED)
        .State(v1::Job::STATE_RUNNING)
        .Step(1)
        .State(v1::Job::STATE_FAILED);
  } else if (id == "job-cancel") {
    script.State(v1::Job::STATE_QUEUED).State(v1::Job::STATE_CANCELLED);
  } else if (IsEndless(id) || id == "job-drain" || id == "job-unended") {
    script.State(v1::Job::STATE_RUNNING);
  } else {
    return std::nullopt;
  }
  return script;
}

grpc::Status JobNotFound(const std::string& id) {
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat("job '", id, "' not found"));
}

class FakeTraining final : public v1::Training::Service {
 public:
  explicit FakeTraining(ObservedCalls* observed) : observed_(observed) {}

  grpc::Status CreateJob(grpc::ServerContext* context,
                         const v1::CreateJobRequest* request,
                         v1::Job* response) override {
    if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
    {
      absl::MutexLock lock(&observed_->mu);
      observed_->job_creates.push_back(*request);
    }
    if (request->model() != "m0") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("model '", request->model(), "' is not loaded"));
    }
    *response =
        MakeJob(absl::StrCat("job-", request->output_vector()), v1::Job::STATE_QUEUED);
    response->set_output_vector(request->output_vector());
    response->set_task(request->task());
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::Job* response) override {
    if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
    std::optional<JobScript> script = ScriptOf(request->id());
    if (!script.has_value()) return JobNotFound(request->id());
    *response = script->job();
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override {
    if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
    {
      absl::MutexLock lock(&observed_->mu);
      observed_->job_list_requests.push_back(*request);
    }
    // Newest first, no QUEUED job among them.
    const v1::Job::State states[kFakeNumJobs] = {
        v1::Job::STATE_SUCCEEDED, v1::Job::STATE_RUNNING, v1::Job::STATE_FAILED,
        v1::Job::STATE_CANCELLED, v1::Job::STATE_SUCCEEDED};
    std::vector<v1::Job> jobs;
    for (int i = 0; i < kFakeNumJobs; ++i) {
      if (request->state() != v1::Job::STATE_UNSPECIFIED && request->state() != states[i])
        continue;
      v1::Job job = MakeJob(absl::StrCat("job-", i), states[i]);
      job.mutable_progress()->set_step(states[i] == v1::Job::STATE_RUNNING ? 2 : 4);
      if (states[i] == v1::Job::STATE_SUCCEEDED) {
        job.mutable_vector()->set_name("arith");
        job.mutable_vector()->set_version(kFakeNumJobs - i);
      }
      if (states[i] == v1::Job::STATE_FAILED) {
        *job.mutable_error() = ToRpcStatus(absl::InternalError("out of\nmemory"));
      }
      jobs.push_back(job);
    }
    const int size = request->page_size() > 0 ? request->page_size() : 2;
    const int start = PageStart(request->page_token());
    for (int i = start; i < std::min<int>(start + size, jobs.size()); ++i) {
      *response->add_jobs() = jobs[i];
    }
    if (start + size < static_cast<int>(jobs.size()))
      response->set_next_page_token(absl::StrCat("page:", start + size));
    return grpc::Status::OK;
  }

  grpc::Status CancelJob(grpc::ServerContext* context,
                         const v1::CancelJobRequest* request,
                         v1::Job* response) override {
    if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
    std::optional<JobScript> script = ScriptOf(request->id());
    if (!script.has_value()) return JobNotFound(request->id());
    *response = script->job();
    if (response->state() == v1::Job::STATE_SUCCEEDED ||
        response->state() == v1::Job::STATE_FAILED) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("job '", request->id(), "' already ",
                                       client::ShortEnumName(response->state())));
    }
    // A running job stops after its step: the snapshot still says RUNNING.
    if (request->id() != "job-run") response->set_state(v1::Job::STATE_CANCELLED);
    return grpc::Status::OK;
  }

  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    if (grpc::Status auth = Authorize(context); !auth.ok()) return auth;
    const std::string& id = request->id();
    std::optional<JobScript> script = ScriptOf(id);
    if (!script.has_value()) return JobNotFound(id);
    for (const v1::JobEvent& event : script->events()) {
      if (id == "job-slow") absl::SleepFor(absl::Milliseconds(150));
      if (!writer->Write(event)) return grpc::Status(grpc::StatusCode::CANCELLED, "gone");
    }
    if (IsEndless(id)) {
      // Until the client cancels or its deadline passes (or a minute, not to hang).
      for (int i = 0; i < 6000 && !context->IsCancelled(); ++i) {
        absl::SleepFor(absl::Milliseconds(10));
      }
      absl::MutexLock lock(&observed_->mu);
      observed_->endless_watches_ended.insert(id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    if (id == "job-drain") {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is draining");
    }
    return grpc::Status::OK;
  }

 private:
  grpc::Status Authorize(grpc::ServerContext* context) {
    const auto& metadata = context->client_metadata();
    auto it = metadata.find("authorization");
    absl::MutexLock lock(&observed_->mu);
    observed_->training_authorizations.push_back(
        it == metadata.end() ? "" : std::string(it->second.data(), it->second.size()));
    return CheckAuth(context);
  }

  ObservedCalls* observed_;
};

}  // namespace

FakeSteerdServer::FakeSteerdServer(std::shared_ptr<grpc::ServerCredentials> credentials) {
  services_.push_back(std::make_unique<FakeModels>(&observed_));
  services_.push_back(std::make_unique<FakeVectors>(&observed_));
  services_.push_back(std::make_unique<FakeGeneration>(&observed_));
  services_.push_back(std::make_unique<FakeTraining>(&observed_));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", credentials, &port_);
  for (const std::unique_ptr<grpc::Service>& service : services_) {
    builder.RegisterService(service.get());
  }
  server_ = builder.BuildAndStart();
  server_->GetHealthCheckService()->SetServingStatus("steerd.v1.Generation", false);
}

FakeSteerdServer::~FakeSteerdServer() {
  server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
}

}  // namespace steerd::testing
