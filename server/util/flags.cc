#include "server/util/flags.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace steerd {

namespace {

constexpr size_t kHelpWidth = 80;
// Where flag help and command summaries start; a longer left column puts them on the
// next line.
constexpr size_t kHelpColumn = 26;

bool IsHelpFlag(absl::string_view arg) { return arg == "--help" || arg == "-h"; }

// A word that is a flag: "-x", "--name", "--name=value"; "-" alone is a word.
bool LooksLikeFlag(absl::string_view arg) { return arg.size() > 1 && arg[0] == '-'; }

// The words after the program's name: "steerctl vectors get" -> {"vectors", "get"}.
std::vector<std::string> CommandWords(const CommandDef& command) {
  std::vector<std::string> words = absl::StrSplit(command.name, ' ', absl::SkipEmpty());
  if (!words.empty()) words.erase(words.begin());
  return words;
}

const FlagDef* FindFlag(const CommandDef& command, absl::string_view name) {
  for (const FlagDef& flag : command.flags) {
    if (flag.name == name) return &flag;
  }
  return nullptr;
}

// `text` in lines of at most `width` columns (longer words stay whole); a line break in
// `text` starts a new line.
std::vector<std::string> Wrap(absl::string_view text, size_t width) {
  std::vector<std::string> lines;
  for (absl::string_view paragraph : absl::StrSplit(text, '\n')) {
    std::string line;
    for (absl::string_view word : absl::StrSplit(paragraph, ' ', absl::SkipEmpty())) {
      if (!line.empty() && line.size() + 1 + word.size() > width) {
        lines.push_back(std::move(line));
        line.clear();
      }
      absl::StrAppend(&line, line.empty() ? "" : " ", word);
    }
    lines.push_back(std::move(line));
  }
  return lines;
}

// Stands for a space that Wrap must not break at ("(default: 5)" stays on one line).
constexpr char kNonBreakingSpace = '\x01';

// "  left    text wrapped from `column` on", or `left` on a line of its own when it is
// too wide for the column.
void AppendTwoColumns(const std::string& left, absl::string_view text, size_t column,
                      std::string* out) {
  const std::string indent(column, ' ');
  std::vector<std::string> lines = Wrap(text, kHelpWidth - column);
  std::string first = absl::StrCat("  ", left);
  if (first.size() + 2 > column) {
    absl::StrAppend(out, first, "\n");
    first = indent;
  } else {
    first.resize(column, ' ');
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    std::replace(lines[i].begin(), lines[i].end(), kNonBreakingSpace, ' ');
    absl::StrAppend(out, i == 0 ? first : indent, lines[i], "\n");
  }
}

std::string FlagUsage(const FlagDef& flag) {
  if (flag.kind == FlagKind::kBool) return absl::StrCat("--", flag.name);
  return absl::StrCat("--", flag.name, " ", flag.value_name);
}

}  // namespace

// ------------------------------------------------------------------------------ tables

FlagDef ValueFlag(std::string name, std::string value_name, std::string help,
                  std::string default_text) {
  return {std::move(name), FlagKind::kValue, std::move(value_name),
          std::move(default_text), std::move(help), /*required=*/false};
}

FlagDef RequiredFlag(std::string name, std::string value_name, std::string help) {
  FlagDef flag = ValueFlag(std::move(name), std::move(value_name), std::move(help));
  flag.required = true;
  return flag;
}

FlagDef RepeatedFlag(std::string name, std::string value_name, std::string help,
                     std::string default_text) {
  FlagDef flag = ValueFlag(std::move(name), std::move(value_name), std::move(help),
                           std::move(default_text));
  flag.kind = FlagKind::kRepeated;
  return flag;
}

FlagDef BoolFlag(std::string name, std::string help) {
  return {std::move(name), FlagKind::kBool, "", "", std::move(help), /*required=*/false};
}

std::vector<FlagDef> ConcatFlags(std::initializer_list<std::vector<FlagDef>> groups) {
  std::vector<FlagDef> flags;
  for (const std::vector<FlagDef>& group : groups) {
    flags.insert(flags.end(), group.begin(), group.end());
  }
  return flags;
}

// ------------------------------------------------------------------------- FindCommand

