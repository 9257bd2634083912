#include "client/steerctl_commands.h"

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/steerctl_common.h"
#include "client/steerd_client.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd::client {

namespace steerctl {

absl::Status RunHealth(const Command& c) {
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(ServingStatus status, client->CheckHealth(c.flags.Get("service")));
  if (c.flags.Bool("json")) {
    c.out << nlohmann::json{{"status", ServingStatusName(status)}}.dump(2) << "\n";
  } else {
    c.out << ServingStatusName(status) << "\n";
  }
  // The status printed is all there is to say.
  if (status != ServingStatus::kServing) return CommandFailure("", 1);
  return absl::OkStatus();
}

}  // namespace steerctl

namespace {

using steerctl::Command;
using steerctl::IsUsageError;
using steerctl::kExitCodePayloadUrl;
using steerctl::UsageError;
using CommandFunction = absl::Status (*)(const Command&);

// By the command's name in steerctl_command_table.cc.
const std::map<std::string, CommandFunction>& CommandFunctions() {
  static const auto* const functions = new std::map<std::string, CommandFunction>{
      {"steerctl models", steerctl::RunModels},
      {"steerctl vectors create", steerctl::RunVectorsCreate},
      {"steerctl vectors get", steerctl::RunVectorsGet},
      {"steerctl vectors list", steerctl::RunVectorsList},
      {"steerctl vectors export", steerctl::RunVectorsExport},
      {"steerctl vectors delete", steerctl::RunVectorsDelete},
      {"steerctl generate", steerctl::RunGenerate},
      {"steerctl jobs create", steerctl::RunJobsCreate},
      {"steerctl jobs get", steerctl::RunJobsGet},
      {"steerctl jobs list", steerctl::RunJobsList},
      {"steerctl jobs cancel", steerctl::RunJobsCancel},
      {"steerctl jobs watch", steerctl::RunJobsWatch},
      {"steerctl train", steerctl::RunTrain},
      {"steerctl health", steerctl::RunHealth},
  };
  return *functions;
}

// "steerctl: <message>", then the help of `command`, or the command list when there is
// no command; exit code 2.
int PrintUsageError(const absl::Status& status, const CommandDef* command,
                    std::ostream& err) {
  err << "steerctl: " << status.message() << "\n\n"
      << (command != nullptr ? FormatHelp(*command) : FormatCommandList(SteerctlProgram()));
  return 2;
}

// The exit code of a command that ran, after printing its error, if any.
int ExitCode(const absl::Status& status, const CommandDef& command, std::ostream& err) {
  if (status.ok()) return 0;
  if (IsUsageError(status)) return PrintUsageError(status, &command, err);
  if (const auto exit_code = status.GetPayload(kExitCodePayloadUrl)) {
    if (!status.message().empty()) err << "steerctl: " << status.message() << "\n";
    int code = 1;
    return absl::SimpleAtoi(std::string(*exit_code), &code) ? code : 1;
  }
  // The server's machine-readable reason, when it says more than the code does.
  const std::optional<ErrorDetails> details = GetErrorDetails(status);
  const std::string code = absl::StatusCodeToString(status.code());
  err << "steerctl: " << code;
  if (details.has_value() && !details->reason.empty() && details->reason != code) {
    err << " [" << details->reason << "]";
  }
  err << ": " << status.message() << "\n";
  return 1;
}

}  // namespace

int RunSteerctl(const std::vector<std::string>& args, std::ostream& out,
                std::ostream& err, bool out_is_terminal) {
  const ResolvedCommandLine line = ResolveCommandLine(SteerctlProgram(), args);
  if (line.help.has_value()) {
    out << *line.help;
    return 0;
  }
  if (!line.usage_error.ok()) return PrintUsageError(line.usage_error, line.command, err);
  const CommandDef& command = *line.command;
  const auto function = CommandFunctions().find(command.name);
  if (function == CommandFunctions().end()) {
    return ExitCode(absl::InternalError("no function runs " + command.name), command, err);
  }
  return ExitCode(function->second(Command{line.flags, out, err, out_is_terminal}), command,
                  err);
}

}  // namespace steerd::client
