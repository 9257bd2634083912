// What only the PostgreSQL backend has, beyond the conformance suite (vector_store_test,
// job_store_test): URL checks, schema migrations under the advisory lock, refusal of a
// newer schema, fast UNAVAILABLE when the server is down and recovery without a
// reopen when it returns, the change feed's rows and notifications, and exactly one
// vector per training job. Every test runs on a real PostgreSQL server.
#include <libpq-fe.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/postgres.h"
#include "server/storage/postgres_change_feed.h"
#include "server/storage/postgres_vector_store.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/store_backend.h"

namespace steerd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

StoredVector Metadata(const std::string& name) {
  StoredVector v;
  v.tenant = "t";
  v.name = name;
  v.model = "tiny";
  v.model_fingerprint = "fp";
  v.num_layers = 2;
  v.hidden_size = 4;
  v.dtype = "F32";
  v.layer_norms = {1.0f, 2.0f};
  return v;
}

// A new empty database on the shared server; returns its URL and sets `name`.
std::string FreshDatabase(std::string* name = nullptr) {
  const std::string database = testing::UniqueDatabaseName("pg");
  if (name != nullptr) *name = database;
  absl::StatusOr<std::string> url = testing::SharedPostgresServer().CreateDatabase(database);
  EXPECT_TRUE(url.ok()) << url.status();
  return url.ok() ? *url : "";
}

TEST(PostgresUrlTest, MalformedAndForeignUrlsAreInvalidArgument) {
  for (const std::string url :
       {"mysql://host/db", "/var/lib/steerd", "postgresql://host:notaport/db",
        "postgresql://host/db?no_such_parameter=1", "postgresql://[::1/db"}) {
    const absl::Status status = postgres::CheckUrl(url);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << url << ": " << status;
  }
  EXPECT_TRUE(postgres::CheckUrl("postgresql://steerd:secret@db.example:5432/steerd").ok());
  EXPECT_TRUE(postgres::CheckUrl("postgres:///steerd?host=/run/postgresql").ok());
}

TEST(PostgresUrlTest, PasswordsAreRedacted) {
  EXPECT_EQ(postgres::RedactUrl("postgresql://app:s3cret@db:5432/steerd"),
            "postgresql://app:***@db:5432/steerd");
  EXPECT_EQ(postgres::RedactUrl("postgresql://db/steerd?user=app&password=s3cret&sslmode=require"),
            "postgresql://db/steerd?user=app&password=***&sslmode=require");
  EXPECT_EQ(postgres::RedactUrl("postgresql://app@db/steerd"), "postgresql://app@db/steerd");
  // An error from a failed connection never shows the password either.
  const absl::Status status =
      postgres::Connection::Open("postgresql://app:s3cret@127.0.0.1:1/steerd", absl::Seconds(2),
                                 absl::Seconds(5), "steerd-test", "store")
          .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), Not(HasSubstr("s3cret")));
}

