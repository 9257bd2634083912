#include "server/model/chat_template.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/util/status_macros.h"

namespace steerd {

// steerd-qa, models/steerd-tiny's template (its tokenizer_config.json holds the same
// text): the model learned `Q: <problem>\nA:` prompts with completions that start with
// a space. A user turn is "Q: ...\n", an assistant turn "A: ...\n", and the generation
// prompt is the bare "A:", so a one-question chat is exactly the training format. Roles
// the format cannot express raise, as Render refuses them.
const char kSteerdQaChatTemplate[] =
    R"jinja({%- for message in messages %}{%- if message['role'] == 'system' and loop.first %}{{- message['content'] + '\n' }}{%- elif message['role'] == 'user' %}{{- 'Q: ' + message['content'] + '\n' }}{%- elif message['role'] == 'assistant' %}{{- 'A: ' + message['content'] + '\n' }}{%- else %}{{- raise_exception('steerd-qa renders an optional first system message, then user and assistant messages') }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- 'A:' }}{%- endif %})jinja";

namespace {

// ---------------------------------------------------------------------------------------
// A Jinja template reduced to what decides its output: literal text (after Jinja's
// whitespace control) and the tokens of each {{ ... }} and {% ... %} tag (string
// literals decoded, whitespace and comments dropped). Two templates with equal
// reductions render identically, so comparing reductions recognises a known template
// whatever its layout, quoting or comments. The lexer follows jinja2's as transformers
// configures it (trim_blocks=True, lstrip_blocks=True). Where it is unsure it strips
// less or fails, never more: a template it reads differently from Jinja then simply
// matches no known template, and is refused rather than rendered wrongly.

struct JinjaToken {
  bool is_string = false;
  std::string text;  // The decoded value of a string literal; the source text otherwise.
};

struct JinjaNode {
  enum class Kind { kText, kOutput, kStatement };
  Kind kind = Kind::kText;
  std::string text;                // kText.
  std::vector<JinjaToken> tokens;  // kOutput ({{ }}) and kStatement ({% %}).
};

// ASCII whitespace only: Python's str.strip() and `\s` also take Unicode spaces, but
// stripping a subset is the safe direction (see above).
bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void AppendUtf8(uint32_t code_point, std::string* out) {
  if (code_point < 0x80) {
    out->push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

// The value of a string literal's body (between the quotes). jinja2 decodes it with
// Python's "unicode-escape" codec, which keeps unknown escapes such as `\d` as written.
// Octal and \N{...} escapes, and a backslash before a non-ASCII character (which that
// codec mangles), are refused: no known template uses them.
absl::StatusOr<std::string> DecodeStringLiteral(absl::string_view body) {
  std::string value;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\') {
      value.push_back(body[i]);
      continue;
    }
    if (i + 1 >= body.size()) return absl::InvalidArgumentError("string ends in a backslash");
    const char c = body[++i];
    switch (c) {
      case '\n':  // A line continuation.
        break;
      case '\\':
      case '\'':
      case '"':
        value.push_back(c);
        break;
      case 'a':
        value.push_back('\a');
        break;
      case 'b':
        value.push_back('\b');
        break;
      case 'f':
        value.push_back('\f');
        break;
      case 'n':
        value.push_back('\n');
        break;
      case 'r':
        value.push_back('\r');
        break;
      case 't':
        value.push_back('\t');
        break;
      case 'v':
        value.push_back('\v');
        break;
      case 'x':
      case 'u':
      case 'U': {
        const size_t digits = c == 'x' ? 2 : (c == 'u' ? 4 : 8);
        if (i + digits >= body.size()) {
          return absl::InvalidArgumentError(
              absl::StrCat("truncated \\", std::string(1, c), " escape"));
        }
        uint32_t code_point = 0;
        for (size_t d = 1; d <= digits; ++d) {
          const int v = HexValue(body[i + d]);
          if (v < 0) {
            return absl::InvalidArgumentError(absl::StrCat("bad \\", std::string(1, c), " escape"));
          }
          code_point = code_point * 16 + static_cast<uint32_t>(v);
        }
        if (code_point > 0x10FFFF || (code_point >= 0xD800 && code_point <= 0xDFFF)) {
          return absl::InvalidArgumentError("escape is not a Unicode scalar value");
        }
        AppendUtf8(code_point, &value);
        i += digits;
        break;
      }
      default:
        if ((c >= '0' && c <= '7') || c == 'N' || static_cast<unsigned char>(c) >= 0x80) {
          return absl::InvalidArgumentError(
              absl::StrCat("unsupported escape \\", std::string(1, c), " in a string"));
        }
        value.push_back('\\');
        value.push_back(c);
    }
  }
  return value;
}

class JinjaLexer {
 public:
  explicit JinjaLexer(absl::string_view source) : src_(NormalizeNewlines(source)) {}

