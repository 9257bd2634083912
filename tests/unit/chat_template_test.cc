#include "server/model/chat_template.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/model/tokenizer.h"

// Expected renderings not taken from the fixtures were produced by jinja2 3.1.6 set up
// as transformers' apply_chat_template sets it up (trim_blocks, lstrip_blocks,
// raise_exception, tools=None, add_generation_prompt=True).

namespace steerd {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;
using Role = ChatTurn::Role;

std::string TokenizerDir(const std::string& name) {
  return absl::StrCat(STEERD_FIXTURES_DIR, "/tokenizers/", name);
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing file " << path;
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

Json ReadJson(const std::string& path) {
  Json json = Json::parse(ReadFileOrDie(path), nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(json.is_discarded()) << path;
  return json;
}

// Tokenizers by directory, loaded once: the real ones take a few hundred milliseconds.
const Tokenizer* LoadTokenizer(const std::string& dir) {
  static auto* const tokenizers = new std::map<std::string, std::unique_ptr<Tokenizer>>();
  auto it = tokenizers->find(dir);
  if (it == tokenizers->end()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (!loaded.ok()) return nullptr;
    it = tokenizers->emplace(dir, *std::move(loaded)).first;
  }
  return it->second.get();
}

std::string FixtureTemplate(const std::string& name) {
  return ReadJson(TokenizerDir(name) + "/tokenizer_config.json")["chat_template"]
      .get<std::string>();
}

std::vector<ChatTurn> TurnsFromJson(const Json& messages) {
  static const auto* const roles = new std::map<std::string, Role>{
      {"system", Role::kSystem}, {"user", Role::kUser}, {"assistant", Role::kAssistant}};
  std::vector<ChatTurn> turns;
  for (const Json& message : messages) {
    turns.push_back(
        {roles->at(message["role"].get<std::string>()), message["content"].get<std::string>()});
  }
  return turns;
}

ChatTemplate RecognizeOrDie(const std::string& source, const std::string& bos = "") {
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::Recognize(source, bos);
  EXPECT_TRUE(chat_template.ok()) << chat_template.status();
  if (!chat_template.ok()) std::abort();
  return *std::move(chat_template);
}

std::string RenderOrDie(const ChatTemplate& chat_template, const std::vector<ChatTurn>& turns) {
  absl::StatusOr<std::string> rendered = chat_template.Render(turns);
  EXPECT_TRUE(rendered.ok()) << rendered.status();
  return rendered.ok() ? *rendered : "";
}

constexpr char kBos[] = "<|begin_of_text|>";
const std::vector<ChatTurn> kMultiTurn = {
    {Role::kUser, "What is 7*8?"}, {Role::kAssistant, "56"}, {Role::kUser, "And 9*9?"}};

// meta-llama/Llama-3.1-8B-Instruct's tokenizer_config.json chat_template, verbatim.
constexpr char kLlama31Template[] = R"jinja({{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)jinja";

// Qwen2-Instruct's template; SmolLM2's differs only in the default system prompt.
constexpr char kQwen2Template[] =
    R"jinja({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})jinja";

constexpr char kPlainChatmlTemplate[] =
    R"jinja({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})jinja";

class ChatTemplateFixtureTest : public ::testing::TestWithParam<std::string> {};

// The reference rendering made by transformers from the fixture tokenizer's own template.
TEST_P(ChatTemplateFixtureTest, RendersTheReferenceExample) {
  const Tokenizer* tokenizer = LoadTokenizer(TokenizerDir(GetParam()));
  ASSERT_NE(tokenizer, nullptr);
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::ForTokenizer(*tokenizer);
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  EXPECT_EQ(chat_template->family(), GetParam() == "llama3" ? "llama3" : "chatml");

  const Json example = ReadJson(TokenizerDir(GetParam()) + "/cases.json")["chat_template_example"];
  ASSERT_TRUE(example["add_generation_prompt"].get<bool>());
  const std::string expected = example["rendered"].get<std::string>();
  EXPECT_EQ(RenderOrDie(*chat_template, TurnsFromJson(example["messages"])), expected);

  // The same from tokenizer_config.json directly, with bos_token as the config spells it.
  const Json config = ReadJson(TokenizerDir(GetParam()) + "/tokenizer_config.json");
  const std::string bos =
      config["bos_token"].is_string() ? config["bos_token"].get<std::string>() : "";
  EXPECT_EQ(RenderOrDie(RecognizeOrDie(config["chat_template"].get<std::string>(), bos),
                        TurnsFromJson(example["messages"])),
            expected);
}

INSTANTIATE_TEST_SUITE_P(RealTokenizers, ChatTemplateFixtureTest,
                         ::testing::Values("qwen2_5", "llama3"));

TEST(ChatTemplateTest, QwenInsertsItsDefaultSystemMessage) {
  const ChatTemplate qwen = RecognizeOrDie(FixtureTemplate("qwen2_5"));
  EXPECT_EQ(RenderOrDie(qwen, {{Role::kUser, "Hi"}}),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // A system message replaces the default; content is not trimmed.
  EXPECT_EQ(RenderOrDie(qwen, {{Role::kSystem, " Be brief.\n"}, {Role::kUser, " Hi "}}),
            "<|im_start|>system\n Be brief.\n<|im_end|>\n<|im_start|>user\n Hi "
            "<|im_end|>\n<|im_start|>assistant\n");

  // The default is read from the template: Qwen2.5-Math's, with a Jinja escape in it.
  const std::string math_source = absl::StrReplaceAll(
      FixtureTemplate("qwen2_5"),
      {{"You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "Please reason step by step, and put your final answer within \\\\boxed{}."}});
  EXPECT_EQ(RenderOrDie(RecognizeOrDie(math_source), {{Role::kUser, "1+1"}}),
            "<|im_start|>system\nPlease reason step by step, and put your final answer within "
            "\\boxed{}.<|im_end|>\n<|im_start|>user\n1+1<|im_end|>\n<|im_start|>assistant\n");

  const ChatTemplate qwen2 = RecognizeOrDie(kQwen2Template);
  EXPECT_EQ(qwen2.family(), "chatml");
  EXPECT_EQ(RenderOrDie(qwen2, {{Role::kUser, "Hi"}}),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi"
            "<|im_end|>\n<|im_start|>assistant\n");
  const std::string smollm_source = absl::StrReplaceAll(
      kQwen2Template, {{"You are a helpful assistant.",
                        "You are a helpful AI assistant named SmolLM, trained by Hugging Face"}});
  EXPECT_EQ(RenderOrDie(RecognizeOrDie(smollm_source), {{Role::kUser, "Hi"}}),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");

  // Plain ChatML has no default.
  EXPECT_EQ(RenderOrDie(RecognizeOrDie(kPlainChatmlTemplate), {{Role::kUser, "Hi"}}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, ChatmlMultiTurn) {
  EXPECT_EQ(RenderOrDie(RecognizeOrDie(FixtureTemplate("qwen2_5")), kMultiTurn),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nWhat is 7*8?<|im_end|>\n"
            "<|im_start|>assistant\n56<|im_end|>\n<|im_start|>user\nAnd 9*9?<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, Llama3TrimsLikePythonStrip) {
  const ChatTemplate llama3 = RecognizeOrDie(FixtureTemplate("llama3"), kBos);
  // str.strip() removes Unicode whitespace (U+3000, U+00A0, U+2003) but not U+200B.
  EXPECT_EQ(RenderOrDie(llama3, {{Role::kSystem, " \n Be brief.\t"},
                                 {Role::kUser, "\u3000\u00a0 Hi \u2003\n"},
                                 {Role::kAssistant, " 56 "},
                                 {Role::kUser, "\u200bx\u200b"}}),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n56<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n\u200bx\u200b<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Whitespace-only content trims to nothing.
  EXPECT_EQ(RenderOrDie(llama3, {{Role::kUser, " \n\t "}}),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, Llama3MultiTurn) {
  const std::string expected =
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 7*8?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n56<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nAnd 9*9?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n";
  EXPECT_EQ(RenderOrDie(RecognizeOrDie(FixtureTemplate("llama3"), kBos), kMultiTurn), expected);
  // The later revision only adds the header for add_generation_prompt, which we always
  // set. (The fixture's string literals hold real newlines, not `\n` escapes.)
  const std::string updated = absl::StrReplaceAll(
      FixtureTemplate("llama3"),
      {{"{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}",
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' "
        "}}{% endif %}"}});
  ASSERT_NE(updated, FixtureTemplate("llama3"));
  EXPECT_EQ(RenderOrDie(RecognizeOrDie(updated, kBos), kMultiTurn), expected);
}

TEST(ChatTemplateTest, Llama3NeedsABosToken) {
  // transformers fails on `bos_token + content` without a bos_token.
  absl::StatusOr<ChatTemplate> chat_template =
      ChatTemplate::Recognize(FixtureTemplate("llama3"), "");
  ASSERT_FALSE(chat_template.ok());
  EXPECT_EQ(chat_template.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(chat_template.status().message(), HasSubstr("bos_token"));
}

TEST(ChatTemplateTest, Llama31AddsTheKnowledgeCutoffHeader) {
  const ChatTemplate llama31 = RecognizeOrDie(kLlama31Template, kBos);
  EXPECT_EQ(llama31.family(), "llama3");
  EXPECT_EQ(RenderOrDie(llama31, kMultiTurn),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
            "Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 7*8?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n56<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAnd 9*9?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(RenderOrDie(llama31, {{Role::kSystem, "  Be brief. "}, {Role::kUser, " Hi "}}),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
            "Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // `{{- bos_token }}` renders a missing bos_token as nothing.
  EXPECT_EQ(RenderOrDie(RecognizeOrDie(kLlama31Template, ""), {{Role::kUser, "Hi"}}),
            "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
            "2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>"
            "\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, Llama32DatedTemplateIsRefused) {
  // Llama 3.2 dates the header with the day of rendering.
  const std::string llama32 = absl::StrReplaceAll(
      kLlama31Template, {{"{%- set date_string = \"26 Jul 2024\" %}",
                          "{%- if strftime_now is defined %}{%- set date_string = "
                          "strftime_now(\"%d %b %Y\") %}{%- else %}{%- set date_string = "
                          "\"26 Jul 2024\" %}{%- endif %}"}});
  ASSERT_NE(llama32, kLlama31Template);
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::Recognize(llama32, kBos);
  ASSERT_FALSE(chat_template.ok());
  EXPECT_EQ(chat_template.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(chat_template.status().message(), HasSubstr("date"));
}

TEST(ChatTemplateTest, LayoutQuotingAndCommentsDoNotMatter) {
  // The fixture's Llama 3 template laid out over lines (trim_blocks and lstrip_blocks
  // remove the newlines and indentation), with double quotes and a comment.
  constexpr char kReformatted[] = R"jinja({%- set loop_messages = messages -%}
{# Llama 3, reformatted #}
{% for message in loop_messages %}
  {% set content = "<|start_header_id|>" + message["role"] + "<|end_header_id|>\n\n" + message["content"]|trim + "<|eot_id|>" %}
  {% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}
  {{- content -}}
{% endfor %}
{{ "<|start_header_id|>assistant<|end_header_id|>\n\n" }}
)jinja";
  EXPECT_EQ(RenderOrDie(RecognizeOrDie(kReformatted, kBos), kMultiTurn),
            RenderOrDie(RecognizeOrDie(FixtureTemplate("llama3"), kBos), kMultiTurn));
  // Windows line endings in the Qwen2.5 template change nothing either.
  EXPECT_EQ(
      RecognizeOrDie(absl::StrReplaceAll(FixtureTemplate("qwen2_5"), {{"\n", "\r\n"}})).family(),
      "chatml");
}

TEST(ChatTemplateTest, ChangesThatAffectOutputAreRefused) {
  const std::string llama3 = FixtureTemplate("llama3");
  const std::vector<std::string> variants = {
      // A newline after an output tag is output (trim_blocks applies to blocks only).
      absl::StrReplaceAll(llama3, {{"{{ content }}", "{{ content }}\n"}}),
      // No trim.
      absl::StrReplaceAll(llama3, {{"message['content'] | trim", "message['content']"}}),
      // A different header.
      absl::StrReplaceAll(llama3, {{"'<|eot_id|>'", "'<|eot_id|>\\n'"}}),
      // Qwen2.5 with reasoning handling added.
      absl::StrReplaceAll(
          FixtureTemplate("qwen2_5"),
          {{"{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>\\n' }}"}}),
  };
  for (const std::string& variant : variants) {
    ASSERT_NE(variant, llama3);
    absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::Recognize(variant, kBos);
    ASSERT_FALSE(chat_template.ok()) << variant;
    EXPECT_EQ(chat_template.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(chat_template.status().message(), HasSubstr("unrecognised chat template"));
  }
}

TEST(ChatTemplateTest, SteerdQaFromTheEmbeddedModel) {
  const std::string dir = absl::StrCat(STEERD_SOURCE_DIR, "/models/steerd-tiny");
  const Tokenizer* tokenizer = LoadTokenizer(dir);
  ASSERT_NE(tokenizer, nullptr);
  absl::StatusOr<ChatTemplate> qa = ChatTemplate::ForTokenizer(*tokenizer);
  ASSERT_TRUE(qa.ok()) << qa.status();
  EXPECT_EQ(qa->family(), "steerd-qa");
  // The prompt format the model was trained on (models/steerd-tiny/README.md).
  EXPECT_EQ(RenderOrDie(*qa, {{Role::kUser, "(12+7)*3-5"}}), "Q: (12+7)*3-5\nA:");
  EXPECT_EQ(RenderOrDie(*qa, {{Role::kSystem, "Answer in words."}, {Role::kUser, "3*6+4"}}),
            "Answer in words.\nQ: 3*6+4\nA:");
  EXPECT_EQ(
      RenderOrDie(*qa,
                  {{Role::kUser, "1+1"}, {Role::kAssistant, "\\boxed{2}"}, {Role::kUser, "2+2"}}),
      "Q: 1+1\nA: \\boxed{2}\nQ: 2+2\nA:");
  // The answer opener belongs to the generation prompt, so consecutive questions stay
  // readable.
  EXPECT_EQ(RenderOrDie(*qa, {{Role::kUser, "1+1"}, {Role::kUser, "2+2"}}),
            "Q: 1+1\nQ: 2+2\nA:");
}

TEST(ChatTemplateTest, UnknownTemplatesAreFailedPrecondition) {
  const std::vector<std::string> sources = {
      "",
      "{{ messages }}",
      "{% for message in messages %}{{ message['content'] }}{% endfor %}",
      "{{ 'unterminated }}",
      "{% raw %}{{ x }}{% endraw %}",
  };
  for (const std::string& source : sources) {
    absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::Recognize(source, kBos);
    ASSERT_FALSE(chat_template.ok()) << source;
    EXPECT_EQ(chat_template.status().code(), absl::StatusCode::kFailedPrecondition) << source;
  }
  EXPECT_THAT(ChatTemplate::Recognize("", "").status().message(), HasSubstr("no chat template"));
}

TEST(ChatTemplateTest, BadConversationsAreInvalidArgument) {
  const std::vector<ChatTemplate> templates = {
      RecognizeOrDie(FixtureTemplate("qwen2_5")), RecognizeOrDie(FixtureTemplate("llama3"), kBos),
      RecognizeOrDie(kLlama31Template, kBos),
      RecognizeOrDie(ReadJson(absl::StrCat(
          STEERD_SOURCE_DIR, "/models/steerd-tiny/tokenizer_config.json"))["chat_template"]
                         .get<std::string>())};
  for (const ChatTemplate& chat_template : templates) {
    absl::StatusOr<std::string> rendered = chat_template.Render({});
    ASSERT_FALSE(rendered.ok());
    EXPECT_EQ(rendered.status().code(), absl::StatusCode::kInvalidArgument);

    rendered = chat_template.Render({{Role::kUser, "Hi"}, {Role::kSystem, "Late."}});
    ASSERT_FALSE(rendered.ok());
    EXPECT_EQ(rendered.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(rendered.status().message(), HasSubstr("message 1 is a system message"));
  }
}

// The rendered text goes to Encode with add_special_tokens=false: the markers must come
// out as the special tokens, not as their spelling in ordinary tokens.
TEST(ChatTemplateTest, RenderedChatmlEncodesMarkersAsSpecialTokens) {
  const Tokenizer* tokenizer = LoadTokenizer(TokenizerDir("qwen2_5"));
  ASSERT_NE(tokenizer, nullptr);
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::ForTokenizer(*tokenizer);
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  const std::string rendered = RenderOrDie(*chat_template, kMultiTurn);
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(rendered);
  ASSERT_TRUE(ids.ok()) << ids.status();
  const std::optional<int32_t> im_start = tokenizer->TokenToId("<|im_start|>");
  const std::optional<int32_t> im_end = tokenizer->TokenToId("<|im_end|>");
  ASSERT_TRUE(im_start.has_value() && im_end.has_value());
  EXPECT_TRUE(tokenizer->IsSpecial(*im_start));
  ASSERT_FALSE(ids->empty());
  EXPECT_EQ(ids->front(), *im_start);
  // Default system, three turns and the opener; four ends.
  EXPECT_EQ(std::count(ids->begin(), ids->end(), *im_start), 5);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), *im_end), 4);
  absl::StatusOr<std::string> decoded = tokenizer->Decode(*ids);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, rendered);
}

TEST(ChatTemplateTest, RenderedLlama3StartsWithOneBosToken) {
  const Tokenizer* tokenizer = LoadTokenizer(TokenizerDir("llama3"));
  ASSERT_NE(tokenizer, nullptr);
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::ForTokenizer(*tokenizer);
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  absl::StatusOr<std::vector<int32_t>> ids =
      tokenizer->Encode(RenderOrDie(*chat_template, kMultiTurn), /*add_special_tokens=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_TRUE(tokenizer->bos_token_id().has_value());
  ASSERT_FALSE(ids->empty());
  EXPECT_EQ(ids->front(), *tokenizer->bos_token_id());
  EXPECT_EQ(std::count(ids->begin(), ids->end(), *tokenizer->bos_token_id()), 1);
}

}  // namespace
}  // namespace steerd
