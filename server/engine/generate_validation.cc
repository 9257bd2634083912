#include "server/engine/generate_validation.h"

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "server/model/sampling_params.h"
#include "server/util/error_details.h"

namespace steerd {
namespace {

constexpr int64_t kMaxStopStrings = 16;
constexpr size_t kMaxStopBytes = 256;
constexpr double kMaxScale = 100.0;

}  // namespace

absl::Status ValidateGenerateParams(const GenerateParams& p) {
  if (p.model.empty()) return InvalidFieldError("model", "is empty");
  const int inputs = static_cast<int>(p.prompt.has_value()) +
                     static_cast<int>(p.messages.has_value()) +
                     static_cast<int>(p.prompt_token_ids.has_value());
  if (inputs != 1) {
    return absl::InvalidArgumentError("set exactly one input: prompt or messages");
  }
  if (p.prompt_token_ids.has_value() && p.prompt_token_ids->empty()) {
    return InvalidFieldError("prompt", "is an empty list of token ids");
  }
  if (p.prompt.has_value() && p.prompt->empty()) {
    return InvalidFieldError("prompt", "is empty");
  }
  if (p.messages.has_value() && p.messages->empty()) {
    return InvalidFieldError("messages", "is empty: send at least one message");
  }
  if (!std::isfinite(p.scale) || std::abs(p.scale) > kMaxScale) {
    return InvalidFieldError("steering.scale",
                             absl::StrCat(p.scale, " must be finite and within [-100, 100]"));
  }
  if (!std::isfinite(p.temperature) || p.temperature < 0.0 || p.temperature > 2.0 ||
      (p.temperature > 0.0 && p.temperature < kMinTemperature)) {
    return InvalidFieldError("sampling.temperature",
                             absl::StrCat(p.temperature, " must be 0 (greedy) or within [",
                                          kMinTemperature, ", 2]"));
  }
  if (!std::isfinite(p.top_p) || p.top_p < 0.0 || p.top_p > 1.0) {
    return InvalidFieldError("sampling.top_p", absl::StrCat(p.top_p, " must be within [0, 1]"));
  }
  if (p.top_k < 0) {
    return InvalidFieldError("sampling.top_k", absl::StrCat(p.top_k, " must not be negative"));
  }
  if (p.max_new_tokens < 0) {
    return InvalidFieldError("sampling.max_new_tokens",
                             absl::StrCat(p.max_new_tokens, " must not be negative"));
  }
  if (static_cast<int64_t>(p.stop.size()) > kMaxStopStrings) {
    return InvalidFieldError("sampling.stop", absl::StrCat("has ", p.stop.size(),
                                                           " strings; the maximum is ",
                                                           kMaxStopStrings));
  }
  for (size_t i = 0; i < p.stop.size(); ++i) {
    if (p.stop[i].empty() || p.stop[i].size() > kMaxStopBytes) {
      return InvalidFieldError(absl::StrCat("sampling.stop[", i, "]"),
                               absl::StrCat("is ", p.stop[i].size(),
                                            " bytes; each must be 1 to 256 bytes"));
    }
  }
  return absl::OkStatus();
}

}  // namespace steerd
