// The resident vector cache: least recently used unused vectors go first, vectors a
// request holds are never evicted, a miss calls the loader and a hit does not.
// The serving engine on the embedded default model, driven directly (no gRPC): a row
// whose logits turn non-finite fails alone while its batch neighbour gets the tokens
// it gets alone; a full queue refuses at once; a cancelled row leaves before the next
// decode step; background rows stay within their cap while serving rows run; the
// KV-cache use gauge counts the blocks held (0 idle, exact while rows run, 0 after);
// drain ends what is left; rollouts of one prompt share its prefill through the prefix
// cache; a request the KV cache could never hold is refused at once. Observers that
// block on the engine thread hold it between steps, which makes each scenario
// deterministic without timing.
#include "server/engine/engine.h"
#include "server/engine/metrics.h"
#include "server/engine/vector_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "server/model/generator.h"
#include "server/model/tokenizer.h"
#include "server/model/transformer.h"

namespace steerd {
namespace {

using ::testing::HasSubstr;

// Records one request's output. `hold` (optional) blocks the engine thread in the first
// OnTokens until it is notified.
class RecordingObserver : public GenerationObserver {
 public:
  explicit RecordingObserver(absl::Notification* hold = nullptr) : hold_(hold) {}
  void OnAdmitted(const AdmittedGeneration&) override {}
  void OnTokens(TokenDelta delta) override {
    {
      absl::MutexLock lock(&mu_);
      for (int32_t id : delta.token_ids) tokens_.push_back(id);
      if (on_tokens_) on_tokens_();
    }
    if (!first_tokens_.HasBeenNotified()) first_tokens_.Notify();
    if (hold_ != nullptr) hold_->WaitForNotification();
  }
  void OnFinished(const GenerationSummary& summary) override {
    {
      absl::MutexLock lock(&mu_);
      summary_ = summary;
      if (on_finished_) on_finished_();
    }
    done_.Notify();
  }
  GenerationSummary Wait() {
    done_.WaitForNotification();
    absl::MutexLock lock(&mu_);
    return summary_;
  }
  void WaitForFirstTokens() { first_tokens_.WaitForNotification(); }
  std::vector<int32_t> tokens() {
    absl::MutexLock lock(&mu_);
    return tokens_;
  }
  // Hooks run on the engine thread (tests keep counts with them).
  void SetHooks(std::function<void()> on_tokens, std::function<void()> on_finished) {
    absl::MutexLock lock(&mu_);
    on_tokens_ = std::move(on_tokens);
    on_finished_ = std::move(on_finished);
  }

 private:
  absl::Notification* hold_;
  absl::Notification first_tokens_;
  absl::Notification done_;
  absl::Mutex mu_;
  std::vector<int32_t> tokens_ ABSL_GUARDED_BY(mu_);
  GenerationSummary summary_ ABSL_GUARDED_BY(mu_);
  std::function<void()> on_tokens_ ABSL_GUARDED_BY(mu_);
  std::function<void()> on_finished_ ABSL_GUARDED_BY(mu_);
};

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = std::string(STEERD_SOURCE_DIR) + "/models/steerd-tiny";
    Transformer::Options options;
    options.model_dir = dir;
    options.num_threads = 1;
    auto model = Transformer::Create(options);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    auto tokenizer = Tokenizer::Load(dir);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tokenizer_;
  }

  std::unique_ptr<Engine> NewEngine(Engine::Options options = {}) {
    auto engine = Engine::Create(options, model_, tokenizer_, ModelMetrics());
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? std::move(*engine) : nullptr;
  }

  static GenerationRequest Request(const std::string& prompt, int64_t max_new_tokens,
                                   SamplingParams sampling = {}) {
    GenerationRequest r;
    auto ids = tokenizer_->Encode(prompt);
    EXPECT_TRUE(ids.ok());
    r.prompt = *ids;
    r.max_new_tokens = max_new_tokens;
    r.sampling = sampling;
    r.ignore_eos = true;
    return r;
  }

  static EngineRequest Submittable(GenerationRequest generation,
                                   std::shared_ptr<GenerationObserver> observer) {
    EngineRequest request;
    request.generation = std::move(generation);
    request.observer = std::move(observer);
    return request;
  }

