// The paged KV cache and its prefix cache as clients see them, over gRPC to the composed
// server in this process (tests/testing/in_process_server.h):
// - exactness: a conversation's later turns, which find the shared system prompt and the
//   earlier turns in the cache, generate the same tokens with the same log-probabilities
//   as on a server without a prefix cache, steered and unsteered, float32 and bf16;
// - the cache key: a prefix cached under vector v@1 at scale 1 for one tenant is never
//   used for v@2 (even with the same bytes), another vector (same bytes), another scale,
//   no vector, or another tenant; each of these would hit if the key left it out;
// - --share-prefixes lets unsteered prefixes (only) cross tenants;
// - memory pressure: with a KV cache for a few rows, 64 concurrent long requests all
//   complete, queued or preempted and recomputed, with the tokens of an unpressured run.
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/steerd_client.h"
#include "gtest/gtest.h"
#include "server/model/safetensors.h"
#include "server/tenancy/sha256.h"
#include "tests/testing/in_process_server.h"
#include "tests/testing/server_process.h"

namespace steerd {
namespace {

namespace v1 = ::steerd::v1;
using ::steerd::testing::InProcessServer;
using ::steerd::testing::MetricSum;

constexpr char kModel[] = "steerd-tiny";
constexpr int kLayers = 4;
constexpr int kHidden = 192;
constexpr char kAlphaKey[] = "sk-test-prefix-alpha-5d1c";
constexpr char kBetaKey[] = "sk-test-prefix-beta-8e07";

// A system prompt of several KV blocks (the tiny tokenizer takes a few characters per
// token), shared by every conversation.
constexpr char kSystem[] =
    "System: You are a careful calculator. Work step by step, show each intermediate "
    "result, and end with the answer alone on the last line.\n";

// A steering file [L, d] of N(0, sigma^2) values.
std::string VectorFile(uint64_t seed, float sigma = 0.3f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> values(kLayers * kHidden);
  for (float& v : values) v = normal(rng);
  auto bytes = SerializeSafetensors({{"steering", DType::kF32, {kLayers, kHidden}, values.data()}},
                                    {{"format", "steerd.steering.v1"}});
  return bytes.ok() ? *bytes : std::string();
}

v1::GenerateRequest Request(const std::string& prompt, int max_new_tokens,
                            const std::string& vector = "", float scale = 1.0f) {
  v1::GenerateRequest request;
  request.set_model(kModel);
  request.set_prompt(prompt);
  request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
  request.set_return_logprobs(true);
  if (!vector.empty()) {
    request.mutable_steering()->set_vector(vector);
    request.mutable_steering()->set_scale(scale);
  }
  return request;
}

struct ServerSetup {
  std::string dtype = "f32";
  bool prefix_caching = true;
  bool share_prefixes = false;
  int64_t kv_cache_bytes = 0;
  int64_t max_batch_size = 64;
};

// A server with tenants alpha and beta.
std::unique_ptr<InProcessServer> StartServer(const ServerSetup& setup) {
  InProcessServer::Options options;
  options.data_dir = steerd::testing::MakeTempDir("steerd-prefix") + "/data";
  options.tenants = {Tenant{"alpha", Sha256Hex(kAlphaKey), {}},
                     Tenant{"beta", Sha256Hex(kBetaKey), {}}};
  options.core.dtype = setup.dtype;
  options.core.prefix_caching = setup.prefix_caching;
  options.core.share_unsteered_prefixes = setup.share_prefixes;
  options.core.kv_cache_bytes = setup.kv_cache_bytes;
  options.core.max_batch_size = setup.max_batch_size;
  options.core.kv_block_size = 8;  // Several blocks per prompt of the tiny model.
  auto server = InProcessServer::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

double HitTokens(const InProcessServer& server) {
  return MetricSum(server.ScrapeMetrics(), "steerd_prefix_cache_tokens_total",
                   {{"result", "hit"}})
      .value_or(-1);
}

// One generation and the prompt tokens it found in the prefix cache.
struct Outcome {
  v1::GenerateResponse response;
  double hit_tokens = 0;
};

Outcome Generate(const InProcessServer& server, client::SteerdClient& client,
                 const v1::GenerateRequest& request) {
  const double before = HitTokens(server);
  auto response = client.Generate(request);
  EXPECT_TRUE(response.ok()) << response.status();
  Outcome outcome;
  if (response.ok()) outcome.response = *response;
  outcome.hit_tokens = HitTokens(server) - before;
  return outcome;
}

// Turns of two conversations that share the system prompt: each turn's prompt is the
// previous turn's prompt, its answer and a new question.
const std::vector<std::vector<std::string>> kQuestions = {
    {"Q: (12+7)*3-5\nA:", "Q: and times 2?\nA:", "Q: minus 11?\nA:"},
    {"Q: 6*6*2+4\nA:", "Q: plus 100?\nA:", "Q: halved?\nA:"}};

// Runs both conversations turn by turn; returns every turn's response in order and
// (optionally) the hit tokens of turns after the first.
std::vector<v1::GenerateResponse> Conversations(const InProcessServer& server,
                                                const std::string& vector,
                                                double* later_turn_hits = nullptr) {
  auto client = server.Client(kAlphaKey);
  std::vector<v1::GenerateResponse> responses;
  for (const auto& questions : kQuestions) {
    std::string history = kSystem;
    for (size_t turn = 0; turn < questions.size(); ++turn) {
      history += questions[turn];
      Outcome outcome = Generate(server, *client, Request(history, 12, vector));
      if (turn > 0 && later_turn_hits != nullptr) *later_turn_hits += outcome.hit_tokens;
      history += outcome.response.text() + "\n";
      responses.push_back(outcome.response);
    }
  }
  return responses;
}

class PrefixExactnessTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PrefixExactnessTest, CachedTurnsGenerateWhatAColdServerGenerates) {
  ServerSetup cold_setup;
  cold_setup.dtype = GetParam();
  cold_setup.prefix_caching = false;
  ServerSetup warm_setup = cold_setup;
  warm_setup.prefix_caching = true;
  auto cold = StartServer(cold_setup);
  auto warm = StartServer(warm_setup);
  ASSERT_NE(cold, nullptr);
  ASSERT_NE(warm, nullptr);
  const std::string file = VectorFile(7);
  for (InProcessServer* server : {cold.get(), warm.get()}) {
    ASSERT_TRUE(server->Client(kAlphaKey)->CreateVector(kModel, "calc", file).ok());
  }
  for (const std::string vector : {"", "calc"}) {
    SCOPED_TRACE(vector.empty() ? "unsteered" : "steered");
    double cold_hits = 0, warm_hits = 0;
    const auto expected = Conversations(*cold, vector, &cold_hits);
    const auto got = Conversations(*warm, vector, &warm_hits);
    EXPECT_EQ(cold_hits, 0);
    // The system prompt and the earlier turns came from the cache...
    EXPECT_GT(warm_hits, 0);
    // ... and changed nothing: the same tokens, the same log-probabilities (bits).
    ASSERT_EQ(expected.size(), got.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      SCOPED_TRACE(absl::StrCat("turn ", i));
      ASSERT_GT(expected[i].token_ids_size(), 0);
      EXPECT_EQ(std::vector<int32_t>(got[i].token_ids().begin(), got[i].token_ids().end()),
                std::vector<int32_t>(expected[i].token_ids().begin(),
                                     expected[i].token_ids().end()));
      EXPECT_EQ(std::vector<float>(got[i].logprobs().begin(), got[i].logprobs().end()),
                std::vector<float>(expected[i].logprobs().begin(), expected[i].logprobs().end()));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, PrefixExactnessTest, ::testing::Values("f32", "bf16"),
                         [](const auto& info) { return info.param; });

TEST(PrefixCacheKeyTest, APrefixIsReusedOnlyUnderItsTenantVectorVersionAndScale) {
  auto server = StartServer({});
  ASSERT_NE(server, nullptr);
  auto alpha = server->Client(kAlphaKey);
  auto beta = server->Client(kBetaKey);
  const std::string file = VectorFile(11);
  // v@1 and v@2 hold the same bytes, as do w@1 and beta's v@1: only the key's other
  // parts tell them apart.
  ASSERT_TRUE(alpha->CreateVector(kModel, "v", file).ok());
  ASSERT_TRUE(alpha->CreateVector(kModel, "v", file).ok());
  ASSERT_TRUE(alpha->CreateVector(kModel, "w", file).ok());
  ASSERT_TRUE(beta->CreateVector(kModel, "v", file).ok());
  const std::string first = std::string(kSystem) + "Q: 1+1\nA:";
  const std::string second = std::string(kSystem) + "Q: 2+2\nA:";

  // Cached under alpha, v@1, scale 1: the same prefix hits there.
  EXPECT_EQ(Generate(*server, *alpha, Request(first, 2, "v@1")).hit_tokens, 0);
  EXPECT_GT(Generate(*server, *alpha, Request(second, 2, "v@1")).hit_tokens, 0);

  struct Case {
    const char* what;
    client::SteerdClient* client;
    std::string vector;
    float scale;
  };
  const std::vector<Case> cases = {
      {"another version", alpha.get(), "v@2", 1.0f},
      {"another vector", alpha.get(), "w@1", 1.0f},
      {"another scale", alpha.get(), "v@1", 0.5f},
      {"no vector", alpha.get(), "", 1.0f},
      {"another tenant", beta.get(), "v@1", 1.0f},
      {"another tenant, unsteered", beta.get(), "", 1.0f},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    // A miss for the first request of each key, then a hit for the same key: the miss
    // is the key at work, not a cache that stopped caching.
    EXPECT_EQ(Generate(*server, *c.client, Request(first, 2, c.vector, c.scale)).hit_tokens, 0);
    EXPECT_GT(Generate(*server, *c.client, Request(second, 2, c.vector, c.scale)).hit_tokens, 0);
  }
}

TEST(PrefixCacheKeyTest, SharePrefixesLetsOnlyUnsteeredPrefixesCrossTenants) {
  ServerSetup setup;
  setup.share_prefixes = true;
  auto server = StartServer(setup);
  ASSERT_NE(server, nullptr);
  auto alpha = server->Client(kAlphaKey);
  auto beta = server->Client(kBetaKey);
  const std::string file = VectorFile(13);
  ASSERT_TRUE(alpha->CreateVector(kModel, "v", file).ok());
  ASSERT_TRUE(beta->CreateVector(kModel, "v", file).ok());
  const std::string first = std::string(kSystem) + "Q: 3+3\nA:";
  const std::string second = std::string(kSystem) + "Q: 4+4\nA:";
  EXPECT_EQ(Generate(*server, *alpha, Request(first, 2)).hit_tokens, 0);
  EXPECT_GT(Generate(*server, *beta, Request(second, 2)).hit_tokens, 0);
  EXPECT_EQ(Generate(*server, *alpha, Request(first, 2, "v@1")).hit_tokens, 0);
  EXPECT_EQ(Generate(*server, *beta, Request(second, 2, "v@1")).hit_tokens, 0);
}

TEST(KvCachePressureTest, SixtyFourLongRequestsCompleteWithTheUnpressuredTokens) {
  // Room for about three of these requests at their longest (24-token prompts plus 96
  // new tokens): the rest wait, and rows that cannot grow are preempted.
  ServerSetup small;
  small.kv_cache_bytes = 3 * 120 * (2 * kLayers * 2 /*kv heads*/ * 32 /*head dim*/ * 4);
  auto pressured = StartServer(small);
  auto roomy = StartServer({});
  ASSERT_NE(pressured, nullptr);
  ASSERT_NE(roomy, nullptr);
  constexpr int kRequests = 64;
  auto request = [](int i) {
    v1::GenerateRequest r = Request(absl::StrCat("Q: ", i, "*", i + 3, "+", 2 * i, "\nA:"), 96);
    r.set_ignore_eos(true);
    r.set_return_logprobs(false);
    return r;
  };
  auto run_all = [&](const InProcessServer& server) {
    std::vector<std::vector<int32_t>> tokens(kRequests);
    std::vector<std::thread> threads;
    for (int i = 0; i < kRequests; ++i) {
      threads.emplace_back([&, i] {
        auto client = server.Client(kAlphaKey);
        auto response = client->Generate(request(i));
        ASSERT_TRUE(response.ok()) << "request " << i << ": " << response.status();
        tokens[i].assign(response->token_ids().begin(), response->token_ids().end());
      });
    }
    for (auto& t : threads) t.join();
    return tokens;
  };
  const auto expected = run_all(*roomy);
  const auto got = run_all(*pressured);
  const std::string metrics = pressured->ScrapeMetrics();
  EXPECT_GT(MetricSum(metrics, "steerd_kv_cache_preemptions_total").value_or(0), 0)
      << "the cache was meant to be too small for the load";
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_EQ(got[i].size(), 96u) << "request " << i;
    EXPECT_EQ(got[i], expected[i]) << "request " << i;
  }
}

}  // namespace
}  // namespace steerd
