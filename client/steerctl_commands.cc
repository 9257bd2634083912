#include "client/steerctl_commands.h"

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/command_line.h"
#include "client/steerctl_common.h"
#include "client/steerd_client.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd::client {

const char kSteerctlUsage[] =
    R"(usage: steerctl COMMAND [flags]

Commands:
  models [--json]
      List the server's models.
  vectors create --model M --name N --file F.safetensors [--description D] [--json]
      Upload a steering vector as the next version of N.
  vectors get NAME[@VERSION] [--json]
  vectors list [--model M] [--name N] [--all-versions] [--json]
  vectors export NAME[@VERSION] --out F [--json]
      Write the stored safetensors file to F.
  vectors delete NAME[@VERSION] [--json]
      Delete one version, or every version of NAME.
  generate --model M (--prompt TEXT | --message ROLE:TEXT ... | --messages-file F.json)
           [--vector NAME[@VERSION]] [--scale X] [--temperature T] [--top-p P]
           [--top-k K] [--seed S] [--max-new-tokens N] [--stop S ...] [--logprobs]
           [--ignore-eos] [--no-stream] [--json] [--verbose]
      Generate text, printed as it streams in.
  jobs create --model M --output NAME (--task TASK | --data F.jsonl) [training flags]
              [--json]
      Queue a job that trains a vector and publishes it as the next version of NAME.
  jobs get ID [--json]
  jobs list [--state S] [--page-size N] [--all] [--json]
      The newest jobs first: one page (N jobs, default 50) unless --all. S: queued,
      running, succeeded, failed or cancelled.
  jobs cancel ID [--json]
  jobs watch ID [--json]
      Follow a job until it ends; print its vector as NAME@VERSION when it succeeds.
  train --model M --output NAME (--task TASK | --data F.jsonl) [training flags] [--json]
      jobs create, then jobs watch.
  health [--service S] [--json]
      Print the server's serving status (exit 0 only when SERVING).
  help
      Print this text.

Common flags:
  --addr HOST:PORT    server address (default: $STEERD_ADDR, else 127.0.0.1:50051)
  --api-key KEY       API key (default: $STEERD_API_KEY, else the contents of
                      DATA_DIR/api_key)
  --data-dir DIR      the server's data directory, for its api_key file (default:
                      $STEERD_DATA_DIR, else ./data)
  --tls-ca FILE       PEM certificate of the CA that signed the server's certificate:
                      connect with TLS (default: plaintext)
  --timeout SECONDS   deadline of each call (default 60; 0 means none); watching a
                      job has none (Ctrl-C stops watching, the job goes on)

Generation flags:
  --message ROLE:TEXT   one chat turn (ROLE: system, user or assistant); repeatable
  --messages-file F     JSON [{"role": "user", "content": "..."}, ...] or
                        {"messages": [...]}
  --stop S              stop string; repeatable
  --logprobs            return per-token log-probabilities (visible with --json)
  --no-stream           use the unary Generate RPC
  --json                print the whole response as JSON when generation ends
  --verbose             print finish reason, token counts, vector and seed to stderr

Training flags (unset ones take the server's defaults; proto/steerd/v1/training.proto):
  --task TASK             train on a built-in task's train split (arith, arith-words,
                          hops)
  --data F.jsonl          train on these examples: {"prompt": ..., "answer": ...} per
                          line
  --eval-split SPLIT      evaluate on the task's SPLIT (e.g. test); needs --task
  --eval-data F.jsonl     evaluate on these examples
  --eval-max N            evaluate on the first N examples only
  --eval-every N          evaluate every N steps too (default: after the last step)
  --algorithm A           rloo (default), grpo or sft
  --reward R              exact, numeric, boxed or regex (default: the task's own,
                          else boxed)
  --pattern P             the regular expression of --reward regex
  --correct-reward X  --incorrect-reward X  --format-reward X     in [-100, 100]
  --steps N  --prompts-per-step N  --rollouts N  --lr X  --max-new-tokens N
  --temperature X  --seed N
  --layers 0,1,2          train these layers' rows only (default: all)
  --clip-epsilon X  --inner-epochs N      grpo only
  --chat                  give each prompt to the model through its chat template
  --description TEXT      description of the published vector version
On a terminal, watch and train redraw one progress line; otherwise they print a line
per state change and per step. With --json they print each event as one JSON line.

