#include "server/http/openai_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "server/api/grpc_status.h"
#include "server/http/openai_protocol.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kJson[] = "application/json";
constexpr char kChatRoute[] = "/v1/chat/completions";
constexpr char kCompletionsRoute[] = "/v1/completions";
constexpr char kModelsRoute[] = "/v1/models";
// How often a waiting request thread looks at the server's shutdown.
constexpr absl::Duration kPollInterval = absl::Milliseconds(100);
// The most vectors GET /v1/models lists (latest versions of the caller's own).
constexpr int64_t kMaxListedVectors = 1000;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string CodeName(const absl::Status& status) {
  return GrpcCodeName(static_cast<grpc::StatusCode>(status.code()));
}

void WriteError(const absl::Status& status, httplib::Response& res) {
  const HttpError error = ToHttpError(status);
  res.status = error.status;
  if (error.retry_after_seconds.has_value()) {
    res.set_header("Retry-After", absl::StrCat(*error.retry_after_seconds));
  }
  if (error.status == 401) res.set_header("WWW-Authenticate", "Bearer");
  res.set_content(error.body, kJson);
}

std::string RandomId(absl::string_view prefix) {
  thread_local absl::BitGen bits;
  return absl::StrFormat("%s%016x%08x", prefix, absl::Uniform<uint64_t>(bits),
                         absl::Uniform<uint32_t>(bits));
}

class HttpGeneration;

// Wakes the connection threads that wait for tokens, from a thread of its own: the
// engine thread only queues the generations it appended to. Waking 32 streams' threads
// from the engine thread cost it a futex call each per decode step, and Linux tends to
// run a woken thread on its waker's core, the engine's (gRPC's engine likewise posts
// one wake-up per step to its pump thread).
// Thread-safety: Notify from any thread; Stop once, from the owner.
class Waker {
 public:
  Waker() : thread_([this] { Run(); }) {}
  ~Waker() { Stop(); }
  Waker(const Waker&) = delete;
  Waker& operator=(const Waker&) = delete;

  // Queues `generation` to be woken. After Stop, does nothing.
  void Notify(std::shared_ptr<HttpGeneration> generation) {
    absl::MutexLock lock(&mu_);
    if (!stopped_) queued_.push_back(std::move(generation));
  }
  // Ends the thread; generations still queued are dropped (their readers poll anyway).
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) return;
      stopped_ = true;
    }
    thread_.join();
  }

 private:
  void Run();

  absl::Mutex mu_;
  std::vector<std::shared_ptr<HttpGeneration>> queued_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// One generation as the HTTP side sees it: the engine thread only appends to it and
