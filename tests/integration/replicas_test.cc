// steerd as N replicas on one PostgreSQL, end to end: real `steerd serve` processes on a
// real throwaway PostgreSQL 15 (tests/testing/postgres_server.h), driven over gRPC with
// the client library. Store URLs and schemas at start-up, `steerd migrate`, and what
// one replica writes being served by another.
#include <signal.h>

#include <fstream>
#include <functional>
#include <atomic>
#include <map>
#include <set>
#include <thread>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/steerd_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "steerd/v1/generation.pb.h"
#include "server/model/safetensors.h"
#include "server/storage/postgres.h"
#include "server/tenancy/sha256.h"
#include "steerd/v1/training.pb.h"
#include "tests/testing/cli.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/server_process.h"
#include "tests/testing/subprocess.h"

namespace steerd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kModel[] = "steerd-tiny";
constexpr int kLayers = 4;
constexpr int kHidden = 192;

// A steering file for the embedded model: [layers, hidden] of N(0, 3^2) values, strong
// enough to change what the tiny model generates.
std::string VectorFile(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> values(kLayers * kHidden);
  for (float& v : values) v = normal(rng);
  auto bytes = SerializeSafetensors({{"steering", DType::kF32, {kLayers, kHidden}, values.data()}},
                                    {{"format", "steerd.steering.v1"}});
  return bytes.ok() ? *bytes : std::string();
}

v1::GenerateRequest Request(const std::string& vector) {
  v1::GenerateRequest request;
  request.set_model(kModel);
  request.set_prompt("Q: (12+7)*3-5\nA:");
  request.mutable_sampling()->set_max_new_tokens(24);
  request.set_ignore_eos(true);
  if (!vector.empty()) request.mutable_steering()->set_vector(vector);
  return request;
}

std::vector<int32_t> Ids(const v1::GenerateResponse& response) {
  return {response.token_ids().begin(), response.token_ids().end()};
}

// The lines of `text` that are not empty.
std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

std::string SteerdBinary() { return absl::StrCat(STEERD_BINARY_DIR, "/bin/steerd"); }

// `steerd ARGS`, with STEERD_STORE set to `store_env` when it is not empty.
testing::ProcessRun RunSteerd(const std::string& args, const std::string& store_env = "") {
  const std::string env =
      store_env.empty() ? "" : absl::StrCat("STEERD_STORE=", testing::ShellQuote(store_env), " ");
  return testing::RunShellCommand(absl::StrCat(env, SteerdBinary(), " ", args));
}

// Checks that `run` failed with exactly one line on stderr, "error: ...PROBLEM...".
void ExpectOneLineError(const testing::ProcessRun& run, const std::string& problem) {
  EXPECT_EQ(run.exit_code, 1) << run.out << run.err;
  const std::vector<std::string> lines = Lines(run.err);
  ASSERT_EQ(lines.size(), 1u) << run.err;
  EXPECT_THAT(lines[0], StartsWith("error: "));
  EXPECT_THAT(lines[0], HasSubstr(problem));
}

// A store URL that is wrong is a configuration error: one line on stderr, exit 1,
// before anything listens; the password never shows. No PostgreSQL needed.
TEST(StoreFlagsTest, BadStoreUrlsAreOneLineErrorsAtStartUp) {
  const std::string serve = absl::StrCat("serve --listen 127.0.0.1:0 --metrics-listen off ",
                                         "--data-dir ", testing::MakeTempDir("bad_store"));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"mysql://db/steerd", "is not a PostgreSQL URL"},
      {"postgresql://db:port/steerd", "invalid port"},
      {"postgresql://db/steerd?no_such_option=1", "is malformed"},
      // Nothing listens on port 1: refused at once, not after a timeout.
      {"postgresql://app:s3cret@127.0.0.1:1/steerd", "cannot connect to PostgreSQL"},
  };
  for (const auto& [url, problem] : cases) {
    SCOPED_TRACE(url);
    const testing::ProcessRun flag =
        RunSteerd(absl::StrCat(serve, " --store ", testing::ShellQuote(url)));
    ExpectOneLineError(flag, problem);
    EXPECT_THAT(flag.err, Not(HasSubstr("s3cret")));
    // The same from the environment, as a Kubernetes Secret passes it.
    const testing::ProcessRun env = RunSteerd(serve, url);
    ExpectOneLineError(env, problem);
    EXPECT_THAT(env.err, Not(HasSubstr("s3cret")));
  }
  ExpectOneLineError(RunSteerd("migrate"), "--store URL (or the STEERD_STORE environment");
}