  absl::StatusOr<std::vector<JinjaNode>> Run() {
    size_t pos = 0;
    // Whether the text about to be read starts a line (lstrip_blocks applies to it).
    bool line_starting = true;
    while (true) {
      const size_t open = FindTagOpen(pos);
      std::string text =
          src_.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
      if (open == std::string::npos) {
        AddText(std::move(text));
        return std::move(nodes_);
      }
      const char type = src_[open + 1];  // '{', '%' or '#'.
      size_t p = open + 2;
      if (p < src_.size() && src_[p] == '+') {
        return Error(open, "'+' whitespace control is not supported");
      }
      if (p < src_.size() && src_[p] == '-') {
        ++p;
        while (!text.empty() && IsAsciiSpace(text.back())) text.pop_back();
      } else if (type != '{') {
        // lstrip_blocks: spaces and tabs between a line start and a block or comment tag.
        const size_t line_start = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
        if ((line_start > 0 || line_starting) && line_start < text.size() &&
            text.find_first_not_of(" \t", line_start) == std::string::npos) {
          text.resize(line_start);
        }
      }
      AddText(std::move(text));

      size_t end = 0;
      bool strip_after = false;
      if (type == '#') {
        const size_t close = src_.find("#}", p);
        if (close == std::string::npos) return Error(open, "unclosed comment");
        if (close > p && src_[close - 1] == '+') return Error(close, "'+#}' is not supported");
        strip_after = close > p && src_[close - 1] == '-';
        end = close + 2;
      } else {
        JinjaNode node;
        node.kind = type == '{' ? JinjaNode::Kind::kOutput : JinjaNode::Kind::kStatement;
        RETURN_IF_ERROR(ReadTag(type == '{' ? '}' : '%', p, &node.tokens, &end, &strip_after));
        if (node.kind == JinjaNode::Kind::kStatement && !node.tokens.empty() &&
            !node.tokens[0].is_string && node.tokens[0].text == "raw") {
          return Error(open, "raw blocks are not supported");
        }
        nodes_.push_back(std::move(node));
      }
      if (strip_after) {
        while (end < src_.size() && IsAsciiSpace(src_[end])) ++end;
      } else if (type != '{' && end < src_.size() && src_[end] == '\n') {
        ++end;  // trim_blocks: the first newline after a block or comment tag.
      }
      line_starting = src_[end - 1] == '\n';
      pos = end;
    }
  }

 private:
  // jinja2 turns \r\n and \r into \n and drops one trailing newline
  // (keep_trailing_newline=False) before lexing.
  static std::string NormalizeNewlines(absl::string_view source) {
    std::string out;
    out.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        out.push_back('\n');
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        out.push_back(source[i]);
      }
    }
    if (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
  }

  absl::Status Error(size_t offset, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(what, " at offset ", offset));
  }

