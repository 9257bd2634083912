// The model runtime beyond single-sequence parity: rows with different steering
// vectors sharing a batch, continuous-batching cache operations, bf16 compute, steering
// files, and every kind of bad input ending in a clear status instead of a crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <fstream>

#include "server/model/generator.h"
#include "server/model/safetensors.h"
#include "server/model/steering_file.h"
#include "server/model/torch_util.h"
#include "server/model/transformer.h"
#include "tests/testing/fixtures.h"

namespace steerd {
namespace {

namespace fs = std::filesystem;
using ::steerd::testing::FixturePath;
using ::steerd::testing::IdsTensor;
using ::steerd::testing::JsonToFloatTensor;
using ::steerd::testing::JsonToIds;
using ::steerd::testing::MaxAbsDiff;
using ::steerd::testing::ReadFileOrDie;
using ::steerd::testing::ReadJsonOrDie;
using ::testing::HasSubstr;

std::unique_ptr<Transformer> LoadOrDie(const std::string& dir, const std::string& dtype = "f32") {
  Transformer::Options options;
  options.model_dir = dir;
  options.dtype = dtype;
  options.device = "cpu";
  auto model = Transformer::Create(options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

absl::Status LoadStatus(const std::string& dir) {
  Transformer::Options options;
  options.model_dir = dir;
  options.device = "cpu";
  return Transformer::Create(options).status();
}

class ModelRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FixturePath("hf-reference/qwen2-tiny");
    model_ = LoadOrDie(dir_);
    ASSERT_NE(model_, nullptr);
    steering_ = JsonToFloatTensor(ReadJsonOrDie(dir_ + "/cases.json")["steering_vector"]["values"]);
  }

  // Greedy continuation of each request, generated together in one batch.
  std::vector<std::vector<int32_t>> GenerateBatch(const std::vector<GenerationRequest>& requests) {
    Generator generator(model_.get(), nullptr);
    auto results = generator.Generate(requests);
    EXPECT_TRUE(results.ok()) << results.status();
    std::vector<std::vector<int32_t>> tokens;
    if (results.ok()) {
      for (const auto& r : *results) tokens.push_back(r.tokens);
    }
    return tokens;
  }

  GenerationRequest Request(std::vector<int32_t> prompt, at::Tensor steering, int64_t max_new = 12,
                            double scale = 1.0) {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.steering = std::move(steering);
    r.steering_scale = scale;
    r.max_new_tokens = max_new;
    r.ignore_eos = true;
    return r;
  }

  // A scratch copy of the fixture model that a test may corrupt.
  std::string ScratchModel(const std::string& name) {
    const fs::path out = fs::path(::testing::TempDir()) / ("steerd_" + name);
    fs::remove_all(out);
    fs::create_directories(out);
    for (const char* file : {"config.json", "model.safetensors"}) {
      fs::copy_file(fs::path(dir_) / file, out / file);
    }
    return out.string();
  }

  std::string dir_;
  std::unique_ptr<Transformer> model_;
  at::Tensor steering_;  // [L, d]
};

TEST_F(ModelRuntimeTest, RowsWithDifferentVectorsMatchTheirSoloRuns) {
  const at::Tensor other = steering_.flip(1) * 2.0;
  const std::vector<GenerationRequest> requests = {
      Request({5, 17, 33, 2, 9}, steering_),
      Request({100, 7}, at::Tensor()),
      Request({44, 45, 46, 47, 48, 49, 50}, other),
      Request({5, 17, 33, 2, 9}, steering_, 12, /*scale=*/-1.5),
      Request({3}, at::Tensor(), 5),
  };
  const auto together = GenerateBatch(requests);
  ASSERT_EQ(together.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(together[i], GenerateBatch({requests[i]})[0]) << "request " << i;
  }
  // The steering actually changes the output, and the scale matters.
  EXPECT_NE(together[0], GenerateBatch({Request({5, 17, 33, 2, 9}, at::Tensor())})[0]);
  EXPECT_NE(together[0], together[3]);
}

// A trainer's vector (requires_grad) used for rollouts generates what its value does
// and receives no gradient.
TEST_F(ModelRuntimeTest, TrainableVectorGeneratesLikeItsValue) {
  at::Tensor trainable = steering_.clone().set_requires_grad(true);
  const auto with_grad = GenerateBatch({Request({5, 17, 33, 2, 9}, trainable)});
  const auto by_value = GenerateBatch({Request({5, 17, 33, 2, 9}, steering_)});
  EXPECT_EQ(with_grad, by_value);
  EXPECT_FALSE(trainable.grad().defined());
}

TEST_F(ModelRuntimeTest, UnsteeredRowIsBitIdenticalBesideSteeredRows) {
  const at::Tensor tokens = at::tensor(std::vector<int64_t>{11, 12, 13, 14, 21, 22, 23, 24},
                                       at::TensorOptions().dtype(at::kLong))
                                .view({2, 4});
  ForwardInput input;
  input.tokens = tokens;
  input.logits = ForwardInput::Logits::kAll;
  auto plain = model_->Forward(input, nullptr);
  ASSERT_TRUE(plain.ok());
  auto batch = model_->MakeSteeringBatch({{steering_, 1.0}, {at::Tensor(), 1.0}});
  ASSERT_TRUE(batch.ok());
  input.steering = *batch;
  auto mixed = model_->Forward(input, nullptr);
  ASSERT_TRUE(mixed.ok());
  EXPECT_TRUE(at::equal((*plain)[1], (*mixed)[1]));
  EXPECT_GT(MaxAbsDiff((*plain)[0], (*mixed)[0]), 1e-3);
  // And the same row alone, without any steering support in play, within float noise.
  ForwardInput solo;
  solo.tokens = tokens.narrow(0, 1, 1);
  solo.logits = ForwardInput::Logits::kAll;
  auto alone = model_->Forward(solo, nullptr);
  ASSERT_TRUE(alone.ok());
  EXPECT_LE(MaxAbsDiff((*alone)[0], (*mixed)[1]), 1e-5);
}

TEST_F(ModelRuntimeTest, NoSteeringBatchIsUndefined) {
  auto batch = model_->MakeSteeringBatch({{at::Tensor(), 1.0}, {at::Tensor(), 2.0}});
  ASSERT_TRUE(batch.ok());
  EXPECT_FALSE(batch->defined());
}

// Continuous batching: a sequence prefilled on its own joins a running batch whose rows
// are at other lengths, another leaves, and every row still decodes as it would alone.
TEST_F(ModelRuntimeTest, CacheRowsCanJoinAndLeaveBetweenSteps) {
  const std::vector<std::vector<int32_t>> prompts = {{5, 17, 33, 2, 9}, {100, 7}, {44, 45, 46}};
  std::vector<std::vector<int32_t>> expected;
  for (const auto& p : prompts) expected.push_back(GenerateBatch({Request(p, at::Tensor(), 8)})[0]);

  auto step = [&](KvCache& cache, const std::vector<int32_t>& tokens) {
    ForwardInput input;
    input.tokens = at::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()),
                              at::TensorOptions().dtype(at::kLong))
                       .view({static_cast<int64_t>(tokens.size()), 1});
    auto logits = model_->Forward(input, &cache);
    EXPECT_TRUE(logits.ok()) << logits.status();
    const at::Tensor ids = logits->argmax(-1);
    std::vector<int32_t> out;
    for (int64_t b = 0; b < ids.size(0); ++b) out.push_back(ids[b].item<int32_t>());
    return out;
  };
  auto prefill = [&](const std::vector<int32_t>& prompt) {
    KvCache cache = model_->NewCache(1, 4);
    ForwardInput input;
    input.tokens = IdsTensor(prompt);
    auto logits = model_->Forward(input, &cache);
    EXPECT_TRUE(logits.ok());
    return std::make_pair(std::move(cache), logits->argmax(-1)[0].item<int32_t>());
  };

