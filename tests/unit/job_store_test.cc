#include "server/storage/sqlite_job_store.h"
#include "tests/testing/store_backend.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/sqlite_vector_store.h"
#include "server/util/error_details.h"

namespace steerd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// Bit-exact, except that any NaN equals any NaN: -0.0 must come back as -0.0.
bool SameDouble(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::memcmp(&a, &b, sizeof(double)) == 0;
}

bool SameOptionalDouble(const std::optional<double>& a, const std::optional<double>& b) {
  if (a.has_value() != b.has_value()) return false;
  return !a.has_value() || SameDouble(*a, *b);
}

void ExpectSameMetrics(const std::optional<JobMetrics>& a, const std::optional<JobMetrics>& b) {
  ASSERT_EQ(a.has_value(), b.has_value());
  if (!a.has_value()) return;
  EXPECT_EQ(a->step, b->step);
  EXPECT_TRUE(SameDouble(a->reward_mean, b->reward_mean))
      << a->reward_mean << " " << b->reward_mean;
  EXPECT_TRUE(SameDouble(a->accuracy, b->accuracy)) << a->accuracy << " " << b->accuracy;
  EXPECT_TRUE(SameDouble(a->loss, b->loss)) << a->loss << " " << b->loss;
  EXPECT_TRUE(SameDouble(a->tokens_per_second, b->tokens_per_second));
  EXPECT_TRUE(SameDouble(a->eta_seconds, b->eta_seconds));
  EXPECT_TRUE(SameOptionalDouble(a->eval_accuracy, b->eval_accuracy));
}

void ExpectSameSpec(const JobSpec& a, const JobSpec& b) {
  EXPECT_EQ(a.model, b.model);
  EXPECT_EQ(a.output_vector, b.output_vector);
  EXPECT_EQ(a.task, b.task);
  EXPECT_EQ(a.eval.enabled, b.eval.enabled);
  EXPECT_EQ(a.eval.split, b.eval.split);
  EXPECT_EQ(a.eval.max_examples, b.eval.max_examples);
  EXPECT_EQ(a.reward.type, b.reward.type);
  EXPECT_EQ(a.reward.pattern, b.reward.pattern);
  EXPECT_TRUE(SameOptionalDouble(a.reward.correct_reward, b.reward.correct_reward));
  EXPECT_TRUE(SameOptionalDouble(a.reward.incorrect_reward, b.reward.incorrect_reward));
  EXPECT_TRUE(SameDouble(a.reward.format_reward, b.reward.format_reward));
  EXPECT_EQ(a.algorithm, b.algorithm);
  const JobHyperparameters& x = a.hyperparameters;
  const JobHyperparameters& y = b.hyperparameters;
  EXPECT_EQ(x.steps, y.steps);
  EXPECT_EQ(x.prompts_per_step, y.prompts_per_step);
  EXPECT_EQ(x.rollouts_per_prompt, y.rollouts_per_prompt);
  EXPECT_TRUE(SameDouble(x.learning_rate, y.learning_rate)) << x.learning_rate;
  EXPECT_EQ(x.max_new_tokens, y.max_new_tokens);
  EXPECT_TRUE(SameOptionalDouble(x.temperature, y.temperature));
  EXPECT_EQ(x.seed, y.seed);
  EXPECT_EQ(x.layers, y.layers);
  EXPECT_EQ(x.eval_every, y.eval_every);
  EXPECT_TRUE(SameDouble(x.clip_epsilon, y.clip_epsilon));
  EXPECT_EQ(x.inner_epochs, y.inner_epochs);
  EXPECT_EQ(a.apply_chat_template, b.apply_chat_template);
  EXPECT_EQ(a.description, b.description);
}

void ExpectSameJob(const JobRecord& a, const JobRecord& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.tenant, b.tenant);
  ExpectSameSpec(a.spec, b.spec);
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.step, b.step);
  ExpectSameMetrics(a.metrics, b.metrics);
  // The code, the message and the details (reason, metadata) all survive.
  EXPECT_EQ(a.error.code(), b.error.code());
  EXPECT_EQ(a.error.message(), b.error.message());
  EXPECT_EQ(GetErrorDetails(a.error).has_value(), GetErrorDetails(b.error).has_value());
  if (GetErrorDetails(a.error).has_value() && GetErrorDetails(b.error).has_value()) {
    EXPECT_EQ(GetErrorDetails(a.error)->reason, GetErrorDetails(b.error)->reason);
    EXPECT_EQ(GetErrorDetails(a.error)->metadata, GetErrorDetails(b.error)->metadata);
  }
  EXPECT_EQ(a.vector_version, b.vector_version);
  EXPECT_EQ(a.create_time, b.create_time);
  EXPECT_EQ(a.start_time, b.start_time);
  EXPECT_EQ(a.end_time, b.end_time);
}

std::vector<std::string> Ids(const std::vector<JobRecord>& jobs) {
  std::vector<std::string> ids;
  for (const JobRecord& job : jobs) ids.push_back(job.id);
  return ids;
}

// A spec with every field set, optional ones included, and doubles that a lossy
// encoding would change.
JobSpec FullSpec() {
  JobSpec spec;
  spec.model = "steerd-tiny";
  spec.output_vector = "calm-é";
  spec.task = "arith";
  spec.eval.enabled = true;
  spec.eval.split = "dev";
  spec.eval.max_examples = 123;
  spec.reward.type = RewardType::kRegex;
  spec.reward.pattern = R"(\\boxed\{(-?\d+)\}\n"quoted")";
  spec.reward.correct_reward = 0.1;
  spec.reward.incorrect_reward = -0.0;
  spec.reward.format_reward = 1.0 / 3.0;
  spec.algorithm = JobAlgorithm::kGrpo;
  JobHyperparameters& h = spec.hyperparameters;
  h.steps = 2147483647;
  h.prompts_per_step = 8;
  h.rollouts_per_prompt = 4;
  h.learning_rate = 3e-4 + 1e-19;
  h.max_new_tokens = 96;
  h.temperature = std::numeric_limits<double>::denorm_min();
  h.seed = std::numeric_limits<uint64_t>::max();  // Beyond int64 and double.
  h.layers = {0, 3, 7, -1};
  h.eval_every = 10;
  h.clip_epsilon = std::numeric_limits<double>::max();
  h.inner_epochs = 2;
  spec.apply_chat_template = true;
  spec.description = "line one\nline \"two\"\t — 日本語 🚀 \\ end";
  return spec;
}

// The minimal spec a job needs; every optional field unset.
JobSpec MinimalSpec() {
  JobSpec spec;
  spec.model = "steerd-tiny";
  spec.output_vector = "v";
  spec.reward.type = RewardType::kExact;
  spec.algorithm = JobAlgorithm::kRloo;
  return spec;
}

JobMetrics FullMetrics() {
  JobMetrics metrics;
  metrics.step = 17;
  metrics.reward_mean = -0.25;
  metrics.accuracy = 0.7;
  metrics.loss = std::numeric_limits<double>::quiet_NaN();  // A diverged step.
  metrics.tokens_per_second = std::numeric_limits<double>::infinity();
  metrics.eta_seconds = -std::numeric_limits<double>::infinity();
  metrics.eval_accuracy = 0.30000000000000004;
  return metrics;
}

