// How steerctl shows a training job while it runs. A terminal gets one live line,
// rewritten in place with '\r' as steps complete ("[#.........] step 12/100  reward
// 0.41  acc 62.5%  eval 80.0%  ETA 1m20s"), and a line per state change above it; a
// pipe or a log file gets a plain line per state change and per step instead, since
// '\r' would pile every redraw into one unreadable line there. The formatting
// functions are pure functions of a Job snapshot, so tests check them without a server
// or a terminal.
#ifndef STEERD_CLIENT_JOB_PROGRESS_H_
#define STEERD_CLIENT_JOB_PROGRESS_H_

#include <cstddef>
#include <ostream>
#include <string>

#include "steerd/v1/training.pb.h"

namespace steerd::client {

// Cells of the progress bar.
inline constexpr int kProgressBarWidth = 10;

// Whole seconds as "45s", "1m20s" or "2h05m"; "0s" for anything below one second
// (including negative and non-finite values).
std::string FormatDuration(double seconds);

// "step 12/100", then what the latest metrics hold: "reward 0.41  acc 62.5%" (RLOO,
// GRPO) or "loss 1.234" (SFT, which has no rollouts to reward), "eval 80.0%" once an
// evaluation has run, and "ETA 1m20s" while the server can estimate one.
std::string FormatJobProgress(const steerd::v1::Job& job);

// FormatJobProgress after a bar of kProgressBarWidth cells, filled by steps done.
std::string FormatProgressLine(const steerd::v1::Job& job);

// "job ID: STATE".
std::string FormatStateLine(const steerd::v1::Job& job);

// "name@version".
std::string FormatVectorRef(const steerd::v1::VectorRef& ref);

// Whether `state` is SUCCEEDED, FAILED or CANCELLED.
bool IsTerminalState(steerd::v1::Job::State state);

// Writes a WatchJob stream as it arrives, flushing after every event.
class JobWatchPrinter {
 public:
  // `terminal`: `out` is a terminal, so the progress line is redrawn in place.
  JobWatchPrinter(std::ostream& out, bool terminal) : out_(out), terminal_(terminal) {}

  void Print(const steerd::v1::JobEvent& event);

  // Ends the live line, if one is shown, so what follows starts on a fresh line. Call it
  // when the stream ends, however it ends.
  void Finish();

 private:
  // A line that stays, written above the live line.
  void PrintLine(const std::string& text);
  // Replaces the live line with `text`.
  void DrawLive(const std::string& text);

  std::ostream& out_;
  const bool terminal_;
  bool live_ = false;      // a live line is on screen, the cursor at its end
  std::string live_text_;  // what it says
};

}  // namespace steerd::client

#endif  // STEERD_CLIENT_JOB_PROGRESS_H_
