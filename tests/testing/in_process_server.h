// The composed steerd server (server/cli/server_setup.h) inside the test process: the
// same authentication, limits, SQLite stores, gRPC services, serving core and training
// manager as `steerd serve`, without a process to start, a model to load in another
// address space or a port to read back. Clients reach it over an in-process gRPC
// channel (Client()); address() also serves it on a loopback port for what needs a
// socket (raw stubs, steerctl run as a subprocess). Service tests use it for everything
// that does not need a process of its own; signals, kill -9, TLS and flag parsing stay
// with tests/testing/server_process.h.
// Thread-safety: Start and destruction from one thread; the rest from any thread.
#ifndef STEERD_TESTS_TESTING_IN_PROCESS_SERVER_H_
#define STEERD_TESTS_TESTING_IN_PROCESS_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/steerd_client.h"
#include "server/cli/server_setup.h"
#include "server/tenancy/tenants.h"

namespace steerd::testing {

class InProcessServer {
 public:
  struct Options {
    std::string data_dir;  // Required; created when missing.
    // Empty: the single default tenant, its key in <data_dir>/api_key, as `steerd
    // serve` without --tenants.
    std::vector<Tenant> tenants;
    // The serving core's options as `steerd serve` sets them from its flags. No models:
    // the embedded default model. num_threads 0 becomes 1 (the tiny model needs no
    // more, and a 2-core machine runs two test programs at once).
    ServingCore::Options core;
    TrainingManager::Options training;
    int64_t max_message_bytes = 16 << 20;  // gRPC messages and HTTP bodies.
    // Also serve the OpenAI-compatible HTTP API on a loopback port (http_address()).
    bool http = false;
    // How long the HTTP server waits on a client that does not read its response.
    absl::Duration http_write_timeout = absl::Seconds(10);
    // Each HTTP connection's kernel send buffer (OpenAiHttpServer::Options).
    int64_t http_send_buffer_bytes = 256 << 10;
  };

  // Starts the port, loads and warms the models, resumes stored jobs: SERVING.
  static absl::StatusOr<std::unique_ptr<InProcessServer>> Start(Options options);
  // Shuts the port down and stops the engines and the trainers, as an abrupt exit
  // would, minus the process: stored jobs stay RUNNING and resume on the next Start.
  ~InProcessServer();

  // 127.0.0.1:PORT.
  std::string address() const;
  // 127.0.0.1:PORT of the HTTP API (with Options::http).
  std::string http_address() const;
  // The default tenant's key (empty with explicit tenants).
  const std::string& default_key() const { return default_key_; }
  // A client for `key` over an in-process channel; its calls' deadlines are scaled by
  // STEERD_TEST_TIMEOUT_SCALE (tests/testing/timeouts.h).
  std::unique_ptr<client::SteerdClient> Client(const std::string& key) const;
  std::unique_ptr<client::SteerdClient> Client() const { return Client(default_key_); }
  // What GET /metrics would return.
  std::string ScrapeMetrics() const;

 private:
  InProcessServer() = default;

  std::unique_ptr<ComposedServer> server_;
  std::string default_key_;
};

}  // namespace steerd::testing

#endif  // STEERD_TESTS_TESTING_IN_PROCESS_SERVER_H_