// The fixture of every test: a fresh store on backend(), on a location of its own.
class JobStoreTestBase : public ::testing::Test {
 protected:
  virtual testing::StoreBackend backend() const = 0;

  void SetUp() override {
    absl::StatusOr<std::unique_ptr<testing::StoreLocation>> location =
        testing::StoreLocation::ForCurrentTest(backend());
    ASSERT_TRUE(location.ok()) << location.status();
    location_ = std::move(*location);
    path_ = location_->sqlite_path();
    Open();
  }
  void TearDown() override {
    store_.reset();
    location_.reset();
  }

  std::function<absl::Time()> Clock() {
    return [this] {
      absl::MutexLock lock(&clock_mu_);
      return now_ += tick_;
    };
  }
  SqliteJobStore::Options StoreOptions() {
    SqliteJobStore::Options options;
    options.path = path_;
    options.clock = Clock();
    return options;
  }
  void Open() {
    absl::StatusOr<std::unique_ptr<JobStore>> store = location_->OpenJobStore(Clock());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  // New store objects on the same data, as after a restart.
  void Reopen() {
    store_.reset();
    location_->Close();
    Open();
  }
  // Rows of a query on the database under the store (columns joined by '|').
  std::vector<std::string> Rows(const std::string& sql) {
    absl::StatusOr<std::vector<std::string>> rows = location_->Query(sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() ? *rows : std::vector<std::string>{};
  }
  // Every later clock reading advances by `tick` (zero: all jobs at the same time).
  void SetTick(absl::Duration tick) {
    absl::MutexLock lock(&clock_mu_);
    tick_ = tick;
  }
  void Advance(absl::Duration duration) {
    absl::MutexLock lock(&clock_mu_);
    now_ += duration;
  }

  static JobRecord Job(const std::string& tenant, const std::string& id) {
    JobRecord job;
    job.id = id;
    job.tenant = tenant;
    job.spec = MinimalSpec();
    return job;  // QUEUED, create_time unset: the store's clock.
  }

  static JobDatasets Datasets(const std::string& tag) {
    JobDatasets datasets;
    datasets.train = {{"Q: " + tag + "\nA:", "1", ""}};
    return datasets;
  }

  // Creates a job with no active-jobs limit.
  void Put(const std::string& tenant, const std::string& id) {
    const absl::Status status = store_->Create(Job(tenant, id), Datasets(id), -1);
    EXPECT_TRUE(status.ok()) << status;
  }

  void SetState(const std::string& tenant, const std::string& id, JobState state) {
    absl::StatusOr<JobRecord> job = store_->Get(tenant, id);
    ASSERT_TRUE(job.ok()) << job.status();
    job->state = state;
    const absl::Status status = store_->Update(*job);
    ASSERT_TRUE(status.ok()) << status;
  }

  JobPage List(const JobListQuery& query) {
    absl::StatusOr<JobPage> page = store_->List(query);
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? *page : JobPage{};
  }

  std::unique_ptr<testing::StoreLocation> location_;
  std::string path_;  // The SQLite backend's database file.
  absl::Mutex clock_mu_;
  absl::Time now_ ABSL_GUARDED_BY(clock_mu_) = absl::FromUnixSeconds(1700000000);
  absl::Duration tick_ ABSL_GUARDED_BY(clock_mu_) = absl::Milliseconds(1) + absl::Nanoseconds(7);
  std::unique_ptr<JobStore> store_;
};

// The conformance suite: every test runs on every backend.
class JobStoreTest : public JobStoreTestBase,
                     public ::testing::WithParamInterface<testing::StoreBackend> {
 protected:
  testing::StoreBackend backend() const override { return GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(Backends, JobStoreTest,
                         testing::kEveryStoreBackend, testing::StoreBackendTestName);

// What only the SQLite file has: its schema_version rows, its query plans.
class SqliteJobStoreTest : public JobStoreTestBase {
 protected:
  testing::StoreBackend backend() const override { return testing::StoreBackend::kSqlite; }
};

TEST_P(JobStoreTest, RoundTripsAFullRecord) {
  JobRecord job = Job("acme", "job-full");
  job.spec = FullSpec();
  job.step = 0;
  job.metrics = FullMetrics();
  job.error = absl::OkStatus();
  job.vector_version = 0;
  job.create_time = absl::FromUnixNanos(1700000123456789123);
  ASSERT_TRUE(store_->Create(job, Datasets("x"), -1).ok());

  JobRecord expected = job;
  expected.create_time = absl::FromUnixMicros(1700000123456789);  // Truncated as stored.
  absl::StatusOr<JobRecord> got = store_->Get("acme", "job-full");
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameJob(*got, expected);
  // Spot checks of what a lossy encoding would get wrong.
  EXPECT_EQ(got->spec.hyperparameters.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_TRUE(std::signbit(*got->spec.reward.incorrect_reward));
  EXPECT_TRUE(std::isnan(got->metrics->loss));
  EXPECT_EQ(got->spec.hyperparameters.temperature, std::numeric_limits<double>::denorm_min());

  // Every field of the mutable part too, once set.
  JobRecord running = *got;
  running.state = JobState::kFailed;
  running.step = 41;
  running.error = WithReason(absl::ResourceExhaustedError("trainer: out of memory\n(second line)"),
                             "OUT_OF_MEMORY", {{"bytes", "123"}});
  running.vector_version = 9;
  running.start_time = absl::FromUnixNanos(1700000200000000999);
  running.end_time = absl::FromUnixNanos(-5);  // Before the epoch: rounds down.
  ASSERT_TRUE(store_->Update(running).ok());
  expected = running;
  expected.start_time = absl::FromUnixMicros(1700000200000000);
  expected.end_time = absl::FromUnixMicros(-1);
  got = store_->Get("acme", "job-full");
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameJob(*got, expected);
}

TEST_P(JobStoreTest, RoundTripsUnsetOptionals) {
  SetTick(absl::Nanoseconds(1500));  // The clock's time is truncated too.
  JobRecord job = Job("t", "job-min");
  ASSERT_TRUE(store_->Create(job, JobDatasets{}, -1).ok());
  absl::StatusOr<JobRecord> got = store_->Get("t", "job-min");
  ASSERT_TRUE(got.ok()) << got.status();
  JobRecord expected = job;
  expected.create_time = absl::FromUnixMicros(1700000000000001);  // now + 1.5 us, truncated.
  ExpectSameJob(*got, expected);
  EXPECT_FALSE(got->metrics.has_value());
  EXPECT_FALSE(got->spec.hyperparameters.seed.has_value());
  EXPECT_FALSE(got->spec.hyperparameters.temperature.has_value());
  EXPECT_FALSE(got->spec.reward.correct_reward.has_value());
  EXPECT_FALSE(got->spec.reward.incorrect_reward.has_value());
  EXPECT_THAT(got->spec.hyperparameters.layers, IsEmpty());
  EXPECT_EQ(got->start_time, absl::InfinitePast());
  EXPECT_EQ(got->end_time, absl::InfinitePast());

  // Optionals set and then unset again go back to unset.
  JobRecord updated = *got;
  updated.metrics = FullMetrics();
  updated.metrics->eval_accuracy.reset();
  updated.start_time = absl::FromUnixSeconds(1700000100);
  ASSERT_TRUE(store_->Update(updated).ok());
  got = store_->Get("t", "job-min");
  ASSERT_TRUE(got.ok());
  ExpectSameJob(*got, updated);
  updated.metrics.reset();
  updated.start_time = absl::InfinitePast();
  ASSERT_TRUE(store_->Update(updated).ok());
  got = store_->Get("t", "job-min");
  ASSERT_TRUE(got.ok());
  ExpectSameJob(*got, updated);
  // The seed survives every value, zero included (zero is not "unset").
  for (uint64_t seed : {uint64_t{0}, uint64_t{1} << 63, uint64_t{12345}}) {
    JobRecord seeded = Job("t", absl::StrCat("seed-", seed));
    seeded.spec.hyperparameters.seed = seed;
    ASSERT_TRUE(store_->Create(seeded, JobDatasets{}, -1).ok());
    EXPECT_EQ(store_->Get("t", seeded.id)->spec.hyperparameters.seed, seed);
  }
}

TEST_P(JobStoreTest, DatasetsRoundTrip) {
  JobDatasets datasets;
  datasets.train = {
      {"Q: 3+4\nA:", "7", " \\boxed{7}"},
      {"Q: «héllo» 日本語 🚀\r\nsecond line\n\nA:", "ünïcode", ""},  // Empty solution.
      {std::string("nul\0byte", 8), " spaced answer ", "multi\nline\nsolution\n"},
      {"{\"json\": \"looking\"}", "\"quoted\"", "\\"},
  };
  for (int i = 0; i < 500; ++i) {
    datasets.train.push_back({absl::StrCat("Q: ", i, "\nA:"), absl::StrCat(i), ""});
  }
  datasets.eval = {{"Q: eval\nA:", "e", "sol"}, {"Q: eval 2\nA:", "f", ""}};
  ASSERT_TRUE(store_->Create(Job("t", "job-1"), datasets, -1).ok());
  ASSERT_TRUE(store_->Create(Job("t", "job-2"), Datasets("other"), -1).ok());

  auto expect_same = [](const std::vector<train::Example>& a,
                        const std::vector<train::Example>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].prompt, b[i].prompt) << i;
      EXPECT_EQ(a[i].answer, b[i].answer) << i;
      EXPECT_EQ(a[i].solution, b[i].solution) << i;
    }
  };
  absl::StatusOr<JobDatasets> read = store_->ReadDatasets("job-1");
  ASSERT_TRUE(read.ok()) << read.status();
  expect_same(read->train, datasets.train);
  expect_same(read->eval, datasets.eval);

  read = store_->ReadDatasets("job-2");
  ASSERT_TRUE(read.ok()) << read.status();
  expect_same(read->train, Datasets("other").train);
  EXPECT_THAT(read->eval, IsEmpty()) << "a job without evaluation";

  EXPECT_EQ(store_->ReadDatasets("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadDatasets("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(JobStoreTest, UpdateChangesOnlyTheMutablePart) {
  JobRecord job = Job("t", "job-1");
  job.spec = FullSpec();
  ASSERT_TRUE(store_->Create(job, Datasets("a"), -1).ok());
  const JobRecord created = *store_->Get("t", "job-1");

  JobRecord running = created;
  running.state = JobState::kRunning;
  running.step = 3;
  running.start_time = created.create_time + absl::Seconds(2);
  running.metrics = FullMetrics();
  // Changes to the immutable part are ignored.
  running.spec.model = "another-model";
  running.spec.hyperparameters.layers = {1};
  running.create_time = absl::FromUnixSeconds(5);
  ASSERT_TRUE(store_->Update(running).ok());
  absl::StatusOr<JobRecord> got = store_->Get("t", "job-1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->state, JobState::kRunning);
  EXPECT_EQ(got->step, 3);
  EXPECT_EQ(got->start_time, running.start_time);
  EXPECT_EQ(got->end_time, absl::InfinitePast());
  ExpectSameMetrics(got->metrics, running.metrics);
  ExpectSameSpec(got->spec, FullSpec());
  EXPECT_EQ(got->create_time, created.create_time);

  JobRecord done = *got;
  done.state = JobState::kSucceeded;
  done.step = 10;
  done.vector_version = 4;
  done.end_time = done.start_time + absl::Minutes(3);
  ASSERT_TRUE(store_->Update(done).ok());
  got = store_->Get("t", "job-1");
  ASSERT_TRUE(got.ok());
  ExpectSameJob(*got, done);

  JobRecord missing = done;
  missing.id = "job-404";
  absl::Status status = store_->Update(missing);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "job \"job-404\" not found");
}

TEST_P(JobStoreTest, TenantsAreIsolated) {
  Put("alice", "job-a");
  Put("bob", "job-b");
  absl::StatusOr<JobRecord> hidden = store_->Get("alice", "job-b");
  EXPECT_EQ(hidden.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(hidden.status().message()), Not(HasSubstr("bob")));
  EXPECT_EQ(store_->Get("bob", "job-b")->tenant, "bob");

  JobListQuery query;
  query.tenant = "alice";
  EXPECT_THAT(Ids(List(query).jobs), ElementsAre("job-a"));
  query.tenant = "carol";
  EXPECT_THAT(List(query).jobs, IsEmpty());
  // Another tenant's job is no cursor either.
  query.tenant = "alice";
  query.after_id = "job-b";
  EXPECT_EQ(store_->List(query).status().code(), absl::StatusCode::kInvalidArgument);

  // Nor can another tenant update it.
  JobRecord stolen = *store_->Get("bob", "job-b");
  stolen.tenant = "alice";
  stolen.state = JobState::kCancelled;
  EXPECT_EQ(store_->Update(stolen).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Get("bob", "job-b")->state, JobState::kQueued);
}

TEST_P(JobStoreTest, ActiveJobsLimitCountsQueuedAndRunning) {
  ASSERT_TRUE(store_->Create(Job("t", "j1"), Datasets("1"), 2).ok());
  ASSERT_TRUE(store_->Create(Job("t", "j2"), Datasets("2"), 2).ok());
  SetState("t", "j2", JobState::kRunning);  // RUNNING counts as much as QUEUED.
  absl::Status over = store_->Create(Job("t", "j3"), Datasets("3"), 2);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.message()), HasSubstr("queued_jobs"));
  EXPECT_THAT(std::string(over.message()), HasSubstr("limit of 2"));
  // A refused create leaves nothing behind.
  EXPECT_EQ(store_->Get("t", "j3").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadDatasets("j3").status().code(), absl::StatusCode::kNotFound);
  // The limit is per tenant, and -1 is no limit.
  EXPECT_TRUE(store_->Create(Job("other", "o1"), Datasets("o"), 2).ok());
  EXPECT_TRUE(store_->Create(Job("other", "o2"), Datasets("o"), 2).ok());
  EXPECT_TRUE(store_->Create(Job("other", "o3"), Datasets("o"), -1).ok());

  // Finished jobs do not count, whichever way they ended.
  for (JobState end : {JobState::kSucceeded, JobState::kFailed, JobState::kCancelled}) {
    SCOPED_TRACE(static_cast<int>(end));
    SetState("t", "j1", end);
    ASSERT_TRUE(
        store_->Create(Job("t", absl::StrCat("fits-", static_cast<int>(end))), Datasets("f"), 2)
            .ok());
    EXPECT_EQ(store_->Create(Job("t", "j4"), Datasets("4"), 2).code(),
              absl::StatusCode::kResourceExhausted);
    SetState("t", absl::StrCat("fits-", static_cast<int>(end)), JobState::kCancelled);
  }
  EXPECT_EQ(store_->Create(Job("t", "j5"), Datasets("5"), 0).code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_P(JobStoreTest, DuplicateIdIsAlreadyExists) {
  JobRecord first = Job("t", "job-1");
  first.spec.description = "first";
  ASSERT_TRUE(store_->Create(first, Datasets("first"), -1).ok());
  JobRecord second = Job("t", "job-1");
  second.spec.description = "second";
  absl::Status status = store_->Create(second, Datasets("second"), -1);
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(status.message(), "job \"job-1\" already exists");
  // Ids are unique on the server, not per tenant.
  EXPECT_EQ(store_->Create(Job("u", "job-1"), Datasets("u"), -1).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->Get("t", "job-1")->spec.description, "first");
  EXPECT_EQ(store_->ReadDatasets("job-1")->train[0].prompt, "Q: first\nA:");
}

TEST_P(JobStoreTest, RejectsInvalidInput) {
  const auto invalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(store_->Create(Job("", "j"), Datasets("x"), -1).code(), invalid);
  EXPECT_EQ(store_->Create(Job("t", ""), Datasets("x"), -1).code(), invalid);
  JobRecord running = Job("t", "j");
  running.state = JobState::kRunning;
  EXPECT_EQ(store_->Create(running, Datasets("x"), -1).code(), invalid);
  JobRecord bad_enum = Job("t", "j");
  bad_enum.spec.algorithm = static_cast<JobAlgorithm>(0);
  EXPECT_EQ(store_->Create(bad_enum, Datasets("x"), -1).code(), invalid);
  JobRecord bad_utf8 = Job("t", "j");
  bad_utf8.spec.description = "bad \xff\xfe bytes";
  absl::Status status = store_->Create(bad_utf8, Datasets("x"), -1);
  EXPECT_EQ(status.code(), invalid);
  EXPECT_THAT(std::string(status.message()), HasSubstr("UTF-8"));
  JobRecord future = Job("t", "j");
  future.create_time = absl::InfiniteFuture();
  EXPECT_EQ(store_->Create(future, Datasets("x"), -1).code(), invalid);
  EXPECT_EQ(store_->Get("t", "j").status().code(), absl::StatusCode::kNotFound)
      << "nothing was stored";

  Put("t", "j");
  EXPECT_EQ(store_->Get("", "j").status().code(), invalid);
  EXPECT_EQ(store_->Get("t", "").status().code(), invalid);
  JobRecord update = *store_->Get("t", "j");
  update.tenant = "";
  EXPECT_EQ(store_->Update(update).code(), invalid);
  update = *store_->Get("t", "j");
  update.state = static_cast<JobState>(42);
  EXPECT_EQ(store_->Update(update).code(), invalid);
  update = *store_->Get("t", "j");
  update.end_time = absl::InfiniteFuture();
  EXPECT_EQ(store_->Update(update).code(), invalid);
  EXPECT_EQ(store_->SaveCheckpoint("", JobCheckpoint{}).code(), invalid);
  EXPECT_EQ(store_->LoadCheckpoint("").status().code(), invalid);
  EXPECT_EQ(store_->DeleteCheckpoint("").code(), invalid);
  JobListQuery query;
  EXPECT_EQ(store_->List(query).status().code(), invalid) << "empty tenant";
  query.tenant = "t";
  query.limit = -1;
  EXPECT_EQ(store_->List(query).status().code(), invalid);
}

class JobStoreListTest : public JobStoreTest {
 protected:
  void SetUp() override {
    JobStoreTest::SetUp();
    // a, b: distinct times. c, e, d: one shared time (the id breaks the tie). f: latest.
    Put("t", "a");
    Put("t", "b");
    SetTick(absl::ZeroDuration());
    Advance(absl::Milliseconds(1));
    Put("t", "c");
    Put("t", "e");
    Put("t", "d");
    SetTick(absl::Milliseconds(1));
    Put("t", "f");
    Put("other", "z");
    SetState("t", "b", JobState::kRunning);
    SetState("t", "e", JobState::kRunning);
    SetState("t", "f", JobState::kSucceeded);
  }

  JobListQuery Query(int64_t limit = 50) {
    JobListQuery query;
    query.tenant = "t";
    query.limit = limit;
    return query;
  }
};

INSTANTIATE_TEST_SUITE_P(Backends, JobStoreListTest,
                         testing::kEveryStoreBackend, testing::StoreBackendTestName);

TEST_P(JobStoreListTest, NewestFirstWithIdTiebreak) {
  JobPage page = List(Query());
  EXPECT_THAT(Ids(page.jobs), ElementsAre("f", "e", "d", "c", "b", "a"));
  EXPECT_FALSE(page.more);
  EXPECT_EQ(page.jobs[1].create_time, page.jobs[3].create_time) << "a real tie";
  EXPECT_LT(page.jobs[4].create_time, page.jobs[3].create_time);
  EXPECT_EQ(page.jobs[0].state, JobState::kSucceeded);
}

TEST_P(JobStoreListTest, FiltersByState) {
  JobListQuery query = Query();
  query.state = JobState::kRunning;
  EXPECT_THAT(Ids(List(query).jobs), ElementsAre("e", "b"));
  query.state = JobState::kQueued;
  EXPECT_THAT(Ids(List(query).jobs), ElementsAre("d", "c", "a"));
  query.state = JobState::kFailed;
  EXPECT_THAT(List(query).jobs, IsEmpty());
  query.state = JobState::kQueued;
  query.limit = 2;
  JobPage page = List(query);
  EXPECT_THAT(Ids(page.jobs), ElementsAre("d", "c"));
  EXPECT_TRUE(page.more);
  query.after_id = "c";
  page = List(query);
  EXPECT_THAT(Ids(page.jobs), ElementsAre("a"));
  EXPECT_FALSE(page.more);
}

TEST_P(JobStoreListTest, PagesWithLimitAndCursor) {
  for (const std::optional<JobState>& state :
       {std::optional<JobState>(), std::optional<JobState>(JobState::kQueued)}) {
    JobListQuery all = Query();
    all.state = state;
    const std::vector<std::string> expected = Ids(List(all).jobs);
    for (int64_t page_size : {1, 2, 3, 4, 6, 100}) {
      SCOPED_TRACE(absl::StrCat("page size ", page_size, state ? " queued" : ""));
      std::vector<std::string> seen;
      JobListQuery query = Query(page_size);
      query.state = state;
      for (int pages = 0; pages < 20; ++pages) {
        JobPage page = List(query);
        EXPECT_LE(static_cast<int64_t>(page.jobs.size()), page_size);
        for (const std::string& id : Ids(page.jobs)) seen.push_back(id);
        if (!page.more) break;
        ASSERT_FALSE(page.jobs.empty());
        query.after_id = page.jobs.back().id;
      }
      EXPECT_EQ(seen, expected);
    }
  }
  // Limit 0 returns nothing but says whether something matches.
  JobPage empty = List(Query(0));
  EXPECT_THAT(empty.jobs, IsEmpty());
  EXPECT_TRUE(empty.more);
  JobListQuery nobody = Query(0);
  nobody.tenant = "nobody";
  EXPECT_FALSE(List(nobody).more);
}

TEST_P(JobStoreListTest, CursorResumesStrictlyAfterItsJob) {
  JobListQuery query = Query();
  query.after_id = "e";  // Inside the tie: d and c follow, then the older ones.
  EXPECT_THAT(Ids(List(query).jobs), ElementsAre("d", "c", "b", "a"));
  query.after_id = "a";
  JobPage last = List(query);
  EXPECT_THAT(last.jobs, IsEmpty());
  EXPECT_FALSE(last.more);
  // A cursor that no longer matches the filter (its state changed) still places.
  query.after_id = "e";
  query.state = JobState::kQueued;
  EXPECT_THAT(Ids(List(query).jobs), ElementsAre("d", "c", "a"));
  query.after_id = "no-such-job";
  absl::StatusOr<JobPage> bad = store_->List(query);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("no-such-job"));
}

TEST_P(JobStoreListTest, ListUnfinishedSpansTenantsOldestFirst) {
  Put("other", "y");  // Later than every job of "t".
  SetTick(absl::ZeroDuration());
  Advance(absl::Milliseconds(1));
  Put("other", "x2");
  Put("mallory", "x1");  // Same time as x2: the id breaks the tie, ascending.
  absl::StatusOr<std::vector<JobRecord>> unfinished = store_->ListUnfinished();
  ASSERT_TRUE(unfinished.ok()) << unfinished.status();
  EXPECT_THAT(Ids(*unfinished), ElementsAre("a", "b", "c", "d", "e", "z", "y", "x1", "x2"));
  EXPECT_EQ((*unfinished)[0].tenant, "t");
  EXPECT_EQ((*unfinished)[5].tenant, "other");
  EXPECT_EQ((*unfinished)[7].tenant, "mallory");
  EXPECT_EQ((*unfinished)[1].state, JobState::kRunning);

  SetState("t", "a", JobState::kFailed);
  SetState("t", "e", JobState::kCancelled);
  SetState("other", "z", JobState::kSucceeded);
  unfinished = store_->ListUnfinished();
  ASSERT_TRUE(unfinished.ok());
  EXPECT_THAT(Ids(*unfinished), ElementsAre("b", "c", "d", "y", "x1", "x2"));
}

TEST_P(JobStoreTest, CheckpointsAreReplacedLoadedAndDeleted) {
  Put("t", "job-1");
  Put("t", "job-2");
  absl::StatusOr<std::optional<JobCheckpoint>> loaded = store_->LoadCheckpoint("job-1");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_FALSE(loaded->has_value());

  JobCheckpoint first;
  first.step = 5;
  first.bytes = std::string("\0\1safetensors\xff\0", 15);
  first.metrics = FullMetrics();
  ASSERT_TRUE(store_->SaveCheckpoint("job-1", first).ok());
  loaded = store_->LoadCheckpoint("job-1");
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->step, 5);
  EXPECT_EQ((*loaded)->bytes, first.bytes);
  ExpectSameMetrics((*loaded)->metrics, first.metrics);

  JobCheckpoint second;
  second.step = 10;
  second.bytes = std::string(256 * 1024, 'c');
  ASSERT_TRUE(store_->SaveCheckpoint("job-1", second).ok());
  loaded = store_->LoadCheckpoint("job-1");
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->step, 10);
  EXPECT_EQ((*loaded)->bytes, second.bytes);
  EXPECT_FALSE((*loaded)->metrics.has_value());
  EXPECT_THAT(Rows("SELECT COUNT(*) FROM job_checkpoints"), ElementsAre("1"))
      << "replaced, not added";

  JobCheckpoint empty;  // Zero bytes are still a checkpoint.
  ASSERT_TRUE(store_->SaveCheckpoint("job-2", empty).ok());
  loaded = store_->LoadCheckpoint("job-2");
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->bytes, "");

  ASSERT_TRUE(store_->DeleteCheckpoint("job-1").ok());
  EXPECT_FALSE(store_->LoadCheckpoint("job-1")->has_value());
  EXPECT_TRUE(store_->DeleteCheckpoint("job-1").ok()) << "none is fine";
  EXPECT_TRUE(store_->LoadCheckpoint("job-2")->has_value()) << "other jobs keep theirs";

  EXPECT_EQ(store_->SaveCheckpoint("job-404", first).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(store_->LoadCheckpoint("job-404")->has_value());
  EXPECT_TRUE(store_->DeleteCheckpoint("job-404").ok());
}

// Retention: only jobs that ended before the cutoff go, with their examples and
// checkpoints; running, queued and recently ended jobs stay.
TEST_P(JobStoreTest, DeleteEndedBeforeRemovesOnlyExpiredEndedJobs) {
  const absl::Time base = absl::FromUnixSeconds(1800000000);
  auto put = [&](const std::string& id, JobState state, std::optional<absl::Time> end) {
    Put("t", id);
    absl::StatusOr<JobRecord> job = store_->Get("t", id);
    ASSERT_TRUE(job.ok()) << job.status();
    job->state = state;
    if (state != JobState::kQueued) job->start_time = base - absl::Hours(100);
    if (end.has_value()) job->end_time = *end;
    ASSERT_TRUE(store_->Update(*job).ok());
    ASSERT_TRUE(store_->SaveCheckpoint(id, JobCheckpoint{1, "ckpt", std::nullopt}).ok());
  };
  put("job-old-ok", JobState::kSucceeded, base - absl::Hours(48));
  put("job-old-failed", JobState::kFailed, base - absl::Hours(30));
  put("job-old-cancelled", JobState::kCancelled, base - absl::Hours(25));
  put("job-new-ok", JobState::kSucceeded, base - absl::Hours(1));
  put("job-running", JobState::kRunning, std::nullopt);
  put("job-queued", JobState::kQueued, std::nullopt);

  absl::StatusOr<int64_t> deleted = store_->DeleteEndedBefore(base - absl::Hours(24));
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 3);
  for (const char* gone : {"job-old-ok", "job-old-failed", "job-old-cancelled"}) {
    EXPECT_EQ(store_->Get("t", gone).status().code(), absl::StatusCode::kNotFound) << gone;
    EXPECT_EQ(store_->ReadDatasets(gone).status().code(), absl::StatusCode::kNotFound);
    EXPECT_FALSE(store_->LoadCheckpoint(gone)->has_value());
  }
  for (const char* kept : {"job-new-ok", "job-running", "job-queued"}) {
    EXPECT_TRUE(store_->Get("t", kept).ok()) << kept;
    EXPECT_TRUE(store_->ReadDatasets(kept).ok()) << kept;
  }
  EXPECT_THAT(Rows("SELECT COUNT(*) FROM job_examples"), ElementsAre("3"));
  EXPECT_THAT(Rows("SELECT COUNT(*) FROM job_checkpoints"), ElementsAre("3"));
  EXPECT_EQ(*store_->DeleteEndedBefore(base - absl::Hours(24)), 0) << "idempotent";
}

TEST_P(JobStoreTest, PersistsAcrossReopen) {
  JobRecord job = Job("t", "job-1");
  job.spec = FullSpec();
  JobDatasets datasets = Datasets("persist");
  datasets.eval = {{"Q: e\nA:", "e", ""}};
  ASSERT_TRUE(store_->Create(job, datasets, -1).ok());
  JobRecord running = *store_->Get("t", "job-1");
  running.state = JobState::kRunning;
  running.step = 5;
  running.metrics = FullMetrics();
  running.start_time = absl::FromUnixMicros(1700000001000000);
  ASSERT_TRUE(store_->Update(running).ok());
  JobCheckpoint checkpoint;
  checkpoint.step = 5;
  checkpoint.bytes = "checkpoint bytes";
  ASSERT_TRUE(store_->SaveCheckpoint("job-1", checkpoint).ok());

  Reopen();
  absl::StatusOr<JobRecord> got = store_->Get("t", "job-1");
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameJob(*got, running);
  absl::StatusOr<JobDatasets> read = store_->ReadDatasets("job-1");
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->train[0].prompt, datasets.train[0].prompt);
  EXPECT_EQ(read->eval[0].answer, "e");
  EXPECT_EQ((*store_->LoadCheckpoint("job-1"))->bytes, "checkpoint bytes");
  EXPECT_THAT(Ids(*store_->ListUnfinished()), ElementsAre("job-1"));
}

