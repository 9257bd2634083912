// The tokenizer throughput measurement that `steerd bench decode` reports. (`steerd
// tokenize`, RunTokenizeCommand in server/cli/commands.h, runs the model folder's
// tokenizer over a JSONL file, one {"text": ...} object a line, printing {"ids": [...],
// "decoded": "..."} for each, so the tokenizer can be checked against Hugging Face's
// output offline.)
#ifndef STEERD_SERVER_CLI_TOKENIZE_COMMAND_H_
#define STEERD_SERVER_CLI_TOKENIZE_COMMAND_H_

#include <string>

#include "absl/status/statusor.h"
#include "server/model/tokenizer.h"

namespace steerd {

// Encodes `text` (without special tokens) over and over for at least `min_seconds`
// of wall time on the calling thread and returns the throughput in MB/s (10^6 bytes
// of input per second). The first pass warms the tokenizer's word cache and is not
// timed. Empty text is INVALID_ARGUMENT.
absl::StatusOr<double> MeasureTokenizerMbPerSecond(const Tokenizer& tokenizer,
                                                   const std::string& text, double min_seconds);

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_TOKENIZE_COMMAND_H_
