#include "server/http/openai_protocol.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using Json = nlohmann::json;

// The fields each endpoint takes. Those of the OpenAI API that steerd does not
// implement are accepted only with their default value (see CheckDefault below).
const std::set<std::string>& KnownFields(OpenAiEndpoint endpoint) {
  static const std::set<std::string> chat = {
      "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
      "top_k", "seed", "stop", "n", "stream", "stream_options", "logprobs", "top_logprobs",
      "user", "steering", "ignore_eos",
      // Defaults only.
      "frequency_penalty", "presence_penalty", "logit_bias", "tools", "tool_choice",
      "functions", "function_call", "parallel_tool_calls", "response_format", "store",
      "metadata", "service_tier", "modalities", "audio", "prediction", "reasoning_effort"};
  static const std::set<std::string> completions = {
      "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n",
      "stream", "stream_options", "logprobs", "user", "steering", "ignore_eos",
      // Defaults only.
      "frequency_penalty", "presence_penalty", "logit_bias", "echo", "suffix", "best_of"};
  return endpoint == OpenAiEndpoint::kChatCompletions ? chat : completions;
}

const char* TypeName(const Json& value) {
  switch (value.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "an array";
    case Json::value_t::object: return "an object";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "an integer";
    case Json::value_t::number_float: return "a number";
    default: return "a value of another type";
  }
}

absl::Status WrongType(absl::string_view field, absl::string_view wanted, const Json& value) {
  return InvalidFieldError(field, absl::StrCat("must be ", wanted, ", not ", TypeName(value)));
}

// A field the endpoint does not take, in the OpenAI API's own wording.
absl::Status UnknownField(const std::string& field) {
  const std::string name = field.substr(0, 64);
  ErrorDetails details;
  details.reason = "INVALID_FIELD";
  details.metadata["field"] = name;
  details.field_violations.push_back({name, "is not a known field"});
  return WithErrorDetails(
      absl::InvalidArgumentError(
          absl::StrCat("Unrecognized request argument supplied: ", name)),
      details);
}

absl::StatusOr<std::string> GetString(const Json& value, absl::string_view field) {
  if (!value.is_string()) return WrongType(field, "a string", value);
  return value.get<std::string>();
}

absl::StatusOr<bool> GetBool(const Json& value, absl::string_view field) {
  if (!value.is_boolean()) return WrongType(field, "a boolean", value);
  return value.get<bool>();
}

absl::StatusOr<double> GetNumber(const Json& value, absl::string_view field) {
  if (!value.is_number()) return WrongType(field, "a number", value);
  return value.get<double>();
}

// An integer; a float with an integral value (1.0) is accepted, as JSON does not tell
// them apart for most clients.
absl::StatusOr<int64_t> GetInteger(const Json& value, absl::string_view field) {
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return InvalidFieldError(field, "is out of range");
    }
    return static_cast<int64_t>(v);
  }
  if (value.is_number_float()) {
    const double v = value.get<double>();
    if (std::isfinite(v) && std::floor(v) == v && std::abs(v) < 9.0e15) {
      return static_cast<int64_t>(v);
    }
  }
  return WrongType(field, "an integer", value);
}

// A count of alternative tokens' log-probabilities (completions' logprobs, chat's
// top_logprobs): 0 only, as the engine keeps the sampled token's alone.
absl::Status RequireZeroAlternatives(const Json& value, const std::string& field) {
  ASSIGN_OR_RETURN(int64_t count, GetInteger(value, field));
  if (count == 0) return absl::OkStatus();
  return InvalidFieldError(field, absl::StrCat(count, " is not supported: steerd returns the "
                                                      "sampled token's log-probability only; "
                                                      "send 0"));
}

