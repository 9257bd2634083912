#include "client/steerd_client.h"

#include <arpa/inet.h>
#include <grpc/grpc.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/api/grpc_status.h"
#include "server/util/status_macros.h"

namespace steerd::client {
namespace {

namespace v1 = ::steerd::v1;

// Exported vectors of large models are megabytes; gRPC's default limit is 4 MiB.
constexpr int kMaxReceiveMessageBytes = 256 << 20;

// A list RPC whose server keeps returning the same token would loop forever.
constexpr int kMaxPages = 1 << 20;

// gRPC buffers what a call sends so that it can send it again on a retry; a call that
// sends more than this is committed to its first attempt (gRPC's default is 256 KiB,
// less than a float32 vector of an 8B model). The server's default request limit
// (steerd serve --max-message-bytes): the memory is only held while a call runs.
constexpr int kRetryBufferBytes = 16 << 20;

// The steerd.v1 services the retry policy covers. grpc.health.v1 is left out: a health
// check reports what it finds, at once.
constexpr const char* kRetriedServices[] = {"steerd.v1.Models", "steerd.v1.Vectors",
                                            "steerd.v1.Generation", "steerd.v1.Training"};

// Target URI schemes of gRPC's resolvers (besides dns:) that ChannelTarget passes on.
constexpr const char* kTargetSchemes[] = {"ipv4:", "ipv6:", "unix:", "unix-abstract:"};

// One entry of an address list, "1.2.3.4:50051" or "[::1]:50051": its family (AF_INET
// or AF_INET6), or INVALID_ARGUMENT saying what is wrong with it.
absl::StatusOr<int> AddressFamily(absl::string_view entry) {
  absl::string_view host;
  absl::string_view port;
  if (absl::StartsWith(entry, "[")) {
    const size_t close = entry.find(']');
    if (close == absl::string_view::npos || close + 1 >= entry.size() ||
        entry[close + 1] != ':') {
      return absl::InvalidArgumentError("is not [IPV6]:PORT");
    }
    host = entry.substr(1, close - 1);
    port = entry.substr(close + 2);
  } else {
    const size_t colon = entry.rfind(':');
    if (colon == absl::string_view::npos) return absl::InvalidArgumentError("has no :PORT");
    host = entry.substr(0, colon);
    port = entry.substr(colon + 1);
    if (absl::StrContains(host, ':')) {
      return absl::InvalidArgumentError("is an IPv6 address without [brackets]");
    }
  }
  int port_number = 0;
  if (!absl::SimpleAtoi(port, &port_number) || port_number < 1 || port_number > 65535 ||
      !absl::ascii_isdigit(port.front())) {
    return absl::InvalidArgumentError(absl::StrCat("has port '", port,
                                                   "', not a number from 1 to 65535"));
  }
  const std::string host_text(host);
  unsigned char bytes[sizeof(in6_addr)];
  if (!absl::StartsWith(entry, "[") && inet_pton(AF_INET, host_text.c_str(), bytes) == 1) {
    return AF_INET;
  }
  if (absl::StartsWith(entry, "[") && inet_pton(AF_INET6, host_text.c_str(), bytes) == 1) {
    return AF_INET6;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "is not an IP address: a list takes IP addresses only; for a name use "
      "dns:///",
      entry, ", which is re-resolved as its addresses change"));
}

std::string Getenv(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

// Follows a list RPC through every page: `fetch` gets the page `request` names, `take`
// moves the items out of it; the next request differs only in its page token, as
// AIP-158 requires.
template <typename Request, typename Fetch, typename Take>
absl::Status FollowPages(absl::string_view rpc, Request request, const Fetch& fetch,
                         const Take& take) {
  for (int page = 0; page < kMaxPages; ++page) {
    ASSIGN_OR_RETURN(auto response, fetch(request));
    take(response);
    if (response.next_page_token().empty()) return absl::OkStatus();
    if (response.next_page_token() == request.page_token()) {
      return absl::InternalError(
          absl::StrCat(rpc, " returned the same page token twice"));
    }
    request.set_page_token(response.next_page_token());
  }
  return absl::InternalError(absl::StrCat(rpc, " did not end"));
}

}  // namespace

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return text.str();
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  return ::steerd::FromGrpcStatus(status);
}