TEST(PostgresDatabaseTest, AnUnreachableServerIsUnavailableAtOnce) {
  postgres::Database::Options options;
  // A socket directory with no server in it: refused at once, not after a timeout.
  options.url = "postgresql://steerd@/steerd?host=/nonexistent-steerd-socket-dir";
  const absl::Time start = absl::Now();
  const absl::Status status = postgres::Database::Open(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("cannot connect to PostgreSQL"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(PostgresDatabaseTest, ReplicasStartingTogetherMigrateExactlyOnce) {
  const std::string url = FreshDatabase();
  constexpr int kReplicas = 3;
  std::vector<std::unique_ptr<postgres::Database>> databases(kReplicas);
  std::vector<absl::Status> statuses(kReplicas);
  std::vector<std::thread> threads;
  for (int i = 0; i < kReplicas; ++i) {
    threads.emplace_back([&, i] {
      postgres::Database::Options options;
      options.url = url;
      options.client_name = absl::StrCat("replica-", i);
      absl::StatusOr<std::unique_ptr<postgres::Database>> opened =
          postgres::Database::Open(options);
      statuses[i] = opened.status();
      if (opened.ok()) databases[i] = std::move(*opened);
    });
  }
  for (std::thread& thread : threads) thread.join();
  int migrated = 0;
  for (int i = 0; i < kReplicas; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i];
    migrated += databases[i]->migrated() ? 1 : 0;
  }
  EXPECT_EQ(migrated, 1);
  auto connection = postgres::Connection::Open(url, absl::Seconds(5), absl::Seconds(5), "test",
                                               "test");
  ASSERT_TRUE(connection.ok()) << connection.status();
  auto rows = (*connection)->Exec(
      "reading", "SELECT count(*), count(DISTINCT applied_by) FROM steerd_schema_migrations");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->Int(0, 0), postgres::Database::SchemaVersion());
  EXPECT_EQ(rows->Int(0, 1), 1);
  // Opening again migrates nothing.
  postgres::Database::Options options;
  options.url = url;
  auto again = postgres::Database::Open(options);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE((*again)->migrated());
  EXPECT_EQ((*again)->found_schema_version(), postgres::Database::SchemaVersion());
}

TEST(PostgresDatabaseTest, ASchemaFromANewerSteerdIsRefusedWithBothVersions) {
  std::string name;
  const std::string url = FreshDatabase(&name);
  postgres::Database::Options options;
  options.url = url;
  ASSERT_TRUE(postgres::Database::Open(options).ok());
  ASSERT_TRUE(testing::SharedPostgresServer()
                  .Exec(name,
                        "INSERT INTO steerd_schema_migrations (version, applied_by) "
                        "VALUES (99, 'steerd 9.9')")
                  .ok());
  const absl::Status status = postgres::Database::Open(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("version 99"));
  EXPECT_THAT(std::string(status.message()),
              HasSubstr(absl::StrCat("(", postgres::Database::SchemaVersion(), ")")));
  // `steerd migrate` refuses it the same way.
  EXPECT_EQ(postgres::Migrate(url, "test").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(PostgresDatabaseTest, WithoutMigrateAnOlderSchemaAsksForSteerdMigrate) {
  const std::string url = FreshDatabase();
  postgres::Database::Options options;
  options.url = url;
  options.migrate = false;
  const absl::Status status = postgres::Database::Open(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("steerd migrate"));
  absl::StatusOr<int64_t> found = postgres::Migrate(url, "test");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, 0);
  EXPECT_TRUE(postgres::Database::Open(options).ok());
  EXPECT_EQ(*postgres::Migrate(url, "test"), postgres::Database::SchemaVersion());
}

// A server of its own: the test stops it.
TEST(PostgresDatabaseTest, StoreCallsFailFastWhileTheServerIsDownAndRecoverWithoutAReopen) {
  absl::StatusOr<std::unique_ptr<testing::PostgresServer>> server =
      testing::PostgresServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::string> url = (*server)->CreateDatabase("outage");
  ASSERT_TRUE(url.ok()) << url.status();
  postgres::Database::Options options;
  options.url = *url;
  auto database = postgres::Database::Open(options);
  ASSERT_TRUE(database.ok()) << database.status();
  PostgresVectorStore::Options store_options;
  store_options.database = database->get();
  auto store = PostgresVectorStore::Create(store_options);
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->Create(Metadata("before"), "bytes 1", -1).ok());

  ASSERT_TRUE((*server)->Stop().ok());
  for (int i = 0; i < 3; ++i) {
    const absl::Time start = absl::Now();
    const absl::Status status = (*store)->Get("t", "before", std::nullopt).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
    EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << status;
  }
  const absl::Status write = (*store)->Create(Metadata("during"), "bytes 2", -1).status();
  EXPECT_EQ(write.code(), absl::StatusCode::kUnavailable) << write;

  ASSERT_TRUE((*server)->Restart().ok());
  absl::StatusOr<StoredVector> after = (*store)->Create(Metadata("after"), "bytes 3", -1);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*store)->Get("t", "before", std::nullopt)->version, 1);
  EXPECT_EQ((*store)->Get("t", "during", std::nullopt).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(PostgresVectorStoreTest, CreatesAndDeletesFeedTheChangeLogAndNotify) {
  const std::string url = FreshDatabase();
  postgres::Database::Options options;
  options.url = url;
  auto database = postgres::Database::Open(options);
  ASSERT_TRUE(database.ok()) << database.status();
  auto listener = (*database)->OpenConnection("listener");
  ASSERT_TRUE(listener.ok());
  ASSERT_TRUE((*listener)
                  ->ExecScript("listening",
                               absl::StrCat("LISTEN ", PostgresVectorStore::kChangeChannel))
                  .ok());
  PostgresVectorStore::Options store_options;
  store_options.database = database->get();
  auto store = PostgresVectorStore::Create(store_options);
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->Create(Metadata("calm"), "v1", -1).ok());
  ASSERT_TRUE((*store)->Create(Metadata("calm"), "v2", -1).ok());
  ASSERT_TRUE((*store)->Delete("t", "calm", std::nullopt).ok());

  auto rows = (*listener)->Exec("reading the feed",
                                "SELECT seq, name, version, op FROM vector_changes ORDER BY seq");
  ASSERT_TRUE(rows.ok()) << rows.status();
  std::vector<std::string> changes;
  for (int row = 0; row < rows->rows(); ++row) {
    changes.push_back(absl::StrCat(rows->Text(row, 1), "@", rows->Text(row, 2), " ",
                                   rows->Text(row, 3)));
  }
  EXPECT_THAT(changes, ElementsAre("calm@1 create", "calm@2 create", "calm@1 delete",
                                   "calm@2 delete"));
  // One notification per change, carrying its seq.
  std::vector<std::string> payloads;
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (payloads.size() < 4 && absl::Now() < deadline) {
    PQconsumeInput((*listener)->handle());
    while (PGnotify* notify = PQnotifies((*listener)->handle())) {
      payloads.push_back(notify->extra);
      PQfreemem(notify);
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(payloads.size(), 4u);
  for (int row = 0; row < 4; ++row) EXPECT_EQ(payloads[row], rows->Text(row, 0));
}

TEST(PostgresVectorStoreTest, ATrainingJobPublishesAtMostOneVector) {
  const std::string url = FreshDatabase();
  postgres::Database::Options options;
  options.url = url;
  auto database = postgres::Database::Open(options);
  ASSERT_TRUE(database.ok()) << database.status();
  PostgresVectorStore::Options store_options;
  store_options.database = database->get();
  auto store = PostgresVectorStore::Create(store_options);
  ASSERT_TRUE(store.ok());
  StoredVector trained = Metadata("trained");
  trained.source = StoredVector::Source::kTraining;
  trained.job_id = "job-1";
  ASSERT_TRUE((*store)->Create(trained, "first", -1).ok());
  const absl::Status second = (*store)->Create(trained, "second", -1).status();
  EXPECT_EQ(second.code(), absl::StatusCode::kAlreadyExists) << second;
  EXPECT_EQ(*(*store)->CountVersions("t"), 1);
  // Uploads (no job) are not limited.
  ASSERT_TRUE((*store)->Create(Metadata("up"), "a", -1).ok());
  ASSERT_TRUE((*store)->Create(Metadata("up"), "b", -1).ok());
}

// Collects what a change feed delivers.
class FeedRecorder {
 public:
  std::function<void(const VectorChange&)> Callback() {
    return [this](const VectorChange& change) {
      absl::MutexLock lock(&mu_);
      changes_.push_back(absl::StrCat(change.name, "@", change.version, " ",
                                      change.kind == VectorChange::Kind::kCreated ? "created"
                                                                                  : "deleted"));
    };
  }
  // Waits (up to 10 s) until `count` changes arrived; returns them all.
  std::vector<std::string> WaitFor(size_t count) {
    absl::MutexLock lock(&mu_);
    auto arrived = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return changes_.size() >= count;
    };
    mu_.AwaitWithTimeout(absl::Condition(&arrived), absl::Seconds(10));
    return changes_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> changes_ ABSL_GUARDED_BY(mu_);
};

struct Replica {
  std::unique_ptr<postgres::Database> database;
  std::unique_ptr<PostgresVectorStore> store;
};

Replica OpenReplica(const std::string& url) {
  Replica replica;
  postgres::Database::Options options;
  options.url = url;
  auto database = postgres::Database::Open(options);
  EXPECT_TRUE(database.ok()) << database.status();
  if (!database.ok()) return replica;
  replica.database = std::move(*database);
  PostgresVectorStore::Options store_options;
  store_options.database = replica.database.get();
  replica.store = *PostgresVectorStore::Create(store_options);
  return replica;
}

// Notifications alone deliver (the poll interval is far longer than the wait).
TEST(PostgresChangeFeedTest, DeliversAnotherReplicasChangesInCommitOrder) {
  const std::string url = FreshDatabase();
  Replica writer = OpenReplica(url);
  Replica follower = OpenReplica(url);
  ASSERT_NE(writer.store, nullptr);
  ASSERT_NE(follower.store, nullptr);
  ASSERT_TRUE(writer.store->Create(Metadata("before"), "b", -1).ok());  // Before the start.
  FeedRecorder recorder;
  PostgresChangeFeed::Options options;
  options.database = follower.database.get();
  options.on_change = recorder.Callback();
  options.poll_interval = absl::Seconds(60);
  auto feed = PostgresChangeFeed::Start(options);
  ASSERT_TRUE(feed.ok()) << feed.status();

  ASSERT_TRUE(writer.store->Create(Metadata("calm"), "1", -1).ok());
  ASSERT_TRUE(writer.store->Create(Metadata("calm"), "2", -1).ok());
  ASSERT_TRUE(writer.store->Delete("t", "calm", 1).ok());
  EXPECT_THAT(recorder.WaitFor(3), ElementsAre("calm@1 created", "calm@2 created",
                                               "calm@1 deleted"));
  // Writers on several threads at once: every change arrives once, in seq order.
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        EXPECT_TRUE(writer.store->Create(Metadata(absl::StrCat("w", t)), "x", -1).ok());
      }
    });
  }
  for (std::thread& thread : writers) thread.join();
  EXPECT_EQ(recorder.WaitFor(23).size(), 23u);
  EXPECT_EQ((*feed)->connects(), 1);
}

