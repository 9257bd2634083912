// steerctl: talks to a running steerd server (models, vectors, generation, training
// jobs, health).
// All logic is in steerctl_commands.cc; run `steerctl help` for usage.
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "client/steerctl_commands.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return steerd::client::RunSteerctl(args, std::cout, std::cerr,
                                     isatty(STDOUT_FILENO) != 0);
}