absl::StatusOr<ClientOptions> ResolveConnection(const std::string& flag_addr,
                                                const std::string& flag_key,
                                                const std::string& flag_data_dir) {
  ClientOptions options;
  options.address = !flag_addr.empty() ? flag_addr : Getenv("STEERD_ADDR");
  if (options.address.empty()) options.address = kDefaultAddress;

  options.api_key = !flag_key.empty() ? flag_key : Getenv("STEERD_API_KEY");
  if (options.api_key.empty()) {
    std::string data_dir =
        !flag_data_dir.empty() ? flag_data_dir : Getenv("STEERD_DATA_DIR");
    if (data_dir.empty()) data_dir = kDefaultDataDir;
    const std::string key_path = absl::StrCat(data_dir, "/", kApiKeyFileName);
    std::ifstream in(key_path, std::ios::binary);
    if (in) {
      std::stringstream text;
      text << in.rdbuf();
      if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", key_path));
      options.api_key = std::string(absl::StripAsciiWhitespace(text.str()));
    } else if (errno != ENOENT && errno != ENOTDIR) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot open ", key_path, ": ", std::strerror(errno)));
    }
  }
  return options;
}

const char* ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    case ServingStatus::kUnknown:
      break;
  }
  return "UNKNOWN";
}

void StreamCanceller::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (context_ != nullptr) context_->TryCancel();
}

bool StreamCanceller::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

void StreamCanceller::Attach(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  context_ = context;
  if (cancelled_) context_->TryCancel();
}

void StreamCanceller::Detach() {
  absl::MutexLock lock(&mu_);
  context_ = nullptr;
}

void AppendChunk(const v1::GenerateChunk& chunk, v1::GenerateResponse* response) {
  response->mutable_text()->append(chunk.text());
  response->mutable_token_ids()->MergeFrom(chunk.token_ids());
  response->mutable_logprobs()->MergeFrom(chunk.logprobs());
  if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    response->set_finish_reason(chunk.finish_reason());
  }
  if (chunk.has_usage()) *response->mutable_usage() = chunk.usage();
  if (chunk.has_vector()) *response->mutable_vector() = chunk.vector();
  if (chunk.seed() != 0) response->set_seed(chunk.seed());
}

absl::StatusOr<std::string> ChannelTarget(const std::string& address) {
  const absl::string_view text = absl::StripAsciiWhitespace(address);
  if (text.empty()) return absl::InvalidArgumentError("the server address is empty");
  if (!absl::StrContains(text, ',')) {
    // "host:port", "ip:port" or a target URI with its scheme: gRPC parses it.
    return std::string(text);
  }
  // A target URI passes as it is (gRPC's own lists, "ipv4:a:1,b:2", included), except a
  // list after dns:, which gRPC would take for one malformed name.
  if (absl::StartsWith(text, "dns:")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "address '", text, "': a dns:/// target names one host (whose DNS records may "
        "hold every replica); to list replicas, list their IP addresses without dns:"));
  }
  for (const char* scheme : kTargetSchemes) {
    if (absl::StartsWith(text, scheme)) return std::string(text);
  }
  std::vector<std::string> entries;
  std::set<std::string> seen;
  int family = 0;
  int index = 0;
  for (absl::string_view raw : absl::StrSplit(text, ',')) {
    ++index;
    const absl::string_view entry = absl::StripAsciiWhitespace(raw);
    const std::string where = absl::StrCat("address list '", text, "': entry ", index);
    if (entry.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " is empty"));
    }
    absl::StatusOr<int> entry_family = AddressFamily(entry);
    if (!entry_family.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " '", entry, "' ", entry_family.status().message()));
    }
    if (family != 0 && *entry_family != family) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " '", entry,
          "' mixes IPv4 and IPv6 addresses (gRPC's ipv4: and ipv6: targets take one "
          "family each)"));
    }
    family = *entry_family;
    if (!seen.insert(std::string(entry)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " '", entry, "' is listed twice"));
    }
    entries.emplace_back(entry);
  }
  return absl::StrCat(family == AF_INET ? "ipv4:" : "ipv6:", absl::StrJoin(entries, ","));
}

