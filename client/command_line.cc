#include "client/command_line.h"

#include <cmath>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace steerd::client {

absl::StatusOr<CommandLine> CommandLine::Parse(const std::vector<std::string>& argv,
                                               const FlagSpec& spec) {
  CommandLine line;
  bool flags_ended = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    absl::string_view arg = argv[i];
    if (flags_ended || arg == "-" || !absl::ConsumePrefix(&arg, "--")) {
      if (!flags_ended && arg.size() > 1 && arg[0] == '-') {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown flag ", argv[i], " (flags start with --)"));
      }
      line.positional_.push_back(argv[i]);
      continue;
    }
    if (arg.empty()) {  // "--"
      flags_ended = true;
      continue;
    }
    std::string name(arg);
    std::optional<std::string> inline_value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (spec.bool_flags.count(name)) {
      if (inline_value.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " takes no value"));
      }
      line.bools_.insert(name);
      continue;
    }
    const bool repeated = spec.repeated_flags.count(name) > 0;
    if (!repeated && !spec.value_flags.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    std::string value;
    if (inline_value.has_value()) {
      value = *std::move(inline_value);
    } else {
      if (i + 1 >= argv.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
      value = argv[++i];
    }
    if (repeated) {
      line.repeated_[name].push_back(std::move(value));
    } else if (!line.values_.emplace(name, std::move(value)).second) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given twice"));
    }
  }
  return line;
}

std::set<std::string> CommandLine::FlagNames() const {
  std::set<std::string> names = bools_;
  for (const auto& [name, value] : values_) names.insert(name);
  for (const auto& [name, values] : repeated_) names.insert(name);
  return names;
}

absl::Status CommandLine::CheckAllowed(const std::set<std::string>& allowed,
                                       const std::string& command) const {
  for (const std::string& name : FlagNames()) {
    if (!allowed.count(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", command, "' does not take --", name));
    }
  }
  return absl::OkStatus();
}

bool CommandLine::Has(const std::string& name) const {
  return values_.count(name) > 0 || repeated_.count(name) > 0 || bools_.count(name) > 0;
}

std::string CommandLine::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<std::string> CommandLine::Required(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("missing required flag --", name));
  }
  return it->second;
}

std::vector<std::string> CommandLine::GetAll(const std::string& name) const {
  auto it = repeated_.find(name);
  return it == repeated_.end() ? std::vector<std::string>() : it->second;
}

absl::StatusOr<int64_t> CommandLine::GetInt(const std::string& name,
                                            int64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t value = 0;
  if (!absl::SimpleAtoi(it->second, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, ": '", it->second, "' is not an integer"));
  }
  return value;
}

absl::StatusOr<uint64_t> CommandLine::GetUint(const std::string& name,
                                              uint64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  uint64_t value = 0;
  if (!absl::SimpleAtoi(it->second, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("flag --", name, ": '", it->second,
                                                   "' is not a non-negative integer"));
  }
  return value;
}

absl::StatusOr<double> CommandLine::GetDouble(const std::string& name,
                                              double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double value = 0;
  if (!absl::SimpleAtod(it->second, &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, ": '", it->second, "' is not a finite number"));
  }
  return value;
}

}  // namespace steerd::client
