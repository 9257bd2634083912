// `steerd init-model`: writes a random-weight model in Hugging Face layout (config.json,
// model.safetensors and a tokenizer), for tests and benchmarks of any model shape
// without downloading a checkpoint. The tokenizer is copied from a model, trained on a
// corpus (byte-level BPE, so a small model starts with a vocabulary fitted to its
// task), or one token per byte.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/cli/commands.h"
#include "server/model/bpe_trainer.h"
#include "server/model/chat_template.h"
#include "server/model/config.h"
#include "server/model/safetensors.h"
#include "server/model/tokenizer.h"
#include "server/model/tokenizer_text.h"
#include "server/model/torch_util.h"
#include "server/model/weights.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

namespace fs = std::filesystem;

constexpr double kInitStd = 0.02;  // Hugging Face's default initializer_range.
constexpr char kEndOfText[] = "<|endoftext|>";

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status WriteFile(const fs::path& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path.string(), ": write failed"));
  return absl::OkStatus();
}

// tokenizer.json as given and a tokenizer_config.json naming <|endoftext|> as EOS, with
// `chat_template` when not empty.
absl::Status WriteTokenizer(const fs::path& out_dir, const std::string& tokenizer_json,
                            int64_t model_max_length, const std::string& chat_template = "") {
  nlohmann::json config = {{"eos_token", kEndOfText},
                           {"bos_token", nullptr},
                           {"add_bos_token", false},
                           {"model_max_length", model_max_length},
                           {"tokenizer_class", "PreTrainedTokenizerFast"}};
  if (!chat_template.empty()) config["chat_template"] = chat_template;
  RETURN_IF_ERROR(WriteFile(out_dir / "tokenizer.json", tokenizer_json));
  return WriteFile(out_dir / "tokenizer_config.json", config.dump(2, ' ', false));
}

// A byte-level BPE tokenizer with one token per byte and no merges (ids 0-255) plus
// <|endoftext|> (id 256): every text round-trips, and the model's vocabulary only
// needs 257 entries.
absl::Status WriteByteTokenizer(const fs::path& out_dir, int64_t model_max_length) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[tokenizer_text::ByteToChar(b)] = b;
  nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       {{{"id", 256}, {"content", kEndOfText}, {"single_word", false}, {"lstrip", false},
         {"rstrip", false}, {"normalized", false}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
        {"use_regex", true}}},
      {"post_processor",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
        {"use_regex", true}}},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
        {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
        {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  return WriteTokenizer(out_dir, tokenizer.dump(2, ' ', false), model_max_length);
}

// The training texts of a JSONL corpus: per record, "prompt" followed by "solution",
// or by "answer" when there is no solution (the text a model is trained to produce).
absl::StatusOr<std::vector<std::string>> ReadCorpus(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<std::string> texts;
  std::string line;
  for (int64_t line_number = 1; std::getline(in, line); ++line_number) {
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    auto error = [&](absl::string_view message) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_number, ": ", message));
    };
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      return error(absl::StrCat("invalid JSON: ", e.what()));
    }
    if (!record.is_object()) return error("expected a JSON object");
    // A string field, or nullptr when the record lacks it.
    auto field = [&](const char* key) -> absl::StatusOr<const std::string*> {
      auto it = record.find(key);
      if (it == record.end() || it->is_null()) return nullptr;
      if (!it->is_string()) return error(absl::StrCat("\"", key, "\" is not a string"));
      return it->get_ptr<const std::string*>();
    };
    ASSIGN_OR_RETURN(const std::string* prompt, field("prompt"));
    if (prompt == nullptr) return error("missing \"prompt\"");
    ASSIGN_OR_RETURN(const std::string* solution, field("solution"));
    ASSIGN_OR_RETURN(const std::string* answer, field("answer"));
    const std::string* completion = solution != nullptr ? solution : answer;
    texts.push_back(completion != nullptr ? *prompt + *completion : *prompt);
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return texts;
}

// Trains a tokenizer of at most config->vocab_size tokens on the corpus at `path` and
// fits the config to it: vocab_size shrinks to the tokenizer's when training stops
// early (so no embedding row is unused) and EOS becomes <|endoftext|>. Returns the
// tokenizer.json text.
absl::StatusOr<std::string> TrainTokenizer(const std::string& path, const std::string& config_path,
                                           ModelConfig* config) {
  if (config->vocab_size < 257) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": vocab_size ", config->vocab_size,
                     " is too small for a byte-level tokenizer (256 bytes plus ", kEndOfText, ")"));
  }
  ASSIGN_OR_RETURN(const std::vector<std::string> texts, ReadCorpus(path));
  BpeTrainerOptions options;
  options.vocab_size = static_cast<int32_t>(
      std::min<int64_t>(config->vocab_size, std::numeric_limits<int32_t>::max()));
  options.special_tokens = {kEndOfText};
  absl::StatusOr<std::string> json = TrainByteLevelBpe(texts, options);
  if (!json.ok()) {
    return absl::Status(json.status().code(), absl::StrCat(path, ": ", json.status().message()));
  }
  ASSIGN_OR_RETURN(const std::unique_ptr<Tokenizer> tokenizer,
                   Tokenizer::FromJson(*json, /*config_json=*/"", path));
  if (tokenizer->vocab_size() > config->vocab_size) {
    return absl::InternalError(absl::StrCat("the tokenizer trained on ", path, " has ",
                                            tokenizer->vocab_size(), " tokens, more than ",
                                            config_path, "'s vocab_size ", config->vocab_size));
  }
  std::printf("trained a tokenizer of %d tokens on %zu texts\n", tokenizer->vocab_size(),
              texts.size());
  config->vocab_size = tokenizer->vocab_size();
  config->eos_token_ids = {*tokenizer->TokenToId(kEndOfText)};
  config->bos_token_id = std::nullopt;  // The tokenizer has none.
  return *std::move(json);
}

}  // namespace

