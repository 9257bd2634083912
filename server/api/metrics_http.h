// A minimal HTTP endpoint for Prometheus scrapes: GET /metrics answers the text
// exposition format, anything else 404. prometheus-cpp's own Exposer (civetweb) fails
// to start in a process that also loads Debian's libtorch ("null context when
// constructing CivetServer", reproduced with a five-line program), so steerd serves the
// registry itself: one thread, one connection at a time, short timeouts, which is all
// a scraper needs.
// Thread-safety: Start() and the destructor from one thread; the render function is
// called on the server's thread.
#ifndef STEERD_SERVER_API_METRICS_HTTP_H_
#define STEERD_SERVER_API_METRICS_HTTP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace steerd {

class MetricsHttpServer {
 public:
  // Listens on "HOST:PORT" (port 0 picks a free one). `render` returns the body.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::function<std::string()> render);
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void Serve();
  void Answer(int connection);

  std::function<std::string()> render_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace steerd

#endif  // STEERD_SERVER_API_METRICS_HTTP_H_