constexpr char kKey[] = "sk-replicas-test-key-0123456789abcdef";

v1::CreateJobRequest QuickJob(const std::string& output, int steps) {
  v1::CreateJobRequest request;
  request.set_model(kModel);
  request.set_output_vector(output);
  request.set_task("arith");
  auto* h = request.mutable_hyperparameters();
  h->set_steps(steps);
  h->set_prompts_per_step(2);
  h->set_rollouts_per_prompt(4);
  h->set_max_new_tokens(24);
  h->set_seed(7);
  return request;
}

bool Ended(const v1::Job& job) {
  return job.state() == v1::Job::STATE_SUCCEEDED || job.state() == v1::Job::STATE_FAILED ||
         job.state() == v1::Job::STATE_CANCELLED;
}

// Whether the job is on `replica` now (or ended).
std::function<bool(const v1::Job&)> TakenOverBy(const std::string& replica) {
  return [replica](const v1::Job& job) { return job.replica() == replica || Ended(job); };
}

// Polls the job through `client` until `done` holds or `timeout` passes.
absl::StatusOr<v1::Job> WaitForJob(client::SteerdClient& client, const std::string& id,
                                   absl::Duration timeout,
                                   const std::function<bool(const v1::Job&)>& done) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<v1::Job> job = client.GetJob(id);
  while (absl::Now() < deadline) {
    job = client.GetJob(id);
    if (job.ok() && done(*job)) return job;
    absl::SleepFor(absl::Milliseconds(100));
  }
  if (!job.ok()) return job.status();
  return absl::DeadlineExceededError(
      absl::StrCat("job ", id, " still ", v1::Job::State_Name(job->state()), " at step ",
                   job->progress().step(), " on replica \"", job->replica(), "\""));
}

class ReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> url = testing::SharedPostgresServer().CreateDatabase(
        database_ = testing::UniqueDatabaseName("replicas"));
    ASSERT_TRUE(url.ok()) << url.status();
    url_ = *url;
    // One tenant with room for many jobs, shared by every replica.
    tenants_ = testing::MakeTempDir("replica_tenants") + "/tenants.json";
    std::ofstream(tenants_) << absl::StrCat(
        R"({"tenants": [{"name": "acme", "api_key_sha256": ")", Sha256Hex(kKey),
        R"(", "limits": {"queued_jobs": 100, "stored_vectors": 1000}}]})");
  }

  // SQL on the test's database; the rows, columns joined by '|'.
  std::vector<std::string> Query(const std::string& sql) {
    auto connection = postgres::Connection::Open(url_, absl::Seconds(5), absl::Seconds(30),
                                                 "replicas-test", "test SQL");
    EXPECT_TRUE(connection.ok()) << connection.status();
    if (!connection.ok()) return {};
    auto result = (*connection)->Exec("test SQL", sql);
    EXPECT_TRUE(result.ok()) << result.status();
    std::vector<std::string> rows;
    if (!result.ok()) return rows;
    for (int row = 0; row < result->rows(); ++row) {
      std::string text;
      for (int column = 0; column < result->columns(); ++column) {
        absl::StrAppend(&text, column > 0 ? "|" : "", result->Text(row, column));
      }
      rows.push_back(text);
    }
    return rows;
  }

  // A replica on the test's database, with a data directory of its own (its default
  // tenant's key; every replica's default tenant is the same tenant, "default").
  std::unique_ptr<testing::ServerProcess> StartReplica(const std::string& id,
                                                       std::vector<std::string> args = {}) {
    testing::ServerProcess::Options options;
    options.data_dir = testing::MakeTempDir(absl::StrCat("replica_", id));
    options.args = {"--store", url_, "--replica-id", id};
    options.args.insert(options.args.end(), args.begin(), args.end());
    absl::StatusOr<std::unique_ptr<testing::ServerProcess>> server =
        testing::ServerProcess::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? std::move(*server) : nullptr;
  }

  // A replica serving the shared tenants file, one compute thread (several replicas
  // share this machine's cores).
  std::unique_ptr<testing::ServerProcess> StartTrainingReplica(const std::string& id,
                                                               std::vector<std::string> args = {}) {
    args.insert(args.begin(), {"--tenants", tenants_, "--threads", "1"});
    return StartReplica(id, std::move(args));
  }

  // Two training replicas (a 2 s lease unless `args` say otherwise; a checkpoint every
  // 2 steps), and a 40-step job created through `creator`, RUNNING at step `min_step`
  // or later.
  struct RunningJob {
    std::map<std::string, std::unique_ptr<testing::ServerProcess>> replicas;
    std::string id;
    std::string holder;  // The replica running it.
    std::string peer;    // The other one.
  };
  void StartJobOnTwoReplicas(const std::string& output, const std::string& creator,
                             int min_step, RunningJob* running,
                             std::vector<std::string> args = {"--job-lease-ttl", "2s"}) {
    args.insert(args.end(), {"--checkpoint-every", "2"});
    for (const char* id : {"a", "b"}) {
      running->replicas[id] = StartTrainingReplica(id, args);
      ASSERT_NE(running->replicas[id], nullptr);
    }
    auto client = running->replicas[creator]->Client(kKey);
    auto job = client->CreateJob(QuickJob(output, 40));
    ASSERT_TRUE(job.ok()) << job.status();
    running->id = job->id();
    auto started = WaitForJob(*client, job->id(), absl::Seconds(60), [&](const v1::Job& j) {
      return j.progress().step() >= min_step || Ended(j);
    });
    ASSERT_TRUE(started.ok()) << started.status();
    ASSERT_EQ(started->state(), v1::Job::STATE_RUNNING);
    running->holder = started->replica();
    ASSERT_TRUE(running->holder == "a" || running->holder == "b") << running->holder;
    running->peer = running->holder == "a" ? "b" : "a";
  }

  // The job ends SUCCEEDED on `replica`, and exactly one vector version carries its id.
  void ExpectSucceededOnceOn(client::SteerdClient& client, const std::string& id,
                             const std::string& replica) {
    auto ended = WaitForJob(client, id, absl::Seconds(180), Ended);
    ASSERT_TRUE(ended.ok()) << ended.status();
    EXPECT_EQ(ended->state(), v1::Job::STATE_SUCCEEDED) << ended->error().ShortDebugString();
    EXPECT_EQ(ended->replica(), replica);
    EXPECT_THAT(Query(absl::StrCat("SELECT count(*) FROM vectors WHERE job_id = '", id, "'")),
                ::testing::ElementsAre("1"));
  }

  std::string database_;
  std::string url_;
  std::string tenants_;
};

TEST_F(ReplicasTest, MigrateAppliesTheSchemaOnceAndANewerSchemaIsRefused) {
  const std::string current = absl::StrCat(postgres::Database::SchemaVersion());
  const testing::ProcessRun first =
      RunSteerd(absl::StrCat("migrate --store ", testing::ShellQuote(url_)));
  EXPECT_EQ(first.exit_code, 0) << first.err;
  EXPECT_THAT(first.out, HasSubstr(absl::StrCat("schema migrated from version 0 to ", current)));
  const testing::ProcessRun again = RunSteerd("migrate", url_);
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_THAT(again.out, HasSubstr(absl::StrCat("schema already at version ", current)));

  // A database a newer steerd migrated: refused by migrate and by serve, naming both.
  ASSERT_TRUE(testing::SharedPostgresServer()
                  .Exec(database_,
                        "INSERT INTO steerd_schema_migrations (version, applied_by) "
                        "VALUES (99, 'steerd from the future')")
                  .ok());
  const std::string both = absl::StrCat("version 99, newer than this steerd knows (", current, ")");
  ExpectOneLineError(RunSteerd("migrate", url_), both);
  ExpectOneLineError(
      RunSteerd(absl::StrCat("serve --listen 127.0.0.1:0 --metrics-listen off --data-dir ",
                             testing::MakeTempDir("newer"), " --store ",
                             testing::ShellQuote(url_))),
      both);
}

