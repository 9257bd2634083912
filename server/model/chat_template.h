// Renders a conversation the way a model's Hugging Face chat template would, without a
// Jinja engine: GenerateRequest.messages become the prompt text for the model. The
// template families in use are recognised from the `chat_template` source in
// tokenizer_config.json and rendered natively: ChatML (Qwen2, Qwen2.5, plain ChatML),
// Llama 3 (3.0, and the 3.1/3.3 template with its "Cutting Knowledge Date" header), and
// steerd-qa (the `Q: ...\nA:` format of the embedded models/steerd-tiny). Recognition
// compares the template's token structure (after Jinja's whitespace control, so layout
// and quoting do not matter) with the known templates, taking only a few literals from
// the source (a default system prompt, a date), so a template is either rendered
// exactly as transformers' apply_chat_template(..., add_generation_prompt=True) would,
// or refused as unrecognised: never approximately. Immutable after Recognize, so
// thread-safe. Does not depend on libtorch.
#ifndef STEERD_SERVER_MODEL_CHAT_TEMPLATE_H_
#define STEERD_SERVER_MODEL_CHAT_TEMPLATE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/tokenizer.h"

namespace steerd {

// One message of a conversation.
// The Jinja source of steerd-qa, the question/answer template of models trained on
// steerd's built-in corpus (`steerd init-model --tokenizer-corpus` writes it).
extern const char kSteerdQaChatTemplate[];

struct ChatTurn {
  enum class Role { kSystem, kUser, kAssistant };
  Role role = Role::kUser;
  std::string content;
};

class ChatTemplate {
 public:
  // Recognises the family of a Hugging Face Jinja chat template. `bos_token_text` is
  // the text of the tokenizer's bos_token (what Jinja's `bos_token` holds), empty when
  // the tokenizer has none. FAILED_PRECONDITION naming the problem when the template is
  // empty or unrecognised, or when it needs a bos_token the tokenizer lacks.
  static absl::StatusOr<ChatTemplate> Recognize(const std::string& jinja_source,
                                                const std::string& bos_token_text);
  // Recognize() with the tokenizer's chat_template() and bos token.
  static absl::StatusOr<ChatTemplate> ForTokenizer(const Tokenizer& tokenizer);

  // "chatml", "llama3" or "steerd-qa".
  const std::string& family() const { return family_; }

  // The messages followed by the prompt that opens the assistant's reply
  // (add_generation_prompt=True). INVALID_ARGUMENT for an empty list or a system
  // message that is not first. Encode the result with add_special_tokens=false, as
  // transformers does: the text already holds the BOS token where the template has one.
  absl::StatusOr<std::string> Render(const std::vector<ChatTurn>& messages) const;

 private:
  enum class Kind { kChatml, kLlama3, kLlama31, kSteerdQa };

  ChatTemplate() = default;

  Kind kind_ = Kind::kChatml;
  std::string family_;
  // ChatML: the system message inserted when the conversation does not open with one.
  bool has_default_system_ = false;
  std::string default_system_;
  std::string bos_token_;    // Llama 3.
  std::string date_string_;  // Llama 3.1: the "Today Date" the template falls back to.
};

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_CHAT_TEMPLATE_H_
