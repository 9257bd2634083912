// Runs build/bin/steerd as users and scripts do, for the integration tests: the
// command's exit code, stdout and stderr.
#ifndef STEERD_TESTS_TESTING_CLI_H_
#define STEERD_TESTS_TESTING_CLI_H_

#include <string>

namespace steerd::testing {

struct CliRun {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// `args` is appended to the binary's path and run by the shell.
CliRun Steerd(const std::string& args);

}  // namespace steerd::testing

#endif  // STEERD_TESTS_TESTING_CLI_H_