  std::vector<std::vector<int32_t>> got(prompts.size());
  auto [batch, first0] = prefill(prompts[0]);
  got[0].push_back(first0);
  std::vector<int32_t> next = step(batch, {first0});  // Row 0 is one step ahead.
  got[0].push_back(next[0]);
  for (size_t joiner : {size_t{1}, size_t{2}}) {
    auto [cache, first] = prefill(prompts[joiner]);
    ASSERT_TRUE(batch.AppendRows(std::move(cache)).ok());
    got[joiner].push_back(first);
  }
  std::vector<size_t> rows = {0, 1, 2};
  for (int s = 0; s < 6; ++s) {
    std::vector<int32_t> last;
    for (size_t r : rows) last.push_back(got[r].back());
    next = step(batch, last);
    for (size_t i = 0; i < rows.size(); ++i) got[rows[i]].push_back(next[i]);
    if (s == 2) {  // Row 1 leaves.
      ASSERT_TRUE(batch.SelectRows({0, 2}).ok());
      rows = {0, 2};
    }
  }
  for (size_t r = 0; r < prompts.size(); ++r) {
    const size_t n = got[r].size();
    EXPECT_EQ(got[r], std::vector<int32_t>(expected[r].begin(), expected[r].begin() + n))
        << "row " << r;
  }
  EXPECT_FALSE(batch.SelectRows({5}).ok());
}

