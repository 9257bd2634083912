// Training jobs over the public API on the embedded default model. Service tests, on
// the composed server inside this process (tests/testing/in_process_server.h): two
// tenants training at once with steerctl, the trained vectors' behaviour and accuracy
// against the offline `steerd eval`, watching, cancelling, limits, isolation, bad
// requests and the fair scheduling of training slots. Process tests, on the real binary
// (tests/testing/server_process.h): kill -9 and SIGTERM in the middle of a job, flags.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/steerd_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/model/safetensors.h"
#include "server/tenancy/sha256.h"
#include "steerd/v1/training.grpc.pb.h"
#include "server/tenancy/tenants.h"
#include "tests/testing/in_process_server.h"
#include "tests/testing/server_process.h"
#include "tests/testing/subprocess.h"

namespace steerd {
namespace {

using ::steerd::testing::InProcessServer;
using ::steerd::testing::MetricSum;
using ::steerd::testing::ServerProcess;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kModel[] = "steerd-tiny";
constexpr int kLayers = 4;
constexpr int kHidden = 192;
constexpr char kAlphaKey[] = "sk-test-train-alpha-5d0e81";
constexpr char kBetaKey[] = "sk-test-train-beta-c41a97";
constexpr char kFewKey[] = "sk-test-train-few-9be2f0";

std::string Binary(const std::string& name) {
  return absl::StrCat(STEERD_BINARY_DIR, "/bin/", name);
}

bool WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  return static_cast<bool>(out);
}

std::string TenantJson(const std::string& name, const std::string& key,
                       const std::string& limits) {
  return absl::StrCat(R"({"name": ")", name, R"(", "api_key_sha256": ")", Sha256Hex(key),
                      R"(", "limits": {)", limits, "}}");
}

// A tenants file with alpha, beta (default limits) and "few" (one active job, 20 steps,
// 50 examples), in `dir`.
std::string WriteTenants(const std::string& dir) {
  const std::string path = dir + "/tenants.json";
  const std::string json = absl::StrCat(
      R"({"tenants": [)",
      absl::StrJoin({TenantJson("alpha", kAlphaKey, ""), TenantJson("beta", kBetaKey, ""),
                     TenantJson("few", kFewKey,
                                R"("queued_jobs": 1, "max_job_steps": 20, )"
                                R"("max_job_examples": 50)")},
                    ", "),
      "]}");
  EXPECT_TRUE(WriteFile(path, json));
  return path;
}

absl::StatusOr<std::unique_ptr<ServerProcess>> StartServer(const std::string& data_dir,
                                                           const std::string& tenants,
                                                           std::vector<std::string> args = {}) {
  args.insert(args.begin(), {"--threads", "1", "--tenants", tenants});
  return ServerProcess::Start({data_dir, std::move(args)});
}

// The composed server in this process with the tenants file at `tenants`, as
// StartServer's binary would run with `--max-training-jobs max_training_jobs`.
absl::StatusOr<std::unique_ptr<InProcessServer>> StartInProcess(const std::string& data_dir,
                                                                const std::string& tenants,
                                                                int64_t max_training_jobs = 2) {
  InProcessServer::Options options;
  options.data_dir = data_dir;
  absl::StatusOr<std::vector<Tenant>> loaded = LoadTenantsFile(tenants);
  if (!loaded.ok()) return loaded.status();
  options.tenants = *std::move(loaded);
  options.training.max_running_jobs_per_model = max_training_jobs;
  return InProcessServer::Start(std::move(options));
}

// A steering file [kLayers, kHidden] of N(0, 0.25) values.
std::string VectorFile(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  std::vector<float> values(kLayers * kHidden);
  for (float& v : values) v = normal(rng);
  auto bytes = SerializeSafetensors({{"steering", DType::kF32, {kLayers, kHidden}, values.data()}},
                                    {{"format", "steerd.steering.v1"}});
  return bytes.ok() ? *bytes : std::string();
}

// Returns a failed call's status from the enclosing function.
#define RETURN_ON_GRPC_ERROR(call)                                     \
  do {                                                                 \
    const grpc::Status grpc_status = (call);                           \
    if (!grpc_status.ok()) return client::FromGrpcStatus(grpc_status); \
  } while (false)

// The Training service with a tenant's key, over raw stubs on a client's channel.
class TrainingCaller {
 public:
  explicit TrainingCaller(const client::SteerdClient& client)
      : channel_(client.channel()),
        key_(client.options().api_key),
        stub_(v1::Training::NewStub(channel_)) {}

