#include "client/steerctl_commands.h"

#include <fcntl.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/command_line.h"
#include "client/enum_names.h"
#include "client/job_progress.h"
#include "client/steerd_client.h"
#include "server/api/grpc_status.h"
#include "server/train/dataset.h"
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

namespace v1 = ::steerd::v1;

constexpr char kUsagePayloadUrl[] = "type.steerd/steerctl.UsageError";
constexpr char kExitCodePayloadUrl[] = "type.steerd/steerctl.ExitCode";
constexpr double kDefaultTimeoutSeconds = 60;
constexpr int kInterruptedExitCode = 130;  // 128 + SIGINT, as shells report it
// InlineDataset's documented maximum.
constexpr size_t kMaxInlineExamples = 100000;
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// A usage error: RunSteerctl prints the usage text after it and exits 2.
absl::Status UsageError(absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kUsagePayloadUrl, absl::Cord("1"));
  return status;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayloadUrl).has_value();
}

// A failure that is no RPC's (a watched job that FAILED, a watch stopped by Ctrl-C):
// RunSteerctl prints "steerctl: <message>", without a code name, and exits with
// `exit_code`.
absl::Status CommandFailure(absl::string_view message, int exit_code) {
  absl::Status status = absl::AbortedError(message);
  status.SetPayload(kExitCodePayloadUrl, absl::Cord(absl::StrCat(exit_code)));
  return status;
}

// Parse errors of flags are usage errors.
template <typename T>
absl::StatusOr<T> AsUsage(absl::StatusOr<T> value) {
  if (!value.ok()) return UsageError(value.status().message());
  return value;
}

// The flags that describe a training job (jobs create, train); all take a value
// except --chat.
std::set<std::string> JobSpecFlags() {
  std::set<std::string> flags = {"model", "output", "task",
                                 "data",  "chat",   "description"};
  flags.insert({"eval-split", "eval-data", "eval-max", "eval-every"});
  flags.insert({"algorithm", "reward", "pattern", "correct-reward", "incorrect-reward",
                "format-reward"});
  flags.insert({"steps", "prompts-per-step", "rollouts", "lr", "max-new-tokens",
                "temperature", "seed", "layers", "clip-epsilon", "inner-epochs"});
  return flags;
}

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

// `names` and the flags every command takes.
std::set<std::string> With(std::set<std::string> names) {
  names.insert({"addr", "api-key", "tls-ca", "timeout", "data-dir", "help"});
  return names;
}

struct Command {
  const CommandLine& line;
  std::ostream& out;
  std::ostream& err;
  bool out_is_terminal;
};

absl::StatusOr<std::unique_ptr<SteerdClient>> Connect(const CommandLine& line) {
  ASSIGN_OR_RETURN(
      ClientOptions options,
      ResolveConnection(line.Get("addr"), line.Get("api-key"), line.Get("data-dir")));
  options.tls_ca_file = line.Get("tls-ca");
  ASSIGN_OR_RETURN(double timeout,
                   AsUsage(line.GetDouble("timeout", kDefaultTimeoutSeconds)));
  if (timeout < 0) return UsageError("--timeout must not be negative");
  options.timeout = timeout == 0 ? absl::InfiniteDuration() : absl::Seconds(timeout);
  return SteerdClient::Create(options);
}

absl::Status WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// `message` as proto3 JSON with the proto field names, indented, or on one line when
// `one_line` (a stream of events, one JSON document per line).
absl::Status PrintJson(const google::protobuf::Message& message, std::ostream& out,
                       bool one_line = false) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = !one_line;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  const auto status =
      google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("cannot print JSON: ", status.ToString()));
  }
  out << json;
  if (json.empty() || json.back() != '\n') out << '\n';
  return absl::OkStatus();
}

// Left-aligned columns separated by two spaces; the last column is not padded.
void PrintTable(const std::vector<std::vector<std::string>>& rows, std::ostream& out) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i)
      widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      if (i > 0) line += "  ";
      line += row[i];
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size(), ' ');
    }
    out << std::string(absl::StripTrailingAsciiWhitespace(line)) << '\n';
  }
}