// A field of the OpenAI API steerd does not implement: null or its default value only.
absl::Status CheckDefault(const std::string& field, const Json& value) {
  if (value.is_null()) return absl::OkStatus();
  bool is_default = false;
  if (field == "frequency_penalty" || field == "presence_penalty") {
    is_default = value.is_number() && value.get<double>() == 0.0;
  } else if (field == "logit_bias" || field == "metadata") {
    is_default = value.is_object() && value.empty();
  } else if (field == "tools" || field == "functions") {
    is_default = value.is_array() && value.empty();
  } else if (field == "tool_choice" || field == "function_call") {
    is_default = value == "none";
  } else if (field == "parallel_tool_calls") {
    is_default = value.is_boolean();
  } else if (field == "response_format") {
    is_default = value.is_object() && value.size() == 1 && value.contains("type") &&
                 value["type"] == "text";
  } else if (field == "store" || field == "echo") {
    is_default = value == false;
  } else if (field == "service_tier") {
    is_default = value == "auto" || value == "default";
  } else if (field == "modalities") {
    is_default = value == Json::array({"text"});
  } else if (field == "best_of") {
    is_default = value == 1;
  } else if (field == "suffix") {
    is_default = value == "";
  }
  if (is_default) return absl::OkStatus();
  return InvalidFieldError(field, "is not supported by steerd; omit it or send its default");
}

// The deepest nesting of `body`'s arrays and objects, counted outside strings, so that
// a deeply nested body is refused before the parser (and the destructor) recurse.
absl::Status CheckDepth(absl::string_view body) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : body) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the request body nests arrays and objects more than ", kMaxJsonDepth,
            " deep"));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Json> ParseBody(absl::string_view body) {
  if (body.empty()) return absl::InvalidArgumentError("the request body is empty");
  RETURN_IF_ERROR(CheckDepth(body));
  Json json;
  try {
    json = Json::parse(body.begin(), body.end());
  } catch (const Json::exception& error) {  // Syntax, and numbers out of range (1e999).
    // "[json.exception.parse_error.101] parse error at line 1, column 9: ..." without
    // the library's prefix.
    std::string what = error.what();
    const size_t start = what.find("] ");
    if (start != std::string::npos) what = what.substr(start + 2);
    return absl::InvalidArgumentError(
        absl::StrCat("the request body is not valid JSON: ", what));
  }
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request body must be a JSON object, not ", TypeName(json)));
  }
  return json;
}

absl::StatusOr<std::string> MessageContent(const Json& content, const std::string& field) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) return WrongType(field, "a string or an array of text parts", content);
  std::vector<std::string> texts;
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string part_field = absl::StrCat(field, "[", i, "]");
    if (!part.is_object()) return WrongType(part_field, "an object", part);
    for (const auto& [key, value] : part.items()) {
      if (key != "type" && key != "text") {
        return InvalidFieldError(absl::StrCat(part_field, ".", key), "is not a known field");
      }
    }
    if (!part.contains("type") || part["type"] != "text") {
      return InvalidFieldError(absl::StrCat(part_field, ".type"),
                               "must be \"text\": steerd's models read text only");
    }
    if (!part.contains("text")) {
      return InvalidFieldError(absl::StrCat(part_field, ".text"), "is missing");
    }
    ASSIGN_OR_RETURN(std::string text, GetString(part["text"], absl::StrCat(part_field, ".text")));
    texts.push_back(std::move(text));
  }
  // As multi-part prompts are joined by the servers that take them.
  return absl::StrJoin(texts, "\n");
}

absl::StatusOr<std::vector<ChatTurn>> ParseMessages(const Json& messages) {
  if (!messages.is_array()) return WrongType("messages", "an array", messages);
  std::vector<ChatTurn> turns;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& message = messages[i];
    const std::string field = absl::StrCat("messages[", i, "]");
    if (!message.is_object()) return WrongType(field, "an object", message);
    for (const auto& [key, value] : message.items()) {
      if (key != "role" && key != "content" && key != "name") {
        return InvalidFieldError(absl::StrCat(field, ".", key),
                                 "is not supported by steerd (text messages only)");
      }
    }
    if (!message.contains("role")) {
      return InvalidFieldError(absl::StrCat(field, ".role"), "is missing");
    }
    ASSIGN_OR_RETURN(std::string role, GetString(message["role"], absl::StrCat(field, ".role")));
    ChatTurn turn;
    if (role == "system" || role == "developer") {
      turn.role = ChatTurn::Role::kSystem;
    } else if (role == "user") {
      turn.role = ChatTurn::Role::kUser;
    } else if (role == "assistant") {
      turn.role = ChatTurn::Role::kAssistant;
    } else {
      return InvalidFieldError(
          absl::StrCat(field, ".role"),
          absl::StrCat("\"", role.substr(0, 64),
                       "\" is not one of system, developer, user, assistant"));
    }
    if (message.contains("name")) {
      RETURN_IF_ERROR(GetString(message["name"], absl::StrCat(field, ".name")).status());
    }
    if (!message.contains("content") || message["content"].is_null()) {
      return InvalidFieldError(absl::StrCat(field, ".content"), "is missing");
    }
    ASSIGN_OR_RETURN(turn.content,
                     MessageContent(message["content"], absl::StrCat(field, ".content")));
    turns.push_back(std::move(turn));
  }
  return turns;
}

