// steerctl jobs create|get|list|cancel|watch and train (create, then watch): training
// jobs, their requests built from flags and JSONL files, and the watch that Ctrl-C stops.
#include "client/steerctl_common.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "client/enum_names.h"
#include "client/job_progress.h"
#include "client/steerd_client.h"
#include "server/api/grpc_status.h"
#include "server/train/dataset.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd::client::steerctl {

namespace {

namespace v1 = ::steerd::v1;

constexpr int kInterruptedExitCode = 130;  // 128 + SIGINT, as shells report it
// InlineDataset's documented maximum.
constexpr size_t kMaxInlineExamples = 100000;

// "0,1,2": distinct layer indices.
absl::Status ParseLayers(const std::string& text, v1::Hyperparameters* hyperparameters) {
  std::set<int32_t> seen;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t layer = 0;
    if (!absl::SimpleAtoi(part, &layer) || layer < 0) {
      return UsageError(absl::StrCat("flag --layers: '", part,
                                     "' is not a layer index (a list like 0,1,2)"));
    }
    if (!seen.insert(layer).second) {
      return UsageError(absl::StrCat("flag --layers: layer ", layer, " is given twice"));
    }
    hyperparameters->add_layers(layer);
  }
  return absl::OkStatus();
}

// The examples of a JSONL file, in the format (and with the checks, errors naming
// file:line) the server's own datasets use.
absl::Status LoadDataset(const std::string& path, v1::InlineDataset* dataset) {
  ASSIGN_OR_RETURN(std::vector<train::Example> examples, train::LoadJsonl(path));
  if (examples.size() > kMaxInlineExamples) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", examples.size(),
                                                   " examples; a job takes at most ",
                                                   kMaxInlineExamples));
  }
  for (train::Example& example : examples) {
    v1::Example* added = dataset->add_examples();
    added->set_prompt(std::move(example.prompt));
    added->set_answer(std::move(example.answer));
  }
  return absl::OkStatus();
}