std::string OrDash(const std::string& text) { return text.empty() ? "-" : text; }

std::string OneLine(const std::string& text) {
  return OrDash(absl::StrReplaceAll(text, {{"\r\n", " "}, {"\n", " "}, {"\t", " "}}));
}

std::string HumanBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, "B");
  if (bytes < (int64_t{1} << 20)) return absl::StrFormat("%.1fKiB", bytes / 1024.0);
  return absl::StrFormat("%.1fMiB", bytes / (1024.0 * 1024.0));
}

std::string FormatTimestamp(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(time.seconds()),
                          absl::UTCTimeZone());
}

std::vector<std::string> VectorHeader() {
  return {"VECTOR", "MODEL",   "SHAPE",  "DTYPE",      "SIZE",
          "SOURCE", "CREATED", "SHA256", "DESCRIPTION"};
}

std::vector<std::string> VectorRow(const v1::Vector& vector) {
  std::string source = "-";
  if (vector.source() == v1::Vector::SOURCE_UPLOAD) source = "upload";
  if (vector.source() == v1::Vector::SOURCE_TRAINING)
    source = absl::StrCat("job:", vector.job_id());
  return {absl::StrCat(vector.name(), "@", vector.version()),
          OrDash(vector.model()),
          absl::StrCat(vector.num_layers(), "x", vector.hidden_size()),
          OrDash(vector.dtype()),
          HumanBytes(vector.size_bytes()),
          source,
          FormatTimestamp(vector.create_time()),
          OrDash(vector.sha256().substr(0, 12)),
          OneLine(vector.description())};
}

void PrintVectors(const std::vector<v1::Vector>& vectors, std::ostream& out) {
  std::vector<std::vector<std::string>> rows = {VectorHeader()};
  for (const v1::Vector& vector : vectors) rows.push_back(VectorRow(vector));
  PrintTable(rows, out);
}

// A usage error naming the first flag `command` does not take.
absl::Status CheckFlags(const CommandLine& line, const std::set<std::string>& allowed,
                        const std::string& command) {
  absl::Status status = line.CheckAllowed(allowed, command);
  return status.ok() ? status : UsageError(status.message());
}

// The single positional argument after `words` command words, e.g. NAME[@VERSION].
absl::StatusOr<std::string> OnePositional(const CommandLine& line, size_t words,
                                          const std::string& what) {
  const auto& positional = line.positional();
  if (positional.size() < words + 1) return UsageError(absl::StrCat("missing ", what));
  if (positional.size() > words + 1) {
    return UsageError(absl::StrCat("unexpected argument '", positional[words + 1], "'"));
  }
  return positional[words];
}

absl::Status NoPositional(const CommandLine& line, size_t words) {
  if (line.positional().size() > words) {
    return UsageError(
        absl::StrCat("unexpected argument '", line.positional()[words], "'"));
  }
  return absl::OkStatus();
}

// --name's value, in any case, as a value of the proto enum `Enum` other than its
// UNSPECIFIED zero: its short name ("queued") or its full one ("state_queued"). The error
// lists the short names.
template <typename Enum>
absl::StatusOr<Enum> ParseEnumFlag(const CommandLine& line, const std::string& name) {
  const google::protobuf::EnumDescriptor* descriptor =
      google::protobuf::GetEnumDescriptor<Enum>();
  const std::string text = line.Get(name);
  const google::protobuf::EnumValueDescriptor* value =
      FindEnumValue(*descriptor, absl::AsciiStrToUpper(text));
  if (value != nullptr && value->number() != 0) return static_cast<Enum>(value->number());
  std::vector<std::string> choices;
  for (int i = 0; i < descriptor->value_count(); ++i) {
    if (descriptor->value(i)->number() != 0) {
      choices.push_back(absl::AsciiStrToLower(ShortEnumName(*descriptor->value(i))));
    }
  }
  return UsageError(absl::StrCat("flag --", name, ": unknown value '", text, "' (",
                                 absl::StrJoin(choices, ", "), ")"));
}

