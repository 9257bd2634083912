#include "server/tenancy/tenants.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "server/util/error_details.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxTenantNameLength = 64;
constexpr absl::string_view kKeyPrefix = "sk-steerd-";
constexpr size_t kKeyRandomBytes = 32;
constexpr size_t kMinKeyLength = 16;
constexpr size_t kMaxKeyLength = 512;

bool IsValidTenantName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxTenantNameLength) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes 64 hex characters (either case).
bool DecodeSha256Hex(absl::string_view hex, Sha256Digest* digest) {
  if (hex.size() != 2 * kSha256Size) return false;
  for (size_t i = 0; i < kSha256Size; ++i) {
    const int high = HexValue(hex[2 * i]);
    const int low = HexValue(hex[2 * i + 1]);
    if (high < 0 || low < 0) return false;
    (*digest)[i] = static_cast<uint8_t>(high << 4 | low);
  }
  return true;
}

// A short description of a JSON value for error messages (its type, and the value
// itself when short), e.g. `string "50"` or `number 8.5`.
std::string Describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return absl::StrCat(value.type_name(), " ", text);
}

// Parses while rejecting duplicate keys in any object: nlohmann keeps the last one
// silently, which in a security configuration would hide a mistake (two
// "api_key_sha256" entries in one tenant, say).
absl::StatusOr<json> ParseJsonStrict(absl::string_view text, absl::string_view source) {
  std::vector<std::set<std::string>> keys_by_depth;
  std::string duplicate;
  json::parser_callback_t callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        keys_by_depth.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys_by_depth.empty()) keys_by_depth.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys_by_depth.empty() && duplicate.empty() &&
            !keys_by_depth.back().insert(parsed.get<std::string>()).second) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  json parsed;
  try {
    parsed = json::parse(text.begin(), text.end(), callback);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON: ", e.what()));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": duplicate key \"", duplicate, "\" in a JSON object"));
  }
  return parsed;
}

// Reads a non-negative integer limit; `where` prefixes errors.
absl::StatusOr<int64_t> ParseCount(const json& value, const std::string& where) {
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", v, " is too large"));
    }
    return static_cast<int64_t>(v);
  }
  if (value.is_number_integer()) {  // Signed, hence negative here.
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": must not be negative, got ", value.get<int64_t>()));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": must be a non-negative integer, got ", Describe(value)));
}

absl::StatusOr<TenantLimits> ParseLimits(const json& value, const std::string& where) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": must be an object, got ", Describe(value)));
  }
  TenantLimits limits;
  for (const auto& [key, field] : value.items()) {
    const std::string field_where = absl::StrCat(where, ".", key);
    if (key == "concurrent_generations") {
      ASSIGN_OR_RETURN(limits.concurrent_generations, ParseCount(field, field_where));
    } else if (key == "stored_vectors") {
      ASSIGN_OR_RETURN(limits.stored_vectors, ParseCount(field, field_where));
    } else if (key == "max_new_tokens") {
      ASSIGN_OR_RETURN(limits.max_new_tokens, ParseCount(field, field_where));
    } else if (key == "queued_jobs") {
      ASSIGN_OR_RETURN(limits.queued_jobs, ParseCount(field, field_where));
    } else if (key == "max_job_steps") {
      ASSIGN_OR_RETURN(limits.max_job_steps, ParseCount(field, field_where));
    } else if (key == "max_job_examples") {
      ASSIGN_OR_RETURN(limits.max_job_examples, ParseCount(field, field_where));
    } else if (key == "requests_per_second") {
      if (!field.is_number()) {
        return absl::InvalidArgumentError(
            absl::StrCat(field_where, ": must be a non-negative number, got ", Describe(field)));
      }
      const double rps = field.get<double>();
      if (!(rps >= 0) || !std::isfinite(rps)) {
        return absl::InvalidArgumentError(
            absl::StrCat(field_where, ": must not be negative, got ", field.dump()));
      }
      limits.requests_per_second = rps;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown field \"", key,
                       "\" (known: concurrent_generations, requests_per_second, stored_vectors, "
                       "max_new_tokens, queued_jobs, max_job_steps, max_job_examples)"));
    }
  }
  return limits;
}

