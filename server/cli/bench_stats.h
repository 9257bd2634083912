// Summary statistics the benchmarks print, defined once: nearest-rank percentiles of
// samples (latencies in milliseconds).
// Thread-safety: pure functions.
#ifndef STEERD_SERVER_CLI_BENCH_STATS_H_
#define STEERD_SERVER_CLI_BENCH_STATS_H_

#include <algorithm>
#include <cmath>
#include <vector>

namespace steerd {

// Nearest-rank percentile (q in [0, 1]) of `values`; 0 when empty.
inline double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t rank = static_cast<size_t>(std::ceil(q * values.size()));
  return values[std::min(values.size() - 1, rank == 0 ? 0 : rank - 1)];
}

inline double Median(const std::vector<double>& values) { return Percentile(values, 0.5); }

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_BENCH_STATS_H_