// The request of `jobs create` and `train`. Every malformed or out-of-bounds value (the
// bounds training.proto documents) is a usage error here, before any RPC; the dataset
// files are read last, so a usage error is not hidden behind a slow read.
absl::StatusOr<v1::CreateJobRequest> BuildCreateJobRequest(const ParsedFlags& flags) {
  v1::CreateJobRequest request;
  ASSIGN_OR_RETURN(*request.mutable_model(), AsUsage(flags.Required("model")));
  ASSIGN_OR_RETURN(*request.mutable_output_vector(), AsUsage(flags.Required("output")));
  if (flags.Has("task") == flags.Has("data")) {
    return UsageError("give exactly one of --task or --data");
  }
  if (flags.Has("task")) request.set_task(flags.Get("task"));

  if (flags.Has("eval-split") && flags.Has("eval-data")) {
    return UsageError("give at most one of --eval-split or --eval-data");
  }
  if (flags.Has("eval-split")) {
    if (!flags.Has("task")) {
      return UsageError("--eval-split needs --task (with --data, use --eval-data)");
    }
    request.mutable_eval()->set_split(flags.Get("eval-split"));
  }
  const bool has_eval = flags.Has("eval-split") || flags.Has("eval-data");
  for (const char* flag : {"eval-max", "eval-every"}) {
    if (flags.Has(flag) && !has_eval) {
      return UsageError(absl::StrCat("--", flag, " needs --eval-split or --eval-data"));
    }
  }
  RETURN_IF_ERROR(SetIntFlag(flags, "eval-max", 0, kInt32Max, [&](int32_t value) {
    request.mutable_eval()->set_max_examples(value);
  }));

  v1::Algorithm algorithm = v1::ALGORITHM_RLOO;  // the server's default
  if (flags.Has("algorithm")) {
    ASSIGN_OR_RETURN(algorithm, ParseEnumFlag<v1::Algorithm>(flags, "algorithm"));
    request.set_algorithm(algorithm);
  }
  // Flags the algorithm ignores are mistakes worth naming, not silently dropped.
  if (algorithm != v1::ALGORITHM_GRPO) {
    for (const char* flag : {"clip-epsilon", "inner-epochs"}) {
      if (flags.Has(flag)) {
        return UsageError(absl::StrCat("--", flag, " is for --algorithm grpo only"));
      }
    }
  }
  if (algorithm == v1::ALGORITHM_SFT) {
    for (const char* flag : {"rollouts", "temperature"}) {
      if (flags.Has(flag)) {
        return UsageError(
            absl::StrCat("--", flag, " is not used by --algorithm sft (no rollouts)"));
      }
    }
  }

  v1::RewardSpec* reward = request.mutable_reward();
  if (flags.Has("reward")) {
    ASSIGN_OR_RETURN(v1::RewardSpec::Type type,
                     ParseEnumFlag<v1::RewardSpec::Type>(flags, "reward"));
    reward->set_type(type);
  }
  if (reward->type() == v1::RewardSpec::TYPE_REGEX) {
    if (!flags.Has("pattern")) return UsageError("--reward regex needs --pattern");
    reward->set_pattern(flags.Get("pattern"));
  } else if (flags.Has("pattern")) {
    return UsageError("--pattern needs --reward regex");
  }
  RETURN_IF_ERROR(SetFloatFlag(flags, "correct-reward", -100, false, 100,
                               [&](float value) { reward->set_correct_reward(value); }));
  RETURN_IF_ERROR(
      SetFloatFlag(flags, "incorrect-reward", -100, false, 100,
                   [&](float value) { reward->set_incorrect_reward(value); }));
  RETURN_IF_ERROR(SetFloatFlag(flags, "format-reward", -100, false, 100,
                               [&](float value) { reward->set_format_reward(value); }));
  if (reward->ByteSizeLong() == 0) request.clear_reward();

  v1::Hyperparameters* hp = request.mutable_hyperparameters();
  RETURN_IF_ERROR(
      SetIntFlag(flags, "steps", 1, 100000, [&](int32_t value) { hp->set_steps(value); }));
  RETURN_IF_ERROR(SetIntFlag(flags, "prompts-per-step", 1, 1024,
                             [&](int32_t value) { hp->set_prompts_per_step(value); }));
  RETURN_IF_ERROR(SetIntFlag(flags, "rollouts", 2, 256,
                             [&](int32_t value) { hp->set_rollouts_per_prompt(value); }));
  RETURN_IF_ERROR(SetFloatFlag(flags, "lr", 0, true, 1,
                               [&](float value) { hp->set_learning_rate(value); }));
  RETURN_IF_ERROR(SetIntFlag(flags, "max-new-tokens", 1, kInt32Max,
                             [&](int32_t value) { hp->set_max_new_tokens(value); }));
  RETURN_IF_ERROR(SetFloatFlag(flags, "temperature", 0, true, 2,
                               [&](float value) { hp->set_temperature(value); }));
  if (flags.Has("seed")) {
    ASSIGN_OR_RETURN(uint64_t seed, AsUsage(flags.GetUint("seed", 0)));
    hp->set_seed(seed);
  }
  if (flags.Has("layers")) RETURN_IF_ERROR(ParseLayers(flags.Get("layers"), hp));
  RETURN_IF_ERROR(SetIntFlag(flags, "eval-every", 0, kInt32Max,
                             [&](int32_t value) { hp->set_eval_every(value); }));
  RETURN_IF_ERROR(SetFloatFlag(flags, "clip-epsilon", 0, true, 1,
                               [&](float value) { hp->set_clip_epsilon(value); }));
  RETURN_IF_ERROR(SetIntFlag(flags, "inner-epochs", 1, 16,
                             [&](int32_t value) { hp->set_inner_epochs(value); }));
  if (hp->ByteSizeLong() == 0) request.clear_hyperparameters();

  request.set_apply_chat_template(flags.Bool("chat"));
  request.set_description(flags.Get("description"));

  if (flags.Has("data")) {
    RETURN_IF_ERROR(LoadDataset(flags.Get("data"), request.mutable_examples()));
  }
  if (flags.Has("eval-data")) {
    RETURN_IF_ERROR(
        LoadDataset(flags.Get("eval-data"), request.mutable_eval()->mutable_examples()));
  }
  return request;
}

// Why a job FAILED: its error's message, after its reason in brackets when the reason
// says more than the code does ("[NON_FINITE_LOGITS] the steered model's ...").
std::string JobError(const v1::Job& job) {
  const absl::Status error = FromRpcStatus(job.error());
  const std::optional<ErrorDetails> details = GetErrorDetails(error);
  const std::string code = absl::StatusCodeToString(error.code());
  if (details.has_value() && !details->reason.empty() && details->reason != code) {
    return absl::StrCat("[", details->reason, "] ", error.message());
  }
  return std::string(error.message());
}