// /v1/completions' prompt: a string, token ids, or a batch of one of either.
absl::Status ParsePrompt(const Json& prompt, GenerateParams* params) {
  const Json* single = &prompt;
  if (prompt.is_array() && !prompt.empty() && (prompt[0].is_string() || prompt[0].is_array())) {
    if (prompt.size() != 1) {
      return InvalidFieldError("prompt", absl::StrCat("lists ", prompt.size(),
                                                      " prompts; steerd takes one per request"));
    }
    single = &prompt[0];
  }
  if (single->is_string()) {
    params->prompt = single->get<std::string>();
    return absl::OkStatus();
  }
  if (!single->is_array()) {
    return WrongType("prompt", "a string or an array of token ids", *single);
  }
  if (static_cast<int64_t>(single->size()) > kMaxPromptTokenIds) {
    return InvalidFieldError("prompt", absl::StrCat("lists more than ", kMaxPromptTokenIds,
                                                    " token ids"));
  }
  std::vector<int32_t> ids;
  ids.reserve(single->size());
  for (size_t i = 0; i < single->size(); ++i) {
    const std::string field = absl::StrCat("prompt[", i, "]");
    ASSIGN_OR_RETURN(int64_t id, GetInteger((*single)[i], field));
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
      return InvalidFieldError(field, absl::StrCat("token id ", id, " is out of range"));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  params->prompt_token_ids = std::move(ids);
  return absl::OkStatus();
}

absl::Status ParseStop(const Json& stop, GenerateParams* params) {
  if (stop.is_null()) return absl::OkStatus();
  if (stop.is_string()) {
    params->stop.push_back(stop.get<std::string>());
    return absl::OkStatus();
  }
  if (!stop.is_array()) return WrongType("stop", "a string or an array of strings", stop);
  for (size_t i = 0; i < stop.size(); ++i) {
    ASSIGN_OR_RETURN(std::string s, GetString(stop[i], absl::StrCat("stop[", i, "]")));
    params->stop.push_back(std::move(s));
  }
  return absl::OkStatus();
}

absl::Status ParseSteering(const Json& steering, GenerateParams* params) {
  if (steering.is_null()) return absl::OkStatus();
  if (!steering.is_object()) return WrongType("steering", "an object", steering);
  for (const auto& [key, value] : steering.items()) {
    if (key != "vector" && key != "scale") {
      return InvalidFieldError(absl::StrCat("steering.", key),
                               "is not a known field (steering takes vector and scale)");
    }
  }
  if (!steering.contains("vector")) {
    return InvalidFieldError("steering.vector", "is missing");
  }
  ASSIGN_OR_RETURN(params->vector, GetString(steering["vector"], "steering.vector"));
  if (params->vector.empty()) return InvalidFieldError("steering.vector", "is empty");
  if (steering.contains("scale") && !steering["scale"].is_null()) {
    ASSIGN_OR_RETURN(params->scale, GetNumber(steering["scale"], "steering.scale"));
  }
  return absl::OkStatus();
}

// Max tokens: max_tokens, or chat's newer max_completion_tokens (the same if both).
absl::Status ParseMaxTokens(const Json& body, OpenAiEndpoint endpoint, GenerateParams* params) {
  std::optional<int64_t> max_tokens;
  for (const char* field : {"max_tokens", "max_completion_tokens"}) {
    if (!body.contains(field) || body[field].is_null()) continue;
    ASSIGN_OR_RETURN(int64_t value, GetInteger(body[field], field));
    if (value < 1) {
      return InvalidFieldError(field, absl::StrCat(value, " must be at least 1"));
    }
    if (max_tokens.has_value() && *max_tokens != value) {
      return InvalidFieldError(field, "differs from max_tokens; send one of them");
    }
    max_tokens = value;
  }
  if (max_tokens.has_value()) {
    params->max_new_tokens = *max_tokens;
  } else if (endpoint == OpenAiEndpoint::kCompletions) {
    params->max_new_tokens = 16;  // The OpenAI API's default for completions.
  }
  return absl::OkStatus();
}

const char* FinishReasonString(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "abort";  // Ended by the server (its drain).
    case FinishReason::kNone: break;
  }
  return "stop";
}

