// Training and evaluation datasets as JSONL: one {"prompt": ..., "answer": ...,
// "solution": ...} object per line ("solution" optional; other fields ignored).
// Parsing checks every record and names `source:line` in its errors, so a bad line in
// a user's upload is found before a training job starts. Torch-free and stateless.
#ifndef STEERD_SERVER_TRAIN_DATASET_H_
#define STEERD_SERVER_TRAIN_DATASET_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/train/tasks.h"

namespace steerd {
namespace train {

// INVALID_ARGUMENT "<source>:<line>: ..." for invalid UTF-8, invalid JSON, a line that
// is not an object, a missing, non-string or empty "prompt", a missing, non-string or
// blank "answer" (every example needs one to verify against, and verifiers never
// extract a blank answer) or a non-string "solution".
// Blank lines are skipped; a dataset with no records is INVALID_ARGUMENT too.
absl::StatusOr<std::vector<Example>> ParseJsonl(absl::string_view text, absl::string_view source);
// ParseJsonl of a file's contents; NOT_FOUND when it cannot be opened.
absl::StatusOr<std::vector<Example>> LoadJsonl(const std::string& path);

// One object per line, each line ending in '\n'; "solution" only when non-empty.
// Bytes that are not valid UTF-8 are written as U+FFFD.
std::string ToJsonl(const std::vector<Example>& examples);
// Writes ToJsonl atomically: to a temporary file beside `path`, then renamed over it,
// so readers never see half a dataset.
absl::Status WriteJsonl(const std::string& path, const std::vector<Example>& examples);

}  // namespace train
}  // namespace steerd

#endif  // STEERD_SERVER_TRAIN_DATASET_H_
