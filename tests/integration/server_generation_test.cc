// The server's generations against the offline generator, over gRPC to the composed
// server in this process (tests/testing/in_process_server.h): concurrent streams with different vectors (and none) sharing batches must
// give, token for token, what `steerd generate` gives for each alone; and versions
// published and deleted while streams run must never fail a request or mix versions.
#include <ATen/ATen.h>

#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/steerd_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/model/generator.h"
#include "server/model/safetensors.h"
#include "server/model/tokenizer.h"
#include "server/model/transformer.h"
#include "tests/testing/in_process_server.h"
#include "tests/testing/server_process.h"
#include "tests/testing/subprocess.h"

namespace steerd {
namespace {

using ::steerd::testing::InProcessServer;

const std::string kModelDir = std::string(STEERD_SOURCE_DIR) + "/models/steerd-tiny";
constexpr int kLayers = 4;
constexpr int kHidden = 192;
constexpr int kMaxNewTokens = 40;

const std::vector<std::string> kPrompts = {
    "Q: (12+7)*3-5\nA:", "Q: 6*6*2+4+5\nA:", "Q: 17+25-9 (show the steps)\nA:",
    "Q: 9*8-40\nA:",     "Q: 3+4*5 (in words)\nA:", "Q: 100-37+8\nA:",
    "Q: (5+5)*(6-2)\nA:", "Q: 81-9*4 (steps, in words)\nA:", "Q: 2*3*4*5\nA:"};

bool WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  return static_cast<bool>(out);
}

// A random vector [L, d] ~ N(0, sigma^2), serialised as a steering file.
std::string RandomVectorFile(uint64_t seed, float sigma, std::vector<float>* values) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  values->resize(kLayers * kHidden);
  for (float& v : *values) v = normal(rng);
  auto bytes = SerializeSafetensors({{"steering", DType::kF32, {kLayers, kHidden}, values->data()}},
                                    {{"format", "steerd.steering.v1"}});
  return bytes.ok() ? *bytes : "";
}

v1::GenerateRequest Request(const std::string& prompt, const std::string& vector) {
  v1::GenerateRequest request;
  request.set_model("steerd-tiny");
  request.set_prompt(prompt);
  request.mutable_sampling()->set_max_new_tokens(kMaxNewTokens);
  if (!vector.empty()) request.mutable_steering()->set_vector(vector);
  return request;
}

struct Expected {
  std::vector<int32_t> ids;
  std::string text;
};

// What `steerd generate` prints for the prompt and vector file (greedy).
Expected OfflineCli(const std::string& prompt, const std::string& vector_path) {
  std::vector<std::string> args = {"generate", "--model", kModelDir, "--prompt", prompt,
                                   "--max-new-tokens", absl::StrCat(kMaxNewTokens), "--json"};
  if (!vector_path.empty()) {
    args.push_back("--steering");
    args.push_back(vector_path);
  }
  auto run = steerd::testing::RunShellCommand(
      steerd::testing::ShellCommand(std::string(STEERD_BINARY_DIR) + "/bin/steerd", args));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  const auto json = nlohmann::json::parse(run.out);
  return {json["ids"].get<std::vector<int32_t>>(), json["text"].get<std::string>()};
}

// The value of one sample line of a Prometheus exposition ("name{labels} value").
double MetricValue(const std::string& metrics, const std::string& sample) {
  const size_t at = metrics.find(sample + " ");
  if (at == std::string::npos) return -1.0;
  return std::stod(metrics.substr(at + sample.size() + 1));
}

// Streams one request and folds the chunks.
absl::StatusOr<v1::GenerateResponse> Stream(client::SteerdClient& client,
                                            const v1::GenerateRequest& request) {
  v1::GenerateResponse response;
  absl::Status status = client.GenerateStream(request, [&](const v1::GenerateChunk& chunk) {
    client::AppendChunk(chunk, &response);
    return true;
  });
  if (!status.ok()) return status;
  return response;
}

class ServerGenerationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_dir_ = new std::string(steerd::testing::MakeTempDir("steerd-gen"));
    InProcessServer::Options options;
    options.data_dir = *data_dir_;
    options.core.max_batch_size = 64;
    auto server = InProcessServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr); }

  static InProcessServer* server_;
  static std::string* data_dir_;
};

InProcessServer* ServerGenerationTest::server_ = nullptr;
std::string* ServerGenerationTest::data_dir_ = nullptr;

