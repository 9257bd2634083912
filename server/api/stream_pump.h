// The write side of one server-streaming RPC on gRPC's callback API, shared by
// GenerateStream (services.cc) and WatchJob (training_service.cc). The owner hears its
// events on threads that must not wait for a client (the engine, the training manager):
// it only records them and, when nothing else will, asks the shared pump thread
// (reactor_pump.h) to act. This class keeps one write in flight at a time, starting the
// next from the pump thread or from OnWriteDone, asks the owner what comes next
// (NextLocked) only when a write could start, and finishes the call exactly once, when
// the owner says so (after its last message, or without it once the client is gone).
// gRPC calls happen outside the lock. The owner guards its stream state (what
// NextLocked reads) with this class's mutex, stream_mu_, so that recording an event and
// deciding whether the pump must be woken are one step; one mutex under one name is also
// what lets clang's thread-safety analysis match the owner's lock to this class's
// annotations (a borrowed pointer to the owner's mutex could not be).
// Thread-safety: OnWriteDone and FinishEarly from gRPC's threads, the rest from the
// owner; the owner must be held by a shared_ptr (PostPump keeps it alive).
#ifndef STEERD_SERVER_API_STREAM_PUMP_H_
#define STEERD_SERVER_API_STREAM_PUMP_H_

#include <memory>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/api/reactor_pump.h"

namespace steerd {

template <typename Response>
class StreamPump {
 public:
  // `pump` and `reactor` must outlive the call.
  StreamPump(ReactorPump* pump, grpc::ServerWriteReactor<Response>* reactor)
      : pump_(pump), reactor_(reactor) {}
  virtual ~StreamPump() = default;
  StreamPump(const StreamPump&) = delete;
  StreamPump& operator=(const StreamPump&) = delete;

  // The reactor's OnWriteDone: the write is over, so start the next step here; a failed
  // write means the client is gone (OnCancel follows).
  void OnWriteDone(bool ok) {
    {
      absl::MutexLock lock(&stream_mu_);
      writing_ = false;
      if (!ok) broken_ = true;
    }
    Pump();
  }

  // Error before the stream started: finishes now, and nothing is written or finished
  // after.
  void FinishEarly(const grpc::Status& status) {
    {
      absl::MutexLock lock(&stream_mu_);
      finish_called_ = true;
    }
    Finish(status);
  }

 protected:
  enum class Next { kNothing, kWrite, kFinish };

  // Under stream_mu_, with no write in flight and the call not finished: what to do
  // now. kWrite once `*message` (the previous write's, no longer in use) holds the
  // next message; kFinish with `*status`; kNothing to wait for more events. `broken`:
  // nothing more reaches the client (a write failed, or MarkBrokenLocked).
  virtual Next NextLocked(bool broken, Response* message, grpc::Status* status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(stream_mu_) = 0;
  // Once per call, outside the lock, just before the reactor finishes with `status`
  // (early or not): the owner's accounting.
  virtual void RecordFinish(const grpc::Status& status) = 0;

  // Under stream_mu_, after recording an event: whether the caller must call
  // PostPump once the lock is released. Not when a write is in flight (OnWriteDone
  // pumps then), when a request to the pump is outstanding, or after the finish.
  bool NeedsPumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stream_mu_) {
    if (writing_ || pump_posted_ || finish_called_) return false;
    pump_posted_ = true;
    return true;
  }

  // Has the pump thread run Pump(); `self` (this object) lives until then. Off the
  // owner's thread because a write serialises and frames the message.
  static void PostPump(std::shared_ptr<StreamPump> self) {
    ReactorPump* pump = self->pump_;
    pump->Post([self = std::move(self)] {
      {
        absl::MutexLock lock(&self->stream_mu_);
        self->pump_posted_ = false;
      }
      self->Pump();
    });
  }

  // Under stream_mu_: the client is gone; no write starts any more.
  void MarkBrokenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stream_mu_) { broken_ = true; }

  // Starts the next write or the finish, whichever is due (NextLocked decides).
  void Pump() ABSL_LOCKS_EXCLUDED(stream_mu_) {
    Next next = Next::kNothing;
    grpc::Status status;
    {
      absl::MutexLock lock(&stream_mu_);
      if (finish_called_ || writing_) return;
      next = NextLocked(broken_, &in_flight_, &status);
      if (next == Next::kWrite) writing_ = true;
      if (next == Next::kFinish) finish_called_ = true;
    }
    if (next == Next::kWrite) {
      reactor_->StartWrite(&in_flight_);
    } else if (next == Next::kFinish) {
      Finish(status);
    }
  }

  // Guards the state below and the owner's stream state. A protected member, so that
  // the owner's ABSL_GUARDED_BY and ABSL_EXCLUSIVE_LOCKS_REQUIRED can name it.
  absl::Mutex stream_mu_;

 private:
  void Finish(const grpc::Status& status) {
    RecordFinish(status);
    reactor_->Finish(status);
  }

  ReactorPump* const pump_;
  grpc::ServerWriteReactor<Response>* const reactor_;
  // Owned by the write in flight while writing_; otherwise only NextLocked touches it.
  Response in_flight_;
  bool writing_ ABSL_GUARDED_BY(stream_mu_) = false;
  bool pump_posted_ ABSL_GUARDED_BY(stream_mu_) = false;
  bool broken_ ABSL_GUARDED_BY(stream_mu_) = false;  // The client is gone.
  bool finish_called_ ABSL_GUARDED_BY(stream_mu_) = false;
};

}  // namespace steerd

#endif  // STEERD_SERVER_API_STREAM_PUMP_H_
