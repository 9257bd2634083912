// SequenceState with a real tokenizer (Qwen2.5): streamed text equals the final text,
// never splits a UTF-8 character, never leaks the start of a stop string, and the
// sequence ends for the right reason (stop string, eos, length, cancel).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/model/generator.h"
#include "server/model/tokenizer.h"
#include "tests/testing/fixtures.h"

namespace steerd {
namespace {

using ::steerd::testing::FixturePath;

class SequenceStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tokenizer = Tokenizer::Load(FixturePath("tokenizers/qwen2_5"));
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    eos_ = *tokenizer_->TokenToId("<|endoftext|>");
  }

  std::vector<int32_t> Encode(const std::string& text) {
    auto ids = tokenizer_->Encode(text);
    EXPECT_TRUE(ids.ok());
    return *ids;
  }

  // Feeds `ids` one by one; returns the streamed pieces.
  std::vector<std::string> Feed(SequenceState& state, const std::vector<int32_t>& ids) {
    std::vector<std::string> pieces;
    for (int32_t id : ids) {
      if (state.finished()) break;
      auto piece = state.Accept({id, -0.5f});
      EXPECT_TRUE(piece.ok()) << piece.status();
      if (!piece->empty()) pieces.push_back(*piece);
    }
    return pieces;
  }

  static bool ValidUtf8(const std::string& s) {
    for (size_t i = 0; i < s.size();) {
      const unsigned char c = s[i];
      const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
      if (n == 0 || i + n > s.size()) return false;
      for (size_t k = 1; k < n; ++k) {
        if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
      }
      i += n;
    }
    return true;
  }

  GenerationRequest Request(int64_t max_new = 100) {
    GenerationRequest r;
    r.prompt = {1};
    r.max_new_tokens = max_new;
    r.return_logprobs = true;
    return r;
  }

  std::unique_ptr<Tokenizer> tokenizer_;
  int32_t eos_ = 0;
};

TEST_F(SequenceStateTest, StopStringCutsTheTextAndIsNeverStreamed) {
  GenerationRequest request = Request();
  request.stop_strings = {"\n\nQuestion:", "STOP"};
  SequenceState state(request, tokenizer_.get(), {eos_});
  const std::string text = "Step 1: 3 + 4 = 7.\nSo the answer is 7.\n\nQuestion: what";
  const auto pieces = Feed(state, Encode(text));
  ASSERT_TRUE(state.finished());
  EXPECT_EQ(state.result().finish_reason, FinishReason::kStop);
  EXPECT_EQ(state.result().text, "Step 1: 3 + 4 = 7.\nSo the answer is 7.");
  std::string streamed;
  for (const auto& p : pieces) streamed += p;
  EXPECT_EQ(streamed, state.result().text);
  EXPECT_EQ(state.result().logprobs.size(), state.result().tokens.size());
}

TEST_F(SequenceStateTest, StreamNeverSplitsCharacters) {
  const std::string text = "数学 🧮 √2 ≈ 1.414 — naïve café 👩‍👩‍👧";
  SequenceState state(Request(), tokenizer_.get(), {eos_});
  const auto ids = Encode(text);
  const auto pieces = Feed(state, ids);
  EXPECT_EQ(state.result().finish_reason, FinishReason::kNone);
  EXPECT_EQ(state.Cancel(), "");
  EXPECT_EQ(state.result().finish_reason, FinishReason::kCancelled);
  std::string streamed;
  for (const auto& p : pieces) {
    EXPECT_TRUE(ValidUtf8(p)) << "piece splits a character";
    streamed += p;
  }
  EXPECT_EQ(streamed, text);
  EXPECT_GT(ids.size(), pieces.size());  // Some tokens carried partial characters.
}

TEST_F(SequenceStateTest, EosEndsTheSequenceUnlessIgnored) {
  const auto ids = Encode("The answer is 7.");
  std::vector<int32_t> with_eos = ids;
  with_eos.push_back(eos_);
  with_eos.push_back(ids[0]);
  SequenceState state(Request(), tokenizer_.get(), {eos_});
  Feed(state, with_eos);
  EXPECT_EQ(state.result().finish_reason, FinishReason::kStop);
  EXPECT_EQ(state.result().tokens.size(), ids.size() + 1);  // The eos is kept as a token...
  EXPECT_EQ(state.result().text, "The answer is 7.");         // ...but not as text.

  GenerationRequest ignore = Request(static_cast<int64_t>(with_eos.size()));
  ignore.ignore_eos = true;
  SequenceState ignoring(ignore, tokenizer_.get(), {eos_});
  Feed(ignoring, with_eos);
  EXPECT_EQ(ignoring.result().finish_reason, FinishReason::kLength);
  EXPECT_EQ(ignoring.result().tokens.size(), with_eos.size());
}

TEST_F(SequenceStateTest, MaxNewTokensEndsWithLength) {
  SequenceState state(Request(3), tokenizer_.get(), {eos_});
  const auto pieces = Feed(state, Encode("one two three four five"));
  EXPECT_EQ(state.result().finish_reason, FinishReason::kLength);
  EXPECT_EQ(state.result().tokens.size(), 3u);
  EXPECT_EQ(state.result().text, "one two three");
  EXPECT_FALSE(state.Accept({1, 0.0f}).ok());
}

// A model's vocabulary can be larger than its tokenizer's (padding rows); sampling one
// of those ids must not end the request.
TEST_F(SequenceStateTest, IdsPastTheTokenizerHaveNoText) {
  SequenceState state(Request(), tokenizer_.get(), {eos_});
  std::vector<int32_t> ids = Encode("a b");
  ids.insert(ids.begin() + 1, tokenizer_->vocab_size() + 100);
  Feed(state, ids);
  EXPECT_EQ(state.result().tokens, ids);
  EXPECT_EQ(state.result().text, "a b");
}

}  // namespace
}  // namespace steerd
