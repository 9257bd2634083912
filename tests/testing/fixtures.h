// Helpers shared by the tests: where the reference fixtures live, reading their JSON,
// and turning nested JSON number arrays into tensors. A missing fixture fails the test
// (it never skips), since CI always has ../shared beside the checkout.
#ifndef STEERD_TESTS_TESTING_FIXTURES_H_
#define STEERD_TESTS_TESTING_FIXTURES_H_

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace steerd::testing {

std::string FixturePath(const std::string& relative);  // Under ../shared/fixtures.
std::string ReadFileOrDie(const std::string& path);
nlohmann::json ReadJsonOrDie(const std::string& path);

// Nested JSON arrays of numbers -> float32 tensor of the same shape. Values are
// parsed as doubles and cast to float, which restores float32 fixtures bit for bit.
at::Tensor JsonToFloatTensor(const nlohmann::json& values);
std::vector<int32_t> JsonToIds(const nlohmann::json& values);
at::Tensor IdsTensor(const std::vector<int32_t>& ids);  // [1, T] int64

// max |a - b| over all elements.
double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b);

}  // namespace steerd::testing

#endif  // STEERD_TESTS_TESTING_FIXTURES_H_
