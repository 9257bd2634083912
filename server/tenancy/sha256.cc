#include "server/tenancy/sha256.h"

#include <openssl/evp.h>

#include <new>

namespace steerd {

Sha256Digest Sha256(absl::string_view bytes) {
  Sha256Digest digest{};
  unsigned int size = 0;
  // EVP_Digest with the built-in SHA-256 fails only when OpenSSL cannot allocate its
  // context; treat that like any other allocation failure instead of returning a digest
  // that could be mistaken for a real one.
  if (EVP_Digest(bytes.data(), bytes.size(), digest.data(), &size, EVP_sha256(),
                 /*impl=*/nullptr) != 1 ||
      size != kSha256Size) {
    throw std::bad_alloc();
  }
  return digest;
}

std::string HexEncode(const uint8_t* data, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex(2 * size, '\0');
  for (size_t i = 0; i < size; ++i) {
    hex[2 * i] = kDigits[data[i] >> 4];
    hex[2 * i + 1] = kDigits[data[i] & 0xf];
  }
  return hex;
}

std::string Sha256Hex(absl::string_view bytes) {
  const Sha256Digest digest = Sha256(bytes);
  return HexEncode(digest.data(), digest.size());
}

}  // namespace steerd
