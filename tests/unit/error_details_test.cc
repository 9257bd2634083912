// Machine-readable error details: the absl::Status payload every layer attaches
// (reasons, limits, retry delays, invalid fields), its trip over gRPC as
// google.rpc.Status (ErrorInfo, RetryInfo, BadRequest) and back, and the stored form of
// a job's error. Torch-free.
#include "server/util/error_details.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "server/api/grpc_status.h"

namespace steerd {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

TEST(ErrorDetailsTest, LimitErrorNamesTheLimit) {
  const absl::Status status =
      LimitError(absl::StatusCode::kResourceExhausted, "stored_vectors limit of 2 reached",
                 "stored_vectors", "2", 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "stored_vectors limit of 2 reached");
  const std::optional<ErrorDetails> details = GetErrorDetails(status);
  ASSERT_TRUE(details.has_value());
  EXPECT_EQ(details->reason, "STORED_VECTORS_LIMIT");
  EXPECT_THAT(details->metadata, ElementsAre(Pair("limit", "stored_vectors"),
                                             Pair("limit_value", "2"), Pair("value", "2")));
  EXPECT_FALSE(details->retry_delay.has_value());
}

TEST(ErrorDetailsTest, InvalidFieldKeepsTheMessageAndNamesTheField) {
  const absl::Status status = InvalidFieldError("sampling.top_k", "-1 must not be negative");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "sampling.top_k -1 must not be negative");
  const std::optional<ErrorDetails> details = GetErrorDetails(status);
  ASSERT_TRUE(details.has_value());
  EXPECT_EQ(details->reason, "INVALID_FIELD");
  ASSERT_EQ(details->field_violations.size(), 1u);
  EXPECT_EQ(details->field_violations[0].field, "sampling.top_k");
  EXPECT_EQ(details->field_violations[0].description, "-1 must not be negative");
}

TEST(ErrorDetailsTest, OkStaysOkAndPlainErrorsHaveNoDetails) {
  EXPECT_TRUE(WithReason(absl::OkStatus(), "X").ok());
  EXPECT_FALSE(GetErrorDetails(absl::NotFoundError("x")).has_value());
  EXPECT_EQ(DefaultErrorReason(absl::StatusCode::kNotFound), "NOT_FOUND");
}

// What the server sends is what the client library reads back.
TEST(GrpcStatusTest, DetailsSurviveTheWire) {
  ErrorDetails sent;
  sent.reason = "REQUESTS_PER_SECOND_LIMIT";
  sent.metadata = {{"limit", "requests_per_second"}, {"limit_value", "0.5"}};
  sent.retry_delay = absl::Milliseconds(1500);
  sent.field_violations = {{"a.b", "is bad"}, {"c[2]", "is worse"}};
  const absl::Status original =
      WithErrorDetails(absl::ResourceExhaustedError("slow down"), sent);

  const grpc::Status wire = ToGrpcStatus(original);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(wire.error_message(), "slow down");
  google::rpc::Status rpc_status;
  ASSERT_TRUE(rpc_status.ParseFromString(wire.error_details()));
  EXPECT_EQ(rpc_status.code(), 8);
  ASSERT_EQ(rpc_status.details_size(), 3);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(rpc_status.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "REQUESTS_PER_SECOND_LIMIT");
  EXPECT_EQ(info.domain(), "steerd");
  EXPECT_EQ(info.metadata().at("limit_value"), "0.5");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(rpc_status.details(1).UnpackTo(&retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 1);
  EXPECT_EQ(retry.retry_delay().nanos(), 500000000);
  google::rpc::BadRequest bad_request;
  ASSERT_TRUE(rpc_status.details(2).UnpackTo(&bad_request));
  ASSERT_EQ(bad_request.field_violations_size(), 2);
  EXPECT_EQ(bad_request.field_violations(1).field(), "c[2]");

  const absl::Status read = FromGrpcStatus(wire);
  EXPECT_EQ(read.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(read.message(), "slow down");
  const std::optional<ErrorDetails> received = GetErrorDetails(read);
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->reason, sent.reason);
  EXPECT_EQ(received->metadata, sent.metadata);
  EXPECT_EQ(received->retry_delay, sent.retry_delay);
  ASSERT_EQ(received->field_violations.size(), 2u);
  EXPECT_EQ(received->field_violations[0].description, "is bad");
}

// Every error carries an ErrorInfo, the code's name when no layer gave a reason.
TEST(GrpcStatusTest, ErrorsWithoutDetailsGetTheCodeAsReason) {
  const grpc::Status wire = ToGrpcStatus(absl::NotFoundError("vector \"a\" not found"));
  google::rpc::Status rpc_status;
  ASSERT_TRUE(rpc_status.ParseFromString(wire.error_details()));
  ASSERT_EQ(rpc_status.details_size(), 1);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(rpc_status.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "NOT_FOUND");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  // A status from elsewhere, without details, reads as its code and message.
  const absl::Status plain = FromGrpcStatus(grpc::Status(grpc::StatusCode::ABORTED, "x"));
  EXPECT_EQ(plain.code(), absl::StatusCode::kAborted);
  EXPECT_FALSE(GetErrorDetails(plain).has_value());
}

TEST(StoredStatusTest, RoundTripsAndReadsOldPlainText) {
  const absl::Status error =
      WithReason(absl::InvalidArgumentError("bad \"steering\"\n"), "NON_FINITE_LOGITS",
                 {{"token_index", "4"}});
  const absl::Status read = DecodeStatus(EncodeStatus(error));
  EXPECT_EQ(read.code(), error.code());
  EXPECT_EQ(read.message(), error.message());
  ASSERT_TRUE(GetErrorDetails(read).has_value());
  EXPECT_EQ(GetErrorDetails(read)->reason, "NON_FINITE_LOGITS");
  EXPECT_EQ(EncodeStatus(absl::OkStatus()), "");
  EXPECT_TRUE(DecodeStatus("").ok());
  // A job stored before errors had codes: its text, as UNKNOWN.
  const absl::Status legacy = DecodeStatus("training diverged at step 3");
  EXPECT_EQ(legacy.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(legacy.message(), "training diverged at step 3");
}

}  // namespace
}  // namespace steerd
