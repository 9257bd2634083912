// Vector references with a typed version (common.proto, "Vector names"): the string
// ("name" / "name@version") and the `version` field beside it in GenerateRequest's
// steering and the Get/Export/DeleteVector requests fold into the one reference the core
// takes, and every way of saying a version twice, or a bad one, is INVALID_ARGUMENT
// naming the fields involved. Also the parsing rules of server/engine/vector_ref.h that
// the folding builds on, and the field every invalid request names for programs
// (INVALID_FIELD). Torch-free: steerd_proto_convert and steerd_job_spec only.
#include "server/api/proto_convert.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "server/engine/vector_ref.h"
#include "server/util/error_details.h"
#include "tests/testing/invalid_field.h"

namespace steerd {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

TEST(VectorReferenceTest, ParsesNameAndNameAtVersion) {
  absl::StatusOr<VectorReference> ref = ParseVectorReference("tone", "vector");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->name, "tone");
  EXPECT_FALSE(ref->version.has_value());
  ref = ParseVectorReference("tone@12", "vector");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->name, "tone");
  EXPECT_EQ(ref->version, 12);
  EXPECT_EQ(ref->ToString(), "tone@12");
}

TEST(VectorReferenceTest, RejectsMalformedReferences) {
  for (const char* text : {"", "@1", "tone@", "tone@0", "tone@-1", "tone@+1", "tone@1x",
                           "tone@1@2", "-tone", "to ne", "tone@1234567890123456789"}) {
    const absl::StatusOr<VectorReference> ref = ParseVectorReference(text, "vector");
    EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(Message(ref.status()), HasSubstr("vector")) << text;
    // The field is named for programs too (google.rpc.BadRequest on the wire).
    const std::optional<ErrorDetails> details = GetErrorDetails(ref.status());
    ASSERT_TRUE(details.has_value()) << text;
    EXPECT_EQ(details->reason, "INVALID_FIELD") << text;
    ASSERT_EQ(details->field_violations.size(), 1u) << text;
    EXPECT_EQ(details->field_violations[0].field, "vector") << text;
  }
}

TEST(VectorReferenceTest, TypedVersionZeroLeavesTheStringAlone) {
  absl::StatusOr<VectorReference> ref =
      ParseVectorReference("tone", /*version=*/0, "vector", "version");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_FALSE(ref->version.has_value());
  ref = ParseVectorReference("tone@3", /*version=*/0, "vector", "version");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->version, 3);
}

TEST(VectorReferenceTest, TypedVersionSelectsThatVersionOfTheBareName) {
  absl::StatusOr<VectorReference> ref =
      ParseVectorReference("tone", /*version=*/7, "vector", "version");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->name, "tone");
  EXPECT_EQ(ref->version, 7);
  // Exactly what "tone@7" says.
  EXPECT_EQ(ref->ToString(), ParseVectorReference("tone@7", "vector")->ToString());
  ref = ParseVectorReference("tone", kMaxVectorVersion, "vector", "version");
  ASSERT_TRUE(ref.ok()) << ref.status();
  // The largest typed version still makes a reference the core can parse back.
  EXPECT_TRUE(ParseVectorReference(ref->ToString(), "vector").ok());
}

TEST(VectorReferenceTest, VersionGivenTwiceNamesBothFields) {
  // Even when the numbers agree: one request, one way to say the version.
  for (const char* text : {"tone@3", "tone@4", "tone@", "tone@x"}) {
    const absl::StatusOr<VectorReference> ref =
        ParseVectorReference(text, /*version=*/3, "steering.vector", "steering.version");
    EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(Message(ref.status()),
                AllOf(HasSubstr("steering.vector"), HasSubstr("steering.version")))
        << text;
  }
}

TEST(VectorReferenceTest, NegativeOrHugeTypedVersionIsInvalid) {
  for (int64_t version : {int64_t{-1}, std::numeric_limits<int64_t>::min(),
                          kMaxVectorVersion + 1, std::numeric_limits<int64_t>::max()}) {
    const absl::StatusOr<VectorReference> ref =
        ParseVectorReference("tone", version, "name", "version");
    EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument) << version;
    EXPECT_THAT(Message(ref.status()), HasSubstr("version " + std::to_string(version)));
  }
}

TEST(VectorReferenceTest, TypedVersionStillChecksTheName) {
  const absl::StatusOr<VectorReference> ref =
      ParseVectorReference("-tone", /*version=*/2, "name", "version");
  EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(ref.status()), HasSubstr("name must start with a letter or a digit"));
}

v1::GenerateRequest SteeredRequest(const std::string& vector, int64_t version) {
  v1::GenerateRequest request;
  request.set_model("tiny");
  request.set_prompt("Hi");
  request.mutable_steering()->set_vector(vector);
  request.mutable_steering()->set_version(version);
  return request;
}

TEST(GenerateConvertTest, SteeringVersionFoldsIntoTheReference) {
  absl::StatusOr<GenerateParams> params = FromProto(SteeredRequest("tone", 1));
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->vector, "tone@1");
  params = FromProto(SteeredRequest("tone@2", 0));
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->vector, "tone@2");
  params = FromProto(SteeredRequest("tone", 0));
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->vector, "tone");
}