TEST_F(ModelRuntimeTest, Bf16ComputeStaysCloseToFloat32) {
  auto bf16 = LoadOrDie(dir_, "bf16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->dtype(), at::kBFloat16);
  ForwardInput input;
  input.tokens = IdsTensor({5, 17, 33, 2, 9, 100, 7});
  input.logits = ForwardInput::Logits::kAll;
  auto a = model_->Forward(input, nullptr);
  auto b = bf16->Forward(input, nullptr);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b->scalar_type(), at::kFloat);
  EXPECT_LE(MaxAbsDiff(*a, *b), 0.1);
}

// An F16 checkpoint: CPU has no float16 matmul in libtorch 1.13, so "auto" computes in
// float32 from the converted weights.
TEST_F(ModelRuntimeTest, Float16CheckpointLoadsAndComputesInFloat32) {
  auto original = SafetensorsFile::Open(dir_ + "/model.safetensors");
  ASSERT_TRUE(original.ok());
  std::vector<at::Tensor> keep;
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, view] : (*original)->tensors()) {
    at::Tensor half = at::from_blob(const_cast<void*>(view.data), view.shape, at::kFloat)
                          .to(at::kHalf)
                          .contiguous();
    tensors.push_back({name, DType::kF16, view.shape, half.data_ptr()});
    keep.push_back(half);
  }
  const std::string dir = ScratchModel("f16");
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors, {}).ok());
  Transformer::Options options;
  options.model_dir = dir;
  options.device = "cpu";
  auto f16 = Transformer::Create(options);
  ASSERT_TRUE(f16.ok()) << f16.status();
  EXPECT_EQ((*f16)->dtype(), at::kFloat);
  ForwardInput input;
  input.tokens = IdsTensor({5, 17, 33, 2, 9});
  input.logits = ForwardInput::Logits::kAll;
  auto a = model_->Forward(input, nullptr);
  auto b = (*f16)->Forward(input, nullptr);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LE(MaxAbsDiff(*a, *b), 5e-3);  // float16 rounding of N(0, 0.05) weights
  EXPECT_GT(MaxAbsDiff(*a, *b), 0.0);
}

