#include "server/cli/args.h"

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace steerd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::set<std::string> kValueFlags = {"model", "steps", "lr", "ids", "name"};
const std::set<std::string> kBoolFlags = {"json", "verbose"};

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv) {
  return Args::Parse(argv, kValueFlags, kBoolFlags);
}

TEST(ArgsTest, ParsesSeparateAndInlineValues) {
  absl::StatusOr<Args> args = ParseArgs({"--model", "/m", "--steps=12", "--name="});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_TRUE(args->Has("model"));
  EXPECT_EQ(*args->Required("model"), "/m");
  EXPECT_EQ(*args->GetInt("steps", 0), 12);
  // "--name=" sets an empty value rather than consuming the next argument.
  EXPECT_TRUE(args->Has("name"));
  EXPECT_EQ(args->GetString("name", "fallback"), "");
}

TEST(ArgsTest, InlineValueKeepsLaterEqualsSigns) {
  absl::StatusOr<Args> args = ParseArgs({"--name=a=b"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->GetString("name", ""), "a=b");
}

TEST(ArgsTest, ValueMayLookLikeAFlag) {
  absl::StatusOr<Args> args = ParseArgs({"--name", "--json"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->GetString("name", ""), "--json");
  EXPECT_FALSE(args->Flag("json"));
}

TEST(ArgsTest, LaterValueWins) {
  absl::StatusOr<Args> args = ParseArgs({"--steps", "1", "--steps=2"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(*args->GetInt("steps", 0), 2);
}

TEST(ArgsTest, BoolFlags) {
  absl::StatusOr<Args> args = ParseArgs({"--json", "--model", "m"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_TRUE(args->Flag("json"));
  EXPECT_TRUE(args->Has("json"));
  EXPECT_FALSE(args->Flag("verbose"));
  EXPECT_FALSE(args->Has("verbose"));
}

TEST(ArgsTest, BoolFlagRejectsInlineValue) {
  absl::StatusOr<Args> args = ParseArgs({"--json=true"});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(args.status().message()), HasSubstr("--json takes no value"));
}

TEST(ArgsTest, EmptyArgvHasNothing) {
  absl::StatusOr<Args> args = ParseArgs({});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_FALSE(args->Has("model"));
  EXPECT_EQ(args->GetString("model", "default"), "default");
  EXPECT_EQ(*args->GetInt("steps", 7), 7);
  EXPECT_EQ(*args->GetDouble("lr", 0.5), 0.5);
}

TEST(ArgsTest, UnknownFlagIsAnError) {
  absl::StatusOr<Args> args = ParseArgs({"--modle", "m"});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(args.status().message()), HasSubstr("unknown flag --modle"));
}

TEST(ArgsTest, PositionalArgumentIsAnError) {
  absl::StatusOr<Args> args = ParseArgs({"model"});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(args.status().message()), HasSubstr("'model'"));

  args = ParseArgs({"-model", "m"});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ArgsTest, MissingValueIsAnError) {
  absl::StatusOr<Args> args = ParseArgs({"--json", "--model"});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(args.status().message()), HasSubstr("--model needs a value"));
}

TEST(ArgsTest, RequiredReportsTheMissingFlag) {
  absl::StatusOr<Args> args = ParseArgs({"--json"});
  ASSERT_TRUE(args.ok()) << args.status();
  absl::StatusOr<std::string> model = args->Required("model");
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("--model"));
}

TEST(ArgsTest, Numbers) {
  absl::StatusOr<Args> args = ParseArgs({"--steps", "-3", "--lr", "1e-3"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(*args->GetInt("steps", 0), -3);
  EXPECT_DOUBLE_EQ(*args->GetDouble("lr", 0), 1e-3);
}

TEST(ArgsTest, BadNumbersNameTheFlag) {
  absl::StatusOr<Args> args =
      ParseArgs({"--steps", "12x", "--lr", "fast", "--name", "99999999999999999999"});
  ASSERT_TRUE(args.ok()) << args.status();

  absl::StatusOr<int64_t> steps = args->GetInt("steps", 0);
  EXPECT_EQ(steps.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(steps.status().message()), HasSubstr("--steps"));
  EXPECT_THAT(std::string(steps.status().message()), HasSubstr("'12x'"));

  absl::StatusOr<double> lr = args->GetDouble("lr", 0);
  EXPECT_EQ(lr.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(lr.status().message()), HasSubstr("--lr"));

  // Out of int64 range is not silently clamped.
  EXPECT_EQ(args->GetInt("name", 0).status().code(), absl::StatusCode::kInvalidArgument);
  // A double where an int is expected is refused too.
  EXPECT_EQ(ParseArgs({"--steps", "1.5"})->GetInt("steps", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ArgsTest, IntLists) {
  absl::StatusOr<Args> args = ParseArgs({"--ids", "1,2, 3,-4"});
  ASSERT_TRUE(args.ok()) << args.status();
  absl::StatusOr<std::vector<int64_t>> ids = args->GetIntList("ids");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(1, 2, 3, -4));

  args = ParseArgs({"--ids=7"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(*args->GetIntList("ids"), ElementsAre(7));
}

TEST(ArgsTest, BadIntLists) {
  absl::StatusOr<Args> args = ParseArgs({"--ids", "1,x,3"});
  ASSERT_TRUE(args.ok()) << args.status();
  absl::StatusOr<std::vector<int64_t>> ids = args->GetIntList("ids");
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ids.status().message()), HasSubstr("'x'"));

  args = ParseArgs({"--ids", ""});
  ASSERT_TRUE(args.ok()) << args.status();
  ids = args->GetIntList("ids");
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ids.status().message()), HasSubstr("--ids is empty"));

  // An absent list is missing, not empty.
  args = ParseArgs({});
  ASSERT_TRUE(args.ok()) << args.status();
  ids = args->GetIntList("ids");
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ids.status().message()), HasSubstr("missing required flag --ids"));
}

}  // namespace
}  // namespace steerd