// Versions are immutable, so a version created on one replica is served by another at
// once (read through on its first use), identically.
TEST_F(ReplicasTest, AVectorCreatedOnOneReplicaIsServedByAnother) {
  std::unique_ptr<testing::ServerProcess> a = StartReplica("a");
  std::unique_ptr<testing::ServerProcess> b = StartReplica("b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_THAT(a->output(), HasSubstr("store PostgreSQL"));
  auto on_a = a->Client();
  auto on_b = b->Client();
  ASSERT_TRUE(on_a->CreateVector(kModel, "calm", VectorFile(1)).ok());

  auto from_a = on_a->Generate(Request("calm@1"));
  auto from_b = on_b->Generate(Request("calm@1"));
  ASSERT_TRUE(from_a.ok()) << from_a.status();
  ASSERT_TRUE(from_b.ok()) << from_b.status();
  EXPECT_EQ(Ids(*from_b), Ids(*from_a));
  auto unsteered = on_b->Generate(Request(""));
  ASSERT_TRUE(unsteered.ok()) << unsteered.status();
  EXPECT_NE(Ids(*from_b), Ids(*unsteered)) << "the vector must change the output";

  auto listed = on_b->GetVector("calm");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->version(), 1);
  // Version numbers come from the shared store: B's upload is version 2.
  auto second = on_b->CreateVector(kModel, "calm", VectorFile(2));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->version(), 2);
  auto v2_on_a = on_a->Generate(Request("calm@2"));
  ASSERT_TRUE(v2_on_a.ok()) << v2_on_a.status();
}