// 32 concurrent streams over 8 vectors and no vector, several per (prompt, vector):
// each equals the offline CLI's output for its prompt and vector.
TEST_F(ServerGenerationTest, MixedBatchMatchesOfflineGenerateTokenForToken) {
  auto client = server_->Client();
  constexpr int kVectors = 8;
  std::vector<std::string> paths(kVectors + 1);  // [kVectors] = no vector
  for (int v = 0; v < kVectors; ++v) {
    std::vector<float> values;
    const std::string bytes = RandomVectorFile(100 + v, 0.4f + 0.1f * v, &values);
    paths[v] = absl::StrCat(*data_dir_, "/mixed-", v, ".safetensors");
    ASSERT_TRUE(WriteFile(paths[v], bytes));
    auto created = client->CreateVector("steerd-tiny", absl::StrCat("mixed-", v), bytes);
    ASSERT_TRUE(created.ok()) << created.status();
    EXPECT_EQ(created->version(), 1);
  }
  // One (prompt, vector) combination per vector setting; the offline reference for it.
  std::vector<Expected> expected(kVectors + 1);
  for (int v = 0; v <= kVectors; ++v) expected[v] = OfflineCli(kPrompts[v], paths[v]);
  int differs_from_base = 0;
  for (int v = 0; v < kVectors; ++v) differs_from_base += expected[v].ids != expected[kVectors].ids;
  // The vectors must matter, or the comparison proves nothing about steering.
  EXPECT_GE(differs_from_base, 6);

  constexpr int kStreams = 32;
  std::vector<absl::StatusOr<v1::GenerateResponse>> got(kStreams, absl::UnknownError("unset"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      const int v = i % (kVectors + 1);
      got[i] = Stream(*client, Request(kPrompts[v], v < kVectors ? absl::StrCat("mixed-", v) : ""));
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    const int v = i % (kVectors + 1);
    ASSERT_TRUE(got[i].ok()) << "stream " << i << ": " << got[i].status();
    EXPECT_EQ(std::vector<int32_t>(got[i]->token_ids().begin(), got[i]->token_ids().end()),
              expected[v].ids)
        << "stream " << i << " (vector " << v << ")";
    EXPECT_EQ(got[i]->text(), expected[v].text) << "stream " << i;
    if (v < kVectors) {
      EXPECT_EQ(got[i]->vector().name(), absl::StrCat("mixed-", v));
      EXPECT_EQ(got[i]->vector().version(), 1);
    } else {
      EXPECT_FALSE(got[i]->has_vector());
    }
    EXPECT_EQ(got[i]->usage().completion_tokens(), got[i]->token_ids_size());
  }
  // The streams really shared batches: some decode steps ran more than 16 rows.
  const std::string metrics = server_->ScrapeMetrics();
  const double steps = MetricValue(metrics, "steerd_batch_size_count{model=\"steerd-tiny\"}");
  const double small = MetricValue(metrics, "steerd_batch_size_bucket{model=\"steerd-tiny\",le=\"16\"}");
  ASSERT_GT(steps, 0.0) << metrics;
  ASSERT_GE(small, 0.0) << metrics;
  EXPECT_GT(steps - small, 0.0) << metrics;
}

// While 32 streams generate with "hot" (the latest version at admission), 20 new
// versions are published and older ones deleted. No request fails; each reports the
// version it used and equals the offline output of that version.
TEST_F(ServerGenerationTest, HotSwapUnderLoadKeepsEachRequestOnItsVersion) {
  auto client = server_->Client();
  // Offline reference generator, in this process (the code path of `steerd generate`).
  Transformer::Options options;
  options.model_dir = kModelDir;
  options.device = "cpu";
  auto model = Transformer::Create(options);
  ASSERT_TRUE(model.ok()) << model.status();
  auto tokenizer = Tokenizer::Load(kModelDir);
  ASSERT_TRUE(tokenizer.ok());
  Generator offline(model->get(), tokenizer->get());
  const std::string prompt = kPrompts[0];
  auto prompt_ids = (*tokenizer)->Encode(prompt, /*add_special_tokens=*/true);
  ASSERT_TRUE(prompt_ids.ok());

  constexpr int kVersions = 21;  // Version 1, then 20 published under load.
  std::vector<std::string> files(kVersions + 1);
  std::vector<std::vector<int32_t>> expected(kVersions + 1);
  for (int version = 1; version <= kVersions; ++version) {
    std::vector<float> values;
    files[version] = RandomVectorFile(1000 + version, 0.8f, &values);
    GenerationRequest request;
    request.prompt = *prompt_ids;
    request.max_new_tokens = kMaxNewTokens;
    request.steering = at::from_blob(values.data(), {kLayers, kHidden}, at::kFloat).clone();
    auto result = offline.Generate({request});
    ASSERT_TRUE(result.ok()) << result.status();
    expected[version] = (*result)[0].tokens;
  }
  ASSERT_TRUE(client->CreateVector("steerd-tiny", "hot", files[1]).ok());

  std::atomic<bool> publishing{true};
  absl::Mutex mu;
  std::vector<std::pair<int64_t, std::vector<int32_t>>> results;  // (version, ids)
  std::vector<std::string> failures;
  std::vector<std::thread> streams;
  for (int i = 0; i < 32; ++i) {
    streams.emplace_back([&] {
      // Keep streaming until the publisher is done, then one last request.
      bool last = false;
      while (!last) {
        last = !publishing.load();
        auto response = Stream(*client, Request(prompt, "hot"));
        absl::MutexLock lock(&mu);
        if (!response.ok()) {
          failures.push_back(response.status().ToString());
          continue;
        }
        results.push_back({response->vector().version(),
                           {response->token_ids().begin(), response->token_ids().end()}});
      }
    });
  }
  for (int version = 2; version <= kVersions; ++version) {
    auto created = client->CreateVector("steerd-tiny", "hot", files[version]);
    ASSERT_TRUE(created.ok()) << created.status();
    ASSERT_EQ(created->version(), version);
    // Old versions go away while requests that resolved them may still run.
    if (version >= 3) {
      ASSERT_TRUE(client->DeleteVector(absl::StrCat("hot@", version - 2)).ok());
    }
    // Let some requests be admitted with this version before the next one.
    absl::MutexLock lock(&mu);
    const size_t seen = results.size();
    auto progressed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return results.size() >= seen + 8; };
    mu.AwaitWithTimeout(absl::Condition(&progressed), absl::Seconds(30));
  }
  publishing.store(false);
  for (auto& t : streams) t.join();

  EXPECT_THAT(failures, ::testing::IsEmpty());
  std::set<int64_t> versions_seen;
  for (const auto& [version, ids] : results) {
    ASSERT_GE(version, 1);
    ASSERT_LE(version, kVersions);
    versions_seen.insert(version);
    EXPECT_EQ(ids, expected[version]) << "a request reporting version " << version;
  }
  // Requests ran on many versions, the newest included.
  EXPECT_GE(versions_seen.size(), 10u);
  EXPECT_EQ(versions_seen.count(kVersions), 1u);
}

}  // namespace
}  // namespace steerd