absl::StatusOr<CommandInvocation> FindCommand(const ProgramDef& program,
                                              const std::vector<std::string>& argv) {
  std::set<std::string> value_flags;
  for (const CommandDef& command : program.commands) {
    for (const FlagDef& flag : command.flags) {
      if (flag.kind != FlagKind::kBool) value_flags.insert(flag.name);
    }
  }
  auto is_command_prefix = [&](const std::vector<std::string>& words) {
    return std::any_of(program.commands.begin(), program.commands.end(),
                       [&](const CommandDef& command) {
                         const std::vector<std::string> full = CommandWords(command);
                         return full.size() >= words.size() &&
                                std::equal(words.begin(), words.end(), full.begin());
                       });
  };

  CommandInvocation invocation;
  std::vector<std::string> words;
  std::optional<std::string> first_other_word;  // the first word after the command's
  bool help_word = false;
  bool help_flag = false;
  bool flags_ended = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (!flags_ended && arg == "--") flags_ended = true;
    if (flags_ended || first_other_word.has_value()) {
      invocation.args.push_back(arg);
      continue;
    }
    if (LooksLikeFlag(arg)) {
      invocation.args.push_back(arg);
      help_flag = help_flag || IsHelpFlag(arg);
      absl::string_view name = arg;
      if (absl::ConsumePrefix(&name, "--") && !absl::StrContains(name, '=') &&
          value_flags.count(std::string(name)) > 0 && i + 1 < argv.size()) {
        invocation.args.push_back(argv[++i]);
      }
      continue;
    }
    if (arg == "help" && words.empty() && !help_word) {
      help_word = true;
      continue;
    }
    std::vector<std::string> longer = words;
    longer.push_back(arg);
    if (is_command_prefix(longer)) {
      words = std::move(longer);
    } else {
      first_other_word = arg;
      invocation.args.push_back(arg);
    }
  }

  const std::string name = absl::StrJoin(words, " ");
  for (const CommandDef& command : program.commands) {
    if (!words.empty() && CommandWords(command) == words) invocation.command = &command;
  }
  if (invocation.command != nullptr) {
    invocation.help = help_word;
    return invocation;
  }
  if (help_word && first_other_word.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown command '", absl::StrJoin(words, " "), words.empty() ? "" : " ",
        *first_other_word, "'"));
  }
  if (help_word || help_flag) {
    invocation.help = true;
    return invocation;
  }
  if (words.empty()) {
    if (first_other_word.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown command '", *first_other_word, "'"));
    }
    return absl::InvalidArgumentError("missing command");
  }
  if (first_other_word.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown ", name, " subcommand '", *first_other_word, "'"));
  }
  std::vector<std::string> choices;
  for (const CommandDef& command : program.commands) {
    const std::vector<std::string> full = CommandWords(command);
    if (full.size() > words.size() && std::equal(words.begin(), words.end(), full.begin())) {
      choices.push_back(full[words.size()]);
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("missing ", name, " subcommand (", absl::StrJoin(choices, ", "), ")"));
}

// ------------------------------------------------------------------------- ParsedFlags

absl::StatusOr<ParsedFlags> ParsedFlags::Parse(const CommandDef& command,
                                               const std::vector<std::string>& argv) {
  ParsedFlags parsed;
  // The first error; parsing goes on so that --help anywhere still wins.
  absl::Status error;
  auto fail = [&error](std::string message) {
    if (error.ok()) error = absl::InvalidArgumentError(std::move(message));
  };
  const std::string see_help = absl::StrCat(" (see ", command.name, " --help)");
  bool flags_ended = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (flags_ended || !LooksLikeFlag(arg)) {
      parsed.positional_.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    if (IsHelpFlag(arg)) {
      parsed.help_requested_ = true;
      continue;
    }
    absl::string_view body = arg;
    if (!absl::ConsumePrefix(&body, "--")) {
      fail(absl::StrCat("unknown flag ", arg, " (flags start with --; see ", command.name,
                        " --help)"));
      continue;
    }
    std::string name(body);
    std::optional<std::string> inline_value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name.resize(eq);
    }
    const FlagDef* flag = FindFlag(command, name);
    if (flag == nullptr) {
      fail(absl::StrCat("unknown flag --", name, see_help));
      continue;
    }
    if (flag->kind == FlagKind::kBool) {
      if (inline_value.has_value()) fail(absl::StrCat("flag --", name, " takes no value"));
      parsed.bools_.insert(name);
      continue;
    }
    std::string value;
    if (inline_value.has_value()) {
      value = *std::move(inline_value);
    } else if (i + 1 < argv.size()) {
      value = argv[++i];
    } else {
      fail(absl::StrCat("flag --", name, " needs a value"));
      continue;
    }
    if (flag->kind == FlagKind::kRepeated) {
      parsed.repeated_[name].push_back(std::move(value));
    } else if (!parsed.values_.emplace(name, std::move(value)).second) {
      fail(absl::StrCat("flag --", name, " given twice (it takes one value)"));
    }
  }
  if (parsed.help_requested_) return parsed;
  if (!error.ok()) return error;
  if (parsed.positional_.size() > command.arguments.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unexpected argument '", parsed.positional_[command.arguments.size()], "'"));
  }
  if (parsed.positional_.size() < command.arguments.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("missing ", command.arguments[parsed.positional_.size()]));
  }
  for (const FlagDef& flag : command.flags) {
    if (flag.required && !parsed.Has(flag.name)) {
      return absl::InvalidArgumentError(absl::StrCat("missing required flag --", flag.name));
    }
  }
  return parsed;
}

