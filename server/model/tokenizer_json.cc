// BpeTokenizer built from tokenizer.json and tokenizer_config.json (the model's vocab
// and merges, added tokens, normalizer, pre-tokenizer, post-processor, decoder, and the
// config's special tokens and chat template), and Tokenizer::Load / FromJson.
#include <cstdint>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "server/model/bpe_tokenizer.h"
#include "server/model/pretokenizer.h"
#include "server/model/tokenizer.h"
#include "server/model/tokenizer_json.h"
#include "server/model/tokenizer_text.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace tokenizer_internal {
namespace {

std::string FileLabel(absl::string_view source, absl::string_view file) {
  return source.empty() ? std::string(file) : absl::StrCat(source, "/", file);
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

}  // namespace tokenizer_internal

using tokenizer_internal::BpeTokenizer;
using tokenizer_internal::ReadFile;
using tokenizer_internal::FileExists;

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

}  // namespace steerd