// Calls `set` with --name when it is given: an integer in [min, max].
template <typename Set>
absl::Status SetIntFlag(const CommandLine& line, const std::string& name, int64_t min,
                        int64_t max, const Set& set) {
  if (!line.Has(name)) return absl::OkStatus();
  ASSIGN_OR_RETURN(int64_t value, AsUsage(line.GetInt(name, 0)));
  if (value < min || value > max) {
    return UsageError(
        absl::StrCat("flag --", name, ": ", value, " is not in [", min, ", ", max, "]"));
  }
  set(static_cast<int32_t>(value));
  return absl::OkStatus();
}

// Calls `set` with --name when it is given: a number in [min, max], or in (min, max]
// when `min_excluded`.
template <typename Set>
absl::Status SetFloatFlag(const CommandLine& line, const std::string& name, double min,
                          bool min_excluded, double max, const Set& set) {
  if (!line.Has(name)) return absl::OkStatus();
  ASSIGN_OR_RETURN(double value, AsUsage(line.GetDouble(name, 0)));
  if (value < min || (min_excluded && value == min) || value > max) {
    return UsageError(absl::StrCat("flag --", name, ": ", line.Get(name), " is not in ",
                                   min_excluded ? "(" : "[", min, ", ", max, "]"));
  }
  set(static_cast<float>(value));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------- models

absl::Status RunModels(const Command& c) {
  RETURN_IF_ERROR(CheckFlags(c.line, With({"json"}), "models"));
  RETURN_IF_ERROR(NoPositional(c.line, 1));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(std::vector<v1::Model> models, client->ListModels());
  if (c.line.Bool("json")) {
    v1::ListModelsResponse response;
    for (v1::Model& model : models) *response.add_models() = std::move(model);
    return PrintJson(response, c.out);
  }
  if (models.empty()) {
    c.err << "no models loaded\n";
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "ARCHITECTURE", "LAYERS", "HIDDEN", "VOCAB", "CONTEXT", "DTYPE", "DEVICE",
       "CHAT_TEMPLATE", "FINGERPRINT"}};
  for (const v1::Model& model : models) {
    rows.push_back({model.name(), OrDash(model.architecture()),
                    absl::StrCat(model.num_layers()), absl::StrCat(model.hidden_size()),
                    absl::StrCat(model.vocab_size()), absl::StrCat(model.max_context()),
                    OrDash(model.dtype()), OrDash(model.device()),
                    OrDash(model.chat_template()), OrDash(model.fingerprint())});
  }
  PrintTable(rows, c.out);
  return absl::OkStatus();
}

// --------------------------------------------------------------------------- vectors

absl::Status RunVectorsCreate(const Command& c) {
  RETURN_IF_ERROR(CheckFlags(
      c.line, With({"model", "name", "file", "description", "json"}), "vectors create"));
  RETURN_IF_ERROR(NoPositional(c.line, 2));
  ASSIGN_OR_RETURN(std::string model, AsUsage(c.line.Required("model")));
  ASSIGN_OR_RETURN(std::string name, AsUsage(c.line.Required("name")));
  ASSIGN_OR_RETURN(std::string file, AsUsage(c.line.Required("file")));
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(file));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(v1::Vector vector, client->CreateVector(model, name, std::move(bytes),
                                                           c.line.Get("description")));
  if (c.line.Bool("json")) return PrintJson(vector, c.out);
  PrintVectors({vector}, c.out);
  return absl::OkStatus();
}

absl::Status RunVectorsGet(const Command& c) {
  RETURN_IF_ERROR(CheckFlags(c.line, With({"json"}), "vectors get"));
  ASSIGN_OR_RETURN(std::string ref, OnePositional(c.line, 2, "NAME[@VERSION]"));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(v1::Vector vector, client->GetVector(ref));
  if (c.line.Bool("json")) return PrintJson(vector, c.out);
  PrintVectors({vector}, c.out);
  return absl::OkStatus();
}

