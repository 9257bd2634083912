// The command-line parser of steerd and steerctl (server/util/flags.h): finding the
// command, parsing its flags by its table, the help generated from the table, and the
// consistency of steerd's own tables (server/cli/command_table.h; steerctl's are checked
// in client_test).
#include "server/util/flags.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/cli/command_table.h"

namespace steerd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

const CommandDef& TestCommand() {
  static const CommandDef* const command = new CommandDef{
      "prog run",
      {},
      "Runs a test.",
      "",
      {RequiredFlag("model", "DIR", "The model."),
       ValueFlag("steps", "N", "Steps.", "100"),
       ValueFlag("lr", "X", "Learning rate."),
       ValueFlag("ids", "1,2,3", "Token ids."),
       ValueFlag("name", "NAME", "A name."),
       ValueFlag("seed", "S", "A seed."),
       RepeatedFlag("stop", "TEXT", "A stop string."),
       BoolFlag("json", "Print JSON."),
       BoolFlag("verbose", "Say more.")},
  };
  return *command;
}

absl::StatusOr<ParsedFlags> Parse(std::vector<std::string> argv) {
  argv.insert(argv.begin(), {"--model", "m"});
  return ParsedFlags::Parse(TestCommand(), argv);
}

std::string ParseError(const std::vector<std::string>& argv) {
  absl::StatusOr<ParsedFlags> flags = Parse(argv);
  EXPECT_EQ(flags.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(flags.status().message());
}

// ------------------------------------------------------------------------- parsing

TEST(FlagsTest, SeparateAndInlineValues) {
  absl::StatusOr<ParsedFlags> flags = Parse({"--steps=12", "--name="});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(*flags->Required("model"), "m");
  EXPECT_EQ(*flags->GetInt("steps", 0), 12);
  // "--name=" sets an empty value rather than consuming the next argument.
  EXPECT_TRUE(flags->Has("name"));
  EXPECT_EQ(flags->Get("name", "fallback"), "");
  EXPECT_FALSE(flags->help_requested());
}

TEST(FlagsTest, InlineValueKeepsLaterEqualsSigns) {
  absl::StatusOr<ParsedFlags> flags = Parse({"--name=a=b"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(flags->Get("name"), "a=b");
}

TEST(FlagsTest, ValueMayLookLikeAFlag) {
  absl::StatusOr<ParsedFlags> flags = Parse({"--name", "--json", "--stop", "--help"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(flags->Get("name"), "--json");
  EXPECT_FALSE(flags->Bool("json"));
  EXPECT_THAT(flags->GetAll("stop"), ElementsAre("--help"));
  EXPECT_FALSE(flags->help_requested());
}

TEST(FlagsTest, RepeatedAndBoolFlags) {
  absl::StatusOr<ParsedFlags> flags =
      Parse({"--stop", "a", "--json", "--stop=b", "--json"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_THAT(flags->GetAll("stop"), ElementsAre("a", "b"));
  EXPECT_TRUE(flags->Has("stop"));
  EXPECT_TRUE(flags->Bool("json"));
  EXPECT_TRUE(flags->Has("json"));
  EXPECT_FALSE(flags->Bool("verbose"));
  EXPECT_FALSE(flags->Has("verbose"));
  EXPECT_THAT(flags->GetAll("name"), IsEmpty());
}

TEST(FlagsTest, AbsentFlagsTakeTheFallback) {
  absl::StatusOr<ParsedFlags> flags = Parse({});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_FALSE(flags->Has("name"));
  EXPECT_EQ(flags->Get("name", "default"), "default");
  EXPECT_EQ(*flags->GetInt("steps", 7), 7);
  EXPECT_EQ(*flags->GetUint("seed", 9), 9u);
  EXPECT_EQ(*flags->GetDouble("lr", 0.5), 0.5);
  EXPECT_THAT(flags->positional(), IsEmpty());
}

TEST(FlagsTest, DurationsTakeUnitsBareSecondsAndInf) {
  const std::vector<std::pair<std::string, absl::Duration>> cases = {
      {"500ms", absl::Milliseconds(500)}, {"30s", absl::Seconds(30)},
      {"5m", absl::Minutes(5)},           {"1h30m", absl::Minutes(90)},
      {"30", absl::Seconds(30)},          {"0.25", absl::Milliseconds(250)},
      {"0", absl::ZeroDuration()},        {"inf", absl::InfiniteDuration()}};
  for (const auto& [text, duration] : cases) {
    absl::StatusOr<ParsedFlags> flags = Parse({"--name", text});
    ASSERT_TRUE(flags.ok()) << flags.status();
    absl::StatusOr<absl::Duration> value = flags->GetDuration("name", absl::Seconds(1));
    ASSERT_TRUE(value.ok()) << text << ": " << value.status();
    EXPECT_EQ(*value, duration) << text;
  }
  EXPECT_EQ(*Parse({})->GetDuration("name", absl::Seconds(7)), absl::Seconds(7));
  for (const char* text : {"5 minutes", "-5s", "-1", "nan", "-inf", "1d", ""}) {
    absl::StatusOr<absl::Duration> value = Parse({"--name", text})->GetDuration(
        "name", absl::Seconds(1));
    EXPECT_EQ(value.status().message(),
              absl::StrCat("flag --name: '", text,
                           "' is not a duration of zero or more, such as 500ms, 30s, 5m or "
                           "1h30m (a bare number is seconds, inf is unlimited)"))
        << text;
  }
}

TEST(FlagsTest, SingleValueFlagGivenTwiceIsAnError) {
  EXPECT_THAT(ParseError({"--steps", "1", "--steps=2"}), HasSubstr("--steps given twice"));
  EXPECT_THAT(ParseError({"--model", "other"}), HasSubstr("--model given twice"));
}

TEST(FlagsTest, UnknownFlagNamesItAndPointsToHelp) {
  const std::string message = ParseError({"--modle", "m"});
  EXPECT_THAT(message, HasSubstr("unknown flag --modle"));
  EXPECT_THAT(message, HasSubstr("see prog run --help"));
  EXPECT_THAT(ParseError({"--modle=m"}), HasSubstr("unknown flag --modle "));
  EXPECT_THAT(ParseError({"-x"}), HasSubstr("unknown flag -x (flags start with --"));
}

TEST(FlagsTest, BoolFlagRejectsAValue) {
  EXPECT_THAT(ParseError({"--json=true"}), HasSubstr("--json takes no value"));
}

TEST(FlagsTest, MissingValueIsAnError) {
  EXPECT_THAT(ParseError({"--json", "--name"}), HasSubstr("--name needs a value"));
}

TEST(FlagsTest, MissingRequiredFlagIsAnError) {
  absl::StatusOr<ParsedFlags> flags = ParsedFlags::Parse(TestCommand(), {"--json"});
  EXPECT_EQ(flags.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(flags.status().message(), "missing required flag --model");
}

TEST(FlagsTest, RequiredAccessorReportsTheMissingFlag) {
  absl::StatusOr<ParsedFlags> flags = Parse({});
  ASSERT_TRUE(flags.ok()) << flags.status();
  absl::StatusOr<std::string> name = flags->Required("name");
  EXPECT_EQ(name.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(name.status().message(), "missing required flag --name");
}

TEST(FlagsTest, CommandWithoutArgumentsRejectsPositionalWords) {
  EXPECT_EQ(ParseError({"extra"}), "unexpected argument 'extra'");
  // "-" is a word (standard input, by convention), not a flag.
  EXPECT_EQ(ParseError({"-"}), "unexpected argument '-'");
}

TEST(FlagsTest, PositionalArgumentsAndDoubleDash) {
  const CommandDef command{"prog get", {"NAME", "FILE"}, "Gets.", "",
                           {BoolFlag("json", "Print JSON.")}};
  absl::StatusOr<ParsedFlags> flags =
      ParsedFlags::Parse(command, {"a", "--json", "--", "--literal"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_THAT(flags->positional(), ElementsAre("a", "--literal"));
  EXPECT_TRUE(flags->Bool("json"));

  flags = ParsedFlags::Parse(command, {"a"});
  EXPECT_EQ(flags.status().message(), "missing FILE");
  flags = ParsedFlags::Parse(command, {"a", "b", "c"});
  EXPECT_EQ(flags.status().message(), "unexpected argument 'c'");
}

TEST(FlagsTest, HelpWinsOverEverythingElse) {
  for (const std::vector<std::string>& argv : std::vector<std::vector<std::string>>{
           {"--help"}, {"-h"}, {"--bogus", "--help"}, {"-h", "extra", "--steps", "1",
                                                       "--steps", "2"}}) {
    // Without --model, which is required, too.
    absl::StatusOr<ParsedFlags> flags = ParsedFlags::Parse(TestCommand(), argv);
    ASSERT_TRUE(flags.ok()) << argv[0] << ": " << flags.status();
    EXPECT_TRUE(flags->help_requested());
  }
  // After "--" it is a word.
  absl::StatusOr<ParsedFlags> flags = Parse({"--", "--help"});
  EXPECT_EQ(flags.status().message(), "unexpected argument '--help'");
}

TEST(FlagsTest, Numbers) {
  absl::StatusOr<ParsedFlags> flags =
      Parse({"--steps", "-3", "--lr", "1e-3", "--seed", "18446744073709551615"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(*flags->GetInt("steps", 0), -3);
  EXPECT_DOUBLE_EQ(*flags->GetDouble("lr", 0), 1e-3);
  EXPECT_EQ(*flags->GetUint("seed", 0), UINT64_MAX);
}

TEST(FlagsTest, BadNumbersNameTheFlagAndTheValue) {
  absl::StatusOr<ParsedFlags> flags =
      Parse({"--steps", "12x", "--lr", "fast", "--name", "99999999999999999999", "--seed",
             "-1"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(flags->GetInt("steps", 0).status().message(),
            "flag --steps: '12x' is not an integer");
  EXPECT_EQ(flags->GetDouble("lr", 0).status().message(),
            "flag --lr: 'fast' is not a finite number");
  EXPECT_EQ(flags->GetUint("seed", 0).status().message(),
            "flag --seed: '-1' is not a non-negative integer");
  // Out of int64 range is not silently clamped.
  EXPECT_EQ(flags->GetInt("name", 0).status().code(), absl::StatusCode::kInvalidArgument);
  // A double where an int is expected is refused too, and so is a non-finite number.
  EXPECT_EQ(Parse({"--steps", "1.5"})->GetInt("steps", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  for (const char* value : {"nan", "inf", "-inf"}) {
    EXPECT_EQ(Parse({"--lr", value})->GetDouble("lr", 0).status().code(),
              absl::StatusCode::kInvalidArgument)
        << value;
  }
}

TEST(FlagsTest, IntLists) {
  absl::StatusOr<ParsedFlags> flags = Parse({"--ids", "1,2, 3,-4"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_THAT(*flags->GetIntList("ids"), ElementsAre(1, 2, 3, -4));
  EXPECT_THAT(*Parse({"--ids=7"})->GetIntList("ids"), ElementsAre(7));
}

TEST(FlagsTest, BadIntLists) {
  EXPECT_EQ(Parse({"--ids", "1,x,3"})->GetIntList("ids").status().message(),
            "flag --ids: 'x' is not an integer");
  EXPECT_EQ(Parse({"--ids", ""})->GetIntList("ids").status().message(),
            "flag --ids is empty");
  // An absent list is missing, not empty.
  EXPECT_EQ(Parse({})->GetIntList("ids").status().message(),
            "missing required flag --ids");
}

// -------------------------------------------------------------------- FindCommand

const ProgramDef& TestProgram() {
  static const ProgramDef* const program = new ProgramDef{
      "prog",
      "prog: a test program.",
      {TestCommand(),
       {"prog vectors get", {"NAME"}, "Gets a vector.", "", {BoolFlag("json", "JSON.")}},
       {"prog vectors list", {}, "Lists vectors.", "",
        {ValueFlag("addr", "HOST:PORT", "Where.")}}},
      "Exit status: 0 or 1.",
  };
  return *program;
}

TEST(FindCommandTest, FindsTheCommandAmongFlagsAndValues) {
  absl::StatusOr<CommandInvocation> found =
      FindCommand(TestProgram(), {"--addr", "vectors", "vectors", "--json", "get", "x"});
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_NE(found->command, nullptr);
  EXPECT_EQ(found->command->name, "prog vectors get");
  EXPECT_FALSE(found->help);
  // --addr takes a value (in another command), so the first "vectors" is its value.
  EXPECT_THAT(found->args, ElementsAre("--addr", "vectors", "--json", "x"));

  found = FindCommand(TestProgram(), {"run", "--model=m", "run", "--", "vectors"});
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->command->name, "prog run");
  EXPECT_THAT(found->args, ElementsAre("--model=m", "run", "--", "vectors"));
}

TEST(FindCommandTest, HelpWordAndHelpFlag) {
  for (const std::vector<std::string>& argv : std::vector<std::vector<std::string>>{
           {"help"}, {"--help"}, {"-h"}, {"vectors", "--help"}, {"help", "vectors"}}) {
    absl::StatusOr<CommandInvocation> found = FindCommand(TestProgram(), argv);
    ASSERT_TRUE(found.ok()) << argv[0] << ": " << found.status();
    EXPECT_TRUE(found->help) << argv[0];
    EXPECT_EQ(found->command, nullptr) << argv[0];
  }
  absl::StatusOr<CommandInvocation> found =
      FindCommand(TestProgram(), {"help", "vectors", "list"});
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_TRUE(found->help);
  ASSERT_NE(found->command, nullptr);
  EXPECT_EQ(found->command->name, "prog vectors list");
  // A command's own --help is left to ParsedFlags::Parse.
  found = FindCommand(TestProgram(), {"vectors", "list", "--help"});
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_FALSE(found->help);
  EXPECT_THAT(found->args, ElementsAre("--help"));
}

TEST(FindCommandTest, MissingUnknownAndIncompleteCommands) {
  auto error = [](const std::vector<std::string>& argv) {
    return std::string(FindCommand(TestProgram(), argv).status().message());
  };
  EXPECT_EQ(error({}), "missing command");
  EXPECT_EQ(error({"--json"}), "missing command");
  EXPECT_EQ(error({"frobnicate"}), "unknown command 'frobnicate'");
  EXPECT_EQ(error({"help", "frobnicate"}), "unknown command 'frobnicate'");
  EXPECT_EQ(error({"vectors"}), "missing vectors subcommand (get, list)");
  EXPECT_EQ(error({"vectors", "bogus"}), "unknown vectors subcommand 'bogus'");
}

// ------------------------------------------------------------- ResolveCommandLine

TEST(ResolveCommandLineTest, HelpInEveryFormRunsNothing) {
  const ProgramDef& program = TestProgram();
  const CommandDef& list = program.commands[2];
  for (const std::vector<std::string>& argv : std::vector<std::vector<std::string>>{
           {"vectors", "list", "--help"}, {"vectors", "list", "-h", "--bogus"},
           {"help", "vectors", "list"}, {"vectors", "--addr", "x", "list", "--help"}}) {
    const ResolvedCommandLine line = ResolveCommandLine(program, argv);
    EXPECT_TRUE(line.usage_error.ok()) << argv[0] << ": " << line.usage_error;
    EXPECT_EQ(line.command, &list) << argv[0];
    EXPECT_EQ(line.help, FormatHelp(list)) << argv[0];
  }
  for (const std::vector<std::string>& argv :
       std::vector<std::vector<std::string>>{{"help"}, {"--help"}, {"-h"}}) {
    const ResolvedCommandLine line = ResolveCommandLine(program, argv);
    EXPECT_EQ(line.command, nullptr) << argv[0];
    EXPECT_EQ(line.help, FormatCommandList(program)) << argv[0];
  }
}

TEST(ResolveCommandLineTest, UsageErrorsKeepTheCommandTheyFound) {
  ResolvedCommandLine line = ResolveCommandLine(TestProgram(), {"frobnicate"});
  EXPECT_EQ(line.command, nullptr);
  EXPECT_FALSE(line.help.has_value());
  EXPECT_EQ(line.usage_error.message(), "unknown command 'frobnicate'");

  line = ResolveCommandLine(TestProgram(), {"vectors", "list", "--colour", "red"});
  ASSERT_NE(line.command, nullptr);
  EXPECT_EQ(line.command->name, "prog vectors list");
  EXPECT_FALSE(line.help.has_value());
  EXPECT_EQ(line.usage_error.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(line.usage_error.message(), HasSubstr("unknown flag --colour"));
}

TEST(ResolveCommandLineTest, ACommandToRunCarriesItsFlags) {
  const ResolvedCommandLine line =
      ResolveCommandLine(TestProgram(), {"vectors", "get", "v1", "--json"});
  ASSERT_TRUE(line.usage_error.ok()) << line.usage_error;
  ASSERT_NE(line.command, nullptr);
  EXPECT_EQ(line.command->name, "prog vectors get");
  EXPECT_FALSE(line.help.has_value());
  EXPECT_THAT(line.flags.positional(), ElementsAre("v1"));
  EXPECT_TRUE(line.flags.Bool("json"));
}

// --------------------------------------------------------------------------- help

TEST(HelpTest, NamesEveryFlagWithValueNameDefaultAndHelp) {
  const std::string help = FormatHelp(TestCommand());
  EXPECT_THAT(help, StartsWith("usage: prog run --model DIR [flags]\n\nRuns a test.\n"));
  for (const FlagDef& flag : TestCommand().flags) {
    EXPECT_THAT(help, HasSubstr("--" + flag.name)) << flag.name;
    EXPECT_THAT(help, HasSubstr(flag.help)) << flag.name;
  }
  EXPECT_THAT(help, HasSubstr("  --steps N "));
  EXPECT_THAT(help, HasSubstr("(default: 100)"));
  EXPECT_THAT(help, HasSubstr("A stop string. Repeatable."));
  EXPECT_THAT(help, HasSubstr("The model. Required."));
  EXPECT_THAT(help, HasSubstr("-h, --help"));
}

// The longest line of `text`, in bytes.
size_t LongestLine(const std::string& text) {
  size_t longest = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    longest = std::max(longest, line.size());
  }
  return longest;
}

TEST(HelpTest, LinesFitEightyColumns) {
  FlagDef long_help = ValueFlag(
      "a-rather-long-flag-name", "VALUE",
      "A help text that goes on and on well past the end of one line of the terminal, so "
      "that it has to be wrapped onto the next one, and the one after that.",
      "a default that is long too");
  const CommandDef command{"prog long", {}, "Long.", "", {long_help}};
  const std::string help = FormatHelp(command);
  EXPECT_LE(LongestLine(help), 80u) << help;
  EXPECT_THAT(help, HasSubstr("  --a-rather-long-flag-name VALUE\n"));
  EXPECT_THAT(help, HasSubstr("(default: a\n"));
}

TEST(HelpTest, CommandListNamesEveryCommandWithItsSummary) {
  const std::string list = FormatCommandList(TestProgram());
  EXPECT_THAT(list, StartsWith("prog: a test program.\n\nusage: prog COMMAND [flags]\n"));
  for (const CommandDef& command : TestProgram().commands) {
    EXPECT_THAT(list, HasSubstr(command.summary)) << command.name;
  }
  EXPECT_THAT(list, HasSubstr("  vectors list  "));
  EXPECT_THAT(list, HasSubstr("Exit status: 0 or 1."));
}

// ------------------------------------------------------------------------- tables

TEST(CheckProgramDefTest, CatchesInconsistentTables) {
  EXPECT_TRUE(CheckProgramDef(TestProgram()).ok());
  ProgramDef program = TestProgram();
  program.commands[1].flags.push_back(BoolFlag("addr", "Now a bool."));
  EXPECT_THAT(std::string(CheckProgramDef(program).message()),
              HasSubstr("--addr takes a value in one command and none in another"));
  program = TestProgram();
  program.commands[0].flags.push_back(BoolFlag("json", "Again."));
  EXPECT_THAT(std::string(CheckProgramDef(program).message()),
              HasSubstr("flag --json given twice"));
  program = TestProgram();
  program.commands[0].flags.push_back(BoolFlag("help", "Reserved."));
  EXPECT_FALSE(CheckProgramDef(program).ok());
  program = TestProgram();
  program.commands[0].flags.push_back(ValueFlag("x", "", "No value name."));
  EXPECT_FALSE(CheckProgramDef(program).ok());
  program = TestProgram();
  program.commands.push_back(program.commands[0]);
  EXPECT_FALSE(CheckProgramDef(program).ok());
  program = TestProgram();
  program.commands[0].name = "other run";
  EXPECT_FALSE(CheckProgramDef(program).ok());
}

TEST(SteerdCommandTableTest, IsConsistentAndEveryHelpNamesEveryFlag) {
  const ProgramDef& program = SteerdProgram();
  ASSERT_TRUE(CheckProgramDef(program).ok()) << CheckProgramDef(program);
  // Without the line breaks and indentation of the wrapped summaries.
  const std::string list = absl::StrJoin(
      absl::StrSplit(FormatCommandList(program), absl::ByAnyChar(" \n"), absl::SkipEmpty()),
      " ");
  for (const CommandDef& command : program.commands) {
    EXPECT_THAT(list, HasSubstr(command.summary)) << command.name;
    const std::string help = FormatHelp(command);
    EXPECT_LE(LongestLine(help), 80u) << help;
    for (const FlagDef& flag : command.flags) {
      EXPECT_THAT(help, HasSubstr("--" + flag.name + " ")) << command.name;
    }
    // What `steerd <command> --help` (-h, `steerd help <command>`) prints; main.cc
    // prints it and runs nothing (tests/integration/cli_test.cc runs the binary).
    std::vector<std::string> words = absl::StrSplit(command.name, ' ');
    words.erase(words.begin());
    std::vector<std::vector<std::string>> asks_for_help = {words, words, words};
    asks_for_help[0].push_back("--help");
    asks_for_help[1].push_back("-h");
    asks_for_help[2].insert(asks_for_help[2].begin(), "help");
    for (const std::vector<std::string>& argv : asks_for_help) {
      const ResolvedCommandLine line = ResolveCommandLine(program, argv);
      EXPECT_EQ(line.command, &command) << absl::StrJoin(argv, " ");
      EXPECT_EQ(line.help, help) << absl::StrJoin(argv, " ");
    }
  }
  EXPECT_LE(LongestLine(FormatCommandList(program)), 80u);
}

// Flag errors on steerd's own tables name the flag (cli_test checks how the binary
// prints one of them).
TEST(SteerdCommandTableTest, FlagErrorsNameTheFlag) {
  auto error = [](const std::vector<std::string>& argv) {
    return std::string(ResolveCommandLine(SteerdProgram(), argv).usage_error.message());
  };
  EXPECT_EQ(error({"serve", "--max-batch", "8", "--colour", "red"}),
            "unknown flag --colour (see steerd serve --help)");
  EXPECT_THAT(error({"serve", "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:1"}),
              StartsWith("flag --listen given twice"));
  EXPECT_THAT(error({"bench", "serve", "--seconds", "1", "--seconds=2"}),
              StartsWith("flag --seconds given twice"));
  EXPECT_EQ(error({"dataset", "--task", "arith", "--split", "test", "--out", "x.jsonl",
                   "extra"}),
            "unexpected argument 'extra'");
  EXPECT_EQ(error({"tokenize", "--input", "x.jsonl"}), "missing required flag --model");
}

}  // namespace
}  // namespace steerd