std::string ServiceConfigJson() {
  // A retried call goes through round_robin's picker again, so a retry after a replica
  // answered UNAVAILABLE (starting, draining, gone) usually lands on another replica.
  //
  // Only calls that have produced no output yet are retried: gRPC commits a call to its
  // attempt once the server's response headers arrive, and steerd sends them with a
  // stream's first message (GenerateStream's first chunk, WatchJob's first event) or a
  // unary call's response. So a stream that fails after its first message returns the
  // error to the caller, who has seen output, and is never replayed from the start.
  //
  // UNAVAILABLE is what a replica answers while it starts or drains (before it does
  // anything) and what gRPC reports when no connection could carry the call. A connection
  // that breaks while the server runs a unary call also ends UNAVAILABLE, after the
  // server may have acted: a CreateJob or CreateVector retried then can create a second
  // job or vector version. That needs a server crash in the milliseconds such a call
  // takes; the calls carry no idempotency key that would let the server see the repeat.
  std::vector<std::string> names;
  for (const char* service : kRetriedServices) {
    names.push_back(absl::StrCat(R"({"service":")", service, R"("})"));
  }
  return absl::StrCat(R"({"loadBalancingConfig":[{"round_robin":{}}],)",
                      R"("methodConfig":[{"name":[)", absl::StrJoin(names, ","), "],",
                      R"("retryPolicy":{"maxAttempts":5,"initialBackoff":"0.1s",)",
                      R"("maxBackoff":"2s","backoffMultiplier":2,)",
                      R"("retryableStatusCodes":["UNAVAILABLE"]}}]})");
}

grpc::ChannelArguments DefaultChannelArguments() {
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  // On by default in gRPC 1.51; set so that an older or differently built gRPC does not
  // silently drop the retry policy.
  arguments.SetInt(GRPC_ARG_ENABLE_RETRIES, 1);
  arguments.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, kRetryBufferBytes);
  arguments.SetServiceConfigJSON(ServiceConfigJson());
  arguments.SetInt(GRPC_ARG_SERVICE_CONFIG_DISABLE_RESOLUTION, 1);
  return arguments;
}

absl::StatusOr<std::unique_ptr<SteerdClient>> SteerdClient::Create(
    const ClientOptions& options) {
  ASSIGN_OR_RETURN(const std::string target, ChannelTarget(options.address));
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls_ca_file.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    absl::StatusOr<std::string> pem = ReadFile(options.tls_ca_file);
    if (!pem.ok()) return pem.status();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = *std::move(pem);
    credentials = grpc::SslCredentials(ssl);
  }
  return CreateWithChannel(
      grpc::CreateCustomChannel(target, credentials, DefaultChannelArguments()),
      options);
}

std::unique_ptr<SteerdClient> SteerdClient::CreateWithChannel(
    std::shared_ptr<grpc::Channel> channel, const ClientOptions& options) {
  return std::unique_ptr<SteerdClient>(new SteerdClient(std::move(channel), options));
}

SteerdClient::SteerdClient(std::shared_ptr<grpc::Channel> channel,
                           const ClientOptions& options)
    : options_(options),
      channel_(std::move(channel)),
      models_(v1::Models::NewStub(channel_)),
      vectors_(v1::Vectors::NewStub(channel_)),
      generation_(v1::Generation::NewStub(channel_)),
      training_(v1::Training::NewStub(channel_)) {}

