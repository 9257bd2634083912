#include "server/api/proto_convert.h"

#include <google/protobuf/util/time_util.h>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/engine/vector_ref.h"
#include "server/tenancy/sha256.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

constexpr char kTokenVersion[] = "p1";

std::string FilterDigest(const std::string& filters) {
  return Sha256Hex(filters).substr(0, 16);
}

absl::Status BadToken() {
  return InvalidFieldError("page_token",
                           "is malformed or belongs to a request with different fields; start "
                           "again with an empty page_token");
}

}  // namespace

void ToProto(const ModelInfo& info, v1::Model* out) {
  out->set_name(info.name);
  out->set_architecture(info.architecture);
  out->set_num_layers(info.num_layers);
  out->set_hidden_size(info.hidden_size);
  out->set_vocab_size(info.vocab_size);
  out->set_max_context(info.max_context);
  out->set_dtype(info.dtype);
  out->set_device(info.device);
  out->set_fingerprint(info.fingerprint);
  out->set_chat_template(info.chat_template);
}

void ToProto(const StoredVector& vector, v1::Vector* out) {
  out->set_name(vector.name);
  out->set_version(vector.version);
  out->set_model(vector.model);
  out->set_model_fingerprint(vector.model_fingerprint);
  out->set_num_layers(vector.num_layers);
  out->set_hidden_size(vector.hidden_size);
  out->set_dtype(vector.dtype);
  out->set_sha256(vector.sha256);
  out->set_size_bytes(vector.size_bytes);
  for (float norm : vector.layer_norms) out->add_layer_norms(norm);
  *out->mutable_create_time() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(vector.create_time));
  out->set_source(vector.source == StoredVector::Source::kTraining ? v1::Vector::SOURCE_TRAINING
                                                                   : v1::Vector::SOURCE_UPLOAD);
  out->set_job_id(vector.job_id);
  out->set_description(vector.description);
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

absl::StatusOr<GenerateParams> FromProto(const v1::GenerateRequest& request) {
  GenerateParams params;
  params.model = request.model();
  switch (request.input_case()) {
    case v1::GenerateRequest::kPrompt:
      params.prompt = request.prompt();
      break;
    case v1::GenerateRequest::kMessages: {
      std::vector<ChatTurn> turns;
      const auto& messages = request.messages().messages();
      for (int i = 0; i < messages.size(); ++i) {
        ChatTurn turn;
        switch (messages[i].role()) {
          case v1::ChatMessage::ROLE_SYSTEM: turn.role = ChatTurn::Role::kSystem; break;
          case v1::ChatMessage::ROLE_USER: turn.role = ChatTurn::Role::kUser; break;
          case v1::ChatMessage::ROLE_ASSISTANT: turn.role = ChatTurn::Role::kAssistant; break;
          default:
            return InvalidFieldError(
                absl::StrCat("messages[", i, "].role"),
                absl::StrCat("is ", messages[i].role() == 0 ? "unspecified" : "unknown",
                             "; use SYSTEM, USER or ASSISTANT"));
        }
        if (turn.role == ChatTurn::Role::kSystem && i != 0) {
          // The message is misplaced rather than its role wrong: it names the message.
          return InvalidFieldError(absl::StrCat("messages[", i, "]"),
                                   "is a SYSTEM message; only the first may be");
        }
        turn.content = messages[i].content();
        turns.push_back(std::move(turn));
      }
      params.messages = std::move(turns);
      break;
    }
    default:
      // The oneof `input` is what is missing: no one of its fields is more at fault.
      return InvalidFieldError("input", "is required, but no input was given: set prompt or "
                                        "messages");
  }
  if (request.has_steering()) {
    const v1::SteeringSpec& steering = request.steering();
    if (steering.vector().empty()) {
      return InvalidFieldError("steering.vector",
                               "is empty; leave steering unset for the base model");
    }
    // The core takes one reference string; folding the typed version in here keeps the
    // engine unaware of where a version came from.
    ASSIGN_OR_RETURN(VectorReference ref,
                     ParseVectorReference(steering.vector(), steering.version(),
                                          "steering.vector", "steering.version"));
    params.vector = ref.ToString();
    if (request.steering().has_scale()) params.scale = request.steering().scale();
  }
  if (request.has_sampling()) {
    const v1::SamplingParams& s = request.sampling();
    params.temperature = s.temperature();
    params.top_p = s.top_p();
    params.top_k = s.top_k();
    if (s.has_seed()) params.seed = s.seed();
    params.max_new_tokens = s.max_new_tokens();
    params.stop.assign(s.stop().begin(), s.stop().end());
  }
  params.return_logprobs = request.return_logprobs();
  params.ignore_eos = request.ignore_eos();
  return params;
}

absl::StatusOr<std::string> ReferenceFromProto(const v1::GetVectorRequest& request) {
  ASSIGN_OR_RETURN(VectorReference ref,
                   ParseVectorReference(request.name(), request.version(), "name", "version"));
  return ref.ToString();
}

absl::StatusOr<std::string> ReferenceFromProto(const v1::ExportVectorRequest& request) {
  ASSIGN_OR_RETURN(VectorReference ref,
                   ParseVectorReference(request.name(), request.version(), "name", "version"));
  return ref.ToString();
}

absl::StatusOr<std::string> ReferenceFromProto(const v1::DeleteVectorRequest& request) {
  ASSIGN_OR_RETURN(VectorReference ref,
                   ParseVectorReference(request.name(), request.version(), "name", "version"));
  return ref.ToString();
}

absl::StatusOr<int64_t> EffectivePageSize(int32_t page_size, int64_t default_size,
                                          int64_t max_size) {
  if (page_size < 0) {
    return InvalidFieldError("page_size", absl::StrCat(page_size, " must not be negative"));
  }
  if (page_size == 0) return default_size;
  return std::min<int64_t>(page_size, max_size);
}

std::string EncodePageToken(const std::string& filters, const std::string& after_name,
                            int64_t after_version) {
  return absl::WebSafeBase64Escape(absl::StrCat(kTokenVersion, "|", FilterDigest(filters), "|",
                                                after_version, "|", after_name));
}

absl::StatusOr<PagePosition> DecodePageToken(const std::string& token,
                                             const std::string& filters) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw)) return BadToken();
  std::vector<std::string> parts = absl::StrSplit(raw, absl::MaxSplits('|', 3));
  PagePosition position;
  if (parts.size() != 4 || parts[0] != kTokenVersion || parts[1] != FilterDigest(filters) ||
      !absl::SimpleAtoi(parts[2], &position.after_version) || position.after_version < 0) {
    return BadToken();
  }
  position.after_name = parts[3];
  return position;
}

}  // namespace steerd
