// `steerd train`, `eval`, `inspect` and `bench paper-table` as users run them on the
// embedded default model: a short training run writes a steering file that `eval` and
// `inspect` read, progress goes to stderr as plain lines when not on a terminal, and
// bad data and unknown names end with a clear error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "nlohmann/json.hpp"
#include "tests/testing/cli.h"

namespace steerd {
namespace {

namespace fs = std::filesystem;
using ::steerd::testing::CliRun;
using ::steerd::testing::Steerd;
using ::testing::HasSubstr;

const std::string kModel = std::string(STEERD_SOURCE_DIR) + "/models/steerd-tiny";

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

nlohmann::json LastJsonLine(const std::string& out) {
  const size_t end = out.find_last_not_of('\n');
  const size_t start = out.rfind('\n', end);
  return nlohmann::json::parse(out.substr(start == std::string::npos ? 0 : start + 1));
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(TrainCliTest, TrainWritesAVectorThatEvalAndInspectRead) {
  const std::string out = TempPath("cli_arith.safetensors");
  fs::remove(out);
  CliRun train = Steerd("train --model " + kModel +
                        " --task arith --steps 3 --prompts-per-step 2 --rollouts 4"
                        " --test-count 16 --eval-every 3 --eval-count 8 --json --out " + out);
  ASSERT_EQ(train.exit_code, 0) << train.err;
  EXPECT_THAT(train.err, HasSubstr("step 3/3"));
  EXPECT_THAT(train.err, HasSubstr("dev"));
  const nlohmann::json summary = LastJsonLine(train.out);
  EXPECT_EQ(summary["method"], "steering");
  EXPECT_EQ(summary["test_n"], 16);
  ASSERT_TRUE(fs::exists(out));

  CliRun eval = Steerd("eval --model " + kModel + " --task arith --count 16 --json --steering " +
                       out);
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  const nlohmann::json result = LastJsonLine(eval.out);
  EXPECT_EQ(result["n"], 16);
  // The same greedy evaluation of the same vector on the same examples.
  EXPECT_DOUBLE_EQ(result["accuracy"].get<double>(), summary["test_accuracy"].get<double>());

  CliRun inspect = Steerd("inspect --model " + kModel + " --steering " + out + " --top 3 --json");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  const nlohmann::json layers = LastJsonLine(inspect.out)["layers"];
  ASSERT_EQ(layers.size(), 4u);
  EXPECT_EQ(layers[0]["boosts"].size(), 3u);
  EXPECT_GT(layers[3]["norm"].get<double>(), 0.0);
}

TEST(TrainCliTest, EvalWithAForcedPrefix) {
  CliRun eval = Steerd("eval --model " + kModel +
                       " --task arith --count 8 --prefix ' Step by step:' --show 1");
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  EXPECT_THAT(eval.out, HasSubstr("Step by step:"));
  EXPECT_THAT(eval.out, HasSubstr("accuracy "));
}

TEST(TrainCliTest, BadDataAndNamesAreClearErrors) {
  const std::string empty = TempPath("empty.jsonl");
  WriteText(empty, "\n");
  CliRun run = Steerd("train --model " + kModel + " --data " + empty);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr("empty"));

  const std::string no_answer = TempPath("no_answer.jsonl");
  WriteText(no_answer, "{\"prompt\": \"Q: 1+2\\nA:\", \"answer\": \"3\"}\n{\"prompt\": \"Q: 2+2\\nA:\"}\n");
  run = Steerd("train --model " + kModel + " --data " + no_answer);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr(":2"));
  EXPECT_THAT(run.err, HasSubstr("answer"));

  const std::string too_long = TempPath("too_long.jsonl");
  WriteText(too_long, "{\"prompt\": \"" + std::string(3000, '7') + "\", \"answer\": \"3\"}\n");
  run = Steerd("train --model " + kModel + " --data " + too_long);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr("too long"));

  run = Steerd("train --model " + kModel + " --task nope");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr("arith"));
  run = Steerd("train --model " + kModel + " --task arith --verifier maybe");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr("boxed"));
  run = Steerd("train --model " + kModel + " --task arith --method everything");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr("steering, lora, full"));
}

}  // namespace
}  // namespace steerd