// "Latest" and deletions reach every replica through the change feed: a new version is
// what the name resolves to on the others, and a deleted one is refused there, each
// within 500 ms, even though those replicas had the old answers in memory.
TEST_F(ReplicasTest, NewLatestVersionsAndDeletionsReachEveryReplicaWithin500Ms) {
  std::unique_ptr<testing::ServerProcess> a = StartReplica("a");
  std::unique_ptr<testing::ServerProcess> b = StartReplica("b");
  std::unique_ptr<testing::ServerProcess> c = StartReplica("c");
  ASSERT_TRUE(a != nullptr && b != nullptr && c != nullptr);
  auto on_a = a->Client();
  std::vector<std::unique_ptr<client::SteerdClient>> others;
  others.push_back(b->Client());
  others.push_back(c->Client());
  ASSERT_TRUE(on_a->CreateVector(kModel, "calm", VectorFile(1)).ok());
  for (auto& other : others) {
    // Each learns "calm" = 1 and holds calm@1 resident.
    auto first = other->Generate(Request("calm"));
    ASSERT_TRUE(first.ok()) << first.status();
    EXPECT_EQ(first->vector().version(), 1);
  }
  // Polls every replica in `others` until `check` holds for each; the time it took.
  auto until_all = [&](const std::function<bool(client::SteerdClient&)>& check) {
    const absl::Time start = absl::Now();
    for (auto& other : others) {
      while (!check(*other) && absl::Now() - start < absl::Seconds(5)) {
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
    return absl::Now() - start;
  };
  ASSERT_TRUE(on_a->CreateVector(kModel, "calm", VectorFile(2)).ok());
  const absl::Duration latest = until_all([](client::SteerdClient& other) {
    auto generated = other.Generate(Request("calm"));
    return generated.ok() && generated->vector().version() == 2;
  });
  EXPECT_LT(latest, absl::Milliseconds(500));

  ASSERT_TRUE(on_a->DeleteVector("calm@1").ok());
  const absl::Duration deleted = until_all([](client::SteerdClient& other) {
    return other.Generate(Request("calm@1")).status().code() == absl::StatusCode::kNotFound;
  });
  EXPECT_LT(deleted, absl::Milliseconds(500));
  ASSERT_TRUE(on_a->DeleteVector("calm").ok());
  const absl::Duration all_gone = until_all([](client::SteerdClient& other) {
    return other.Generate(Request("calm")).status().code() == absl::StatusCode::kNotFound;
  });
  EXPECT_LT(all_gone, absl::Milliseconds(500));
}

// Three replicas started together on an empty database: exactly one migrates, all serve.
TEST_F(ReplicasTest, ReplicasStartingTogetherOnAnEmptyDatabaseMigrateItOnce) {
  std::vector<std::thread> starters;
  std::vector<std::unique_ptr<testing::ServerProcess>> replicas(3);
  for (int i = 0; i < 3; ++i) {
    starters.emplace_back([&, i] { replicas[i] = StartReplica(absl::StrCat("r", i)); });
  }
  for (std::thread& starter : starters) starter.join();
  int migrated = 0;
  for (const auto& replica : replicas) {
    ASSERT_NE(replica, nullptr);
    migrated += absl::StrContains(replica->output(), "migrated from 0") ? 1 : 0;
    EXPECT_TRUE(replica->Client()->Generate(Request("")).ok());
  }
  EXPECT_EQ(migrated, 1);
  EXPECT_THAT(Query("SELECT count(DISTINCT applied_by) FROM steerd_schema_migrations"),
              ::testing::ElementsAre("1"));
}

// Streams of 24 tokens through the client library's round_robin over two replicas,
// from 16 threads, until `stop`; counts what failed or came back short.
struct LoadResult {
  int completed = 0;
  int failed = 0;
  int short_streams = 0;
  std::vector<std::string> errors;
};

LoadResult RunLoad(const std::string& address, const std::string& key, int threads,
                   std::atomic<bool>& stop, const std::string& vector) {
  LoadResult total;
  absl::Mutex mu;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      client::ClientOptions options;
      options.address = address;
      options.api_key = key;
      options.timeout = absl::Seconds(60);
      auto client = client::SteerdClient::Create(options);
      if (!client.ok()) {
        absl::MutexLock lock(&mu);
        ++total.failed;
        total.errors.push_back(client.status().ToString());
        return;
      }
      while (!stop.load()) {
        int tokens = 0;
        const absl::Status status =
            (*client)->GenerateStream(Request(vector), [&](const v1::GenerateChunk& chunk) {
              tokens += chunk.token_ids_size();
              return true;
            });
        absl::MutexLock lock(&mu);
        if (!status.ok()) {
          ++total.failed;
          if (total.errors.size() < 5) total.errors.push_back(status.ToString());
        } else if (tokens != 24) {
          ++total.short_streams;
        } else {
          ++total.completed;
        }
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  return total;
}

// A rolling update under load: 16 streams through round_robin over two replicas; one is
// sent SIGTERM mid-load (it drains) and its replacement starts on its address. No
// request fails and every stream delivers all its tokens.
TEST_F(ReplicasTest, ARollingUpdateUnderLoadFailsNoRequest) {
  std::unique_ptr<testing::ServerProcess> a = StartTrainingReplica("a", {"--drain-seconds", "30"});
  std::unique_ptr<testing::ServerProcess> b = StartTrainingReplica("b", {"--drain-seconds", "30"});
  ASSERT_TRUE(a != nullptr && b != nullptr);
  ASSERT_TRUE(a->Client(kKey)->CreateVector(kModel, "calm", VectorFile(1)).ok());
  const std::string a_address = a->address();
  const std::string address = absl::StrCat(a_address, ",", b->address());
  std::atomic<bool> stop{false};
  LoadResult result;
  std::thread load([&] { result = RunLoad(address, kKey, 16, stop, "calm@1"); });
  absl::SleepFor(absl::Seconds(2));
  a->Signal(SIGTERM);
  absl::StatusOr<int> exited = a->Wait(absl::Seconds(60));
  ASSERT_TRUE(exited.ok()) << exited.status();
  EXPECT_EQ(*exited, 0) << a->output();
  // The replacement takes the old one's address, as a new pod takes its place.
  testing::ServerProcess::Options replacement;
  replacement.data_dir = testing::MakeTempDir("replica_c");
  replacement.listen = a_address;
  replacement.args = {"--store", url_, "--replica-id", "c", "--tenants", tenants_,
                      "--threads", "1"};
  auto c = testing::ServerProcess::Start(replacement);
  ASSERT_TRUE(c.ok()) << c.status();
  absl::SleepFor(absl::Seconds(3));
  stop = true;
  load.join();
  EXPECT_EQ(result.failed, 0) << absl::StrJoin(result.errors, "\n");
  EXPECT_EQ(result.short_streams, 0);
  EXPECT_GT(result.completed, 16);
  // The replacement served some of the load.
  EXPECT_GT(
      testing::MetricSum((*c)->ScrapeMetrics(), "steerd_generated_tokens_total").value_or(0), 0)
      << "no request reached the replacement";
}

// PostgreSQL stopped for 10 s under load: calls that need the store fail UNAVAILABLE
// within their deadline, generation with resident vectors goes on, and after the
// restart every replica serves writes again without being restarted.
TEST_F(ReplicasTest, AStoreOutageFailsStoreCallsFastAndGenerationGoesOn) {
  absl::StatusOr<std::unique_ptr<testing::PostgresServer>> postgres =
      testing::PostgresServer::Start();
  ASSERT_TRUE(postgres.ok()) << postgres.status();
  absl::StatusOr<std::string> url = (*postgres)->CreateDatabase("outage");
  ASSERT_TRUE(url.ok()) << url.status();
  url_ = *url;
  std::unique_ptr<testing::ServerProcess> a = StartTrainingReplica("a");
  std::unique_ptr<testing::ServerProcess> b = StartTrainingReplica("b");
  ASSERT_TRUE(a != nullptr && b != nullptr);
  auto on_a = a->Client(kKey);
  auto on_b = b->Client(kKey);
  ASSERT_TRUE(on_a->CreateVector(kModel, "calm", VectorFile(1)).ok());
  // Resident on both (by name and by number).
  ASSERT_TRUE(on_a->Generate(Request("calm")).ok());
  ASSERT_TRUE(on_b->Generate(Request("calm@1")).ok());
  const std::string address = absl::StrCat(a->address(), ",", b->address());
  std::atomic<bool> stop{false};
  LoadResult result;
  std::thread load([&] { result = RunLoad(address, kKey, 8, stop, "calm"); });

  ASSERT_TRUE((*postgres)->Stop().ok());
  const absl::Time stopped = absl::Now();
  client::ClientOptions options;
  options.address = b->address();
  options.api_key = kKey;
  options.timeout = absl::Seconds(5);
  auto short_deadline = client::SteerdClient::Create(options);
  ASSERT_TRUE(short_deadline.ok());
  int unavailable = 0;
  while (absl::Now() - stopped < absl::Seconds(10)) {
    const absl::Time call = absl::Now();
    const absl::Status write =
        (*short_deadline)->CreateVector(kModel, "during", VectorFile(2)).status();
    EXPECT_LT(absl::Now() - call, absl::Seconds(5)) << write;
    EXPECT_EQ(write.code(), absl::StatusCode::kUnavailable) << write;
    unavailable += write.code() == absl::StatusCode::kUnavailable ? 1 : 0;
    absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_GT(unavailable, 0);
  ASSERT_TRUE((*postgres)->Restart().ok());
  // Writes work again on both, without a restart of either.
  for (auto* client : {on_a.get(), on_b.get()}) {
    absl::Status written = absl::UnavailableError("not yet");
    const absl::Time back = absl::Now();
    while (!written.ok() && absl::Now() - back < absl::Seconds(20)) {
      written = client->CreateVector(kModel, "after", VectorFile(3)).status();
      if (!written.ok()) absl::SleepFor(absl::Milliseconds(200));
    }
    EXPECT_TRUE(written.ok()) << written;
  }
  stop = true;
  load.join();
  // Generation with the resident vector went on through the outage.
  EXPECT_EQ(result.failed, 0) << absl::StrJoin(result.errors, "\n");
  EXPECT_GT(result.completed, 8);
}

// NOTIFY keeps nothing across a disconnect: with every LISTEN connection killed, and
// then with PostgreSQL restarted, no new version and no deletion is missed by a replica
// that held the old answers in memory.
TEST_F(ReplicasTest, NoChangeIsMissedWhenListenersDieOrPostgresRestarts) {
  absl::StatusOr<std::unique_ptr<testing::PostgresServer>> postgres =
      testing::PostgresServer::Start();
  ASSERT_TRUE(postgres.ok()) << postgres.status();
  absl::StatusOr<std::string> url = (*postgres)->CreateDatabase("feed");
  ASSERT_TRUE(url.ok()) << url.status();
  url_ = *url;
  std::unique_ptr<testing::ServerProcess> a = StartReplica("a");
  std::unique_ptr<testing::ServerProcess> b = StartReplica("b");
  ASSERT_TRUE(a != nullptr && b != nullptr);
  auto on_a = a->Client();
  auto on_b = b->Client();
  ASSERT_TRUE(on_a->CreateVector(kModel, "calm", VectorFile(1)).ok());
  ASSERT_EQ(on_b->Generate(Request("calm"))->vector().version(), 1);
  // Waits (up to 10 s) until B answers as `check` wants.
  auto b_sees = [&](const std::function<bool()>& check) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!check() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(50));
    return check();
  };
  auto b_latest_is = [&](int64_t version) {
    return [&, version] {
      auto generated = on_b->Generate(Request("calm"));
      return generated.ok() && generated->vector().version() == version;
    };
  };

  ASSERT_TRUE((*postgres)
                  ->Exec("feed",
                         "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE pid <> pg_backend_pid() AND query LIKE 'LISTEN%'")
                  .ok());
  ASSERT_TRUE(on_a->CreateVector(kModel, "calm", VectorFile(2)).ok());
  EXPECT_TRUE(b_sees(b_latest_is(2))) << "the version created while B's listener was down";

  ASSERT_TRUE((*postgres)->Stop().ok());
  ASSERT_TRUE((*postgres)->Restart().ok());
  absl::Status deleted = absl::UnavailableError("not yet");
  for (int attempt = 0; attempt < 100 && !deleted.ok(); ++attempt) {
    deleted = on_a->DeleteVector("calm@2").status();
    if (!deleted.ok()) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(deleted.ok()) << deleted;
  EXPECT_TRUE(b_sees([&] {
    return on_b->Generate(Request("calm@2")).status().code() == absl::StatusCode::kNotFound;
  })) << "the deletion right after the restart";
  EXPECT_TRUE(b_sees(b_latest_is(1)));
  ASSERT_TRUE(on_a->CreateVector(kModel, "calm", VectorFile(3)).ok());
  EXPECT_TRUE(b_sees(b_latest_is(3)));
}

// 30 jobs created through three replicas: each runs exactly once, every RUNNING job
// always has a live lease, and each publishes exactly one version.
TEST_F(ReplicasTest, JobsQueuedAcrossThreeReplicasEachRunExactlyOnce) {
  std::vector<std::unique_ptr<testing::ServerProcess>> replicas;
  for (const char* id : {"a", "b", "c"}) {
    replicas.push_back(StartTrainingReplica(id, {"--max-training-jobs", "2"}));
    ASSERT_NE(replicas.back(), nullptr);
  }
  constexpr int kJobs = 30;
  std::vector<std::string> ids;
  for (int i = 0; i < kJobs; ++i) {
    auto job = replicas[i % 3]->Client(kKey)->CreateJob(QuickJob(absl::StrCat("j", i), 2));
    ASSERT_TRUE(job.ok()) << job.status();
    ids.push_back(job->id());
  }
  auto watcher = replicas[0]->Client(kKey);
  std::set<std::string> ran_on;
  int samples = 0;
  for (const std::string& id : ids) {
    // Meanwhile: no job is RUNNING without a live lease.
    EXPECT_THAT(Query("SELECT id FROM jobs WHERE state = 'RUNNING' AND "
                      "(lease_until IS NULL OR lease_until < now())"),
                ::testing::IsEmpty());
    ++samples;
    auto ended = WaitForJob(*watcher, id, absl::Seconds(180), Ended);
    ASSERT_TRUE(ended.ok()) << ended.status();
    EXPECT_EQ(ended->state(), v1::Job::STATE_SUCCEEDED) << ended->error().ShortDebugString();
    EXPECT_FALSE(ended->replica().empty());
    ran_on.insert(ended->replica());
  }
  EXPECT_GE(samples, kJobs);
  EXPECT_GE(ran_on.size(), 2u) << "the jobs were shared out";
  // Exactly one vector version per job, and each job claimed once (nobody's lease expired).
  EXPECT_THAT(Query("SELECT count(*), count(DISTINCT job_id) FROM vectors WHERE job_id <> ''"),
              ::testing::ElementsAre(absl::StrCat(kJobs, "|", kJobs)));
  EXPECT_THAT(Query("SELECT count(*) FROM jobs WHERE attempts <> 1"),
              ::testing::ElementsAre("0"));
}

// kill -9 of the replica running a job: another resumes it from its checkpoint within
// the lease's ttl + 5 s, it succeeds, and exactly one version carries its id.
TEST_F(ReplicasTest, AJobWhoseReplicaIsKilledIsResumedByAnotherFromItsCheckpoint) {
  RunningJob running;
  ASSERT_NO_FATAL_FAILURE(StartJobOnTwoReplicas("survivor", "a", 5, &running));
  const int checkpointed = std::stoi(Query(absl::StrCat(
      "SELECT step FROM job_checkpoints WHERE job_id = '", running.id, "'"))[0]);
  EXPECT_GE(checkpointed, 2);

  running.replicas[running.holder]->Signal(SIGKILL);
  const absl::Time killed = absl::Now();
  auto client = running.replicas[running.peer]->Client(kKey);
  auto resumed = WaitForJob(*client, running.id, absl::Seconds(2) + absl::Seconds(5),
                            TakenOverBy(running.peer));
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_LT(absl::Now() - killed, absl::Seconds(7));
  EXPECT_GE(resumed->progress().step(), checkpointed) << "resumed from its checkpoint, not 0";
  ExpectSucceededOnceOn(*client, running.id, running.peer);
}

// SIGTERM of the holder: it checkpoints and hands the lease back as it drains, so the
// peer resumes the job at once, long before the lease (30 s here) could expire.
TEST_F(ReplicasTest, ADrainingReplicaHandsItsJobToAPeerAtOnce) {
  RunningJob running;
  ASSERT_NO_FATAL_FAILURE(
      StartJobOnTwoReplicas("handed", "a", 3, &running, {"--job-lease-ttl", "30s"}));
  testing::ServerProcess& holder = *running.replicas[running.holder];
  holder.Signal(SIGTERM);
  const absl::Time drained = absl::Now();
  auto client = running.replicas[running.peer]->Client(kKey);
  auto resumed = WaitForJob(*client, running.id, absl::Seconds(20),
                            TakenOverBy(running.peer));
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_LT(absl::Now() - drained, absl::Seconds(15)) << "the lease was handed back";
  absl::StatusOr<int> exited = holder.Wait(absl::Seconds(60));
  ASSERT_TRUE(exited.ok()) << exited.status();
  EXPECT_EQ(*exited, 0);
  ExpectSucceededOnceOn(*client, running.id, running.peer);
  // Handing back is not a failed attempt.
  EXPECT_THAT(Query(absl::StrCat("SELECT attempts FROM jobs WHERE id = '", running.id, "'")),
              ::testing::ElementsAre("1"));
}

// A lease holder frozen (SIGSTOP) past its ttl: a peer takes the job over; thawed
// (SIGCONT), the old holder finds its lease gone and writes nothing more.
TEST_F(ReplicasTest, AFrozenHolderThatLostItsLeaseWritesNothing) {
  RunningJob running;
  ASSERT_NO_FATAL_FAILURE(StartJobOnTwoReplicas("frozen", "b", 3, &running));
  testing::ServerProcess& holder = *running.replicas[running.holder];
  holder.Signal(SIGSTOP);
  auto client = running.replicas[running.peer]->Client(kKey);
  auto taken = WaitForJob(*client, running.id, absl::Seconds(10),
                          TakenOverBy(running.peer));
  holder.Signal(SIGCONT);
  ASSERT_TRUE(taken.ok()) << taken.status();
  // Thawed, it learns at its first renewal (or fenced write) that the job is gone and
  // drops it; the store refuses anything it still tries to write (job_store_test's
  // fencing cases), so the job ends once, by the peer, with one version.
  EXPECT_TRUE(holder.WaitForOutput("lease lost", absl::Seconds(20))) << holder.output();
  ExpectSucceededOnceOn(*client, running.id, running.peer);
  EXPECT_TRUE(holder.Client(kKey)->Generate(Request("")).ok()) << "and it still serves";
}

}  // namespace
}  // namespace steerd