void SteerdClient::PrepareContext(grpc::ClientContext* context, bool authorize,
                                  absl::Duration timeout) const {
  if (timeout > absl::ZeroDuration() && timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  if (authorize && !options_.api_key.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.api_key));
  }
}

template <typename Stub, typename Request, typename Response>
absl::StatusOr<Response> SteerdClient::Call(
    Stub* stub,
    grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const Request& request) const {
  grpc::ClientContext context;
  PrepareContext(&context, /*authorize=*/true, options_.timeout);
  Response response;
  RETURN_IF_ERROR(FromGrpcStatus((stub->*method)(&context, request, &response)));
  return response;
}

template <typename Item, typename Open, typename OnItem>
absl::Status SteerdClient::ReadStream(const Open& open, const OnItem& on_item,
                                      absl::Duration timeout,
                                      StreamCanceller* canceller) const {
  grpc::ClientContext context;
  PrepareContext(&context, /*authorize=*/true, timeout);
  if (canceller != nullptr) canceller->Attach(&context);
  std::unique_ptr<grpc::ClientReader<Item>> reader = open(&context);
  Item item;
  bool cancelled_by_callback = false;
  while (reader->Read(&item)) {
    if (!on_item(item)) {
      cancelled_by_callback = true;
      context.TryCancel();
      break;
    }
  }
  grpc::Status status = reader->Finish();
  if (canceller != nullptr) canceller->Detach();
  // The stream may have ended on its own in the moment the callback declined an item.
  if (cancelled_by_callback && status.ok()) {
    return absl::CancelledError("cancelled by the client");
  }
  return FromGrpcStatus(status);
}

absl::StatusOr<std::vector<v1::Model>> SteerdClient::ListModels() {
  std::vector<v1::Model> models;
  RETURN_IF_ERROR(FollowPages(
      "ListModels", v1::ListModelsRequest(),
      [this](const v1::ListModelsRequest& request) {
        return Call(models_.get(), &v1::Models::Stub::ListModels, request);
      },
      [&models](v1::ListModelsResponse& response) {
        for (v1::Model& model : *response.mutable_models()) {
          models.push_back(std::move(model));
        }
      }));
  return models;
}

absl::StatusOr<v1::Model> SteerdClient::GetModel(const std::string& name) {
  v1::GetModelRequest request;
  request.set_name(name);
  return Call(models_.get(), &v1::Models::Stub::GetModel, request);
}

absl::StatusOr<v1::Vector> SteerdClient::CreateVector(const std::string& model,
                                                      const std::string& name,
                                                      std::string safetensors,
                                                      const std::string& description) {
  v1::CreateVectorRequest request;
  request.set_model(model);
  request.set_name(name);
  request.set_safetensors(std::move(safetensors));
  request.set_description(description);
  return Call(vectors_.get(), &v1::Vectors::Stub::CreateVector, request);
}

absl::StatusOr<v1::Vector> SteerdClient::GetVector(const std::string& ref) {
  v1::GetVectorRequest request;
  request.set_name(ref);
  return Call(vectors_.get(), &v1::Vectors::Stub::GetVector, request);
}

absl::StatusOr<std::vector<v1::Vector>> SteerdClient::ListVectors(
    const VectorFilter& filter) {
  std::vector<v1::Vector> vectors;
  v1::ListVectorsRequest request;
  request.set_model(filter.model);
  request.set_name(filter.name);
  request.set_all_versions(filter.all_versions);
  RETURN_IF_ERROR(FollowPages(
      "ListVectors", std::move(request),
      [this](const v1::ListVectorsRequest& page_request) {
        return Call(vectors_.get(), &v1::Vectors::Stub::ListVectors, page_request);
      },
      [&vectors](v1::ListVectorsResponse& response) {
        for (v1::Vector& vector : *response.mutable_vectors()) {
          vectors.push_back(std::move(vector));
        }
      }));
  return vectors;
}

