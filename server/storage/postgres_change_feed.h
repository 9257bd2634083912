// Follows the vector change feed of a shared PostgreSQL store for one replica: every
// version created or deleted by any replica reaches `on_change`, in commit order,
// exactly once per follower. A dedicated connection LISTENs for the stores' NOTIFY and
// reads `vector_changes WHERE seq > last seen` when one arrives; it also reads every
// `poll_interval` and after every reconnect, because NOTIFY keeps nothing across a
// disconnect or a server restart: a lost notification delays a change by at most the
// poll interval, and never loses it. The follower starts at the feed's end (a replica
// that starts knows nothing it could hold stale).
// Thread-safety: one thread of its own calls `on_change`; construction and destruction
// from one thread.
#ifndef STEERD_SERVER_STORAGE_POSTGRES_CHANGE_FEED_H_
#define STEERD_SERVER_STORAGE_POSTGRES_CHANGE_FEED_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/engine/vector_store.h"
#include "server/storage/postgres.h"

namespace steerd {

class PostgresChangeFeed {
 public:
  struct Options {
    postgres::Database* database = nullptr;  // Must outlive the feed. Required.
    // Called on the feed's thread for each change, in seq order; must not block long.
    std::function<void(const VectorChange&)> on_change;
    // Reads the feed this often even without a notification.
    absl::Duration poll_interval = absl::Seconds(2);
    // Waits this long between attempts to reconnect the LISTEN connection.
    absl::Duration reconnect_delay = absl::Milliseconds(500);
  };

  // Reads where the feed ends now and starts following from there. UNAVAILABLE when
  // the database cannot be reached.
  static absl::StatusOr<std::unique_ptr<PostgresChangeFeed>> Start(const Options& options);
  ~PostgresChangeFeed();  // Stops the thread.
  PostgresChangeFeed(const PostgresChangeFeed&) = delete;
  PostgresChangeFeed& operator=(const PostgresChangeFeed&) = delete;

  // The seq of the last change delivered.
  int64_t last_seq() const { return last_seq_.load(); }
  // Times the LISTEN connection was (re)established, the first included.
  int64_t connects() const { return connects_.load(); }

 private:
  PostgresChangeFeed(Options options, int64_t start_seq, int wake_read, int wake_write);
  void Run();
  // Delivers every change after last_seq_; false when the connection failed.
  bool CatchUp(postgres::Connection& connection);
  // Sleeps up to `duration` or until Stop; false when stopping.
  bool Pause(absl::Duration duration);

  const Options options_;
  std::atomic<int64_t> last_seq_;
  std::atomic<int64_t> connects_{0};
  std::atomic<bool> stopping_{false};
  const int wake_read_;   // A pipe: the destructor writes to wake the thread's poll().
  const int wake_write_;
  std::thread thread_;
};

}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_POSTGRES_CHANGE_FEED_H_
