#include "server/api/metrics_http.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace steerd {
namespace {

void SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += n;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, std::function<std::string()> render) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", address, "\" is not HOST:PORT"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = absl::StrCat(port);
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found) != 0 ||
      found == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve metrics host \"", host, "\""));
  }
  const int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || bind(fd, found->ai_addr, found->ai_addrlen) != 0 || listen(fd, 16) != 0) {
    const std::string error = std::strerror(errno);
    freeaddrinfo(found);
    if (fd >= 0) close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", error));
  }
  freeaddrinfo(found);
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->port_ = bound.ss_family == AF_INET6
                      ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                      : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  server->listen_fd_ = fd;
  server->render_ = std::move(render);
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
}

void MetricsHttpServer::Serve() {
  // Connection threads are owned here, so no thread outlives the server: finished ones
  // are joined as the loop goes round, the rest (which notice stop_ within one poll
  // slice) before it returns.
  struct Connection {
    std::thread thread;
    std::atomic<bool> done{false};
  };
  std::list<std::unique_ptr<Connection>> connections;
  auto join_finished = [&connections](bool all) {
    for (auto it = connections.begin(); it != connections.end();) {
      if (all || (*it)->done.load()) {
        (*it)->thread.join();
        it = connections.erase(it);
      } else {
        ++it;
      }
    }
  };
  while (!stop_.load()) {
    join_finished(/*all=*/false);
    pollfd p{listen_fd_, POLLIN, 0};
    // Wake up regularly to notice stop_.
    if (poll(&p, 1, /*timeout_ms=*/200) <= 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    join_finished(/*all=*/false);
    if (static_cast<int>(connections.size()) >= kMaxConnections) {
      close(fd);  // Every slot is held by a slow client; a scraper retries.
      continue;
    }
    auto connection = std::make_unique<Connection>();
    Connection* raw = connection.get();
    raw->thread = std::thread([this, fd, raw] {
      Answer(fd);
      close(fd);
      raw->done.store(true);
    });
    connections.push_back(std::move(connection));
  }
  join_finished(/*all=*/true);
}

void MetricsHttpServer::Answer(int connection) {
  // The deadline covers the whole request, not each read: a client sending a byte at
  // a time gets no more time than one that sends nothing.
  const absl::Time deadline = absl::Now() + kRequestDeadline;
  timeval send_timeout{2, 0};
  setsockopt(connection, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
  std::string request;
  char buffer[4096];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
    if (stop_.load()) return;
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return;
    pollfd p{connection, POLLIN, 0};
    // Short slices, so shutdown is never held up by a silent client.
    const int slice_ms =
        static_cast<int>(std::min<int64_t>(100, absl::ToInt64Milliseconds(left) + 1));
    const int ready = poll(&p, 1, slice_ms);
    if (ready < 0 && errno != EINTR) return;
    if (ready <= 0) continue;
    const ssize_t n = recv(connection, buffer, sizeof(buffer), 0);
    if (n <= 0) return;
    request.append(buffer, n);
  }
  const bool metrics = absl::StartsWith(request, "GET /metrics ") ||
                       absl::StartsWith(request, "GET /metrics?");
  std::string body;
  if (metrics) {
    absl::MutexLock lock(&render_mu_);
    body = render_();
  } else {
    body = "not found; try /metrics\n";
  }
  SendAll(connection,
          absl::StrCat("HTTP/1.1 ", metrics ? "200 OK" : "404 Not Found",
                       "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"
                       "\r\nContent-Length: ",
                       body.size(), "\r\nConnection: close\r\n\r\n", body));
}

}  // namespace steerd
