// The command-line parser of steerctl: positional words ("vectors get NAME") mixed
// with flags that take a value ("--model M" or "--model=M"), may be repeated
// ("--stop a --stop b"), or are booleans ("--json"). Flags are declared up front, so
// an unknown flag, a missing value, a repeated single-value flag or a malformed number
// is an INVALID_ARGUMENT naming the flag; "--" ends the flags. Unlike server/cli/args.h
// (steerd's parser) it keeps positional arguments and repeated values, and it does not
// pull in steerd_base.
#ifndef STEERD_CLIENT_COMMAND_LINE_H_
#define STEERD_CLIENT_COMMAND_LINE_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace steerd::client {

// The flags a parser accepts, by name without the leading dashes.
struct FlagSpec {
  std::set<std::string> value_flags;     // exactly one value
  std::set<std::string> repeated_flags;  // a value, any number of times
  std::set<std::string> bool_flags;      // no value
};

class CommandLine {
 public:
  static absl::StatusOr<CommandLine> Parse(const std::vector<std::string>& argv,
                                           const FlagSpec& spec);

  const std::vector<std::string>& positional() const { return positional_; }

  // Every flag given, by name.
  std::set<std::string> FlagNames() const;
  // INVALID_ARGUMENT naming the first flag given that is not in `allowed`.
  absl::Status CheckAllowed(const std::set<std::string>& allowed,
                            const std::string& command) const;

  bool Has(const std::string& name) const;
  bool Bool(const std::string& name) const { return bools_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<std::string> Required(const std::string& name) const;
  // The values of a repeated flag, in command-line order.
  std::vector<std::string> GetAll(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<uint64_t> GetUint(const std::string& name, uint64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<std::string>> repeated_;
  std::set<std::string> bools_;
};

}  // namespace steerd::client

#endif  // STEERD_CLIENT_COMMAND_LINE_H_