Json UsageJson(const GenerationSummary& summary) {
  return Json{{"prompt_tokens", summary.prompt_tokens},
              {"completion_tokens", summary.completion_tokens},
              {"total_tokens", summary.prompt_tokens + summary.completion_tokens}};
}

Json LogprobsJson(OpenAiEndpoint endpoint, const TokenLogprobs& logprobs) {
  const size_t n = std::min(logprobs.token_bytes.size(), logprobs.logprobs.size());
  if (endpoint == OpenAiEndpoint::kChatCompletions) {
    Json content = Json::array();
    for (size_t i = 0; i < n; ++i) {
      const std::string& bytes = logprobs.token_bytes[i];
      Json byte_values = Json::array();
      for (unsigned char c : bytes) byte_values.push_back(static_cast<int>(c));
      // A token that is not whole UTF-8 is written with U+FFFD (Dump's error handler);
      // its exact bytes are in "bytes".
      content.push_back({{"token", bytes},
                         {"logprob", logprobs.logprobs[i]},
                         {"bytes", std::move(byte_values)},
                         {"top_logprobs", Json::array()}});
    }
    return Json{{"content", std::move(content)}};
  }
  Json tokens = Json::array();
  Json token_logprobs = Json::array();
  Json top = Json::array();
  for (size_t i = 0; i < n; ++i) {
    tokens.push_back(logprobs.token_bytes[i]);
    token_logprobs.push_back(logprobs.logprobs[i]);
    top.push_back(nullptr);
  }
  return Json{{"tokens", std::move(tokens)},
              {"token_logprobs", std::move(token_logprobs)},
              {"top_logprobs", std::move(top)}};
}

std::string Dump(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

// `text` as a JSON string (bytes that are not UTF-8 as U+FFFD).
void AppendJsonString(const std::string& text, std::string* out) {
  bool plain = true;
  for (unsigned char c : text) {
    if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) {
      plain = false;
      break;
    }
  }
  if (plain) {
    absl::StrAppend(out, "\"", text, "\"");
  } else {
    out->append(Dump(Json(text)));
  }
}

// A log-probability as JSON: enough digits to read back the same float.
void AppendFloat(float value, std::string* out) {
  if (!std::isfinite(value)) {
    out->append(value < 0 ? "-9999.0" : "0.0");  // -inf: a token the sampler excluded.
    return;
  }
  absl::StrAppend(out, absl::StrFormat("%.9g", value));
}

// LogprobsJson's output, written by hand for the stream chunks.
void AppendLogprobs(OpenAiEndpoint endpoint, const TokenLogprobs& logprobs, std::string* out) {
  const size_t n = std::min(logprobs.token_bytes.size(), logprobs.logprobs.size());
  if (endpoint == OpenAiEndpoint::kChatCompletions) {
    out->append("{\"content\":[");
    for (size_t i = 0; i < n; ++i) {
      if (i > 0) out->append(",");
      out->append("{\"token\":");
      AppendJsonString(logprobs.token_bytes[i], out);
      out->append(",\"logprob\":");
      AppendFloat(logprobs.logprobs[i], out);
      out->append(",\"bytes\":[");
      bool comma = false;
      for (unsigned char c : logprobs.token_bytes[i]) {
        absl::StrAppend(out, comma ? "," : "", static_cast<int>(c));
        comma = true;
      }
      out->append("],\"top_logprobs\":[]}");
    }
    out->append("]}");
    return;
  }
  out->append("{\"tokens\":[");
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) out->append(",");
    AppendJsonString(logprobs.token_bytes[i], out);
  }
  out->append("],\"token_logprobs\":[");
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) out->append(",");
    AppendFloat(logprobs.logprobs[i], out);
  }
  out->append("],\"top_logprobs\":[");
  for (size_t i = 0; i < n; ++i) out->append(i > 0 ? ",null" : "null");
  out->append("]}");
}

