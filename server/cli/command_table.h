// The commands of the `steerd` binary and their flag tables (server/util/flags.h): what
// main.cc parses every command line by, what `steerd help` and `steerd COMMAND --help`
// print, and what the tests iterate to check that every command's help lists every
// flag it accepts. Pure data, torch-free (library steerd_cli_commands); the commands
// themselves are in server/cli/commands.h.
#ifndef STEERD_SERVER_CLI_COMMAND_TABLE_H_
#define STEERD_SERVER_CLI_COMMAND_TABLE_H_

#include "server/util/flags.h"

namespace steerd {

// "steerd serve", "steerd generate", ..., "steerd bench serve".
const ProgramDef& SteerdProgram();

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_COMMAND_TABLE_H_