absl::Status RunVectorsList(const Command& c) {
  RETURN_IF_ERROR(CheckFlags(c.line, With({"model", "name", "all-versions", "json"}),
                             "vectors list"));
  RETURN_IF_ERROR(NoPositional(c.line, 2));
  VectorFilter filter;
  filter.model = c.line.Get("model");
  filter.name = c.line.Get("name");
  filter.all_versions = c.line.Bool("all-versions");
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(std::vector<v1::Vector> vectors, client->ListVectors(filter));
  if (c.line.Bool("json")) {
    v1::ListVectorsResponse response;
    for (v1::Vector& vector : vectors) *response.add_vectors() = std::move(vector);
    return PrintJson(response, c.out);
  }
  if (vectors.empty()) {
    c.err << "no vectors\n";
    return absl::OkStatus();
  }
  PrintVectors(vectors, c.out);
  return absl::OkStatus();
}

absl::Status RunVectorsExport(const Command& c) {
  RETURN_IF_ERROR(CheckFlags(c.line, With({"out", "json"}), "vectors export"));
  ASSIGN_OR_RETURN(std::string ref, OnePositional(c.line, 2, "NAME[@VERSION]"));
  ASSIGN_OR_RETURN(std::string path, AsUsage(c.line.Required("out")));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(v1::ExportVectorResponse response, client->ExportVector(ref));
  RETURN_IF_ERROR(WriteFile(path, response.safetensors()));
  // The JSON is the metadata: the file itself went to --out.
  if (c.line.Bool("json")) return PrintJson(response.vector(), c.out);
  c.out << "wrote " << response.vector().name() << "@" << response.vector().version()
        << " (" << response.safetensors().size() << " bytes, sha256 "
        << OrDash(response.vector().sha256()) << ") to " << path << "\n";
  return absl::OkStatus();
}

absl::Status RunVectorsDelete(const Command& c) {
  RETURN_IF_ERROR(CheckFlags(c.line, With({"json"}), "vectors delete"));
  ASSIGN_OR_RETURN(std::string ref, OnePositional(c.line, 2, "NAME[@VERSION]"));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(v1::DeleteVectorResponse response, client->DeleteVector(ref));
  if (c.line.Bool("json")) return PrintJson(response, c.out);
  for (const v1::VectorRef& deleted : response.deleted()) {
    c.out << "deleted " << FormatVectorRef(deleted) << "\n";
  }
  return absl::OkStatus();
}

absl::Status RunVectors(const Command& c) {
  const auto& positional = c.line.positional();
  if (positional.size() < 2) {
    return UsageError("missing vectors subcommand (create, get, list, export, delete)");
  }
  const std::string& sub = positional[1];
  if (sub == "create") return RunVectorsCreate(c);
  if (sub == "get") return RunVectorsGet(c);
  if (sub == "list") return RunVectorsList(c);
  if (sub == "export") return RunVectorsExport(c);
  if (sub == "delete") return RunVectorsDelete(c);
  return UsageError(absl::StrCat("unknown vectors subcommand '", sub, "'"));
}

// -------------------------------------------------------------------------- generate

absl::StatusOr<v1::ChatMessage::Role> ParseRole(absl::string_view text) {
  const std::string role = absl::AsciiStrToLower(text);
  if (role == "system") return v1::ChatMessage::ROLE_SYSTEM;
  if (role == "user") return v1::ChatMessage::ROLE_USER;
  if (role == "assistant") return v1::ChatMessage::ROLE_ASSISTANT;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown role '", text, "' (system, user or assistant)"));
}

