// The subcommands of `steerd`. main.cc finds the command (server/cli/command_table.h
// holds every command's flag table), parses its flags by that table and calls its
// function here, which prints its result to stdout and returns OK, or the error main.cc
// prints as "error: <message>" (exit code 1).
#ifndef STEERD_SERVER_CLI_COMMANDS_H_
#define STEERD_SERVER_CLI_COMMANDS_H_

#include "absl/status/status.h"
#include "server/util/flags.h"

namespace steerd {

absl::Status RunServeCommand(const ParsedFlags& args);           // serve_command.cc
absl::Status RunMigrateCommand(const ParsedFlags& args);         // store_commands.cc
absl::Status RunGenerateCommand(const ParsedFlags& args);        // model_commands.cc
absl::Status RunLogitsCommand(const ParsedFlags& args);          // model_commands.cc
absl::Status RunTokenizeCommand(const ParsedFlags& args);        // tokenize_command.cc
absl::Status RunInitModelCommand(const ParsedFlags& args);       // init_model_command.cc
absl::Status RunDatasetCommand(const ParsedFlags& args);         // dataset_command.cc
absl::Status RunCorpusCommand(const ParsedFlags& args);          // dataset_command.cc
absl::Status RunTrainCommand(const ParsedFlags& args);           // train_commands.cc
absl::Status RunEvalCommand(const ParsedFlags& args);            // train_commands.cc
absl::Status RunInspectCommand(const ParsedFlags& args);         // train_commands.cc
absl::Status RunBenchDecodeCommand(const ParsedFlags& args);     // bench_command.cc
absl::Status RunPaperTableCommand(const ParsedFlags& args);      // paper_table_command.cc
absl::Status RunBenchServeCommand(const ParsedFlags& args);      // bench_serve_command.cc
absl::Status RunBenchChatCommand(const ParsedFlags& args);       // bench_chat_command.cc
absl::Status RunBenchStoreCommand(const ParsedFlags& args);      // bench_store_command.cc

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_COMMANDS_H_
