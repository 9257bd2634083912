#include "server/storage/vector_codec.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/tenancy/sha256.h"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {

absl::Status CheckVectorTenantAndName(const std::string& tenant, const std::string& name) {
  if (tenant.empty()) return absl::InvalidArgumentError("vector store: empty tenant");
  if (name.empty()) return absl::InvalidArgumentError("vector store: empty vector name");
  return absl::OkStatus();
}

absl::Status CheckVectorListQuery(const VectorListQuery& query) {
  if (query.tenant.empty()) return absl::InvalidArgumentError("vector store: empty tenant");
  if (query.limit < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("vector store: negative list limit ", query.limit));
  }
  return absl::OkStatus();
}

absl::StatusOr<StoredVector> PrepareNewVector(const StoredVector& metadata,
                                              const std::string& safetensors) {
  RETURN_IF_ERROR(CheckVectorTenantAndName(metadata.tenant, metadata.name));
  if (metadata.num_layers <= 0 || metadata.hidden_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("vector store: bad shape [", metadata.num_layers,
                                                   ", ", metadata.hidden_size, "]"));
  }
  if (metadata.layer_norms.size() != static_cast<size_t>(metadata.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("vector store: ", metadata.layer_norms.size(),
                                                   " layer norms for ", metadata.num_layers,
                                                   " layers"));
  }
  StoredVector stored = metadata;
  stored.sha256 = Sha256Hex(safetensors);
  stored.size_bytes = static_cast<int64_t>(safetensors.size());
  if (!metadata.sha256.empty() && metadata.sha256 != stored.sha256) {
    return absl::InvalidArgumentError(
        "vector store: metadata.sha256 is not the SHA-256 of the bytes to store");
  }
  if (metadata.size_bytes != 0 && metadata.size_bytes != stored.size_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("vector store: metadata.size_bytes is ",
                                                   metadata.size_bytes, " but the file has ",
                                                   stored.size_bytes, " bytes"));
  }
  return stored;
}

std::string EncodeLayerNorms(const std::vector<float>& norms) {
  std::string bytes(norms.size() * 4, '\0');
  for (size_t i = 0; i < norms.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &norms[i], 4);
    for (int b = 0; b < 4; ++b) bytes[4 * i + b] = static_cast<char>((bits >> (8 * b)) & 0xff);
  }
  return bytes;
}

absl::Status DecodeVectorColumns(absl::string_view norms, absl::string_view source,
                                 StoredVector& vector) {
  if (vector.num_layers < 0 || norms.size() != static_cast<size_t>(vector.num_layers) * 4) {
    return VectorCorruptRow(absl::StrCat("layer_norms of vector \"", vector.name, "@",
                                         vector.version, "\" has ", norms.size(), " bytes for ",
                                         vector.num_layers, " layers"));
  }
  vector.layer_norms.assign(norms.size() / 4, 0.0f);
  for (size_t i = 0; i < vector.layer_norms.size(); ++i) {
    uint32_t bits = 0;
    for (int b = 0; b < 4; ++b) {
      bits |= static_cast<uint32_t>(static_cast<uint8_t>(norms[4 * i + b])) << (8 * b);
    }
    std::memcpy(&vector.layer_norms[i], &bits, 4);
  }
  if (source == "upload") {
    vector.source = StoredVector::Source::kUpload;
  } else if (source == "training") {
    vector.source = StoredVector::Source::kTraining;
  } else {
    return VectorCorruptRow(absl::StrCat("unknown source \"", source, "\""));
  }
  return absl::OkStatus();
}

absl::string_view VectorSourceName(StoredVector::Source source) {
  return source == StoredVector::Source::kTraining ? "training" : "upload";
}

absl::Status CheckStoredBytes(const std::string& name, int64_t version, const std::string& bytes,
                              const std::string& sha256) {
  if (Sha256Hex(bytes) != sha256) {
    return absl::InternalError(absl::StrCat("vector store: the stored file of vector \"", name, "@",
                                            version, "\" does not match its sha256 (corrupt)"));
  }
  return absl::OkStatus();
}

absl::Status VectorNotFound(const std::string& name, std::optional<int64_t> version) {
  const std::string reference = version.has_value() ? absl::StrCat(name, "@", *version) : name;
  return absl::NotFoundError(absl::StrCat("vector \"", reference, "\" not found"));
}

absl::Status VectorCorruptRow(absl::string_view what) {
  return absl::InternalError(absl::StrCat("vector store: corrupt row: ", what));
}

absl::Status StoredVectorsLimitError(int64_t max_stored_versions, int64_t stored_versions) {
  return LimitError(absl::StatusCode::kResourceExhausted,
                    absl::StrCat("stored_vectors limit of ", max_stored_versions, " reached (",
                                 stored_versions,
                                 " vector versions stored); delete versions to store new ones"),
                    "stored_vectors", absl::StrCat(max_stored_versions), stored_versions);
}

}  // namespace steerd
