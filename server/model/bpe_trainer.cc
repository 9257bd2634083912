#include "server/model/bpe_trainer.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/model/tokenizer.h"
#include "server/model/tokenizer_text.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

// Keeps keys in insertion order, so the vocabulary is written by id as in Llama 3's file.
using Json = nlohmann::ordered_json;

// Llama 3's Split pre-tokenizer pattern.
constexpr char kLlama3SplitPattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// tokenizer.json in Llama 3's layout. `vocab` holds the byte-level strings of the BPE
// tokens by id; the special tokens take the ids after them.
std::string TokenizerJson(const std::vector<std::string>& vocab,
                          const std::vector<std::string>& merges,
                          const std::vector<std::string>& special_tokens) {
  Json added_tokens = Json::array();
  for (size_t i = 0; i < special_tokens.size(); ++i) {
    added_tokens.push_back({{"id", vocab.size() + i},
                            {"content", special_tokens[i]},
                            {"single_word", false},
                            {"lstrip", false},
                            {"rstrip", false},
                            {"normalized", false},
                            {"special", true}});
  }
  Json vocab_json = Json::object();
  for (size_t id = 0; id < vocab.size(); ++id) vocab_json[vocab[id]] = id;
  auto byte_level = [](bool add_prefix_space, bool trim_offsets, bool use_regex) {
    return Json{{"type", "ByteLevel"},
                {"add_prefix_space", add_prefix_space},
                {"trim_offsets", trim_offsets},
                {"use_regex", use_regex}};
  };
  const Json split = {{"type", "Split"},
                      {"pattern", {{"Regex", kLlama3SplitPattern}}},
                      {"behavior", "Isolated"},
                      {"invert", false}};
  const Json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added_tokens},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers", {split, byte_level(false, /*trim_offsets=*/true, false)}}}},
      {"post_processor", byte_level(true, /*trim_offsets=*/false, true)},
      {"decoder", byte_level(true, /*trim_offsets=*/true, true)},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", true},
        {"vocab", vocab_json},
        {"merges", merges}}}};
  return tokenizer.dump(/*indent=*/2, ' ', /*ensure_ascii=*/false);
}

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}
int32_t Left(uint64_t pair) { return static_cast<int32_t>(pair >> 32); }
int32_t Right(uint64_t pair) { return static_cast<int32_t>(pair & 0xffffffffu); }

// A distinct pre-tokenized word as token ids, and how often the corpus has it.
struct Word {
  std::vector<int32_t> ids;
  int64_t count = 0;
};

// Learns merges over counted words. Pair counts are kept up to date as merges rewrite
// the words that hold the merged pair; a max-heap picks the next pair, its entries
// checked against the live counts when popped. A merge only lowers the counts of pairs
// without the merged token, so a stale entry overstates and is re-pushed with the live
// count when popped; pairs with the merged token are pushed with their new counts.
class MergeLearner {
 public:
  explicit MergeLearner(std::vector<Word> words) : words_(std::move(words)) {
    for (int b = 0; b < 256; ++b) AddToken(tokenizer_text::ByteToChar(b));
    for (size_t w = 0; w < words_.size(); ++w) CountPairs(w, /*sign=*/1, /*touched=*/nullptr);
    for (const auto& [pair, count] : pair_counts_) Push(pair, count);
  }

  // Merges until there are `max_tokens` tokens or no pair is seen `min_frequency` times.
  void Learn(size_t max_tokens, int64_t min_frequency) {
    while (tokens_.size() < max_tokens) {
      std::optional<std::pair<uint64_t, int64_t>> best = PopBest();
      if (!best.has_value() || best->second < min_frequency) return;
      Merge(best->first);
    }
  }

  const std::vector<std::string>& tokens() const { return tokens_; }
  const std::vector<std::string>& merges() const { return merges_; }

 private:
  struct Entry {
    int64_t count;
    uint64_t pair;
  };

  int32_t AddToken(const std::string& token) {
    auto [it, added] = token_ids_.emplace(token, static_cast<int32_t>(tokens_.size()));
    if (added) tokens_.push_back(token);
    return it->second;
  }

  // Adds (sign 1) or removes (sign -1) the pairs of word `w`; added pairs also go in
  // `touched`.
  void CountPairs(size_t w, int64_t sign, absl::flat_hash_set<uint64_t>* touched) {
    const Word& word = words_[w];
    for (size_t i = 0; i + 1 < word.ids.size(); ++i) {
      const uint64_t pair = PairKey(word.ids[i], word.ids[i + 1]);
      auto it = pair_counts_.try_emplace(pair, 0).first;
      it->second += sign * word.count;
      if (it->second == 0) {
        pair_counts_.erase(it);
      } else if (sign > 0) {
        // A superset: words that lost the pair are skipped when it is merged.
        pair_words_[pair].insert(static_cast<int32_t>(w));
        if (touched != nullptr) touched->insert(pair);
      }
    }
  }

  // Whether `a` should pop after `b`: fewer occurrences, or as many and a later pair
  // of token strings.
  bool Below(const Entry& a, const Entry& b) const {
    if (a.count != b.count) return a.count < b.count;
    return std::tie(tokens_[Left(a.pair)], tokens_[Right(a.pair)]) >
           std::tie(tokens_[Left(b.pair)], tokens_[Right(b.pair)]);
  }