--json prints protobuf JSON with the proto field and enum value names (e.g. "token_ids",
"FINISH_REASON_LENGTH", "STATE_SUCCEEDED"); text output shows values without the prefix.
Exit status: 0 success; 1 error, printed as "steerctl: CODE: message", or a watched job
that FAILED or was CANCELLED; 2 usage error; 130 Ctrl-C while watching a job.
)";

namespace {

using steerctl::CheckFlags;
using steerctl::Command;
using steerctl::Connect;
using steerctl::IsUsageError;
using steerctl::JobSpecFlags;
using steerctl::kExitCodePayloadUrl;
using steerctl::NoPositional;
using steerctl::RunGenerate;
using steerctl::RunJobs;
using steerctl::RunModels;
using steerctl::RunTrain;
using steerctl::RunVectors;
using steerctl::UsageError;
using steerctl::With;

FlagSpec AllFlags() {
  FlagSpec spec;
  spec.value_flags = {
      "addr",           "api-key", "tls-ca",      "timeout",  "data-dir", "model",
      "name",           "file",    "description", "out",      "prompt",   "messages-file",
      "vector",         "scale",   "temperature", "top-p",    "top-k",    "seed",
      "max-new-tokens", "service", "state",       "page-size"};
  for (const std::string& name : JobSpecFlags()) {
    if (name != "chat") spec.value_flags.insert(name);
  }
  spec.repeated_flags = {"message", "stop"};
  spec.bool_flags = {"json",    "all-versions", "logprobs", "ignore-eos", "no-stream",
                     "verbose", "help",         "chat",     "all"};
  return spec;
}

// ---------------------------------------------------------------------------- health

// Returns whether the server is SERVING.
absl::StatusOr<bool> RunHealth(const Command& c) {
  RETURN_IF_ERROR(CheckFlags(c.line, With({"service", "json"}), "health"));
  RETURN_IF_ERROR(NoPositional(c.line, 1));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(ServingStatus status, client->CheckHealth(c.line.Get("service")));
  if (c.line.Bool("json")) {
    c.out << nlohmann::json{{"status", ServingStatusName(status)}}.dump(2) << "\n";
  } else {
    c.out << ServingStatusName(status) << "\n";
  }
  return status == ServingStatus::kServing;
}

int PrintUsageError(const absl::Status& status, std::ostream& err) {
  err << "steerctl: " << status.message() << "\n\n" << kSteerctlUsage;
  return 2;
}

}  // namespace

int RunSteerctl(const std::vector<std::string>& args, std::ostream& out,
                std::ostream& err, bool out_is_terminal) {
  std::vector<std::string> argv = args;
  for (std::string& arg : argv) {
    if (arg == "-h") arg = "--help";
  }
  absl::StatusOr<CommandLine> line = CommandLine::Parse(argv, AllFlags());
  if (!line.ok()) return PrintUsageError(line.status(), err);
  const auto& positional = line->positional();
  if (line->Bool("help") || (!positional.empty() && positional[0] == "help")) {
    out << kSteerctlUsage;
    return 0;
  }
  if (positional.empty()) return PrintUsageError(UsageError("missing command"), err);

  const Command command{*line, out, err, out_is_terminal};
  const std::string& name = positional[0];
  absl::Status status;
  if (name == "models") {
    status = RunModels(command);
  } else if (name == "vectors") {
    status = RunVectors(command);
  } else if (name == "generate") {
    status = RunGenerate(command);
  } else if (name == "jobs") {
    status = RunJobs(command);
  } else if (name == "train") {
    status = RunTrain(command);
  } else if (name == "health") {
    absl::StatusOr<bool> serving = RunHealth(command);
    status = serving.status();
    if (status.ok() && !*serving) return 1;
  } else {
    status = UsageError(absl::StrCat("unknown command '", name, "'"));
  }
  if (status.ok()) return 0;
  if (IsUsageError(status)) return PrintUsageError(status, err);
  if (const auto exit_code = status.GetPayload(kExitCodePayloadUrl)) {
    err << "steerctl: " << status.message() << "\n";
    int code = 1;
    return absl::SimpleAtoi(std::string(*exit_code), &code) ? code : 1;
  }
  // The server's machine-readable reason, when it says more than the code does.
  const std::optional<ErrorDetails> details = GetErrorDetails(status);
  const std::string code = absl::StatusCodeToString(status.code());
  err << "steerctl: " << code;
  if (details.has_value() && !details->reason.empty() && details->reason != code) {
    err << " [" << details->reason << "]";
  }
  err << ": " << status.message() << "\n";
  return 1;
}

}  // namespace steerd::client
