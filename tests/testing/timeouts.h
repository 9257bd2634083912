// Bounds on how long the tests wait for something that should happen, scaled for slow
// builds. Sanitized builds (scripts/sanitize.sh) run the server and the model several
// times slower, so a bound that is generous for a normal build can expire before the
// awaited event. The scale comes from the environment variable
// STEERD_TEST_TIMEOUT_SCALE (a positive number, 1 when unset or invalid); only upper
// bounds on waits take it, never a deadline that a test expects to expire.
#ifndef STEERD_TESTS_TESTING_TIMEOUTS_H_
#define STEERD_TESTS_TESTING_TIMEOUTS_H_

#include <cstdlib>

#include "absl/time/time.h"

namespace steerd::testing {

inline double TimeoutScale() {
  static const double scale = [] {
    const char* text = std::getenv("STEERD_TEST_TIMEOUT_SCALE");
    const double value = text == nullptr ? 1.0 : std::atof(text);
    return value > 0 ? value : 1.0;
  }();
  return scale;
}

// `timeout` times TimeoutScale().
inline absl::Duration ScaledTimeout(absl::Duration timeout) {
  return timeout * TimeoutScale();
}

}  // namespace steerd::testing

#endif  // STEERD_TESTS_TESTING_TIMEOUTS_H_