TEST(GenerateConvertTest, BadSteeringVersionIsInvalid) {
  absl::StatusOr<GenerateParams> params = FromProto(SteeredRequest("tone@1", 1));
  EXPECT_EQ(params.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(params.status()),
              AllOf(HasSubstr("steering.vector"), HasSubstr("steering.version")));
  params = FromProto(SteeredRequest("tone", -2));
  EXPECT_EQ(params.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(params.status()), HasSubstr("steering.version -2"));
  // A version without a vector is not a way to ask for steering.
  params = FromProto(SteeredRequest("", 1));
  EXPECT_EQ(params.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(params.status()), HasSubstr("steering.vector is empty"));
}

TEST(GenerateConvertTest, NoSteeringMeansNoVector) {
  v1::GenerateRequest request;
  request.set_model("tiny");
  request.set_prompt("Hi");
  const absl::StatusOr<GenerateParams> params = FromProto(request);
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->vector, "");
}

v1::GenerateRequest WithMessages(
    std::initializer_list<std::pair<v1::ChatMessage::Role, std::string>> turns) {
  v1::GenerateRequest request;
  request.set_model("tiny");
  for (const auto& [role, content] : turns) {
    v1::ChatMessage* message = request.mutable_messages()->add_messages();
    message->set_role(role);
    message->set_content(content);
  }
  return request;
}

// Every invalid request field the conversions find is named for programs too
// (reason INVALID_FIELD, google.rpc.BadRequest), with the path a client would change.
TEST(ProtoConvertTest, InvalidRequestsNameTheirField) {
  v1::GenerateRequest no_input;
  no_input.set_model("tiny");
  const auto unknown_role = static_cast<v1::ChatMessage::Role>(9);
  v1::GetVectorRequest get;
  get.set_name("tone@4");
  get.set_version(4);
  const struct {
    std::string name;
    absl::Status status;
    std::string fragment;  // Part of the message, naming the field.
    std::string field;
  } cases[] = {
      {"no input", FromProto(no_input).status(), "no input", "input"},
      {"unspecified role",
       FromProto(WithMessages({{v1::ChatMessage::ROLE_UNSPECIFIED, "hi"}})).status(),
       "messages[0].role is unspecified", "messages[0].role"},
      {"unknown role",
       FromProto(WithMessages({{v1::ChatMessage::ROLE_USER, "hi"}, {unknown_role, "?"}}))
           .status(),
       "messages[1].role is unknown", "messages[1].role"},
      {"SYSTEM message not first",
       FromProto(WithMessages({{v1::ChatMessage::ROLE_USER, "2+2?"},
                               {v1::ChatMessage::ROLE_SYSTEM, "be brief"}}))
           .status(),
       "messages[1] is a SYSTEM message", "messages[1]"},
      {"empty steering vector", FromProto(SteeredRequest("", 1)).status(),
       "steering.vector is empty", "steering.vector"},
      {"steering version twice", FromProto(SteeredRequest("tone@1", 1)).status(),
       "steering.version is 1", "steering.vector"},
      {"negative steering version", FromProto(SteeredRequest("tone", -2)).status(),
       "steering.version -2", "steering.version"},
      {"vector version twice", ReferenceFromProto(get).status(), "version is 4", "name"},
      {"negative page_size", EffectivePageSize(-1, 50, 1000).status(),
       "page_size -1 must not be negative", "page_size"},
      {"page_token not base64", DecodePageToken("%%%", "").status(), "page_token is malformed",
       "page_token"},
      {"page_token of other filters",
       DecodePageToken(EncodePageToken("model=a", "tone", 1), "model=b").status(),
       "page_token is malformed or belongs to a request with different fields", "page_token"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(c.status.code(), absl::StatusCode::kInvalidArgument) << c.status;
    EXPECT_THAT(Message(c.status), HasSubstr(c.fragment));
    EXPECT_EQ(testing::InvalidField(c.status), c.field) << c.status;
  }
}

template <typename Request>
Request VectorRequest(const std::string& name, int64_t version) {
  Request request;
  request.set_name(name);
  request.set_version(version);
  return request;
}

// The three requests share the rules; a typed test keeps them from drifting apart.
template <typename Request>
class VectorRequestConvertTest : public ::testing::Test {};
using VectorRequests =
    ::testing::Types<v1::GetVectorRequest, v1::ExportVectorRequest, v1::DeleteVectorRequest>;
TYPED_TEST_SUITE(VectorRequestConvertTest, VectorRequests);

TYPED_TEST(VectorRequestConvertTest, FoldsTheVersionIn) {
  absl::StatusOr<std::string> ref = ReferenceFromProto(VectorRequest<TypeParam>("tone", 0));
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(*ref, "tone");
  ref = ReferenceFromProto(VectorRequest<TypeParam>("tone@4", 0));
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(*ref, "tone@4");
  ref = ReferenceFromProto(VectorRequest<TypeParam>("tone", 4));
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(*ref, "tone@4");
}

TYPED_TEST(VectorRequestConvertTest, RejectsBadVersions) {
  absl::StatusOr<std::string> ref = ReferenceFromProto(VectorRequest<TypeParam>("tone@4", 4));
  EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(ref.status()), AllOf(HasSubstr("name \"tone@4\""),
                                           HasSubstr("version is 4")));
  ref = ReferenceFromProto(VectorRequest<TypeParam>("tone", -1));
  EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(ref.status()), HasSubstr("version -1 is negative"));
  ref = ReferenceFromProto(VectorRequest<TypeParam>("", 1));
  EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(ref.status()), HasSubstr("name is empty"));
}

}  // namespace
}  // namespace steerd
