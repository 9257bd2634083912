// Tenants and what the server needs to know about them before a request reaches the
// engine: who is calling (API-key authentication), and whether the caller is within its
// per-tenant limits. Tenants come from a JSON tenants file that stores only SHA-256
// digests of the keys, or, when no file is configured, a single "default" tenant whose
// key is generated on first start and kept in the data directory. Nothing here knows
// gRPC: the API layer passes the `authorization` metadata value in and maps the
// returned absl::Status codes (UNAUTHENTICATED, RESOURCE_EXHAUSTED) straight through.
// Torch-free.
#ifndef STEERD_SERVER_TENANCY_TENANTS_H_
#define STEERD_SERVER_TENANCY_TENANTS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/tenancy/sha256.h"

namespace steerd {

// Per-tenant limits. Over a limit a call fails with RESOURCE_EXHAUSTED and a message
// naming the limit by the field name used here, in the tenants file and in
// common.proto. Counts are enforced by whoever owns what is counted: TenantLimiter
// (below) for `requests_per_second` and `concurrent_generations`, the vector store for
// `stored_vectors`, the job manager for `queued_jobs`, `max_job_steps` and
// `max_job_examples`, the generation path for `max_new_tokens`.
struct TenantLimits {
  // Generate / GenerateStream calls of the tenant running at once (admitted and not yet
  // finished). 0 forbids generation.
  int64_t concurrent_generations = 64;
  // Sustained rate of RPCs of any kind; bursts of up to max(1, requests_per_second)
  // calls are allowed after a quiet period (token bucket). 0 means unlimited.
  double requests_per_second = 0;
  // Vector versions stored at once, all names together (each version of a name counts).
  // 0 forbids storing vectors.
  int64_t stored_vectors = 1000;
  // Upper bound on a request's max_new_tokens (requests asking for more are lowered or
  // rejected by the generation path). 0 means only the server's global cap applies.
  int64_t max_new_tokens = 0;
  // Training jobs QUEUED or RUNNING at once. 0 forbids training.
  int64_t queued_jobs = 4;
  // Upper bound on a training job's hyperparameters.steps (a request asking for more is
  // rejected). 0 means only the server's cap applies.
  int64_t max_job_steps = 0;
  // Upper bound on each dataset of a training job: inline training or evaluation
  // examples beyond it are rejected; a built-in task's datasets, whose size the server
  // picks, are drawn no larger. 0 means only the server's cap applies.
  int64_t max_job_examples = 0;
};

struct Tenant {
  // 1 to 64 characters from [A-Za-z0-9._-]; unique among tenants. Appears in logs and
  // metrics, never in error messages sent to other tenants.
  std::string name;
  // SHA-256 of the tenant's API key (the whole key, e.g. "sk-steerd-..."), 64 lowercase
  // hex characters. The key itself is never stored.
  std::string api_key_sha256_hex;
  TenantLimits limits;
};

// The tenant that exists when the server runs without a tenants file.
inline constexpr absl::string_view kDefaultTenantName = "default";

// Parses a tenants file:
//   {"tenants": [{"name": "acme", "api_key_sha256": "<64 hex>",
//                 "limits": {"concurrent_generations": 8, "requests_per_second": 50,
//                            "stored_vectors": 100, "max_new_tokens": 512,
//                            "queued_jobs": 2, "max_job_steps": 1000,
//                            "max_job_examples": 10000}}]}
// "limits" and each of its fields are optional (defaults as in TenantLimits). The hex
// digest may use either case and is returned lowercase. Any mistake is
// INVALID_ARGUMENT naming `source`, the tenant (index and name) and the field: invalid
// JSON, duplicate JSON keys, unknown fields, wrong types, non-integer counts, negative
// limits, a digest that is not 64 hex characters, a malformed name, duplicate names or
// digests, an empty list.
absl::StatusOr<std::vector<Tenant>> ParseTenantsJson(absl::string_view text,
                                                     absl::string_view source);

// Reads and parses the tenants file at `path` (NOT_FOUND / PERMISSION_DENIED naming
// the path when it cannot be read).
absl::StatusOr<std::vector<Tenant>> LoadTenantsFile(const std::string& path);

// The API key of the default tenant, kept in `<data_dir>/api_key`.
struct DefaultKey {
  std::string key;       // The whole key, as clients send it after "Bearer ".
  std::string path;      // The file it lives in.
  bool created = false;  // True when this call generated it (print it once for the user).
  // Non-empty when the file is readable or writable by its group: the key is still
  // used (Kubernetes' fsGroup makes mounted files group-accessible), but the caller
  // should log this text. Access by others than owner and group is an error instead.
  std::string warning;
};

// Returns the default tenant's key, generating one on the first start.
//
// First start (no `<data_dir>/api_key`): creates `data_dir` (mode 0700) if missing,
// generates "sk-steerd-" + 43 base64url characters (256 bits from OpenSSL's RAND_bytes)
// and publishes it atomically and durably: a temporary file created with mode 0600 is
// written and fsynced, hard-linked to `api_key` (so two servers starting at once on one
// data directory agree on one key: the loser reads the winner's), and the directory is
// fsynced. Later starts read the file back: surrounding whitespace is ignored; the key
// must be 16 to 512 printable ASCII characters without spaces, so an operator may put
// their own key there. A file that others (not owner or group) may read or write is
// FAILED_PRECONDITION (`chmod 600` it), like ssh does with private keys.
absl::StatusOr<DefaultKey> LoadOrCreateDefaultKey(const std::string& data_dir);

// The single tenant used without a tenants file: kDefaultTenantName, the digest of
// `key`, default limits.
Tenant MakeDefaultTenant(absl::string_view key);

// Maps the `authorization` metadata of a call to its tenant.
// Thread-safety: immutable after Create(); Authenticate() may be called from any number
// of threads at once. Returned Tenant pointers live as long as the Authenticator.
class Authenticator {
 public:
  struct Options {
    // At least one; names and digests unique, digests 64 hex characters (as
    // ParseTenantsJson guarantees).
    std::vector<Tenant> tenants;
  };

  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const Options& options);

