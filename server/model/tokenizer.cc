#include "server/model/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "server/model/tokenizer_text.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using Json = nlohmann::json;
using tokenizer_text::AppendUtf8Lossy;

// ----------------------------------------------------------------------------------
// JSON access whose errors name the file and the field.

std::string FieldPath(absl::string_view parent, absl::string_view key) {
  return parent.empty() ? std::string(key) : absl::StrCat(parent, ".", key);
}

std::string IndexPath(absl::string_view parent, size_t index) {
  return absl::StrCat(parent, "[", index, "]");
}

class JsonFile {
 public:
  explicit JsonFile(std::string name) : name_(std::move(name)) {}

  absl::Status Error(absl::string_view field, absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": ", field, ": ", message));
  }

  absl::StatusOr<Json> Parse(absl::string_view text) const {
    Json json;
    try {
      json = Json::parse(text.begin(), text.end());
    } catch (const Json::exception& e) {
      // Not only parse_error: a number too large for a double (1e999) is out_of_range.
      return absl::InvalidArgumentError(absl::StrCat(name_, ": malformed JSON: ", e.what()));
    }
    if (!json.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_, ": expected a JSON object at the top level, got ", json.type_name()));
    }
    return json;
  }

  // Member `key` of `object`, or nullptr when it is absent or null.
  static const Json* Optional(const Json& object, absl::string_view key) {
    auto it = object.find(std::string(key));
    if (it == object.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::StatusOr<const Json*> Required(const Json& object, absl::string_view path,
                                       absl::string_view key) const {
    const Json* value = Optional(object, key);
    if (value == nullptr) return Error(FieldPath(path, key), "missing field");
    return value;
  }

  absl::StatusOr<const Json*> RequiredOf(const Json& object, absl::string_view path,
                                         absl::string_view key, Json::value_t type) const {
    ASSIGN_OR_RETURN(const Json* value, Required(object, path, key));
    if (value->type() != type && !(type == Json::value_t::number_integer &&
                                   value->type() == Json::value_t::number_unsigned)) {
      return Error(FieldPath(path, key),
                   absl::StrCat("expected ", Json(type).type_name(), ", got ", value->type_name()));
    }
    return value;
  }

  absl::StatusOr<std::string> String(const Json& object, absl::string_view path,
                                     absl::string_view key) const {
    ASSIGN_OR_RETURN(const Json* value, RequiredOf(object, path, key, Json::value_t::string));
    return value->get<std::string>();
  }

  absl::StatusOr<bool> Bool(const Json& object, absl::string_view path, absl::string_view key,
                            bool fallback) const {
    const Json* value = Optional(object, key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) {
      return Error(FieldPath(path, key),
                   absl::StrCat("expected boolean, got ", value->type_name()));
    }
    return value->get<bool>();
  }

  // A token id, or nullopt when `value` is not an integer in [0, 2^31 - 1).
  static std::optional<int32_t> AsId(const Json& value) {
    if (!value.is_number_integer()) return std::nullopt;
    const int64_t id = value.get<int64_t>();
    if (id < 0 || id >= std::numeric_limits<int32_t>::max()) return std::nullopt;
    return static_cast<int32_t>(id);
  }

  absl::StatusOr<int32_t> Id(const Json& value, absl::string_view path) const {
    std::optional<int32_t> id = AsId(value);
    if (!id.has_value()) {
      return Error(path, absl::StrCat("expected a token id (an integer in [0, 2^31 - 1)), got ",
                                      value.dump()));
    }
    return *id;
  }

  // The `type` of a component object such as `normalizer`.
  absl::StatusOr<std::string> Type(const Json& component, absl::string_view path) const {
    if (!component.is_object()) {
      return Error(path, absl::StrCat("expected object, got ", component.type_name()));
    }
    return String(component, path, "type");
  }

 private:
  std::string name_;
};

// ----------------------------------------------------------------------------------
// Pre-tokenizer regexes (PCRE2: Hugging Face's Oniguruma patterns use the `(?!\S)`
// lookahead, which RE2 cannot express).

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct MatchContextDeleter {
  void operator()(pcre2_match_context* context) const { pcre2_match_context_free(context); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};
using MatchData = std::unique_ptr<pcre2_match_data, MatchDataDeleter>;

std::string Pcre2ErrorMessage(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

// PCRE2's Unicode `\s` also matches U+180E, which left White_Space in Unicode 6.3;
// Oniguruma's (and Rust's) `\s` is exactly White_Space. Naming the property keeps the
// two engines' splits identical; it works inside character classes too.
std::string SpellOutWhiteSpaceClasses(absl::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '\\' || i + 1 == pattern.size()) {
      out.push_back(pattern[i]);
      continue;
    }
    const char escaped = pattern[++i];
    if (escaped == 's') {
      out += "\\p{White_Space}";
    } else if (escaped == 'S') {
      out += "\\P{White_Space}";
    } else if (escaped == 'Q') {
      // \Q...\E quotes its text literally: copy it untouched.
      const size_t close = pattern.find("\\E", i + 1);
      const size_t stop = close == absl::string_view::npos ? pattern.size() : close + 2;
      out.append(pattern.data() + i - 1, stop - (i - 1));
      i = stop - 1;
    } else {
      out.push_back('\\');
      out.push_back(escaped);
    }
  }
  return out;
}

class SplitRegex {
 public:
  // `literal` treats `pattern` as plain text (a Split pattern given as {"String": ...}).
  static absl::StatusOr<std::unique_ptr<SplitRegex>> Compile(absl::string_view pattern,
                                                             bool literal, const JsonFile& file,
                                                             absl::string_view field) {
    // PCRE2_LITERAL admits PCRE2_UTF but not PCRE2_UCP.
    const std::string source = literal ? std::string(pattern) : SpellOutWhiteSpaceClasses(pattern);
    const uint32_t options = literal ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP);
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    std::unique_ptr<pcre2_code, CodeDeleter> code(
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(), options,
                      &error_code, &error_offset, /*ccontext=*/nullptr));
    if (code == nullptr) {
      return file.Error(field, absl::StrCat("regex does not compile at offset ", error_offset, ": ",
                                            Pcre2ErrorMessage(error_code)));
    }
    // Where JIT is unavailable pcre2_match interprets the pattern: slower, same result.
    pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE);
    std::unique_ptr<pcre2_match_context, MatchContextDeleter> context(
        pcre2_match_context_create(/*gcontext=*/nullptr));
    if (context == nullptr) return absl::ResourceExhaustedError("out of memory for PCRE2");
    // The default limit (10M backtracking steps) fails a 10 MB run of spaces, which
    // `\s*[\r\n]+` scans in linear time; the patterns tokenizers use never blow up.
    pcre2_set_match_limit(context.get(), std::numeric_limits<uint32_t>::max());
    return std::unique_ptr<SplitRegex>(new SplitRegex(std::move(code), std::move(context)));
  }

  // Finds the first match at or after `offset` in `subject`, which must be valid UTF-8
  // (checked once per Encode or PreTokenize: checking on every call makes splitting
  // quadratic).
  absl::StatusOr<bool> Find(absl::string_view subject, size_t offset, pcre2_match_data* data,
                            size_t* start, size_t* end) const {
    const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(subject.data()),
                               subject.size(), offset, PCRE2_NO_UTF_CHECK, data, context_.get());
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    // rc == 0 means the match has more groups than `data` holds; only group 0 is used.
    if (rc < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("pre-tokenizer regex failed: ", Pcre2ErrorMessage(rc)));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    *start = ovector[0];
    *end = std::max(ovector[0], ovector[1]);
    return true;
  }

 private:
  SplitRegex(std::unique_ptr<pcre2_code, CodeDeleter> code,
             std::unique_ptr<pcre2_match_context, MatchContextDeleter> context)
      : code_(std::move(code)), context_(std::move(context)) {}

  std::unique_ptr<pcre2_code, CodeDeleter> code_;
  // Read-only during matching, so shared by all threads.
  std::unique_ptr<pcre2_match_context, MatchContextDeleter> context_;
};