// queues it on the Waker; the connection's thread takes what came and writes it.
class HttpGeneration final : public GenerationObserver,
                             public std::enable_shared_from_this<HttpGeneration> {
 public:
  struct Output {
    std::string text;
    std::vector<int32_t> token_ids;
    std::vector<float> logprobs;
    bool finished = false;
    GenerationSummary summary;  // When finished.
  };

  // `waker` must outlive the generation's engine calls (it is shared).
  explicit HttpGeneration(std::shared_ptr<Waker> waker) : waker_(std::move(waker)) {}

  void OnAdmitted(const AdmittedGeneration& admitted) override {
    absl::MutexLock lock(&mu_);
    admitted_ = admitted;
  }
  void OnTokens(TokenDelta delta) override {
    {
      absl::MutexLock lock(&mu_);
      pending_.text.append(delta.text);
      pending_.token_ids.insert(pending_.token_ids.end(), delta.token_ids.begin(),
                                delta.token_ids.end());
      pending_.logprobs.insert(pending_.logprobs.end(), delta.logprobs.begin(),
                               delta.logprobs.end());
    }
    waker_->Notify(shared_from_this());
  }
  void OnFinished(const GenerationSummary& summary) override {
    {
      absl::MutexLock lock(&mu_);
      pending_.finished = true;
      pending_.summary = summary;
    }
    waker_->Notify(shared_from_this());
  }

  // On the Waker's thread.
  void Wake() { ready_.Signal(); }

  // What was produced since the previous call, after waiting up to `timeout` for
  // anything (tokens or the end).
  Output Take(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    absl::MutexLock lock(&mu_);
    while (!pending_.finished && pending_.token_ids.empty() && pending_.text.empty()) {
      if (ready_.WaitWithDeadline(&mu_, deadline)) break;  // Timed out.
    }
    Output out = std::move(pending_);
    pending_ = Output();
    pending_.finished = out.finished;  // The end stays seen.
    pending_.summary = out.summary;
    return out;
  }

  AdmittedGeneration admitted() {
    absl::MutexLock lock(&mu_);
    return admitted_;
  }
  void set_handle(std::shared_ptr<GenerationHandle> handle) { handle_ = std::move(handle); }
  void Cancel() {
    if (handle_ != nullptr) handle_->Cancel();
  }

 private:
  const std::shared_ptr<Waker> waker_;
  absl::Mutex mu_;
  // Signalled by the Waker after the engine appended; Take re-checks under mu_, so a
  // signal that comes before the wait is not needed.
  absl::CondVar ready_;
  Output pending_ ABSL_GUARDED_BY(mu_);
  AdmittedGeneration admitted_ ABSL_GUARDED_BY(mu_);
  // Set once, right after StartGeneration, before the request's thread shares it.
  std::shared_ptr<GenerationHandle> handle_;
};

void Waker::Run() {
  std::vector<std::shared_ptr<HttpGeneration>> batch;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopped_ || !queued_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (stopped_) {
        queued_.clear();
        return;
      }
      batch.swap(queued_);
    }
    for (const std::shared_ptr<HttpGeneration>& generation : batch) generation->Wake();
    batch.clear();
  }
}

}  // namespace

// The routes, and what they share: the ApiContext, the shutdown flag and the count of
// generations in flight.
class OpenAiHttpServer::Handlers {
 public:
  Handlers(ApiContext* api, const std::atomic<bool>* serving) : api_(api), serving_(serving) {}