  absl::StatusOr<v1::Job> Create(const v1::CreateJobRequest& request) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::Job job;
    RETURN_ON_GRPC_ERROR(stub_->CreateJob(&context, request, &job));
    return job;
  }
  absl::StatusOr<v1::Job> Get(const std::string& id) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::GetJobRequest request;
    request.set_id(id);
    v1::Job job;
    RETURN_ON_GRPC_ERROR(stub_->GetJob(&context, request, &job));
    return job;
  }
  absl::StatusOr<v1::Job> Cancel(const std::string& id) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::CancelJobRequest request;
    request.set_id(id);
    v1::Job job;
    RETURN_ON_GRPC_ERROR(stub_->CancelJob(&context, request, &job));
    return job;
  }
  absl::StatusOr<v1::ListJobsResponse> List(const v1::ListJobsRequest& request) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ListJobsResponse response;
    RETURN_ON_GRPC_ERROR(stub_->ListJobs(&context, request, &response));
    return response;
  }
  // Reads the whole WatchJob stream (or until `timeout`); the events and the status.
  std::pair<std::vector<v1::JobEvent>, absl::Status> Watch(const std::string& id,
                                                           absl::Duration timeout) {
    grpc::ClientContext context;
    Prepare(&context, timeout);
    v1::WatchJobRequest request;
    request.set_id(id);
    std::vector<v1::JobEvent> events;
    auto reader = stub_->WatchJob(&context, request);
    v1::JobEvent event;
    while (reader->Read(&event)) events.push_back(event);
    return {events, client::FromGrpcStatus(reader->Finish())};
  }
  // Polls GetJob until `done` holds for the job (or `timeout`); the last snapshot.
  absl::StatusOr<v1::Job> WaitFor(const std::string& id, absl::Duration timeout,
                                  const std::function<bool(const v1::Job&)>& done) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      absl::StatusOr<v1::Job> job = Get(id);
      if (!job.ok() || done(*job)) return job;
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("job still ", job->DebugString()));
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

 private:
  void Prepare(grpc::ClientContext* context, absl::Duration timeout = absl::Seconds(60)) const {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    context->AddMetadata("authorization", absl::StrCat("Bearer ", key_));
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::string key_;
  std::unique_ptr<v1::Training::Stub> stub_;
};

bool Ended(const v1::Job& job) {
  return job.state() == v1::Job::STATE_SUCCEEDED || job.state() == v1::Job::STATE_FAILED ||
         job.state() == v1::Job::STATE_CANCELLED;
}

// A small, quick RLOO job on the arith task.
v1::CreateJobRequest QuickJob(const std::string& output, int steps) {
  v1::CreateJobRequest request;
  request.set_model(kModel);
  request.set_output_vector(output);
  request.set_task("arith");
  auto* h = request.mutable_hyperparameters();
  h->set_steps(steps);
  h->set_prompts_per_step(2);
  h->set_rollouts_per_prompt(4);
  h->set_max_new_tokens(40);
  h->set_seed(7);
  return request;
}

// The offline CLI's accuracy for a vector file on a task's first `count` test problems.
absl::StatusOr<double> OfflineAccuracy(const std::string& task, const std::string& vector_path,
                                       int count) {
  const std::string model_dir = absl::StrCat(STEERD_SOURCE_DIR, "/models/steerd-tiny");
  const testing::ProcessRun run = testing::RunShellCommand(testing::ShellCommand(
      Binary("steerd"), {"eval", "--model", model_dir, "--task", task, "--split", "test",
                         "--count", absl::StrCat(count), "--steering", vector_path, "--json",
                         // One thread like the server's: no OpenMP team for TSan to miss
                         // the barriers of (scripts/sanitize.sh thread).
                         "--threads", "1"}));
  if (run.exit_code != 0) return absl::InternalError(run.err);
  return nlohmann::json::parse(run.out).at("accuracy").get<double>();
}

