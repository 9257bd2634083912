#include "tests/testing/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "tests/testing/timeouts.h"

namespace steerd::testing {

// Parses the Prometheus text format line by line.
std::optional<double> MetricSum(const std::string& text, const std::string& name,
                                const std::map<std::string, std::string>& labels) {
  std::optional<double> sum;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    if (line.substr(0, name.size()) != name) continue;
    absl::string_view rest = line.substr(name.size());
    std::map<std::string, std::string> have;
    if (!rest.empty() && rest[0] == '{') {
      const size_t close = rest.find('}');
      if (close == absl::string_view::npos) continue;
      for (absl::string_view pair : absl::StrSplit(rest.substr(1, close - 1), ',', absl::SkipEmpty())) {
        const size_t eq = pair.find('=');
        if (eq == absl::string_view::npos || pair.size() < eq + 3) continue;
        have[std::string(pair.substr(0, eq))] =
            std::string(pair.substr(eq + 2, pair.size() - eq - 3));  // Strip the quotes.
      }
      rest = rest.substr(close + 1);
    }
    if (rest.empty() || rest[0] != ' ') continue;  // Another metric with this prefix.
    bool match = true;
    for (const auto& [key, value] : labels) {
      auto it = have.find(key);
      match &= it != have.end() && it->second == value;
    }
    if (!match) continue;
    sum = sum.value_or(0.0) + std::stod(std::string(rest.substr(1)));
  }
  return sum;
}

namespace {

// N of the first "(<label> N)" in `text`, N a positive number; 0 when there is none.
// (A string search, not std::regex: GCC 12 reports maybe-uninitialized inside
// libstdc++'s regex code once the file is built with sanitizers, a false positive.)
int NumberInParentheses(absl::string_view text, absl::string_view label) {
  const std::string open = absl::StrCat("(", label, " ");
  for (size_t at = text.find(open); at != absl::string_view::npos;
       at = text.find(open, at + 1)) {
    const absl::string_view rest = text.substr(at + open.size());
    const size_t close = rest.find(')');
    int number = 0;
    if (close != absl::string_view::npos && close > 0 &&
        rest.substr(0, close).find_first_not_of("0123456789") == absl::string_view::npos &&
        absl::SimpleAtoi(rest.substr(0, close), &number) && number > 0) {
      return number;
    }
  }
  return 0;
}

}  // namespace

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(tmp != nullptr && *tmp ? tmp : "/tmp", "/", prefix, "-XXXXXX");
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  const char* made = mkdtemp(buffer.data());
  return made == nullptr ? "" : std::string(made);
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(const Options& options) {
  if (options.data_dir.empty()) return absl::InvalidArgumentError("data_dir is required");
  std::vector<std::string> argv = {std::string(STEERD_BINARY_DIR) + "/bin/steerd", "serve",
                                   "--listen",     options.listen,
                                   "--metrics-listen", "127.0.0.1:0",
                                   "--data-dir",   options.data_dir};
  argv.insert(argv.end(), options.args.begin(), options.args.end());
  // ThreadSanitizer cannot see OpenMP's synchronization (libgomp is not instrumented):
  // scripts/sanitize.sh thread pins the model to one thread so no OpenMP workers exist.
  const char* threads = std::getenv("STEERD_TEST_SERVER_THREADS");
  if (threads != nullptr && *threads != '\0' &&
      std::find(options.args.begin(), options.args.end(), "--threads") == options.args.end()) {
    argv.insert(argv.end(), {"--threads", threads});
  }
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    dup2(pipe_fds[1], STDOUT_FILENO);
    dup2(pipe_fds[1], STDERR_FILENO);
    std::vector<char*> raw;
    for (auto& a : argv) raw.push_back(a.data());
    raw.push_back(nullptr);
    execv(raw[0], raw.data());
    _exit(127);
  }
  close(pipe_fds[1]);
  std::unique_ptr<ServerProcess> server(new ServerProcess());
  server->options_ = options;
  server->pid_ = pid;
  server->reader_ = std::thread([s = server.get(), fd = pipe_fds[0]] { s->ReadOutput(fd); });
  server->waiter_ = std::thread([s = server.get()] { s->WaitForExit(); });

  // Ready when a model is served; failed when the process ends first.
  {
    // A plain capture of `s`, not an init-capture: clang reads the lambda's annotation
    // in this scope, where an init-capture's name is not declared.
    ServerProcess* const s = server.get();
    absl::MutexLock lock(&s->mu_);
    auto ready = [s]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
      return s->eof_ || s->output_.find("serving model") != std::string::npos;
    };
    s->mu_.AwaitWithTimeout(absl::Condition(&ready), ScaledTimeout(options.startup_timeout));
    const std::string out = s->output_;
    const int port = NumberInParentheses(out, "port");
    if (out.find("serving model") == std::string::npos || port == 0) {
      return absl::UnavailableError(absl::StrCat("the server did not start:\n", out));
    }
    server->port_ = port;
    server->metrics_port_ = NumberInParentheses(out, "metrics port");
    server->http_port_ = NumberInParentheses(out, "http port");
  }
  return server;
}

ServerProcess::~ServerProcess() {
  bool exited;
  {
    absl::MutexLock lock(&mu_);
    exited = exited_;
  }
  if (!exited) kill(pid_, SIGKILL);
  if (waiter_.joinable()) waiter_.join();
  if (reader_.joinable()) reader_.join();
}

void ServerProcess::ReadOutput(int fd) {
  char buffer[4096];
  while (true) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n <= 0) break;
    absl::MutexLock lock(&mu_);
    output_.append(buffer, n);
  }
  close(fd);
  absl::MutexLock lock(&mu_);
  eof_ = true;
}

std::string ServerProcess::address() const { return absl::StrCat("127.0.0.1:", port_); }

std::string ServerProcess::default_key() const {
  std::ifstream in(options_.data_dir + "/api_key");
  std::stringstream text;
  text << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(text.str()));
}

std::unique_ptr<client::SteerdClient> ServerProcess::Client(const std::string& key) const {
  client::ClientOptions options;
  options.address = address();
  options.api_key = key;
  options.timeout = ScaledTimeout(absl::Seconds(120));
  auto made = client::SteerdClient::Create(options);
  return made.ok() ? std::move(*made) : nullptr;
}

void ServerProcess::Signal(int signal_number) const {
  absl::MutexLock lock(&mu_);
  if (!exited_) kill(pid_, signal_number);
}

absl::StatusOr<int> ServerProcess::Wait(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto exited = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return exited_; };
  if (!mu_.AwaitWithTimeout(absl::Condition(&exited), ScaledTimeout(timeout))) {
    return absl::DeadlineExceededError("the server did not exit in time");
  }
  return exit_code_;
}

void ServerProcess::WaitForExit() {
  int status = 0;
  waitpid(pid_, &status, 0);
  absl::MutexLock lock(&mu_);
  exited_ = true;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string ServerProcess::ScrapeMetrics() const {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(metrics_port_);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[65536];
      ssize_t n;
      while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
    }
  }
  if (fd >= 0) close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

std::string ServerProcess::output() const {
  absl::MutexLock lock(&mu_);
  return output_;
}

bool ServerProcess::WaitForOutput(const std::string& text, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto found = [this, &text]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return eof_ || output_.find(text) != std::string::npos;
  };
  mu_.AwaitWithTimeout(absl::Condition(&found), ScaledTimeout(timeout));
  return output_.find(text) != std::string::npos;
}

}  // namespace steerd::testing