TEST_F(SqliteJobStoreTest, SharesTheFileWithTheVectorStore) {
  SqliteVectorStore::Options vector_options;
  vector_options.path = path_;
  auto vectors = SqliteVectorStore::Create(vector_options);
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  StoredVector vector;
  vector.tenant = "t";
  vector.name = "calm";
  vector.model = "tiny";
  vector.model_fingerprint = "fp";
  vector.num_layers = 1;
  vector.hidden_size = 4;
  vector.dtype = "F32";
  vector.layer_norms = {1.0f};
  vector.source = StoredVector::Source::kTraining;
  vector.job_id = "job-1";
  // Both stores write through their own connections, interleaved.
  Put("t", "job-1");
  ASSERT_TRUE((*vectors)->Create(vector, "bytes", -1).ok());
  SetState("t", "job-1", JobState::kSucceeded);
  EXPECT_THAT(Rows("SELECT component, version FROM schema_version ORDER BY component"),
              ElementsAre("jobs|2", "vectors|1"));

  // Reopened in the other order, both find their data.
  store_.reset();
  vectors->reset();
  vectors = SqliteVectorStore::Create(vector_options);
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  Open();
  EXPECT_EQ(store_->Get("t", "job-1")->state, JobState::kSucceeded);
  EXPECT_EQ((*vectors)->Get("t", "calm", std::nullopt)->job_id, "job-1");
}

