#include "server/api/services.h"

#include <chrono>
#include <cstdio>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/api/grpc_status.h"
#include "server/api/proto_convert.h"
#include "server/api/stream_pump.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kDefaultModelPage = 100;
constexpr int64_t kDefaultVectorPage = 50;
constexpr int64_t kMaxPage = 1000;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A unary RPC of the Models and Vectors services: admission, the core, the handler.
template <typename Handler>
grpc::ServerUnaryReactor* RunUnary(ApiContext* api, grpc::CallbackServerContext* context,
                                   const char* rpc, Handler&& handler) {
  return api->RunUnary(context, rpc, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(const Tenant* tenant, api->Admit(context));
    ASSIGN_OR_RETURN(ServingCore * core, api->Core(/*for_generation=*/false));
    return handler(*tenant, *core);
  });
}

// The observer side of one Generate / GenerateStream call, shared by the RPC's reactor
// and the engine (which may call it after the reactor is gone).
class GenerationCall : public GenerationObserver {
 public:
  GenerationCall(ApiContext* api, const char* rpc) : api_(api), rpc_(rpc) {}

  // Admission; on error the caller finishes the RPC itself.
  absl::Status Start(grpc::CallbackServerContext* context, const v1::GenerateRequest& request,
                     const std::shared_ptr<GenerationCall>& self) {
    ASSIGN_OR_RETURN(const Tenant* tenant, api_->Admit(context));
    ASSIGN_OR_RETURN(ServingCore * core, api_->Core(/*for_generation=*/true));
    ASSIGN_OR_RETURN(GenerateParams params, FromProto(request));
    ASSIGN_OR_RETURN(GenerationSlot slot, api_->limiter()->TryStartGeneration(*tenant));
    tenant_ = tenant->name;
    slot_ = std::move(slot);
    auto handle = core->StartGeneration(tenant->name, tenant->limits.max_new_tokens, params,
                                        self);
    if (!handle.ok()) {
      slot_.Release();
      return handle.status();
    }
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      handle_ = *handle;
      cancelled = cancelled_;
    }
    if (cancelled) (*handle)->Cancel();
    return absl::OkStatus();
  }

  // The client went away or its deadline passed.
  void Cancel() {
    std::shared_ptr<GenerationHandle> handle;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      handle = handle_;
    }
    if (handle) handle->Cancel();
  }

  void OnAdmitted(const AdmittedGeneration& admitted) override {
    absl::MutexLock lock(&mu_);
    admitted_ = admitted;
  }

  void RecordEnd(const grpc::Status& status, int64_t completion_tokens) {
    slot_.Release();
    if (!tenant_.empty()) api_->metrics()->RecordTenantTokens(tenant_, completion_tokens);
    api_->metrics()->RecordRpc("grpc", rpc_, GrpcCodeName(status.error_code()),
                               SecondsSince(start_));
  }

  // The final fields of a response or last chunk.
  template <typename Message>
  void FillFinal(const GenerationSummary& summary, Message* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    out->set_finish_reason(ToProto(summary.finish_reason));
    out->mutable_usage()->set_prompt_tokens(summary.prompt_tokens);
    out->mutable_usage()->set_completion_tokens(summary.completion_tokens);
    if (!admitted_.vector_name.empty()) {
      out->mutable_vector()->set_name(admitted_.vector_name);
      out->mutable_vector()->set_version(admitted_.vector_version);
    }
    out->set_seed(admitted_.seed);
  }

  ApiContext* api() { return api_; }
  const char* rpc() const { return rpc_; }

 protected:
  // Guards the call's state below and UnaryGeneration's response (a stream's chunks are
  // StreamPump's).
  absl::Mutex mu_;

 private:
  ApiContext* const api_;
  const char* const rpc_;
  const Clock::time_point start_ = Clock::now();
  std::string tenant_;
  GenerationSlot slot_;
  std::shared_ptr<GenerationHandle> handle_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  AdmittedGeneration admitted_ ABSL_GUARDED_BY(mu_);
};

// Generate: accumulates the whole response; the pump thread finishes the RPC.
class UnaryGeneration final : public GenerationCall {
 public:
  UnaryGeneration(ApiContext* api, grpc::ServerUnaryReactor* reactor,
                  v1::GenerateResponse* response)
      : GenerationCall(api, "Generate"), reactor_(reactor), response_(response) {}