  void Push(uint64_t pair, int64_t count) {
    heap_.push_back({count, pair});
    std::push_heap(heap_.begin(), heap_.end(),
                   [this](const Entry& a, const Entry& b) { return Below(a, b); });
  }

  // The most frequent pair and its count, or nullopt when no pair is left.
  std::optional<std::pair<uint64_t, int64_t>> PopBest() {
    while (!heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(),
                    [this](const Entry& a, const Entry& b) { return Below(a, b); });
      const Entry top = heap_.back();
      heap_.pop_back();
      auto it = pair_counts_.find(top.pair);
      const int64_t count = it == pair_counts_.end() ? 0 : it->second;
      if (count == top.count) return std::make_pair(top.pair, count);
      if (count > 0) Push(top.pair, count);
    }
    return std::nullopt;
  }

  void Merge(uint64_t pair) {
    const int32_t left = Left(pair);
    const int32_t right = Right(pair);
    merges_.push_back(absl::StrCat(tokens_[left], " ", tokens_[right]));
    // Two merges can spell the same string ("ab"+"c", "a"+"bc"); they share its id.
    const int32_t merged = AddToken(tokens_[left] + tokens_[right]);
    auto node = pair_words_.extract(pair);
    if (node.empty()) return;
    absl::flat_hash_set<uint64_t> touched;
    for (int32_t w : node.mapped()) {
      std::vector<int32_t>& ids = words_[w].ids;
      CountPairs(w, /*sign=*/-1, nullptr);
      size_t out = 0;
      for (size_t i = 0; i < ids.size(); ++out) {
        if (i + 1 < ids.size() && ids[i] == left && ids[i + 1] == right) {
          ids[out] = merged;
          i += 2;
        } else {
          ids[out] = ids[i++];
        }
      }
      ids.resize(out);
      CountPairs(w, /*sign=*/1, &touched);
    }
    for (uint64_t touched_pair : touched) {
      if (Left(touched_pair) != merged && Right(touched_pair) != merged) continue;
      if (auto it = pair_counts_.find(touched_pair); it != pair_counts_.end()) {
        Push(touched_pair, it->second);
      }
    }
  }

  std::vector<Word> words_;
  std::vector<std::string> tokens_;  // Byte-level strings by id.
  absl::flat_hash_map<std::string, int32_t> token_ids_;
  std::vector<std::string> merges_;  // "left right", in the order learned.
  absl::flat_hash_map<uint64_t, int64_t> pair_counts_;
  absl::flat_hash_map<uint64_t, absl::flat_hash_set<int32_t>> pair_words_;
  std::vector<Entry> heap_;
};

absl::Status CheckOptions(const BpeTrainerOptions& options) {
  absl::flat_hash_set<std::string> seen;
  for (const std::string& token : options.special_tokens) {
    if (token.empty()) return absl::InvalidArgumentError("a special token is empty");
    if (absl::Status status = tokenizer_text::ValidateUtf8(token); !status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("special token '", token, "': ", status.message()));
    }
    if (!seen.insert(token).second) {
      return absl::InvalidArgumentError(absl::StrCat("special token '", token, "' is repeated"));
    }
  }
  const int64_t minimum = 256 + static_cast<int64_t>(options.special_tokens.size());
  if (options.vocab_size < minimum) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size ", options.vocab_size, " is below the 256 byte tokens plus ",
                     options.special_tokens.size(), " special tokens (", minimum, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> TrainByteLevelBpe(const std::vector<std::string>& texts,
                                              const BpeTrainerOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  if (texts.empty()) return absl::InvalidArgumentError("no texts to train the tokenizer on");

  // The untrained tokenizer splits the texts, so training sees exactly the words that
  // encoding with the trained one will merge.
  std::vector<std::string> bytes(256);
  for (int b = 0; b < 256; ++b) bytes[b] = tokenizer_text::ByteToChar(b);
  ASSIGN_OR_RETURN(const std::unique_ptr<Tokenizer> splitter,
                   Tokenizer::FromJson(TokenizerJson(bytes, {}, options.special_tokens),
                                       /*config_json=*/"", /*source=*/""));
  absl::flat_hash_map<std::string, int64_t> word_counts;
  for (size_t i = 0; i < texts.size(); ++i) {
    absl::StatusOr<std::vector<std::string>> words = splitter->PreTokenize(texts[i]);
    if (!words.ok()) {
      return absl::Status(words.status().code(),
                          absl::StrCat("text ", i, ": ", words.status().message()));
    }
    for (std::string& word : *words) ++word_counts[std::move(word)];
  }

  std::vector<Word> words;
  words.reserve(word_counts.size());
  for (const auto& [text, count] : word_counts) {
    Word& word = words.emplace_back();
    word.count = count;
    for (unsigned char byte : text) word.ids.push_back(byte);  // Byte b is token b.
  }
  MergeLearner learner(std::move(words));
  learner.Learn(options.vocab_size - options.special_tokens.size(), options.min_frequency);
  return TokenizerJson(learner.tokens(), learner.merges(), options.special_tokens);
}

}  // namespace steerd
