// The gRPC server (server/api/api_server.h) on a real loopback port, without models:
// what its connections do, which an in-process channel cannot show. Client connections
// are aged out with a GOAWAY at --max-connection-age and calls after it reconnect; a call
// still running then goes on through the grace period (unlimited by default) and is cut
// only at its end; bad ages are refused. gRPC's own grpc.health.v1 service is the call
// (it answers before any model is loaded): Check for short calls, Watch for a stream
// that lasts as long as the client wants and hears each SetServing.
#include "server/api/api_server.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/api/services.h"
#include "server/engine/metrics.h"
#include "server/tenancy/tenants.h"

namespace steerd {
namespace {

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;

// An ApiServer on a free loopback port, with what its services need but no core: the
// steerd.v1 calls answer UNAVAILABLE, health answers.
class TestServer {
 public:
  static std::unique_ptr<TestServer> Start(absl::Duration age, absl::Duration grace) {
    auto server = std::unique_ptr<TestServer>(new TestServer());
    auto authenticator =
        Authenticator::Create({{MakeDefaultTenant("sk-test-key-0123456789")}});
    EXPECT_TRUE(authenticator.ok()) << authenticator.status();
    server->authenticator_ = *std::move(authenticator);
    auto limiter = TenantLimiter::Create({});
    EXPECT_TRUE(limiter.ok()) << limiter.status();
    server->limiter_ = *std::move(limiter);
    server->api_ = std::make_unique<ApiContext>(server->authenticator_.get(),
                                                server->limiter_.get(), &server->metrics_);
    ApiServer::Options options;
    options.listen_address = "127.0.0.1:0";
    options.max_connection_age = age;
    options.max_connection_age_grace = grace;
    auto api_server = ApiServer::Start(options, server->api_.get());
    EXPECT_TRUE(api_server.ok()) << api_server.status();
    if (!api_server.ok()) return nullptr;
    server->server_ = *std::move(api_server);
    return server;
  }

