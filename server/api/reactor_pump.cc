#include "server/api/reactor_pump.h"

#include <pthread.h>

#include <utility>

namespace steerd {

ReactorPump::ReactorPump() : thread_([this] { Run(); }) {}

ReactorPump::~ReactorPump() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void ReactorPump::Post(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  tasks_.push_back(std::move(task));
}

void ReactorPump::Run() {
  pthread_setname_np(pthread_self(), "steerd-pump");
  while (true) {
    std::deque<std::function<void()>> batch;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || !tasks_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (tasks_.empty()) return;  // stop_ and nothing left.
      batch.swap(tasks_);
    }
    for (auto& task : batch) task();
  }
}

}  // namespace steerd
