// A small C++ client for a steerd server or a set of interchangeable replicas: one gRPC
// channel (to one address, a list of IP addresses, or a dns:/// name whose addresses are
// all used), round_robin load balancing over what the target resolves to, UNAVAILABLE
// retried by gRPC's retry policy while a call has produced no output, the API key sent as
// `authorization: Bearer <key>` metadata on every steerd.v1 call, a deadline on every
// call (training-job watches have their own, none by default, since they last as long
// as the job), list RPCs followed through all their pages, and gRPC errors returned as
// absl::Status with the same code and message. It also resolves where to connect from
// flags, environment and the server's data directory, as steerctl does. A SteerdClient
// is thread-safe: its methods may be called from several threads at once (each call
// has its own grpc::ClientContext); a StreamCanceller may be used from any thread.
#ifndef STEERD_CLIENT_STEERD_CLIENT_H_
#define STEERD_CLIENT_STEERD_CLIENT_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/status.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "steerd/v1/generation.grpc.pb.h"
#include "steerd/v1/models.grpc.pb.h"
#include "steerd/v1/training.grpc.pb.h"
#include "steerd/v1/vectors.grpc.pb.h"

namespace steerd::client {

// Where and how to connect.
struct ClientOptions {
  // Where the server, or its replicas, are (see ChannelTarget for the forms):
  // "host:port", a comma-separated list of IP addresses "10.0.0.5:50051,10.0.0.6:50051",
  // "dns:///steerd-headless.ns.svc:50051", or any other gRPC target URI ("ipv4:...",
  // "unix:...").
  std::string address = "127.0.0.1:50051";

  // The tenant's API key; sent as `authorization: Bearer <key>` on every steerd.v1
  // call. Empty sends no authorization metadata (the server then answers
  // UNAUTHENTICATED, except for health checks).
  std::string api_key;

  // PEM file of the certificate authority that signed the server's certificate. Empty
  // means an insecure (plaintext) channel.
  std::string tls_ca_file;

  // Deadline of each call, GenerateStream included, WatchJob excepted.
  // absl::InfiniteDuration() (or any value <= 0) means no deadline.
  absl::Duration timeout = absl::Seconds(60);