bool ParsedFlags::Has(const std::string& name) const {
  return values_.count(name) > 0 || repeated_.count(name) > 0 || bools_.count(name) > 0;
}

std::string ParsedFlags::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<std::string> ParsedFlags::Required(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("missing required flag --", name));
  }
  return it->second;
}

std::vector<std::string> ParsedFlags::GetAll(const std::string& name) const {
  auto it = repeated_.find(name);
  return it == repeated_.end() ? std::vector<std::string>() : it->second;
}

absl::StatusOr<int64_t> ParsedFlags::GetInt(const std::string& name,
                                            int64_t fallback) const {
  return TypedValue(name, fallback, "an integer", [](absl::string_view text, int64_t* value) {
    return absl::SimpleAtoi(text, value);
  });
}

absl::StatusOr<uint64_t> ParsedFlags::GetUint(const std::string& name,
                                              uint64_t fallback) const {
  return TypedValue(name, fallback, "a non-negative integer",
                    [](absl::string_view text, uint64_t* value) {
                      return absl::SimpleAtoi(text, value);
                    });
}

absl::StatusOr<double> ParsedFlags::GetDouble(const std::string& name,
                                              double fallback) const {
  return TypedValue(name, fallback, "a finite number", [](absl::string_view text, double* value) {
    return absl::SimpleAtod(text, value) && std::isfinite(*value);
  });
}

absl::StatusOr<absl::Duration> ParsedFlags::GetDuration(const std::string& name,
                                                        absl::Duration fallback) const {
  return TypedValue(name, fallback,
                    "a duration of zero or more, such as 500ms, 30s, 5m or 1h30m (a bare "
                    "number is seconds, inf is unlimited)",
                    [](absl::string_view text, absl::Duration* value) {
                      double seconds = 0;
                      if (absl::SimpleAtod(text, &seconds) && std::isfinite(seconds)) {
                        *value = absl::Seconds(seconds);
                      } else if (!absl::ParseDuration(text, value)) {
                        return false;
                      }
                      return *value >= absl::ZeroDuration();
                    });
}

absl::StatusOr<std::vector<int64_t>> ParsedFlags::GetIntList(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("missing required flag --", name));
  }
  std::vector<int64_t> out;
  for (absl::string_view piece : absl::StrSplit(it->second, ',', absl::SkipWhitespace())) {
    int64_t value = 0;
    if (!absl::SimpleAtoi(piece, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag --", name, ": '", piece, "' is not an integer"));
    }
    out.push_back(value);
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("flag --", name, " is empty"));
  }
  return out;
}

// ------------------------------------------------------------------ ResolveCommandLine

ResolvedCommandLine ResolveCommandLine(const ProgramDef& program,
                                       const std::vector<std::string>& argv) {
  ResolvedCommandLine resolved;
  absl::StatusOr<CommandInvocation> invocation = FindCommand(program, argv);
  if (!invocation.ok()) {
    resolved.usage_error = invocation.status();
    return resolved;
  }
  resolved.command = invocation->command;
  if (resolved.command == nullptr) {
    resolved.help = FormatCommandList(program);
    return resolved;
  }
  if (invocation->help) {
    resolved.help = FormatHelp(*resolved.command);
    return resolved;
  }
  absl::StatusOr<ParsedFlags> flags = ParsedFlags::Parse(*resolved.command, invocation->args);
  if (!flags.ok()) {
    resolved.usage_error = flags.status();
  } else if (flags->help_requested()) {
    resolved.help = FormatHelp(*resolved.command);
  } else {
    resolved.flags = *std::move(flags);
  }
  return resolved;
}

