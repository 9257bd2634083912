// steerd as N replicas on one PostgreSQL, end to end: real `steerd serve` processes on a
// real throwaway PostgreSQL 15 (tests/testing/postgres_server.h), driven over gRPC with
// the client library. Store URLs and schemas at start-up, `steerd migrate`, and what
// one replica writes being served by another.
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/steerd_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "steerd/v1/generation.pb.h"
#include "server/model/safetensors.h"
#include "server/storage/postgres.h"
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

class ReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> url = testing::SharedPostgresServer().CreateDatabase(
        database_ = testing::UniqueDatabaseName("replicas"));
    ASSERT_TRUE(url.ok()) << url.status();
    url_ = *url;
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

  std::string database_;
  std::string url_;
};

TEST_F(ReplicasTest, MigrateAppliesTheSchemaOnceAndANewerSchemaIsRefused) {
  const std::string current = absl::StrCat(postgres::Database::SchemaVersion());
  const testing::ProcessRun first = RunSteerd(absl::StrCat("migrate --store ", testing::ShellQuote(url_)));
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
                             testing::MakeTempDir("newer"), " --store ", testing::ShellQuote(url_))),
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

}  // namespace
}  // namespace steerd