  void OnTokens(TokenDelta delta) override {
    absl::MutexLock lock(&mu_);
    response_->mutable_text()->append(delta.text);
    for (int32_t id : delta.token_ids) response_->add_token_ids(id);
    for (float lp : delta.logprobs) response_->add_logprobs(lp);
  }

  void OnFinished(const GenerationSummary& summary) override {
    grpc::Status status = ToGrpcStatus(summary.status);
    {
      absl::MutexLock lock(&mu_);
      if (status.ok()) FillFinal(summary, response_);
    }
    RecordEnd(status, summary.completion_tokens);
    // Off the engine thread: Finish serialises and sends the whole response.
    api()->pump()->Post([reactor = reactor_, status] { reactor->Finish(status); });
  }

 private:
  grpc::ServerUnaryReactor* const reactor_;
  // Written on the engine thread; gRPC reads it only after the finish is posted.
  v1::GenerateResponse* const response_ ABSL_PT_GUARDED_BY(mu_);
};

class UnaryGenerationReactor final : public grpc::ServerUnaryReactor {
 public:
  UnaryGenerationReactor(ApiContext* api, grpc::CallbackServerContext* context,
                         const v1::GenerateRequest* request, v1::GenerateResponse* response)
      : call_(std::make_shared<UnaryGeneration>(api, this, response)) {
    absl::Status status = call_->Start(context, *request, call_);
    if (!status.ok()) {
      const grpc::Status result = ToGrpcStatus(status);
      call_->RecordEnd(result, 0);
      Finish(result);
    }
  }
  void OnCancel() override { call_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<UnaryGeneration> call_;
};

// GenerateStream: one write in flight at a time (stream_pump.h); tokens produced
// meanwhile are merged into the next chunk. The stream state is guarded by the pump's
// stream_mu_, the call's (handle, admission) by GenerationCall::mu_; neither is taken
// while the other is held.
class StreamGeneration final : public GenerationCall,
                               public StreamPump<v1::GenerateChunk>,
                               public std::enable_shared_from_this<StreamGeneration> {
 public:
  StreamGeneration(ApiContext* api, grpc::ServerWriteReactor<v1::GenerateChunk>* reactor)
      : GenerationCall(api, "GenerateStream"), StreamPump(api->pump(), reactor) {}

  // On the engine thread: only merge into the pending chunk; the write (or finish) is
  // started from the pump thread, or by OnWriteDone when a write is in flight.
  void OnTokens(TokenDelta delta) override {
    bool post;
    {
      absl::MutexLock lock(&stream_mu_);
      pending_.mutable_text()->append(delta.text);
      for (int32_t id : delta.token_ids) pending_.add_token_ids(id);
      for (float lp : delta.logprobs) pending_.add_logprobs(lp);
      has_pending_ = true;
      post = NeedsPumpLocked();
    }
    if (post) PostPump(shared_from_this());
  }

  void OnFinished(const GenerationSummary& summary) override {
    const grpc::Status status = ToGrpcStatus(summary.status);
    v1::GenerateChunk last;  // The final fields, merged into the pending chunk.
    if (status.ok()) {
      absl::MutexLock lock(&mu_);
      FillFinal(summary, &last);
    }
    bool post;
    {
      absl::MutexLock lock(&stream_mu_);
      finished_ = true;
      status_ = status;
      completion_tokens_ = summary.completion_tokens;
      if (status_.ok()) {
        pending_.MergeFrom(last);
        has_pending_ = true;
      }
      post = NeedsPumpLocked();
    }
    if (post) PostPump(shared_from_this());
  }

 private:
  // An error ends the stream at once (the tokens still pending are dropped), and so
  // does a client that is gone; otherwise every chunk is written before the finish.
  Next NextLocked(bool broken, v1::GenerateChunk* message, grpc::Status* status) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(stream_mu_) {
    if (finished_ && (!status_.ok() || broken)) {
      *status = broken && status_.ok()
                    ? grpc::Status(grpc::StatusCode::CANCELLED, "the client went away")
                    : status_;
      return Next::kFinish;
    }
    if (has_pending_ && !broken) {
      message->Swap(&pending_);
      pending_.Clear();
      has_pending_ = false;
      return Next::kWrite;
    }
    if (finished_) {
      *status = status_;
      return Next::kFinish;
    }
    return Next::kNothing;
  }

  // completion_tokens_ is 0 for an early finish; otherwise OnFinished set it before the
  // finish could be decided.
  void RecordFinish(const grpc::Status& status) override {
    RecordEnd(status, completion_tokens_);
  }

  v1::GenerateChunk pending_ ABSL_GUARDED_BY(stream_mu_);
  bool has_pending_ ABSL_GUARDED_BY(stream_mu_) = false;
  bool finished_ ABSL_GUARDED_BY(stream_mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(stream_mu_);
  int64_t completion_tokens_ = 0;
};

class StreamGenerationReactor final : public grpc::ServerWriteReactor<v1::GenerateChunk> {
 public:
  StreamGenerationReactor(ApiContext* api, grpc::CallbackServerContext* context,
                          const v1::GenerateRequest* request)
      : call_(std::make_shared<StreamGeneration>(api, this)) {
    absl::Status status = call_->Start(context, *request, call_);
    if (!status.ok()) call_->FinishEarly(ToGrpcStatus(status));
  }
  void OnWriteDone(bool ok) override { call_->OnWriteDone(ok); }
  void OnCancel() override { call_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<StreamGeneration> call_;
};

}  // namespace

absl::StatusOr<ServingCore*> ApiContext::Core(bool for_generation) const {
  ServingCore* core = core_.load();
  if (core == nullptr) {
    return StartingError();
  }
  if (for_generation && draining_.load()) {
    return DrainingError();
  }
  return core;
}

void ApiContext::RecordRpc(const char* rpc, const absl::Status& status,
                           std::chrono::steady_clock::time_point start) {
  const grpc::StatusCode code = static_cast<grpc::StatusCode>(status.code());
  metrics_->RecordRpc("grpc", rpc, GrpcCodeName(code), SecondsSince(start));
  // A server-side failure is the operator's to see, once, with what failed; client
  // errors (bad input, limits) are the client's and stay out of the log.
  if (code == grpc::StatusCode::INTERNAL || code == grpc::StatusCode::DATA_LOSS ||
      code == grpc::StatusCode::UNKNOWN) {
    std::fprintf(stderr, "steerd: %s failed: %s: %s\n", rpc,
                 absl::StatusCodeToString(status.code()).c_str(),
                 std::string(status.message()).c_str());
  }
}

absl::StatusOr<TrainingManager*> ApiContext::Training() const {
  TrainingManager* training = training_.load();
  if (training == nullptr) {
    return StartingError();
  }
  if (draining_.load()) {
    return DrainingError();
  }
  return training;
}

absl::StatusOr<const Tenant*> ApiContext::Admit(const grpc::CallbackServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  return Admit(it == metadata.end() ? absl::string_view()
                                    : absl::string_view(it->second.data(), it->second.size()));
}

absl::StatusOr<const Tenant*> ApiContext::Admit(absl::string_view authorization) {
  ASSIGN_OR_RETURN(const Tenant* tenant, authenticator_->Authenticate(authorization));
  metrics_->RecordTenantRequest(tenant->name);
  RETURN_IF_ERROR(limiter_->CheckRequestRate(*tenant));
  return tenant;
}

grpc::ServerUnaryReactor* ModelsService::ListModels(grpc::CallbackServerContext* context,
                                                    const v1::ListModelsRequest* request,
                                                    v1::ListModelsResponse* response) {
  return RunUnary(api_, context, "ListModels",
                  [&](const Tenant&, ServingCore& core) -> absl::Status {
    ASSIGN_OR_RETURN(int64_t size,
                     EffectivePageSize(request->page_size(), kDefaultModelPage, kMaxPage));
    std::string after;
    if (!request->page_token().empty()) {
      ASSIGN_OR_RETURN(PagePosition position, DecodePageToken(request->page_token(), "models"));
      after = position.after_name;
    }
    std::vector<ModelInfo> models = core.ListModels();  // Ordered by name.
    for (const ModelInfo& info : models) {
      if (!after.empty() && info.name <= after) continue;
      if (response->models_size() == size) {
        response->set_next_page_token(
            EncodePageToken("models", response->models().rbegin()->name(), 0));
        break;
      }
      ToProto(info, response->add_models());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ModelsService::GetModel(grpc::CallbackServerContext* context,
                                                  const v1::GetModelRequest* request,
                                                  v1::Model* response) {
  return RunUnary(api_, context, "GetModel",
                  [&](const Tenant&, ServingCore& core) -> absl::Status {
    ASSIGN_OR_RETURN(ModelInfo info, core.GetModel(request->name()));
    ToProto(info, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* VectorsService::CreateVector(grpc::CallbackServerContext* context,
                                                       const v1::CreateVectorRequest* request,
                                                       v1::Vector* response) {
  return RunUnary(api_, context, "CreateVector",
                  [&](const Tenant& tenant, ServingCore& core) -> absl::Status {
    ASSIGN_OR_RETURN(StoredVector vector,
                     core.CreateVector(tenant.name, tenant.limits.stored_vectors,
                                       request->model(), request->name(),
                                       request->safetensors(), request->description()));
    ToProto(vector, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* VectorsService::GetVector(grpc::CallbackServerContext* context,
                                                    const v1::GetVectorRequest* request,
                                                    v1::Vector* response) {
  return RunUnary(api_, context, "GetVector",
                  [&](const Tenant& tenant, ServingCore& core) -> absl::Status {
    ASSIGN_OR_RETURN(std::string ref, ReferenceFromProto(*request));
    ASSIGN_OR_RETURN(StoredVector vector, core.GetVector(tenant.name, ref));
    ToProto(vector, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* VectorsService::ListVectors(grpc::CallbackServerContext* context,
                                                      const v1::ListVectorsRequest* request,
                                                      v1::ListVectorsResponse* response) {
  return RunUnary(api_, context, "ListVectors",
                  [&](const Tenant& tenant, ServingCore& core) -> absl::Status {
    VectorListQuery query;
    query.tenant = tenant.name;
    query.model = request->model();
    query.name = request->name();
    query.all_versions = request->all_versions();
    ASSIGN_OR_RETURN(query.limit,
                     EffectivePageSize(request->page_size(), kDefaultVectorPage, kMaxPage));
    const std::string filters = absl::StrCat("vectors|", query.model, "|", query.name, "|",
                                             query.all_versions ? 1 : 0);
    if (!request->page_token().empty()) {
      ASSIGN_OR_RETURN(PagePosition position, DecodePageToken(request->page_token(), filters));
      query.after_name = position.after_name;
      query.after_version = position.after_version;
    }
    ASSIGN_OR_RETURN(VectorPage page, core.ListVectors(query));
    for (const StoredVector& vector : page.vectors) ToProto(vector, response->add_vectors());
    if (page.more && !page.vectors.empty()) {
      response->set_next_page_token(EncodePageToken(filters, page.vectors.back().name,
                                                    page.vectors.back().version));
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* VectorsService::ExportVector(grpc::CallbackServerContext* context,
                                                       const v1::ExportVectorRequest* request,
                                                       v1::ExportVectorResponse* response) {
  return RunUnary(api_, context, "ExportVector",
                  [&](const Tenant& tenant, ServingCore& core) -> absl::Status {
    ASSIGN_OR_RETURN(std::string ref, ReferenceFromProto(*request));
    ASSIGN_OR_RETURN(auto exported, core.ExportVector(tenant.name, ref));
    ToProto(exported.first, response->mutable_vector());
    response->set_safetensors(std::move(exported.second));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* VectorsService::DeleteVector(grpc::CallbackServerContext* context,
                                                       const v1::DeleteVectorRequest* request,
                                                       v1::DeleteVectorResponse* response) {
  return RunUnary(api_, context, "DeleteVector",
                  [&](const Tenant& tenant, ServingCore& core) -> absl::Status {
    ASSIGN_OR_RETURN(std::string ref, ReferenceFromProto(*request));
    ASSIGN_OR_RETURN(std::vector<StoredVector> deleted, core.DeleteVector(tenant.name, ref));
    for (const StoredVector& vector : deleted) {
      v1::VectorRef* ref = response->add_deleted();
      ref->set_name(vector.name);
      ref->set_version(vector.version);
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                      const v1::GenerateRequest* request,
                                                      v1::GenerateResponse* response) {
  return new UnaryGenerationReactor(api_, context, request, response);
}

grpc::ServerWriteReactor<v1::GenerateChunk>* GenerationService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new StreamGenerationReactor(api_, context, request);
}

}  // namespace steerd