// The bf16 decode path (fused kernels for the cached step) agrees with a full bf16
// forward over the whole sequence, for ragged rows, steered and not: 2 rows (the linear
// layers' row-at-a-time path) and 12 (its 16-token lanes).
TEST_F(ModelRuntimeTest, Bf16CachedDecodeAgreesWithFullForward) {
  auto bf16 = LoadOrDie(dir_, "bf16");
  ASSERT_NE(bf16, nullptr);
  for (int64_t rows : {2, 12}) {
    // Row b: a prompt of 2 + b % 5 tokens, left-padded to the longest; steered if even.
    std::vector<std::vector<int32_t>> prompts;
    std::vector<int32_t> next;
    int64_t longest = 0;
    for (int64_t b = 0; b < rows; ++b) {
      std::vector<int32_t> prompt;
      for (int64_t t = 0; t < 2 + b % 5; ++t) prompt.push_back(static_cast<int32_t>(5 + 17 * b + 3 * t));
      longest = std::max<int64_t>(longest, static_cast<int64_t>(prompt.size()));
      prompts.push_back(std::move(prompt));
      next.push_back(static_cast<int32_t>(40 + b));
    }
    ForwardInput input;
    std::vector<int64_t> padded;
    std::vector<SteeringRow> vectors;
    for (int64_t b = 0; b < rows; ++b) {
      const int64_t pad = longest - static_cast<int64_t>(prompts[b].size());
      input.left_pad.push_back(pad);
      padded.insert(padded.end(), pad, 0);
      padded.insert(padded.end(), prompts[b].begin(), prompts[b].end());
      vectors.push_back({b % 2 == 0 ? steering_ : at::Tensor(), 1.0});
    }
    input.tokens = at::tensor(padded, at::TensorOptions().dtype(at::kLong)).view({rows, longest});
    auto batch = bf16->MakeSteeringBatch(vectors);
    ASSERT_TRUE(batch.ok());
    input.steering = *batch;
    KvCache cache = bf16->NewCache(rows, longest + 1);
    ASSERT_TRUE(bf16->Forward(input, &cache).ok());
    input.left_pad.clear();
    input.tokens = at::tensor(std::vector<int64_t>(next.begin(), next.end()),
                              at::TensorOptions().dtype(at::kLong))
                       .view({rows, 1});
    auto step = bf16->Forward(input, &cache);  // [rows, V]
    ASSERT_TRUE(step.ok()) << step.status();
    for (int64_t b = 0; b < rows; ++b) {
      std::vector<int32_t> full = prompts[b];
      full.push_back(next[b]);
      ForwardInput whole;
      whole.tokens = IdsTensor(full);
      auto single = bf16->MakeSteeringBatch({vectors[b]});
      ASSERT_TRUE(single.ok());
      whole.steering = *single;
      auto logits = bf16->Forward(whole, nullptr);  // [1, V]
      ASSERT_TRUE(logits.ok());
      EXPECT_LE(MaxAbsDiff((*step)[b], (*logits)[0]), 0.05) << rows << " rows, row " << b;
    }
  }
}

