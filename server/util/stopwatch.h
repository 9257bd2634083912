// Wall-clock timing for benchmarks, training progress and metrics: a monotonic clock
// and the seconds elapsed since a point on it.
#ifndef STEERD_SERVER_UTIL_STOPWATCH_H_
#define STEERD_SERVER_UTIL_STOPWATCH_H_

#include <chrono>

namespace steerd {

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace steerd

#endif  // STEERD_SERVER_UTIL_STOPWATCH_H_
