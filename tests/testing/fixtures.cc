#include "tests/testing/fixtures.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace steerd::testing {
namespace {

void Flatten(const nlohmann::json& values, std::vector<int64_t>* shape, size_t depth,
             std::vector<float>* out) {
  if (!values.is_array()) {
    out->push_back(static_cast<float>(values.get<double>()));
    return;
  }
  if (shape->size() <= depth) shape->push_back(static_cast<int64_t>(values.size()));
  for (const auto& v : values) Flatten(v, shape, depth + 1, out);
}

}  // namespace

std::string FixturePath(const std::string& relative) {
  return std::string(STEERD_FIXTURES_DIR) + "/" + relative;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "missing test input %s\n", path.c_str());
    std::abort();
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

nlohmann::json ReadJsonOrDie(const std::string& path) {
  return nlohmann::json::parse(ReadFileOrDie(path));
}

at::Tensor JsonToFloatTensor(const nlohmann::json& values) {
  std::vector<int64_t> shape;
  std::vector<float> flat;
  Flatten(values, &shape, 0, &flat);
  return at::tensor(flat, at::TensorOptions().dtype(at::kFloat)).view(shape);
}

std::vector<int32_t> JsonToIds(const nlohmann::json& values) {
  std::vector<int32_t> ids;
  for (const auto& v : values) ids.push_back(v.get<int32_t>());
  return ids;
}

at::Tensor IdsTensor(const std::vector<int32_t>& ids) {
  return at::tensor(std::vector<int64_t>(ids.begin(), ids.end()),
                    at::TensorOptions().dtype(at::kLong))
      .view({1, -1});
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>();
}

}  // namespace steerd::testing
