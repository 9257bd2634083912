#include "server/train/dataset.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace steerd {
namespace train {
namespace {

using ::testing::HasSubstr;

void ExpectSame(const std::vector<Example>& got, const std::vector<Example>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].prompt, want[i].prompt);
    EXPECT_EQ(got[i].answer, want[i].answer);
    EXPECT_EQ(got[i].solution, want[i].solution);
  }
}

TEST(DatasetTest, ParsesRecordsSkippingBlankLines) {
  const std::string text =
      "{\"prompt\": \"Q: 2+3\\nA:\", \"answer\": \"5\", \"solution\": \" \\\\boxed{5}\"}\r\n"
      "\n"
      "   \n"
      "{\"answer\": \"caf\xc3\xa9\", \"prompt\": \"Q: coffee?\\nA:\", \"id\": 7}\n";
  absl::StatusOr<std::vector<Example>> examples = ParseJsonl(text, "data.jsonl");
  ASSERT_TRUE(examples.ok()) << examples.status();
  ExpectSame(*examples,
             {{"Q: 2+3\nA:", "5", " \\boxed{5}"}, {"Q: coffee?\nA:", "caf\xc3\xa9", ""}});
}

TEST(DatasetTest, RejectsBadRecordsNamingTheLine) {
  struct Case {
    std::string line;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"{\"prompt\": \"p\", \"answer\": ", "not valid JSON"},
      {"[\"p\", \"a\"]", "expected a JSON object, got array"},
      {"\"p\"", "expected a JSON object, got string"},
      {"{\"answer\": \"a\"}", "missing \"prompt\""},
      {"{\"prompt\": 3, \"answer\": \"a\"}", "\"prompt\" must be a string, got number"},
      {"{\"prompt\": \"\", \"answer\": \"a\"}", "\"prompt\" is empty"},
      {"{\"prompt\": \"p\"}", "missing \"answer\""},
      {"{\"prompt\": \"p\", \"answer\": 5}", "\"answer\" must be a string, got number"},
      {"{\"prompt\": \"p\", \"answer\": \" \"}", "\"answer\" is blank"},
      {"{\"prompt\": \"p\", \"answer\": \"a\", \"solution\": null}",
       "\"solution\" must be a string, got null"},
      {"{\"prompt\": \"p\xff\", \"answer\": \"a\"}", "text is not valid UTF-8"},
  };
  for (const Case& c : cases) {
    const std::string text = "{\"prompt\": \"ok\", \"answer\": \"1\"}\n\n" + c.line + "\n";
    absl::StatusOr<std::vector<Example>> examples = ParseJsonl(text, "in.jsonl");
    EXPECT_EQ(examples.status().code(), absl::StatusCode::kInvalidArgument) << c.line;
    EXPECT_THAT(examples.status().message(), HasSubstr(absl::StrCat("in.jsonl:3: ", c.message)))
        << c.line;
  }
}

TEST(DatasetTest, EmptyDatasetIsAnError) {
  for (const char* text : {"", "\n", "  \n\r\n"}) {
    absl::StatusOr<std::vector<Example>> examples = ParseJsonl(text, "empty.jsonl");
    EXPECT_EQ(examples.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(examples.status().message(), "empty.jsonl: the dataset is empty");
  }
}

TEST(DatasetTest, ToJsonlOmitsEmptySolutions) {
  EXPECT_EQ(ToJsonl({{"Q: 1+1\nA:", "2", " \\boxed{2}"}, {"p\"q", "caf\xc3\xa9", ""}}),
            "{\"prompt\":\"Q: 1+1\\nA:\",\"answer\":\"2\",\"solution\":\" \\\\boxed{2}\"}\n"
            "{\"prompt\":\"p\\\"q\",\"answer\":\"caf\xc3\xa9\"}\n");
  // Invalid UTF-8 is replaced rather than making the output unreadable.
  EXPECT_EQ(ToJsonl({{"a\xff", "1", ""}}), "{\"prompt\":\"a\xef\xbf\xbd\",\"answer\":\"1\"}\n");
}

TEST(DatasetTest, WriteAndLoadRoundTrip) {
  const std::string path = ::testing::TempDir() + "/dataset_test_round_trip.jsonl";
  const std::vector<Example> examples = {{"Q: c=b, b=7. c?\nA:", "7", " \\boxed{7}"},
                                         {"Q: 4*3\nA:", "12", ""},
                                         {"multi\nline \xe2\x9c\x93", "yes", "tab\there"}};
  ASSERT_TRUE(WriteJsonl(path, {{"old", "contents", ""}}).ok());
  const absl::Status written = WriteJsonl(path, examples);  // Replaces the file.
  ASSERT_TRUE(written.ok()) << written;
  absl::StatusOr<std::vector<Example>> loaded = LoadJsonl(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSame(*loaded, examples);
  // Nothing is left beside it.
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(::testing::TempDir())) {
    files += entry.path().filename().string().rfind("dataset_test_round_trip", 0) == 0;
  }
  EXPECT_EQ(files, 1);
  std::filesystem::remove(path);
}

TEST(DatasetTest, LoadErrors) {
  EXPECT_EQ(LoadJsonl(::testing::TempDir() + "/no_such_dataset.jsonl").status().code(),
            absl::StatusCode::kNotFound);
  const std::string path = ::testing::TempDir() + "/dataset_test_bad.jsonl";
  std::ofstream(path) << "{\"prompt\": \"p\", \"answer\": \"a\"}\n{\"prompt\": \"p\"}\n";
  absl::StatusOr<std::vector<Example>> loaded = LoadJsonl(path);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(), HasSubstr(path + ":2: missing \"answer\""));
  std::filesystem::remove(path);
}

TEST(DatasetTest, WriteIntoMissingDirectoryFails) {
  const absl::Status status =
      WriteJsonl(::testing::TempDir() + "/no_such_dir/out.jsonl", {{"p", "a", ""}});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("no_such_dir/out.jsonl"));
}

}  // namespace
}  // namespace train
}  // namespace steerd
