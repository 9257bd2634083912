// `steerd tokenize`: runs the model folder's tokenizer over a JSONL file, one
// {"text": ...} object a line, printing {"ids": [...], "decoded": "..."} for each, so
// the tokenizer can be checked against Hugging Face's output offline. Also the
// tokenizer throughput measurement that `steerd bench` reports.
#ifndef STEERD_SERVER_CLI_TOKENIZE_COMMAND_H_
#define STEERD_SERVER_CLI_TOKENIZE_COMMAND_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/tokenizer.h"

namespace steerd {

// `args` are the arguments after "tokenize": --model DIR --input FILE.jsonl. DIR needs
// only the tokenizer files. Returns the exit code; errors go to stderr as
// "error: ...", a bad input line named by its 1-based number.
int RunTokenizeCommand(const std::vector<std::string>& args);

// Encodes `text` (without special tokens) over and over for at least `min_seconds`
// of wall time on the calling thread and returns the throughput in MB/s (10^6 bytes
// of input per second). The first pass warms the tokenizer's word cache and is not
// timed. Empty text is INVALID_ARGUMENT.
absl::StatusOr<double> MeasureTokenizerMbPerSecond(const Tokenizer& tokenizer,
                                                   const std::string& text, double min_seconds);

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_TOKENIZE_COMMAND_H_