  size_t FindTagOpen(size_t pos) const {
    for (size_t i = src_.find('{', pos); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        return i;
      }
    }
    return std::string::npos;
  }

  void AddText(std::string text) {
    if (text.empty()) return;
    if (!nodes_.empty() && nodes_.back().kind == JinjaNode::Kind::kText) {
      nodes_.back().text += text;
      return;
    }
    JinjaNode node;
    node.text = std::move(text);
    nodes_.push_back(std::move(node));
  }

  // Reads the tokens of a tag from `p` up to its end (`closer` then '}', optionally
  // after '-'), which counts only outside brackets, as in jinja2.
  absl::Status ReadTag(char closer, size_t p, std::vector<JinjaToken>* tokens, size_t* end,
                       bool* strip_after) const {
    static constexpr absl::string_view kTwoCharOperators[] = {"//", "**", "==", "!=", "<=", ">="};
    static constexpr absl::string_view kOneCharOperators = "+-/*%~[](){}<>=.:|,;";
    std::string brackets;
    while (true) {
      while (p < src_.size() && IsAsciiSpace(src_[p])) ++p;
      if (p >= src_.size()) return Error(p, "unclosed tag");
      const absl::string_view rest = absl::string_view(src_).substr(p);
      if (brackets.empty()) {
        const std::string close = {closer, '}'};
        if (absl::StartsWith(rest, close)) {
          *end = p + 2;
          *strip_after = false;
          return absl::OkStatus();
        }
        if (absl::StartsWith(rest, absl::StrCat("-", close))) {
          *end = p + 3;
          *strip_after = true;
          return absl::OkStatus();
        }
        if (absl::StartsWith(rest, absl::StrCat("+", close))) {
          return Error(p, "'+' whitespace control is not supported");
        }
      }
      const char c = src_[p];
      JinjaToken token;
      if (c == '\'' || c == '"') {
        size_t q = p + 1;
        while (q < src_.size() && src_[q] != c) q += src_[q] == '\\' ? 2 : 1;
        if (q >= src_.size()) return Error(p, "unterminated string");
        absl::StatusOr<std::string> value =
            DecodeStringLiteral(absl::string_view(src_).substr(p + 1, q - p - 1));
        if (!value.ok()) return Error(p, value.status().message());
        token.is_string = true;
        token.text = *std::move(value);
        p = q + 1;
      } else if (IsDigit(c)) {
        size_t q = p;
        while (q < src_.size() && (IsDigit(src_[q]) || src_[q] == '_')) ++q;
        if (q + 1 < src_.size() && src_[q] == '.' && IsDigit(src_[q + 1])) {
          ++q;
          while (q < src_.size() && (IsDigit(src_[q]) || src_[q] == '_')) ++q;
        }
        token.text = src_.substr(p, q - p);
        p = q;
      } else if (IsNameStart(c)) {
        size_t q = p;
        while (q < src_.size() && IsNameChar(src_[q])) ++q;
        token.text = src_.substr(p, q - p);
        p = q;
      } else {
        for (absl::string_view op : kTwoCharOperators) {
          if (absl::StartsWith(rest, op)) token.text = std::string(op);
        }
        if (token.text.empty()) {
          if (kOneCharOperators.find(c) == absl::string_view::npos) {
            return Error(p, absl::StrCat("unexpected character '", std::string(1, c), "'"));
          }
          token.text = std::string(1, c);
          if (c == '(' || c == '[' || c == '{') {
            brackets.push_back(c);
          } else if (c == ')' || c == ']' || c == '}') {
            const char opener = c == ')' ? '(' : (c == ']' ? '[' : '{');
            if (brackets.empty() || brackets.back() != opener) {
              return Error(p, "unbalanced brackets");
            }
            brackets.pop_back();
          }
        }
        p += token.text.size();
      }
      tokens->push_back(std::move(token));
    }
  }

  const std::string src_;
  std::vector<JinjaNode> nodes_;
};

absl::StatusOr<std::vector<JinjaNode>> ParseJinja(absl::string_view source) {
  return JinjaLexer(source).Run();
}

// ---------------------------------------------------------------------------------------
// The known templates. A string literal of the form `prefix@@name@@suffix` matches any
// literal with that prefix and suffix and captures the middle as `name` (equal values
// wherever a name repeats): the default system prompt and the fallback date are read
// from the template itself, so e.g. Qwen2.5-Math's or SmolLM2's default system prompt
// is rendered as well as Qwen2.5's.

using Captures = std::map<std::string, std::string>;

// Qwen2.5 (Instruct, Coder, Math): the fixture's template. The `tools` branch and the
// tool-call and tool-message branches never run for steerd: the API has no tools, tool
// calls or tool messages (ChatTurn roles are system, user and assistant only), and
// transformers passes tools=None. So rendering may ignore them, but they must be there
// exactly as here, because a template that changes them may change more.
constexpr char kQwen25[] = R"jinja({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- '@@tools_default_system@@' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\n@@default_system@@<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)jinja";

