// Starts the real server binary (build/bin/steerd serve) for integration tests, as an
// operator would: its own data directory, a free port picked by the kernel (read back
// from the server's "listening on" line), stdout and stderr captured. Tests talk to it
// over gRPC with the client library, signal it (SIGTERM, SIGKILL) and restart it on the
// same data directory.
#ifndef STEERD_TESTS_TESTING_SERVER_PROCESS_H_
#define STEERD_TESTS_TESTING_SERVER_PROCESS_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/steerd_client.h"

namespace steerd::testing {

// The sum of the samples of `name` whose labels include all of `labels` in Prometheus
// exposition text; nullopt when there is none.
std::optional<double> MetricSum(const std::string& text, const std::string& name,
                                const std::map<std::string, std::string>& labels = {});

// A fresh, empty directory under the test's temporary folder.
std::string MakeTempDir(const std::string& prefix);

class ServerProcess {
 public:
  struct Options {
    std::string data_dir;             // Required.
    // Extra `steerd serve` flags. Without --threads among them, the environment
    // variable STEERD_TEST_SERVER_THREADS (when set) adds `--threads <its value>`.
    std::vector<std::string> args;
    // Scaled by STEERD_TEST_TIMEOUT_SCALE (tests/testing/timeouts.h), as are the
    // timeouts of Wait and WaitForOutput and the clients' deadlines.
    absl::Duration startup_timeout = absl::Seconds(60);
    // The gRPC address; port 0 lets the kernel pick (read back from the output).
    std::string listen = "127.0.0.1:0";
  };

  // Starts the server and waits until it serves (its "serving model" line) or exits.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const Options& options);
  ~ServerProcess();  // SIGKILLs the server if it still runs.

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  // The OpenAI-compatible HTTP API's port (with --http-listen), else 0.
  int http_port() const { return http_port_; }
  // GET /metrics from the server's Prometheus endpoint (empty on failure).
  std::string ScrapeMetrics() const;
  std::string address() const;
  // The default tenant's key from the data directory (empty with a tenants file).
  std::string default_key() const;
  // A client for `key` (default: the default tenant's key).
  std::unique_ptr<client::SteerdClient> Client(const std::string& key) const;
  std::unique_ptr<client::SteerdClient> Client() const { return Client(default_key()); }

  pid_t pid() const { return pid_; }
  void Signal(int signal_number) const;
  // Waits for the process to exit; returns its exit code, or 128 + signal.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // Everything the server printed so far (stdout and stderr interleaved).
  std::string output() const;
  // Waits until the output contains `text`.
  bool WaitForOutput(const std::string& text, absl::Duration timeout) const;

 private:
  ServerProcess() = default;
  void ReadOutput(int fd);
  void WaitForExit();  // On waiter_: reaps the process.

  Options options_;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  int http_port_ = 0;
  std::thread reader_;
  std::thread waiter_;
  mutable absl::Mutex mu_;
  bool exited_ ABSL_GUARDED_BY(mu_) = false;
  int exit_code_ ABSL_GUARDED_BY(mu_) = -1;
  std::string output_ ABSL_GUARDED_BY(mu_);
  bool eof_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace steerd::testing

#endif  // STEERD_TESTS_TESTING_SERVER_PROCESS_H_
