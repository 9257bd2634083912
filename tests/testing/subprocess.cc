#include "tests/testing/subprocess.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace steerd::testing {

std::string ShellQuote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

std::string ShellCommand(const std::string& binary,
                         const std::vector<std::string>& args) {
  std::string command = ShellQuote(binary);
  for (const std::string& arg : args) command += " " + ShellQuote(arg);
  return command;
}

ProcessRun RunShellCommand(const std::string& command) {
  ProcessRun run;
  std::string err_path = ::testing::TempDir() + "/subprocess_stderr_XXXXXX";
  const int fd = mkstemp(err_path.data());
  if (fd < 0) return run;
  close(fd);
  const std::string full = "( " + command + " ) 2>" + ShellQuote(err_path);
  FILE* pipe = popen(full.c_str(), "r");
  if (pipe == nullptr) {
    std::remove(err_path.c_str());
    return run;
  }
  std::array<char, 65536> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    run.out.append(buffer.data(), n);
  }
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_path);
  std::stringstream text;
  text << err.rdbuf();
  run.err = text.str();
  std::remove(err_path.c_str());
  return run;
}

}  // namespace steerd::testing