// NOTIFY keeps nothing across a disconnect: what changed while the follower was not
// listening is read when it reconnects, and a change that was never notified at all is
// read by the periodic catch-up.
TEST(PostgresChangeFeedTest, NothingIsLostWhenTheListenerDiesOrTheServerRestarts) {
  absl::StatusOr<std::unique_ptr<testing::PostgresServer>> server =
      testing::PostgresServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::string> url = (*server)->CreateDatabase("feed");
  ASSERT_TRUE(url.ok()) << url.status();
  Replica writer = OpenReplica(*url);
  Replica follower = OpenReplica(*url);
  ASSERT_NE(follower.store, nullptr);
  FeedRecorder recorder;
  PostgresChangeFeed::Options options;
  options.database = follower.database.get();
  options.on_change = recorder.Callback();
  options.poll_interval = absl::Milliseconds(300);
  options.reconnect_delay = absl::Milliseconds(100);
  auto feed = PostgresChangeFeed::Start(options);
  ASSERT_TRUE(feed.ok()) << feed.status();
  ASSERT_TRUE(writer.store->Create(Metadata("a"), "1", -1).ok());
  ASSERT_EQ(recorder.WaitFor(1).size(), 1u);

  // The LISTEN connection is killed; a change lands while it reconnects.
  ASSERT_TRUE((*server)
                  ->Exec("feed",
                         "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE pid <> pg_backend_pid() AND (query LIKE 'LISTEN%' "
                         "OR query LIKE '%FROM vector_changes%')")
                  .ok());
  ASSERT_TRUE(writer.store->Create(Metadata("b"), "2", -1).ok());
  EXPECT_EQ(recorder.WaitFor(2).size(), 2u);

  // A change row that was never notified (as if the NOTIFY were lost).
  ASSERT_TRUE((*server)
                  ->Exec("feed",
                         "INSERT INTO vector_changes (tenant, name, version, op, time_us) "
                         "VALUES ('t', 'silent', 1, 'create', 0)")
                  .ok());
  EXPECT_EQ(recorder.WaitFor(3).size(), 3u);

  // The whole server restarts; a deletion right after it is back.
  ASSERT_TRUE((*server)->Stop().ok());
  ASSERT_TRUE((*server)->Restart().ok());
  absl::Status deleted = absl::UnavailableError("not yet");
  for (int attempt = 0; attempt < 50 && !deleted.ok(); ++attempt) {
    deleted = writer.store->Delete("t", "a", std::nullopt).status();
    if (!deleted.ok()) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(deleted.ok()) << deleted;
  EXPECT_THAT(recorder.WaitFor(4),
              ElementsAre("a@1 created", "b@1 created", "silent@1 created", "a@1 deleted"));
  EXPECT_GE((*feed)->connects(), 3);
}

}  // namespace
}  // namespace steerd