// "[{"role": ..., "content": ...}, ...]" or {"messages": [...]}.
absl::Status ReadMessagesFile(const std::string& path, v1::ChatMessages* messages) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  }
  if (json.is_object() && json.contains("messages")) json = json["messages"];
  if (!json.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": expected an array of {\"role\", \"content\"} or {\"messages\": [...]}"));
  }
  for (size_t i = 0; i < json.size(); ++i) {
    const nlohmann::json& item = json[i];
    if (!item.is_object() || !item.contains("role") || !item["role"].is_string() ||
        (item.contains("content") && !item["content"].is_string())) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": message ", i, " is not {\"role\": string, \"content\": string}"));
    }
    absl::StatusOr<v1::ChatMessage::Role> role =
        ParseRole(item["role"].get<std::string>());
    if (!role.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": message ", i, ": ", role.status().message()));
    }
    v1::ChatMessage* message = messages->add_messages();
    message->set_role(*role);
    if (item.contains("content"))
      message->set_content(item["content"].get<std::string>());
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> GetInt32(const CommandLine& line, const std::string& name) {
  int32_t value = 0;
  RETURN_IF_ERROR(SetIntFlag(line, name, std::numeric_limits<int32_t>::min(), kInt32Max,
                             [&](int32_t given) { value = given; }));
  return value;
}

absl::StatusOr<v1::GenerateRequest> BuildGenerateRequest(const CommandLine& line) {
  v1::GenerateRequest request;
  ASSIGN_OR_RETURN(*request.mutable_model(), AsUsage(line.Required("model")));

  const int inputs = line.Has("prompt") + line.Has("message") + line.Has("messages-file");
  if (inputs != 1) {
    return UsageError("give exactly one of --prompt, --message or --messages-file");
  }
  if (line.Has("prompt")) {
    request.set_prompt(line.Get("prompt"));
  } else if (line.Has("message")) {
    for (const std::string& text : line.GetAll("message")) {
      const size_t colon = text.find(':');
      if (colon == std::string::npos) {
        return UsageError(absl::StrCat("--message '", text, "' is not ROLE:TEXT"));
      }
      absl::StatusOr<v1::ChatMessage::Role> role = ParseRole(text.substr(0, colon));
      if (!role.ok())
        return UsageError(absl::StrCat("--message: ", role.status().message()));
      v1::ChatMessage* message = request.mutable_messages()->add_messages();
      message->set_role(*role);
      message->set_content(text.substr(colon + 1));
    }
  } else {
    RETURN_IF_ERROR(
        ReadMessagesFile(line.Get("messages-file"), request.mutable_messages()));
  }

  if (line.Has("vector")) {
    request.mutable_steering()->set_vector(line.Get("vector"));
    if (line.Has("scale")) {
      ASSIGN_OR_RETURN(double scale, AsUsage(line.GetDouble("scale", 1.0)));
      request.mutable_steering()->set_scale(static_cast<float>(scale));
    }
  } else if (line.Has("scale")) {
    return UsageError("--scale needs --vector");
  }

  const bool any_sampling = line.Has("temperature") || line.Has("top-p") ||
                            line.Has("top-k") || line.Has("seed") ||
                            line.Has("max-new-tokens") || line.Has("stop");
  if (any_sampling) {
    v1::SamplingParams* sampling = request.mutable_sampling();
    ASSIGN_OR_RETURN(double temperature, AsUsage(line.GetDouble("temperature", 0)));
    ASSIGN_OR_RETURN(double top_p, AsUsage(line.GetDouble("top-p", 0)));
    ASSIGN_OR_RETURN(int32_t top_k, GetInt32(line, "top-k"));
    ASSIGN_OR_RETURN(int32_t max_new_tokens, GetInt32(line, "max-new-tokens"));
    sampling->set_temperature(static_cast<float>(temperature));
    sampling->set_top_p(static_cast<float>(top_p));
    sampling->set_top_k(top_k);
    sampling->set_max_new_tokens(max_new_tokens);
    if (line.Has("seed")) {
      ASSIGN_OR_RETURN(uint64_t seed, AsUsage(line.GetUint("seed", 0)));
      sampling->set_seed(seed);
    }
    for (const std::string& stop : line.GetAll("stop")) sampling->add_stop(stop);
  }
  request.set_return_logprobs(line.Bool("logprobs"));
  request.set_ignore_eos(line.Bool("ignore-eos"));
  return request;
}

void PrintSummary(const v1::GenerateResponse& response, std::ostream& err) {
  err << "finish_reason=" << ShortEnumName(response.finish_reason())
      << " prompt_tokens=" << response.usage().prompt_tokens()
      << " completion_tokens=" << response.usage().completion_tokens()
      << " vector=" << (response.has_vector() ? FormatVectorRef(response.vector()) : "-")
      << " seed=" << response.seed() << "\n";
}

