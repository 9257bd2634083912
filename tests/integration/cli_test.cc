// The offline CLI as users and scripts run it: build/bin/steerd's logits, generate,
// tokenize and init-model commands against the reference fixtures, its help (every
// command's --help names every flag of its table), and its error reporting (message on
// stderr, non-zero exit) for bad invocations.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "nlohmann/json.hpp"
#include "server/cli/command_table.h"
#include "server/model/safetensors.h"
#include "tests/testing/cli.h"

namespace steerd {
namespace {

namespace fs = std::filesystem;
using ::steerd::testing::CliRun;
using ::steerd::testing::Steerd;
using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kFixtures = STEERD_FIXTURES_DIR;

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::string Join(const nlohmann::json& ids) {
  std::string out;
  for (const auto& id : ids) out += (out.empty() ? "" : ",") + std::to_string(id.get<int64_t>());
  return out;
}

// Writes the fixture's steering tensor as a metadata-free safetensors file, the way a
// vector from another tool arrives.
std::string WriteFixtureSteering(const nlohmann::json& cases, const std::string& name) {
  std::vector<float> values;
  for (const auto& row : cases["steering_vector"]["values"]) {
    for (const auto& v : row) values.push_back(static_cast<float>(v.get<double>()));
  }
  const auto& shape = cases["steering_vector"]["shape"];
  const std::string path = ::testing::TempDir() + "/" + name + ".safetensors";
  EXPECT_TRUE(WriteSafetensors(path,
                               {{"steering", DType::kF32,
                                 {shape[0].get<int64_t>(), shape[1].get<int64_t>()},
                                 values.data()}},
                               {})
                  .ok());
  return path;
}

class CliFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CliFixtureTest, LogitsMatchHuggingFace) {
  const std::string dir = kFixtures + "/hf-reference/" + GetParam();
  const auto cases = ReadJson(dir + "/cases.json");
  const auto& forward = cases["forward"][1];
  const std::string steering = WriteFixtureSteering(cases, GetParam());
  for (bool steered : {false, true}) {
    CliRun run = Steerd("logits --model " + dir + " --ids " + Join(forward["input_ids"]) +
                     " --dtype f32 --json" + (steered ? " --steering " + steering : ""));
    ASSERT_EQ(run.exit_code, 0) << run.err;
    const auto got = nlohmann::json::parse(run.out)["logits"];
    const auto& expected = forward[steered ? "steered_logits" : "logits"];
    ASSERT_EQ(got.size(), expected.size());
    double max_diff = 0;
    for (size_t t = 0; t < got.size(); ++t) {
      ASSERT_EQ(got[t].size(), expected[t].size());
      for (size_t v = 0; v < got[t].size(); ++v) {
        max_diff = std::max(max_diff, std::abs(got[t][v].get<double>() -
                                               static_cast<float>(expected[t][v].get<double>())));
      }
    }
    EXPECT_LE(max_diff, 1e-4) << (steered ? "steered" : "base");
  }
}

TEST_P(CliFixtureTest, GreedyGenerateMatchesHuggingFace) {
  const std::string dir = kFixtures + "/hf-reference/" + GetParam();
  const auto cases = ReadJson(dir + "/cases.json");
  const auto& gen = cases["generate"];
  const std::string steering = WriteFixtureSteering(cases, GetParam() + "_gen");
  for (bool steered : {false, true}) {
    CliRun run = Steerd("generate --model " + dir + " --ids " + Join(gen["prompt"]) +
                     " --max-new-tokens 24 --ignore-eos --dtype f32 --json" +
                     (steered ? " --steering " + steering + " --scale 1.0" : ""));
    ASSERT_EQ(run.exit_code, 0) << run.err;
    const auto out = nlohmann::json::parse(run.out);
    EXPECT_EQ(out["ids"], gen[steered ? "steered_new_tokens" : "new_tokens"]);
    EXPECT_EQ(out["finish_reason"], "length");
  }
  // --logprobs: one per token, each the log-softmax of HF's step logits at that token.
  CliRun run = Steerd("generate --model " + dir + " --ids " + Join(gen["prompt"]) +
                      " --max-new-tokens 24 --ignore-eos --dtype f32 --logprobs --json");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const auto out = nlohmann::json::parse(run.out);
  ASSERT_EQ(out["logprobs"].size(), 24u);
  for (size_t step = 0; step < 24; ++step) {
    const auto& logits = gen["step_logits"][step];
    double max_logit = -1e30, total = 0;
    for (const auto& v : logits) max_logit = std::max(max_logit, v.get<double>());
    for (const auto& v : logits) total += std::exp(v.get<double>() - max_logit);
    const int64_t token = gen["new_tokens"][step].get<int64_t>();
    const double expected = logits[token].get<double>() - max_logit - std::log(total);
    EXPECT_NEAR(out["logprobs"][step].get<double>(), expected, 1e-4) << "step " << step;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CliFixtureTest, ::testing::Values("qwen2-tiny", "llama-tiny"),
                         [](const auto& info) {
                           return info.param == "qwen2-tiny" ? std::string("qwen2")
                                                             : std::string("llama");
                         });

// Both real tokenizers, ids and decoded text exactly as the reference gives them
// (Llama 3's decoded text is tidied as transformers' decode() does).
TEST(CliTest, TokenizeMatchesTheReferenceEncodings) {
  for (const std::string name : {"qwen2_5", "llama3"}) {
    const std::string dir = kFixtures + "/tokenizers/" + name;
    const auto cases = ReadJson(dir + "/cases.json")["cases"];
    const std::string input = ::testing::TempDir() + "/steerd_tokenize.jsonl";
    {
      std::ofstream out(input);
      for (const auto& c : cases) out << nlohmann::json{{"text", c["text"]}}.dump() << "\n";
    }
    CliRun run = Steerd("tokenize --model " + dir + " --input " + input);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    std::istringstream lines(run.out);
    std::string line;
    size_t i = 0;
    for (; std::getline(lines, line); ++i) {
      ASSERT_LT(i, cases.size());
      const auto got = nlohmann::json::parse(line);
      EXPECT_EQ(got["ids"], cases[i]["ids"]) << name << " case " << i;
      EXPECT_EQ(got["decoded"], cases[i]["decoded"]) << name << " case " << i;
    }
    EXPECT_EQ(i, cases.size()) << name;
  }

  const std::string input = ::testing::TempDir() + "/steerd_tokenize_bad.jsonl";
  {
    std::ofstream out(input);
    out << "{\"text\": \"fine\"}\n{\"txt\": 1}\n";
  }
  CliRun run = Steerd("tokenize --model " + kFixtures + "/tokenizers/qwen2_5 --input " + input);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.err, HasSubstr("line 2"));
}

TEST(CliTest, InitModelWritesALoadableDeterministicModel) {
  const std::string config = std::string(STEERD_SOURCE_DIR) + "/configs/tiny-qwen2.json";
  const std::string a = ::testing::TempDir() + "/steerd_init_a";
  const std::string b = ::testing::TempDir() + "/steerd_init_b";
  for (const auto& dir : {a, b}) {
    fs::remove_all(dir);
    CliRun run = Steerd("init-model --config " + config + " --out " + dir + " --seed 3 --dtype bf16");
    ASSERT_EQ(run.exit_code, 0) << run.err;
  }
  auto read = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  EXPECT_EQ(read(a + "/model.safetensors"), read(b + "/model.safetensors"));
  EXPECT_EQ(ReadJson(a + "/config.json")["torch_dtype"], "bfloat16");

  CliRun run = Steerd("generate --model " + a +
                   " --prompt 'Hello, world' --max-new-tokens 6 --ignore-eos --temperature 0.9 "
                   "--seed 5 --json");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const auto out = nlohmann::json::parse(run.out);
  EXPECT_EQ(out["ids"].size(), 6u);
  CliRun again = Steerd("generate --model " + a +
                     " --prompt 'Hello, world' --max-new-tokens 6 --ignore-eos --temperature 0.9 "
                     "--seed 5 --json");
  EXPECT_EQ(again.out, run.out);  // Same seed, same tokens.

  // Streaming mode prints the same text as --json.
  CliRun stream = Steerd("generate --model " + a +
                      " --prompt 'Hello, world' --max-new-tokens 6 --ignore-eos "
                      "--temperature 0.9 --seed 5");
  ASSERT_EQ(stream.exit_code, 0) << stream.err;
  EXPECT_EQ(stream.out, out["text"].get<std::string>() + "\n");
}

TEST(CliTest, InitModelTrainsATokenizerOnACorpus) {
  const std::string tmp = ::testing::TempDir();
  // The tiny config with room for more tokens than the corpus can give.
  nlohmann::json config = ReadJson(std::string(STEERD_SOURCE_DIR) + "/configs/tiny-qwen2.json");
  config["vocab_size"] = 4096;
  const std::string config_path = tmp + "/steerd_bpe_config.json";
  std::ofstream(config_path) << config.dump();
  const std::string corpus = tmp + "/steerd_bpe_corpus.jsonl";
  {
    std::ofstream out(corpus);
    for (int i = 0; i < 400; ++i) {
      const std::string a = std::to_string(i % 100);
      const std::string b = std::to_string((i * 37 + 11) % 100);
      const std::string sum = std::to_string(i % 100 + (i * 37 + 11) % 100);
      nlohmann::json record = {{"prompt", "Q: " + a + "+" + b + "=?\nA: "}, {"answer", sum}};
      if (i % 2 == 0) record["solution"] = "Step by step: " + a + "+" + b + "=" + sum;
      out << record.dump() << "\n";
    }
  }
  const std::string dir = tmp + "/steerd_init_bpe";
  fs::remove_all(dir);
  CliRun run = Steerd("init-model --config " + config_path + " --out " + dir +
                      " --dtype f32 --tokenizer-corpus " + corpus);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const auto tokenizer = ReadJson(dir + "/tokenizer.json");
  const int64_t size = tokenizer["model"]["vocab"].size() + tokenizer["added_tokens"].size();
  const auto written = ReadJson(dir + "/config.json");
  EXPECT_LT(size, 4096);  // Training ran out of pairs seen twice...
  EXPECT_EQ(written["vocab_size"], size);  // ...and the embedding shrank to fit.
  EXPECT_EQ(tokenizer["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(written["eos_token_id"], tokenizer["added_tokens"][0]["id"]);
  EXPECT_EQ(ReadJson(dir + "/tokenizer_config.json")["model_max_length"],
            config["max_position_embeddings"]);
  // A model of the question/answer corpus chats in the embedded model's steerd-qa format.
  EXPECT_EQ(ReadJson(dir + "/tokenizer_config.json")["chat_template"],
            ReadJson(std::string(STEERD_SOURCE_DIR) +
                     "/models/steerd-tiny/tokenizer_config.json")["chat_template"]);

  CliRun generate = Steerd("generate --model " + dir +
                           " --prompt 'Q: 12+7=?' --max-new-tokens 4 --ignore-eos --json");
  ASSERT_EQ(generate.exit_code, 0) << generate.err;
  EXPECT_EQ(nlohmann::json::parse(generate.out)["ids"].size(), 4u);
  // The corpus's units are single tokens: A : " Step" " by" " step" : " " 12 + 7 = 19.
  const std::string text_path = tmp + "/steerd_bpe_text.jsonl";
  std::ofstream(text_path) << nlohmann::json{{"text", "A: Step by step: 12+7=19"}}.dump() << "\n";
  CliRun tokenize = Steerd("tokenize --model " + dir + " --input " + text_path);
  ASSERT_EQ(tokenize.exit_code, 0) << tokenize.err;
  EXPECT_EQ(nlohmann::json::parse(tokenize.out)["ids"].size(), 12u);

  const std::string bad = tmp + "/steerd_bpe_bad.jsonl";
  std::ofstream(bad) << "{\"prompt\": \"fine\"}\n{\"prompt\": 7}\n";
  const std::vector<std::pair<std::string, std::string>> errors = {
      {" --tokenizer-corpus " + bad, bad + ":2: \"prompt\" is not a string"},
      {" --tokenizer-corpus /nonexistent.jsonl", "/nonexistent.jsonl"},
      {" --tokenizer-corpus " + corpus + " --tokenizer " + dir, "mutually exclusive"},
  };
  for (const auto& [flags, expected] : errors) {
    CliRun failed = Steerd("init-model --config " + config_path + " --out " + tmp +
                           "/steerd_init_bpe_bad" + flags);
    EXPECT_NE(failed.exit_code, 0) << flags;
    EXPECT_THAT(failed.err, HasSubstr(expected)) << flags;
  }
}

TEST(CliTest, BadInvocationsExplainThemselves) {
  const std::string qwen = kFixtures + "/hf-reference/qwen2-tiny";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"frobnicate", "unknown command"},
      {"generate --model " + qwen + " --ids 1,2 --colour red", "unknown flag --colour"},
      {"generate --model " + qwen + " --ids 1,x", "not an integer"},
      {"generate --model " + qwen + " --ids 1,999 --json", "out of range"},
      {"generate --model " + qwen + " --prompt hi", "tokenizer"},
      {"generate --model /nonexistent --ids 1", "/nonexistent"},
      {"generate --model " + qwen + " --ids 1 --temperature -1", "temperature"},
      {"generate --model " + qwen + " --ids 1 --max-new-tokens 100000", "context overflow"},
      {"generate --model " + qwen + " --ids 1 --steering /nonexistent.safetensors",
       "/nonexistent.safetensors"},
      {"logits --model " + qwen + " --ids 1", "--json"},
      {"init-model --config /nonexistent.json --out /tmp/x", "/nonexistent.json"},
      {"bench cook", "usage"},
  };
  for (const auto& [args, expected] : cases) {
    CliRun run = Steerd(args);
    EXPECT_NE(run.exit_code, 0) << args;
    EXPECT_THAT(run.err, HasSubstr(expected)) << args;
    EXPECT_THAT(run.err, HasSubstr("error")) << args;
  }
}

// The binary acts on what the command line resolves to (every command's help and the
// flag errors are checked on the tables in tests/unit/flags_test.cc): help exits 0 and
// runs nothing (serve would listen, bench would run), errors go to stderr.
TEST(CliTest, HelpRunsNothingAndListsTheFlags) {
  const std::string list = FormatCommandList(SteerdProgram());
  CliRun run = Steerd("--help");
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, list);

  run = Steerd("serve --help");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.err, "");
  EXPECT_THAT(run.out, StartsWith("usage: steerd serve [flags]\n"));
  for (const char* flag : {"--job-retention-days N", "--max-training-jobs N",
                           "--metrics-listen HOST:PORT", "--listen HOST:PORT",
                           "--model NAME=DIR", "--tenants FILE.json"}) {
    EXPECT_THAT(run.out, HasSubstr(flag));
  }
  EXPECT_THAT(run.out, HasSubstr("(default: 127.0.0.1:50051)"));

  run = Steerd("bench serve -h");
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, StartsWith("usage: steerd bench serve [flags]\n"));
  EXPECT_THAT(run.out, HasSubstr("--concurrency 1,8,32"));

  run = Steerd("help bench decode");
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, StartsWith("usage: steerd bench decode --model DIR [flags]\n"));
}

TEST(CliTest, FlagErrorsNameTheFlag) {
  CliRun run = Steerd("serve --max-batch 8 --colour red");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.out, "");
  EXPECT_EQ(run.err, "error: unknown flag --colour (see steerd serve --help)\n");

  run = Steerd("tokenize --input x.jsonl");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "error: missing required flag --model\n");
}

}  // namespace
}  // namespace steerd
