// Fuzzes ChatTemplate::Recognize (the Jinja source from a model's
// tokenizer_config.json, tokenized and compared with the known families) and, for a
// template it accepts, Render of conversations that carry the input as message text.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "server/model/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  using Role = steerd::ChatTurn::Role;
  for (const char* bos : {"<|begin_of_text|>", ""}) {
    auto chat_template = steerd::ChatTemplate::Recognize(source, bos);
    if (!chat_template.ok()) continue;
    (void)chat_template->Render({{Role::kUser, source}});
    (void)chat_template->Render(
        {{Role::kSystem, "Be brief."}, {Role::kUser, "Hi"}, {Role::kAssistant, source},
         {Role::kUser, "{{ messages }}"}});
    (void)chat_template->Render({});
    (void)chat_template->Render({{Role::kUser, "a"}, {Role::kSystem, "late system"}});
  }
  return 0;
}