  static std::shared_ptr<const ResidentVector> Vector(float value) {
    auto vector = std::make_shared<ResidentVector>();
    vector->sha256 = "test";
    vector->vector = at::full({model_->config().num_layers, model_->config().hidden_size},
                              value, at::TensorOptions().dtype(model_->dtype()));  // [L, d]
    return vector;
  }

  static Transformer* model_;
  static Tokenizer* tokenizer_;
};

Transformer* EngineTest::model_ = nullptr;
Tokenizer* EngineTest::tokenizer_ = nullptr;

// Before the fix the huge vector with top-k crashed the process (SIGSEGV), and with
// top-p returned status OK with token 0 repeated.
TEST_F(EngineTest, NonFiniteLogitsFailTheirRequestOnlyAndTheNeighbourIsExact) {
  const GenerationRequest plain = Request("Q: 6*6*2+4+5\nA:", 24);
  Generator generator(model_, tokenizer_);
  auto alone = generator.Generate({plain});
  ASSERT_TRUE(alone.ok()) << alone.status();

  for (SamplingParams sampling : {SamplingParams{0.7, 1.0, 5, 1}, SamplingParams{0.7, 0.9, 0, 1},
                                  SamplingParams{0.0, 1.0, 0, 0}}) {
    auto engine = NewEngine();
    // A first request holds the engine after its first token, so the next two are
    // prefilled together: one forward pass computes both rows.
    absl::Notification release;
    auto blocker = std::make_shared<RecordingObserver>(&release);
    ASSERT_TRUE(engine->Submit(Submittable(Request("Q: 2+3\nA:", 2), blocker)).ok());
    blocker->WaitForFirstTokens();
    auto plain_observer = std::make_shared<RecordingObserver>();
    ASSERT_TRUE(engine->Submit(Submittable(plain, plain_observer)).ok());
    auto huge_observer = std::make_shared<RecordingObserver>();
    EngineRequest huge = Submittable(Request("Q: 1+1\nA:", 8, sampling), huge_observer);
    huge.vector = Vector(3e38f);
    huge.steering_scale = 100.0;
    ASSERT_TRUE(engine->Submit(std::move(huge)).ok());
    release.Notify();

    const GenerationSummary failed = huge_observer->Wait();
    EXPECT_EQ(failed.status.code(), absl::StatusCode::kInvalidArgument) << failed.status;
    EXPECT_THAT(std::string(failed.status.message()), HasSubstr("NaN or infinite"));
    EXPECT_TRUE(huge_observer->tokens().empty());
    const GenerationSummary ok = plain_observer->Wait();
    EXPECT_TRUE(ok.status.ok()) << ok.status;
    EXPECT_EQ(plain_observer->tokens(), (*alone)[0].tokens);
    EXPECT_TRUE(blocker->Wait().status.ok());
  }
}

TEST_F(EngineTest, AFullQueueRefusesAtOnce) {
  Engine::Options options;
  options.max_waiting = 2;
  options.max_batch_size = 1;  // The held request keeps the only row.
  auto engine = NewEngine(options);
  absl::Notification release;
  auto holder = std::make_shared<RecordingObserver>(&release);
  ASSERT_TRUE(engine->Submit(Submittable(Request("Q: 1+2\nA:", 4), holder)).ok());
  holder->WaitForFirstTokens();
  std::vector<std::shared_ptr<RecordingObserver>> queued;
  for (int i = 0; i < 2; ++i) {
    queued.push_back(std::make_shared<RecordingObserver>());
    ASSERT_TRUE(engine->Submit(Submittable(Request("Q: 3+4\nA:", 2), queued.back())).ok());
  }
  EXPECT_EQ(engine->waiting(), 2);
  auto refused = engine->Submit(Submittable(Request("Q: 5+6\nA:", 2),
                                            std::make_shared<RecordingObserver>()));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("max_waiting"));
  release.Notify();
  EXPECT_TRUE(holder->Wait().status.ok());
  for (auto& observer : queued) EXPECT_TRUE(observer->Wait().status.ok());
}