// -------------------------------------------------------------------------------- help

std::string FormatHelp(const CommandDef& command) {
  std::string usage = absl::StrCat("usage: ", command.name);
  for (const FlagDef& flag : command.flags) {
    if (flag.required) absl::StrAppend(&usage, " ", FlagUsage(flag));
  }
  for (const std::string& argument : command.arguments) absl::StrAppend(&usage, " ", argument);
  absl::StrAppend(&usage, " [flags]");
  // A long usage line continues, indented, on the next lines.
  constexpr size_t kContinuationIndent = 8;
  const std::vector<std::string> lines = Wrap(usage, kHelpWidth);
  std::string out = absl::StrCat(lines[0], "\n");
  if (lines.size() > 1) {
    const std::string rest = absl::StrJoin(lines.begin() + 1, lines.end(), " ");
    for (const std::string& line : Wrap(rest, kHelpWidth - kContinuationIndent)) {
      absl::StrAppend(&out, std::string(kContinuationIndent, ' '), line, "\n");
    }
  }
  absl::StrAppend(&out, "\n", absl::StrJoin(Wrap(command.summary, kHelpWidth), "\n"), "\n");
  if (!command.details.empty()) {
    absl::StrAppend(&out, "\n", absl::StrJoin(Wrap(command.details, kHelpWidth), "\n"), "\n");
  }
  absl::StrAppend(&out, "\nFlags:\n");
  for (const FlagDef& flag : command.flags) {
    std::string text = flag.help;
    if (flag.required) absl::StrAppend(&text, " Required.");
    if (flag.kind == FlagKind::kRepeated) absl::StrAppend(&text, " Repeatable.");
    if (!flag.default_text.empty()) {
      absl::StrAppend(&text, " (default:", std::string(1, kNonBreakingSpace),
                      flag.default_text, ")");
    }
    AppendTwoColumns(FlagUsage(flag), text, kHelpColumn, &out);
  }
  AppendTwoColumns("-h, --help", "Print this help and exit.", kHelpColumn, &out);
  return out;
}

std::string FormatCommandList(const ProgramDef& program) {
  std::string out = absl::StrCat(program.summary, "\n\nusage: ", program.name,
                                 " COMMAND [flags]\n\nCommands:\n");
  size_t column = 0;
  for (const CommandDef& command : program.commands) {
    column = std::max(column, command.name.size() - program.name.size() + 3);
  }
  column = std::min(column, kHelpColumn);
  for (const CommandDef& command : program.commands) {
    AppendTwoColumns(absl::StrJoin(CommandWords(command), " "), command.summary, column,
                     &out);
  }
  absl::StrAppend(&out, "\n`", program.name, " COMMAND --help` (or `", program.name,
                  " help COMMAND`) lists a command's flags.\n");
  if (!program.details.empty()) {
    absl::StrAppend(&out, "\n", absl::StrJoin(Wrap(program.details, kHelpWidth), "\n"), "\n");
  }
  return out;
}

// ------------------------------------------------------------------------------ checks

absl::Status CheckProgramDef(const ProgramDef& program) {
  std::set<std::string> command_names;
  std::map<std::string, bool> takes_value;  // by flag name, across the program
  for (const CommandDef& command : program.commands) {
    const std::string& where = command.name;
    if (!absl::StartsWith(command.name, absl::StrCat(program.name, " ")) ||
        CommandWords(command).empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("command '", where, "' does not start with '", program.name, " '"));
    }
    if (!command_names.insert(command.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("command '", where, "' given twice"));
    }
    if (command.summary.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": no summary"));
    }
    std::set<std::string> flag_names;
    for (const FlagDef& flag : command.flags) {
      const bool valid_name =
          !flag.name.empty() && flag.name[0] != '-' && flag.name != "help" &&
          std::all_of(flag.name.begin(), flag.name.end(), [](char c) {
            return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-';
          });
      if (!valid_name) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": bad flag name '", flag.name, "'"));
      }
      if (!flag_names.insert(flag.name).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": flag --", flag.name, " given twice"));
      }
      const bool value = flag.kind != FlagKind::kBool;
      if (value == flag.value_name.empty() || flag.help.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": flag --", flag.name,
            " needs help text, and a value name exactly when it takes a value"));
      }
      if (takes_value.emplace(flag.name, value).first->second != value) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", flag.name,
                         " takes a value in one command and none in another"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace steerd