TEST_F(SqliteJobStoreTest, FutureSchemaVersionIsRefused) {
  Put("t", "job-1");
  store_.reset();
  ASSERT_TRUE(
      location_->Exec("UPDATE schema_version SET version = 3 WHERE component = 'jobs'").ok());
  absl::StatusOr<std::unique_ptr<SqliteJobStore>> newer = SqliteJobStore::Create(StoreOptions());
  EXPECT_EQ(newer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(newer.status().message()), HasSubstr("schema version 3"));
  EXPECT_THAT(std::string(newer.status().message()), HasSubstr("job store"));
  EXPECT_THAT(std::string(newer.status().message()), HasSubstr(path_));
  // The vector store's component is its own business.
  SqliteVectorStore::Options vector_options;
  vector_options.path = path_;
  EXPECT_TRUE(SqliteVectorStore::Create(vector_options).ok());

  ASSERT_TRUE(
      location_->Exec("UPDATE schema_version SET version = 2 WHERE component = 'jobs'").ok());
  Open();
  EXPECT_TRUE(store_->Get("t", "job-1").ok());
  EXPECT_EQ(SqliteJobStore::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(JobStoreTest, CorruptRowsAreInternal) {
  Put("t", "job-1");
  Put("t", "job-2");
  ASSERT_TRUE(location_->Exec("UPDATE jobs SET spec = '{\"model\": 3}' WHERE id = 'job-1'").ok());
  absl::StatusOr<JobRecord> got = store_->Get("t", "job-1");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("corrupt row"));
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("model"));
  ASSERT_TRUE(location_->Exec("UPDATE jobs SET metrics = 'not json' WHERE id = 'job-2'").ok());
  EXPECT_EQ(store_->Get("t", "job-2").status().code(), absl::StatusCode::kInternal);
}

