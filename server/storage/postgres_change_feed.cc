#include "server/storage/postgres_change_feed.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <unistd.h>

#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/storage/postgres_vector_store.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using postgres::Connection;
using postgres::Params;
using postgres::Result;

// Changes read per query; a longer backlog takes several.
constexpr int kBatch = 1000;

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresChangeFeed>> PostgresChangeFeed::Start(
    const Options& options) {
  if (options.database == nullptr || !options.on_change) {
    return absl::InvalidArgumentError("change feed: needs a database and a callback");
  }
  int64_t start = 0;
  RETURN_IF_ERROR(options.database->WithConnection([&](Connection& connection) -> absl::Status {
    ASSIGN_OR_RETURN(const Result result,
                     connection.Exec("reading the change feed's end",
                                     "SELECT COALESCE(max(seq), 0) FROM vector_changes"));
    start = result.Int(0, 0);
    return absl::OkStatus();
  }));
  int wake[2];
  if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    return absl::InternalError("change feed: cannot make a pipe");
  }
  auto feed = absl::WrapUnique(new PostgresChangeFeed(options, start, wake[0], wake[1]));
  feed->thread_ = std::thread([feed = feed.get()] { feed->Run(); });
  return feed;
}

PostgresChangeFeed::PostgresChangeFeed(Options options, int64_t start_seq, int wake_read,
                                       int wake_write)
    : options_(std::move(options)),
      last_seq_(start_seq),
      wake_read_(wake_read),
      wake_write_(wake_write) {}

PostgresChangeFeed::~PostgresChangeFeed() {
  stopping_ = true;
  const char byte = 0;
  (void)!write(wake_write_, &byte, 1);
  if (thread_.joinable()) thread_.join();
  close(wake_read_);
  close(wake_write_);
}

bool PostgresChangeFeed::Pause(absl::Duration duration) {
  pollfd fd = {wake_read_, POLLIN, 0};
  poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(duration)));
  return !stopping_;
}

bool PostgresChangeFeed::CatchUp(Connection& connection) {
  while (!stopping_) {
    absl::StatusOr<Result> result = connection.Exec(
        "reading the change feed",
        absl::StrCat("SELECT seq, tenant, name, version, op FROM vector_changes "
                     "WHERE seq > $1 ORDER BY seq LIMIT ",
                     kBatch),
        Params().Int(last_seq_.load()));
    if (!result.ok()) return false;
    for (int row = 0; row < result->rows(); ++row) {
      VectorChange change;
      change.seq = result->Int(row, 0);
      change.tenant = result->Text(row, 1);
      change.name = result->Text(row, 2);
      change.version = result->Int(row, 3);
      change.kind = result->Text(row, 4) == "delete" ? VectorChange::Kind::kDeleted
                                                     : VectorChange::Kind::kCreated;
      options_.on_change(change);
      last_seq_ = change.seq;
    }
    if (result->rows() < kBatch) return true;
  }
  return true;
}

void PostgresChangeFeed::Run() {
  std::unique_ptr<Connection> listener;
  while (!stopping_) {
    if (listener == nullptr) {
      absl::StatusOr<std::unique_ptr<Connection>> opened =
          options_.database->OpenConnection("change feed");
      if (!opened.ok() ||
          !(*opened)
               ->ExecScript("listening",
                            absl::StrCat("LISTEN ", PostgresVectorStore::kChangeChannel))
               .ok()) {
        if (!Pause(options_.reconnect_delay)) return;
        continue;
      }
      listener = std::move(*opened);
      ++connects_;
      // Whatever was notified while no one listened is read now.
      if (!CatchUp(*listener)) {
        listener.reset();
        continue;
      }
    }
    // A notification that arrived while CatchUp's query ran was read off the socket
    // with the query's results and waits in libpq's queue: polling the socket would
    // sleep through it (a change then waited a whole poll interval).
    bool queued = false;
    while (PGnotify* notify = PQnotifies(listener->handle())) {
      queued = true;
      PQfreemem(notify);
    }
    if (!queued) {
      pollfd fds[2] = {{PQsocket(listener->handle()), POLLIN, 0}, {wake_read_, POLLIN, 0}};
      poll(fds, 2, static_cast<int>(absl::ToInt64Milliseconds(options_.poll_interval)));
      if (stopping_) return;
      if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        if (PQconsumeInput(listener->handle()) == 0 || listener->broken()) {
          listener.reset();
          continue;
        }
        // The payloads only say that something changed; the table says what.
        while (PGnotify* notify = PQnotifies(listener->handle())) PQfreemem(notify);
      }
    }
    // On a notification and on every poll interval alike.
    if (!CatchUp(*listener)) listener.reset();
  }
}

}  // namespace steerd