Json Envelope(const OpenAiResponseContext& context, const char* object) {
  Json out{{"id", context.id},
           {"object", object},
           {"created", context.created},
           {"model", context.model},
           {"system_fingerprint", context.system_fingerprint}};
  if (!context.admitted.vector_name.empty()) {
    out["steering"] = {{"vector", context.admitted.vector_name},
                       {"version", context.admitted.vector_version},
                       {"scale", context.scale}};
  }
  return out;
}

// gRPC field paths in the core's messages as the OpenAI API names them.
std::string OpenAiFieldNames(absl::string_view text) {
  return absl::StrReplaceAll(text, {{"sampling.max_new_tokens", "max_tokens"},
                                    {"sampling.", ""}});
}

}  // namespace

std::pair<std::string, std::string> SplitModelAndVector(absl::string_view model) {
  const size_t colon = model.rfind(':');
  if (colon == absl::string_view::npos) return {std::string(model), ""};
  return {std::string(model.substr(0, colon)), std::string(model.substr(colon + 1))};
}

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint,
                                                 absl::string_view body) {
  ASSIGN_OR_RETURN(Json json, ParseBody(body));
  const std::set<std::string>& known = KnownFields(endpoint);
  for (const auto& [key, value] : json.items()) {
    if (known.count(key) == 0) {
      return UnknownField(key);
    }
  }
  OpenAiRequest request;
  request.endpoint = endpoint;
  GenerateParams& params = request.params;
  params.temperature = 1.0;  // The OpenAI API's default.

  if (!json.contains("model")) return InvalidFieldError("model", "is missing");
  ASSIGN_OR_RETURN(request.model, GetString(json["model"], "model"));
  if (request.model.empty()) return InvalidFieldError("model", "is empty");
  std::string model_vector;
  std::tie(params.model, model_vector) = SplitModelAndVector(request.model);

  for (const auto& [key, value] : json.items()) {
    if (value.is_null()) continue;  // null is "not given" for every field.
    if (key == "model" || key == "max_tokens" || key == "max_completion_tokens") {
      continue;
    } else if (key == "messages") {
      ASSIGN_OR_RETURN(params.messages, ParseMessages(value));
    } else if (key == "prompt") {
      RETURN_IF_ERROR(ParsePrompt(value, &params));
    } else if (key == "temperature") {
      ASSIGN_OR_RETURN(params.temperature, GetNumber(value, key));
    } else if (key == "top_p") {
      ASSIGN_OR_RETURN(params.top_p, GetNumber(value, key));
    } else if (key == "top_k") {
      ASSIGN_OR_RETURN(int64_t top_k, GetInteger(value, key));
      // -1 is "no limit" for the servers that take top_k.
      params.top_k = top_k == -1 ? 0 : top_k;
    } else if (key == "seed") {
      ASSIGN_OR_RETURN(int64_t seed, GetInteger(value, key));
      params.seed = static_cast<uint64_t>(seed);
    } else if (key == "stop") {
      RETURN_IF_ERROR(ParseStop(value, &params));
    } else if (key == "n") {
      ASSIGN_OR_RETURN(int64_t n, GetInteger(value, key));
      if (n != 1) {
        return InvalidFieldError(
            "n", absl::StrCat(n, " is not supported: steerd returns one choice per request; "
                                 "send n = 1 and make several requests"));
      }
    } else if (key == "stream") {
      ASSIGN_OR_RETURN(request.stream, GetBool(value, key));
    } else if (key == "stream_options") {
      if (!value.is_object()) return WrongType(key, "an object", value);
      for (const auto& [option, option_value] : value.items()) {
        if (option != "include_usage") {
          return UnknownField(absl::StrCat("stream_options.", option));
        }
        if (!option_value.is_null()) {
          ASSIGN_OR_RETURN(request.include_usage,
                           GetBool(option_value, "stream_options.include_usage"));
        }
      }
    } else if (key == "logprobs") {
      if (endpoint == OpenAiEndpoint::kChatCompletions) {
        ASSIGN_OR_RETURN(request.logprobs, GetBool(value, key));
      } else {
        RETURN_IF_ERROR(RequireZeroAlternatives(value, key));
        request.logprobs = true;
      }
    } else if (key == "top_logprobs") {
      RETURN_IF_ERROR(RequireZeroAlternatives(value, key));
    } else if (key == "ignore_eos") {
      ASSIGN_OR_RETURN(params.ignore_eos, GetBool(value, key));
    } else if (key == "user") {
      RETURN_IF_ERROR(GetString(value, key).status());
    } else if (key == "steering") {
      RETURN_IF_ERROR(ParseSteering(value, &params));
    } else {
      RETURN_IF_ERROR(CheckDefault(key, value));
    }
  }
  RETURN_IF_ERROR(ParseMaxTokens(json, endpoint, &params));
  if (endpoint == OpenAiEndpoint::kChatCompletions && !params.messages.has_value()) {
    return InvalidFieldError("messages", "is missing");
  }
  if (endpoint == OpenAiEndpoint::kCompletions && !params.prompt.has_value() &&
      !params.prompt_token_ids.has_value()) {
    return InvalidFieldError("prompt", "is missing");
  }
  if (json.contains("stream_options") && !json["stream_options"].is_null() &&
      !request.stream) {
    return InvalidFieldError("stream_options", "is only allowed when stream is true");
  }
  if (!model_vector.empty()) {
    if (!params.vector.empty()) {
      return InvalidFieldError("steering.vector",
                               "names a vector, and so does model (\"BASE:VECTOR\"); "
                               "name it in one of them");
    }
    params.vector = model_vector;
  }
  params.return_logprobs = request.logprobs;
  return request;
}

