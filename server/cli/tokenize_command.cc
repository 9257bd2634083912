#include "server/cli/tokenize_command.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/cli/commands.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

// The output line for one input line (`line_number` counts from 1).
absl::StatusOr<std::string> TokenizeLine(const Tokenizer& tokenizer, absl::string_view line,
                                         size_t line_number) {
  const std::string where = absl::StrCat("line ", line_number);
  const nlohmann::json input = nlohmann::json::parse(line, /*cb=*/nullptr,
                                                     /*allow_exceptions=*/false);
  if (input.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(where, ": not JSON"));
  auto text = input.find("text");  // end() unless `input` is an object holding "text".
  if (text == input.end() || !text->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected an object with a string field \"text\""));
  }
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text->get<std::string>());
  if (!ids.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", ids.status().message()));
  }
  ASSIGN_OR_RETURN(std::string decoded, tokenizer.Decode(*ids));
  // As transformers' decode() presents it.
  if (tokenizer.clean_up_tokenization_spaces()) decoded = CleanUpTokenizationSpaces(decoded);
  const nlohmann::ordered_json output = {{"ids", *ids}, {"decoded", decoded}};
  return output.dump(/*indent=*/-1, /*indent_char=*/' ', /*ensure_ascii=*/false);
}

// A bad input line's error names it by its 1-based number.
absl::Status Tokenize(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(const std::string model_dir, args.Required("model"));
  ASSIGN_OR_RETURN(const std::string input_path, args.Required("input"));
  ASSIGN_OR_RETURN(const std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(model_dir));
  std::ifstream input(input_path, std::ios::binary);
  if (!input) return absl::NotFoundError(absl::StrCat(input_path, ": cannot open"));
  std::string line;
  for (size_t line_number = 1; std::getline(input, line); ++line_number) {
    // Blank lines (a trailing newline, CRLF files) carry no input.
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    ASSIGN_OR_RETURN(const std::string output, TokenizeLine(*tokenizer, line, line_number));
    std::cout << output << '\n';
  }
  if (input.bad()) return absl::DataLossError(absl::StrCat(input_path, ": read failed"));
  std::cout.flush();
  return absl::OkStatus();
}

}  // namespace

absl::Status RunTokenizeCommand(const ParsedFlags& args) {
  const absl::Status status = Tokenize(args);
  std::cout.flush();  // Lines before a bad one come out before the error.
  return status;
}

absl::StatusOr<double> MeasureTokenizerMbPerSecond(const Tokenizer& tokenizer,
                                                   const std::string& text, double min_seconds) {
  if (text.empty()) return absl::InvalidArgumentError("cannot measure on empty text");
  RETURN_IF_ERROR(tokenizer.Encode(text).status());
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  double elapsed = 0.0;
  size_t bytes = 0;
  do {
    RETURN_IF_ERROR(tokenizer.Encode(text).status());
    bytes += text.size();
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < min_seconds);
  return bytes / elapsed / 1e6;
}

}  // namespace steerd
