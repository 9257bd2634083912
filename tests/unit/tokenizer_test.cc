#include "server/model/tokenizer.h"

#include <cstdint>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/model/tokenizer_text.h"

namespace steerd {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Json = nlohmann::json;

std::string FixtureDir(const std::string& name) {
  return absl::StrCat(STEERD_FIXTURES_DIR, "/tokenizers/", name);
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << path;
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// Both real tokenizers, loaded once: parsing them takes a few hundred milliseconds.
const Tokenizer* RealTokenizer(const std::string& name) {
  static auto* const tokenizers = new std::map<std::string, std::unique_ptr<Tokenizer>>();
  auto it = tokenizers->find(name);
  if (it == tokenizers->end()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(FixtureDir(name));
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (!loaded.ok()) return nullptr;
    it = tokenizers->emplace(name, *std::move(loaded)).first;
  }
  return it->second.get();
}

std::string DecodeIncrementally(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                                bool skip_special_tokens = false) {
  IncrementalDetokenizer detokenizer(&tokenizer, skip_special_tokens);
  std::string text;
  for (int32_t id : ids) {
    absl::StatusOr<std::string> piece = detokenizer.Push(id);
    EXPECT_TRUE(piece.ok()) << piece.status();
    if (piece.ok()) text += *piece;
  }
  return text + detokenizer.Finish();
}

class RealTokenizerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RealTokenizerTest, MatchesEveryReferenceCase) {
  const Tokenizer* tokenizer = RealTokenizer(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  const Json cases =
      Json::parse(ReadFileOrDie(FixtureDir(GetParam()) + "/cases.json"), nullptr, false);
  ASSERT_FALSE(cases.is_discarded());
  ASSERT_TRUE(cases.contains("cases"));
  ASSERT_GT(cases["cases"].size(), 200u);
  // The fixtures' decoder is a port of transformers, which tidies spaces when the
  // config asks for it (Llama 3 does); Decode itself is lossless.
  const bool clean_up = tokenizer->clean_up_tokenization_spaces();
  EXPECT_EQ(clean_up, GetParam() == "llama3");

  size_t ids_exact = 0;
  size_t decoded_exact = 0;
  size_t incremental_exact = 0;
  const size_t total = cases["cases"].size();
  for (size_t i = 0; i < total; ++i) {
    const Json& c = cases["cases"][i];
    const std::string text = c["text"].get<std::string>();
    const std::vector<int32_t> expected_ids = c["ids"].get<std::vector<int32_t>>();
    const std::string expected_decoded = c["decoded"].get<std::string>();
    SCOPED_TRACE(absl::StrCat(GetParam(), " case ", i, ": ", Json(text).dump()));

    absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, expected_ids);
    ids_exact += *ids == expected_ids;

    absl::StatusOr<std::string> decoded = tokenizer->Decode(expected_ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    if (clean_up) {
      // No normalizer: decoding is lossless.
      EXPECT_EQ(*decoded, text);
      EXPECT_EQ(CleanUpTokenizationSpaces(*decoded), expected_decoded);
      decoded_exact += *decoded == text && CleanUpTokenizationSpaces(*decoded) == expected_decoded;
    } else {
      EXPECT_EQ(*decoded, expected_decoded);
      decoded_exact += *decoded == expected_decoded;
    }

    const std::string incremental = DecodeIncrementally(*tokenizer, expected_ids);
    EXPECT_EQ(incremental, *decoded);
    incremental_exact += incremental == *decoded;
  }
  std::cout << "[ parity   ] " << GetParam() << ": ids " << ids_exact << "/" << total
            << ", decoded " << decoded_exact << "/" << total << ", incremental "
            << incremental_exact << "/" << total << "\n";
}

TEST_P(RealTokenizerTest, EncodesFromSeveralThreadsAlike) {
  const Tokenizer* tokenizer = RealTokenizer(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  const std::string text =
      "Concurrent encodes share only the word cache. Ünïcödé, 中文, emoji 🎉 and 12345.\n";
  absl::StatusOr<std::vector<int32_t>> expected = tokenizer->Encode(text);
  ASSERT_TRUE(expected.ok()) << expected.status();
  std::vector<std::thread> threads;
  std::vector<int> same(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      bool all_same = true;
      for (int round = 0; round < 50; ++round) {
        absl::StatusOr<std::vector<int32_t>> ids =
            tokenizer->Encode(absl::StrCat(round % 7, " ", text));
        absl::StatusOr<std::vector<int32_t>> again = tokenizer->Encode(text);
        all_same = all_same && ids.ok() && again.ok() && *again == *expected;
      }
      same[t] = all_same;
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(same, ElementsAre(1, 1, 1, 1));
}

TEST_P(RealTokenizerTest, LongRunsOfOneCharacterClass) {
  const Tokenizer* tokenizer = RealTokenizer(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  for (const std::string& text :
       {std::string(200000, ' '), std::string(200000, 'a'), std::string(100000, '7'),
        absl::StrCat(std::string(100000, ' '), "x")}) {
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    absl::StatusOr<std::string> decoded = tokenizer->Decode(*ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, text);
  }
}

TEST_P(RealTokenizerTest, RejectsInvalidUtf8NamingTheOffset) {
  const Tokenizer* tokenizer = RealTokenizer(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  for (const auto& [text, offset] : std::vector<std::pair<std::string, int>>{
           {"abc\xff", 3},
           {"ok \xC3", 3},                   // Truncated at the end.
           {"\xE2\x82\xAC\xED\xA0\x80", 3},  // A UTF-16 surrogate.
           {"xy\xC0\xAF", 2}}) {             // Overlong '/'.
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text);
    ASSERT_FALSE(ids.ok());
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(ids.status().message(), HasSubstr(absl::StrCat("byte offset ", offset)));
  }
}

TEST_P(RealTokenizerTest, RejectsIdsOutOfRange) {
  const Tokenizer* tokenizer = RealTokenizer(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  for (int32_t id : {-1, tokenizer->vocab_size(), tokenizer->vocab_size() + 1000}) {
    absl::StatusOr<std::string> decoded = tokenizer->Decode({1, id});
    ASSERT_FALSE(decoded.ok());
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(decoded.status().message(), HasSubstr(absl::StrCat("token id ", id)));
    EXPECT_FALSE(tokenizer->TokenBytes(id).ok());
    IncrementalDetokenizer detokenizer(tokenizer);
    EXPECT_FALSE(detokenizer.Push(id).ok());
    EXPECT_FALSE(tokenizer->IsSpecial(id));
  }
}

TEST_P(RealTokenizerTest, StreamsCharactersSplitAcrossTokens) {
  const Tokenizer* tokenizer = RealTokenizer(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  for (const char* text : {"😀", "👨‍👩‍👧‍👦 family", "日本語のテキスト", "🇷🇺🇺🇸"}) {
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    IncrementalDetokenizer detokenizer(tokenizer);
    std::string streamed;
    for (int32_t id : *ids) {
      absl::StatusOr<std::string> piece = detokenizer.Push(id);
      ASSERT_TRUE(piece.ok()) << piece.status();
      // Every piece is whole characters.
      EXPECT_TRUE(tokenizer_text::ValidateUtf8(*piece).ok());
      EXPECT_EQ(piece->find("\xEF\xBF\xBD"), std::string::npos);
      streamed += *piece;
    }
    EXPECT_EQ(detokenizer.Finish(), "");
    EXPECT_EQ(streamed, text);
  }
  // Llama 3 spells 😀 with two tokens; the first alone is half a character.
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode("😀");
  ASSERT_TRUE(ids.ok());
  if (ids->size() == 2) {
    IncrementalDetokenizer detokenizer(tokenizer);
    EXPECT_EQ(*detokenizer.Push((*ids)[0]), "");
    EXPECT_EQ(detokenizer.Finish(), "\xEF\xBF\xBD");
    EXPECT_EQ(*tokenizer->Decode({(*ids)[0]}), "\xEF\xBF\xBD");
  }
}

TEST_P(RealTokenizerTest, RoundTripsRandomText) {
  const Tokenizer* tokenizer = RealTokenizer(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  // NFC-stable pieces, so the round trip is exact for Qwen's normalizer too.
  const std::vector<std::string> alphabet = {"a",
                                             "Z",
                                             "é",
                                             "ß",
                                             "Я",
                                             "ж",
                                             "中",
                                             "語",
                                             "한",
                                             "ع",
                                             "ह",
                                             "🎉",
                                             "👍🏽",
                                             "7",
                                             "42",
                                             " ",
                                             "  ",
                                             "\n",
                                             "\r\n",
                                             "\t",
                                             "\xC2\xA0",
                                             "'s",
                                             "'LL",
                                             ".",
                                             "!?",
                                             "\\",
                                             "{",
                                             "<|",
                                             "|>",
                                             "<|endoftext|>",
                                             "<|im_start|>",
                                             "<|eot_id|>",
                                             "<|begin_of_text|>"};
  std::mt19937 rng(20240611);
  for (int i = 0; i < 300; ++i) {
    std::string text;
    const int length = static_cast<int>(rng() % 40);
    for (int k = 0; k < length; ++k) text += alphabet[rng() % alphabet.size()];
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    absl::StatusOr<std::string> decoded = tokenizer->Decode(*ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, text);
  }
}

TEST_P(RealTokenizerTest, IncrementalMatchesDecodeOnRandomIds) {
  const Tokenizer* tokenizer = RealTokenizer(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  // Random ids split and mangle multi-byte characters in every way.
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    std::vector<int32_t> ids(rng() % 12);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng() % tokenizer->vocab_size());
    for (bool skip : {false, true}) {
      absl::StatusOr<std::string> decoded = tokenizer->Decode(ids, skip);
      ASSERT_TRUE(decoded.ok()) << decoded.status();
      EXPECT_TRUE(tokenizer_text::ValidateUtf8(*decoded).ok());
      EXPECT_EQ(DecodeIncrementally(*tokenizer, ids, skip), *decoded);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RealTokenizerTest, ::testing::Values("qwen2_5", "llama3"));

TEST(QwenTokenizerTest, SpecialTokensInText) {
  const Tokenizer* qwen = RealTokenizer("qwen2_5");
  ASSERT_NE(qwen, nullptr);
  const std::string text = "<|im_start|>user\nhi<|im_end|><|file_sep|>x";
  absl::StatusOr<std::vector<int32_t>> ids = qwen->Encode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(ids->size(), 7u);
  EXPECT_EQ((*ids)[0], 151644);
  EXPECT_EQ((*ids)[4], 151645);
  EXPECT_EQ((*ids)[5], 151664);
  EXPECT_TRUE(qwen->IsSpecial(151644));
  EXPECT_FALSE(qwen->IsSpecial(151664));  // <|file_sep|> is added but not special.
  EXPECT_FALSE(qwen->IsSpecial((*ids)[1]));
  EXPECT_EQ(*qwen->Decode(*ids), text);
  EXPECT_EQ(*qwen->Decode(*ids, /*skip_special_tokens=*/true), "user\nhi<|file_sep|>x");
  EXPECT_EQ(DecodeIncrementally(*qwen, *ids, /*skip_special_tokens=*/true),
            "user\nhi<|file_sep|>x");
  EXPECT_EQ(qwen->TokenToId("<|im_end|>"), 151645);
  EXPECT_EQ(qwen->TokenToId("Ġhello"), (*qwen->Encode(" hello"))[0]);
  EXPECT_EQ(qwen->TokenToId("no such token at all"), std::nullopt);
  EXPECT_EQ(*qwen->TokenBytes(151644), "<|im_start|>");
}

TEST(QwenTokenizerTest, NormalizesToNfcAndReadsConfig) {
  const Tokenizer* qwen = RealTokenizer("qwen2_5");
  ASSERT_NE(qwen, nullptr);
  // "e" + COMBINING ACUTE becomes "é".
  EXPECT_EQ(*qwen->Encode("cafe\xCC\x81"), *qwen->Encode("caf\xC3\xA9"));
  EXPECT_EQ(qwen->vocab_size(), 151665);
  EXPECT_EQ(qwen->bos_token_id(), std::nullopt);
  EXPECT_EQ(qwen->eos_token_id(), 151645);
  EXPECT_THAT(qwen->chat_template(), HasSubstr("<|im_start|>"));
  // The ByteLevel post-processor adds nothing.
  EXPECT_EQ(*qwen->Encode("hi", /*add_special_tokens=*/true), *qwen->Encode("hi"));
}

TEST(Llama3TokenizerTest, ReadsConfig) {
  const Tokenizer* llama = RealTokenizer("llama3");
  ASSERT_NE(llama, nullptr);
  EXPECT_EQ(llama->vocab_size(), 128256);
  EXPECT_EQ(llama->bos_token_id(), 128000);
  EXPECT_EQ(llama->eos_token_id(), 128001);
  EXPECT_THAT(llama->chat_template(), HasSubstr("'<|start_header_id|>' + message['role']"));
  // This early release's post-processor is plain ByteLevel: no <|begin_of_text|>.
  EXPECT_EQ(*llama->Encode("hi", /*add_special_tokens=*/true), *llama->Encode("hi"));
  // ignore_merges: a whole pre-token found in the vocabulary is one token.
  EXPECT_THAT(*llama->Encode(" hello"), ElementsAre(*llama->TokenToId("Ġhello")));
}

TEST(Llama3TokenizerTest, PreTokenizesAsEncodeSplits) {
  const Tokenizer* llama = RealTokenizer("llama3");
  ASSERT_NE(llama, nullptr);
  // Numbers go in chunks of three digits; added tokens are left out; words are raw bytes.
  EXPECT_THAT(*llama->PreTokenize("Hello wörld 12345<|eot_id|>!\n\n"),
              ElementsAre("Hello", " wörld", " ", "123", "45", "!\n\n"));
  EXPECT_EQ(llama->PreTokenize("ok \xFF").status().code(), absl::StatusCode::kInvalidArgument);
}

// ----------------------------------------------------------------------------------
// A small synthetic tokenizer for behaviour the real ones do not exercise.

std::string Chars(const std::string& bytes) {
  std::string chars;
  for (char c : bytes) chars += tokenizer_text::ByteToChar(static_cast<unsigned char>(c));
  return chars;
}

Json AddedTokenJson(int id, const std::string& content, bool special) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

// Ids 0-255 are the bytes; `merges` (pairs of byte strings) add ids from 256 on; added
// tokens <s> (special) and <tool> follow. The pre-tokenizer is Qwen2's.
Json SyntheticTokenizer(const std::vector<std::pair<std::string, std::string>>& merges = {}) {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[Chars(std::string(1, static_cast<char>(b)))] = b;
  Json merge_list = Json::array();
  int next_id = 256;
  for (const auto& [left, right] : merges) {
    vocab[Chars(left + right)] = next_id++;
    merge_list.push_back(absl::StrCat(Chars(left), " ", Chars(right)));
  }
  const std::string split = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|)"
                            R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  return {{"version", "1.0"},
          {"added_tokens",
           {AddedTokenJson(next_id, "<s>", true), AddedTokenJson(next_id + 1, "<tool>", false)}},
          {"normalizer", {{"type", "NFC"}}},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"},
               {"pattern", {{"Regex", split}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
          {"post_processor", {{"type", "ByteLevel"}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}, {"ignore_merges", false}}}};
}

std::unique_ptr<Tokenizer> MustBuild(const Json& tokenizer, const Json& config = Json()) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> built =
      Tokenizer::FromJson(tokenizer.dump(), config.is_null() ? "" : config.dump(), "synthetic");
  EXPECT_TRUE(built.ok()) << built.status();
  return built.ok() ? *std::move(built) : nullptr;
}

std::vector<int32_t> Bytes(const std::string& bytes) {
  return std::vector<int32_t>(reinterpret_cast<const unsigned char*>(bytes.data()),
                              reinterpret_cast<const unsigned char*>(bytes.data()) + bytes.size());
}

TEST(SyntheticTokenizerTest, AppliesMergesByRank) {
  // "ab" (256) outranks "bc" (257): "abc" -> ab c, never a bc.
  std::unique_ptr<Tokenizer> tokenizer =
      MustBuild(SyntheticTokenizer({{"a", "b"}, {"b", "c"}, {"ab", "c"}}));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(*tokenizer->Encode("abc"), ElementsAre(258));
  EXPECT_THAT(*tokenizer->Encode("bcab"), ElementsAre(257, 256));
  // Merges apply within pre-tokens only: " ab" is a space then "ab".
  EXPECT_THAT(*tokenizer->Encode("ab abc"), ElementsAre(256, ' ', 258));
  // The same pair merges left to right: "bbb" -> nothing here; with bb: (bb) b.
  std::unique_ptr<Tokenizer> bb = MustBuild(SyntheticTokenizer({{"b", "b"}}));
  EXPECT_THAT(*bb->Encode("bbb"), ElementsAre(256, 'b'));
}

TEST(SyntheticTokenizerTest, IgnoreMergesTakesWholeVocabularyWords) {
  // "abc" is in the vocabulary (via merges a+bc) but BPE reaches "ab"+"c" first.
  Json json = SyntheticTokenizer({{"a", "b"}, {"b", "c"}, {"a", "bc"}});
  std::unique_ptr<Tokenizer> plain = MustBuild(json);
  EXPECT_THAT(*plain->Encode("abc"), ElementsAre(256, 'c'));
  json["model"]["ignore_merges"] = true;
  std::unique_ptr<Tokenizer> ignoring = MustBuild(json);
  EXPECT_THAT(*ignoring->Encode("abc"), ElementsAre(258));
}

TEST(SyntheticTokenizerTest, AcceptsMergesAsPairs) {
  Json json = SyntheticTokenizer({{"a", "b"}});
  json["model"]["merges"] = Json::array({Json::array({"a", "b"})});
  std::unique_ptr<Tokenizer> tokenizer = MustBuild(json);
  EXPECT_THAT(*tokenizer->Encode("ab"), ElementsAre(256));
}

TEST(SyntheticTokenizerTest, WhiteSpaceIsUnicodeWhiteSpaceAsInOniguruma) {
  // U+180E MONGOLIAN VOWEL SEPARATOR is not White_Space (PCRE2's own \s says it is),
  // so "\u180E!" is one pre-token, and its merges apply across both characters.
  const std::string mvs = "\xE1\xA0\x8E";
  std::unique_ptr<Tokenizer> tokenizer =
      MustBuild(SyntheticTokenizer({{"\xE1", "\xA0"}, {"\xE1\xA0", "\x8E"}, {mvs, "!"}}));
  EXPECT_THAT(*tokenizer->Encode(mvs + "!"), ElementsAre(258));
  // U+0085 NEXT LINE is White_Space: "\u0085!" splits before "!".
  std::unique_ptr<Tokenizer> nel =
      MustBuild(SyntheticTokenizer({{"\xC2", "\x85"}, {"\xC2\x85", "!"}}));
  EXPECT_THAT(*nel->Encode("\xC2\x85!"), ElementsAre(256, '!'));
}

TEST(SyntheticTokenizerTest, SplitsTenMegabytesOfSpaces) {
  // Past PCRE2's default match limit (10M steps), which `\s*[\r\n]+` reaches here.
  // Without merges BPE is linear, which keeps this test fast.
  std::unique_ptr<Tokenizer> tokenizer = MustBuild(SyntheticTokenizer());
  ASSERT_NE(tokenizer, nullptr);
  const std::string text(10 << 20, ' ');
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->size(), text.size());
}

TEST(SyntheticTokenizerTest, AddedTokenOptions) {
  Json json = SyntheticTokenizer();
  // 256 <s>, 257 <tool>, then:
  json["added_tokens"].push_back(AddedTokenJson(258, "[L]", true));
  json["added_tokens"].back()["lstrip"] = true;
  json["added_tokens"].push_back(AddedTokenJson(259, "[R]", true));
  json["added_tokens"].back()["rstrip"] = true;
  json["added_tokens"].push_back(AddedTokenJson(260, "cat", false));
  json["added_tokens"].back()["single_word"] = true;
  json["added_tokens"].push_back(AddedTokenJson(261, "<s><s>", false));
  std::unique_ptr<Tokenizer> tokenizer = MustBuild(json);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(*tokenizer->Encode("a  [L]b"), ElementsAre('a', 258, 'b'));
  EXPECT_THAT(*tokenizer->Encode("a[R] \t b"), ElementsAre('a', 259, 'b'));
  EXPECT_THAT(*tokenizer->Encode("a cat"), ElementsAre('a', ' ', 260));
  EXPECT_THAT(*tokenizer->Encode("cats"), ElementsAre('c', 'a', 't', 's'));
  // Longest match first.
  EXPECT_THAT(*tokenizer->Encode("<s><s><s>"), ElementsAre(261, 256));
  // Added tokens are matched before normalization and pre-tokenization.
  EXPECT_THAT(*tokenizer->Encode("x<tool>y"), ElementsAre('x', 257, 'y'));
  EXPECT_TRUE(tokenizer->IsSpecial(256));
  EXPECT_FALSE(tokenizer->IsSpecial(257));
}

TEST(SyntheticTokenizerTest, NormalizedAddedTokensMatchAfterNfc) {
  Json json = SyntheticTokenizer();
  Json token = AddedTokenJson(258, "caf\xC3\xA9", false);  // "café", precomposed.
  token["normalized"] = true;
  json["added_tokens"].push_back(token);
  std::unique_ptr<Tokenizer> tokenizer = MustBuild(json);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(*tokenizer->Encode("cafe\xCC\x81!"), ElementsAre(258, '!'));
}

TEST(SyntheticTokenizerTest, TemplateProcessingAddsSpecialTokens) {
  Json json = SyntheticTokenizer();
  json["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       {{{"type", "ByteLevel"}},
        {{"type", "TemplateProcessing"},
         {"single",
          {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
           {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
           {{"SpecialToken", {{"id", "<tool>"}, {"type_id", 0}}}}}},
         {"pair", Json::array()},
         {"special_tokens",
          {{"<s>", {{"id", "<s>"}, {"ids", {256}}, {"tokens", {"<s>"}}}},
           {"<tool>", {{"id", "<tool>"}, {"ids", {257}}, {"tokens", {"<tool>"}}}}}}}}}};
  std::unique_ptr<Tokenizer> tokenizer = MustBuild(json);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(*tokenizer->Encode("a", /*add_special_tokens=*/true), ElementsAre(256, 'a', 257));
  EXPECT_THAT(*tokenizer->Encode("a"), ElementsAre('a'));
}

TEST(SyntheticTokenizerTest, ConfigTokensTemplateAndAddBos) {
  const Json config = {{"bos_token", {{"content", "<s>"}, {"lstrip", false}}},
                       {"eos_token", "<tool>"},
                       {"add_bos_token", true},
                       {"chat_template", "{{ messages }}"}};
  std::unique_ptr<Tokenizer> tokenizer = MustBuild(SyntheticTokenizer(), config);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->bos_token_id(), 256);
  EXPECT_EQ(tokenizer->eos_token_id(), 257);
  EXPECT_EQ(tokenizer->chat_template(), "{{ messages }}");

  const Json named = {
      {"chat_template",
       {{{"name", "tool_use"}, {"template", "T"}}, {{"name", "default"}, {"template", "D"}}}}};
  EXPECT_EQ(MustBuild(SyntheticTokenizer(), named)->chat_template(), "D");
  EXPECT_THAT(*tokenizer->Encode("a", /*add_special_tokens=*/true), ElementsAre(256, 'a'));
}

TEST(SyntheticTokenizerTest, ByteLevelWithDefaultRegexAndPrefixSpace) {
  Json json = SyntheticTokenizer({{" ", "a"}});
  json["normalizer"] = nullptr;
  json["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}};
  std::unique_ptr<Tokenizer> tokenizer = MustBuild(json);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(*tokenizer->Encode("a"), ElementsAre(256));
  EXPECT_THAT(*tokenizer->Encode("a a"), ElementsAre(256, 256));
  EXPECT_THAT(*tokenizer->Encode(""), ElementsAre());
}

TEST(SyntheticTokenizerTest, DecodesInvalidBytesLikeFromUtf8Lossy) {
  std::unique_ptr<Tokenizer> tokenizer = MustBuild(SyntheticTokenizer());
  ASSERT_NE(tokenizer, nullptr);
  const std::string fffd = "\xEF\xBF\xBD";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"a\xE4\xB8"
       "b",
       "a" + fffd + "b"},                    // Truncated 3-byte sequence: one U+FFFD.
      {"\xE4\xB8", fffd},                    // ... also at the end.
      {"\xF0\x80\x80", fffd + fffd + fffd},  // F0 needs 90..BF next.
      {"\xED\xA0\x80", fffd + fffd + fffd},  // Surrogate.
      {"\xF4\x8F\xBF", fffd},                // Prefix of U+10FFFF.
      {"\xFF\xC3\xA9", fffd + "\xC3\xA9"},
      {"\xC3\xA9\x80", "\xC3\xA9" + fffd},
  };
  for (const auto& [bytes, text] : cases) {
    SCOPED_TRACE(Json(text).dump());
    const std::vector<int32_t> ids = Bytes(bytes);
    EXPECT_EQ(*tokenizer->Decode(ids), text);
    EXPECT_EQ(DecodeIncrementally(*tokenizer, ids), text);
  }
  // A character completed by a later token streams out whole.
  IncrementalDetokenizer detokenizer(tokenizer.get());
  EXPECT_EQ(*detokenizer.Push(0xE4), "");
  EXPECT_EQ(*detokenizer.Push(0xB8), "");
  EXPECT_EQ(*detokenizer.Push(0xAD), "\xE4\xB8\xAD");
  EXPECT_EQ(*detokenizer.Push(0xE4), "");
  EXPECT_EQ(*detokenizer.Push('x'), fffd + "x");
  EXPECT_EQ(detokenizer.Finish(), "");
}

// ----------------------------------------------------------------------------------
// Errors.

absl::Status BuildError(const Json& tokenizer, const std::string& config = "") {
  return Tokenizer::FromJson(tokenizer.dump(), config, "synthetic").status();
}

TEST(TokenizerErrorsTest, MalformedFilesNameFileAndField) {
  absl::Status status = Tokenizer::FromJson("{\"model\": ", "", "src").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("src/tokenizer.json: malformed JSON"));

  // As the safetensors fuzzer found for its header: a number too large for a double
  // is nlohmann's out_of_range, not parse_error, and escaped as an exception.
  status = Tokenizer::FromJson("{\"version\": 1e999}", "", "src").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("src/tokenizer.json: malformed JSON"));
  EXPECT_THAT(BuildError(SyntheticTokenizer(), "{\"model_max_length\": -1e400}").message(),
              HasSubstr("synthetic/tokenizer_config.json: malformed JSON"));

  status = Tokenizer::FromJson("[1, 2]", "", "src").status();
  EXPECT_THAT(status.message(), HasSubstr("src/tokenizer.json"));

  Json json = SyntheticTokenizer();
  json.erase("model");
  EXPECT_THAT(BuildError(json).message(), HasSubstr("tokenizer.json: model: missing field"));

  json = SyntheticTokenizer();
  json["model"]["type"] = "WordPiece";
  EXPECT_THAT(BuildError(json).message(), HasSubstr("model type 'WordPiece' is not supported"));

  json = SyntheticTokenizer();
  json["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_THAT(BuildError(json).message(),
              HasSubstr("normalizer: normalizer type 'Lowercase' is not supported"));

  json = SyntheticTokenizer();
  json["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFKC"}}}}};
  EXPECT_THAT(BuildError(json).message(), HasSubstr("normalizer.normalizers[0]"));

  json = SyntheticTokenizer();
  json["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_THAT(BuildError(json).message(),
              HasSubstr("pre_tokenizer: pre-tokenizer type 'Whitespace' is not supported"));

  json = SyntheticTokenizer();
  json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  EXPECT_THAT(BuildError(json).message(),
              HasSubstr("pre_tokenizer.pretokenizers[0].pattern: regex does not compile"));

  json = SyntheticTokenizer();
  json["decoder"] = {{"type", "WordPiece"}};
  EXPECT_THAT(BuildError(json).message(), HasSubstr("decoder type 'WordPiece'"));

  json = SyntheticTokenizer();
  json["post_processor"] = {{"type", "BertProcessing"}};
  EXPECT_THAT(BuildError(json).message(), HasSubstr("post-processor type 'BertProcessing'"));

  json = SyntheticTokenizer();
  json["model"]["merges"] = {"a zz"};
  EXPECT_THAT(BuildError(json).message(),
              HasSubstr("model.merges[0]: token 'zz' is not in model.vocab"));

  json = SyntheticTokenizer();
  json["model"]["vocab"]["a"] = "one";
  EXPECT_THAT(BuildError(json).message(), HasSubstr("model.vocab['a']"));

  json = SyntheticTokenizer();
  json["added_tokens"][0].erase("content");
  EXPECT_THAT(BuildError(json).message(), HasSubstr("added_tokens[0].content: missing field"));

  json = SyntheticTokenizer();
  json["added_tokens"][1]["id"] = -4;
  EXPECT_THAT(BuildError(json).message(), HasSubstr("added_tokens[1].id"));

  EXPECT_THAT(BuildError(SyntheticTokenizer(), "{\"eos_token\": \"<nope>\"}").message(),
              HasSubstr("synthetic/tokenizer_config.json: eos_token: token '<nope>'"));
  EXPECT_THAT(
      BuildError(SyntheticTokenizer(), R"({"chat_template": [{"name": 3, "template": ""}]})")
          .message(),
      HasSubstr("chat_template[0].name: expected string, got number"));
  EXPECT_THAT(BuildError(SyntheticTokenizer(), "not json").message(),
              HasSubstr("synthetic/tokenizer_config.json: malformed JSON"));
}

TEST(TokenizerErrorsTest, MissingDirectory) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load("/nonexistent/model");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("/nonexistent/model/tokenizer.json"));
}

}  // namespace
}  // namespace steerd
