// The /metrics endpoint: answers scrapes, 404s other paths, and a client that trickles
// its request one byte at a time neither blocks other scrapes nor holds up shutdown.
// Ordering, not timing, decides: the slow client is still sending when the scrape is
// answered and when the server has been destroyed.
#include "server/api/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace steerd {
namespace {

using ::testing::HasSubstr;

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` and reads the whole response (the server closes the connection).
std::string Fetch(int port, const std::string& request) {
  const int fd = Connect(port);
  if (fd < 0) return "connect failed";
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) response.append(buffer, n);
  close(fd);
  return response;
}

// A client that opens a connection and sends one byte of a request every 100 ms until
// told to stop or 20 s have passed (a bound for a broken server). It counts as sending
// for all that time, even after the server has closed the connection on it: what the
// tests ask is whether the server waited for it.
class TricklingClient {
 public:
  explicit TricklingClient(int port) {
    fd_ = Connect(port);
    thread_ = std::thread([this] {
      const std::string request = "GET /metrics HTTP/1.1\r\nX-Padding: ";
      for (int i = 0; i < 200 && !stop_.HasBeenNotified(); ++i) {
        const char byte = i < static_cast<int>(request.size()) ? request[i] : 'a';
        // A failed send (the server hung up) is no reason to stop early.
        send(fd_, &byte, 1, MSG_NOSIGNAL);
        if (i == 0) started_.Notify();
        stop_.WaitForNotificationWithTimeout(absl::Milliseconds(100));
      }
      if (!started_.HasBeenNotified()) started_.Notify();
      sending_.store(false);
    });
    started_.WaitForNotification();
  }
  ~TricklingClient() {
    stop_.Notify();
    thread_.join();
    if (fd_ >= 0) close(fd_);
  }
  bool connected() const { return fd_ >= 0; }
  bool still_sending() const { return sending_.load(); }

 private:
  int fd_ = -1;
  absl::Notification started_;
  absl::Notification stop_;
  std::atomic<bool> sending_{true};
  std::thread thread_;
};

std::unique_ptr<MetricsHttpServer> StartServer() {
  auto server = MetricsHttpServer::Start("127.0.0.1:0", [] { return std::string("up 1\n"); });
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

TEST(MetricsHttpTest, AnswersMetricsAndNotFound) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const std::string ok = Fetch(server->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(ok, HasSubstr("200 OK"));
  EXPECT_THAT(ok, HasSubstr("\r\n\r\nup 1\n"));
  EXPECT_THAT(Fetch(server->port(), "GET / HTTP/1.1\r\n\r\n"), HasSubstr("404 Not Found"));
}

TEST(MetricsHttpTest, ATricklingClientDoesNotBlockOtherScrapes) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  TricklingClient slow(server->port());
  ASSERT_TRUE(slow.connected());
  const std::string response =
      Fetch(server->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(response, HasSubstr("up 1"));
  EXPECT_TRUE(slow.still_sending()) << "the scrape waited for the slow client";
}

TEST(MetricsHttpTest, ShutdownDoesNotWaitForATricklingClient) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  TricklingClient slow(server->port());
  ASSERT_TRUE(slow.connected());
  server.reset();
  EXPECT_TRUE(slow.still_sending()) << "destruction waited for the slow client";
}

TEST(MetricsHttpTest, SlowClientsBeyondTheLimitDoNotBlockScrapesForLong) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<TricklingClient>> slow;
  for (int i = 0; i < MetricsHttpServer::kMaxConnections; ++i) {
    slow.push_back(std::make_unique<TricklingClient>(server->port()));
  }
  // Every slot is taken: a scrape may be turned away, but once the slow clients have
  // used up their request deadline, scrapes are answered again while they still send.
  std::string response;
  for (int attempt = 0; attempt < 100 && response.find("up 1") == std::string::npos;
       ++attempt) {
    response = Fetch(server->port(), "GET /metrics HTTP/1.1\r\n\r\n");
    if (response.find("up 1") == std::string::npos) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_THAT(response, HasSubstr("up 1"));
  EXPECT_TRUE(slow.back()->still_sending());
}

}  // namespace
}  // namespace steerd
