// A temporary directory for the benchmarks' in-process servers (their data directory),
// removed with everything in it when the object goes away.
// Thread-safety: not shared between threads.
#ifndef STEERD_SERVER_CLI_TEMP_DIR_H_
#define STEERD_SERVER_CLI_TEMP_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace steerd {

class TempDir {
 public:
  // A fresh directory under the system's temporary folder, named `prefix`-XXXXXX.
  static absl::StatusOr<TempDir> Create(const std::string& prefix = "steerd-bench") {
    std::string pattern =
        (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("cannot create a temporary directory ", pattern));
    }
    return TempDir(pattern);
  }
  TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  TempDir& operator=(TempDir&&) = delete;
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_TEMP_DIR_H_
