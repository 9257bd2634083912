// steerctl, the command-line client of a steerd server, as a function: it parses the
// arguments, runs one command through SteerdClient and writes what a terminal shows.
// Output goes to `out` (generated text is flushed chunk by chunk as it streams in, a
// watched job's progress event by event), errors to `err` as "steerctl:
// <GRPC_CODE_NAME>: <message>". The exit code is 0 on success, 1 when the command
// failed (an RPC error, an unreadable file, a server that is not SERVING, a watched job
// that FAILED or was CANCELLED), 2 for a usage error (after the message, the command's
// help) and 130 when Ctrl-C stopped a watch. `--help` / `-h` on any command, `steerctl
// help [COMMAND]` and `steerctl --help` print help generated from SteerctlProgram()'s
// tables to `out` and exit 0. The steerctl binary is a thin main() over RunSteerctl;
// tests may call it in-process.
#ifndef STEERD_CLIENT_STEERCTL_COMMANDS_H_
#define STEERD_CLIENT_STEERCTL_COMMANDS_H_

#include <ostream>
#include <string>
#include <vector>

#include "server/util/flags.h"

namespace steerd::client {

// steerctl's commands ("steerctl models", "steerctl vectors get", ...) and their flag
// tables (steerctl_command_table.cc): what RunSteerctl parses by and prints as help.
const ProgramDef& SteerctlProgram();

// `args` excludes the program name. `out_is_terminal`: `out` is a terminal, where a
// watched job's progress line is redrawn in place instead of printed line by line.
int RunSteerctl(const std::vector<std::string>& args, std::ostream& out,
                std::ostream& err, bool out_is_terminal = false);

}  // namespace steerd::client

#endif  // STEERD_CLIENT_STEERCTL_COMMANDS_H_
