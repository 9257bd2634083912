// The OpenAI-compatible HTTP API of steerd, beside the gRPC port and over the same
// ApiContext: the same tenants and key digests (`Authorization: Bearer KEY`), rate and
// concurrency limits, serving core, vectors and metrics (protocol="http"). Routes:
// POST /v1/chat/completions, POST /v1/completions (JSON, or server-sent events with
// "stream": true), GET /v1/models, GET /v1/models/{id}, GET /health. The JSON is
// server/http/openai_protocol.h's.
//
// HTTP/1.1 comes from cpp-httplib (Debian's libcpp-httplib-dev): maintained, small,
// TLS through OpenSSL, and it serves each connection on a thread of a fixed pool, which
// is this service's own rule (one engine thread owns the model; request threads enqueue
// and wait). A generation's tokens are buffered by an observer on the engine thread, so
// a slow reader never slows the engine; the connection's thread writes them as SSE
// events, one event per batch of tokens produced since its previous write. A write that
// fails (the client went away) or cannot proceed for write_timeout (a client that does
// not read) cancels the generation, which frees its engine row before the next step.
// While no token comes for kKeepAliveInterval, a stream gets an SSE comment, so a
// client that left a queued request is noticed too. (A non-streamed request's client
// that leaves is not noticed: cpp-httplib 0.11 tells a handler nothing of its socket.)
//
// Limits: `threads` connections are served at once (more wait for a free thread);
// each connection's kernel send buffer is send_buffer_bytes;
// request lines and headers are bounded by cpp-httplib (8 KiB each), bodies by
// max_body_bytes (413); each read of a request may wait read_timeout; an idle
// keep-alive connection is closed after keep_alive_timeout.
// Thread-safety: Start, SetServing, Shutdown and destruction from any one thread at a
// time; handlers run on the pool's threads.
#ifndef STEERD_SERVER_HTTP_OPENAI_SERVER_H_
#define STEERD_SERVER_HTTP_OPENAI_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/api/services.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace steerd {

class OpenAiHttpServer {
 public:
  struct Options {
    std::string listen_address = "127.0.0.1:8080";  // HOST:PORT; port 0 picks one.
    std::string tls_cert_file;  // PEM certificate chain; with tls_key_file enables TLS.
    std::string tls_key_file;
    int threads = 128;  // Connections served at once.
    int64_t max_body_bytes = 16 << 20;
    absl::Duration read_timeout = absl::Seconds(10);
    absl::Duration write_timeout = absl::Seconds(10);
    absl::Duration keep_alive_timeout = absl::Seconds(5);
    // Each connection's kernel send buffer (0: the kernel's autotuned one, up to
    // megabytes): how much a client that stops reading can leave unread before the
    // server's writes wait, and after write_timeout, give up.
    int64_t send_buffer_bytes = 256 << 10;
  };

  // An SSE comment is sent on a stream that had nothing else to send for this long.
  static constexpr absl::Duration kKeepAliveInterval = absl::Seconds(5);

  // Binds and starts serving (/health answers 503 until SetServing(true)). `api` must
  // outlive the server.
  static absl::StatusOr<std::unique_ptr<OpenAiHttpServer>> Start(const Options& options,
                                                                 ApiContext* api);
  // Shutdown(now) if not done.
  ~OpenAiHttpServer();

  int port() const { return port_; }
  // /health: 200 while serving, 503 otherwise (starting, draining).
  void SetServing(bool serving) { serving_.store(serving); }
  // Waits until every generation in flight has been answered (their streams end with
  // [DONE]) or `deadline`, cancels the rest, then closes the port and the connections.
  void Shutdown(absl::Time deadline);

 private:
  class Handlers;
  OpenAiHttpServer() = default;

  std::unique_ptr<httplib::Server> server_;
  std::unique_ptr<Handlers> handlers_;
  std::thread listener_;
  int port_ = 0;
  std::atomic<bool> serving_{false};
  bool shut_down_ = false;
};

}  // namespace steerd

#endif  // STEERD_SERVER_HTTP_OPENAI_SERVER_H_
