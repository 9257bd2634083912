// What every VectorStore backend (SQLite, PostgreSQL) checks and stores the same way:
// the validation of a new version's metadata against its bytes, the layer norms as
// little-endian float32 bytes, the source by name, and the errors both backends return
// for the same conditions (not found, the stored_vectors limit, corrupt rows), so the
// conformance suite can hold them to one contract.
// Thread-safety: free functions on values.
#ifndef STEERD_SERVER_STORAGE_VECTOR_CODEC_H_
#define STEERD_SERVER_STORAGE_VECTOR_CODEC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/engine/vector_store.h"

namespace steerd {

// `metadata` ready to store: sha256 and size_bytes computed from `safetensors`.
// INVALID_ARGUMENT for an empty tenant or name, a non-positive shape,
// layer_norms.size() != num_layers, or a non-empty sha256 / non-zero size_bytes that
// disagree with the bytes. version and create_time are left for the store to assign.
absl::StatusOr<StoredVector> PrepareNewVector(const StoredVector& metadata,
                                              const std::string& safetensors);

absl::Status CheckVectorTenantAndName(const std::string& tenant, const std::string& name);
// INVALID_ARGUMENT for an empty tenant or a negative limit.
absl::Status CheckVectorListQuery(const VectorListQuery& query);

std::string EncodeLayerNorms(const std::vector<float>& norms);
// Fills `vector.layer_norms` and `vector.source` from their stored forms; INTERNAL
// (corrupt row) when the norms' size disagrees with num_layers or the source is unknown.
absl::Status DecodeVectorColumns(absl::string_view norms, absl::string_view source,
                                 StoredVector& vector);
absl::string_view VectorSourceName(StoredVector::Source source);

// INTERNAL when `bytes` do not hash to `sha256` (a damaged stored file).
absl::Status CheckStoredBytes(const std::string& name, int64_t version, const std::string& bytes,
                              const std::string& sha256);

absl::Status VectorNotFound(const std::string& name, std::optional<int64_t> version);
absl::Status VectorCorruptRow(absl::string_view what);
// RESOURCE_EXHAUSTED naming the stored_vectors limit, with its details.
absl::Status StoredVectorsLimitError(int64_t max_stored_versions, int64_t stored_versions);

}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_VECTOR_CODEC_H_
