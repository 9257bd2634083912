// `steerd bench store`: how fast what one replica writes reaches the others through a
// shared PostgreSQL store. R in-process replicas (each its own connection pool, vector
// store and change feed, as R steerd processes have) take turns creating versions of
// 256 KiB; for each, the time from the writer's Create() returning until every other
// replica's change feed delivered it (what "latest" waits for), and the time another
// replica takes to read the new version by number (the read-through on its first use).
// Then every version is deleted and the deletions' propagation is timed the same way.
// The vectors go under a tenant of their own, removed at the end.
#include <unistd.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "server/cli/bench_stats.h"
#include "server/cli/commands.h"
#include "server/cli/process_info.h"
#include "server/cli/store_flags.h"
#include "server/storage/postgres_change_feed.h"
#include "server/storage/postgres_vector_store.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

constexpr int kNames = 10;                 // Versions spread over this many names.
constexpr size_t kFileBytes = 256 * 1024;  // About a real 8B-model vector.

// (name, version, deleted) -> when each follower heard of it.
using ChangeKey = std::tuple<std::string, int64_t, bool>;

class Arrivals {
 public:
  void Heard(int replica, const VectorChange& change) {
    absl::MutexLock lock(&mu_);
    heard_[{change.name, change.version, change.kind == VectorChange::Kind::kDeleted}][replica] =
        absl::Now();
  }
  // Waits until every replica but `writer` heard `key`; the latest arrival, or nullopt
  // after `timeout`.
  std::optional<absl::Time> WaitAll(const ChangeKey& key, int replicas, int writer,
                                    absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      const auto it = heard_.find(key);
      if (it == heard_.end()) return false;
      int count = 0;
      for (const auto& [replica, time] : it->second) count += replica != writer ? 1 : 0;
      return count >= replicas - 1;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&all), timeout)) return std::nullopt;
    absl::Time latest = absl::InfinitePast();
    for (const auto& [replica, time] : heard_[key]) {
      if (replica != writer) latest = std::max(latest, time);
    }
    return latest;
  }

 private:
  absl::Mutex mu_;
  std::map<ChangeKey, std::map<int, absl::Time>> heard_ ABSL_GUARDED_BY(mu_);
};

struct BenchReplica {
  std::unique_ptr<postgres::Database> database;
  std::unique_ptr<PostgresVectorStore> store;
  std::unique_ptr<PostgresChangeFeed> feed;
};

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

}  // namespace