  // Accepts "Bearer <key>" (scheme case-insensitive, one or more spaces, surrounding
  // whitespace ignored). Missing, malformed or unknown key: UNAUTHENTICATED with a
  // message that never repeats the key. The SHA-256 of the key is compared with every
  // tenant's digest in constant time, without stopping at a match, so the time taken
  // reveals neither which tenant matched nor how much of a digest did.
  absl::StatusOr<const Tenant*> Authenticate(absl::string_view authorization_metadata_value) const;

  const std::vector<Tenant>& tenants() const { return tenants_; }

 private:
  explicit Authenticator(std::vector<Tenant> tenants, std::vector<Sha256Digest> digests)
      : tenants_(std::move(tenants)), digests_(std::move(digests)) {}

  const std::vector<Tenant> tenants_;
  const std::vector<Sha256Digest> digests_;  // digests_[i] decodes tenants_[i]'s hex.
};

class TenantLimiter;

// One admitted generation of a tenant; releasing it (destruction or Release()) frees
// the tenant's slot. Move-only. The TenantLimiter must outlive it.
class GenerationSlot {
 public:
  GenerationSlot() = default;
  GenerationSlot(GenerationSlot&& other) noexcept;
  GenerationSlot& operator=(GenerationSlot&& other) noexcept;
  GenerationSlot(const GenerationSlot&) = delete;
  GenerationSlot& operator=(const GenerationSlot&) = delete;
  ~GenerationSlot() { Release(); }

  // Frees the slot now; idempotent.
  void Release();
  bool held() const { return limiter_ != nullptr; }

 private:
  friend class TenantLimiter;
  struct State;
  GenerationSlot(TenantLimiter* limiter, State* state) : limiter_(limiter), state_(state) {}

  TenantLimiter* limiter_ = nullptr;
  State* state_ = nullptr;
};

// Enforces `requests_per_second` and `concurrent_generations` per tenant. Limits are
// read from the Tenant passed to each call, so a reloaded tenants file applies at once
// (a lowered rate clamps the saved burst; running generations above a lowered
// concurrency limit finish, new ones wait until the count is below it).
// Thread-safety: all methods may be called from any number of threads at once; one
// mutex guards the per-tenant state and is held only for a few arithmetic operations.
class TenantLimiter {
 public:
  struct Options {
    // The clock for the token buckets; tests inject a fake one. Defaults to absl::Now.
    std::function<absl::Time()> clock;
  };

  static absl::StatusOr<std::unique_ptr<TenantLimiter>> Create(const Options& options);
  ~TenantLimiter();

  // Takes one token from the tenant's bucket (capacity max(1, rps), refilled at rps
  // tokens per second, full for a tenant not seen before). RESOURCE_EXHAUSTED naming
  // `requests_per_second`, its value and when a token is next available when empty.
  // Always OK when requests_per_second is 0.
  absl::Status CheckRequestRate(const Tenant& tenant);

  // Admits one generation if fewer than `concurrent_generations` of the tenant are
  // running, else RESOURCE_EXHAUSTED naming `concurrent_generations` and its value.
  absl::StatusOr<GenerationSlot> TryStartGeneration(const Tenant& tenant);

  // Generations of the tenant currently holding a slot (for metrics and tests).
  int64_t ActiveGenerations(absl::string_view tenant_name) const;

 private:
  friend class GenerationSlot;
  // Defined where GenerationSlot::State is complete (its map's cleanup needs it).
  explicit TenantLimiter(Options options);
  GenerationSlot::State* StateFor(absl::string_view tenant_name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseSlot(GenerationSlot::State* state);

  const Options options_;
  mutable absl::Mutex mu_;
  // Entries are never removed (tenants are a configured, small set), so State pointers
  // held by slots stay valid for the limiter's lifetime.
  absl::flat_hash_map<std::string, std::unique_ptr<GenerationSlot::State>> states_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace steerd

#endif  // STEERD_SERVER_TENANCY_TENANTS_H_