absl::StatusOr<Tenant> ParseTenant(const json& value, const std::string& where) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": must be an object, got ", Describe(value)));
  }
  for (const auto& [key, field] : value.items()) {
    if (key != "name" && key != "api_key_sha256" && key != "limits") {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unknown field \"", key,
                                                     "\" (known: name, api_key_sha256, limits)"));
    }
  }
  Tenant tenant;
  auto name = value.find("name");
  if (name == value.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing \"name\""));
  }
  if (!name->is_string() || !IsValidTenantName(name->get<std::string>())) {
    return absl::InvalidArgumentError(
        absl::StrCat(where,
                     ".name: must be a string of 1 to 64 characters from "
                     "[A-Za-z0-9._-], got ",
                     Describe(*name)));
  }
  tenant.name = name->get<std::string>();
  const std::string named = absl::StrCat(where, " (\"", tenant.name, "\")");

  auto hash = value.find("api_key_sha256");
  if (hash == value.end()) {
    return absl::InvalidArgumentError(absl::StrCat(named, ": missing \"api_key_sha256\""));
  }
  Sha256Digest digest;
  if (!hash->is_string() || !DecodeSha256Hex(hash->get<std::string>(), &digest)) {
    // The digest is not secret, but a key pasted here by mistake would be: describe
    // the value without quoting it.
    const std::string got =
        hash->is_string()
            ? absl::StrCat("a string of ", hash->get<std::string>().size(), " characters")
            : std::string(hash->type_name());
    return absl::InvalidArgumentError(
        absl::StrCat(named,
                     ".api_key_sha256: must be the SHA-256 of the key as 64 hex characters "
                     "(e.g. `printf %s \"$KEY\" | sha256sum`), got ",
                     got));
  }
  tenant.api_key_sha256_hex = HexEncode(digest.data(), digest.size());

  auto limits = value.find("limits");
  if (limits != value.end()) {
    ASSIGN_OR_RETURN(tenant.limits, ParseLimits(*limits, absl::StrCat(named, ".limits")));
  }
  return tenant;
}

// Checks what the Authenticator relies on; `source` prefixes errors.
absl::Status ValidateTenants(const std::vector<Tenant>& tenants, absl::string_view source) {
  if (tenants.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": \"tenants\" is empty; configure at least one tenant"));
  }
  absl::flat_hash_map<std::string, size_t> names;
  absl::flat_hash_map<std::string, size_t> digests;
  for (size_t i = 0; i < tenants.size(); ++i) {
    const Tenant& tenant = tenants[i];
    const std::string where = absl::StrCat(source, ": tenants[", i, "] (\"", tenant.name, "\")");
    Sha256Digest digest;
    if (!IsValidTenantName(tenant.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".name: must be 1 to 64 characters from [A-Za-z0-9._-]"));
    }
    if (!DecodeSha256Hex(tenant.api_key_sha256_hex, &digest)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".api_key_sha256: must be 64 hex characters"));
    }
    auto [name_it, name_inserted] = names.emplace(tenant.name, i);
    if (!name_inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".name: duplicate of tenants[", name_it->second, "]'s name"));
    }
    auto [digest_it, digest_inserted] =
        digests.emplace(absl::AsciiStrToLower(tenant.api_key_sha256_hex), i);
    if (!digest_inserted) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ".api_key_sha256: same key digest as tenants[", digest_it->second, "] (\"",
          tenants[digest_it->second].name, "\"); each key must belong to exactly one tenant"));
    }
  }
  return absl::OkStatus();
}

absl::Status ErrnoStatus(int error, absl::string_view what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(error));
  switch (error) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::UnavailableError(message);
  }
}