// ---------------------------------------------------------------------------------------
// The issue's end-to-end case: two tenants train at once with `steerctl train`; both
// vectors work by name at once, do what they were trained for, and the accuracy the job
// reports matches the offline evaluator's on the same problems.
TEST(ServerTrainingTest, TwoTenantsTrainAtOnceAndTheirVectorsServeByName) {
  const std::string dir = testing::MakeTempDir("steerd-train-e2e");
  auto server = StartInProcess(dir + "/data", WriteTenants(dir));
  ASSERT_TRUE(server.ok()) << server.status();
  constexpr int kEvalCount = 200;
  // 60 steps of 4 prompts x 8 rollouts train both tasks well past the bar below (arith
  // 0.82 / arith-words 0.79 at seed 3, 0.84-0.87 / 0.71-0.74 at seeds 1 and 5); 40
  // steps leave arith at the base model's ~0.4 for some seeds.
  constexpr int kSteps = 60;

  struct Run {
    std::string key, task, output;
    testing::ProcessRun result;
  };
  std::vector<Run> runs = {{kAlphaKey, "arith", "reasoning", {}},
                           {kBetaKey, "arith-words", "words", {}}};
  std::vector<std::thread> threads;
  for (Run& run : runs) {
    threads.emplace_back([&run, &server] {
      const std::string command = absl::StrCat(
          "STEERD_ADDR=", (*server)->address(), " STEERD_API_KEY=", run.key, " ",
          testing::ShellCommand(Binary("steerctl"),
                                {"train", "--model", kModel, "--task", run.task, "--output",
                                 run.output, "--eval-split", "test", "--eval-max",
                                 absl::StrCat(kEvalCount), "--steps", absl::StrCat(kSteps),
                                 "--prompts-per-step", "4", "--seed", "3"}));
      run.result = testing::RunShellCommand(command);
    });
  }
  for (std::thread& t : threads) t.join();
  for (const Run& run : runs) {
    ASSERT_EQ(run.result.exit_code, 0) << run.task << "\n" << run.result.out << run.result.err;
    EXPECT_THAT(run.result.out, HasSubstr(absl::StrCat(run.output, "@1"))) << run.result.out;
  }

  // The same prompt: step by step with alpha's vector, in words with beta's, and the base
  // model's direct answer without one.
  const std::string prompt = "Q: 6*6*2+4+5\nA:";
  auto generate = [&](const std::string& key, const std::string& vector) {
    v1::GenerateRequest request;
    request.set_model(kModel);
    request.set_prompt(prompt);
    request.mutable_sampling()->set_max_new_tokens(64);
    if (!vector.empty()) request.mutable_steering()->set_vector(vector);
    auto response = (*server)->Client(key)->Generate(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? response->text() : std::string();
  };
  const std::string steps = generate(kAlphaKey, "reasoning");
  const std::string words = generate(kBetaKey, "words");
  const std::string base = generate(kAlphaKey, "");
  EXPECT_THAT(steps, HasSubstr("Step by step")) << steps;
  EXPECT_THAT(words, HasSubstr("In words")) << words;
  EXPECT_THAT(base, Not(HasSubstr("Step by step"))) << base;
  EXPECT_THAT(base, Not(HasSubstr("In words"))) << base;
  // Each tenant sees only its own vector.
  v1::GenerateRequest foreign;
  foreign.set_model(kModel);
  foreign.set_prompt(prompt);
  foreign.mutable_steering()->set_vector("words");
  EXPECT_EQ((*server)->Client(kAlphaKey)->Generate(foreign).status().code(),
            absl::StatusCode::kNotFound);

  // The job's final evaluation against `steerd eval` on the exported vector.
  for (const Run& run : runs) {
    TrainingCaller caller(*(*server)->Client(run.key));
    auto listed = caller.List({});
    ASSERT_TRUE(listed.ok()) << listed.status();
    ASSERT_EQ(listed->jobs_size(), 1);
    const v1::Job& job = listed->jobs(0);
    EXPECT_EQ(job.state(), v1::Job::STATE_SUCCEEDED);
    EXPECT_EQ(job.task(), run.task);
    EXPECT_EQ(job.progress().step(), kSteps);
    EXPECT_EQ(job.vector().name(), run.output);
    ASSERT_TRUE(job.metrics().has_eval_accuracy());
    auto exported = (*server)->Client(run.key)->ExportVector(run.output);
    ASSERT_TRUE(exported.ok()) << exported.status();
    EXPECT_EQ(exported->vector().source(), v1::Vector::SOURCE_TRAINING);
    EXPECT_EQ(exported->vector().job_id(), job.id());
    const std::string path = absl::StrCat(dir, "/", run.output, ".safetensors");
    ASSERT_TRUE(WriteFile(path, exported->safetensors()));
    auto offline = OfflineAccuracy(run.task, path, kEvalCount);
    ASSERT_TRUE(offline.ok()) << offline.status();
    std::printf("%s: eval accuracy %.3f via the API, %.3f offline (steerd eval)\n",
                run.task.c_str(), job.metrics().eval_accuracy(), *offline);
    EXPECT_NEAR(job.metrics().eval_accuracy(), *offline, 0.03) << run.task;
    // Trained, not lucky: well above the base model's 0% (words) and ~31% (digits).
    EXPECT_GT(*offline, 0.5) << run.task;
  }
}

// ---------------------------------------------------------------------------------------
// A server for the quick cases: watching, cancelling, limits, isolation, bad input.
class TrainingApiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::MakeTempDir("steerd-train-api");
    auto server = StartInProcess(dir + "/data", WriteTenants(dir), /*max_training_jobs=*/1);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr); }

  static InProcessServer* server_;
};

InProcessServer* TrainingApiTest::server_ = nullptr;