// The float32 generation path (CPU kernels for the linears, RMSNorm and the cached
// step's attention): a decoding row's logits are the same bits alone or in a
// continuous batch of rows at other lengths, steered or not, and agree with a full
// cacheless forward over the whole sequence. Without AVX-512 generation uses
// libtorch's ops, which promise only closeness, and that is what is checked there.
TEST_F(ModelRuntimeTest, F32CachedDecodeRowsAreBitwiseIndependentOfTheBatch) {
  const bool kernels = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  const std::vector<std::vector<int32_t>> prompts = {
      {5, 17, 33, 2, 9}, {100, 7}, {44, 45, 46}, {3},          {8, 9, 10, 11, 12, 13, 14},
      {60, 61},          {70},     {1, 2, 3, 4}, {90, 91, 92}, {20, 21, 22, 23, 24, 25}};
  const int64_t rows = static_cast<int64_t>(prompts.size());
  auto steering_for = [&](int64_t row) { return row == 2 ? steering_ : at::Tensor(); };
  auto prefill = [&](int64_t row) {
    KvCache cache = model_->NewCache(1, 4);
    ForwardInput input;
    input.tokens = IdsTensor(prompts[row]);
    auto steering = model_->MakeSteeringBatch({{steering_for(row), 1.0}});
    EXPECT_TRUE(steering.ok());
    input.steering = *steering;
    auto logits = model_->Forward(input, &cache);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return cache;
  };
  auto step = [&](KvCache& cache, const std::vector<int64_t>& batch_rows,
                  const std::vector<int64_t>& tokens) {
    ForwardInput input;
    input.tokens = at::tensor(tokens, at::TensorOptions().dtype(at::kLong))
                       .view({static_cast<int64_t>(tokens.size()), 1});
    std::vector<SteeringRow> steering;
    for (int64_t r : batch_rows) steering.push_back({steering_for(r), 1.0});
    auto batch = model_->MakeSteeringBatch(steering);
    EXPECT_TRUE(batch.ok());
    input.steering = *batch;
    auto logits = model_->Forward(input, &cache);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return *logits;  // [rows, V]
  };
  // Each row decoded alone for three steps of fixed tokens.
  const std::vector<std::vector<int64_t>> tokens = {
      {41, 42, 43, 44, 45, 46, 47, 48, 49, 50},
      {51, 52, 53, 54, 55, 56, 57, 58, 59, 60},
      {61, 62, 63, 64, 65, 66, 67, 68, 69, 70}};
  std::vector<std::vector<at::Tensor>> alone(rows);
  for (int64_t r = 0; r < rows; ++r) {
    KvCache cache = prefill(r);
    for (const auto& step_tokens : tokens) {
      alone[r].push_back(step(cache, {r}, {step_tokens[r]})[0]);
    }
  }
  // The same rows in batches of every size from 2 to all of them (the matmul kernel's
  // 4x4, 8x2 and 16x1 tiles), each row at its own length.
  for (int64_t batch_size = 2; batch_size <= rows; ++batch_size) {
    std::vector<int64_t> batch_rows;
    KvCache batch = prefill(rows - 1);
    batch_rows.push_back(rows - 1);
    for (int64_t r = 0; r + 1 < batch_size; ++r) {
      ASSERT_TRUE(batch.AppendRows(prefill(r)).ok());
      batch_rows.push_back(r);
    }
    for (size_t s = 0; s < tokens.size(); ++s) {
      std::vector<int64_t> step_tokens;
      for (int64_t r : batch_rows) step_tokens.push_back(tokens[s][r]);
      const at::Tensor logits = step(batch, batch_rows, step_tokens);
      for (size_t i = 0; i < batch_rows.size(); ++i) {
        if (kernels) {
          EXPECT_TRUE(at::equal(logits[i], alone[batch_rows[i]][s]))
              << "row " << batch_rows[i] << " in a batch of " << batch_size << ", step " << s;
        } else {
          EXPECT_LE(MaxAbsDiff(logits[i], alone[batch_rows[i]][s]), 1e-4)
              << "row " << batch_rows[i] << " in a batch of " << batch_size << ", step " << s;
        }
      }
    }
  }
  // And the cached steps agree with a cacheless forward over the whole sequence.
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int32_t> full = prompts[r];
    for (const auto& step_tokens : tokens) full.push_back(static_cast<int32_t>(step_tokens[r]));
    ForwardInput whole;
    whole.tokens = IdsTensor(full);
    whole.logits = ForwardInput::Logits::kAll;
    auto steering = model_->MakeSteeringBatch({{steering_for(r), 1.0}});
    ASSERT_TRUE(steering.ok());
    whole.steering = *steering;
    auto logits = model_->Forward(whole, nullptr);  // [1, T, V]
    ASSERT_TRUE(logits.ok());
    // Step s fed the token at position prompt length + s.
    const int64_t prompt_length = static_cast<int64_t>(prompts[r].size());
    for (size_t s = 0; s < tokens.size(); ++s) {
      EXPECT_LE(MaxAbsDiff(alone[r][s], (*logits)[0][prompt_length + static_cast<int64_t>(s)]),
                1e-4)
          << "row " << r << ", step " << s;
    }
  }
}