// Closes a file descriptor on scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  // Closes now and reports the error (a close error can be a write-back error).
  int Close() {
    const int result = close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

absl::Status WriteAll(int fd, absl::string_view bytes, absl::string_view what) {
  while (!bytes.empty()) {
    const ssize_t written = write(fd, bytes.data(), bytes.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, what);
    }
    bytes.remove_prefix(static_cast<size_t>(written));
  }
  return absl::OkStatus();
}

absl::Status FsyncDirectory(const std::string& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("opening ", dir));
  FdCloser closer(fd);
  if (fsync(fd) != 0) return ErrnoStatus(errno, absl::StrCat("fsync of ", dir));
  return absl::OkStatus();
}

std::string Base64UrlNoPadding(const uint8_t* data, size_t size) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t buffer = 0;
  int bits = 0;
  for (size_t i = 0; i < size; ++i) {
    buffer = (buffer << 8) | data[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kAlphabet[(buffer >> bits) & 0x3f]);
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(buffer << (6 - bits)) & 0x3f]);
  return out;
}

absl::StatusOr<std::string> GenerateKey() {
  uint8_t random[kKeyRandomBytes];
  if (RAND_bytes(random, sizeof(random)) != 1) {
    return absl::UnavailableError("cannot get random bytes from OpenSSL for the API key");
  }
  std::string key = absl::StrCat(kKeyPrefix, Base64UrlNoPadding(random, sizeof(random)));
  OPENSSL_cleanse(random, sizeof(random));
  return key;
}

// Reads the key file at `path`, checking its permissions.
absl::StatusOr<DefaultKey> ReadKeyFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("opening ", path));
  FdCloser closer(fd);
  struct stat info;
  if (fstat(fd, &info) != 0) return ErrnoStatus(errno, absl::StrCat("stat of ", path));
  if (!S_ISREG(info.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
  }
  const mode_t permissions = info.st_mode & 0777;
  if (permissions & 0007) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s has mode %04o: others may read or change the API key; run `chmod 600 %s` "
        "(or delete it to generate a new key)",
        path, permissions, path));
  }
  DefaultKey result;
  result.path = path;
  if (permissions & 0070) {
    result.warning = absl::StrFormat(
        "%s has mode %04o: members of its group may read the API key; `chmod 600 %s` "
        "unless that is intended",
        path, permissions, path);
  }
  std::string contents;
  char buffer[1024];
  while (true) {
    const ssize_t got = read(fd, buffer, sizeof(buffer));
    if (got < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("reading ", path));
    }
    if (got == 0) break;
    contents.append(buffer, static_cast<size_t>(got));
    if (contents.size() > 4 * kMaxKeyLength) break;  // Rejected below.
  }
  const absl::string_view key = absl::StripAsciiWhitespace(contents);
  const bool printable =
      std::all_of(key.begin(), key.end(), [](char c) { return c > ' ' && c < 0x7f; });
  if (key.size() < kMinKeyLength || key.size() > kMaxKeyLength || !printable) {
    // Never quote the contents: it is (or is meant to be) a secret.
    return absl::FailedPreconditionError(
        absl::StrCat(path,
                     " does not hold an API key (expected 16 to 512 printable ASCII characters "
                     "without spaces); fix it or delete it to generate a new key"));
  }
  result.key = std::string(key);
  return result;
}

