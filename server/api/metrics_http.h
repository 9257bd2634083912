// A minimal HTTP endpoint for Prometheus scrapes: GET /metrics answers the text
// exposition format, anything else 404. prometheus-cpp's own Exposer (civetweb) fails
// to start in a process that also loads Debian's libtorch ("null context when
// constructing CivetServer", reproduced with a five-line program), so steerd serves the
// registry itself. Each connection gets its own short-lived thread (at most
// kMaxConnections at once; more are closed unanswered) and a whole-request deadline,
// so a client that trickles bytes can neither block other scrapes nor delay shutdown.
// Thread-safety: Start() and the destructor from one thread; the render function is
// called on connection threads, one call at a time.
#ifndef STEERD_SERVER_API_METRICS_HTTP_H_
#define STEERD_SERVER_API_METRICS_HTTP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace steerd {

class MetricsHttpServer {
 public:
  // Listens on "HOST:PORT" (port 0 picks a free one). `render` returns the body.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::function<std::string()> render);
  ~MetricsHttpServer();

  int port() const { return port_; }

  // Connections answered at once; a scraper needs one.
  static constexpr int kMaxConnections = 8;
  // Time a client has to send its request line and headers, in all.
  static constexpr absl::Duration kRequestDeadline = absl::Seconds(2);

 private:
  MetricsHttpServer() = default;
  void Serve();
  // Answers one connection and closes it; runs on its own thread.
  void Answer(int connection);

  std::function<std::string()> render_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;  // Accepts connections; owns and joins their threads.
  absl::Mutex render_mu_;  // One render at a time (the callback need not be reentrant).
};

}  // namespace steerd

#endif  // STEERD_SERVER_API_METRICS_HTTP_H_
