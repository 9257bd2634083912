// Facts about this process and machine that benchmarks and training summaries report:
// peak resident memory (VmHWM) and the CPU model name.
#ifndef STEERD_SERVER_CLI_PROCESS_INFO_H_
#define STEERD_SERVER_CLI_PROCESS_INFO_H_

#include <cstdint>
#include <string>

namespace steerd {

// Peak resident set size of this process so far, in bytes (0 when unknown).
int64_t PeakRssBytes();
// "AMD EPYC ..." from /proc/cpuinfo, or "unknown".
std::string CpuModel();

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_PROCESS_INFO_H_