// Writes a fresh key to a temporary file and links it to `path` unless `path` appeared
// meanwhile. Returns whether this call's key was published.
absl::StatusOr<bool> PublishNewKey(const std::string& dir, const std::string& path,
                                   const std::string& key) {
  const std::string temp = absl::StrCat(path, ".tmp.", getpid());
  // O_EXCL: never follow a planted symlink or reuse someone else's file. A leftover
  // from a crashed start with the same pid is removed first.
  unlink(temp.c_str());
  const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("creating ", temp));
  FdCloser closer(fd);
  absl::Status status = WriteAll(fd, absl::StrCat(key, "\n"), absl::StrCat("writing ", temp));
  // The umask can only remove bits, possibly the owner's own read bit: make it exactly
  // 0600 so later starts can read it back.
  if (status.ok() && fchmod(fd, 0600) != 0) {
    status = ErrnoStatus(errno, absl::StrCat("chmod of ", temp));
  }
  if (status.ok() && fsync(fd) != 0) status = ErrnoStatus(errno, absl::StrCat("fsync of ", temp));
  if (status.ok() && closer.Close() != 0) {
    status = ErrnoStatus(errno, absl::StrCat("closing ", temp));
  }
  if (!status.ok()) {
    unlink(temp.c_str());
    return status;
  }
  // link() fails with EEXIST instead of replacing: if another process published a key
  // first, both end up using that one. Filesystems without hard links fall back to
  // rename(), which is atomic but lets the last writer win.
  bool published = true;
  if (link(temp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    if (error == EEXIST) {
      published = false;
    } else if (error == EPERM || error == ENOTSUP || error == EOPNOTSUPP || error == ENOSYS ||
               error == EMLINK || error == EXDEV) {
      if (rename(temp.c_str(), path.c_str()) != 0) {
        const int rename_error = errno;
        unlink(temp.c_str());
        return ErrnoStatus(rename_error, absl::StrCat("renaming ", temp, " to ", path));
      }
      RETURN_IF_ERROR(FsyncDirectory(dir));
      return true;
    } else {
      unlink(temp.c_str());
      return ErrnoStatus(error, absl::StrCat("linking ", temp, " to ", path));
    }
  }
  unlink(temp.c_str());
  RETURN_IF_ERROR(FsyncDirectory(dir));
  return published;
}

}  // namespace

absl::StatusOr<std::vector<Tenant>> ParseTenantsJson(absl::string_view text,
                                                     absl::string_view source) {
  ASSIGN_OR_RETURN(const json root, ParseJsonStrict(text, source));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": must be a JSON object {\"tenants\": [...]}, got ", root.type_name()));
  }
  for (const auto& [key, value] : root.items()) {
    if (key != "tenants") {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": unknown field \"", key, "\" (known: tenants)"));
    }
  }
  auto list = root.find("tenants");
  if (list == root.end()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": missing \"tenants\""));
  }
  if (!list->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": \"tenants\" must be an array, got ", list->type_name()));
  }
  std::vector<Tenant> tenants;
  tenants.reserve(list->size());
  for (size_t i = 0; i < list->size(); ++i) {
    ASSIGN_OR_RETURN(Tenant tenant,
                     ParseTenant((*list)[i], absl::StrCat(source, ": tenants[", i, "]")));
    tenants.push_back(std::move(tenant));
  }
  RETURN_IF_ERROR(ValidateTenants(tenants, source));
  return tenants;
}

absl::StatusOr<std::vector<Tenant>> LoadTenantsFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    return ErrnoStatus(error, absl::StrCat("cannot read tenants file ", path));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::UnavailableError(absl::StrCat("error reading ", path));
  return ParseTenantsJson(text.str(), path);
}

absl::StatusOr<DefaultKey> LoadOrCreateDefaultKey(const std::string& data_dir) {
  if (data_dir.empty()) return absl::InvalidArgumentError("the data directory is empty");
  std::error_code error;
  if (!std::filesystem::exists(data_dir, error)) {
    // The directory will hold the key and every tenant's vectors: owner only.
    std::filesystem::create_directories(data_dir, error);
    if (error) {
      return absl::UnavailableError(
          absl::StrCat("cannot create data directory ", data_dir, ": ", error.message()));
    }
    std::filesystem::permissions(data_dir, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::replace, error);
    if (error) {
      return absl::UnavailableError(
          absl::StrCat("cannot chmod data directory ", data_dir, ": ", error.message()));
    }
  }
  const std::string path = (std::filesystem::path(data_dir) / "api_key").string();
  absl::StatusOr<DefaultKey> existing = ReadKeyFile(path);
  if (!absl::IsNotFound(existing.status())) return existing;

  ASSIGN_OR_RETURN(const std::string key, GenerateKey());
  ASSIGN_OR_RETURN(const bool published, PublishNewKey(data_dir, path, key));
  if (!published) return ReadKeyFile(path);  // Another process won the race.
  DefaultKey result;
  result.key = key;
  result.path = path;
  result.created = true;
  return result;
}

