#include "server/model/bpe_trainer.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/model/tokenizer.h"

namespace steerd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using Json = nlohmann::json;

// Arithmetic word problems in which every number 0..99 is frequent, as in steerd's
// training tasks.
std::vector<std::string> ArithmeticCorpus(int size) {
  std::vector<std::string> texts;
  for (int i = 0; i < size; ++i) {
    const int a = i % 100;
    const int b = (i * 37 + 11) % 100;
    texts.push_back(absl::StrCat("Q: (", a, "+", b, ")*3-5\nA: Step by step: ", a, "+", b, "=",
                                 a + b, "<|endoftext|>"));
  }
  return texts;
}

std::unique_ptr<Tokenizer> Train(const std::vector<std::string>& texts,
                                 const BpeTrainerOptions& options = {}) {
  absl::StatusOr<std::string> json = TrainByteLevelBpe(texts, options);
  EXPECT_TRUE(json.ok()) << json.status();
  if (!json.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromJson(*json, /*config_json=*/"", "trained");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

TEST(BpeTrainerTest, FrequentUnitsBecomeSingleTokens) {
  std::unique_ptr<Tokenizer> tokenizer = Train(ArithmeticCorpus(2000));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_LE(tokenizer->vocab_size(), 512);
  for (int n = 0; n < 100; ++n) {
    EXPECT_THAT(*tokenizer->Encode(absl::StrCat(n)), SizeIs(1)) << n;
  }
  for (const char* unit : {" Step", " by", " step", "Q", "A", ")*"}) {
    EXPECT_THAT(*tokenizer->Encode(unit), SizeIs(1)) << unit;
  }
  // The special token is the last id, matched whole and never learned from as text.
  const int32_t eot = tokenizer->vocab_size() - 1;
  EXPECT_EQ(tokenizer->TokenToId("<|endoftext|>"), eot);
  EXPECT_TRUE(tokenizer->IsSpecial(eot));
  EXPECT_THAT(*tokenizer->Encode("7<|endoftext|>"), ElementsAre(*tokenizer->TokenToId("7"), eot));
  EXPECT_FALSE(tokenizer->TokenToId("<|").has_value());
}

TEST(BpeTrainerTest, RoundTripsAnyText) {
  std::unique_ptr<Tokenizer> tokenizer = Train(ArithmeticCorpus(500));
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<std::string> alphabet = {
      "a", "Z", "é", "ß", "Я", "中", "語", "🎉", "👍🏽", "7", "123456", " ", "  ", "\n", "\r\n",
      "\t", "\xC2\xA0", "'s", ".", "!?", "{", "<|", "|>", "<|endoftext|>", " Step", "=19"};
  std::mt19937 rng(20240611);
  for (int i = 0; i < 300; ++i) {
    std::string text;
    const int length = static_cast<int>(rng() % 40);
    for (int k = 0; k < length; ++k) text += alphabet[rng() % alphabet.size()];
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*tokenizer->Decode(*ids), text);
  }
}

TEST(BpeTrainerTest, DeterministicWhateverTheTextOrder) {
  std::vector<std::string> texts = ArithmeticCorpus(300);
  texts.push_back("The quick brown fox jumps over the lazy dog. Ünïcödé 🎉🎉");
  absl::StatusOr<std::string> first = TrainByteLevelBpe(texts, {});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*TrainByteLevelBpe(texts, {}), *first);
  std::reverse(texts.begin(), texts.end());
  EXPECT_EQ(*TrainByteLevelBpe(texts, {}), *first);
}

TEST(BpeTrainerTest, TiesGoToTheSmallestPairAndLayoutIsLlama3s) {
  BpeTrainerOptions options;
  options.vocab_size = 258;  // One merge.
  options.min_frequency = 1;
  absl::StatusOr<std::string> trained = TrainByteLevelBpe({"cd", "ab", "cd ab"}, options);
  ASSERT_TRUE(trained.ok()) << trained.status();
  const Json json = Json::parse(*trained);
  EXPECT_EQ(json["model"]["merges"], Json({"a b"}));
  EXPECT_EQ(json["model"]["vocab"]["ab"], 256);
  EXPECT_EQ(json["added_tokens"][0]["id"], 257);
  EXPECT_EQ(json["added_tokens"][0]["special"], true);

  std::ifstream in(absl::StrCat(STEERD_FIXTURES_DIR, "/tokenizers/llama3/tokenizer.json"));
  const Json llama3 = Json::parse(in);
  for (const char* part : {"normalizer", "pre_tokenizer", "post_processor", "decoder"}) {
    EXPECT_EQ(json[part], llama3[part]) << part;
  }
  for (const auto& [key, value] : llama3["model"].items()) {
    EXPECT_TRUE(json["model"].contains(key)) << key;
    if (key != "vocab" && key != "merges") {
      EXPECT_EQ(json["model"][key], value) << key;
    }
  }
}

TEST(BpeTrainerTest, MinFrequencyStopsTraining) {
  // "hello" twice takes four merges; "world", seen once, none.
  BpeTrainerOptions options;
  options.vocab_size = 1000;
  std::unique_ptr<Tokenizer> tokenizer = Train({"hello", "world hello"}, options);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 256 + 4 + 1);
  EXPECT_THAT(*tokenizer->Encode("hello"), SizeIs(1));
  EXPECT_THAT(*tokenizer->Encode("world"), SizeIs(5));

  options.min_frequency = 3;
  tokenizer = Train({"hello", "world hello"}, options);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 257);
}

TEST(BpeTrainerTest, RejectsBadInput) {
  auto error = [](const std::vector<std::string>& texts, const BpeTrainerOptions& options) {
    absl::StatusOr<std::string> trained = TrainByteLevelBpe(texts, options);
    EXPECT_EQ(trained.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(trained.status().message());
  };
  EXPECT_THAT(error({}, {}), HasSubstr("no texts"));
  EXPECT_THAT(error({"fine", "bad \xC3("}, {}), HasSubstr("text 1: "));
  BpeTrainerOptions options;
  options.vocab_size = 256;
  EXPECT_THAT(error({"hi"}, options), HasSubstr("vocab_size 256"));
  options = {};
  options.special_tokens = {"<a>", "<a>"};
  EXPECT_THAT(error({"hi"}, options), HasSubstr("repeated"));
  options.special_tokens = {""};
  EXPECT_THAT(error({"hi"}, options), HasSubstr("empty"));
}

}  // namespace
}  // namespace steerd
