// Why a generated sequence ended. Torch-free, so the serving layers above the engine
// can name it without pulling libtorch into their headers.
#ifndef STEERD_SERVER_MODEL_FINISH_REASON_H_
#define STEERD_SERVER_MODEL_FINISH_REASON_H_

namespace steerd {

// kNone: still running; kStop: eos or a stop string; kLength: max_new_tokens or the
// context; kCancelled: ended early (a cancel, or the server shutting down).
enum class FinishReason { kNone, kStop, kLength, kCancelled };
const char* FinishReasonName(FinishReason reason);  // "none", "stop", "length", "cancelled"

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_FINISH_REASON_H_