// Qwen2 (and SmolLM2 and other ChatML models with a default system prompt).
constexpr char kQwen2[] =
    R"jinja({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n@@default_system@@<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})jinja";

// Plain ChatML, without a default system prompt.
constexpr char kChatml[] =
    R"jinja({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})jinja";

// Llama 3 Instruct, as first published (always ends with the assistant header; the
// fixture's) and as later updated (the header only for add_generation_prompt).
constexpr char kLlama3[] =
    R"jinja({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }})jinja";
constexpr char kLlama3Updated[] =
    R"jinja({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})jinja";

// Llama 3.1 Instruct (also 3.3): a system header with a knowledge cutoff and a fixed
// fallback date. Its tool branches never run for steerd, as for Qwen2.5 (with no
// `custom_tools`/`builtin_tools` and tools=None). Llama 3.2 differs: it dates the
// header with strftime_now, i.e. the day of rendering, and is not recognised.
constexpr char kLlama31[] = R"jinja({{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "@@date_string@@" %}
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


enum class KnownKind { kQwen25, kQwen2, kChatml, kLlama3, kLlama31, kSteerdQa };

struct KnownTemplate {
  KnownKind kind;
  const char* source;
};

const KnownTemplate kKnownTemplates[] = {
    {KnownKind::kQwen25, kQwen25},        {KnownKind::kQwen2, kQwen2},
    {KnownKind::kChatml, kChatml},        {KnownKind::kLlama3, kLlama3},
    {KnownKind::kLlama3, kLlama3Updated}, {KnownKind::kLlama31, kLlama31},
    {KnownKind::kSteerdQa, kSteerdQaChatTemplate},
};

bool MatchToken(const JinjaToken& known, const JinjaToken& token, Captures* captures) {
  if (known.is_string != token.is_string) return false;
  const size_t open = known.is_string ? known.text.find("@@") : std::string::npos;
  const size_t close = open == std::string::npos ? open : known.text.find("@@", open + 2);
  if (close == std::string::npos) return known.text == token.text;
  const absl::string_view prefix = absl::string_view(known.text).substr(0, open);
  const absl::string_view suffix = absl::string_view(known.text).substr(close + 2);
  if (token.text.size() < prefix.size() + suffix.size() || !absl::StartsWith(token.text, prefix) ||
      !absl::EndsWith(token.text, suffix)) {
    return false;
  }
  std::string value =
      token.text.substr(prefix.size(), token.text.size() - prefix.size() - suffix.size());
  const auto [it, inserted] =
      captures->emplace(known.text.substr(open + 2, close - open - 2), value);
  return inserted || it->second == value;
}

bool MatchTemplate(const std::vector<JinjaNode>& known, const std::vector<JinjaNode>& nodes,
                   Captures* captures) {
  if (known.size() != nodes.size()) return false;
  for (size_t i = 0; i < known.size(); ++i) {
    if (known[i].kind != nodes[i].kind || known[i].text != nodes[i].text ||
        known[i].tokens.size() != nodes[i].tokens.size()) {
      return false;
    }
    for (size_t t = 0; t < known[i].tokens.size(); ++t) {
      if (!MatchToken(known[i].tokens[t], nodes[i].tokens[t], captures)) return false;
    }
  }
  return true;
}

// The known templates, parsed once.
const std::vector<std::vector<JinjaNode>>& ParsedKnownTemplates() {
  static const auto* const parsed = [] {
    auto* result = new std::vector<std::vector<JinjaNode>>();
    for (const KnownTemplate& known : kKnownTemplates) {
      absl::StatusOr<std::vector<JinjaNode>> nodes = ParseJinja(known.source);
      // Only a bug in this file can fail here; an empty reduction then matches nothing
      // real (Recognize refuses empty templates first).
      result->push_back(nodes.ok() ? *std::move(nodes) : std::vector<JinjaNode>());
    }
    return result;
  }();
  return *parsed;
}

