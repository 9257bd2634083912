// SHA-256 digests through OpenSSL's EVP interface. Used to store API keys hashed (the
// tenants file holds only key digests) and to fingerprint stored vector files
// (Vector.sha256 is the lowercase hex digest of the exact bytes ExportVector returns).
// Thread-safety: the functions are pure and safe to call from any thread.
#ifndef STEERD_SERVER_TENANCY_SHA256_H_
#define STEERD_SERVER_TENANCY_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace steerd {

inline constexpr size_t kSha256Size = 32;
using Sha256Digest = std::array<uint8_t, kSha256Size>;

// The raw 32-byte digest of `bytes`.
Sha256Digest Sha256(absl::string_view bytes);

// The digest of `bytes` as 64 lowercase hex characters.
std::string Sha256Hex(absl::string_view bytes);

// Lowercase hex of any digest (or other bytes).
std::string HexEncode(const uint8_t* data, size_t size);

}  // namespace steerd

#endif  // STEERD_SERVER_TENANCY_SHA256_H_
