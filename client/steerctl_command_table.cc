// steerctl's commands and their flag tables (SteerctlProgram, steerctl_commands.h).
#include <vector>

#include "client/steerctl_commands.h"
#include "server/util/flags.h"

namespace steerd::client {

namespace {

// How to reach the server: every command takes them.
std::vector<FlagDef> ConnectionFlags() {
  return {
      ValueFlag("addr", "TARGET",
                "The server: HOST:PORT; replicas as a list of IP addresses "
                "(10.0.0.5:50051,10.0.0.6:50051 or [::1]:1,[::1]:2), or dns:///NAME:PORT "
                "for every address of a name (a headless Service), re-resolved as replicas "
                "come and go; or any gRPC target URI. Calls are balanced round robin, and "
                "retried on UNAVAILABLE (up to 5 attempts) while they have no output.",
                "$STEERD_ADDR, else 127.0.0.1:50051"),
      ValueFlag("api-key", "KEY", "API key.",
                "$STEERD_API_KEY, else the contents of DATA_DIR/api_key"),
      ValueFlag("data-dir", "DIR", "The server's data directory, for its api_key file.",
                "$STEERD_DATA_DIR, else ./data"),
      ValueFlag("tls-ca", "FILE",
                "PEM certificate of the CA that signed the server's certificate: connect "
                "with TLS.",
                "plaintext"),
      ValueFlag("timeout", "SECONDS",
                "Deadline of each call; 0 means none. Watching a job has none (Ctrl-C "
                "stops watching, the job goes on).",
                "60"),
  };
}

FlagDef JsonFlag() {
  return BoolFlag("json", "Print the response as protobuf JSON (proto field names).");
}

// A command that takes the connection flags, `own` flags and --json.
CommandDef ConnectedCommand(std::string name, std::vector<std::string> arguments, std::string summary,
                   std::vector<FlagDef> own, std::string details = "") {
  return {std::move(name),    std::move(arguments),
          std::move(summary), std::move(details),
          ConcatFlags({std::move(own), {JsonFlag()}, ConnectionFlags()})};
}

const char kVectorRef[] = "NAME[@VERSION]";

// What a training job is (jobs create, train). Unset ones take the server's defaults
// (proto/steerd/v1/training.proto).
std::vector<FlagDef> JobSpecFlags() {
  return {
      RequiredFlag("model", "M", "The base model to train on."),
      RequiredFlag("output", "NAME", "The vector the job publishes, as its next version."),
      ValueFlag("task", "TASK",
                "Train on a built-in task's train split: arith, arith-words or hops. Or "
                "--data."),
      ValueFlag("data", "F.jsonl",
                "Train on these examples, one {\"prompt\": ..., \"answer\": ...} a line. Or "
                "--task."),
      ValueFlag("eval-split", "SPLIT", "Evaluate on the task's SPLIT (e.g. test); needs --task."),
      ValueFlag("eval-data", "F.jsonl", "Evaluate on these examples."),
      ValueFlag("eval-max", "N", "Evaluate on the first N examples only.", "all"),
      ValueFlag("eval-every", "N", "Evaluate every N steps too.", "after the last step"),
      ValueFlag("algorithm", "A", "rloo, grpo or sft.", "rloo"),
      ValueFlag("reward", "R", "How answers are checked: exact, numeric, boxed or regex.",
                "the task's own, else boxed"),
      ValueFlag("pattern", "P", "The regular expression of --reward regex."),
      ValueFlag("correct-reward", "X", "Reward of a correct answer, in [-100, 100]."),
      ValueFlag("incorrect-reward", "X", "Reward of a wrong answer, in [-100, 100]."),
      ValueFlag("format-reward", "X",
                "Reward of an answer in the wrong format, in [-100, 100]."),
      ValueFlag("steps", "N", "Optimizer steps, 1 to 100000."),
      ValueFlag("prompts-per-step", "N", "Distinct prompts per step, 1 to 1024."),
      ValueFlag("rollouts", "N", "Samples per prompt, 2 to 256 (not with sft)."),
      ValueFlag("lr", "X", "Learning rate, in (0, 1]."),
      ValueFlag("max-new-tokens", "N", "Longest rollout."),
      ValueFlag("temperature", "X", "Rollout sampling temperature, in (0, 2] (not with sft)."),
      ValueFlag("seed", "N", "Seed of the job's sampling."),
      ValueFlag("layers", "0,1,2", "Train these layers' rows only.", "all"),
      ValueFlag("clip-epsilon", "X", "grpo only: ratio clip, in (0, 1]."),
      ValueFlag("inner-epochs", "N", "grpo only: passes over each rollout batch, 1 to 16."),
      BoolFlag("chat", "Give each prompt to the model through its chat template."),
      ValueFlag("description", "TEXT", "Description of the published vector version."),
  };
}

const char kWatchDetails[] =
    "On a terminal the watch redraws one progress line; otherwise it prints a line per "
    "state change and per step. With --json it prints each event as one JSON line.";

}  // namespace

const ProgramDef& SteerctlProgram() {
  static const ProgramDef* const program = new ProgramDef{
      "steerctl",
      "steerctl: the command-line client of a steerd server.",
      {
          ConnectedCommand("steerctl models", {}, "List the server's models.", {}),
          ConnectedCommand("steerctl vectors create", {},
                  "Upload a steering vector as the next version of --name.",
                  {RequiredFlag("model", "M", "The model the vector is for."),
                   RequiredFlag("name", "N", "The vector's name."),
                   RequiredFlag("file", "F.safetensors", "The vector, [layers, hidden]."),
                   ValueFlag("description", "D", "Description of this version.")}),
          ConnectedCommand("steerctl vectors get", {kVectorRef},
                  "Show one version of a vector (the latest without @VERSION).", {}),
          ConnectedCommand("steerctl vectors list", {},
                  "List vectors: the latest version of each, or every version.",
                  {ValueFlag("model", "M", "Only vectors for this model."),
                   ValueFlag("name", "N", "Only vectors of this name."),
                   BoolFlag("all-versions", "Every version, not only the latest.")}),
          ConnectedCommand("steerctl vectors export", {kVectorRef},
                  "Write a vector's stored safetensors file to --out.",
                  {RequiredFlag("out", "F", "The file to write.")}),
          ConnectedCommand("steerctl vectors delete", {kVectorRef},
                  "Delete one version, or every version of NAME.", {}),
          ConnectedCommand("steerctl generate", {}, "Generate text, printed as it streams in.",
                  {RequiredFlag("model", "M", "The base model."),
                   ValueFlag("prompt", "TEXT", "The prompt (or --message, --messages-file)."),
                   RepeatedFlag("message", "ROLE:TEXT",
                                "One chat turn; ROLE is system, user or assistant."),
                   ValueFlag("messages-file", "F.json",
                             "Chat turns: [{\"role\": \"user\", \"content\": \"...\"}, ...] or "
                             "{\"messages\": [...]}."),
                   ValueFlag("vector", "NAME[@VERSION]", "Steer with this vector."),
                   ValueFlag("scale", "X", "Multiplies the vector; needs --vector.", "1"),
                   ValueFlag("temperature", "T", "Sampling temperature; 0 is greedy.",
                             "the server's"),
                   ValueFlag("top-p", "P", "Nucleus sampling mass.", "the server's"),
                   ValueFlag("top-k", "K", "Sample from the K likeliest tokens.",
                             "the server's"),
                   ValueFlag("seed", "S", "Sampling seed.", "drawn by the server"),
                   ValueFlag("max-new-tokens", "N", "Longest completion.", "the server's"),
                   RepeatedFlag("stop", "S", "Stop once the completion holds S."),
                   BoolFlag("logprobs", "Return per-token log-probabilities (seen with --json)."),
                   BoolFlag("ignore-eos", "Go on past the end-of-sequence token."),
                   BoolFlag("no-stream", "Use the unary Generate RPC."),
                   BoolFlag("verbose",
                            "Print finish reason, token counts, vector and seed to stderr.")},
                  "With --json the whole response is printed when generation ends."),
          ConnectedCommand("steerctl jobs create", {},
                  "Queue a job that trains a vector and publishes it as the next version of "
                  "--output.",
                  JobSpecFlags()),
          ConnectedCommand("steerctl jobs get", {"ID"}, "Show one training job.", {}),
          ConnectedCommand("steerctl jobs list", {},
                  "The newest jobs first: one page, or every job with --all.",
                  {ValueFlag("state", "S",
                             "Only jobs in this state: queued, running, succeeded, failed or "
                             "cancelled."),
                   ValueFlag("page-size", "N", "Jobs on the page.", "50"),
                   BoolFlag("all", "Every job, page after page.")}),
          ConnectedCommand("steerctl jobs cancel", {"ID"},
                  "Cancel a job; a running one stops after its current step.", {}),
          ConnectedCommand("steerctl jobs watch", {"ID"},
                  "Follow a job until it ends; print its vector as NAME@VERSION when it "
                  "succeeds.",
                  {}, kWatchDetails),
          ConnectedCommand("steerctl train", {}, "jobs create, then jobs watch.", JobSpecFlags(),
                  kWatchDetails),
          ConnectedCommand("steerctl health", {},
                  "Print the server's serving status (exit 0 only when SERVING).",
                  {ValueFlag("service", "S", "A service's status, e.g. steerd.v1.Generation.",
                             "the server's")}),
      },
      "--json prints protobuf JSON with the proto field and enum value names (e.g. "
      "\"token_ids\", \"FINISH_REASON_LENGTH\", \"STATE_SUCCEEDED\"); text output shows "
      "values without the prefix.\n"
      "Exit status: 0 success; 1 error, printed as \"steerctl: CODE: message\", or a watched "
      "job that FAILED or was CANCELLED; 2 usage error; 130 Ctrl-C while watching a job.",
  };
  return *program;
}

}  // namespace steerd::client
