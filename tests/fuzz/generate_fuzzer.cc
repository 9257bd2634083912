// Fuzzes what Generate does with a request before it needs the model: the bytes are
// parsed as a GenerateRequest (as gRPC would), converted (FromProto), validated
// (ValidateGenerateParams), the steering vector reference parsed, and a conversation
// rendered with the steerd-qa chat template of the embedded model.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/api/proto_convert.h"
#include "server/engine/generate_validation.h"
#include "server/engine/vector_ref.h"
#include "server/model/chat_template.h"
#include "steerd/v1/generation.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const steerd::ChatTemplate* chat_template = new steerd::ChatTemplate(
      *steerd::ChatTemplate::Recognize(steerd::kSteerdQaChatTemplate, ""));
  steerd::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto params = steerd::FromProto(request);
  if (!params.ok()) return 0;
  if (!steerd::ValidateGenerateParams(*params).ok()) return 0;
  if (!params->vector.empty()) {
    if (!steerd::ParseVectorReference(params->vector, "steering.vector").ok()) return 0;
  }
  if (params->messages.has_value()) (void)chat_template->Render(*params->messages);
  return 0;
}