absl::Status RunInitModelCommand(const ParsedFlags& args) {
  if (args.Has("tokenizer") && args.Has("tokenizer-corpus")) {
    return absl::InvalidArgumentError(
        "--tokenizer and --tokenizer-corpus are mutually exclusive: copy a tokenizer or train "
        "one");
  }
  ASSIGN_OR_RETURN(std::string config_path, args.Required("config"));
  ASSIGN_OR_RETURN(std::string out, args.Required("out"));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  const std::string dtype_name = args.Get("dtype", "bf16");
  ASSIGN_OR_RETURN(std::string config_text, ReadFile(config_path));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_text, config_path));

  at::ScalarType dtype;
  if (dtype_name == "bf16" || dtype_name == "bfloat16") {
    dtype = at::kBFloat16;
    config.torch_dtype = "bfloat16";
  } else if (dtype_name == "f32" || dtype_name == "float32") {
    dtype = at::kFloat;
    config.torch_dtype = "float32";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype '", dtype_name, "' is not one of f32, bf16"));
  }
  // Trained before the weights are made, since it can shrink the vocabulary.
  std::string trained_tokenizer;
  if (args.Has("tokenizer-corpus")) {
    ASSIGN_OR_RETURN(trained_tokenizer,
                     TrainTokenizer(args.Get("tokenizer-corpus", ""), config_path, &config));
  } else if (!args.Has("tokenizer")) {
    if (config.vocab_size < 257) {
      return absl::InvalidArgumentError(absl::StrCat(
          config_path, ": vocab_size ", config.vocab_size,
          " is too small for the byte-level tokenizer (257 tokens); pass --tokenizer DIR or "
          "--tokenizer-corpus FILE.jsonl"));
    }
    if (config.eos_token_ids.empty()) config.eos_token_ids = {256};
  }

  std::error_code error;
  fs::create_directories(out, error);
  if (error) {
    return absl::InternalError(absl::StrCat(out, ": cannot create: ", error.message()));
  }

  // Tensors are generated in module order from one seeded generator, so a seed names
  // one model.
  at::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  std::vector<at::Tensor> keep_alive;
  std::vector<TensorToWrite> tensors;
  ASSIGN_OR_RETURN(DType file_dtype, FromScalarType(dtype));
  RETURN_IF_ERROR(CatchTorchErrors("initialising weights", [&]() -> absl::Status {
    for (const auto& [name, shape] : ExpectedWeightShapes(config)) {
      at::Tensor t;
      const bool is_norm = name.find("norm") != std::string::npos;
      const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
      if (is_norm) {
        t = at::ones(shape, at::kFloat);
      } else if (is_bias) {
        t = at::zeros(shape, at::kFloat);
      } else {
        t = at::normal(0.0, kInitStd, shape, generator);
      }
      t = t.to(dtype).contiguous();
      tensors.push_back({name, file_dtype, shape, t.data_ptr()});
      keep_alive.push_back(std::move(t));
    }
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(
      WriteSafetensors((fs::path(out) / "model.safetensors").string(), tensors, {{"format", "pt"}}));
  RETURN_IF_ERROR(WriteFile(fs::path(out) / "config.json", ModelConfigToJson(config)));

  if (args.Has("tokenizer")) {
    const fs::path from = args.Get("tokenizer", "");
    for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
      if (!fs::exists(from / file)) {
        if (std::string(file) == "tokenizer.json") {
          return absl::NotFoundError(absl::StrCat(from.string(), ": no tokenizer.json"));
        }
        continue;
      }
      fs::copy_file(from / file, fs::path(out) / file, fs::copy_options::overwrite_existing,
                    error);
      if (error) {
        return absl::InternalError(absl::StrCat("copying ", file, ": ", error.message()));
      }
      // Sources may be read-only (a fixture); the model folder's copy is the user's.
      fs::permissions(fs::path(out) / file, fs::perms::owner_write, fs::perm_options::add, error);
    }
  } else if (args.Has("tokenizer-corpus")) {
    // The corpus is question/answer text, so such a model chats in steerd-qa.
    RETURN_IF_ERROR(WriteTokenizer(out, trained_tokenizer, config.max_position_embeddings,
                                   kSteerdQaChatTemplate));
  } else {
    RETURN_IF_ERROR(WriteByteTokenizer(out, config.max_position_embeddings));
  }
  int64_t params = 0;
  for (const auto& t : keep_alive) params += t.numel();
  std::printf("wrote %s: %lld parameters (%s)\n", out.c_str(), static_cast<long long>(params),
              config.torch_dtype.c_str());
  return absl::OkStatus();
}

}  // namespace steerd
