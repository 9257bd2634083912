// steerd: the composition root. Finds the command in the command table, parses its
// flags, prints help or dispatches; holds no logic.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "server/cli/command_table.h"
#include "server/cli/commands.h"
#include "server/util/flags.h"

namespace {

using CommandFunction = absl::Status (*)(const steerd::ParsedFlags&);

// By the command's name in server/cli/command_table.cc.
const std::map<std::string, CommandFunction>& CommandFunctions() {
  static const auto* const functions = new std::map<std::string, CommandFunction>{
      {"steerd serve", steerd::RunServeCommand},
      {"steerd migrate", steerd::RunMigrateCommand},
      {"steerd generate", steerd::RunGenerateCommand},
      {"steerd logits", steerd::RunLogitsCommand},
      {"steerd tokenize", steerd::RunTokenizeCommand},
      {"steerd init-model", steerd::RunInitModelCommand},
      {"steerd dataset", steerd::RunDatasetCommand},
      {"steerd corpus", steerd::RunCorpusCommand},
      {"steerd train", steerd::RunTrainCommand},
      {"steerd eval", steerd::RunEvalCommand},
      {"steerd inspect", steerd::RunInspectCommand},
      {"steerd bench decode", steerd::RunBenchDecodeCommand},
      {"steerd bench paper-table", steerd::RunPaperTableCommand},
      {"steerd bench serve", steerd::RunBenchServeCommand},
      {"steerd bench chat", steerd::RunBenchChatCommand},
      {"steerd bench store", steerd::RunBenchStoreCommand},
  };
  return *functions;
}

// 0, or 1 after printing "error: <message>" to stderr.
int ExitWithStatus(const absl::Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

int PrintHelp(const std::string& text) {
  std::fputs(text.c_str(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const steerd::ProgramDef& program = steerd::SteerdProgram();
  const steerd::ResolvedCommandLine line =
      steerd::ResolveCommandLine(program, std::vector<std::string>(argv + 1, argv + argc));
  if (line.help.has_value()) return PrintHelp(*line.help);
  if (!line.usage_error.ok() && line.command == nullptr) {
    std::fprintf(stderr, "error: %s\n\n%s", std::string(line.usage_error.message()).c_str(),
                 steerd::FormatCommandList(program).c_str());
    return 2;
  }
  if (!line.usage_error.ok()) return ExitWithStatus(line.usage_error);
  const auto function = CommandFunctions().find(line.command->name);
  if (function == CommandFunctions().end()) {
    return ExitWithStatus(absl::InternalError("no function runs " + line.command->name));
  }
  return ExitWithStatus(function->second(line.flags));
}