std::string CompletionResponseJson(const OpenAiResponseContext& context,
                                   const std::string& text,
                                   const std::optional<TokenLogprobs>& logprobs,
                                   const GenerationSummary& summary) {
  const bool chat = context.endpoint == OpenAiEndpoint::kChatCompletions;
  Json out = Envelope(context, chat ? "chat.completion" : "text_completion");
  Json choice{{"index", 0}};
  if (chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] =
      logprobs.has_value() ? LogprobsJson(context.endpoint, *logprobs) : Json(nullptr);
  choice["finish_reason"] = FinishReasonString(summary.finish_reason);
  out["choices"] = Json::array({std::move(choice)});
  out["usage"] = UsageJson(summary);
  return Dump(out);
}

// Written by hand rather than through a JSON tree: a stream sends one of these per
// batch of tokens (at 32 streams, tens of thousands a second on a small model), and the
// tree's allocations were most of the HTTP path's cost. Keys and values are those of
// CompletionResponseJson's.
std::string CompletionChunkEvent(const OpenAiResponseContext& context, bool first,
                                 const std::string& text,
                                 const std::optional<TokenLogprobs>& logprobs,
                                 const std::optional<FinishReason>& finish,
                                 bool include_usage) {
  const bool chat = context.endpoint == OpenAiEndpoint::kChatCompletions;
  std::string out = "data: {\"id\":";
  AppendJsonString(context.id, &out);
  absl::StrAppend(&out, ",\"object\":\"", chat ? "chat.completion.chunk" : "text_completion",
                  "\",\"created\":", context.created, ",\"model\":");
  AppendJsonString(context.model, &out);
  out += ",\"system_fingerprint\":";
  AppendJsonString(context.system_fingerprint, &out);
  if (!context.admitted.vector_name.empty()) {
    out += ",\"steering\":{\"vector\":";
    AppendJsonString(context.admitted.vector_name, &out);
    absl::StrAppend(&out, ",\"version\":", context.admitted.vector_version, ",\"scale\":",
                    Dump(Json(context.scale)), "}");
  }
  out += ",\"choices\":[{\"index\":0,";
  if (chat) {
    out += "\"delta\":{";
    if (first) out += "\"role\":\"assistant\"";
    if (first || !text.empty()) {
      if (first) out += ",";
      out += "\"content\":";
      AppendJsonString(text, &out);
    }
    out += "}";
  } else {
    out += "\"text\":";
    AppendJsonString(text, &out);
  }
  out += ",\"logprobs\":";
  if (logprobs.has_value()) {
    AppendLogprobs(context.endpoint, *logprobs, &out);
  } else {
    out += "null";
  }
  out += ",\"finish_reason\":";
  if (finish.has_value()) {
    absl::StrAppend(&out, "\"", FinishReasonString(*finish), "\"");
  } else {
    out += "null";
  }
  out += "}]";
  if (include_usage) out += ",\"usage\":null";
  out += "}\n\n";
  return out;
}