// GPT-2's pattern, which a ByteLevel pre-tokenizer with use_regex applies.
constexpr absl::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ----------------------------------------------------------------------------------
// Added tokens.

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// Splits text on added tokens the way Hugging Face's AddedVocabulary::find_matches
// does: leftmost-longest matches (its Aho-Corasick automaton's MatchKind), a
// single_word token skipped where a word character touches it, lstrip/rstrip
// swallowing the whitespace beside a match. A byte trie finds the same matches.
class AddedTokenMatcher {
 public:
  using EmitFn = absl::FunctionRef<absl::Status(const AddedToken* token, absl::string_view piece)>;

  // The first token added for a pattern keeps it.
  void Add(absl::string_view pattern, const AddedToken* token) {
    int32_t node = 0;
    for (char c : pattern) {
      const unsigned char byte = static_cast<unsigned char>(c);
      int32_t next = Child(node, byte);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(byte, next);
        nodes_.emplace_back();
      }
      node = next;
    }
    if (nodes_[node].token == nullptr) nodes_[node].token = token;
    first_bytes_[static_cast<unsigned char>(pattern[0])] = true;
  }

  bool empty() const { return nodes_.size() == 1; }

  // Calls `emit` for each piece of `text` in order: an added token (with the
  // whitespace it strips) or the text between tokens (token == nullptr).
  absl::Status Split(absl::string_view text, EmitFn emit) const {
    size_t emitted = 0;  // Everything before this offset has been emitted.
    size_t search = 0;
    Match match;
    while (Find(text, search, &match)) {
      search = match.end;
      const AddedToken& token = *match.token;
      if (token.single_word && !IsSingleWord(text, match.start, match.end)) continue;
      size_t start = match.start;
      size_t stop = match.end;
      if (token.lstrip) start = std::max(WhiteSpaceBefore(text, start), emitted);
      if (token.rstrip) {
        stop = WhiteSpaceAfter(text, stop);
        // Hugging Face resumes at the match end, so a token that starts with
        // whitespace could then overlap what was stripped; resuming after it keeps
        // the pieces disjoint.
        search = stop;
      }
      if (emitted < start) RETURN_IF_ERROR(emit(nullptr, text.substr(emitted, start - emitted)));
      RETURN_IF_ERROR(emit(&token, text.substr(start, stop - start)));
      emitted = stop;
    }
    if (emitted < text.size()) RETURN_IF_ERROR(emit(nullptr, text.substr(emitted)));
    return absl::OkStatus();
  }

 private:
  struct Node {
    const AddedToken* token = nullptr;
    std::vector<std::pair<unsigned char, int32_t>> children;
  };
  struct Match {
    size_t start = 0;
    size_t end = 0;
    const AddedToken* token = nullptr;
  };

  int32_t Child(int32_t node, unsigned char byte) const {
    for (const auto& [b, child] : nodes_[node].children) {
      if (b == byte) return child;
    }
    return -1;
  }

  bool Find(absl::string_view text, size_t from, Match* match) const {
    for (size_t i = from; i < text.size(); ++i) {
      if (!first_bytes_[static_cast<unsigned char>(text[i])]) continue;
      Match longest;
      int32_t node = 0;
      for (size_t j = i; j < text.size(); ++j) {
        node = Child(node, static_cast<unsigned char>(text[j]));
        if (node < 0) break;
        if (nodes_[node].token != nullptr) longest = {i, j + 1, nodes_[node].token};
      }
      if (longest.token != nullptr) {
        *match = longest;
        return true;
      }
    }
    return false;
  }

  // Hugging Face tests `\w$` before the match and `^\w` after it.
  static bool IsSingleWord(absl::string_view text, size_t start, size_t end) {
    size_t before = start;
    if (start > 0 && tokenizer_text::IsWordChar(tokenizer_text::PreviousCodePoint(text, &before))) {
      return false;
    }
    size_t after = end;
    return end == text.size() ||
           !tokenizer_text::IsWordChar(tokenizer_text::NextCodePoint(text, &after));
  }

  static size_t WhiteSpaceBefore(absl::string_view text, size_t end) {
    while (end > 0) {
      size_t previous = end;
      if (!tokenizer_text::IsWhiteSpace(tokenizer_text::PreviousCodePoint(text, &previous))) break;
      end = previous;
    }
    return end;
  }

  static size_t WhiteSpaceAfter(absl::string_view text, size_t start) {
    while (start < text.size()) {
      size_t next = start;
      if (!tokenizer_text::IsWhiteSpace(tokenizer_text::NextCodePoint(text, &next))) break;
      start = next;
    }
    return start;
  }

  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::array<bool, 256> first_bytes_{};
};