Tenant MakeDefaultTenant(absl::string_view key) {
  Tenant tenant;
  tenant.name = std::string(kDefaultTenantName);
  tenant.api_key_sha256_hex = Sha256Hex(key);
  return tenant;
}

// ---------------------------------------------------------------------------------------
// Authenticator

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(const Options& options) {
  RETURN_IF_ERROR(ValidateTenants(options.tenants, "tenants"));
  std::vector<Tenant> tenants = options.tenants;
  std::vector<Sha256Digest> digests(tenants.size());
  for (size_t i = 0; i < tenants.size(); ++i) {
    Tenant& tenant = tenants[i];
    tenant.api_key_sha256_hex = absl::AsciiStrToLower(tenant.api_key_sha256_hex);
    DecodeSha256Hex(tenant.api_key_sha256_hex, &digests[i]);  // Validated above.
  }
  return std::unique_ptr<Authenticator>(new Authenticator(std::move(tenants), std::move(digests)));
}

absl::StatusOr<const Tenant*> Authenticator::Authenticate(
    absl::string_view authorization_metadata_value) const {
  constexpr absl::string_view kExpected = "expected the metadata `authorization: Bearer <API key>`";
  const absl::string_view value = absl::StripAsciiWhitespace(authorization_metadata_value);
  if (value.empty()) {
    return WithReason(absl::UnauthenticatedError(absl::StrCat("missing API key: ", kExpected)),
                      "API_KEY_MISSING");
  }
  constexpr absl::string_view kScheme = "bearer";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme) ||
      (value[kScheme.size()] != ' ' && value[kScheme.size()] != '\t')) {
    return WithReason(absl::UnauthenticatedError(
                          absl::StrCat("malformed authorization metadata: ", kExpected)),
                      "API_KEY_MALFORMED");
  }
  const absl::string_view key = absl::StripLeadingAsciiWhitespace(value.substr(kScheme.size()));
  const bool well_formed = !key.empty() && std::all_of(key.begin(), key.end(),
                                                       [](char c) { return c > ' ' && c < 0x7f; });
  if (!well_formed) {
    return WithReason(absl::UnauthenticatedError(absl::StrCat(
                          "malformed API key (printable ASCII without spaces): ", kExpected)),
                      "API_KEY_MALFORMED");
  }
  const Sha256Digest presented = Sha256(key);
  // Every digest is compared, and the match is selected with arithmetic rather than a
  // branch, so the time does not depend on which tenant (if any) matched. Digests are
  // unique, so at most one term is non-zero.
  size_t match_plus_one = 0;
  for (size_t i = 0; i < digests_.size(); ++i) {
    const size_t equal =
        static_cast<size_t>(CRYPTO_memcmp(presented.data(), digests_[i].data(), kSha256Size) == 0);
    match_plus_one |= (i + 1) & (0 - equal);
  }
  if (match_plus_one == 0) {
    return WithReason(absl::UnauthenticatedError("unknown API key"), "API_KEY_INVALID");
  }
  return &tenants_[match_plus_one - 1];
}

// ---------------------------------------------------------------------------------------
// TenantLimiter

// One tenant's limiter state. Every field is guarded by the owning TenantLimiter's mu_
// (it cannot be annotated across classes).
struct GenerationSlot::State {
  int64_t active_generations = 0;
  bool bucket_started = false;
  double tokens = 0;    // Requests that may start now; at most the burst.
  absl::Time refilled;  // When `tokens` was last brought up to date.
};

TenantLimiter::TenantLimiter(Options options) : options_(std::move(options)) {}