std::string UsageChunkEvent(const OpenAiResponseContext& context,
                            const GenerationSummary& summary) {
  const bool chat = context.endpoint == OpenAiEndpoint::kChatCompletions;
  Json out = Envelope(context, chat ? "chat.completion.chunk" : "text_completion");
  out["choices"] = Json::array();
  out["usage"] = UsageJson(summary);
  return absl::StrCat("data: ", Dump(out), "\n\n");
}

std::string ErrorEvent(const absl::Status& status) {
  return absl::StrCat("data: ", ToHttpError(status).body, "\n\n");
}

std::string ModelListJson(const std::vector<ModelInfo>& models,
                          const std::vector<StoredVector>& vectors) {
  Json data = Json::array();
  for (const ModelInfo& model : models) {
    data.push_back(Json::parse(ModelJson(model.name, "", 0)));
  }
  for (const StoredVector& vector : vectors) {
    data.push_back(Json::parse(ModelJson(absl::StrCat(vector.model, ":", vector.name),
                                         vector.model, absl::ToUnixSeconds(vector.create_time))));
  }
  return Dump(Json{{"object", "list"}, {"data", std::move(data)}});
}

std::string ModelJson(const std::string& id, const std::string& parent, int64_t created) {
  Json out{{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "steerd"}};
  if (!parent.empty()) {
    out["parent"] = parent;
    out["root"] = parent;
  }
  return Dump(out);
}

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted: return 409;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kCancelled: return 499;  // The client closed the request.
    case absl::StatusCode::kUnimplemented: return 501;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

HttpError ToHttpError(const absl::Status& status) {
  HttpError error;
  error.status = HttpStatusFor(status.code());
  const char* type = "server_error";
  switch (error.status) {
    case 401: type = "authentication_error"; break;
    case 403: type = "permission_error"; break;
    case 404: type = "not_found_error"; break;
    case 429: type = "rate_limit_error"; break;
    case 503: type = "service_unavailable_error"; break;
    default:
      if (error.status < 500) type = "invalid_request_error";
  }
  const std::optional<ErrorDetails> details = GetErrorDetails(status);
  std::string reason = details.has_value() && !details->reason.empty()
                           ? details->reason
                           : DefaultErrorReason(status.code());
  Json param = nullptr;
  if (details.has_value() && !details->field_violations.empty()) {
    param = OpenAiFieldNames(details->field_violations.front().field);
  }
  if (details.has_value() && details->retry_delay.has_value()) {
    error.retry_after_seconds =
        std::max<int64_t>(1, absl::ToInt64Seconds(absl::Ceil(*details->retry_delay,
                                                              absl::Seconds(1))));
  }
  error.body = Dump(Json{{"error",
                          {{"message", OpenAiFieldNames(status.message())},
                           {"type", type},
                           {"param", std::move(param)},
                           {"code", absl::AsciiStrToLower(reason)}}}});
  return error;
}

}  // namespace steerd