absl::Status RunBenchStoreCommand(const ParsedFlags& args) {
  const std::string url = StoreUrlFromFlags(args);
  if (url.empty()) {
    return absl::InvalidArgumentError(
        "--store URL (or STEERD_STORE) is required: the PostgreSQL database to measure");
  }
  ASSIGN_OR_RETURN(const int64_t replica_count, args.GetInt("replicas", 3));
  ASSIGN_OR_RETURN(const int64_t changes, args.GetInt("changes", 200));
  if (replica_count < 2 || replica_count > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("--replicas must be 2 to 16, got ", replica_count));
  }
  if (changes < 1 || changes > 100000) {
    return absl::InvalidArgumentError(absl::StrCat("--changes must be 1 to 100000, got ", changes));
  }
  const int replicas = static_cast<int>(replica_count);
  Arrivals arrivals;
  std::vector<BenchReplica> members(replicas);
  for (int r = 0; r < replicas; ++r) {
    postgres::Database::Options options;
    options.url = url;
    options.client_name = absl::StrCat("steerd bench store replica ", r);
    ASSIGN_OR_RETURN(members[r].database, postgres::Database::Open(options));
    PostgresVectorStore::Options store_options;
    store_options.database = members[r].database.get();
    ASSIGN_OR_RETURN(members[r].store, PostgresVectorStore::Create(store_options));
    PostgresChangeFeed::Options feed;
    feed.database = members[r].database.get();
    feed.on_change = [&arrivals, r](const VectorChange& change) { arrivals.Heard(r, change); };
    ASSIGN_OR_RETURN(members[r].feed, PostgresChangeFeed::Start(feed));
  }

  const std::string tenant = absl::StrCat("steerd-bench-store-", getpid());
  StoredVector metadata;
  metadata.tenant = tenant;
  metadata.model = "bench";
  metadata.model_fingerprint = "bench";
  metadata.num_layers = 32;
  metadata.hidden_size = 2048;
  metadata.dtype = "F32";
  metadata.layer_norms.assign(32, 1.0f);
  std::string bytes(kFileBytes, '\0');
  std::vector<double> create_ms, read_ms, delete_ms;
  std::vector<std::pair<std::string, int64_t>> created;
  const absl::Duration timeout = absl::Seconds(30);
  for (int64_t i = 0; i < changes; ++i) {
    const int writer = static_cast<int>(i % replicas);
    metadata.name = absl::StrCat("v", i % kNames);
    bytes[i % bytes.size()] ^= 1;  // Distinct files.
    ASSIGN_OR_RETURN(const StoredVector stored, members[writer].store->Create(metadata, bytes, -1));
    const absl::Time committed = absl::Now();
    created.emplace_back(stored.name, stored.version);
    // Another replica reads it by number at once.
    const int reader = (writer + 1) % replicas;
    const absl::Time read_start = absl::Now();
    RETURN_IF_ERROR(members[reader].store->ReadBytes(tenant, stored.name, stored.version).status());
    read_ms.push_back(Ms(absl::Now() - read_start));
    const std::optional<absl::Time> heard =
        arrivals.WaitAll({stored.name, stored.version, false}, replicas, writer, timeout);
    if (!heard.has_value()) {
      return absl::DeadlineExceededError(absl::StrCat("the creation of ", stored.name, "@",
                                                      stored.version, " did not reach every "
                                                      "replica within 30 s"));
    }
    create_ms.push_back(Ms(*heard - committed));
  }
  for (size_t i = 0; i < created.size(); ++i) {
    const int writer = static_cast<int>(i % replicas);
    const auto& [name, version] = created[i];
    RETURN_IF_ERROR(members[writer].store->Delete(tenant, name, version).status());
    const absl::Time committed = absl::Now();
    const std::optional<absl::Time> heard =
        arrivals.WaitAll({name, version, true}, replicas, writer, timeout);
    if (!heard.has_value()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the deletion of ", name, "@", version, " did not reach every replica within 30 s"));
    }
    delete_ms.push_back(Ms(*heard - committed));
  }

  nlohmann::json result = {
      {"replicas", replicas},
      {"changes", changes},
      {"file_bytes", kFileBytes},
      {"create_propagation_p50_ms", Percentile(create_ms, 0.5)},
      {"create_propagation_p99_ms", Percentile(create_ms, 0.99)},
      {"delete_propagation_p50_ms", Percentile(delete_ms, 0.5)},
      {"delete_propagation_p99_ms", Percentile(delete_ms, 0.99)},
      {"read_by_version_p50_ms", Percentile(read_ms, 0.5)},
      {"read_by_version_p99_ms", Percentile(read_ms, 0.99)},
      {"cpu", CpuModel()},
  };
  if (args.Has("json")) {
    std::printf("%s\n", result.dump().c_str());
    return absl::OkStatus();
  }
  std::printf("%d replicas on %s, %lld versions of %zu KiB\n", replicas,
              postgres::RedactUrl(url).c_str(), static_cast<long long>(changes),
              kFileBytes / 1024);
  std::printf("  create -> every other replica's feed: p50 %.2f ms  p99 %.2f ms\n",
              Percentile(create_ms, 0.5), Percentile(create_ms, 0.99));
  std::printf("  delete -> every other replica's feed: p50 %.2f ms  p99 %.2f ms\n",
              Percentile(delete_ms, 0.5), Percentile(delete_ms, 0.99));
  std::printf("  read by version on another replica:   p50 %.2f ms  p99 %.2f ms\n",
              Percentile(read_ms, 0.5), Percentile(read_ms, 0.99));
  return absl::OkStatus();
}

}  // namespace steerd