  ApiServer& server() { return *server_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", server_->port()); }

 private:
  TestServer() = default;

  ServingMetrics metrics_;
  std::unique_ptr<Authenticator> authenticator_;
  std::unique_ptr<TenantLimiter> limiter_;
  std::unique_ptr<ApiContext> api_;
  std::unique_ptr<ApiServer> server_;
};

// A channel of its own (gRPC shares connections between channels with equal
// arguments; this one must see its own connection's life).
std::shared_ptr<grpc::Channel> NewChannel(const std::string& address) {
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), arguments);
}

grpc::Status Check(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
  HealthCheckResponse response;
  return Health::NewStub(channel)->Check(&context, HealthCheckRequest(), &response);
}

// Waits (up to 20 s) for the channel to leave READY: its connection got a GOAWAY.
bool AwaitGoaway(grpc::Channel& channel) {
  return channel.WaitForStateChange(GRPC_CHANNEL_READY,
                                    absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
}

// A Health.Watch stream of the whole server: the current status at once, then one
// message per SetServing.
class Watch {
 public:
  explicit Watch(const std::shared_ptr<grpc::Channel>& channel)
      : stub_(Health::NewStub(channel)) {
    context_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    reader_ = stub_->Watch(&context_, HealthCheckRequest());
  }
  ~Watch() {
    if (finished_) return;
    context_.TryCancel();
    reader_->Finish();
  }

  // The next status, or nullopt once the stream has ended.
  std::optional<HealthCheckResponse::ServingStatus> Next() {
    HealthCheckResponse response;
    if (!reader_->Read(&response)) return std::nullopt;
    return response.status();
  }
  grpc::Status Finish() {
    finished_ = true;
    return reader_->Finish();
  }

 private:
  std::unique_ptr<Health::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> reader_;
  bool finished_ = false;
};

TEST(ApiServerTest, ConnectionsGetAGoawayAtTheirAgeAndCallsReconnect) {
  auto server = TestServer::Start(absl::Milliseconds(500), absl::InfiniteDuration());
  ASSERT_NE(server, nullptr);
  std::shared_ptr<grpc::Channel> channel = NewChannel(server->address());
  for (int connection = 0; connection < 2; ++connection) {
    SCOPED_TRACE(absl::StrCat("connection ", connection));
    const grpc::Status status = Check(channel);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(channel->GetState(/*try_to_connect=*/false), GRPC_CHANNEL_READY);
    // Idle or not, the connection is aged out...
    ASSERT_TRUE(AwaitGoaway(*channel)) << "no GOAWAY within 20 s";
    EXPECT_NE(channel->GetState(/*try_to_connect=*/false), GRPC_CHANNEL_READY);
  }
  // ...and the next call makes a new one.
  const grpc::Status status = Check(channel);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST(ApiServerTest, WithoutAnAgeAConnectionStays) {
  auto server = TestServer::Start(absl::InfiniteDuration(), absl::InfiniteDuration());
  ASSERT_NE(server, nullptr);
  std::shared_ptr<grpc::Channel> channel = NewChannel(server->address());
  ASSERT_TRUE(Check(channel).ok());
  // Three times the age the test above sees a GOAWAY within.
  EXPECT_FALSE(channel->WaitForStateChange(
      GRPC_CHANNEL_READY, absl::ToChronoTime(absl::Now() + absl::Milliseconds(1500))));
}

TEST(ApiServerTest, ACallPastItsConnectionsAgeRunsThroughTheGraceAndIsCutAtItsEnd) {
  const absl::Duration age = absl::Milliseconds(300);
  const absl::Duration grace = absl::Milliseconds(1500);
  auto server = TestServer::Start(age, grace);
  ASSERT_NE(server, nullptr);
  std::shared_ptr<grpc::Channel> channel = NewChannel(server->address());
  // The connection is made after this: it is cut no earlier than 0.9 * age + grace
  // from here.
  const absl::Time start = absl::Now();
  Watch watch(channel);
  ASSERT_EQ(watch.Next(), HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(AwaitGoaway(*channel));
  // Past its connection's age the stream still runs: it hears the next status...
  server->server().SetServing(true);
  EXPECT_EQ(watch.Next(), HealthCheckResponse::SERVING);
  // ...while new calls take a new connection.
  EXPECT_TRUE(Check(channel).ok());
  // At the end of the grace the old connection is closed under it.
  EXPECT_EQ(watch.Next(), std::nullopt);
  const absl::Duration lasted = absl::Now() - start;
  const grpc::Status status = watch.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_GE(lasted, age * 0.9 + grace);
}

TEST(ApiServerTest, TheDefaultGraceLetsACallRunAsLongAsItLasts) {
  ApiServer::Options defaults;
  EXPECT_EQ(defaults.max_connection_age, absl::Minutes(5));
  EXPECT_EQ(defaults.max_connection_age_grace, absl::InfiniteDuration());

  auto server = TestServer::Start(absl::Milliseconds(300), defaults.max_connection_age_grace);
  ASSERT_NE(server, nullptr);
  std::shared_ptr<grpc::Channel> channel = NewChannel(server->address());
  Watch watch(channel);
  ASSERT_EQ(watch.Next(), HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(AwaitGoaway(*channel));
  // New connections are aged out too while the stream runs on its old one: five ages
  // later it still hears every status.
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(Check(channel).ok());
    ASSERT_TRUE(AwaitGoaway(*channel));
    server->server().SetServing(i % 2 == 0);
    EXPECT_EQ(watch.Next(), i % 2 == 0 ? HealthCheckResponse::SERVING
                                       : HealthCheckResponse::NOT_SERVING);
  }
}

TEST(ApiServerTest, BadAgesAreRefusedNamingTheFlag) {
  ServingMetrics metrics;
  ApiContext api(nullptr, nullptr, &metrics);
  ApiServer::Options options;
  options.listen_address = "127.0.0.1:0";
  options.max_connection_age = absl::ZeroDuration();
  auto server = ApiServer::Start(options, &api);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server.status().message(),
            "--max-connection-age must be at least 1ms (inf for no limit), got 0");
  options.max_connection_age = absl::Minutes(5);
  options.max_connection_age_grace = absl::Seconds(-1);
  server = ApiServer::Start(options, &api);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr("--max-connection-age-grace must not be negative"));
}

}  // namespace
}  // namespace steerd
