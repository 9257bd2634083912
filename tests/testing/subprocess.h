// Runs a program the way a user's shell does, for tests of command-line tools other
// than build/bin/steerd (tests/testing/cli.h runs that one): the exit code, stdout and
// stderr of one shell command. Safe to call from tests running in parallel processes
// (stderr goes through a unique temporary file).
#ifndef STEERD_TESTS_TESTING_SUBPROCESS_H_
#define STEERD_TESTS_TESTING_SUBPROCESS_H_

#include <string>
#include <vector>

namespace steerd::testing {

struct ProcessRun {
  int exit_code = -1;  // -1 when the command could not run or was killed by a signal
  std::string out;     // stdout
  std::string err;     // stderr
};

// Runs `command` with /bin/sh and waits for it.
ProcessRun RunShellCommand(const std::string& command);

// `text` quoted for /bin/sh.
std::string ShellQuote(const std::string& text);

// `binary` (a path) followed by the shell-quoted `args`.
std::string ShellCommand(const std::string& binary, const std::vector<std::string>& args);

}  // namespace steerd::testing

#endif  // STEERD_TESTS_TESTING_SUBPROCESS_H_
