// Translation between the steerd.v1 protos and the core's plain types, plus the
// opaque page tokens of the List RPCs (AIP-158): a token records where the previous page
// ended and a digest of the request's filters, so a token replayed with different
// filters, or forged, is INVALID_ARGUMENT.
#ifndef STEERD_SERVER_API_PROTO_CONVERT_H_
#define STEERD_SERVER_API_PROTO_CONVERT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "server/engine/serving_core.h"
#include "server/engine/vector_store.h"
#include "steerd/v1/generation.pb.h"
#include "steerd/v1/models.pb.h"
#include "steerd/v1/vectors.pb.h"

namespace steerd {

void ToProto(const ModelInfo& info, v1::Model* out);
void ToProto(const StoredVector& vector, v1::Vector* out);
v1::FinishReason ToProto(FinishReason reason);

// GenerateRequest -> GenerateParams; INVALID_ARGUMENT for what only the proto can get
// wrong (no input, a message without a role, steering.version given twice or negative).
// steering.vector and steering.version become one "name[@version]" in params.vector.
absl::StatusOr<GenerateParams> FromProto(const v1::GenerateRequest& request);

// The vector reference of a Get/Export/DeleteVector request as the core takes it:
// `name` with the typed `version` folded in ("name@version" or "name"), checked by the
// rules of common.proto (INVALID_ARGUMENT naming `name` and/or `version`).
absl::StatusOr<std::string> ReferenceFromProto(const v1::GetVectorRequest& request);
absl::StatusOr<std::string> ReferenceFromProto(const v1::ExportVectorRequest& request);
absl::StatusOr<std::string> ReferenceFromProto(const v1::DeleteVectorRequest& request);

// page_size: 0 -> `default_size`, above `max_size` -> `max_size`, negative -> error.
absl::StatusOr<int64_t> EffectivePageSize(int32_t page_size, int64_t default_size,
                                          int64_t max_size);

// Page tokens. `filters` is any string that identifies the request's other fields.
std::string EncodePageToken(const std::string& filters, const std::string& after_name,
                            int64_t after_version);
struct PagePosition {
  std::string after_name;
  int64_t after_version = 0;
};
absl::StatusOr<PagePosition> DecodePageToken(const std::string& token,
                                             const std::string& filters);

}  // namespace steerd

#endif  // STEERD_SERVER_API_PROTO_CONVERT_H_
