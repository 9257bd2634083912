#include "client/job_progress.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/enum_names.h"

namespace steerd::client {

namespace v1 = ::steerd::v1;

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 1) return "0s";
  const int64_t total = static_cast<int64_t>(std::llround(std::min(seconds, 1e12)));
  if (total < 60) return absl::StrCat(total, "s");
  if (total < 3600) return absl::StrFormat("%dm%02ds", total / 60, total % 60);
  // Seconds are noise once a job takes hours.
  const int64_t minutes = (total + 30) / 60;
  return absl::StrFormat("%dh%02dm", minutes / 60, minutes % 60);
}

std::string FormatJobProgress(const v1::Job& job) {
  std::vector<std::string> parts = {
      absl::StrCat("step ", job.progress().step(), "/", job.progress().total_steps())};
  if (job.has_metrics()) {
    const v1::JobMetrics& metrics = job.metrics();
    if (job.algorithm() == v1::ALGORITHM_SFT) {
      parts.push_back(absl::StrFormat("loss %.3f", metrics.loss()));
    } else {
      parts.push_back(absl::StrFormat("reward %.2f", metrics.reward_mean()));
      parts.push_back(absl::StrFormat("acc %.1f%%", 100.0 * metrics.accuracy()));
    }
    if (metrics.has_eval_accuracy()) {
      parts.push_back(absl::StrFormat("eval %.1f%%", 100.0 * metrics.eval_accuracy()));
    }
    if (metrics.eta_seconds() >= 1 && !IsTerminalState(job.state())) {
      parts.push_back(absl::StrCat("ETA ", FormatDuration(metrics.eta_seconds())));
    }
  }
  return absl::StrJoin(parts, "  ");
}

std::string FormatProgressLine(const v1::Job& job) {
  const int64_t total = job.progress().total_steps();
  const int64_t step = std::clamp<int64_t>(job.progress().step(), 0, total);
  const int filled = total > 0 ? static_cast<int>(step * kProgressBarWidth / total) : 0;
  return absl::StrCat("[", std::string(filled, '#'),
                      std::string(kProgressBarWidth - filled, '.'), "] ",
                      FormatJobProgress(job));
}

std::string FormatStateLine(const v1::Job& job) {
  return absl::StrCat("job ", job.id(), ": ", ShortEnumName(job.state()));
}

std::string FormatVectorRef(const v1::VectorRef& ref) {
  return absl::StrCat(ref.name(), "@", ref.version());
}

bool IsTerminalState(v1::Job::State state) {
  return state == v1::Job::STATE_SUCCEEDED || state == v1::Job::STATE_FAILED ||
         state == v1::Job::STATE_CANCELLED;
}

void JobWatchPrinter::Print(const v1::JobEvent& event) {
  const v1::Job& job = event.job();
  if (event.has_state_change()) {
    const v1::Job::State state = event.state_change().state();
    // Leave the final numbers on screen above the verdict.
    if (live_ && IsTerminalState(state)) {
      DrawLive(FormatProgressLine(job));
      Finish();
    }
    PrintLine(FormatStateLine(job));
    if (terminal_ && state == v1::Job::STATE_RUNNING) DrawLive(FormatProgressLine(job));
  } else if (event.has_step_metrics()) {
    if (terminal_) {
      DrawLive(FormatProgressLine(job));
    } else {
      PrintLine(FormatJobProgress(job));
    }
  }
  out_.flush();
}

void JobWatchPrinter::Finish() {
  if (!live_) return;
  out_ << '\n';
  out_.flush();
  live_ = false;
  live_text_.clear();
}

void JobWatchPrinter::PrintLine(const std::string& text) {
  if (!live_) {
    out_ << text << '\n';
    return;
  }
  // Blank the live line, write the new one in its place, then redraw below it.
  const std::string live = live_text_;
  out_ << '\r' << std::string(live.size(), ' ') << '\r' << text << '\n';
  live_ = false;
  DrawLive(live);
}

void JobWatchPrinter::DrawLive(const std::string& text) {
  out_ << '\r' << text;
  // Spaces over what a longer previous line left behind.
  if (live_ && live_text_.size() > text.size()) {
    out_ << std::string(live_text_.size() - text.size(), ' ');
  }
  live_ = true;
  live_text_ = text;
}

}  // namespace steerd::client