// ----------------------------------------------------------------------------------
// The tokenizer.

// One stage of pre-tokenization: an optional prefix space, then an optional split.
struct PreTokenizerStep {
  bool add_prefix_space = false;
  std::unique_ptr<SplitRegex> regex;  // Splits with behavior "Isolated" when set.
};

enum class TokenKind : uint8_t { kUnassigned, kVocab, kAdded, kSpecial };

struct MergeRule {
  uint32_t rank;
  int32_t merged_id;
};

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Per-Encode working memory, so concurrent Encode calls share nothing mutable but the
// word cache.
struct EncodeScratch {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool removed;
  };
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t merged_id;
  };
  MatchData match_data;
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::vector<int32_t> word_ids;
};

// Words longer than this skip the cache: they are rare and would pin memory.
constexpr size_t kMaxCachedWordBytes = 256;
// The cache starts over when full, so it tracks what the recent text uses.
constexpr size_t kMaxCachedWords = 1 << 16;

class BpeTokenizer : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Build(absl::string_view tokenizer_json,
                                                             absl::string_view config_json,
                                                             absl::string_view source);

  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens) const override;
  absl::StatusOr<std::string> TokenBytes(int32_t id) const override {
    RETURN_IF_ERROR(CheckId(id));
    return token_bytes_[id];
  }
  absl::StatusOr<std::vector<std::string>> PreTokenize(absl::string_view text) const override;

  int32_t vocab_size() const override { return static_cast<int32_t>(token_bytes_.size()); }
  std::optional<int32_t> TokenToId(absl::string_view token) const override;
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < vocab_size() && token_kinds_[id] == TokenKind::kSpecial;
  }

  std::optional<int32_t> bos_token_id() const override { return bos_token_id_; }
  std::optional<int32_t> eos_token_id() const override { return eos_token_id_; }
  const std::string& chat_template() const override { return chat_template_; }
  bool clean_up_tokenization_spaces() const override { return clean_up_tokenization_spaces_; }
  void set_chat_template(std::string chat_template) { chat_template_ = std::move(chat_template); }

 private:
  BpeTokenizer() = default;

  absl::Status ParseModel(const JsonFile& file, const Json& root);
  absl::Status ParseAddedTokens(const JsonFile& file, const Json& root);
  absl::Status ParseNormalizer(const JsonFile& file, const Json& normalizer,
                               absl::string_view path);
  absl::Status BuildAddedTokenMatchers();
  absl::Status ParsePreTokenizer(const JsonFile& file, const Json& root);
  absl::Status ParseByteLevel(const JsonFile& file, const Json& byte_level, absl::string_view path);
  absl::Status ParsePostProcessor(const JsonFile& file, const Json& processor,
                                  absl::string_view path);
  absl::Status ParseTemplate(const JsonFile& file, const Json& processor, absl::string_view path);
  absl::Status ParseDecoder(const JsonFile& file, const Json& root);
  absl::Status ParseConfig(const JsonFile& file, const Json& config);
  absl::StatusOr<std::optional<int32_t>> ConfigTokenId(const JsonFile& file, const Json& config,
                                                       absl::string_view key) const;

  std::optional<int32_t> VocabId(absl::string_view token) const;
  absl::Status CheckId(int32_t id) const;

  using AddedTokenFn = absl::FunctionRef<void(const AddedToken& token)>;
  using WordFn = absl::FunctionRef<void(absl::string_view word)>;
  // Splits valid UTF-8 `text` as encoding does, in order: each added token goes to
  // `on_token` and each pre-tokenized word (raw bytes, before BPE) to `on_word`.
  // Encode and PreTokenize share it, so a trainer sees exactly the words Encode merges.
  absl::Status SplitText(absl::string_view text, pcre2_match_data* match_data,
                         AddedTokenFn on_token, WordFn on_word) const;
  absl::Status SplitBetweenAddedTokens(absl::string_view text, pcre2_match_data* match_data,
                                       AddedTokenFn on_token, WordFn on_word) const;
  absl::Status SplitWords(absl::string_view piece, size_t step, pcre2_match_data* match_data,
                          WordFn on_word) const;
  void EncodeWord(absl::string_view word, EncodeScratch& scratch, std::vector<int32_t>* ids) const;
  void MergeWord(absl::string_view word, EncodeScratch& scratch) const;

  // Model: byte-level BPE.
  absl::flat_hash_map<std::string, int32_t> vocab_;  // Raw bytes of a token -> id.
  // Vocabulary strings outside the byte-level alphabet: no text encodes to them, but
  // TokenToId and merges still name them.
  absl::flat_hash_map<std::string, int32_t> unmapped_vocab_;
  std::array<int32_t, 256> byte_ids_{};  // -1 where the vocabulary lacks the byte.
  absl::flat_hash_map<uint64_t, MergeRule> merges_;
  bool ignore_merges_ = false;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;

  // Ids: the bytes each one decodes to and what kind of token it is.
  std::vector<std::string> token_bytes_;
  std::vector<TokenKind> token_kinds_;

  std::vector<AddedToken> added_tokens_;  // Not resized after the matchers point into it.
  absl::flat_hash_map<std::string, int32_t> added_ids_;
  AddedTokenMatcher raw_matcher_;         // Tokens with normalized = false.
  AddedTokenMatcher normalized_matcher_;  // Tokens with normalized = true.

  bool nfc_ = false;
  std::vector<PreTokenizerStep> pre_tokenizer_;

  // add_special_tokens wraps the ids in these.
  std::vector<int32_t> prefix_ids_;
  std::vector<int32_t> suffix_ids_;

  std::optional<int32_t> bos_token_id_;
  std::optional<int32_t> eos_token_id_;
  std::string chat_template_;
  bool clean_up_tokenization_spaces_ = false;

  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

