#include "tests/testing/cli.h"

#include "tests/testing/subprocess.h"

namespace steerd::testing {

CliRun Steerd(const std::string& args) {
  const ProcessRun run = RunShellCommand(std::string(STEERD_BINARY_DIR) + "/bin/steerd " + args);
  return {run.exit_code, run.out, run.err};
}

}  // namespace steerd::testing