  // Deadline of each WatchJob stream, which lasts as long as the job (hours for a large
  // one), so by default there is none; stop a watch with a StreamCanceller instead.
  absl::Duration watch_timeout = absl::InfiniteDuration();
};

// The defaults ResolveConnection falls back on.
inline constexpr char kDefaultAddress[] = "127.0.0.1:50051";
inline constexpr char kDefaultDataDir[] = "./data";
// The server writes the key of its default tenant to <data dir>/api_key.
inline constexpr char kApiKeyFileName[] = "api_key";

// Connection settings as a command-line tool finds them. Address: `flag_addr`, else env
// STEERD_ADDR, else kDefaultAddress. API key: `flag_key`, else env STEERD_API_KEY, else
// the contents of <data dir>/api_key without surrounding whitespace (as the server reads
// it), where the data dir is `flag_data_dir`, else env STEERD_DATA_DIR, else
// kDefaultDataDir; no key file leaves the key empty. Fails only when the key file exists
// but cannot be read (PERMISSION_DENIED / DATA_LOSS). tls_ca_file and timeout keep their
// defaults.
absl::StatusOr<ClientOptions> ResolveConnection(const std::string& flag_addr,
                                                const std::string& flag_key,
                                                const std::string& flag_data_dir = "");

// The bytes of the file at `path`: NOT_FOUND naming it when it cannot be opened,
// DATA_LOSS when reading fails.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// The gRPC target of `address` (ClientOptions::address):
//   "host:port"            as it is: a name gRPC's DNS resolver resolves (every address
//                          it returns is balanced), or one IP address;
//   "ip:port,ip:port,..."  "ipv4:ip:port,ip:port" (or "ipv6:[ip]:port,..."), gRPC's
//                          multi-address target: IP addresses only, all of one family,
//                          spaces around the commas allowed. A name in a list is refused
//                          rather than resolved once here, which would pin the replicas
//                          to the addresses it had at start-up: use "dns:///NAME:PORT"
//                          for a name (a Kubernetes headless Service), re-resolved as
//                          replicas come and go;
//   "scheme:..."           any gRPC target URI ("dns:///", "ipv4:", "ipv6:", "unix:"),
//                          as it is.
// INVALID_ARGUMENT naming the address and what is wrong: empty, an empty entry, a name or
// a missing or bad port in a list, mixed IPv4 and IPv6, a repeated entry.
absl::StatusOr<std::string> ChannelTarget(const std::string& address);

// The client library's service config (JSON, gRPC's service config format):
// round_robin load balancing, and a retry policy for every steerd.v1 service (up to 5
// attempts, backoff 0.1 s doubling to at most 2 s, jittered by gRPC) on UNAVAILABLE.
std::string ServiceConfigJson();

// The arguments of the client library's channels: a receive limit large enough for any
// exported vector, ServiceConfigJson() (and no service config from DNS TXT records, so
// the policy is the one documented here), retries on, and a retry buffer that holds a
// whole vector upload. For channels made elsewhere (CreateWithChannel).
grpc::ChannelArguments DefaultChannelArguments();

// `status` as an absl::Status with the same code and message, carrying the server's
// error details (reason, retry delay, invalid fields: server/util/error_details.h).
absl::Status FromGrpcStatus(const grpc::Status& status);

// ListVectors filters (see steerd.v1.ListVectorsRequest).
struct VectorFilter {
  std::string model;          // only versions created for this model; empty = all
  std::string name;           // only versions of this name; empty = all
  bool all_versions = false;  // false: the latest version of each name
};

// ListJobs filters (see steerd.v1.ListJobsRequest).
struct JobFilter {
  // Only jobs in this state; STATE_UNSPECIFIED = all.
  steerd::v1::Job::State state = steerd::v1::Job::STATE_UNSPECIFIED;
  // Jobs per page; 0 = the server's default (50).
  int32_t page_size = 0;
};

// grpc.health.v1 serving status.
enum class ServingStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
// "UNKNOWN", "SERVING", "NOT_SERVING" or "SERVICE_UNKNOWN".
const char* ServingStatusName(ServingStatus status);

// Cancels a streaming call (GenerateStream, WatchJob) from any thread, at any time:
// before the call starts (the call then ends CANCELLED at once), while it runs, or after
// it ended (no effect). One canceller serves one call.
class StreamCanceller {
 public:
  void Cancel();
  bool cancelled() const;

 private:
  friend class SteerdClient;
  // Registers the running call's context; cancels it at once if Cancel() came first.
  void Attach(grpc::ClientContext* context);
  void Detach();

  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// Folds a streamed chunk into the response Generate would have returned: appends text,
// token_ids and logprobs; copies finish_reason, usage, vector and seed when the chunk
// carries them (the last chunk).
void AppendChunk(const steerd::v1::GenerateChunk& chunk,
                 steerd::v1::GenerateResponse* response);

class SteerdClient {
 public:
  // Called with each chunk of GenerateStream, in order; returning false cancels the
  // call (GenerateStream then returns CANCELLED).
  using ChunkCallback = std::function<bool(const steerd::v1::GenerateChunk&)>;
  // Called with each event of WatchJob, in order; returning false cancels the call
  // (WatchJob then returns CANCELLED).
  using JobEventCallback = std::function<bool(const steerd::v1::JobEvent&)>;

  // Opens one channel to ChannelTarget(options.address) with DefaultChannelArguments()
  // (TLS when tls_ca_file is set). Connection happens lazily, on the first call. Fails
  // with ChannelTarget's INVALID_ARGUMENT for a malformed address and NOT_FOUND when the
  // CA file cannot be read.
  static absl::StatusOr<std::unique_ptr<SteerdClient>> Create(
      const ClientOptions& options);

  // Uses an existing channel (in-process servers, custom credentials); the address and
  // tls_ca_file of `options` are ignored.
  static std::unique_ptr<SteerdClient> CreateWithChannel(
      std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);

  // Models.ListModels through every page, in the server's order.
  absl::StatusOr<std::vector<steerd::v1::Model>> ListModels();
  absl::StatusOr<steerd::v1::Model> GetModel(const std::string& name);