  void Register(httplib::Server& server) {
    server.Post(kChatRoute, [this](const httplib::Request& req, httplib::Response& res) {
      Generate(OpenAiEndpoint::kChatCompletions, kChatRoute, req, res);
    });
    server.Post(kCompletionsRoute, [this](const httplib::Request& req, httplib::Response& res) {
      Generate(OpenAiEndpoint::kCompletions, kCompletionsRoute, req, res);
    });
    server.Get(kModelsRoute, [this](const httplib::Request& req, httplib::Response& res) {
      ListModels(req, res);
    });
    server.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      RetrieveModel(req, res);
    });
    server.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const bool serving = serving_->load() && !stopping_.load();
      res.status = serving ? 200 : 503;
      res.set_content(serving ? R"({"status":"serving"})" : R"({"status":"not_serving"})",
                      kJson);
    });
    // What cpp-httplib answers itself (no route, a body over the limit, a malformed
    // request) gets the API's error shape too.
    server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      absl::Status status;
      switch (res.status) {
        case 404:
          status = absl::NotFoundError(
              absl::StrCat("Invalid URL (", req.method, " ", req.path.substr(0, 256), ")"));
          break;
        case 413:
          status = WithReason(
              absl::InvalidArgumentError("the request body is over this server's limit"),
              "REQUEST_TOO_LARGE");
          break;
        default:
          status = absl::InvalidArgumentError(
              absl::StrCat("the HTTP request was refused (status ", res.status, ")"));
      }
      const int http_status = res.status;
      WriteError(status, res);
      res.status = http_status;
    });
    server.set_exception_handler(
        [](const httplib::Request& req, httplib::Response& res, std::exception_ptr error) {
          std::string what = "unknown exception";
          try {
            std::rethrow_exception(error);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          std::fprintf(stderr, "steerd: HTTP %s %s failed: %s\n", req.method.c_str(),
                       req.path.c_str(), what.c_str());
          WriteError(absl::InternalError("the server failed to answer the request"), res);
        });
  }

  // Called by Shutdown: waits for the generations in flight until `deadline`, then
  // makes every waiting request thread cancel its generation and stop.
  void Drain(absl::Time deadline) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithDeadline(absl::Condition(
                                +[](int* active) { return *active == 0; }, &active_),
                            deadline);
    }
    stopping_.store(true);
    {
      absl::MutexLock lock(&mu_);
      // Cancelled generations end within an engine step; their threads then return.
      mu_.AwaitWithDeadline(
          absl::Condition(+[](int* active) { return *active == 0; }, &active_),
          absl::Now() + absl::Seconds(5));
    }
    // Generations the engine still holds (cancelled ones, until their next step) keep
    // the Waker alive, stopped: their readers are gone.
    waker_->Stop();
  }

 private:
  // Counts a generation in flight for Drain.
  class InFlight {
   public:
    explicit InFlight(Handlers* handlers) : handlers_(handlers) {
      absl::MutexLock lock(&handlers_->mu_);
      ++handlers_->active_;
    }
    ~InFlight() {
      absl::MutexLock lock(&handlers_->mu_);
      --handlers_->active_;
    }
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;

   private:
    Handlers* handlers_;
  };

  // What a streamed response's provider and releaser share.
  struct Stream {
    std::shared_ptr<HttpGeneration> call;
    OpenAiRequest request;
    OpenAiResponseContext context;
    std::string tenant;
    GenerationSlot slot;
    Clock::time_point start;
    std::unique_ptr<InFlight> in_flight;
    bool sent_first = false;
    bool done = false;
    absl::Status status;  // The outcome, once done.
    int64_t completion_tokens = 0;
    Clock::time_point last_write = Clock::now();
  };

  void Record(const char* route, const absl::Status& status, Clock::time_point start) {
    api_->metrics()->RecordRpc("http", route, CodeName(status), SecondsSince(start));
    if (status.code() == absl::StatusCode::kInternal ||
        status.code() == absl::StatusCode::kDataLoss ||
        status.code() == absl::StatusCode::kUnknown) {
      std::fprintf(stderr, "steerd: HTTP %s failed: %s\n", route,
                   std::string(status.message()).c_str());
    }
  }

  // The caller's tenant (authentication and the rate limit) and the core.
  absl::StatusOr<std::pair<const Tenant*, ServingCore*>> Admit(const httplib::Request& req,
                                                              bool for_generation) {
    ASSIGN_OR_RETURN(const Tenant* tenant, api_->Admit(req.get_header_value("Authorization")));
    ASSIGN_OR_RETURN(ServingCore * core, api_->Core(for_generation));
    if (for_generation && stopping_.load()) return DrainingError();
    return std::make_pair(tenant, core);
  }

  std::optional<TokenLogprobs> Logprobs(ServingCore* core, const OpenAiRequest& request,
                                        const HttpGeneration::Output& out) {
    if (!request.logprobs) return std::nullopt;
    TokenLogprobs logprobs;
    absl::StatusOr<std::vector<std::string>> bytes =
        core->TokenBytes(request.params.model, out.token_ids);
    if (bytes.ok()) logprobs.token_bytes = *std::move(bytes);
    logprobs.logprobs = out.logprobs;
    return logprobs;
  }

  void Generate(OpenAiEndpoint endpoint, const char* route, const httplib::Request& req,
                httplib::Response& res) {
    const Clock::time_point start = Clock::now();
    auto stream = std::make_shared<Stream>();
    stream->start = start;
    ServingCore* core = nullptr;
    absl::Status status = [&]() -> absl::Status {
      ASSIGN_OR_RETURN(auto admitted, Admit(req, /*for_generation=*/true));
      const Tenant* tenant = admitted.first;
      core = admitted.second;
      ASSIGN_OR_RETURN(stream->request, ParseOpenAiRequest(endpoint, req.body));
      ASSIGN_OR_RETURN(stream->slot, api_->limiter()->TryStartGeneration(*tenant));
      stream->tenant = tenant->name;
      stream->call = std::make_shared<HttpGeneration>(waker_);
      stream->in_flight = std::make_unique<InFlight>(this);
      ASSIGN_OR_RETURN(std::shared_ptr<GenerationHandle> handle,
                       core->StartGeneration(tenant->name, tenant->limits.max_new_tokens,
                                             stream->request.params, stream->call));
      stream->call->set_handle(std::move(handle));
      OpenAiResponseContext& context = stream->context;
      context.endpoint = endpoint;
      context.id = RandomId(endpoint == OpenAiEndpoint::kChatCompletions ? "chatcmpl-" : "cmpl-");
      context.created = absl::ToUnixSeconds(absl::Now());
      context.model = stream->request.model;
      context.admitted = stream->call->admitted();
      context.scale = stream->request.params.scale;
      absl::StatusOr<ModelInfo> info = core->GetModel(stream->request.params.model);
      if (info.ok()) context.system_fingerprint = info->fingerprint;
      return absl::OkStatus();
    }();
    if (!status.ok()) {
      stream->slot.Release();
      WriteError(status, res);
      Record(route, status, start);
      return;
    }
    if (stream->request.stream) {
      StartStream(core, route, stream, res);
    } else {
      Answer(core, route, *stream, res);
    }
  }

  // A whole response, after the generation ended.
  void Answer(ServingCore* core, const char* route, Stream& call, httplib::Response& res) {
    HttpGeneration::Output all;
    while (true) {
      HttpGeneration::Output out = call.call->Take(kPollInterval);
      all.text.append(out.text);
      all.token_ids.insert(all.token_ids.end(), out.token_ids.begin(), out.token_ids.end());
      all.logprobs.insert(all.logprobs.end(), out.logprobs.begin(), out.logprobs.end());
      if (out.finished) {
        all.summary = out.summary;
        break;
      }
      if (stopping_.load()) call.call->Cancel();
    }
    call.slot.Release();
    api_->metrics()->RecordTenantTokens(call.tenant, all.summary.completion_tokens);
    const absl::Status& status = all.summary.status;
    if (status.ok()) {
      res.status = 200;
      res.set_content(CompletionResponseJson(call.context, all.text,
                                             Logprobs(core, call.request, all), all.summary),
                      kJson);
    } else {
      WriteError(status, res);
    }
    Record(route, status, call.start);
  }

  // Server-sent events: the provider runs on this connection's thread after the
  // headers are sent, until the generation ends or the client is gone.
  void StartStream(ServingCore* core, const char* route, std::shared_ptr<Stream> stream,
                   httplib::Response& res) {
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");  // Proxies: do not buffer the stream.
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, core, stream](size_t, httplib::DataSink& sink) {
          return WriteEvents(core, *stream, sink);
        },
        [this, route, stream](bool) {
          // The response is done with: after [DONE], or because the client went away
          // (a failed write, or before the provider ever ran).
          if (!stream->done) {
            stream->call->Cancel();
            stream->status = absl::CancelledError("the client went away");
          }
          stream->slot.Release();
          api_->metrics()->RecordTenantTokens(stream->tenant, stream->completion_tokens);
          Record(route, stream->status, stream->start);
          stream->in_flight.reset();
        });
  }

  // One round of a stream: everything produced since the previous round as one event
  // (or the end), or a keep-alive comment after a long silence. False ends the response.
  bool WriteEvents(ServingCore* core, Stream& stream, httplib::DataSink& sink) {
    const OpenAiRequest& request = stream.request;
    HttpGeneration::Output out =
        stream.sent_first ? stream.call->Take(kPollInterval) : HttpGeneration::Output();
    if (stopping_.load() && !out.finished) stream.call->Cancel();
    std::string events;
    const bool chat = request.endpoint == OpenAiEndpoint::kChatCompletions;
    if (!stream.sent_first) {
      // The role first, at once, as the API does: the client sees its request taken.
      if (chat) {
        events = CompletionChunkEvent(stream.context, /*first=*/true, "", std::nullopt,
                                      std::nullopt, request.include_usage);
      }
      stream.sent_first = true;
    }
    // A token without text (the end-of-sequence token) makes no chunk of its own,
    // unless its log-probability was asked for.
    if (!out.text.empty() || (request.logprobs && !out.token_ids.empty())) {
      events += CompletionChunkEvent(stream.context, /*first=*/false, out.text,
                                     Logprobs(core, request, out), std::nullopt,
                                     request.include_usage);
    }
    if (out.finished) {
      stream.status = out.summary.status;
      stream.completion_tokens = out.summary.completion_tokens;
      if (out.summary.status.ok()) {
        events += CompletionChunkEvent(stream.context, /*first=*/false, "", std::nullopt,
                                       out.summary.finish_reason, request.include_usage);
        if (request.include_usage) events += UsageChunkEvent(stream.context, out.summary);
      } else {
        events += ErrorEvent(out.summary.status);
      }
      events += kDoneEvent;
    }
    if (events.empty() && Clock::now() - stream.last_write >
                              absl::ToChronoNanoseconds(kKeepAliveInterval)) {
      events = ": keep-alive\n\n";  // An SSE comment: clients skip it.
    }
    if (!events.empty()) {
      if (!sink.write(events.data(), events.size())) return false;
      stream.last_write = Clock::now();
    }
    if (out.finished) {
      stream.done = true;
      sink.done();
    }
    return true;
  }

  void ListModels(const httplib::Request& req, httplib::Response& res) {
    const Clock::time_point start = Clock::now();
    absl::Status status = [&]() -> absl::Status {
      ASSIGN_OR_RETURN(auto admitted, Admit(req, /*for_generation=*/false));
      const auto [tenant, core] = admitted;
      const std::vector<ModelInfo> models = core->ListModels();
      std::vector<StoredVector> vectors;
      VectorListQuery query;
      query.tenant = tenant->name;
      query.limit = kMaxListedVectors;
      ASSIGN_OR_RETURN(VectorPage page, core->ListVectors(query));
      for (StoredVector& vector : page.vectors) {
        if (core->GetModel(vector.model).ok()) vectors.push_back(std::move(vector));
      }
      res.set_content(ModelListJson(models, vectors), kJson);
      return absl::OkStatus();
    }();
    if (!status.ok()) WriteError(status, res);
    Record(kModelsRoute, status, start);
  }

  void RetrieveModel(const httplib::Request& req, httplib::Response& res) {
    const Clock::time_point start = Clock::now();
    absl::Status status = [&]() -> absl::Status {
      ASSIGN_OR_RETURN(auto admitted, Admit(req, /*for_generation=*/false));
      const auto [tenant, core] = admitted;
      const std::string id = req.matches[1];
      const auto [base, vector] = SplitModelAndVector(id);
      ASSIGN_OR_RETURN(ModelInfo info, core->GetModel(base));
      if (vector.empty()) {
        res.set_content(ModelJson(info.name, "", 0), kJson);
        return absl::OkStatus();
      }
      ASSIGN_OR_RETURN(StoredVector stored, core->GetVector(tenant->name, vector));
      if (stored.model != info.name) {
        return absl::NotFoundError(absl::StrCat("vector \"", vector.substr(0, 128),
                                                "\" was not made for model \"", info.name,
                                                "\""));
      }
      res.set_content(ModelJson(id, info.name, absl::ToUnixSeconds(stored.create_time)), kJson);
      return absl::OkStatus();
    }();
    if (!status.ok()) WriteError(status, res);
    Record(kModelsRoute, status, start);
  }

  ApiContext* const api_;
  const std::atomic<bool>* const serving_;
  const std::shared_ptr<Waker> waker_ = std::make_shared<Waker>();
  std::atomic<bool> stopping_{false};
  absl::Mutex mu_;
  int active_ ABSL_GUARDED_BY(mu_) = 0;  // Generations in flight.
};