TEST_F(EngineTest, ACancelledRowLeavesBeforeTheNextStep) {
  auto engine = NewEngine();
  absl::Notification release;
  auto observer = std::make_shared<RecordingObserver>(&release);
  auto handle = engine->Submit(Submittable(Request("Q: 9*9\nA:", 100), observer));
  ASSERT_TRUE(handle.ok());
  observer->WaitForFirstTokens();
  (*handle)->Cancel();
  release.Notify();
  const GenerationSummary summary = observer->Wait();
  EXPECT_EQ(summary.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(summary.completion_tokens, 1);
}

TEST_F(EngineTest, BackgroundRowsStayWithinTheirCapWhileServingRuns) {
  Engine::Options options;
  options.max_background_rows = 8;
  options.min_background_rows = 2;
  auto engine = NewEngine(options);
  // Counted on the engine thread only (observer hooks).
  int running_background = 0, max_while_serving = 0, max_after = 0;
  bool serving = true;
  absl::Notification release;
  auto serving_observer = std::make_shared<RecordingObserver>(&release);
  serving_observer->SetHooks(nullptr, [&] { serving = false; });
  std::vector<std::shared_ptr<RecordingObserver>> background;
  for (int i = 0; i < 12; ++i) {
    auto observer = std::make_shared<RecordingObserver>();
    auto started = std::make_shared<bool>(false);
    observer->SetHooks(
        [&, started] {
          if (*started) return;
          *started = true;
          ++running_background;
          int& max = serving ? max_while_serving : max_after;
          max = std::max(max, running_background);
        },
        [&] { --running_background; });
    background.push_back(observer);
  }
  // The serving request holds the engine until every background request is queued.
  ASSERT_TRUE(engine->Submit(Submittable(Request("Q: 2+2\nA:", 120), serving_observer)).ok());
  serving_observer->WaitForFirstTokens();
  for (auto& observer : background) {
    EngineRequest request = Submittable(Request("Q: 1+1\nA:", 6), observer);
    request.background = true;
    ASSERT_TRUE(engine->Submit(std::move(request)).ok());
  }
  release.Notify();
  for (auto& observer : background) EXPECT_TRUE(observer->Wait().status.ok());
  EXPECT_TRUE(serving_observer->Wait().status.ok());
  // One serving row: background gets max(1, min_background_rows) = 2 rows.
  EXPECT_GE(max_while_serving, 1);
  EXPECT_LE(max_while_serving, 2);
}

TEST_F(EngineTest, KvCacheUsageIsTheBlocksHeldOverThePool) {
  ServingMetrics metrics;
  const ModelMetrics gauges = metrics.ForModel("tiny");
  Engine::Options options;
  options.max_batch_size = 4;
  options.kv_cache_blocks = 64;
  options.kv_block_size = 4;
  auto created = Engine::Create(options, model_, tokenizer_, gauges);
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Engine> engine = *std::move(created);
  EXPECT_EQ(gauges.kv_cache_usage->Value(), 0.0);  // Idle.
  EXPECT_EQ(gauges.kv_blocks_total->Value(), 64.0);

  // A first request holds the engine after its first token, so the next two are
  // prefilled together.
  absl::Notification release;
  auto blocker = std::make_shared<RecordingObserver>(&release);
  ASSERT_TRUE(engine->Submit(Submittable(Request("Q: 2+3\nA:", 2), blocker)).ok());
  blocker->WaitForFirstTokens();
  const GenerationRequest short_request = Request("Q: 1\nA:", 6);
  const GenerationRequest long_request = Request("Q: 12+34*56-78*9\nA:", 6);
  ASSERT_LT(short_request.prompt.size(), long_request.prompt.size());
  auto short_observer = std::make_shared<RecordingObserver>();
  auto long_observer = std::make_shared<RecordingObserver>();
  std::vector<double> seen;  // At each token of the long request (engine thread only).
  long_observer->SetHooks([&] { seen.push_back(gauges.kv_cache_usage->Value()); }, nullptr);
  ASSERT_TRUE(engine->Submit(Submittable(short_request, short_observer)).ok());
  ASSERT_TRUE(engine->Submit(Submittable(long_request, long_observer)).ok());
  release.Notify();
  EXPECT_TRUE(blocker->Wait().status.ok());
  EXPECT_TRUE(short_observer->Wait().status.ok());
  EXPECT_TRUE(long_observer->Wait().status.ok());

  // Token k >= 2 comes from decode step k - 1, while the gauge says what the step
  // before left: each row holds the blocks of its prompt and k - 2 tokens.
  auto blocks = [](size_t positions) { return static_cast<double>((positions + 3) / 4); };
  ASSERT_EQ(seen.size(), 6u);
  for (int k = 2; k <= 6; ++k) {
    const double held = blocks(short_request.prompt.size() + k - 2) +
                        blocks(long_request.prompt.size() + k - 2);
    EXPECT_DOUBLE_EQ(seen[k - 1], held / 64) << "token " << k;
  }

  // The finished rows left in the step that finished them: the next request, admitted
  // in a later step, finds the cache empty.
  auto next_observer = std::make_shared<RecordingObserver>();
  double at_next = -1;
  next_observer->SetHooks(
      [&] {
        if (at_next < 0) at_next = gauges.kv_cache_usage->Value();
      },
      nullptr);
  ASSERT_TRUE(engine->Submit(Submittable(Request("Q: 4+4\nA:", 1), next_observer)).ok());
  EXPECT_TRUE(next_observer->Wait().status.ok());
  EXPECT_EQ(at_next, 0.0);
}

TEST_F(EngineTest, RolloutsOfOnePromptShareItsPrefill) {
  // A training step's group: one prompt, several rollouts submitted at once. The first
  // is prefilled; the others wait one round and take its blocks from the prefix cache.
  ServingMetrics metrics;
  const ModelMetrics counters = metrics.ForModel("tiny");
  Engine::Options options;
  options.kv_block_size = 4;
  auto created = Engine::Create(options, model_, tokenizer_, counters);
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Engine> engine = *std::move(created);
  const GenerationRequest group = Request("Q: (12+7)*3-5 (show the steps)\nA:", 6);
  const int64_t cached_blocks = (static_cast<int64_t>(group.prompt.size()) - 1) / 4;
  ASSERT_GE(cached_blocks, 2);
  constexpr int kRollouts = 4;
  std::vector<std::shared_ptr<RecordingObserver>> observers;
  for (int i = 0; i < kRollouts; ++i) {
    observers.push_back(std::make_shared<RecordingObserver>());
    EngineRequest request = Submittable(group, observers.back());
    request.background = true;
    request.prefix_namespace = "job-1 step 3";
    ASSERT_TRUE(engine->Submit(std::move(request)).ok());
  }
  for (auto& observer : observers) EXPECT_TRUE(observer->Wait().status.ok());
  EXPECT_EQ(counters.prefix_cache_queried_tokens->Value(),
            static_cast<double>(kRollouts * group.prompt.size()));
  EXPECT_EQ(counters.prefix_cache_hit_tokens->Value(),
            static_cast<double>((kRollouts - 1) * cached_blocks * 4));
  for (auto& observer : observers) EXPECT_EQ(observer->tokens(), observers[0]->tokens());

  // A request of another namespace (another step's vector) finds nothing.
  auto other = std::make_shared<RecordingObserver>();
  EngineRequest request = Submittable(group, other);
  request.background = true;
  request.prefix_namespace = "job-1 step 4";
  ASSERT_TRUE(engine->Submit(std::move(request)).ok());
  EXPECT_TRUE(other->Wait().status.ok());
  EXPECT_EQ(counters.prefix_cache_hit_tokens->Value(),
            static_cast<double>((kRollouts - 1) * cached_blocks * 4));
}

TEST_F(EngineTest, ARequestTheKvCacheCannotHoldIsRefusedAtOnce) {
  Engine::Options options;
  options.kv_cache_blocks = 4;
  options.kv_block_size = 4;
  auto engine = NewEngine(options);
  ASSERT_NE(engine, nullptr);
  // 16 positions in all: a prompt plus max_new_tokens beyond them can never run.
  GenerationRequest request = Request("Q: 1+1\nA:", 16);
  auto refused = engine->Submit(Submittable(request, std::make_shared<RecordingObserver>()));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("--kv-cache-bytes"));
  // One that fits runs.
  request.max_new_tokens = 16 - static_cast<int64_t>(request.prompt.size());
  auto observer = std::make_shared<RecordingObserver>();
  ASSERT_TRUE(engine->Submit(Submittable(request, observer)).ok());
  EXPECT_TRUE(observer->Wait().status.ok());
  EXPECT_EQ(observer->tokens().size(), static_cast<size_t>(request.max_new_tokens));
}

