// A small command-line parser for steerd's subcommands ("steerd generate --model DIR
// ..."). Each subcommand declares the flags it accepts; anything else, a missing value
// or a malformed number is an absl::Status naming the flag, so a typo never silently
// falls back to a default.
#ifndef STEERD_SERVER_CLI_ARGS_H_
#define STEERD_SERVER_CLI_ARGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace steerd {

class Args {
 public:
  // `value_flags` take a value ("--model DIR" or "--model=DIR"); `bool_flags` do not
  // ("--json"). Names are given without the leading dashes.
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv,
                                    const std::set<std::string>& value_flags,
                                    const std::set<std::string>& bool_flags);

  bool Has(const std::string& name) const;
  bool Flag(const std::string& name) const { return bools_.count(name) > 0; }

  absl::StatusOr<std::string> Required(const std::string& name) const;
  // The value of the last occurrence of a flag.
  std::string GetString(const std::string& name, const std::string& fallback) const;
  // Every value of a repeatable flag, in order ("--model a=X --model b=Y").
  std::vector<std::string> GetAll(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  // Comma-separated integers, e.g. "--ids 1,2,3".
  absl::StatusOr<std::vector<int64_t>> GetIntList(const std::string& name) const;

 private:
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<std::string>> all_values_;
  std::set<std::string> bools_;
};

// A command's exit code for `status`: 0, or 1 after printing "error: <message>" to
// stderr.
int ExitWithStatus(const absl::Status& status);

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_ARGS_H_