// The vector a SUCCEEDED job published, or why a FAILED one failed.
std::string JobResult(const v1::Job& job) {
  if (job.state() == v1::Job::STATE_SUCCEEDED) return FormatVectorRef(job.vector());
  if (job.state() == v1::Job::STATE_FAILED) return OneLine(JobError(job));
  return "-";
}

void PrintJobs(const std::vector<v1::Job>& jobs, std::ostream& out) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "STATE", "STEP", "MODEL", "OUTPUT", "CREATED", "RESULT"}};
  for (const v1::Job& job : jobs) {
    rows.push_back(
        {job.id(), ShortEnumName(job.state()),
         absl::StrCat(job.progress().step(), "/", job.progress().total_steps()),
         OrDash(job.model()), OrDash(job.output_vector()),
         FormatTimestamp(job.create_time()), JobResult(job)});
  }
  PrintTable(rows, out);
}

// Written by the SIGINT handler, read by CancelOnInterrupt's thread; -1 when none.
std::atomic<int> interrupt_pipe_fd{-1};

void WriteInterrupt(int /*signal*/) {
  const int saved_errno = errno;
  const int fd = interrupt_pipe_fd.load();
  const char byte = 1;
  if (fd >= 0 && write(fd, &byte, 1) < 0) {
    // Nothing to do in a signal handler; the pipe is never full.
  }
  errno = saved_errno;
}

// While alive, Ctrl-C (SIGINT) cancels a watch instead of killing the process, so the
// watch can end its progress line and say that the job goes on: the handler only writes
// to a pipe (all a signal handler may safely do) and a thread calls Cancel. A process
// that ignores SIGINT (a script's background job) keeps ignoring it.
class CancelOnInterrupt {
 public:
  explicit CancelOnInterrupt(StreamCanceller* canceller) {
    struct sigaction current {};
    if (sigaction(SIGINT, nullptr, &current) != 0 || current.sa_handler == SIG_IGN) {
      return;
    }
    if (pipe2(pipe_, O_CLOEXEC) != 0) return;
    interrupt_pipe_fd = pipe_[1];
    thread_ = std::thread([this, canceller] {
      char byte;
      ssize_t n;
      do {
        n = read(pipe_[0], &byte, 1);
      } while (n < 0 && errno == EINTR);
      if (n == 1) {
        interrupted_ = true;
        canceller->Cancel();
      }
    });
    struct sigaction action {};
    action.sa_handler = WriteInterrupt;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(SIGINT, &action, &previous_);
    installed_ = true;
  }

  ~CancelOnInterrupt() {
    if (!installed_) return;
    sigaction(SIGINT, &previous_, nullptr);
    interrupt_pipe_fd = -1;
    close(pipe_[1]);  // the thread's read sees the end of the pipe
    thread_.join();
    close(pipe_[0]);
  }

  CancelOnInterrupt(const CancelOnInterrupt&) = delete;
  CancelOnInterrupt& operator=(const CancelOnInterrupt&) = delete;

  bool interrupted() const { return interrupted_; }

 private:
  int pipe_[2] = {-1, -1};
  bool installed_ = false;
  struct sigaction previous_ {};
  std::atomic<bool> interrupted_{false};
  std::thread thread_;
};

