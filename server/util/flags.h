// The one command-line parser of steerd and steerctl, with help generated from the same
// tables it parses by. A program (ProgramDef) is a list of commands (CommandDef: "steerd
// serve", "steerctl vectors get"); each command declares its positional arguments and
// its flags (FlagDef: name, kind, value name, default and help text). FindCommand picks
// the command out of a command line, ParsedFlags::Parse reads the rest ("--name V",
// "--name=V", "--" ends the flags) and FormatHelp / FormatCommandList print the help.
// Anything a table does not declare is an INVALID_ARGUMENT naming it: an unknown flag
// (the message points to the command's --help), a missing value, a single-value flag
// given twice, a malformed number, a missing or extra positional argument, a missing
// required flag. "--help" and "-h" are flags of every command. Torch-free.
#ifndef STEERD_SERVER_UTIL_FLAGS_H_
#define STEERD_SERVER_UTIL_FLAGS_H_

#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace steerd {

enum class FlagKind {
  kValue,     // one value, given at most once: "--model DIR" or "--model=DIR"
  kRepeated,  // a value, any number of times, kept in order: "--stop a --stop b"
  kBool,      // no value: "--json"
};

struct FlagDef {
  std::string name;                  // without the dashes: "max-batch"
  FlagKind kind = FlagKind::kValue;
  std::string value_name;            // what the value is, in help: "N", "DIR"; "" for kBool
  std::string default_text;          // shown as "(default: ...)" in help; "" shows none
  std::string help;                  // one or more sentences
  bool required = false;             // Parse fails without it
};

struct CommandDef {
  std::string name;                  // the whole invocation: "steerctl vectors get"
  std::vector<std::string> arguments;  // required positional arguments: {"NAME[@VERSION]"}
  std::string summary;               // one sentence, also in the program's command list
  std::string details;               // more help, or ""; wrapped, "\n" breaks a line
  std::vector<FlagDef> flags;
};

struct ProgramDef {
  std::string name;                  // "steerd"
  std::string summary;               // the first line of the command list
  std::vector<CommandDef> commands;  // listed in this order
  std::string details;               // after the command list, or ""; wrapped likewise
};

// Shorthands for writing tables.
FlagDef ValueFlag(std::string name, std::string value_name, std::string help,
                  std::string default_text = "");
FlagDef RequiredFlag(std::string name, std::string value_name, std::string help);
FlagDef RepeatedFlag(std::string name, std::string value_name, std::string help,
                     std::string default_text = "");
FlagDef BoolFlag(std::string name, std::string help);
// The groups one after the other: a command's own flags next to shared ones.
std::vector<FlagDef> ConcatFlags(std::initializer_list<std::vector<FlagDef>> groups);

// The command a command line names, and the rest of the line.
struct CommandInvocation {
  // The command, or null when the line asks for the program's command list.
  const CommandDef* command = nullptr;
  // `help [COMMAND]`, or --help / -h before any command word: print help, run nothing.
  bool help = false;
  // The arguments without the command's words, for ParsedFlags::Parse.
  std::vector<std::string> args;
};

// Finds the command named by the words of `argv` (the arguments after the program
// name) that are neither flags nor flag values; flags may come before, between and
// after the command's words. The first word "help" asks for help on the command the
// following words name, or for the command list. INVALID_ARGUMENT for a missing,
// unknown or incomplete command ("missing vectors subcommand (create, get, ...)").
absl::StatusOr<CommandInvocation> FindCommand(const ProgramDef& program,
                                              const std::vector<std::string>& argv);

// A command's parsed line. Accessors take flag names without the dashes.
class ParsedFlags {
 public:
  // Parses `argv` (the arguments after the command's words) by `command`'s table.
  // When --help or -h is among the flags, the result asks for help whatever else the
  // line holds.
  static absl::StatusOr<ParsedFlags> Parse(const CommandDef& command,
                                           const std::vector<std::string>& argv);

  bool help_requested() const { return help_requested_; }
  // Exactly as many as the command's `arguments`.
  const std::vector<std::string>& positional() const { return positional_; }

  // Whether the flag was given (a bool flag, or a value flag at least once).
  bool Has(const std::string& name) const;
  // Whether a bool flag was given.
  bool Bool(const std::string& name) const { return bools_.count(name) > 0; }
  // A single-value flag's value, or `fallback` when it was not given.
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  // A single-value flag's value; INVALID_ARGUMENT "missing required flag --name".
  absl::StatusOr<std::string> Required(const std::string& name) const;
  // A repeated flag's values, in command-line order.
  std::vector<std::string> GetAll(const std::string& name) const;
  // Typed values, or `fallback` when the flag was not given; INVALID_ARGUMENT naming the
  // flag and the value when it is malformed.
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<uint64_t> GetUint(const std::string& name, uint64_t fallback) const;
  // A finite number.
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  // A duration of at least zero: "500ms", "30s", "5m", "1h30m" (absl::ParseDuration's
  // units ns, us, ms, s, m, h), a bare number of seconds ("30", "0.5"), or "inf" for
  // absl::InfiniteDuration() (unlimited).
  absl::StatusOr<absl::Duration> GetDuration(const std::string& name,
                                             absl::Duration fallback) const;
  // Comma-separated integers ("--ids 1,2,3"); the flag is required and not empty.
  absl::StatusOr<std::vector<int64_t>> GetIntList(const std::string& name) const;

 private:
  // The value of flag `name` as `parse` reads it, or `fallback` when the flag was not
  // given; INVALID_ARGUMENT "flag --name: 'VALUE' is not <what>" when `parse` fails.
  template <typename T, typename Parse>
  absl::StatusOr<T> TypedValue(const std::string& name, T fallback, const char* what,
                               const Parse& parse) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    T value{};
    if (!parse(it->second, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag --", name, ": '", it->second, "' is not ", what));
    }
    return value;
  }

  bool help_requested_ = false;
  std::vector<std::string> positional_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<std::string>> repeated_;
  std::set<std::string> bools_;
};

// What a command line asks for, before anything runs: help to print, a usage error, or
// a command to run with its flags. Both programs' mains act on it the same way.
struct ResolvedCommandLine {
  // The command the line names; null for the command list (help or a usage error).
  const CommandDef* command = nullptr;
  // Set when the line asks for help (the command's, or the command list when `command`
  // is null): print it to stdout, exit 0, run nothing.
  std::optional<std::string> help;
  // Not OK when the line cannot run (an unknown command or flag, a missing value, ...):
  // the INVALID_ARGUMENT of FindCommand or ParsedFlags::Parse.
  absl::Status usage_error;
  // The command's flags, when neither help nor a usage error.
  ParsedFlags flags;
};

// FindCommand, then ParsedFlags::Parse, with "help", --help and -h answered.
ResolvedCommandLine ResolveCommandLine(const ProgramDef& program,
                                       const std::vector<std::string>& argv);

// `command`'s help: its usage line, summary and details, then every flag with its
// value name, help text and default, wrapped to 80 columns.
std::string FormatHelp(const CommandDef& command);

// The program's help: its summary, usage line and commands with their summaries.
std::string FormatCommandList(const ProgramDef& program);

// OK when the tables are consistent: unique command names that start with the
// program's name, unique flag names of letters, digits and dashes, none named "help",
// value names exactly on value flags, help text on every flag and command, and each flag
// name taking a value in every command or in none (FindCommand skips flag values by
// name).
absl::Status CheckProgramDef(const ProgramDef& program);

}  // namespace steerd

#endif  // STEERD_SERVER_UTIL_FLAGS_H_