absl::StatusOr<std::unique_ptr<OpenAiHttpServer>> OpenAiHttpServer::Start(
    const Options& options, ApiContext* api) {
  const size_t colon = options.listen_address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(options.listen_address.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--http-listen \"", options.listen_address, "\" is not HOST:PORT"));
  }
  std::string host = options.listen_address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);  // [::1] -> ::1
  }
  if (options.threads < 1) {
    return absl::InvalidArgumentError("--http-threads must be at least 1");
  }
  auto server = std::unique_ptr<OpenAiHttpServer>(new OpenAiHttpServer());
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key");
  }
  if (!options.tls_cert_file.empty()) {
    auto tls = std::make_unique<httplib::SSLServer>(options.tls_cert_file.c_str(),
                                                    options.tls_key_file.c_str());
    if (!tls->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the HTTP server cannot use the TLS certificate \"", options.tls_cert_file,
          "\" with the key \"", options.tls_key_file, "\""));
    }
    server->server_ = std::move(tls);
  } else {
    server->server_ = std::make_unique<httplib::Server>();
  }
  httplib::Server& http = *server->server_;
  const int threads = options.threads;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(options.max_body_bytes);
  // Each SSE event is one small write: without this, Nagle's algorithm holds an event
  // back until the client acknowledges the previous one (up to its delayed-ACK 40 ms).
  http.set_tcp_nodelay(true);
  // Connections inherit the listening socket's send buffer (Linux): a fixed one, not
  // autotuned to megabytes, bounds the kernel memory of a client that stops reading
  // and lets its write time out soon after.
  // The options callback sees the listening socket before it is bound; it is kept to
  // widen the accept backlog below.
  const int send_buffer = static_cast<int>(options.send_buffer_bytes);
  auto listen_socket = std::make_shared<socket_t>(INVALID_SOCKET);
  http.set_socket_options([send_buffer, listen_socket](socket_t socket) {
    httplib::default_socket_options(socket);
    if (send_buffer > 0) {
      setsockopt(socket, SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof(send_buffer));
    }
    *listen_socket = socket;
  });
  http.set_read_timeout(absl::ToChronoMicroseconds(options.read_timeout));
  http.set_write_timeout(absl::ToChronoMicroseconds(options.write_timeout));
  http.set_keep_alive_max_count(100000);  // cpp-httplib's default closes after 5 requests.
  http.set_keep_alive_timeout(
      std::max<time_t>(1, absl::ToInt64Seconds(options.keep_alive_timeout)));
  server->handlers_ = std::make_unique<Handlers>(api, &server->serving_);
  server->handlers_->Register(http);

  if (port == 0) {
    port = http.bind_to_any_port(host);
  } else if (!http.bind_to_port(host, port)) {
    port = -1;
  }
  if (port < 0) {
    return absl::UnavailableError(
        absl::StrCat("the HTTP server cannot listen on ", options.listen_address));
  }
  // cpp-httplib 0.11 listens with a backlog of 5: a burst of clients (32 streams
  // opened at once) overflowed it, and connections whose handshake the kernel dropped
  // failed or waited for retransmissions. listen() again sets the backlog.
  if (*listen_socket != INVALID_SOCKET && ::listen(*listen_socket, SOMAXCONN) != 0) {
    return absl::InternalError(absl::StrCat("listen() on ", options.listen_address,
                                            " failed: ", std::strerror(errno)));
  }
  server->port_ = port;
  server->listener_ = std::thread([&http] { http.listen_after_bind(); });
  // The port accepts connections already (they wait in its backlog); stop() only
  // works once the accept loop runs.
  while (!http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return server;
}

OpenAiHttpServer::~OpenAiHttpServer() { Shutdown(absl::Now()); }

void OpenAiHttpServer::Shutdown(absl::Time deadline) {
  if (shut_down_) return;
  shut_down_ = true;
  serving_.store(false);
  handlers_->Drain(deadline);
  server_->stop();  // Closes the port; listen_after_bind joins the pool's threads.
  if (listener_.joinable()) listener_.join();
}

}  // namespace steerd
