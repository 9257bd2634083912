// steerctl, the command-line client of a steerd server, as a function: it parses the
// arguments, runs one command through SteerdClient and writes what a terminal shows.
// Output goes to `out` (generated text is flushed chunk by chunk as it streams in),
// errors to `err` as "steerctl: <GRPC_CODE_NAME>: <message>". The exit code is 0 on
// success, 1 when the command failed (an RPC error, an unreadable file, a server that
// is not SERVING) and 2 for a usage error (after the message, the usage text). The
// steerctl binary is a thin main() over RunSteerctl; tests may call it in-process.
#ifndef STEERD_CLIENT_STEERCTL_COMMANDS_H_
#define STEERD_CLIENT_STEERCTL_COMMANDS_H_

#include <ostream>
#include <string>
#include <vector>

namespace steerd::client {

// The text of `steerctl help`.
extern const char kSteerctlUsage[];

// `args` excludes the program name.
int RunSteerctl(const std::vector<std::string>& args, std::ostream& out,
                std::ostream& err);

}  // namespace steerd::client

#endif  // STEERD_CLIENT_STEERCTL_COMMANDS_H_
