// steerctl generate: one generation, streamed as it comes or whole (--no-stream).
#include "client/steerctl_common.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "client/enum_names.h"
#include "client/job_progress.h"
#include "client/steerd_client.h"
#include "server/util/status_macros.h"

namespace steerd::client::steerctl {

namespace {

namespace v1 = ::steerd::v1;

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

absl::StatusOr<int32_t> GetInt32(const ParsedFlags& flags, const std::string& name) {
  int32_t value = 0;
  RETURN_IF_ERROR(SetIntFlag(flags, name, std::numeric_limits<int32_t>::min(), kInt32Max,
                             [&](int32_t given) { value = given; }));
  return value;
}

absl::StatusOr<v1::GenerateRequest> BuildGenerateRequest(const ParsedFlags& flags) {
  v1::GenerateRequest request;
  ASSIGN_OR_RETURN(*request.mutable_model(), AsUsage(flags.Required("model")));

  const int inputs = flags.Has("prompt") + flags.Has("message") + flags.Has("messages-file");
  if (inputs != 1) {
    return UsageError("give exactly one of --prompt, --message or --messages-file");
  }
  if (flags.Has("prompt")) {
    request.set_prompt(flags.Get("prompt"));
  } else if (flags.Has("message")) {
    for (const std::string& text : flags.GetAll("message")) {
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
        ReadMessagesFile(flags.Get("messages-file"), request.mutable_messages()));
  }

  if (flags.Has("vector")) {
    request.mutable_steering()->set_vector(flags.Get("vector"));
    if (flags.Has("scale")) {
      ASSIGN_OR_RETURN(double scale, AsUsage(flags.GetDouble("scale", 1.0)));
      request.mutable_steering()->set_scale(static_cast<float>(scale));
    }
  } else if (flags.Has("scale")) {
    return UsageError("--scale needs --vector");
  }

  const bool any_sampling = flags.Has("temperature") || flags.Has("top-p") ||
                            flags.Has("top-k") || flags.Has("seed") ||
                            flags.Has("max-new-tokens") || flags.Has("stop");
  if (any_sampling) {
    v1::SamplingParams* sampling = request.mutable_sampling();
    ASSIGN_OR_RETURN(double temperature, AsUsage(flags.GetDouble("temperature", 0)));
    ASSIGN_OR_RETURN(double top_p, AsUsage(flags.GetDouble("top-p", 0)));
    ASSIGN_OR_RETURN(int32_t top_k, GetInt32(flags, "top-k"));
    ASSIGN_OR_RETURN(int32_t max_new_tokens, GetInt32(flags, "max-new-tokens"));
    sampling->set_temperature(static_cast<float>(temperature));
    sampling->set_top_p(static_cast<float>(top_p));
    sampling->set_top_k(top_k);
    sampling->set_max_new_tokens(max_new_tokens);
    if (flags.Has("seed")) {
      ASSIGN_OR_RETURN(uint64_t seed, AsUsage(flags.GetUint("seed", 0)));
      sampling->set_seed(seed);
    }
    for (const std::string& stop : flags.GetAll("stop")) sampling->add_stop(stop);
  }
  request.set_return_logprobs(flags.Bool("logprobs"));
  request.set_ignore_eos(flags.Bool("ignore-eos"));
  return request;
}

void PrintSummary(const v1::GenerateResponse& response, std::ostream& err) {
  err << "finish_reason=" << ShortEnumName(response.finish_reason())
      << " prompt_tokens=" << response.usage().prompt_tokens()
      << " completion_tokens=" << response.usage().completion_tokens()
      << " vector=" << (response.has_vector() ? FormatVectorRef(response.vector()) : "-")
      << " seed=" << response.seed() << "\n";
}

}  // namespace

absl::Status RunGenerate(const Command& c) {
  ASSIGN_OR_RETURN(v1::GenerateRequest request, BuildGenerateRequest(c.flags));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  const bool json = c.flags.Bool("json");

  v1::GenerateResponse response;
  if (c.flags.Bool("no-stream")) {
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
  if (c.flags.Bool("verbose")) PrintSummary(response, c.err);
  return absl::OkStatus();
}

}  // namespace steerd::client::steerctl
