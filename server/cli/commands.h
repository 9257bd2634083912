// The offline subcommands of `steerd` (no server needed): each takes the arguments
// after its name, prints its result to stdout, reports errors as "error: ..." on
// stderr, and returns the process exit code.
#ifndef STEERD_SERVER_CLI_COMMANDS_H_
#define STEERD_SERVER_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace steerd {

int RunLogitsCommand(const std::vector<std::string>& args);
int RunGenerateCommand(const std::vector<std::string>& args);
int RunInitModelCommand(const std::vector<std::string>& args);
int RunBenchCommand(const std::vector<std::string>& args);
int RunDatasetCommand(const std::vector<std::string>& args);
int RunCorpusCommand(const std::vector<std::string>& args);
int RunTrainCommand(const std::vector<std::string>& args);
int RunEvalCommand(const std::vector<std::string>& args);
int RunInspectCommand(const std::vector<std::string>& args);
int RunServeCommand(const std::vector<std::string>& args);    // `serve`
int RunPaperTableCommand(const std::vector<std::string>& args);  // `bench paper-table`

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_COMMANDS_H_
