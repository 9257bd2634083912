#include "tests/testing/postgres_server.h"

#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "server/storage/postgres.h"
#include "tests/testing/subprocess.h"

namespace steerd::testing {
namespace {

// The directory of initdb and pg_ctl: Debian keeps them out of PATH.
absl::StatusOr<std::string> BinDir() {
  for (const char* version : {"15", "16", "17", "14", "13"}) {
    const std::string dir = absl::StrCat("/usr/lib/postgresql/", version, "/bin");
    if (std::filesystem::exists(dir + "/initdb")) return dir;
  }
  return absl::FailedPreconditionError(
      "PostgreSQL's initdb not found under /usr/lib/postgresql/*/bin; run "
      "scripts/install-deps.sh (Debian's postgresql-15)");
}

// `command` run as the postgres user when this process is root (PostgreSQL refuses
// root), as is otherwise.
std::string AsServerUser(const std::string& command) {
  if (geteuid() != 0) return command;
  return absl::StrCat("runuser -u postgres -- ", command);
}

absl::Status RunChecked(const std::string& command, const std::string& what) {
  const ProcessRun run = RunShellCommand(command);
  if (run.exit_code != 0) {
    return absl::InternalError(absl::StrCat("test PostgreSQL: ", what, " failed (exit ",
                                            run.exit_code, "): ", run.out, run.err));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start() {
  const absl::StatusOr<std::string> bin = BinDir();
  if (!bin.ok()) return bin.status();
  std::string pattern = (std::filesystem::temp_directory_path() / "steerd-pg.XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError("test PostgreSQL: cannot make a temporary directory");
  }
  auto server = absl::WrapUnique(new PostgresServer(pattern));
  if (geteuid() == 0) {
    absl::Status owned = RunChecked(absl::StrCat("chown postgres ", ShellQuote(pattern)), "chown");
    if (!owned.ok()) return owned;
  }
  absl::Status made = RunChecked(
      AsServerUser(absl::StrCat(*bin, "/initdb -D ", ShellQuote(pattern + "/db"),
                                " -A trust -U steerd -E UTF8 --locale=C")),
      "initdb");
  if (!made.ok()) return made;
  absl::Status started = server->PgCtl("start");
  if (!started.ok()) return started;
  server->running_ = true;
  return server;
}

absl::Status PostgresServer::PgCtl(const std::string& action) {
  const absl::StatusOr<std::string> bin = BinDir();
  if (!bin.ok()) return bin.status();
  std::string command = absl::StrCat(*bin, "/pg_ctl -D ", ShellQuote(directory_ + "/db"), " -w ");
  if (action == "start") {
    absl::StrAppend(&command, "-o ",
                    ShellQuote(absl::StrCat("-k ", directory_,
                                            " -c listen_addresses='' -c fsync=off"
                                            " -c max_connections=200")),
                    " -l ", ShellQuote(directory_ + "/log"), " start");
  } else {
    absl::StrAppend(&command, action);
  }
  return RunChecked(AsServerUser(command), absl::StrCat("pg_ctl ", action));
}

PostgresServer::~PostgresServer() {
  if (running_) PgCtl("-m immediate stop").IgnoreError();
  std::error_code ignored;
  std::filesystem::remove_all(directory_, ignored);
}

std::string PostgresServer::Url(const std::string& name) const {
  return absl::StrCat("postgresql://steerd@/", name, "?host=", directory_);
}

absl::Status PostgresServer::Exec(const std::string& name, const std::string& sql) {
  absl::StatusOr<std::unique_ptr<postgres::Connection>> connection = postgres::Connection::Open(
      Url(name), absl::Seconds(5), absl::Seconds(30), "steerd-test", "test PostgreSQL");
  if (!connection.ok()) return connection.status();
  return (*connection)->ExecScript("running test SQL", sql);
}

absl::StatusOr<std::string> PostgresServer::CreateDatabase(const std::string& name) {
  absl::Status created = Exec("postgres", absl::StrCat("CREATE DATABASE ", name));
  if (!created.ok()) return created;
  return Url(name);
}

absl::Status PostgresServer::Stop() {
  absl::Status stopped = PgCtl("-m fast stop");
  if (stopped.ok()) running_ = false;
  return stopped;
}

absl::Status PostgresServer::Restart() {
  absl::Status started = PgCtl("start");
  if (started.ok()) running_ = true;
  return started;
}

PostgresServer& SharedPostgresServer() {
  static PostgresServer* shared = nullptr;
  if (shared == nullptr) {
    absl::StatusOr<std::unique_ptr<PostgresServer>> started = PostgresServer::Start();
    if (!started.ok()) {
      // The program fails with the reason; no test is skipped.
      std::fprintf(stderr, "cannot start the test PostgreSQL: %s\n",
                   started.status().ToString().c_str());
      std::abort();
    }
    shared = started->release();
    // Stopped when the program exits normally (a crashed program leaves it running in
    // its temporary directory).
    std::atexit([] { delete shared; });
  }
  return *shared;
}

std::string UniqueDatabaseName(const std::string& prefix) {
  static std::atomic<int> counter{0};
  std::string name = absl::StrCat(prefix, "_", getpid(), "_", counter++);
  for (char& c : name) {
    c = std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::tolower(c)) : '_';
  }
  return name;
}

}  // namespace steerd::testing