  // Vectors. `ref` is "name" (latest version) or "name@version".
  absl::StatusOr<steerd::v1::Vector> CreateVector(const std::string& model,
                                                  const std::string& name,
                                                  std::string safetensors,
                                                  const std::string& description = "");
  absl::StatusOr<steerd::v1::Vector> GetVector(const std::string& ref);
  // Vectors.ListVectors through every page.
  absl::StatusOr<std::vector<steerd::v1::Vector>> ListVectors(const VectorFilter& filter);
  absl::StatusOr<steerd::v1::ExportVectorResponse> ExportVector(const std::string& ref);
  absl::StatusOr<steerd::v1::DeleteVectorResponse> DeleteVector(const std::string& ref);

  // Generation.
  absl::StatusOr<steerd::v1::GenerateResponse> Generate(
      const steerd::v1::GenerateRequest& request);
  // Calls `on_chunk` for every chunk as it arrives, and returns the call's final
  // status: OK after the last chunk, CANCELLED when `on_chunk` returned false or
  // `canceller` was used, else the server's (or the deadline's) error.
  absl::Status GenerateStream(const steerd::v1::GenerateRequest& request,
                              const ChunkCallback& on_chunk,
                              StreamCanceller* canceller = nullptr);

  // Training. Creating a job only queues it: watch it (or poll GetJob) to see it end.
  absl::StatusOr<steerd::v1::Job> CreateJob(const steerd::v1::CreateJobRequest& request);
  absl::StatusOr<steerd::v1::Job> GetJob(const std::string& id);
  // One page of Training.ListJobs, for callers that page themselves.
  absl::StatusOr<steerd::v1::ListJobsResponse> ListJobsPage(
      const steerd::v1::ListJobsRequest& request);
  // Training.ListJobs through every page, newest first.
  absl::StatusOr<std::vector<steerd::v1::Job>> ListJobs(const JobFilter& filter);
  absl::StatusOr<steerd::v1::Job> CancelJob(const std::string& id);
  // Calls `on_event` for every event of the job as it arrives (the first one says
  // where the job is), and returns the call's final status: OK after the event of a
  // terminal state (SUCCEEDED, FAILED or CANCELLED: see the last event's job for
  // which), CANCELLED when `on_event` returned false or `canceller` was used, else the
  // server's error (UNAVAILABLE while it drains: the job goes on, watch again). Bound by
  // options().watch_timeout, not options().timeout.
  absl::Status WatchJob(const std::string& id, const JobEventCallback& on_event,
                        StreamCanceller* canceller = nullptr);

  // grpc.health.v1.Health/Check for `service` ("" = the whole server). Sends no API
  // key. An unknown service is NOT_FOUND (from the server).
  absl::StatusOr<ServingStatus> CheckHealth(const std::string& service = "");

  const ClientOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  SteerdClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);

  // Sets the deadline `timeout` from now and, when `authorize`, the authorization
  // metadata.
  void PrepareContext(grpc::ClientContext* context, bool authorize,
                      absl::Duration timeout) const;

  // One authorized unary call of `stub`'s `method` (a generated stub method), with
  // options_.timeout. Defined and used in steerd_client.cc only.
  template <typename Stub, typename Request, typename Response>
  absl::StatusOr<Response> Call(Stub* stub,
                                grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                             const Request&, Response*),
                                const Request& request) const;

  // One authorized server-streaming call: `open(context)` starts it, `on_item` sees
  // every message and may return false to cancel; `canceller` may cancel it from
  // another thread. Defined and used in steerd_client.cc only.
  template <typename Item, typename Open, typename OnItem>
  absl::Status ReadStream(const Open& open, const OnItem& on_item, absl::Duration timeout,
                          StreamCanceller* canceller) const;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<steerd::v1::Models::Stub> models_;
  std::unique_ptr<steerd::v1::Vectors::Stub> vectors_;
  std::unique_ptr<steerd::v1::Generation::Stub> generation_;
  std::unique_ptr<steerd::v1::Training::Stub> training_;
};

}  // namespace steerd::client

#endif  // STEERD_CLIENT_STEERD_CLIENT_H_
