#include "client/steerctl_commands.h"

#include <google/protobuf/util/json_util.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/command_line.h"
#include "client/steerd_client.h"
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
  --timeout SECONDS   deadline of each call (default 60; 0 means none)

Generation flags:
  --message ROLE:TEXT   one chat turn (ROLE: system, user or assistant); repeatable
  --messages-file F     JSON [{"role": "user", "content": "..."}, ...] or
                        {"messages": [...]}
  --stop S              stop string; repeatable
  --logprobs            return per-token log-probabilities (visible with --json)
  --no-stream           use the unary Generate RPC
  --json                print the whole response as JSON when generation ends
  --verbose             print finish reason, token counts, vector and seed to stderr

--json prints protobuf JSON with the proto field names (e.g. "token_ids").
Exit status: 0 success; 1 error, printed as "steerctl: CODE: message"; 2 usage error.
)";

namespace {

namespace v1 = ::steerd::v1;

constexpr char kUsagePayloadUrl[] = "type.steerd/steerctl.UsageError";
constexpr double kDefaultTimeoutSeconds = 60;

// A usage error: RunSteerctl prints the usage text after it and exits 2.
absl::Status UsageError(absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kUsagePayloadUrl, absl::Cord("1"));
  return status;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayloadUrl).has_value();
}

// Parse errors of flags are usage errors.
template <typename T>
absl::StatusOr<T> AsUsage(absl::StatusOr<T> value) {
  if (!value.ok()) return UsageError(value.status().message());
  return value;
}

FlagSpec AllFlags() {
  FlagSpec spec;
  spec.value_flags = {"addr",        "api-key", "tls-ca",         "timeout",
                      "data-dir",    "model",   "name",           "file",
                      "description", "out",     "prompt",         "messages-file",
                      "vector",      "scale",   "temperature",    "top-p",
                      "top-k",       "seed",    "max-new-tokens", "service"};
  spec.repeated_flags = {"message", "stop"};
  spec.bool_flags = {"json",      "all-versions", "logprobs", "ignore-eos",
                     "no-stream", "verbose",      "help"};
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

absl::Status PrintJson(const google::protobuf::Message& message, std::ostream& out) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
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

std::string VectorRefString(const v1::VectorRef& ref) {
  return absl::StrCat(ref.name(), "@", ref.version());
}

std::vector<std::string> VectorHeader() {
  return {"VECTOR", "MODEL",   "SHAPE",  "DTYPE",      "SIZE",
          "SOURCE", "CREATED", "SHA256", "DESCRIPTION"};
}

std::vector<std::string> VectorRow(const v1::Vector& vector) {
  std::string source = "-";
  if (vector.source() == v1::Vector::UPLOAD) source = "upload";
  if (vector.source() == v1::Vector::TRAINING)
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
    c.out << "deleted " << VectorRefString(deleted) << "\n";
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
  if (role == "system") return v1::ChatMessage::SYSTEM;
  if (role == "user") return v1::ChatMessage::USER;
  if (role == "assistant") return v1::ChatMessage::ASSISTANT;
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
  ASSIGN_OR_RETURN(int64_t value, AsUsage(line.GetInt(name, 0)));
  if (value < std::numeric_limits<int32_t>::min() ||
      value > std::numeric_limits<int32_t>::max()) {
    return UsageError(absl::StrCat("flag --", name, ": ", value, " is out of range"));
  }
  return static_cast<int32_t>(value);
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

std::string FinishReasonName(v1::FinishReason reason) {
  return v1::FinishReason_Name(reason);
}

void PrintSummary(const v1::GenerateResponse& response, std::ostream& err) {
  err << "finish_reason=" << FinishReasonName(response.finish_reason())
      << " prompt_tokens=" << response.usage().prompt_tokens()
      << " completion_tokens=" << response.usage().completion_tokens()
      << " vector=" << (response.has_vector() ? VectorRefString(response.vector()) : "-")
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
                std::ostream& err) {
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

  const Command command{*line, out, err};
  const std::string& name = positional[0];
  absl::Status status;
  if (name == "models") {
    status = RunModels(command);
  } else if (name == "vectors") {
    status = RunVectors(command);
  } else if (name == "generate") {
    status = RunGenerate(command);
  } else if (name == "health") {
    absl::StatusOr<bool> serving = RunHealth(command);
    status = serving.status();
    if (status.ok() && !*serving) return 1;
  } else {
    status = UsageError(absl::StrCat("unknown command '", name, "'"));
  }
  if (status.ok()) return 0;
  if (IsUsageError(status)) return PrintUsageError(status, err);
  err << "steerctl: " << absl::StatusCodeToString(status.code()) << ": "
      << status.message() << "\n";
  return 1;
}

}  // namespace steerd::client