GenerationSlot::GenerationSlot(GenerationSlot&& other) noexcept
    : limiter_(std::exchange(other.limiter_, nullptr)),
      state_(std::exchange(other.state_, nullptr)) {}

GenerationSlot& GenerationSlot::operator=(GenerationSlot&& other) noexcept {
  if (this != &other) {
    Release();
    limiter_ = std::exchange(other.limiter_, nullptr);
    state_ = std::exchange(other.state_, nullptr);
  }
  return *this;
}

void GenerationSlot::Release() {
  if (limiter_ == nullptr) return;
  limiter_->ReleaseSlot(state_);
  limiter_ = nullptr;
  state_ = nullptr;
}

absl::StatusOr<std::unique_ptr<TenantLimiter>> TenantLimiter::Create(const Options& options) {
  Options resolved = options;
  if (!resolved.clock) resolved.clock = [] { return absl::Now(); };
  return std::unique_ptr<TenantLimiter>(new TenantLimiter(std::move(resolved)));
}

TenantLimiter::~TenantLimiter() = default;

GenerationSlot::State* TenantLimiter::StateFor(absl::string_view tenant_name) {
  auto it = states_.find(tenant_name);
  if (it == states_.end()) {
    it = states_.emplace(std::string(tenant_name), std::make_unique<GenerationSlot::State>()).first;
  }
  return it->second.get();
}

absl::Status TenantLimiter::CheckRequestRate(const Tenant& tenant) {
  const double rate = tenant.limits.requests_per_second;
  if (!(rate > 0)) return absl::OkStatus();
  const double burst = std::max(1.0, rate);
  const absl::Time now = options_.clock();
  double wait_seconds = 0;
  {
    absl::MutexLock lock(&mu_);
    GenerationSlot::State* state = StateFor(tenant.name);
    if (!state->bucket_started) {
      state->bucket_started = true;
      state->tokens = burst;
      state->refilled = now;
    } else if (now > state->refilled) {
      // A clock that steps backwards adds nothing rather than taking tokens away.
      state->tokens += absl::ToDoubleSeconds(now - state->refilled) * rate;
      state->refilled = now;
    }
    state->tokens = std::min(state->tokens, burst);  // Also clamps after a lowered rate.
    if (state->tokens >= 1) {
      state->tokens -= 1;
      return absl::OkStatus();
    }
    // Capped so that an absurdly small configured rate cannot overflow the message.
    wait_seconds = std::min((1 - state->tokens) / rate, 1e9);
  }
  const int64_t wait_ms = static_cast<int64_t>(std::ceil(wait_seconds * 1000));
  return LimitError(
      absl::StatusCode::kResourceExhausted,
      absl::StrFormat("requests_per_second limit of %s reached; retry in %d ms",
                      absl::StrCat(rate), wait_ms),
      "requests_per_second", absl::StrCat(rate), std::nullopt, absl::Milliseconds(wait_ms));
}

absl::StatusOr<GenerationSlot> TenantLimiter::TryStartGeneration(const Tenant& tenant) {
  const int64_t limit = tenant.limits.concurrent_generations;
  absl::MutexLock lock(&mu_);
  GenerationSlot::State* state = StateFor(tenant.name);
  if (state->active_generations >= limit) {
    return LimitError(absl::StatusCode::kResourceExhausted,
                      absl::StrCat("concurrent_generations limit of ", limit,
                                   " reached; retry when one of this tenant's generations "
                                   "finishes"),
                      "concurrent_generations", absl::StrCat(limit),
                      state->active_generations, absl::Seconds(1));
  }
  ++state->active_generations;
  return GenerationSlot(this, state);
}

void TenantLimiter::ReleaseSlot(GenerationSlot::State* state) {
  absl::MutexLock lock(&mu_);
  --state->active_generations;
}

int64_t TenantLimiter::ActiveGenerations(absl::string_view tenant_name) const {
  absl::MutexLock lock(&mu_);
  auto it = states_.find(tenant_name);
  return it == states_.end() ? 0 : it->second->active_generations;
}

}  // namespace steerd
