#include "server/train/dataset.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "server/model/tokenizer_text.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace train {
namespace {

// `record[name]`: nullopt when absent, an error when it is not a string.
absl::StatusOr<std::optional<std::string>> OptionalString(const nlohmann::json& record,
                                                          const char* name) {
  const auto field = record.find(name);
  if (field == record.end()) return std::nullopt;
  if (!field->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", name, "\" must be a string, got ", field->type_name()));
  }
  return field->get<std::string>();
}

absl::StatusOr<Example> ParseRecord(absl::string_view line) {
  RETURN_IF_ERROR(tokenizer_text::ValidateUtf8(line));
  const nlohmann::json record =
      nlohmann::json::parse(line, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (record.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!record.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a JSON object, got ", record.type_name()));
  }
  ASSIGN_OR_RETURN(std::optional<std::string> prompt, OptionalString(record, "prompt"));
  ASSIGN_OR_RETURN(std::optional<std::string> answer, OptionalString(record, "answer"));
  ASSIGN_OR_RETURN(std::optional<std::string> solution, OptionalString(record, "solution"));
  if (!prompt.has_value()) return absl::InvalidArgumentError("missing \"prompt\"");
  if (prompt->empty()) return absl::InvalidArgumentError("\"prompt\" is empty");
  if (!answer.has_value()) {
    return absl::InvalidArgumentError("missing \"answer\" (every example needs one)");
  }
  if (absl::StripAsciiWhitespace(*answer).empty()) {
    return absl::InvalidArgumentError("\"answer\" is blank");
  }
  return Example{*std::move(prompt), *std::move(answer), solution.value_or("")};
}

}  // namespace

absl::StatusOr<std::vector<Example>> ParseJsonl(absl::string_view text, absl::string_view source) {
  std::vector<Example> examples;
  int64_t line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    absl::StatusOr<Example> example = ParseRecord(line);
    if (!example.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_number, ": ", example.status().message()));
    }
    examples.push_back(*std::move(example));
  }
  if (examples.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": the dataset is empty"));
  }
  return examples;
}

absl::StatusOr<std::vector<Example>> LoadJsonl(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return ParseJsonl(text.str(), path);
}

std::string ToJsonl(const std::vector<Example>& examples) {
  std::string out;
  for (const Example& example : examples) {
    nlohmann::ordered_json record = {{"prompt", example.prompt}, {"answer", example.answer}};
    if (!example.solution.empty()) record["solution"] = example.solution;
    absl::StrAppend(&out,
                    record.dump(/*indent=*/-1, /*indent_char=*/' ', /*ensure_ascii=*/false,
                                nlohmann::ordered_json::error_handler_t::replace),
                    "\n");
  }
  return out;
}

absl::Status WriteJsonl(const std::string& path, const std::vector<Example>& examples) {
  // The process id keeps concurrent writers of the same path off each other's file.
  const std::string temp = absl::StrCat(path, ".tmp.", getpid());
  std::ofstream out(temp, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(temp, ": cannot create"));
  out << ToJsonl(examples);
  out.close();
  std::error_code error;
  if (!out) {
    std::filesystem::remove(temp, error);
    return absl::InternalError(absl::StrCat(temp, ": write failed"));
  }
  std::filesystem::rename(temp, path, error);
  if (error) {
    const std::string message = error.message();
    std::filesystem::remove(temp, error);
    return absl::InternalError(absl::StrCat(path, ": cannot rename ", temp, " to it: ", message));
  }
  return absl::OkStatus();
}

}  // namespace train
}  // namespace steerd