TEST_F(TrainingApiTest, WatchSeesEveryStateAndStepsThenEndsOk) {
  TrainingCaller alpha(*server_->Client(kAlphaKey));
  auto job = alpha.Create(QuickJob("watched", 3));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::Job::STATE_QUEUED);
  EXPECT_EQ(job->progress().total_steps(), 3);
  EXPECT_EQ(job->algorithm(), v1::ALGORITHM_RLOO);
  EXPECT_EQ(job->hyperparameters().seed(), 7u);
  EXPECT_GT(job->hyperparameters().learning_rate(), 0.0f);  // The default, filled in.
  auto [events, status] = alpha.Watch(job->id(), absl::Seconds(120));
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_GE(events.size(), 3u);
  ASSERT_TRUE(events.front().has_state_change());
  EXPECT_EQ(events.front().state_change().previous_state(), v1::Job::STATE_UNSPECIFIED);
  std::vector<v1::Job::State> states;
  int last_step = 0;
  for (const v1::JobEvent& event : events) {
    if (event.has_state_change()) states.push_back(event.state_change().state());
    if (event.has_step_metrics()) {
      EXPECT_GE(event.step_metrics().step(), last_step);
      last_step = event.step_metrics().step();
      EXPECT_EQ(event.job().progress().step(), event.step_metrics().step());
    }
  }
  EXPECT_EQ(last_step, 3);
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back(), v1::Job::STATE_SUCCEEDED);
  EXPECT_TRUE(events.back().has_state_change());
  EXPECT_EQ(events.back().job().vector().name(), "watched");
  EXPECT_EQ(events.back().job().vector().version(), 1);
  EXPECT_TRUE(events.back().job().has_end_time());
  // Prometheus counts the steps and the job's end.
  const std::string metrics = server_->ScrapeMetrics();
  const std::map<std::string, std::string> model = {{"model", kModel}};
  EXPECT_GE(MetricSum(metrics, "steerd_training_steps_total", model).value_or(0), 3.0);
  EXPECT_GE(MetricSum(metrics, "steerd_training_step_seconds_count", model).value_or(0), 3.0);
  EXPECT_GE(MetricSum(metrics, "steerd_training_jobs_ended_total",
                      {{"model", kModel}, {"state", "SUCCEEDED"}})
                .value_or(0),
            1.0);
  EXPECT_TRUE(MetricSum(metrics, "steerd_training_jobs", {{"state", "RUNNING"}}).has_value());
  // Watching an ended job: one event, then OK.
  auto [again, again_status] = alpha.Watch(job->id(), absl::Seconds(10));
  ASSERT_TRUE(again_status.ok()) << again_status;
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].state_change().state(), v1::Job::STATE_SUCCEEDED);
}

TEST_F(TrainingApiTest, CancelStopsARunningJobWithinAStepAndPublishesNothing) {
  TrainingCaller alpha(*server_->Client(kAlphaKey));
  auto running = alpha.Create(QuickJob("cancelled-run", 5000));
  ASSERT_TRUE(running.ok()) << running.status();
  // With one training slot, the next job waits in the queue.
  auto queued = alpha.Create(QuickJob("cancelled-queued", 10));
  ASSERT_TRUE(queued.ok()) << queued.status();
  auto started = alpha.WaitFor(running->id(), absl::Seconds(60), [](const v1::Job& job) {
    return job.progress().step() >= 1 || Ended(job);
  });
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_EQ(started->state(), v1::Job::STATE_RUNNING);

  auto cancelled_queued = alpha.Cancel(queued->id());
  ASSERT_TRUE(cancelled_queued.ok()) << cancelled_queued.status();
  EXPECT_EQ(cancelled_queued->state(), v1::Job::STATE_CANCELLED);  // At once.

  const absl::Time asked = absl::Now();
  ASSERT_TRUE(alpha.Cancel(running->id()).ok());
  auto ended = alpha.WaitFor(running->id(), absl::Seconds(30), Ended);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->state(), v1::Job::STATE_CANCELLED);
  EXPECT_LT(absl::Now() - asked, absl::Seconds(10));
  EXPECT_LT(ended->progress().step(), 5000);
  EXPECT_FALSE(ended->has_vector());
  for (const char* name : {"cancelled-run", "cancelled-queued"}) {
    EXPECT_EQ(server_->Client(kAlphaKey)->GetVector(name).status().code(),
              absl::StatusCode::kNotFound)
        << name;
  }
  // Cancelling again returns it unchanged; a finished job cannot be cancelled.
  auto again = alpha.Cancel(running->id());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->state(), v1::Job::STATE_CANCELLED);
  v1::ListJobsRequest filter;
  filter.set_state(v1::Job::STATE_CANCELLED);
  auto listed = alpha.List(filter);
  ASSERT_TRUE(listed.ok()) << listed.status();
  std::vector<std::string> ids;
  for (const v1::Job& job : listed->jobs()) {
    EXPECT_EQ(job.state(), v1::Job::STATE_CANCELLED);
    ids.push_back(job.id());
  }
  EXPECT_THAT(ids, ::testing::IsSupersetOf({running->id(), queued->id()}));
}

