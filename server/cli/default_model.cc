#include "server/cli/default_model.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace steerd {

absl::StatusOr<std::string> FindDefaultModel() {
  namespace fs = std::filesystem;
  std::vector<fs::path> candidates;
  if (const char* env = std::getenv("STEERD_DEFAULT_MODEL"); env != nullptr && *env) {
    candidates.push_back(env);
  }
  std::error_code error;
  const fs::path exe = fs::read_symlink("/proc/self/exe", error);
  if (!error) {
    candidates.push_back(exe.parent_path() / "../../models" / kDefaultModelName);
    candidates.push_back(exe.parent_path() / "../share/steerd/models" / kDefaultModelName);
  }
  candidates.push_back(fs::path(STEERD_SOURCE_DIR) / "models" / kDefaultModelName);
  std::vector<std::string> tried;
  for (const fs::path& dir : candidates) {
    if (fs::exists(dir / "config.json", error)) return dir.lexically_normal().string();
    tried.push_back(dir.lexically_normal().string());
  }
  return absl::NotFoundError(absl::StrCat("the default model ", kDefaultModelName,
                                          " was not found in: ", absl::StrJoin(tried, ", "),
                                          " (pass --model NAME=DIR)"));
}

}  // namespace steerd