// The active-jobs check and the insert are one transaction, also across connections
// (two stores on one file stand for two processes).
TEST_P(JobStoreTest, ConcurrentCreatesRespectTheLimit) {
  absl::StatusOr<std::unique_ptr<JobStore>> second = location_->OpenJobStore(Clock());
  ASSERT_TRUE(second.ok()) << second.status();
  constexpr int kThreads = 6;
  constexpr int kPerThread = 6;
  constexpr int kLimit = 10;
  absl::Mutex mu;
  int created = 0;
  int refused = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      JobStore* store = t % 2 == 0 ? store_.get() : second->get();
      for (int i = 0; i < kPerThread; ++i) {
        const absl::Status status =
            store->Create(Job("t", absl::StrCat("job-", t, "-", i)), Datasets("c"), kLimit);
        JobListQuery query;
        query.tenant = "t";
        EXPECT_TRUE(store->List(query).ok());  // Readers run alongside the writers.
        absl::MutexLock lock(&mu);
        if (status.ok()) {
          ++created;
        } else {
          EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
          ++refused;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(created, kLimit);
  EXPECT_EQ(refused, kThreads * kPerThread - kLimit);
  EXPECT_EQ(store_->ListUnfinished()->size(), static_cast<size_t>(kLimit));
}

TEST_F(SqliteJobStoreTest, IndexesServeTheHotQueries) {
  Put("t", "job-1");
  auto plan = [&](const std::string& sql) {
    std::string joined;
    for (const std::string& row : Rows("EXPLAIN QUERY PLAN " + sql)) {
      absl::StrAppend(&joined, row, "\n");
    }
    return joined;
  };
  EXPECT_THAT(plan("SELECT COUNT(*) FROM jobs WHERE tenant = 't' AND "
                   "state IN ('QUEUED', 'RUNNING')"),
              HasSubstr("jobs_unfinished"));
  EXPECT_THAT(plan("SELECT id FROM jobs WHERE state IN ('QUEUED', 'RUNNING') "
                   "ORDER BY create_time_us, id"),
              HasSubstr("jobs_unfinished"));
  EXPECT_THAT(plan("SELECT id FROM jobs WHERE tenant = 't' "
                   "ORDER BY create_time_us DESC, id DESC LIMIT 10"),
              HasSubstr("jobs_listing"));
}

// A job whose Create() returned survives the process being killed right after.
TEST_P(JobStoreTest, CreateIsDurableAcrossKill9) {
  store_.reset();  // No connection may cross fork().
  location_->Close();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto store = location_->OpenJobStore(nullptr);
    if (!store.ok()) _exit(2);
    if (!(*store)->Create(Job("t", "survivor"), Datasets("s"), -1).ok()) _exit(3);
    JobCheckpoint checkpoint;
    checkpoint.step = 1;
    checkpoint.bytes = "saved";
    if (!(*store)->SaveCheckpoint("survivor", checkpoint).ok()) _exit(4);
    kill(getpid(), SIGKILL);  // No destructors, no close, no WAL checkpoint.
    _exit(5);
  }
  int wait_status = 0;
  ASSERT_EQ(waitpid(child, &wait_status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wait_status)) << "child exited with " << WEXITSTATUS(wait_status);
  ASSERT_EQ(WTERMSIG(wait_status), SIGKILL);
  Open();
  EXPECT_EQ(store_->Get("t", "survivor")->state, JobState::kQueued);
  EXPECT_EQ(store_->ReadDatasets("survivor")->train[0].prompt, "Q: s\nA:");
  EXPECT_EQ((*store_->LoadCheckpoint("survivor"))->bytes, "saved");
}

// ---- Leases.

JobClaim Claim(const std::string& owner, absl::Duration ttl = absl::Seconds(30),
               int32_t max_attempts = 3) {
  JobClaim claim;
  claim.owner = owner;
  claim.models = {"steerd-tiny"};
  claim.ttl = ttl;
  claim.max_attempts = max_attempts;
  return claim;
}

bool IsLeaseLost(const absl::Status& status) {
  const std::optional<ErrorDetails> details = GetErrorDetails(status);
  return status.code() == absl::StatusCode::kFailedPrecondition && details.has_value() &&
         details->reason == "LEASE_LOST";
}

TEST_P(JobStoreTest, ClaimsTakeEachJobOnceAndWritesAreFencedByTheEpoch) {
  Put("t", "job-1");
  Put("t", "job-2");
  absl::StatusOr<std::optional<JobLease>> a = store_->ClaimJob(Claim("replica-a"));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(a->has_value());
  EXPECT_EQ((*a)->job.id, "job-1");  // Oldest first.
  EXPECT_EQ((*a)->job.replica, "replica-a");
  EXPECT_EQ((*a)->job.state, JobState::kQueued);
  EXPECT_EQ((*a)->attempt, 1);
  EXPECT_GT((*a)->job.lease_epoch, 0);
  auto b = store_->ClaimJob(Claim("replica-b"));
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ((*b)->job.id, "job-2");
  auto none = store_->ClaimJob(Claim("replica-c"));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  // Other models' claimers see nothing either.
  JobClaim other = Claim("replica-c");
  other.models = {"another-model"};
  Put("t", "job-3");
  EXPECT_FALSE(store_->ClaimJob(other)->has_value());

  EXPECT_EQ(store_->Get("t", "job-1")->replica, "replica-a");
  JobRecord running = (*a)->job;
  running.state = JobState::kRunning;
  EXPECT_TRUE(store_->Update(running).ok());  // Fenced by the right epoch.
  JobRecord stale = running;
  stale.lease_epoch = running.lease_epoch + 7;
  stale.step = 99;
  EXPECT_TRUE(IsLeaseLost(store_->Update(stale))) << store_->Update(stale);
  JobCheckpoint checkpoint;
  checkpoint.bytes = "ckpt";
  checkpoint.lease_epoch = stale.lease_epoch;
  EXPECT_TRUE(IsLeaseLost(store_->SaveCheckpoint("job-1", checkpoint)));
  EXPECT_FALSE(store_->LoadCheckpoint("job-1")->has_value());
  EXPECT_EQ(store_->Get("t", "job-1")->step, 0);
  EXPECT_EQ(*store_->RenewLease("job-1", running.lease_epoch, absl::Seconds(30)), false);
  EXPECT_EQ(store_->RenewLease("no-such-job", 1, absl::Seconds(30)).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_P(JobStoreTest, AnExpiredLeaseIsTakenOverAndTheOldHolderWritesNothing) {
  Put("t", "job-1");
  auto a = store_->ClaimJob(Claim("replica-a", absl::Milliseconds(200)));
  ASSERT_TRUE(a.ok() && a->has_value()) << a.status();
  JobRecord a_job = (*a)->job;
  a_job.state = JobState::kRunning;
  ASSERT_TRUE(store_->Update(a_job).ok());
  // While the lease runs, nobody else gets the job.
  EXPECT_FALSE(store_->ClaimJob(Claim("replica-b"))->has_value());
  absl::SleepFor(absl::Milliseconds(400));
  auto b = store_->ClaimJob(Claim("replica-b"));
  ASSERT_TRUE(b.ok() && b->has_value()) << b.status();
  EXPECT_EQ((*b)->job.id, "job-1");
  EXPECT_EQ((*b)->job.state, JobState::kRunning);  // Taken over, as it was.
  EXPECT_EQ((*b)->attempt, 2);
  EXPECT_GT((*b)->job.lease_epoch, a_job.lease_epoch);
  // The old holder wakes up: its renewal, updates and checkpoints all fail.
  EXPECT_TRUE(
      IsLeaseLost(store_->RenewLease("job-1", a_job.lease_epoch, absl::Seconds(30)).status()));
  a_job.step = 5;
  EXPECT_TRUE(IsLeaseLost(store_->Update(a_job)));
  JobCheckpoint checkpoint;
  checkpoint.lease_epoch = a_job.lease_epoch;
  checkpoint.bytes = "stale";
  EXPECT_TRUE(IsLeaseLost(store_->SaveCheckpoint("job-1", checkpoint)));
  checkpoint.lease_epoch = (*b)->job.lease_epoch;
  checkpoint.bytes = "fresh";
  EXPECT_TRUE(store_->SaveCheckpoint("job-1", checkpoint).ok());
  EXPECT_EQ((*store_->LoadCheckpoint("job-1"))->bytes, "fresh");
  EXPECT_EQ(store_->Get("t", "job-1")->replica, "replica-b");
}

TEST_P(JobStoreTest, AJobWhoseLeaseKeepsExpiringFailsAfterMaxAttempts) {
  Put("t", "job-1");
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto claimed = store_->ClaimJob(Claim("replica", absl::Milliseconds(100), 2));
    ASSERT_TRUE(claimed.ok() && claimed->has_value()) << attempt;
    EXPECT_EQ((*claimed)->attempt, attempt);
    absl::SleepFor(absl::Milliseconds(200));
  }
  auto third = store_->ClaimJob(Claim("replica", absl::Milliseconds(100), 2));
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_FALSE(third->has_value());
  absl::StatusOr<JobRecord> failed = store_->Get("t", "job-1");
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(failed->state, JobState::kFailed);
  EXPECT_NE(failed->end_time, absl::InfinitePast());
  EXPECT_EQ(GetErrorDetails(failed->error)->reason, "ATTEMPTS_EXHAUSTED");
  EXPECT_THAT(std::string(failed->error.message()), HasSubstr("--job-max-attempts 2"));
}

TEST_P(JobStoreTest, AHandedBackLeaseIsClaimableAtOnceAndNotCounted) {
  Put("t", "job-1");
  auto a = store_->ClaimJob(Claim("replica-a"));
  ASSERT_TRUE(a.ok() && a->has_value());
  ASSERT_TRUE(store_->ReleaseLease("job-1", (*a)->job.lease_epoch).ok());
  EXPECT_EQ(store_->Get("t", "job-1")->replica, "");
  auto b = store_->ClaimJob(Claim("replica-b"));
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ((*b)->attempt, 1);
  // A stale hand-back changes nothing.
  ASSERT_TRUE(store_->ReleaseLease("job-1", (*a)->job.lease_epoch).ok());
  EXPECT_EQ(store_->Get("t", "job-1")->replica, "replica-b");
}

TEST_P(JobStoreTest, CancelEndsAQueuedJobAndMarksAHeldOne) {
  Put("t", "queued");
  Put("t", "held");
  auto cancelled = store_->RequestCancel("t", "queued");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state, JobState::kCancelled);
  EXPECT_NE(cancelled->end_time, absl::InfinitePast());
  auto held = store_->ClaimJob(Claim("replica-a"));
  ASSERT_TRUE(held.ok() && held->has_value());
  ASSERT_EQ((*held)->job.id, "held");
  EXPECT_EQ(*store_->RenewLease("held", (*held)->job.lease_epoch, absl::Seconds(30)), false);
  auto marked = store_->RequestCancel("t", "held");
  ASSERT_TRUE(marked.ok()) << marked.status();
  EXPECT_EQ(marked->state, JobState::kQueued);  // Its holder ends it.
  EXPECT_EQ(*store_->RenewLease("held", (*held)->job.lease_epoch, absl::Seconds(30)), true);
  EXPECT_EQ(store_->RequestCancel("other-tenant", "held").status().code(),
            absl::StatusCode::kNotFound);
}

// A free slot goes to the tenant with the fewest running jobs, then to the tenant whose
// last job started longest ago, then to the oldest job; expired RUNNING jobs first.
TEST_P(JobStoreTest, ClaimsPreferTenantsWithFewerRunningJobs) {
  SetTick(absl::Seconds(1));
  Put("alpha", "a1");
  Put("alpha", "a2");
  Put("beta", "b1");
  auto first = store_->ClaimJob(Claim("r"));
  ASSERT_TRUE(first.ok() && first->has_value());
  EXPECT_EQ((*first)->job.id, "a1");
  JobRecord running = (*first)->job;
  running.state = JobState::kRunning;
  running.start_time = absl::Now();
  ASSERT_TRUE(store_->Update(running).ok());
  auto second = store_->ClaimJob(Claim("r"));
  ASSERT_TRUE(second.ok() && second->has_value());
  EXPECT_EQ((*second)->job.id, "b1") << "alpha already runs a job";
}

TEST_P(JobStoreTest, ConcurrentClaimersNeverShareAJob) {
  constexpr int kJobs = 24;
  for (int i = 0; i < kJobs; ++i) Put("t", absl::StrCat("job-", i));
  absl::StatusOr<std::unique_ptr<JobStore>> second = location_->OpenJobStore(Clock());
  ASSERT_TRUE(second.ok()) << second.status();
  absl::Mutex mu;
  std::map<std::string, int> claims;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      JobStore* store = t % 2 == 0 ? store_.get() : second->get();
      while (true) {
        auto claimed = store->ClaimJob(Claim(absl::StrCat("replica-", t)));
        ASSERT_TRUE(claimed.ok()) << claimed.status();
        if (!claimed->has_value()) return;
        absl::MutexLock lock(&mu);
        ++claims[(*claimed)->job.id];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(claims.size(), static_cast<size_t>(kJobs));
  for (const auto& [id, count] : claims) EXPECT_EQ(count, 1) << id;
}

// The publish of a job's vector and its SUCCEEDED state are one transaction, fenced by
// the lease: exactly one version per job, none from a replica that lost it.
TEST_P(JobStoreTest, PublishingAJobsVectorIsFencedAndEndsTheJob) {
  absl::StatusOr<std::unique_ptr<VectorStore>> vectors = location_->OpenVectorStore(nullptr);
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  Put("t", "job-1");
  Put("t", "job-2");
  auto lease = store_->ClaimJob(Claim("replica-a"));
  ASSERT_TRUE(lease.ok() && lease->has_value());
  StoredVector vector;
  vector.tenant = "t";
  vector.name = "trained";
  vector.model = "steerd-tiny";
  vector.model_fingerprint = "fp";
  vector.num_layers = 1;
  vector.hidden_size = 2;
  vector.dtype = "F32";
  vector.layer_norms = {1.0f};
  vector.source = StoredVector::Source::kTraining;
  vector.job_id = "job-1";
  vector.job_lease_epoch = (*lease)->job.lease_epoch + 1;  // Not the holder's.
  EXPECT_TRUE(IsLeaseLost((*vectors)->Create(vector, "bytes", -1).status()));
  EXPECT_EQ(*(*vectors)->CountVersions("t"), 0);
  vector.job_lease_epoch = (*lease)->job.lease_epoch;
  absl::StatusOr<StoredVector> published = (*vectors)->Create(vector, "bytes", -1);
  ASSERT_TRUE(published.ok()) << published.status();
  absl::StatusOr<JobRecord> job = store_->Get("t", "job-1");
  EXPECT_EQ(job->state, JobState::kSucceeded);
  EXPECT_EQ(job->vector_version, published->version);
  // Again (a retry, or a zombie): the job ended, nothing more is published.
  EXPECT_TRUE(IsLeaseLost((*vectors)->Create(vector, "bytes", -1).status()));
  EXPECT_EQ(*(*vectors)->CountVersions("t"), 1);
  // A cancel requested before the publish wins.
  auto other = store_->ClaimJob(Claim("replica-a"));
  ASSERT_TRUE(other.ok() && other->has_value());
  ASSERT_TRUE(store_->RequestCancel("t", "job-2").ok());
  vector.job_id = "job-2";
  vector.job_lease_epoch = (*other)->job.lease_epoch;
  const absl::Status cancelled = (*vectors)->Create(vector, "bytes", -1).status();
  EXPECT_EQ(GetErrorDetails(cancelled)->reason, "JOB_CANCELLED") << cancelled;
  EXPECT_EQ(*(*vectors)->CountVersions("t"), 1);
}

}  // namespace
}  // namespace steerd
