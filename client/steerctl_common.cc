#include "client/steerctl_common.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/steerd_client.h"
#include "server/util/status_macros.h"

namespace steerd::client::steerctl {

namespace {

constexpr char kUsagePayloadUrl[] = "type.steerd/steerctl.UsageError";
constexpr double kDefaultTimeoutSeconds = 60;

}  // namespace

absl::Status UsageError(absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kUsagePayloadUrl, absl::Cord("1"));
  return status;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayloadUrl).has_value();
}

absl::Status CommandFailure(absl::string_view message, int exit_code) {
  absl::Status status = absl::AbortedError(message);
  status.SetPayload(kExitCodePayloadUrl, absl::Cord(absl::StrCat(exit_code)));
  return status;
}

absl::StatusOr<std::unique_ptr<SteerdClient>> Connect(const ParsedFlags& flags) {
  ASSIGN_OR_RETURN(
      ClientOptions options,
      ResolveConnection(flags.Get("addr"), flags.Get("api-key"), flags.Get("data-dir")));
  // A malformed address is a usage error, named after where it came from.
  if (absl::Status target = ChannelTarget(options.address).status(); !target.ok()) {
    return UsageError(absl::StrCat(flags.Has("addr") ? "flag --addr" : "$STEERD_ADDR",
                                   ": ", target.message()));
  }
  options.tls_ca_file = flags.Get("tls-ca");
  ASSIGN_OR_RETURN(double timeout,
                   AsUsage(flags.GetDouble("timeout", kDefaultTimeoutSeconds)));
  if (timeout < 0) return UsageError("--timeout must not be negative");
  options.timeout = timeout == 0 ? absl::InfiniteDuration() : absl::Seconds(timeout);
  return SteerdClient::Create(options);
}

absl::Status PrintJson(const google::protobuf::Message& message, std::ostream& out,
                       bool one_line) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = !one_line;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  const auto status =
      google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("cannot print JSON: ", status.ToString()));
  }
  out << json;
  if (json.empty() || json.back() != '\n') out << '\n';
  return absl::OkStatus();
}

void PrintTable(const std::vector<std::vector<std::string>>& rows, std::ostream& out) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i)
      widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      if (i > 0) line += "  ";
      line += row[i];
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size(), ' ');
    }
    out << std::string(absl::StripTrailingAsciiWhitespace(line)) << '\n';
  }
}

std::string OrDash(const std::string& text) { return text.empty() ? "-" : text; }

std::string OneLine(const std::string& text) {
  return OrDash(absl::StrReplaceAll(text, {{"\r\n", " "}, {"\n", " "}, {"\t", " "}}));
}

std::string FormatTimestamp(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(time.seconds()),
                          absl::UTCTimeZone());
}

}  // namespace steerd::client::steerctl