// A hint for a template that matched nothing, to say why in the error.
std::string UnrecognizedHint(const std::string& source) {
  if (absl::StrContains(source, "strftime_now")) {
    return "it inserts the date of rendering (e.g. Llama 3.2), which cannot be reproduced "
           "exactly";
  }
  if (absl::StrContains(source, "<think>") || absl::StrContains(source, "reasoning_content")) {
    return "it handles reasoning (<think>) blocks, which steerd does not render";
  }
  if (absl::StrContains(source, "<|im_start|>")) {
    return "it looks like ChatML, but differs from the Qwen2, Qwen2.5 and plain ChatML "
           "templates";
  }
  if (absl::StrContains(source, "<|start_header_id|>")) {
    return "it looks like Llama 3, but differs from the Llama 3 and 3.1 templates";
  }
  return "it is none of ChatML (Qwen2, Qwen2.5), Llama 3 / 3.1 or steerd-qa";
}

// Python's str.isspace(), which Jinja's `trim` filter (str.strip()) strips.
bool IsPythonSpace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// Decodes the UTF-8 character at `pos` (its length in `*length`); -1 when invalid.
int64_t DecodeUtf8At(absl::string_view s, size_t pos, size_t* length) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char lead = byte(pos);
  size_t n = 0;
  uint32_t c = 0;
  if (lead < 0x80) {
    *length = 1;
    return lead;
  } else if ((lead & 0xE0) == 0xC0) {
    n = 2;
    c = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    n = 3;
    c = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    n = 4;
    c = lead & 0x07;
  } else {
    return -1;
  }
  if (pos + n > s.size()) return -1;
  for (size_t i = 1; i < n; ++i) {
    if ((byte(pos + i) & 0xC0) != 0x80) return -1;
    c = (c << 6) | (byte(pos + i) & 0x3F);
  }
  *length = n;
  return c;
}

// Jinja's `trim`: Python's str.strip(), which strips Unicode whitespace, not just ASCII.
std::string PythonStrip(absl::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    size_t length = 0;
    const int64_t c = DecodeUtf8At(text, begin, &length);
    if (c < 0 || !IsPythonSpace(static_cast<uint32_t>(c))) break;
    begin += length;
  }
  // From the end: find the start of each trailing character.
  size_t end = text.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    size_t length = 0;
    const int64_t c = DecodeUtf8At(text, start, &length);
    if (c < 0 || start + length != end || !IsPythonSpace(static_cast<uint32_t>(c))) break;
    end = start;
  }
  return std::string(text.substr(begin, end - begin));
}

absl::string_view RoleName(ChatTurn::Role role) {
  switch (role) {
    case ChatTurn::Role::kSystem:
      return "system";
    case ChatTurn::Role::kUser:
      return "user";
    case ChatTurn::Role::kAssistant:
      return "assistant";
  }
  return "";
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Recognize(const std::string& jinja_source,
                                                     const std::string& bos_token_text) {
  if (jinja_source.empty()) {
    return absl::FailedPreconditionError(
        "the model has no chat template (tokenizer_config.json \"chat_template\" or "
        "chat_template.jinja)");
  }
  absl::StatusOr<std::vector<JinjaNode>> nodes = ParseJinja(jinja_source);
  if (!nodes.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "unrecognised chat template: its Jinja does not lex as steerd's known templates do (",
        nodes.status().message(), ")"));
  }
  const std::vector<std::vector<JinjaNode>>& known = ParsedKnownTemplates();
  for (size_t i = 0; i < known.size(); ++i) {
    Captures captures;
    if (!MatchTemplate(known[i], *nodes, &captures)) continue;
    ChatTemplate result;
    switch (kKnownTemplates[i].kind) {
      case KnownKind::kQwen25:
      case KnownKind::kQwen2:
        result.kind_ = Kind::kChatml;
        result.has_default_system_ = true;
        result.default_system_ = captures["default_system"];
        break;
      case KnownKind::kChatml:
        result.kind_ = Kind::kChatml;
        break;
      case KnownKind::kLlama3:
        // `bos_token + content` with no bos_token is an error in Jinja (transformers
        // leaves the variable undefined), so there is nothing exact to render.
        if (bos_token_text.empty()) {
          return absl::FailedPreconditionError(
              "the Llama 3 chat template starts with bos_token, but the tokenizer has none");
        }
        result.kind_ = Kind::kLlama3;
        result.bos_token_ = bos_token_text;
        break;
      case KnownKind::kLlama31:
        // `{{- bos_token }}` renders an undefined bos_token as nothing.
        result.kind_ = Kind::kLlama31;
        result.bos_token_ = bos_token_text;
        result.date_string_ = captures["date_string"];
        break;
      case KnownKind::kSteerdQa:
        result.kind_ = Kind::kSteerdQa;
        break;
    }
    switch (result.kind_) {
      case Kind::kChatml:
        result.family_ = "chatml";
        break;
      case Kind::kLlama3:
      case Kind::kLlama31:
        result.family_ = "llama3";
        break;
      case Kind::kSteerdQa:
        result.family_ = "steerd-qa";
        break;
    }
    return result;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "unrecognised chat template: ", UnrecognizedHint(jinja_source),
      "; steerd renders known templates exactly and refuses others rather than guess"));
}