absl::Status RunGenerate(const Command& c) {
  RETURN_IF_ERROR(
      CheckFlags(c.line,
                 With({"model", "prompt", "message", "messages-file", "vector", "scale",
                       "temperature", "top-p", "top-k", "seed", "max-new-tokens", "stop",
                       "logprobs", "ignore-eos", "no-stream", "json", "verbose"}),
                 "generate"));
  RETURN_IF_ERROR(NoPositional(c.line, 1));
  ASSIGN_OR_RETURN(v1::GenerateRequest request, BuildGenerateRequest(c.line));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  const bool json = c.line.Bool("json");

  v1::GenerateResponse response;
  if (c.line.Bool("no-stream")) {
    ASSIGN_OR_RETURN(response, client->Generate(request));
    if (!json) {
      c.out << response.text();
      if (response.text().empty() || response.text().back() != '\n') c.out << '\n';
      c.out.flush();
    }
  } else {
    absl::Status status =
        client->GenerateStream(request, [&](const v1::GenerateChunk& chunk) {
          AppendChunk(chunk, &response);
          if (!json && !chunk.text().empty()) c.out << chunk.text() << std::flush;
          return true;
        });
    // End the text's line before any error message or the shell prompt.
    if (!json && !response.text().empty() && response.text().back() != '\n') {
      c.out << '\n' << std::flush;
    }
    RETURN_IF_ERROR(status);
  }
  if (json) RETURN_IF_ERROR(PrintJson(response, c.out));
  if (c.line.Bool("verbose")) PrintSummary(response, c.err);
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------ jobs

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
absl::StatusOr<v1::CreateJobRequest> BuildCreateJobRequest(const CommandLine& line) {
  v1::CreateJobRequest request;
  ASSIGN_OR_RETURN(*request.mutable_model(), AsUsage(line.Required("model")));
  ASSIGN_OR_RETURN(*request.mutable_output_vector(), AsUsage(line.Required("output")));
  if (line.Has("task") == line.Has("data")) {
    return UsageError("give exactly one of --task or --data");
  }
  if (line.Has("task")) request.set_task(line.Get("task"));

  if (line.Has("eval-split") && line.Has("eval-data")) {
    return UsageError("give at most one of --eval-split or --eval-data");
  }
  if (line.Has("eval-split")) {
    if (!line.Has("task")) {
      return UsageError("--eval-split needs --task (with --data, use --eval-data)");
    }
    request.mutable_eval()->set_split(line.Get("eval-split"));
  }
  const bool has_eval = line.Has("eval-split") || line.Has("eval-data");
  for (const char* flag : {"eval-max", "eval-every"}) {
    if (line.Has(flag) && !has_eval) {
      return UsageError(absl::StrCat("--", flag, " needs --eval-split or --eval-data"));
    }
  }
  RETURN_IF_ERROR(SetIntFlag(line, "eval-max", 0, kInt32Max, [&](int32_t value) {
    request.mutable_eval()->set_max_examples(value);
  }));

  v1::Algorithm algorithm = v1::ALGORITHM_RLOO;  // the server's default
  if (line.Has("algorithm")) {
    ASSIGN_OR_RETURN(algorithm, ParseEnumFlag<v1::Algorithm>(line, "algorithm"));
    request.set_algorithm(algorithm);
  }
  // Flags the algorithm ignores are mistakes worth naming, not silently dropped.
  if (algorithm != v1::ALGORITHM_GRPO) {
    for (const char* flag : {"clip-epsilon", "inner-epochs"}) {
      if (line.Has(flag)) {
        return UsageError(absl::StrCat("--", flag, " is for --algorithm grpo only"));
      }
    }
  }
  if (algorithm == v1::ALGORITHM_SFT) {
    for (const char* flag : {"rollouts", "temperature"}) {
      if (line.Has(flag)) {
        return UsageError(
            absl::StrCat("--", flag, " is not used by --algorithm sft (no rollouts)"));
      }
    }
  }

  v1::RewardSpec* reward = request.mutable_reward();
  if (line.Has("reward")) {
    ASSIGN_OR_RETURN(v1::RewardSpec::Type type,
                     ParseEnumFlag<v1::RewardSpec::Type>(line, "reward"));
    reward->set_type(type);
  }
  if (reward->type() == v1::RewardSpec::TYPE_REGEX) {
    if (!line.Has("pattern")) return UsageError("--reward regex needs --pattern");
    reward->set_pattern(line.Get("pattern"));
  } else if (line.Has("pattern")) {
    return UsageError("--pattern needs --reward regex");
  }
  RETURN_IF_ERROR(SetFloatFlag(line, "correct-reward", -100, false, 100,
                               [&](float value) { reward->set_correct_reward(value); }));
  RETURN_IF_ERROR(
      SetFloatFlag(line, "incorrect-reward", -100, false, 100,
                   [&](float value) { reward->set_incorrect_reward(value); }));
  RETURN_IF_ERROR(SetFloatFlag(line, "format-reward", -100, false, 100,
                               [&](float value) { reward->set_format_reward(value); }));
  if (reward->ByteSizeLong() == 0) request.clear_reward();

  v1::Hyperparameters* hp = request.mutable_hyperparameters();
  RETURN_IF_ERROR(
      SetIntFlag(line, "steps", 1, 100000, [&](int32_t value) { hp->set_steps(value); }));
  RETURN_IF_ERROR(SetIntFlag(line, "prompts-per-step", 1, 1024,
                             [&](int32_t value) { hp->set_prompts_per_step(value); }));
  RETURN_IF_ERROR(SetIntFlag(line, "rollouts", 2, 256,
                             [&](int32_t value) { hp->set_rollouts_per_prompt(value); }));
  RETURN_IF_ERROR(SetFloatFlag(line, "lr", 0, true, 1,
                               [&](float value) { hp->set_learning_rate(value); }));
  RETURN_IF_ERROR(SetIntFlag(line, "max-new-tokens", 1, kInt32Max,
                             [&](int32_t value) { hp->set_max_new_tokens(value); }));
  RETURN_IF_ERROR(SetFloatFlag(line, "temperature", 0, true, 2,
                               [&](float value) { hp->set_temperature(value); }));
  if (line.Has("seed")) {
    ASSIGN_OR_RETURN(uint64_t seed, AsUsage(line.GetUint("seed", 0)));
    hp->set_seed(seed);
  }
  if (line.Has("layers")) RETURN_IF_ERROR(ParseLayers(line.Get("layers"), hp));
  RETURN_IF_ERROR(SetIntFlag(line, "eval-every", 0, kInt32Max,
                             [&](int32_t value) { hp->set_eval_every(value); }));
  RETURN_IF_ERROR(SetFloatFlag(line, "clip-epsilon", 0, true, 1,
                               [&](float value) { hp->set_clip_epsilon(value); }));
  RETURN_IF_ERROR(SetIntFlag(line, "inner-epochs", 1, 16,
                             [&](int32_t value) { hp->set_inner_epochs(value); }));
  if (hp->ByteSizeLong() == 0) request.clear_hyperparameters();

  request.set_apply_chat_template(line.Bool("chat"));
  request.set_description(line.Get("description"));

  if (line.Has("data")) {
    RETURN_IF_ERROR(LoadDataset(line.Get("data"), request.mutable_examples()));
  }
  if (line.Has("eval-data")) {
    RETURN_IF_ERROR(
        LoadDataset(line.Get("eval-data"), request.mutable_eval()->mutable_examples()));
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
  const bool json = c.line.Bool("json");
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

absl::Status RunJobsCreate(const Command& c) {
  std::set<std::string> allowed = JobSpecFlags();
  allowed.insert("json");
  RETURN_IF_ERROR(CheckFlags(c.line, With(allowed), "jobs create"));
  RETURN_IF_ERROR(NoPositional(c.line, 2));
  ASSIGN_OR_RETURN(v1::CreateJobRequest request, BuildCreateJobRequest(c.line));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(v1::Job job, client->CreateJob(request));
  if (c.line.Bool("json")) return PrintJson(job, c.out);
  PrintJobs({job}, c.out);
  return absl::OkStatus();
}

absl::Status RunJobsGet(const Command& c) {
  RETURN_IF_ERROR(CheckFlags(c.line, With({"json"}), "jobs get"));
  ASSIGN_OR_RETURN(std::string id, OnePositional(c.line, 2, "job ID"));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(v1::Job job, client->GetJob(id));
  if (c.line.Bool("json")) return PrintJson(job, c.out);
  PrintJobs({job}, c.out);
  return absl::OkStatus();
}

absl::Status RunJobsList(const Command& c) {
  RETURN_IF_ERROR(
      CheckFlags(c.line, With({"state", "page-size", "all", "json"}), "jobs list"));
  RETURN_IF_ERROR(NoPositional(c.line, 2));
  JobFilter filter;
  if (c.line.Has("state")) {
    ASSIGN_OR_RETURN(filter.state, ParseEnumFlag<v1::Job::State>(c.line, "state"));
  }
  RETURN_IF_ERROR(SetIntFlag(c.line, "page-size", 0, kInt32Max,
                             [&](int32_t value) { filter.page_size = value; }));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  v1::ListJobsResponse response;
  if (c.line.Bool("all")) {
    ASSIGN_OR_RETURN(std::vector<v1::Job> jobs, client->ListJobs(filter));
    for (v1::Job& job : jobs) *response.add_jobs() = std::move(job);
  } else {
    v1::ListJobsRequest request;
    request.set_state(filter.state);
    request.set_page_size(filter.page_size);
    ASSIGN_OR_RETURN(response, client->ListJobsPage(request));
  }
  if (c.line.Bool("json")) return PrintJson(response, c.out);
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
  RETURN_IF_ERROR(CheckFlags(c.line, With({"json"}), "jobs cancel"));
  ASSIGN_OR_RETURN(std::string id, OnePositional(c.line, 2, "job ID"));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(v1::Job job, client->CancelJob(id));
  if (c.line.Bool("json")) return PrintJson(job, c.out);
  PrintJobs({job}, c.out);
  // A running job stops only after its current step.
  if (job.state() == v1::Job::STATE_RUNNING) {
    c.err << "job " << id << " stops after its current step (steerctl jobs watch " << id
          << " shows the end)\n";
  }
  return absl::OkStatus();
}

absl::Status RunJobsWatch(const Command& c) {
  RETURN_IF_ERROR(CheckFlags(c.line, With({"json"}), "jobs watch"));
  ASSIGN_OR_RETURN(std::string id, OnePositional(c.line, 2, "job ID"));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  return WatchUntilDone(*client, id, /*created=*/false, c);
}

absl::Status RunJobs(const Command& c) {
  const auto& positional = c.line.positional();
  if (positional.size() < 2) {
    return UsageError("missing jobs subcommand (create, get, list, cancel, watch)");
  }
  const std::string& sub = positional[1];
  if (sub == "create") return RunJobsCreate(c);
  if (sub == "get") return RunJobsGet(c);
  if (sub == "list") return RunJobsList(c);
  if (sub == "cancel") return RunJobsCancel(c);
  if (sub == "watch") return RunJobsWatch(c);
  return UsageError(absl::StrCat("unknown jobs subcommand '", sub, "'"));
}

absl::Status RunTrain(const Command& c) {
  std::set<std::string> allowed = JobSpecFlags();
  allowed.insert("json");
  RETURN_IF_ERROR(CheckFlags(c.line, With(allowed), "train"));
  RETURN_IF_ERROR(NoPositional(c.line, 1));
  ASSIGN_OR_RETURN(v1::CreateJobRequest request, BuildCreateJobRequest(c.line));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.line));
  ASSIGN_OR_RETURN(v1::Job job, client->CreateJob(request));
  return WatchUntilDone(*client, job.id(), /*created=*/true, c);
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