TEST_F(EngineTest, DrainEndsWhatIsLeftAndRefusesNewWork) {
  auto engine = NewEngine();
  auto observer = std::make_shared<RecordingObserver>();
  ASSERT_TRUE(engine->Submit(Submittable(Request("Q: 7*8\nA:", 200), observer)).ok());
  observer->WaitForFirstTokens();
  engine->Drain(absl::Now());  // No time left: the row ends now, as cancelled.
  const GenerationSummary summary = observer->Wait();
  EXPECT_TRUE(summary.status.ok()) << summary.status;
  EXPECT_EQ(summary.finish_reason, FinishReason::kCancelled);
  EXPECT_LT(summary.completion_tokens, 200);
  auto refused = engine->Submit(Submittable(Request("Q: 1\nA:", 2),
                                            std::make_shared<RecordingObserver>()));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
}

class VectorCacheTest : public ::testing::Test {
 protected:
  static constexpr int64_t kLayers = 2, kHidden = 3;

  VectorCacheTest() : cache_(Options(), kLayers, kHidden, ModelMetrics()) {}

  static VectorCache::Options Options() {
    VectorCache::Options options;
    options.capacity = 2;
    return options;
  }

  // Acquires `sha`, whose values are all `value`; counts loader calls per hash.
  std::shared_ptr<const ResidentVector> Acquire(const std::string& sha, float value = 1.0f,
                                                bool* hit = nullptr) {
    auto vector = cache_.Acquire(
        sha,
        [&]() -> absl::StatusOr<std::vector<float>> {
          ++loads_[sha];
          return std::vector<float>(kLayers * kHidden, value);
        },
        hit);
    EXPECT_TRUE(vector.ok()) << vector.status();
    return vector.ok() ? *vector : nullptr;
  }