absl::StatusOr<ChatTemplate> ChatTemplate::ForTokenizer(const Tokenizer& tokenizer) {
  std::string bos_token_text;
  if (const std::optional<int32_t> bos = tokenizer.bos_token_id(); bos.has_value()) {
    // Jinja's bos_token is the token's text as tokenizer_config.json writes it. For a
    // special token that is its content; for an ordinary vocabulary entry it would be
    // the byte-level spelling, which no known template family uses.
    if (!tokenizer.IsSpecial(*bos)) {
      return absl::FailedPreconditionError(
          absl::StrCat("bos_token (id ", *bos, ") is not a special token"));
    }
    ASSIGN_OR_RETURN(bos_token_text, tokenizer.TokenBytes(*bos));
  }
  return Recognize(tokenizer.chat_template(), bos_token_text);
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::vector<ChatTurn>& messages) const {
  if (messages.empty()) return absl::InvalidArgumentError("no messages to render");
  for (size_t i = 0; i < messages.size(); ++i) {
    if (RoleName(messages[i].role).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, " has an unknown role"));
    }
    if (i > 0 && messages[i].role == ChatTurn::Role::kSystem) {
      return absl::InvalidArgumentError(
          absl::StrCat("message ", i, " is a system message; only the first may be one"));
    }
  }
  const bool starts_with_system = messages[0].role == ChatTurn::Role::kSystem;
  std::string out;
  switch (kind_) {
    case Kind::kChatml:
      if (has_default_system_ && !starts_with_system) {
        absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
      }
      for (const ChatTurn& turn : messages) {
        absl::StrAppend(&out, "<|im_start|>", RoleName(turn.role), "\n", turn.content,
                        "<|im_end|>\n");
      }
      absl::StrAppend(&out, "<|im_start|>assistant\n");
      break;
    case Kind::kLlama3:
    case Kind::kLlama31: {
      out = bos_token_;
      size_t first = 0;
      if (kind_ == Kind::kLlama31) {
        // The system header is always there; a system message goes into it, trimmed.
        absl::StrAppend(&out, "<|start_header_id|>system<|end_header_id|>\n\n",
                        "Cutting Knowledge Date: December 2023\n", "Today Date: ", date_string_,
                        "\n\n", starts_with_system ? PythonStrip(messages[0].content) : "",
                        "<|eot_id|>");
        first = starts_with_system ? 1 : 0;
      }
      for (size_t i = first; i < messages.size(); ++i) {
        absl::StrAppend(&out, "<|start_header_id|>", RoleName(messages[i].role),
                        "<|end_header_id|>\n\n", PythonStrip(messages[i].content), "<|eot_id|>");
      }
      absl::StrAppend(&out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
      break;
    }
    case Kind::kSteerdQa:
      for (const ChatTurn& turn : messages) {
        switch (turn.role) {
          case ChatTurn::Role::kSystem:
            absl::StrAppend(&out, turn.content, "\n");
            break;
          case ChatTurn::Role::kUser:
            absl::StrAppend(&out, "Q: ", turn.content, "\n");
            break;
          case ChatTurn::Role::kAssistant:
            absl::StrAppend(&out, "A: ", turn.content, "\n");
            break;
        }
      }
      absl::StrAppend(&out, "A:");
      break;
  }
  return out;
}

}  // namespace steerd