absl::StatusOr<v1::ExportVectorResponse> SteerdClient::ExportVector(
    const std::string& ref) {
  v1::ExportVectorRequest request;
  request.set_name(ref);
  return Call(vectors_.get(), &v1::Vectors::Stub::ExportVector, request);
}

absl::StatusOr<v1::DeleteVectorResponse> SteerdClient::DeleteVector(
    const std::string& ref) {
  v1::DeleteVectorRequest request;
  request.set_name(ref);
  return Call(vectors_.get(), &v1::Vectors::Stub::DeleteVector, request);
}

absl::StatusOr<v1::GenerateResponse> SteerdClient::Generate(
    const v1::GenerateRequest& request) {
  return Call(generation_.get(), &v1::Generation::Stub::Generate, request);
}

absl::Status SteerdClient::GenerateStream(const v1::GenerateRequest& request,
                                          const ChunkCallback& on_chunk,
                                          StreamCanceller* canceller) {
  return ReadStream<v1::GenerateChunk>(
      [&](grpc::ClientContext* context) {
        return generation_->GenerateStream(context, request);
      },
      on_chunk, options_.timeout, canceller);
}

absl::StatusOr<v1::Job> SteerdClient::CreateJob(const v1::CreateJobRequest& request) {
  return Call(training_.get(), &v1::Training::Stub::CreateJob, request);
}

absl::StatusOr<v1::Job> SteerdClient::GetJob(const std::string& id) {
  v1::GetJobRequest request;
  request.set_id(id);
  return Call(training_.get(), &v1::Training::Stub::GetJob, request);
}

absl::StatusOr<v1::ListJobsResponse> SteerdClient::ListJobsPage(
    const v1::ListJobsRequest& request) {
  return Call(training_.get(), &v1::Training::Stub::ListJobs, request);
}

absl::StatusOr<std::vector<v1::Job>> SteerdClient::ListJobs(const JobFilter& filter) {
  std::vector<v1::Job> jobs;
  v1::ListJobsRequest request;
  request.set_state(filter.state);
  request.set_page_size(filter.page_size);
  RETURN_IF_ERROR(FollowPages(
      "ListJobs", std::move(request),
      [this](const v1::ListJobsRequest& page_request) {
        return ListJobsPage(page_request);
      },
      [&jobs](v1::ListJobsResponse& response) {
        for (v1::Job& job : *response.mutable_jobs()) jobs.push_back(std::move(job));
      }));
  return jobs;
}

absl::StatusOr<v1::Job> SteerdClient::CancelJob(const std::string& id) {
  v1::CancelJobRequest request;
  request.set_id(id);
  return Call(training_.get(), &v1::Training::Stub::CancelJob, request);
}

absl::Status SteerdClient::WatchJob(const std::string& id,
                                    const JobEventCallback& on_event,
                                    StreamCanceller* canceller) {
  v1::WatchJobRequest request;
  request.set_id(id);
  return ReadStream<v1::JobEvent>(
      [&](grpc::ClientContext* context) { return training_->WatchJob(context, request); },
      on_event, options_.watch_timeout, canceller);
}

absl::StatusOr<ServingStatus> SteerdClient::CheckHealth(const std::string& service) {
  grpc::ClientContext context;
  PrepareContext(&context, /*authorize=*/false, options_.timeout);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  std::unique_ptr<grpc::health::v1::Health::Stub> stub =
      grpc::health::v1::Health::NewStub(channel_);
  absl::Status status = FromGrpcStatus(stub->Check(&context, request, &response));
  if (!status.ok()) return status;
  switch (response.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING:
      return ServingStatus::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING:
      return ServingStatus::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return ServingStatus::kServiceUnknown;
    default:
      return ServingStatus::kUnknown;
  }
}

}  // namespace steerd::client
