// What every steerctl command shares, internal to steerctl_lib: the Command a handler
// runs on, the errors that decide the exit code (usage errors exit 2, CommandFailure
// its own code), typed flag parsing (every bad value a usage error), connecting to the
// server, and the text and JSON output helpers. The handlers themselves live one file
// per resource: steerctl_models.cc, steerctl_vectors.cc, steerctl_generate.cc,
// steerctl_jobs.cc (jobs and train); steerctl_commands.cc parses the command line by the
// command's table (steerctl_command_table.cc), so a handler gets only flags and
// positional arguments its command declares, and dispatches to them (RunSteerctl).
// Nothing here is for callers outside client/.
#ifndef STEERD_CLIENT_STEERCTL_COMMON_H_
#define STEERD_CLIENT_STEERCTL_COMMON_H_

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "client/enum_names.h"
#include "client/steerd_client.h"
#include "server/util/flags.h"
#include "server/util/status_macros.h"

namespace steerd::client::steerctl {

// The payload of a CommandFailure: its exit code.
inline constexpr char kExitCodePayloadUrl[] = "type.steerd/steerctl.ExitCode";
inline constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// One command's parsed line and where it writes.
struct Command {
  const ParsedFlags& flags;  // positional() holds exactly the command's arguments
  std::ostream& out;
  std::ostream& err;
  bool out_is_terminal;
};

// A usage error: RunSteerctl prints the usage text after it and exits 2.
absl::Status UsageError(absl::string_view message);

bool IsUsageError(const absl::Status& status);

// A failure that is no RPC's (a watched job that FAILED, a watch stopped by Ctrl-C, a
// server that is not SERVING): RunSteerctl prints "steerctl: <message>" (nothing when
// `message` is empty), without a code name, and exits with `exit_code`.
absl::Status CommandFailure(absl::string_view message, int exit_code);

// Parse errors of flags are usage errors.
template <typename T>
absl::StatusOr<T> AsUsage(absl::StatusOr<T> value) {
  if (!value.ok()) return UsageError(value.status().message());
  return value;
}

// A client for --addr, --api-key, --tls-ca, --timeout and --data-dir.
absl::StatusOr<std::unique_ptr<SteerdClient>> Connect(const ParsedFlags& flags);

// `message` as proto3 JSON with the proto field names, indented, or on one line when
// `one_line` (a stream of events, one JSON document per line).
absl::Status PrintJson(const google::protobuf::Message& message, std::ostream& out,
                       bool one_line = false);

// Left-aligned columns separated by two spaces; the last column is not padded.
void PrintTable(const std::vector<std::vector<std::string>>& rows, std::ostream& out);

// "-" for an empty text.
std::string OrDash(const std::string& text);

// `text` with line breaks and tabs as spaces, or "-" when empty: one table cell.
std::string OneLine(const std::string& text);

// "2024-01-02T03:04:05Z", or "-" for the unset timestamp.
std::string FormatTimestamp(const google::protobuf::Timestamp& time);

// --name's value, in any case, as a value of the proto enum `Enum` other than its
// UNSPECIFIED zero: its short name ("queued") or its full one ("state_queued"). The error
// lists the short names.
template <typename Enum>
absl::StatusOr<Enum> ParseEnumFlag(const ParsedFlags& flags, const std::string& name) {
  const google::protobuf::EnumDescriptor* descriptor =
      google::protobuf::GetEnumDescriptor<Enum>();
  const std::string text = flags.Get(name);
  const google::protobuf::EnumValueDescriptor* value =
      FindEnumValue(*descriptor, absl::AsciiStrToUpper(text));
  if (value != nullptr && value->number() != 0) return static_cast<Enum>(value->number());
  std::vector<std::string> choices;
  for (int i = 0; i < descriptor->value_count(); ++i) {
    if (descriptor->value(i)->number() != 0) {
      choices.push_back(absl::AsciiStrToLower(ShortEnumName(*descriptor->value(i))));
    }
  }
  return UsageError(absl::StrCat("flag --", name, ": unknown value '", text, "' (",
                                 absl::StrJoin(choices, ", "), ")"));
}

// Calls `set` with --name when it is given: an integer in [min, max].
template <typename Set>
absl::Status SetIntFlag(const ParsedFlags& flags, const std::string& name, int64_t min,
                        int64_t max, const Set& set) {
  if (!flags.Has(name)) return absl::OkStatus();
  ASSIGN_OR_RETURN(int64_t value, AsUsage(flags.GetInt(name, 0)));
  if (value < min || value > max) {
    return UsageError(
        absl::StrCat("flag --", name, ": ", value, " is not in [", min, ", ", max, "]"));
  }
  set(static_cast<int32_t>(value));
  return absl::OkStatus();
}

// Calls `set` with --name when it is given: a number in [min, max], or in (min, max]
// when `min_excluded`.
template <typename Set>
absl::Status SetFloatFlag(const ParsedFlags& flags, const std::string& name, double min,
                          bool min_excluded, double max, const Set& set) {
  if (!flags.Has(name)) return absl::OkStatus();
  ASSIGN_OR_RETURN(double value, AsUsage(flags.GetDouble(name, 0)));
  if (value < min || (min_excluded && value == min) || value > max) {
    return UsageError(absl::StrCat("flag --", name, ": ", flags.Get(name), " is not in ",
                                   min_excluded ? "(" : "[", min, ", ", max, "]"));
  }
  set(static_cast<float>(value));
  return absl::OkStatus();
}

// The commands, one file per resource, in the order of their table.
absl::Status RunModels(const Command& c);         // steerctl_models.cc
absl::Status RunVectorsCreate(const Command& c);  // steerctl_vectors.cc
absl::Status RunVectorsGet(const Command& c);
absl::Status RunVectorsList(const Command& c);
absl::Status RunVectorsExport(const Command& c);
absl::Status RunVectorsDelete(const Command& c);
absl::Status RunGenerate(const Command& c);       // steerctl_generate.cc
absl::Status RunJobsCreate(const Command& c);     // steerctl_jobs.cc
absl::Status RunJobsGet(const Command& c);
absl::Status RunJobsList(const Command& c);
absl::Status RunJobsCancel(const Command& c);
absl::Status RunJobsWatch(const Command& c);
absl::Status RunTrain(const Command& c);
absl::Status RunHealth(const Command& c);         // steerctl_commands.cc

}  // namespace steerd::client::steerctl

#endif  // STEERD_CLIENT_STEERCTL_COMMON_H_