TEST_F(ModelRuntimeTest, SteeringFileRoundTripsAndChecksTheModel) {
  const std::string path = ::testing::TempDir() + "/steerd_vector.safetensors";
  ASSERT_TRUE(SaveSteeringFile(path, steering_, model_->config(), "qwen2-tiny", {}).ok());
  auto loaded = LoadSteeringFile(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(at::equal(loaded->vector, steering_));
  EXPECT_EQ(loaded->metadata.at("format"), kSteeringFormat);
  EXPECT_EQ(loaded->metadata.at("model_fingerprint"), ModelFingerprint(model_->config()));
  EXPECT_TRUE(CheckSteeringMatchesModel(*loaded, model_->config()).ok());

  ModelConfig other = model_->config();
  other.num_layers = 4;
  EXPECT_EQ(CheckSteeringMatchesModel(*loaded, other).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(ModelRuntimeTest, SteeringFileWithoutMetadataIsAccepted) {
  const at::Tensor data = steering_.contiguous();
  auto bytes = SerializeSafetensors(
      {{"steering", DType::kF32, {data.size(0), data.size(1)}, data.data_ptr()}}, {});
  ASSERT_TRUE(bytes.ok());
  auto parsed = ParseSteeringFile(*bytes, "upload");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(CheckSteeringMatchesModel(*parsed, model_->config()).ok());
}

TEST_F(ModelRuntimeTest, BadSteeringFilesAreRejected) {
  struct Case {
    std::string name;
    at::Tensor tensor;
    std::string tensor_name;
    std::string expected;
  };
  at::Tensor nan = steering_.clone();
  nan[1][3] = std::numeric_limits<float>::quiet_NaN();
  at::Tensor inf = steering_.clone();
  inf[0][0] = std::numeric_limits<float>::infinity();
  const std::vector<Case> cases = {
      {"nan", nan, "steering", "non-finite value (nan) at [1, 3]"},
      {"inf", inf, "steering", "non-finite value (inf) at [0, 0]"},
      {"1-d", steering_.flatten(), "steering", "[num_layers, hidden_size]"},
      {"wrong name", steering_, "bias", "no tensor named \"steering\""},
      {"int dtype", steering_.to(at::kInt), "steering", "F32 or BF16 is required"},
  };
  for (const Case& c : cases) {
    const at::Tensor data = c.tensor.contiguous();
    auto dtype = c.tensor.scalar_type() == at::kInt ? DType::kI32 : DType::kF32;
    auto bytes = SerializeSafetensors(
        {{c.tensor_name, dtype, std::vector<int64_t>(data.sizes().begin(), data.sizes().end()),
          data.data_ptr()}},
        {});
    ASSERT_TRUE(bytes.ok());
    auto parsed = ParseSteeringFile(*bytes, "upload");
    ASSERT_FALSE(parsed.ok()) << c.name;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(c.expected)) << c.name;
  }
  // A model with other dimensions: FAILED_PRECONDITION at use.
  GenerationRequest wrong = Request({1, 2}, at::zeros({2, 64}));
  Generator generator(model_.get(), nullptr);
  EXPECT_EQ(generator.Generate({wrong}).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ModelRuntimeTest, BadRequestsAreClearErrors) {
  Generator generator(model_.get(), nullptr);
  struct Case {
    std::string name;
    GenerationRequest request;
    absl::StatusCode code;
    std::string expected;
  };
  std::vector<Case> cases;
  cases.push_back({"empty prompt", Request({}, at::Tensor()), absl::StatusCode::kInvalidArgument,
                   "prompt is empty"});
  cases.push_back({"id too large", Request({1, 320}, at::Tensor()),
                   absl::StatusCode::kInvalidArgument, "out of range"});
  cases.push_back({"negative id", Request({-1}, at::Tensor()), absl::StatusCode::kInvalidArgument,
                   "out of range"});
  cases.push_back({"zero new tokens", Request({1}, at::Tensor(), 0),
                   absl::StatusCode::kInvalidArgument, "max_new_tokens"});
  cases.push_back({"context overflow", Request(std::vector<int32_t>(500, 3), at::Tensor(), 20),
                   absl::StatusCode::kOutOfRange, "context overflow"});
  GenerationRequest hot = Request({1}, at::Tensor());
  hot.sampling.temperature = -1;
  cases.push_back({"negative temperature", hot, absl::StatusCode::kInvalidArgument, "temperature"});
  GenerationRequest top_p = Request({1}, at::Tensor());
  top_p.sampling.temperature = 1;
  top_p.sampling.top_p = 1.5;
  cases.push_back({"top_p above 1", top_p, absl::StatusCode::kInvalidArgument, "top_p"});
  GenerationRequest stop = Request({1}, at::Tensor());
  stop.stop_strings = {"x"};
  cases.push_back({"stop without tokenizer", stop, absl::StatusCode::kInvalidArgument,
                   "tokenizer"});
  cases.push_back({"nan scale", Request({1}, steering_, 4, std::nan("")),
                   absl::StatusCode::kInvalidArgument, "scale"});
  for (const Case& c : cases) {
    auto result = generator.Generate({Request({9, 9}, at::Tensor()), c.request});
    ASSERT_FALSE(result.ok()) << c.name;
    EXPECT_EQ(result.status().code(), c.code) << c.name << ": " << result.status();
    EXPECT_THAT(std::string(result.status().message()), HasSubstr(c.expected)) << c.name;
    EXPECT_THAT(std::string(result.status().message()), HasSubstr("request 1")) << c.name;
  }
  // The model still serves after all of them.
  EXPECT_EQ(GenerateBatch({Request({5, 17}, at::Tensor(), 3)})[0].size(), 3u);

  ForwardInput input;
  input.tokens = IdsTensor({1, 2, 3});
  input.left_pad = {3};
  EXPECT_EQ(model_->Forward(input, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  input.left_pad.clear();
  input.tokens = IdsTensor(std::vector<int32_t>(513, 1));
  EXPECT_EQ(model_->Forward(input, nullptr).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(ModelRuntimeTest, BadCheckpointsAreClearErrors) {
  {  // Missing folder.
    absl::Status s = LoadStatus("/nonexistent/steerd-model");
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  }
  {  // Truncated weights.
    const std::string dir = ScratchModel("truncated");
    fs::resize_file(fs::path(dir) / "model.safetensors", 100000);
    absl::Status s = LoadStatus(dir);
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.message()), HasSubstr("model.safetensors")) << s;
  }
  {  // Header length pointing past the end of the file.
    const std::string dir = ScratchModel("header");
    std::fstream f(fs::path(dir) / "model.safetensors", std::ios::in | std::ios::out |
                                                            std::ios::binary);
    const uint64_t huge = uint64_t{1} << 40;
    f.write(reinterpret_cast<const char*>(&huge), 8);
    f.close();
    absl::Status s = LoadStatus(dir);
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.message()), HasSubstr("model.safetensors")) << s;
  }
  {  // A tensor missing, and a tensor with the wrong shape.
    auto original = SafetensorsFile::Open(dir_ + "/model.safetensors");
    ASSERT_TRUE(original.ok());
    for (const std::string mode : {"missing", "shape"}) {
      std::vector<TensorToWrite> tensors;
      std::vector<int64_t> changed;
      for (const auto& [name, view] : (*original)->tensors()) {
        if (name == "model.layers.1.mlp.up_proj.weight") {
          if (mode == "missing") continue;
          changed = {view.shape[1], view.shape[0]};
          tensors.push_back({name, view.dtype, changed, view.data});
          continue;
        }
        tensors.push_back({name, view.dtype, view.shape, view.data});
      }
      const std::string dir = ScratchModel("tensor_" + mode);
      ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors, {}).ok());
      absl::Status s = LoadStatus(dir);
      EXPECT_FALSE(s.ok()) << mode;
      EXPECT_THAT(std::string(s.message()), HasSubstr("model.layers.1.mlp.up_proj.weight")) << s;
    }
  }
  {  // Unknown architecture and unsupported rope type, named by field.
    for (const auto& [from, to, expected] :
         std::vector<std::tuple<std::string, std::string, std::string>>{
             {"\"Qwen2ForCausalLM\"", "\"MistralForCausalLM\"", "MistralForCausalLM"},
             {"\"rope_scaling\": null", "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}",
              "yarn"}}) {
      const std::string dir = ScratchModel("config");
      std::string config = ReadFileOrDie(dir + "/config.json");
      const size_t at = config.find(from);
      ASSERT_NE(at, std::string::npos) << from;
      config.replace(at, from.size(), to);
      std::ofstream(dir + "/config.json", std::ios::trunc) << config;
      absl::Status s = LoadStatus(dir);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
      EXPECT_THAT(std::string(s.message()), HasSubstr(expected)) << s;
    }
  }
  {  // Sharded index naming a shard that does not exist.
    const fs::path dir = fs::path(::testing::TempDir()) / "steerd_missing_shard";
    fs::remove_all(dir);
    fs::create_directories(dir);
    const fs::path src = FixturePath("hf-reference/llama-tiny-bf16-sharded");
    for (const char* f : {"config.json", "model.safetensors.index.json",
                          "model-00001-of-00002.safetensors"}) {
      fs::copy_file(src / f, dir / f);
    }
    absl::Status s = LoadStatus(dir.string());
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.message()), HasSubstr("model-00002-of-00002.safetensors")) << s;
  }
}