std::string FileLabel(absl::string_view source, absl::string_view file) {
  return source.empty() ? std::string(file) : absl::StrCat(source, "/", file);
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Build(absl::string_view tokenizer_json,
                                                                  absl::string_view config_json,
                                                                  absl::string_view source) {
  std::unique_ptr<BpeTokenizer> tokenizer(new BpeTokenizer());
  const JsonFile file(FileLabel(source, "tokenizer.json"));
  ASSIGN_OR_RETURN(const Json root, file.Parse(tokenizer_json));
  RETURN_IF_ERROR(tokenizer->ParseModel(file, root));
  RETURN_IF_ERROR(tokenizer->ParseAddedTokens(file, root));
  if (const Json* normalizer = JsonFile::Optional(root, "normalizer")) {
    RETURN_IF_ERROR(tokenizer->ParseNormalizer(file, *normalizer, "normalizer"));
  }
  RETURN_IF_ERROR(tokenizer->BuildAddedTokenMatchers());
  RETURN_IF_ERROR(tokenizer->ParsePreTokenizer(file, root));
  if (const Json* processor = JsonFile::Optional(root, "post_processor")) {
    RETURN_IF_ERROR(tokenizer->ParsePostProcessor(file, *processor, "post_processor"));
  }
  RETURN_IF_ERROR(tokenizer->ParseDecoder(file, root));
  // `truncation` and `padding` are deliberately ignored: transformers turns them off
  // for every call unless asked, and steerd never asks.

  if (absl::StripAsciiWhitespace(config_json).empty()) return tokenizer;
  const JsonFile config_file(FileLabel(source, "tokenizer_config.json"));
  ASSIGN_OR_RETURN(const Json config, config_file.Parse(config_json));
  RETURN_IF_ERROR(tokenizer->ParseConfig(config_file, config));
  return tokenizer;
}

absl::Status BpeTokenizer::ParseModel(const JsonFile& file, const Json& root) {
  ASSIGN_OR_RETURN(const Json* model, file.RequiredOf(root, "", "model", Json::value_t::object));
  ASSIGN_OR_RETURN(const std::string type, file.String(*model, "model", "type"));
  if (type != "BPE") {
    return file.Error("model.type", absl::StrCat("model type '", type,
                                                 "' is not supported (steerd supports BPE)"));
  }
  if (const Json* dropout = JsonFile::Optional(*model, "dropout");
      dropout != nullptr && (!dropout->is_number() || dropout->get<double>() != 0.0)) {
    return file.Error("model.dropout", "BPE dropout is not supported (it makes encoding random)");
  }
  ASSIGN_OR_RETURN(const bool byte_fallback, file.Bool(*model, "model", "byte_fallback", false));
  if (byte_fallback) {
    return file.Error("model.byte_fallback", "byte_fallback BPE is not supported");
  }
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const Json* value = JsonFile::Optional(*model, affix);
    if (value != nullptr && !(value->is_string() && value->get<std::string>().empty())) {
      return file.Error(FieldPath("model", affix), "subword affixes are not supported");
    }
  }
  ASSIGN_OR_RETURN(ignore_merges_, file.Bool(*model, "model", "ignore_merges", false));
  ASSIGN_OR_RETURN(fuse_unk_, file.Bool(*model, "model", "fuse_unk", false));

  ASSIGN_OR_RETURN(const Json* vocab,
                   file.RequiredOf(*model, "model", "vocab", Json::value_t::object));
  std::vector<std::pair<int32_t, std::string>> id_bytes;
  id_bytes.reserve(vocab->size());
  vocab_.reserve(vocab->size());
  int32_t max_id = -1;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    const std::optional<int32_t> maybe_id = JsonFile::AsId(it.value());
    if (!maybe_id.has_value()) {
      return file.Id(it.value(), absl::StrCat("model.vocab['", it.key(), "']")).status();
    }
    const int32_t id = *maybe_id;
    max_id = std::max(max_id, id);
    std::optional<std::string> bytes = tokenizer_text::ByteLevelToBytes(it.key());
    if (bytes.has_value()) {
      vocab_[*bytes] = id;
    } else {
      unmapped_vocab_[it.key()] = id;
    }
    // Hugging Face's ByteLevel decoder keeps a token's own UTF-8 when some character
    // of it is outside the byte alphabet.
    id_bytes.emplace_back(id, bytes.has_value() ? *std::move(bytes) : it.key());
  }
  token_bytes_.resize(max_id + 1);
  token_kinds_.resize(max_id + 1, TokenKind::kUnassigned);
  for (auto& [id, bytes] : id_bytes) {
    token_bytes_[id] = std::move(bytes);
    token_kinds_[id] = TokenKind::kVocab;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(std::string(1, static_cast<char>(b)));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }

  if (const Json* unk = JsonFile::Optional(*model, "unk_token")) {
    if (!unk->is_string()) return file.Error("model.unk_token", "expected string");
    unk_id_ = VocabId(unk->get<std::string>());
    if (!unk_id_.has_value()) {
      return file.Error("model.unk_token",
                        absl::StrCat("'", unk->get<std::string>(), "' is not in model.vocab"));
    }
  }

  ASSIGN_OR_RETURN(const Json* merges,
                   file.RequiredOf(*model, "model", "merges", Json::value_t::array));
  merges_.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const Json& merge = (*merges)[i];
    const std::string path = IndexPath("model.merges", i);
    std::string left;
    std::string right;
    if (merge.is_string()) {
      // The older format: "left right". Byte-level tokens never hold a plain space.
      std::vector<std::string> parts = absl::StrSplit(merge.get<std::string>(), ' ');
      if (parts.size() != 2) return file.Error(path, "expected two tokens separated by a space");
      left = std::move(parts[0]);
      right = std::move(parts[1]);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return file.Error(path, "expected \"left right\" or [\"left\", \"right\"]");
    }
    const std::optional<int32_t> left_id = VocabId(left);
    const std::optional<int32_t> right_id = VocabId(right);
    const std::optional<int32_t> merged_id = VocabId(absl::StrCat(left, right));
    if (!left_id || !right_id || !merged_id) {
      const std::string& missing = !left_id ? left : !right_id ? right : absl::StrCat(left, right);
      return file.Error(path, absl::StrCat("token '", missing, "' is not in model.vocab"));
    }
    // As in Hugging Face, a repeated pair takes its last rank.
    merges_[PairKey(*left_id, *right_id)] = {static_cast<uint32_t>(i), *merged_id};
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseAddedTokens(const JsonFile& file, const Json& root) {
  const Json* added = JsonFile::Optional(root, "added_tokens");
  if (added == nullptr) return absl::OkStatus();
  if (!added->is_array()) {
    return file.Error("added_tokens", absl::StrCat("expected array, got ", added->type_name()));
  }
  added_tokens_.reserve(added->size());
  for (size_t i = 0; i < added->size(); ++i) {
    const Json& entry = (*added)[i];
    const std::string path = IndexPath("added_tokens", i);
    if (!entry.is_object()) return file.Error(path, "expected object");
    AddedToken token;
    ASSIGN_OR_RETURN(const Json* id, file.Required(entry, path, "id"));
    ASSIGN_OR_RETURN(token.id, file.Id(*id, FieldPath(path, "id")));
    ASSIGN_OR_RETURN(token.content, file.String(entry, path, "content"));
    // Hugging Face ignores empty added tokens: they would match everywhere.
    if (token.content.empty()) continue;
    ASSIGN_OR_RETURN(token.special, file.Bool(entry, path, "special", false));
    ASSIGN_OR_RETURN(token.lstrip, file.Bool(entry, path, "lstrip", false));
    ASSIGN_OR_RETURN(token.rstrip, file.Bool(entry, path, "rstrip", false));
    ASSIGN_OR_RETURN(token.single_word, file.Bool(entry, path, "single_word", false));
    ASSIGN_OR_RETURN(token.normalized, file.Bool(entry, path, "normalized", !token.special));
    added_tokens_.push_back(std::move(token));
  }
  for (const AddedToken& token : added_tokens_) {
    if (static_cast<size_t>(token.id) >= token_bytes_.size()) {
      token_bytes_.resize(token.id + 1);
      token_kinds_.resize(token.id + 1, TokenKind::kUnassigned);
    }
    // Decoding runs an added token's content through the ByteLevel decoder too.
    std::optional<std::string> bytes = tokenizer_text::ByteLevelToBytes(token.content);
    token_bytes_[token.id] = bytes.has_value() ? *std::move(bytes) : token.content;
    token_kinds_[token.id] = token.special ? TokenKind::kSpecial : TokenKind::kAdded;
    added_ids_.emplace(token.content, token.id);
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseNormalizer(const JsonFile& file, const Json& normalizer,
                                           absl::string_view path) {
  ASSIGN_OR_RETURN(const std::string type, file.Type(normalizer, path));
  if (type == "NFC") {
    nfc_ = true;
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    const std::string list_path = FieldPath(path, "normalizers");
    ASSIGN_OR_RETURN(const Json* list,
                     file.RequiredOf(normalizer, path, "normalizers", Json::value_t::array));
    for (size_t i = 0; i < list->size(); ++i) {
      RETURN_IF_ERROR(ParseNormalizer(file, (*list)[i], IndexPath(list_path, i)));
    }
    return absl::OkStatus();
  }
  return file.Error(path, absl::StrCat("normalizer type '", type,
                                       "' is not supported (steerd supports NFC and Sequence)"));
}

absl::Status BpeTokenizer::BuildAddedTokenMatchers() {
  for (const AddedToken& token : added_tokens_) {
    if (!token.normalized) {
      raw_matcher_.Add(token.content, &token);
      continue;
    }
    // A normalized token is looked for in normalized text, so normalize it as well.
    std::string pattern = token.content;
    if (nfc_ && !tokenizer_text::IsAscii(pattern)) {
      RETURN_IF_ERROR(tokenizer_text::NormalizeNfc(token.content, &pattern));
    }
    normalized_matcher_.Add(pattern, &token);
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePreTokenizer(const JsonFile& file, const Json& root) {
  const Json* pre_tokenizer = JsonFile::Optional(root, "pre_tokenizer");
  if (pre_tokenizer == nullptr) {
    return file.Error("pre_tokenizer", "missing: byte-level BPE needs a ByteLevel pre-tokenizer");
  }
  ASSIGN_OR_RETURN(const std::string type, file.Type(*pre_tokenizer, "pre_tokenizer"));
  if (type == "ByteLevel") return ParseByteLevel(file, *pre_tokenizer, "pre_tokenizer");
  if (type != "Sequence") {
    return file.Error("pre_tokenizer",
                      absl::StrCat("pre-tokenizer type '", type,
                                   "' is not supported (steerd supports ByteLevel and a "
                                   "Sequence of Split ending in ByteLevel)"));
  }
  ASSIGN_OR_RETURN(const Json* list, file.RequiredOf(*pre_tokenizer, "pre_tokenizer",
                                                     "pretokenizers", Json::value_t::array));
  for (size_t i = 0; i < list->size(); ++i) {
    const Json& item = (*list)[i];
    const std::string path = IndexPath("pre_tokenizer.pretokenizers", i);
    ASSIGN_OR_RETURN(const std::string item_type, file.Type(item, path));
    const bool last = i + 1 == list->size();
    if (item_type == "ByteLevel" && last) return ParseByteLevel(file, item, path);
    if (item_type != "Split") {
      return file.Error(path, absl::StrCat("pre-tokenizer type '", item_type,
                                           "' is not supported here (steerd supports Split "
                                           "steps followed by one ByteLevel)"));
    }
    ASSIGN_OR_RETURN(const std::string behavior, file.String(item, path, "behavior"));
    if (behavior != "Isolated") {
      return file.Error(FieldPath(path, "behavior"),
                        absl::StrCat("split behavior '", behavior,
                                     "' is not supported (steerd supports Isolated)"));
    }
    ASSIGN_OR_RETURN(const bool invert, file.Bool(item, path, "invert", false));
    if (invert) return file.Error(FieldPath(path, "invert"), "inverted splits are not supported");
    const std::string pattern_path = FieldPath(path, "pattern");
    ASSIGN_OR_RETURN(const Json* pattern,
                     file.RequiredOf(item, path, "pattern", Json::value_t::object));
    const Json* regex = JsonFile::Optional(*pattern, "Regex");
    const Json* literal = JsonFile::Optional(*pattern, "String");
    const Json* text = regex != nullptr ? regex : literal;
    if (text == nullptr || !text->is_string() || text->get<std::string>().empty()) {
      return file.Error(pattern_path, "expected {\"Regex\": \"...\"} or {\"String\": \"...\"}");
    }
    PreTokenizerStep step;
    ASSIGN_OR_RETURN(step.regex, SplitRegex::Compile(text->get<std::string>(), regex == nullptr,
                                                     file, pattern_path));
    pre_tokenizer_.push_back(std::move(step));
  }
  return file.Error("pre_tokenizer.pretokenizers",
                    "byte-level BPE needs the sequence to end with a ByteLevel pre-tokenizer");
}

absl::Status BpeTokenizer::ParseByteLevel(const JsonFile& file, const Json& byte_level,
                                          absl::string_view path) {
  // Missing flags take Hugging Face's ByteLevel defaults.
  PreTokenizerStep step;
  ASSIGN_OR_RETURN(step.add_prefix_space, file.Bool(byte_level, path, "add_prefix_space", true));
  ASSIGN_OR_RETURN(const bool use_regex, file.Bool(byte_level, path, "use_regex", true));
  if (use_regex) {
    ASSIGN_OR_RETURN(step.regex, SplitRegex::Compile(kGpt2Pattern, /*literal=*/false, file, path));
  }
  pre_tokenizer_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePostProcessor(const JsonFile& file, const Json& processor,
                                              absl::string_view path) {
  ASSIGN_OR_RETURN(const std::string type, file.Type(processor, path));
  // A ByteLevel post-processor only trims offsets, which steerd does not report.
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "TemplateProcessing") return ParseTemplate(file, processor, path);
  if (type == "Sequence") {
    const std::string list_path = FieldPath(path, "processors");
    ASSIGN_OR_RETURN(const Json* list,
                     file.RequiredOf(processor, path, "processors", Json::value_t::array));
    for (size_t i = 0; i < list->size(); ++i) {
      RETURN_IF_ERROR(ParsePostProcessor(file, (*list)[i], IndexPath(list_path, i)));
    }
    return absl::OkStatus();
  }
  return file.Error(path, absl::StrCat("post-processor type '", type,
                                       "' is not supported (steerd supports ByteLevel, "
                                       "TemplateProcessing and Sequence)"));
}

absl::Status BpeTokenizer::ParseTemplate(const JsonFile& file, const Json& processor,
                                         absl::string_view path) {
  ASSIGN_OR_RETURN(const Json* single,
                   file.RequiredOf(processor, path, "single", Json::value_t::array));
  const Json* special_tokens = JsonFile::Optional(processor, "special_tokens");
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
  bool seen_sequence = false;
  for (size_t i = 0; i < single->size(); ++i) {
    const Json& piece = (*single)[i];
    const std::string piece_path = IndexPath(FieldPath(path, "single"), i);
    if (!piece.is_object()) return file.Error(piece_path, "expected object");
    if (const Json* sequence = JsonFile::Optional(piece, "Sequence")) {
      ASSIGN_OR_RETURN(const std::string id, file.String(*sequence, piece_path, "id"));
      if (id != "A" || seen_sequence) {
        return file.Error(piece_path, "the single template must hold the sequence $A once");
      }
      seen_sequence = true;
      continue;
    }
    const Json* special = JsonFile::Optional(piece, "SpecialToken");
    if (special == nullptr) return file.Error(piece_path, "expected SpecialToken or Sequence");
    const std::string special_path = FieldPath(piece_path, "SpecialToken");
    ASSIGN_OR_RETURN(const std::string name, file.String(*special, special_path, "id"));
    const Json* entry =
        special_tokens == nullptr ? nullptr : JsonFile::Optional(*special_tokens, name);
    if (entry == nullptr || !entry->is_object()) {
      return file.Error(FieldPath(path, "special_tokens"),
                        absl::StrCat("no entry for '", name, "'"));
    }
    const std::string entry_path = FieldPath(FieldPath(path, "special_tokens"), name);
    ASSIGN_OR_RETURN(const Json* ids,
                     file.RequiredOf(*entry, entry_path, "ids", Json::value_t::array));
    for (size_t k = 0; k < ids->size(); ++k) {
      ASSIGN_OR_RETURN(const int32_t id,
                       file.Id((*ids)[k], IndexPath(FieldPath(entry_path, "ids"), k)));
      if (id >= vocab_size() || token_kinds_[id] == TokenKind::kUnassigned) {
        return file.Error(entry_path, absl::StrCat("token id ", id, " is not in the vocabulary"));
      }
      (seen_sequence ? suffix : prefix).push_back(id);
    }
  }
  if (!seen_sequence) return file.Error(FieldPath(path, "single"), "the template lacks $A");
  // Processors in a Sequence apply in order, each wrapping the previous result.
  prefix_ids_.insert(prefix_ids_.begin(), prefix.begin(), prefix.end());
  suffix_ids_.insert(suffix_ids_.end(), suffix.begin(), suffix.end());
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseDecoder(const JsonFile& file, const Json& root) {
  const Json* decoder = JsonFile::Optional(root, "decoder");
  if (decoder == nullptr) {
    return file.Error("decoder", "missing: byte-level BPE needs a ByteLevel decoder");
  }
  ASSIGN_OR_RETURN(const std::string type, file.Type(*decoder, "decoder"));
  if (type != "ByteLevel") {
    return file.Error("decoder", absl::StrCat("decoder type '", type,
                                              "' is not supported (steerd supports ByteLevel)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<int32_t>> BpeTokenizer::ConfigTokenId(const JsonFile& file,
                                                                   const Json& config,
                                                                   absl::string_view key) const {
  const Json* value = JsonFile::Optional(config, key);
  if (value == nullptr) return std::optional<int32_t>();
  std::string token;
  if (value->is_string()) {
    token = value->get<std::string>();
  } else if (value->is_object()) {
    // An AddedToken object, as transformers saves it.
    ASSIGN_OR_RETURN(token, file.String(*value, key, "content"));
  } else {
    return file.Error(
        key, absl::StrCat("expected a string or {\"content\": ...}, got ", value->type_name()));
  }
  std::optional<int32_t> id = TokenToId(token);
  if (!id.has_value()) {
    return file.Error(key, absl::StrCat("token '", token, "' is not in the vocabulary"));
  }
  return id;
}

absl::Status BpeTokenizer::ParseConfig(const JsonFile& file, const Json& config) {
  ASSIGN_OR_RETURN(bos_token_id_, ConfigTokenId(file, config, "bos_token"));
  ASSIGN_OR_RETURN(eos_token_id_, ConfigTokenId(file, config, "eos_token"));
  if (const Json* chat_template = JsonFile::Optional(config, "chat_template")) {
    if (chat_template->is_string()) {
      chat_template_ = chat_template->get<std::string>();
    } else if (chat_template->is_array()) {
      // Several named templates: transformers uses the one named "default".
      for (size_t i = 0; i < chat_template->size(); ++i) {
        const Json& entry = (*chat_template)[i];
        const std::string path = IndexPath("chat_template", i);
        if (!entry.is_object()) {
          return file.Error(path, "expected {\"name\": ..., \"template\": ...}");
        }
        ASSIGN_OR_RETURN(const std::string name, file.String(entry, path, "name"));
        if (name != "default") continue;
        ASSIGN_OR_RETURN(chat_template_, file.String(entry, path, "template"));
      }
    } else {
      return file.Error("chat_template",
                        absl::StrCat("expected string or array, got ", chat_template->type_name()));
    }
  }
  ASSIGN_OR_RETURN(clean_up_tokenization_spaces_,
                   file.Bool(config, "", "clean_up_tokenization_spaces", false));
  // transformers' Llama tokenizers rebuild the post-processor from add_bos_token; the
  // early Llama 3 tokenizer.json leaves BOS out of its own.
  ASSIGN_OR_RETURN(const bool add_bos_token, file.Bool(config, "", "add_bos_token", false));
  if (add_bos_token) {
    if (!bos_token_id_.has_value()) return file.Error("add_bos_token", "true, but no bos_token");
    if (prefix_ids_.empty() || prefix_ids_.front() != *bos_token_id_) {
      prefix_ids_.insert(prefix_ids_.begin(), *bos_token_id_);
    }
  }
  return absl::OkStatus();
}

std::optional<int32_t> BpeTokenizer::VocabId(absl::string_view token) const {
  if (std::optional<std::string> bytes = tokenizer_text::ByteLevelToBytes(token)) {
    auto it = vocab_.find(*bytes);
    if (it != vocab_.end()) return it->second;
    return std::nullopt;
  }
  auto it = unmapped_vocab_.find(token);
  if (it != unmapped_vocab_.end()) return it->second;
  return std::nullopt;
}

std::optional<int32_t> BpeTokenizer::TokenToId(absl::string_view token) const {
  auto it = added_ids_.find(token);
  if (it != added_ids_.end()) return it->second;
  return VocabId(token);
}

absl::Status BpeTokenizer::CheckId(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token id ", id, " is out of range [0, ", vocab_size(), ")"));
  }
  if (token_kinds_[id] == TokenKind::kUnassigned) {
    return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is not assigned"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(absl::string_view text,
                                                          bool add_special_tokens) const {
  RETURN_IF_ERROR(tokenizer_text::ValidateUtf8(text));
  EncodeScratch scratch;
  scratch.match_data.reset(pcre2_match_data_create(/*ovecsize=*/1, /*gcontext=*/nullptr));
  if (scratch.match_data == nullptr) return absl::ResourceExhaustedError("out of memory");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 4 + prefix_ids_.size() + suffix_ids_.size() + 1);
  if (add_special_tokens) ids = prefix_ids_;
  RETURN_IF_ERROR(SplitText(
      text, scratch.match_data.get(), [&](const AddedToken& token) { ids.push_back(token.id); },
      [&](absl::string_view word) { EncodeWord(word, scratch, &ids); }));
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

absl::StatusOr<std::vector<std::string>> BpeTokenizer::PreTokenize(absl::string_view text) const {
  RETURN_IF_ERROR(tokenizer_text::ValidateUtf8(text));
  MatchData match_data(pcre2_match_data_create(/*ovecsize=*/1, /*gcontext=*/nullptr));
  if (match_data == nullptr) return absl::ResourceExhaustedError("out of memory");
  std::vector<std::string> words;
  RETURN_IF_ERROR(SplitText(
      text, match_data.get(), [](const AddedToken&) {},
      [&words](absl::string_view word) { words.emplace_back(word); }));
  return words;
}

absl::Status BpeTokenizer::SplitText(absl::string_view text, pcre2_match_data* match_data,
                                     AddedTokenFn on_token, WordFn on_word) const {
  return raw_matcher_.Split(
      text, [&](const AddedToken* token, absl::string_view piece) -> absl::Status {
        if (token != nullptr) {
          on_token(*token);
          return absl::OkStatus();
        }
        return SplitBetweenAddedTokens(piece, match_data, on_token, on_word);
      });
}

absl::Status BpeTokenizer::SplitBetweenAddedTokens(absl::string_view text,
                                                   pcre2_match_data* match_data,
                                                   AddedTokenFn on_token, WordFn on_word) const {
  std::string normalized;
  if (nfc_ && !tokenizer_text::IsAscii(text)) {
    RETURN_IF_ERROR(tokenizer_text::NormalizeNfc(text, &normalized));
    text = normalized;
  }
  if (normalized_matcher_.empty()) return SplitWords(text, 0, match_data, on_word);
  return normalized_matcher_.Split(
      text, [&](const AddedToken* token, absl::string_view piece) -> absl::Status {
        if (token != nullptr) {
          on_token(*token);
          return absl::OkStatus();
        }
        return SplitWords(piece, 0, match_data, on_word);
      });
}

absl::Status BpeTokenizer::SplitWords(absl::string_view piece, size_t step,
                                      pcre2_match_data* match_data, WordFn on_word) const {
  // Hugging Face drops empty pieces before any later step sees them.
  if (piece.empty()) return absl::OkStatus();
  if (step == pre_tokenizer_.size()) {
    on_word(piece);
    return absl::OkStatus();
  }
  const PreTokenizerStep& stage = pre_tokenizer_[step];
  std::string prefixed;
  if (stage.add_prefix_space && piece[0] != ' ') {
    prefixed = absl::StrCat(" ", piece);
    piece = prefixed;
  }
  if (stage.regex == nullptr) return SplitWords(piece, step + 1, match_data, on_word);
  // Behavior "Isolated": every match and every gap between matches is a piece.
  size_t emitted = 0;
  size_t offset = 0;
  while (offset < piece.size()) {
    size_t start = 0;
    size_t end = 0;
    ASSIGN_OR_RETURN(const bool found, stage.regex->Find(piece, offset, match_data, &start, &end));
    if (!found) break;
    if (start == end) {
      // An empty match splits nothing; search again one character later, as
      // Oniguruma's iterator does.
      offset = start;
      if (offset < piece.size()) tokenizer_text::NextCodePoint(piece, &offset);
      continue;
    }
    if (emitted < start) {
      RETURN_IF_ERROR(
          SplitWords(piece.substr(emitted, start - emitted), step + 1, match_data, on_word));
    }
    RETURN_IF_ERROR(SplitWords(piece.substr(start, end - start), step + 1, match_data, on_word));
    emitted = offset = end;
  }
  return SplitWords(piece.substr(emitted), step + 1, match_data, on_word);
}

void BpeTokenizer::EncodeWord(absl::string_view word, EncodeScratch& scratch,
                              std::vector<int32_t>* ids) const {
  if (word.size() == 1) {
    const int32_t id = byte_ids_[static_cast<unsigned char>(word[0])];
    if (id >= 0) {
      ids->push_back(id);
      return;
    }
  }
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  MergeWord(word, scratch);
  ids->insert(ids->end(), scratch.word_ids.begin(), scratch.word_ids.end());
  if (cacheable) {
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() >= kMaxCachedWords) cache_.clear();
    cache_.emplace(word, scratch.word_ids);
  }
}

// Hugging Face's Word::merge_all: repeatedly apply the lowest-ranked merge (leftmost
// first on ties) through a heap of candidates over a linked list of symbols; stale
// candidates are recognised and skipped when popped.
void BpeTokenizer::MergeWord(absl::string_view word, EncodeScratch& scratch) const {
  using Candidate = EncodeScratch::Candidate;
  auto& symbols = scratch.symbols;
  symbols.clear();
  auto add_symbol = [&symbols](int32_t id) {
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, index + 1, false});
  };
  // A byte missing from the vocabulary becomes the unknown token (consecutive ones
  // fused when fuse_unk) or, without one, is dropped: Hugging Face's BPE::merge_word.
  bool unk_pending = false;
  for (char c : word) {
    const int32_t id = byte_ids_[static_cast<unsigned char>(c)];
    if (id >= 0) {
      if (unk_pending) add_symbol(*unk_id_);
      unk_pending = false;
      add_symbol(id);
    } else if (unk_id_.has_value()) {
      if (unk_pending && !fuse_unk_) add_symbol(*unk_id_);
      unk_pending = true;
    }
  }
  if (unk_pending) add_symbol(*unk_id_);
  if (!symbols.empty()) symbols.back().next = -1;

  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto& heap = scratch.heap;
  heap.clear();
  auto push_candidate = [&](int32_t pos, int32_t left, int32_t right) {
    auto it = merges_.find(PairKey(left, right));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, pos, it->second.merged_id});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    push_candidate(static_cast<int32_t>(i), symbols[i].id, symbols[i + 1].id);
  }
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    EncodeScratch::Symbol& current = symbols[top.pos];
    if (current.removed || current.next < 0) continue;
    EncodeScratch::Symbol& right = symbols[current.next];
    auto it = merges_.find(PairKey(current.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;
    current.id = top.merged_id;
    right.removed = true;
    current.next = right.next;
    if (current.next >= 0) symbols[current.next].prev = top.pos;
    if (current.prev >= 0) push_candidate(current.prev, symbols[current.prev].id, current.id);
    if (current.next >= 0) push_candidate(top.pos, current.id, symbols[current.next].id);
  }
  scratch.word_ids.clear();
  for (const EncodeScratch::Symbol& symbol : symbols) {
    if (!symbol.removed) scratch.word_ids.push_back(symbol.id);
  }
}

absl::StatusOr<std::string> BpeTokenizer::Decode(absl::Span<const int32_t> ids,
                                                 bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    RETURN_IF_ERROR(CheckId(id));
    if (skip_special_tokens && token_kinds_[id] == TokenKind::kSpecial) continue;
    bytes += token_bytes_[id];
  }
  std::string text;
  text.reserve(bytes.size());
  AppendUtf8Lossy(bytes, /*hold_incomplete_tail=*/false, &text);
  return text;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return contents.str();
}

bool FileExists(const std::string& path) { return std::ifstream(path).good(); }

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir) {
  ASSIGN_OR_RETURN(const std::string tokenizer_json, ReadFile(dir + "/tokenizer.json"));
  std::string config_json;
  if (const std::string path = dir + "/tokenizer_config.json"; FileExists(path)) {
    ASSIGN_OR_RETURN(config_json, ReadFile(path));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> tokenizer,
                   BpeTokenizer::Build(tokenizer_json, config_json, dir));
  // Newer checkpoints keep the template in its own file, which transformers prefers.
  if (const std::string path = dir + "/chat_template.jinja"; FileExists(path)) {
    ASSIGN_OR_RETURN(std::string chat_template, ReadFile(path));
    tokenizer->set_chat_template(std::move(chat_template));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(absl::string_view tokenizer_json,
                                                               absl::string_view config_json,
                                                               absl::string_view source) {
  ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> tokenizer,
                   BpeTokenizer::Build(tokenizer_json, config_json, source));
  return tokenizer;
}

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer* tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

absl::StatusOr<std::string> IncrementalDetokenizer::Push(int32_t id) {
  ASSIGN_OR_RETURN(const std::string bytes, tokenizer_->TokenBytes(id));
  if (skip_special_tokens_ && tokenizer_->IsSpecial(id)) return std::string();
  pending_ += bytes;
  std::string text;
  const size_t consumed = AppendUtf8Lossy(pending_, /*hold_incomplete_tail=*/true, &text);
  pending_.erase(0, consumed);
  return text;
}

std::string IncrementalDetokenizer::Finish() {
  std::string text;
  AppendUtf8Lossy(pending_, /*hold_incomplete_tail=*/false, &text);
  pending_.clear();
  return text;
}

std::string CleanUpTokenizationSpaces(absl::string_view text) {
  return absl::StrReplaceAll(text, {{" .", "."},
                                    {" ?", "?"},
                                    {" !", "!"},
                                    {" ,", ","},
                                    {" ' ", "'"},
                                    {" n't", "n't"},
                                    {" 'm", "'m"},
                                    {" 's", "'s"},
                                    {" 've", "'ve"},
                                    {" 're", "'re"}});
}

}  // namespace steerd