  VectorCache cache_;
  std::map<std::string, int> loads_;
};

TEST_F(VectorCacheTest, EvictsTheLeastRecentlyUsedUnusedVector) {
  Acquire("a");
  Acquire("b");
  bool hit = false;
  Acquire("a", 1.0f, &hit);  // a becomes the most recent
  EXPECT_TRUE(hit);
  Acquire("c");  // three unused, capacity 2: b, the least recent, goes
  EXPECT_EQ(cache_.resident(), 2);
  Acquire("a", 1.0f, &hit);
  EXPECT_TRUE(hit);
  Acquire("b", 1.0f, &hit);
  EXPECT_FALSE(hit);
  EXPECT_EQ(loads_["a"], 1);
  EXPECT_EQ(loads_["b"], 2);
}

TEST_F(VectorCacheTest, PinnedVectorsStayWhateverTheirAge) {
  std::shared_ptr<const ResidentVector> pinned = Acquire("pinned", 7.0f);
  for (const char* sha : {"x", "y", "z", "w"}) Acquire(sha);
  // Two unused ones plus the pinned one stay resident.
  EXPECT_EQ(cache_.resident(), 3);
  bool hit = false;
  auto again = Acquire("pinned", 0.0f, &hit);
  EXPECT_TRUE(hit);
  EXPECT_EQ(again.get(), pinned.get());  // The same resident copy, values untouched.
  EXPECT_EQ(again->vector[1][2].item<float>(), 7.0f);
  EXPECT_EQ(loads_["pinned"], 1);
  // Once released it is an ordinary unused vector, evicted when it is the oldest.
  pinned.reset();
  again.reset();
  Acquire("v");
  Acquire("u");
  EXPECT_EQ(cache_.resident(), 2);
  Acquire("pinned", 7.0f, &hit);
  EXPECT_FALSE(hit);
}

TEST_F(VectorCacheTest, ALoaderErrorOrAWrongSizeIsTheCallersError) {
  auto failed = cache_.Acquire("bad", [] () -> absl::StatusOr<std::vector<float>> {
    return absl::DataLossError("store read failed");
  });
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kDataLoss);
  auto wrong = cache_.Acquire("short", [] () -> absl::StatusOr<std::vector<float>> {
    return std::vector<float>(2, 0.0f);
  });
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(cache_.resident(), 0);
}

}  // namespace
}  // namespace steerd