// Shows job `id`'s events until it ends: JSON lines with --json, else JobWatchPrinter's
// lines. OK when the job SUCCEEDED (its vector is printed last, as NAME@VERSION, unless
// --json); a FAILED or CANCELLED job, a stream error or Ctrl-C is an error. `created`:
// this command created the job, so an error must say that it goes on.
absl::Status WatchUntilDone(SteerdClient& client, const std::string& id, bool created,
                            const Command& c) {
  const bool json = c.flags.Bool("json");
  JobWatchPrinter printer(c.out, c.out_is_terminal);
  v1::Job job;
  bool seen = false;
  absl::Status print_status;
  StreamCanceller canceller;
  absl::Status status;
  bool interrupted = false;
  {
    CancelOnInterrupt interrupt(&canceller);
    status = client.WatchJob(
        id,
        [&](const v1::JobEvent& event) {
          seen = true;
          job = event.job();
          if (!json) {
            printer.Print(event);
            return true;
          }
          print_status = PrintJson(event, c.out, /*one_line=*/true);
          c.out.flush();
          return print_status.ok();
        },
        &canceller);
    interrupted = interrupt.interrupted();
  }
  printer.Finish();
  RETURN_IF_ERROR(print_status);
  if (interrupted && status.code() == absl::StatusCode::kCancelled) {
    return CommandFailure(
        absl::StrCat("stopped watching job ", id, "; it goes on (steerctl jobs cancel ",
                     id, " stops it)"),
        kInterruptedExitCode);
  }
  if (!status.ok()) {
    if (!seen && !created) return status;
    return absl::Status(status.code(), absl::StrCat(status.message(), " (job ", id,
                                                    " goes on; steerctl jobs watch ", id,
                                                    " watches it again)"));
  }
  switch (job.state()) {
    case v1::Job::STATE_SUCCEEDED:
      if (!json) c.out << FormatVectorRef(job.vector()) << "\n";
      return absl::OkStatus();
    case v1::Job::STATE_FAILED:
      return CommandFailure(absl::StrCat("job ", id, " FAILED: ", OrDash(JobError(job))),
                            1);
    case v1::Job::STATE_CANCELLED:
      return CommandFailure(absl::StrCat("job ", id, " was CANCELLED"), 1);
    default:
      return absl::InternalError(absl::StrCat("the watch of job ", id,
                                              " ended while it is ",
                                              ShortEnumName(job.state())));
  }
}

}  // namespace

absl::Status RunJobsCreate(const Command& c) {
  ASSIGN_OR_RETURN(v1::CreateJobRequest request, BuildCreateJobRequest(c.flags));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(v1::Job job, client->CreateJob(request));
  if (c.flags.Bool("json")) return PrintJson(job, c.out);
  PrintJobs({job}, c.out);
  return absl::OkStatus();
}

absl::Status RunJobsGet(const Command& c) {
  const std::string& id = c.flags.positional()[0];
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(v1::Job job, client->GetJob(id));
  if (c.flags.Bool("json")) return PrintJson(job, c.out);
  PrintJobs({job}, c.out);
  return absl::OkStatus();
}

absl::Status RunJobsList(const Command& c) {
  JobFilter filter;
  if (c.flags.Has("state")) {
    ASSIGN_OR_RETURN(filter.state, ParseEnumFlag<v1::Job::State>(c.flags, "state"));
  }
  RETURN_IF_ERROR(SetIntFlag(c.flags, "page-size", 0, kInt32Max,
                             [&](int32_t value) { filter.page_size = value; }));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  v1::ListJobsResponse response;
  if (c.flags.Bool("all")) {
    ASSIGN_OR_RETURN(std::vector<v1::Job> jobs, client->ListJobs(filter));
    for (v1::Job& job : jobs) *response.add_jobs() = std::move(job);
  } else {
    v1::ListJobsRequest request;
    request.set_state(filter.state);
    request.set_page_size(filter.page_size);
    ASSIGN_OR_RETURN(response, client->ListJobsPage(request));
  }
  if (c.flags.Bool("json")) return PrintJson(response, c.out);
  if (response.jobs().empty()) {
    c.err << "no jobs\n";
  } else {
    PrintJobs({response.jobs().begin(), response.jobs().end()}, c.out);
  }
  if (!response.next_page_token().empty()) {
    c.err << "more jobs: steerctl jobs list --all\n";
  }
  return absl::OkStatus();
}

absl::Status RunJobsCancel(const Command& c) {
  const std::string& id = c.flags.positional()[0];
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(v1::Job job, client->CancelJob(id));
  if (c.flags.Bool("json")) return PrintJson(job, c.out);
  PrintJobs({job}, c.out);
  // A running job stops only after its current step.
  if (job.state() == v1::Job::STATE_RUNNING) {
    c.err << "job " << id << " stops after its current step (steerctl jobs watch " << id
          << " shows the end)\n";
  }
  return absl::OkStatus();
}

absl::Status RunJobsWatch(const Command& c) {
  const std::string& id = c.flags.positional()[0];
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  return WatchUntilDone(*client, id, /*created=*/false, c);
}

absl::Status RunTrain(const Command& c) {
  ASSIGN_OR_RETURN(v1::CreateJobRequest request, BuildCreateJobRequest(c.flags));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(v1::Job job, client->CreateJob(request));
  return WatchUntilDone(*client, job.id(), /*created=*/true, c);
}

}  // namespace steerd::client::steerctl