TEST_F(TrainingApiTest, SftGrpoAndChatTemplateJobsTrainAndPublish) {
  TrainingCaller alpha(*server_->Client(kAlphaKey));
  // SFT on inline examples: the loss is the mean cross-entropy per answer token.
  v1::CreateJobRequest sft = QuickJob("sft", 4);
  sft.clear_task();
  sft.set_algorithm(v1::ALGORITHM_SFT);
  for (int i = 0; i < 8; ++i) {
    v1::Example* e = sft.mutable_examples()->add_examples();
    e->set_prompt(absl::StrCat("Q: ", i, "+", i, "\nA:"));
    e->set_answer(absl::StrCat(" \\boxed{", 2 * i, "}"));
  }
  v1::CreateJobRequest grpo = QuickJob("grpo", 3);
  grpo.set_algorithm(v1::ALGORITHM_GRPO);
  grpo.mutable_hyperparameters()->set_inner_epochs(2);
  grpo.mutable_hyperparameters()->set_clip_epsilon(0.1f);
  v1::CreateJobRequest chat = QuickJob("chat", 2);
  chat.set_apply_chat_template(true);
  chat.set_description("trained on rendered conversations");
  for (const v1::CreateJobRequest* request : {&sft, &grpo, &chat}) {
    auto job = alpha.Create(*request);
    ASSERT_TRUE(job.ok()) << request->output_vector() << ": " << job.status();
    auto ended = alpha.WaitFor(job->id(), absl::Seconds(120), Ended);
    ASSERT_TRUE(ended.ok()) << ended.status();
    EXPECT_EQ(ended->state(), v1::Job::STATE_SUCCEEDED) << request->output_vector() << ": "
                                                  << ended->error().ShortDebugString();
    EXPECT_EQ(ended->algorithm(), request->algorithm() == v1::ALGORITHM_UNSPECIFIED
                                      ? v1::ALGORITHM_RLOO
                                      : request->algorithm());
    ASSERT_TRUE(ended->has_metrics());
    EXPECT_TRUE(std::isfinite(ended->metrics().loss()));
    EXPECT_GT(ended->metrics().tokens_per_second(), 0.0f);
    auto vector = server_->Client(kAlphaKey)->GetVector(request->output_vector());
    ASSERT_TRUE(vector.ok()) << vector.status();
    EXPECT_EQ(vector->source(), v1::Vector::SOURCE_TRAINING);
    EXPECT_EQ(vector->job_id(), job->id());
    EXPECT_EQ(vector->description(), request->description());
  }
  // SFT's loss is a cross-entropy: positive. RL losses may take either sign.
  auto listed = alpha.List({});
  ASSERT_TRUE(listed.ok());
  for (const v1::Job& job : listed->jobs()) {
    if (job.output_vector() == "sft") {
      EXPECT_GT(job.metrics().loss(), 0.0f);
    }
  }
}