// Weights copied into the huge-page arena compute exactly what the mapped file does,
// in f32 (no conversion) and bf16 (converted while copying), including the fused
// gate/up view that spans two tensors.
TEST_F(ModelRuntimeTest, HugePageWeightsMatchMappedWeights) {
  for (const std::string dtype : {"f32", "bf16"}) {
    std::vector<at::Tensor> logits;
    for (const std::string placement : {"mapped", "hugepages"}) {
      Transformer::Options options;
      options.model_dir = dir_;
      options.device = "cpu";
      options.dtype = dtype;
      options.weights = placement;
      auto model = Transformer::Create(options);
      ASSERT_TRUE(model.ok()) << model.status();
      ForwardInput input;
      input.tokens = IdsTensor({5, 17, 33, 2, 9, 100, 7});
      input.logits = ForwardInput::Logits::kAll;
      auto out = (*model)->Forward(input, nullptr);
      ASSERT_TRUE(out.ok()) << out.status();
      logits.push_back(*out);
    }
    EXPECT_TRUE(at::equal(logits[0], logits[1])) << dtype;
  }
  Transformer::Options options;
  options.model_dir = dir_;
  options.weights = "swap";
  EXPECT_EQ(Transformer::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelRuntimeTest, DeviceAndDtypeFlagsAreValidated) {
  Transformer::Options options;
  options.model_dir = dir_;
  options.device = "tpu";
  EXPECT_EQ(Transformer::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.device = "cpu";
  options.dtype = "f8";
  EXPECT_EQ(Transformer::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.dtype = "auto";
  auto model = Transformer::Create(options);
  ASSERT_TRUE(model.ok());
  EXPECT_EQ((*model)->dtype(), at::kFloat);  // The checkpoint's float32.
  options.dtype = "f16";  // No float16 matmul on CPU in libtorch 1.13.
  EXPECT_EQ(Transformer::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.dtype = "auto";
  options.device = "cuda";
  if (!at::hasCUDA()) {
    EXPECT_EQ(Transformer::Create(options).status().code(),
              absl::StatusCode::kFailedPrecondition);
  } else {
    EXPECT_TRUE(Transformer::Create(options).ok());
  }
}

// --threads 0: OMP_NUM_THREADS when it is a positive number, else the cores less the
// spare ones (at least one).
TEST(DefaultComputeThreadsTest, TakesOmpNumThreadsWhenSet) {
  const char* saved = std::getenv("OMP_NUM_THREADS");
  const std::string restore = saved != nullptr ? saved : "";
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  setenv("OMP_NUM_THREADS", "3", 1);
  EXPECT_EQ(DefaultComputeThreads(0), 3);
  EXPECT_EQ(DefaultComputeThreads(1), 3);
  for (const char* ignored : {"0", "-2", "many", ""}) {
    setenv("OMP_NUM_THREADS", ignored, 1);
    EXPECT_EQ(DefaultComputeThreads(0), std::max(1, cores)) << ignored;
  }
  unsetenv("OMP_NUM_THREADS");
  EXPECT_EQ(DefaultComputeThreads(0), std::max(1, cores));
  EXPECT_EQ(DefaultComputeThreads(1), std::max(1, cores - 1));
  EXPECT_EQ(DefaultComputeThreads(cores + 4), 1);
  if (saved != nullptr) setenv("OMP_NUM_THREADS", restore.c_str(), 1);
}

}  // namespace
}  // namespace steerd