TEST_F(TrainingApiTest, JobsAreInvisibleToOtherTenants) {
  TrainingCaller alpha(*server_->Client(kAlphaKey));
  TrainingCaller beta(*server_->Client(kBetaKey));
  auto job = alpha.Create(QuickJob("private", 1));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(beta.Get(job->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(beta.Cancel(job->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(beta.Watch(job->id(), absl::Seconds(10)).second.code(),
            absl::StatusCode::kNotFound);
  auto listed = beta.List({});
  ASSERT_TRUE(listed.ok()) << listed.status();
  for (const v1::Job& other : listed->jobs()) EXPECT_NE(other.id(), job->id());
  EXPECT_TRUE(alpha.WaitFor(job->id(), absl::Seconds(60), Ended).ok());
  TrainingCaller nobody(*server_->Client("sk-not-a-key"));
  EXPECT_EQ(nobody.Get(job->id()).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(TrainingApiTest, TenantLimitsOnJobsStepsAndExamples) {
  TrainingCaller few(*server_->Client(kFewKey));
  auto too_many_steps = few.Create(QuickJob("limited", 21));
  EXPECT_EQ(too_many_steps.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_many_steps.status().message(), HasSubstr("max_job_steps"));

  v1::CreateJobRequest big = QuickJob("limited", 2);
  big.clear_task();
  for (int i = 0; i < 51; ++i) {
    v1::Example* e = big.mutable_examples()->add_examples();
    e->set_prompt(absl::StrCat("Q: ", i, "+1\nA:"));
    e->set_answer(absl::StrCat(i + 1));
  }
  auto too_many_examples = few.Create(big);
  EXPECT_EQ(too_many_examples.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_many_examples.status().message(), HasSubstr("max_job_examples"));

  auto first = few.Create(QuickJob("limited", 20));
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = few.Create(QuickJob("limited", 2));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(second.status().message(), HasSubstr("queued_jobs"));
  ASSERT_TRUE(few.Cancel(first->id()).ok());
  ASSERT_TRUE(few.WaitFor(first->id(), absl::Seconds(30), Ended).ok());
  // An ended job no longer counts.
  auto third = few.Create(QuickJob("limited", 1));
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_TRUE(few.WaitFor(third->id(), absl::Seconds(60), Ended).ok());
}

TEST_F(TrainingApiTest, BadRequestsGetPreciseErrorsAndTheServerGoesOn) {
  TrainingCaller alpha(*server_->Client(kAlphaKey));
  struct Case {
    std::string name;
    std::function<void(v1::CreateJobRequest&)> change;
    absl::StatusCode code;
    std::string message;  // A fragment the message must contain.
  };
  auto inline_examples = [](v1::CreateJobRequest& r, std::vector<std::pair<std::string,
                                                                          std::string>> rows) {
    r.clear_task();
    r.mutable_examples()->clear_examples();
    for (auto& [prompt, answer] : rows) {
      v1::Example* e = r.mutable_examples()->add_examples();
      e->set_prompt(prompt);
      e->set_answer(answer);
    }
  };
  const std::vector<Case> cases = {
      {"no model", [](auto& r) { r.clear_model(); }, absl::StatusCode::kInvalidArgument, "model"},
      {"unknown model", [](auto& r) { r.set_model("no-such-model"); },
       absl::StatusCode::kNotFound, "no-such-model"},
      {"no output", [](auto& r) { r.clear_output_vector(); }, absl::StatusCode::kInvalidArgument,
       "output_vector"},
      {"versioned output", [](auto& r) { r.set_output_vector("v@2"); },
       absl::StatusCode::kInvalidArgument, "output_vector"},
      {"no dataset", [](auto& r) { r.clear_task(); }, absl::StatusCode::kInvalidArgument,
       "dataset"},
      {"empty dataset", [&](auto& r) { inline_examples(r, {}); },
       absl::StatusCode::kInvalidArgument, "examples"},
      {"example without answer", [&](auto& r) { inline_examples(r, {{"Q: 1+1\nA:", ""}}); },
       absl::StatusCode::kInvalidArgument, "answer"},
      {"example without prompt", [&](auto& r) { inline_examples(r, {{"", "2"}}); },
       absl::StatusCode::kInvalidArgument, "prompt"},
      {"example too long for the context",
       [&](auto& r) { inline_examples(r, {{std::string(3000, 'x'), "2"}}); },
       absl::StatusCode::kInvalidArgument, "context"},
      {"unknown task", [](auto& r) { r.set_task("sorting"); }, absl::StatusCode::kInvalidArgument,
       "arith"},
      {"unknown eval split", [](auto& r) { r.mutable_eval()->set_split("holdout"); },
       absl::StatusCode::kInvalidArgument, "holdout"},
      {"eval split without a task",
       [&](auto& r) {
         inline_examples(r, {{"Q: 1+1\nA:", "2"}});
         r.mutable_eval()->set_split("test");
       },
       absl::StatusCode::kInvalidArgument, "split"},
      {"unknown verifier",
       [](auto& r) { r.mutable_reward()->set_type(static_cast<v1::RewardSpec::Type>(42)); },
       absl::StatusCode::kInvalidArgument, "reward"},
      {"regex without pattern",
       [](auto& r) { r.mutable_reward()->set_type(v1::RewardSpec::TYPE_REGEX); },
       absl::StatusCode::kInvalidArgument, "pattern"},
      {"regex that does not compile",
       [](auto& r) {
         r.mutable_reward()->set_type(v1::RewardSpec::TYPE_REGEX);
         r.mutable_reward()->set_pattern("(unclosed");
       },
       absl::StatusCode::kInvalidArgument, "pattern"},
      {"infinite reward",
       [](auto& r) { r.mutable_reward()->set_correct_reward(INFINITY); },
       absl::StatusCode::kInvalidArgument, "correct_reward"},
      {"steps over the bound", [](auto& r) { r.mutable_hyperparameters()->set_steps(100001); },
       absl::StatusCode::kInvalidArgument, "steps"},
      {"negative steps", [](auto& r) { r.mutable_hyperparameters()->set_steps(-1); },
       absl::StatusCode::kInvalidArgument, "steps"},
      {"one rollout", [](auto& r) { r.mutable_hyperparameters()->set_rollouts_per_prompt(1); },
       absl::StatusCode::kInvalidArgument, "rollouts_per_prompt"},
      {"learning rate above 1",
       [](auto& r) { r.mutable_hyperparameters()->set_learning_rate(2.0f); },
       absl::StatusCode::kInvalidArgument, "learning_rate"},
      {"NaN learning rate", [](auto& r) { r.mutable_hyperparameters()->set_learning_rate(NAN); },
       absl::StatusCode::kInvalidArgument, "learning_rate"},
      {"temperature 0", [](auto& r) { r.mutable_hyperparameters()->set_temperature(0.0f); },
       absl::StatusCode::kInvalidArgument, "temperature"},
      {"max_new_tokens over the context",
       [](auto& r) { r.mutable_hyperparameters()->set_max_new_tokens(100000); },
       absl::StatusCode::kInvalidArgument, "max_new_tokens"},
      {"layer out of range", [](auto& r) { r.mutable_hyperparameters()->add_layers(kLayers); },
       absl::StatusCode::kInvalidArgument, "layers"},
      {"layer twice",
       [](auto& r) {
         r.mutable_hyperparameters()->add_layers(1);
         r.mutable_hyperparameters()->add_layers(1);
       },
       absl::StatusCode::kInvalidArgument, "layers"},
      {"eval_every without eval",
       [](auto& r) { r.mutable_hyperparameters()->set_eval_every(5); },
       absl::StatusCode::kInvalidArgument, "eval_every"},
      {"inner epochs 17", [](auto& r) { r.mutable_hyperparameters()->set_inner_epochs(17); },
       absl::StatusCode::kInvalidArgument, "inner_epochs"},
  };
  for (const Case& c : cases) {
    v1::CreateJobRequest request = QuickJob("bad", 1);
    c.change(request);
    auto job = alpha.Create(request);
    EXPECT_EQ(job.status().code(), c.code) << c.name << ": " << job.status();
    EXPECT_THAT(job.status().message(), HasSubstr(c.message)) << c.name;
  }
  EXPECT_EQ(alpha.Get("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(alpha.Get("job-does-not-exist").status().code(), absl::StatusCode::kNotFound);
  // Nothing was queued, and the server still trains and serves.
  auto listed = alpha.List({});
  ASSERT_TRUE(listed.ok());
  for (const v1::Job& job : listed->jobs()) EXPECT_NE(job.output_vector(), "bad");
  auto fine = alpha.Create(QuickJob("fine", 1));
  ASSERT_TRUE(fine.ok()) << fine.status();
  auto ended = alpha.WaitFor(fine->id(), absl::Seconds(60), Ended);
  ASSERT_TRUE(ended.ok());
  EXPECT_EQ(ended->state(), v1::Job::STATE_SUCCEEDED) << ended->error().ShortDebugString();
}

// ---------------------------------------------------------------------------------------
// kill -9 in the middle of a job: after the restart the job resumes from its last
// checkpoint (not from step 0) and succeeds; the vectors published before and the other
// jobs are intact.
TEST(ServerTrainingFaultTest, SigkillDuringAJobResumesItFromItsCheckpoint) {
  const std::string dir = testing::MakeTempDir("steerd-train-kill");
  const std::string tenants = WriteTenants(dir);
  const std::vector<std::string> args = {"--checkpoint-every", "2", "--max-training-jobs", "1"};
  auto server = StartServer(dir + "/data", tenants, args);
  ASSERT_TRUE(server.ok()) << server.status();
  auto kept_before = (*server)->Client(kAlphaKey)->CreateVector(kModel, "kept", VectorFile(11));
  ASSERT_TRUE(kept_before.ok()) << kept_before.status();
  TrainingCaller alpha(*(*server)->Client(kAlphaKey));
  auto finished = alpha.Create(QuickJob("finished", 1));
  ASSERT_TRUE(finished.ok()) << finished.status();
  ASSERT_TRUE(alpha.WaitFor(finished->id(), absl::Seconds(60), Ended).ok());
  auto job = alpha.Create(QuickJob("resumed", 14));
  ASSERT_TRUE(job.ok()) << job.status();
  auto waiting = alpha.Create(QuickJob("after", 1));  // Queued behind it.
  ASSERT_TRUE(waiting.ok()) << waiting.status();
  auto progressed = alpha.WaitFor(job->id(), absl::Seconds(120), [](const v1::Job& j) {
    return j.progress().step() >= 5 || Ended(j);
  });
  ASSERT_TRUE(progressed.ok()) << progressed.status();
  ASSERT_EQ(progressed->state(), v1::Job::STATE_RUNNING);
  (*server)->Signal(SIGKILL);
  ASSERT_TRUE((*server)->Wait(absl::Seconds(30)).ok());
  server->reset();

  auto restarted = StartServer(dir + "/data", tenants, args);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  TrainingCaller after_restart(*(*restarted)->Client(kAlphaKey));
  auto resumed = after_restart.Get(job->id());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->state(), v1::Job::STATE_RUNNING);
  EXPECT_GE(resumed->progress().step(), 4);  // The checkpoint at step 4 (or later).
  auto ended = after_restart.WaitFor(job->id(), absl::Seconds(120), Ended);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->state(), v1::Job::STATE_SUCCEEDED) << ended->error().ShortDebugString();
  EXPECT_EQ(ended->progress().step(), 14);
  auto queued_after = after_restart.WaitFor(waiting->id(), absl::Seconds(60), Ended);
  ASSERT_TRUE(queued_after.ok());
  EXPECT_EQ(queued_after->state(), v1::Job::STATE_SUCCEEDED) << queued_after->error().ShortDebugString();
  auto earlier = after_restart.Get(finished->id());
  ASSERT_TRUE(earlier.ok());
  EXPECT_EQ(earlier->state(), v1::Job::STATE_SUCCEEDED);
  auto client = (*restarted)->Client(kAlphaKey);
  auto kept = client->ExportVector("kept");
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->vector().sha256(), kept_before->sha256());
  EXPECT_EQ(Sha256Hex(kept->safetensors()), kept_before->sha256());
  for (const char* name : {"finished", "resumed", "after"}) {
    auto vector = client->GetVector(name);
    ASSERT_TRUE(vector.ok()) << name << ": " << vector.status();
    EXPECT_EQ(vector->version(), 1) << name;  // Published once, never twice.
  }
}

// SIGTERM while a job runs: watches end UNAVAILABLE, the server exits 0 without waiting
// for the job, and the job continues after the restart.
TEST(ServerTrainingFaultTest, SigtermStopsTrainingAndTheJobContinuesAfterRestart) {
  const std::string dir = testing::MakeTempDir("steerd-train-term");
  const std::string tenants = WriteTenants(dir);
  const std::vector<std::string> args = {"--checkpoint-every", "1", "--drain-seconds", "5"};
  auto server = StartServer(dir + "/data", tenants, args);
  ASSERT_TRUE(server.ok()) << server.status();
  TrainingCaller alpha(*(*server)->Client(kAlphaKey));
  auto job = alpha.Create(QuickJob("drained", 400));
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE(alpha.WaitFor(job->id(), absl::Seconds(60), [](const v1::Job& j) {
                     return j.progress().step() >= 2 || Ended(j);
                   }).ok());
  absl::Status watch_status;
  std::thread watcher([&] { watch_status = alpha.Watch(job->id(), absl::Seconds(60)).second; });
  absl::SleepFor(absl::Milliseconds(300));
  (*server)->Signal(SIGTERM);
  auto exit_code = (*server)->Wait(absl::Seconds(30));
  watcher.join();
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << (*server)->output();
  EXPECT_EQ(watch_status.code(), absl::StatusCode::kUnavailable) << watch_status;
  server->reset();

  auto restarted = StartServer(dir + "/data", tenants, args);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  TrainingCaller again(*(*restarted)->Client(kAlphaKey));
  auto resumed = again.Get(job->id());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->state(), v1::Job::STATE_RUNNING);
  EXPECT_GE(resumed->progress().step(), 2);
  const int before = resumed->progress().step();
  auto moving = again.WaitFor(job->id(), absl::Seconds(60), [before](const v1::Job& j) {
    return j.progress().step() > before || Ended(j);
  });
  ASSERT_TRUE(moving.ok()) << moving.status();
  EXPECT_EQ(moving->state(), v1::Job::STATE_RUNNING);
  ASSERT_TRUE(again.Cancel(job->id()).ok());
  auto ended = again.WaitFor(job->id(), absl::Seconds(30), Ended);
  ASSERT_TRUE(ended.ok());
  EXPECT_EQ(ended->state(), v1::Job::STATE_CANCELLED);
}

// Scheduling: with one training slot, a free slot goes to the tenant with fewer running
// jobs (not to the next job in creation order); with two slots, two tenants' jobs take
// steps in turn, so neither waits for the other to finish.
TEST(ServerTrainingScheduleTest, SlotsGoToTenantsFairlyAndJobsTakeTurns) {
  const std::string dir = testing::MakeTempDir("steerd-train-fair");
  const std::string tenants = WriteTenants(dir);
  {
    auto server = StartInProcess(dir + "/one", tenants, /*max_training_jobs=*/1);
    ASSERT_TRUE(server.ok()) << server.status();
    TrainingCaller alpha(*(*server)->Client(kAlphaKey));
    TrainingCaller beta(*(*server)->Client(kBetaKey));
    auto a1 = alpha.Create(QuickJob("a1", 40));  // Runs while the others queue.
    auto a2 = alpha.Create(QuickJob("a2", 1));
    auto b1 = beta.Create(QuickJob("b1", 1));
    ASSERT_TRUE(a1.ok() && a2.ok() && b1.ok());
    auto a2_done = alpha.WaitFor(a2->id(), absl::Seconds(60), Ended);
    auto b1_done = beta.WaitFor(b1->id(), absl::Seconds(60), Ended);
    ASSERT_TRUE(a2_done.ok() && b1_done.ok());
    // alpha's second job was queued first, but beta had nothing running.
    EXPECT_LT(absl::FromUnixMicros(b1_done->start_time().seconds() * 1000000 +
                                   b1_done->start_time().nanos() / 1000),
              absl::FromUnixMicros(a2_done->start_time().seconds() * 1000000 +
                                   a2_done->start_time().nanos() / 1000));
  }
  auto server = StartInProcess(dir + "/two", tenants, /*max_training_jobs=*/2);
  ASSERT_TRUE(server.ok()) << server.status();
  TrainingCaller alpha(*(*server)->Client(kAlphaKey));
  TrainingCaller beta(*(*server)->Client(kBetaKey));
  auto a = alpha.Create(QuickJob("turns", 12));
  auto b = beta.Create(QuickJob("turns", 12));
  ASSERT_TRUE(a.ok() && b.ok());
  // While both run, each advances: when one has done 6 steps the other has done some.
  auto halfway = alpha.WaitFor(a->id(), absl::Seconds(60), [](const v1::Job& j) {
    return j.progress().step() >= 6 || Ended(j);
  });
  ASSERT_TRUE(halfway.ok());
  auto other = beta.Get(b->id());
  ASSERT_TRUE(other.ok());
  EXPECT_GE(other->progress().step(), 3) << "beta's job waited for alpha's";
  EXPECT_TRUE(alpha.WaitFor(a->id(), absl::Seconds(60), Ended).ok());
  EXPECT_TRUE(beta.WaitFor(b->id(), absl::Seconds(60), Ended).ok());
}

// --min-training-rows: the server starts with a value from 1 to --training-rows (and
// with --training-rows below the default of 4 alone); outside that range it refuses to
// start, before loading any model, naming the flag.
TEST(ServerTrainingFlagsTest, MinTrainingRowsMustBeFromOneToTrainingRows) {
  const std::string dir = testing::MakeTempDir("steerd-train-flags");
  const std::string tenants = WriteTenants(dir);
  for (const std::vector<std::string>& good :
       {std::vector<std::string>{"--training-rows", "2"},
        std::vector<std::string>{"--training-rows", "8", "--min-training-rows", "8"}}) {
    auto server = StartServer(dir + "/data", tenants, good);
    EXPECT_TRUE(server.ok()) << absl::StrJoin(good, " ") << ": " << server.status();
  }
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"--min-training-rows", "0"},
        std::vector<std::string>{"--training-rows", "8", "--min-training-rows", "9"}}) {
    auto server = StartServer(dir + "/data", tenants, bad);
    ASSERT_FALSE(server.ok()) << absl::StrJoin(bad, " ");
    EXPECT_THAT(server.status().message(),
                HasSubstr("--min-training-rows must be between 1 and --training-rows"))
        << absl::StrJoin(bad, " ");
  }
}

}  // namespace
}  // namespace steerd
