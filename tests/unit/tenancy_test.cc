#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/tenancy/sha256.h"
#include "server/tenancy/tenants.h"

namespace steerd {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::SizeIs;
using ::testing::StartsWith;

constexpr char kHashA[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
constexpr char kHashB[] = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

// A fresh, empty directory for one test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ =
        std::filesystem::path(::testing::TempDir()) /
        absl::StrCat("tenancy_test.", getpid(), ".", info->test_suite_name(), ".", info->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string Path(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

mode_t Mode(const std::string& path) {
  struct stat info {};
  EXPECT_EQ(stat(path.c_str(), &info), 0) << path;
  return info.st_mode & 0777;
}

Tenant MakeTenant(const std::string& name, const std::string& key) {
  Tenant tenant;
  tenant.name = name;
  tenant.api_key_sha256_hex = Sha256Hex(key);
  return tenant;
}

// ---------------------------------------------------------------------------------------
// SHA-256

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(std::string("a\0b", 3)), Sha256Hex(std::string("a\0b", 3)));
  EXPECT_NE(Sha256Hex(std::string("a\0b", 3)), Sha256Hex("a"));
  const Sha256Digest digest = Sha256("abc");
  EXPECT_EQ(digest[0], 0xba);
  EXPECT_EQ(digest[31], 0xad);
  EXPECT_EQ(HexEncode(digest.data(), digest.size()), Sha256Hex("abc"));
}

// ---------------------------------------------------------------------------------------
// Tenants file

TEST(TenantsFileTest, ParsesEveryField) {
  const std::string text = absl::StrCat(R"({"tenants": [
    {"name": "acme", "api_key_sha256": ")",
                                        kHashA, R"(",
     "limits": {"concurrent_generations": 8, "requests_per_second": 50,
                "stored_vectors": 100, "max_new_tokens": 512, "queued_jobs": 2}},
    {"name": "Beta.team_2-x", "api_key_sha256": ")",
                                        absl::AsciiStrToUpper(kHashB), R"("}
  ]})");
  absl::StatusOr<std::vector<Tenant>> tenants = ParseTenantsJson(text, "tenants.json");
  ASSERT_TRUE(tenants.ok()) << tenants.status();
  ASSERT_THAT(*tenants, SizeIs(2));
  const Tenant& acme = (*tenants)[0];
  EXPECT_EQ(acme.name, "acme");
  EXPECT_EQ(acme.api_key_sha256_hex, kHashA);
  EXPECT_EQ(acme.limits.concurrent_generations, 8);
  EXPECT_EQ(acme.limits.requests_per_second, 50);
  EXPECT_EQ(acme.limits.stored_vectors, 100);
  EXPECT_EQ(acme.limits.max_new_tokens, 512);
  EXPECT_EQ(acme.limits.queued_jobs, 2);

  const Tenant& beta = (*tenants)[1];
  EXPECT_EQ(beta.name, "Beta.team_2-x");
  EXPECT_EQ(beta.api_key_sha256_hex, kHashB) << "hex is normalized to lowercase";
  const TenantLimits defaults;
  EXPECT_EQ(beta.limits.concurrent_generations, defaults.concurrent_generations);
  EXPECT_EQ(beta.limits.requests_per_second, 0);
  EXPECT_EQ(beta.limits.stored_vectors, 1000);
  EXPECT_EQ(beta.limits.max_new_tokens, 0);
  EXPECT_EQ(beta.limits.queued_jobs, 4);
}

TEST(TenantsFileTest, FractionalRateAndPartialLimits) {
  const std::string text =
      absl::StrCat(R"({"tenants": [{"name": "a", "api_key_sha256": ")", kHashA,
                   R"(", "limits": {"requests_per_second": 0.5, "stored_vectors": 0}}]})");
  absl::StatusOr<std::vector<Tenant>> tenants = ParseTenantsJson(text, "t.json");
  ASSERT_TRUE(tenants.ok()) << tenants.status();
  EXPECT_EQ((*tenants)[0].limits.requests_per_second, 0.5);
  EXPECT_EQ((*tenants)[0].limits.stored_vectors, 0);
  EXPECT_EQ((*tenants)[0].limits.concurrent_generations, 64);
}

struct BadTenantsCase {
  std::string label;
  // "$A" / "$B" stand for valid digests, "$F" for a valid first tenant followed by a
  // comma (so that errors in the second must name index 1 and its name).
  std::string json;
  std::vector<std::string> message_parts;
};

class BadTenantsFileTest : public ::testing::TestWithParam<BadTenantsCase> {};

TEST_P(BadTenantsFileTest, IsInvalidArgumentNamingTheMistake) {
  const BadTenantsCase& c = GetParam();
  const std::string text = absl::StrReplaceAll(
      absl::StrReplaceAll(c.json, {{"$F", R"({"name": "ok", "api_key_sha256": "$A"}, )"}}),
      {{"$A", kHashA}, {"$B", kHashB}});
  absl::StatusOr<std::vector<Tenant>> tenants = ParseTenantsJson(text, "conf/tenants.json");
  ASSERT_FALSE(tenants.ok()) << c.label;
  EXPECT_EQ(tenants.status().code(), absl::StatusCode::kInvalidArgument) << c.label;
  EXPECT_THAT(std::string(tenants.status().message()), StartsWith("conf/tenants.json: "))
      << c.label;
  for (const std::string& part : c.message_parts) {
    EXPECT_THAT(std::string(tenants.status().message()), HasSubstr(part)) << c.label;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadTenantsFileTest,
    ::testing::Values(
        BadTenantsCase{"not json", "{\"tenants\": [", {"invalid JSON"}},
        BadTenantsCase{"not an object", "[]", {"must be a JSON object"}},
        BadTenantsCase{"unknown top-level field",
                       R"({"tenants": [], "tenant": 1})",
                       {"unknown field \"tenant\""}},
        BadTenantsCase{"missing tenants", "{}", {"missing \"tenants\""}},
        BadTenantsCase{"tenants not an array", R"({"tenants": {}})", {"must be an array"}},
        BadTenantsCase{"empty list", R"({"tenants": []})", {"empty"}},
        BadTenantsCase{
            "tenant not an object", R"({"tenants": [$F3]})", {"tenants[1]", "must be an object"}},
        BadTenantsCase{"unknown tenant field",
                       R"({"tenants": [$F{"name": "b", "api_key_sha256": "$B", "key": "x"}]})",
                       {"tenants[1]", "unknown field \"key\""}},
        BadTenantsCase{"missing name",
                       R"({"tenants": [$F{"api_key_sha256": "$B"}]})",
                       {"tenants[1]", "missing \"name\""}},
        BadTenantsCase{"bad name characters",
                       R"({"tenants": [$F{"name": "a b", "api_key_sha256": "$B"}]})",
                       {"tenants[1].name", "[A-Za-z0-9._-]"}},
        BadTenantsCase{"empty name",
                       R"({"tenants": [{"name": "", "api_key_sha256": "$B"}]})",
                       {"tenants[0].name"}},
        BadTenantsCase{"name too long",
                       absl::StrCat(R"({"tenants": [{"name": ")", std::string(65, 'n'),
                                    R"(", "api_key_sha256": "$B"}]})"),
                       {"tenants[0].name", "1 to 64"}},
        BadTenantsCase{"name not a string",
                       R"({"tenants": [{"name": 7, "api_key_sha256": "$B"}]})",
                       {"tenants[0].name", "number 7"}},
        BadTenantsCase{"missing hash",
                       R"({"tenants": [$F{"name": "b"}]})",
                       {"tenants[1] (\"b\")", "missing \"api_key_sha256\""}},
        BadTenantsCase{"short hash",
                       R"({"tenants": [$F{"name": "b", "api_key_sha256": "abc"}]})",
                       {"tenants[1] (\"b\").api_key_sha256", "64 hex", "3 characters"}},
        BadTenantsCase{"non-hex hash",
                       absl::StrCat(R"({"tenants": [{"name": "b", "api_key_sha256": ")",
                                    std::string(63, 'a'), "g\"}]}"),
                       {"tenants[0] (\"b\").api_key_sha256"}},
        BadTenantsCase{"limits not an object",
                       R"({"tenants": [{"name": "b", "api_key_sha256": "$B", "limits": 3}]})",
                       {"tenants[0] (\"b\").limits", "must be an object"}},
        BadTenantsCase{"unknown limit",
                       R"({"tenants": [{"name": "b", "api_key_sha256": "$B",
                           "limits": {"stored_vector": 3}}]})",
                       {"tenants[0] (\"b\").limits", "unknown field \"stored_vector\""}},
        BadTenantsCase{"negative count",
                       R"({"tenants": [{"name": "b", "api_key_sha256": "$B",
                           "limits": {"concurrent_generations": -1}}]})",
                       {"limits.concurrent_generations", "negative"}},
        BadTenantsCase{"fractional count",
                       R"({"tenants": [{"name": "b", "api_key_sha256": "$B",
                           "limits": {"stored_vectors": 2.5}}]})",
                       {"limits.stored_vectors", "integer"}},
        BadTenantsCase{"count as a string",
                       R"({"tenants": [{"name": "b", "api_key_sha256": "$B",
                           "limits": {"queued_jobs": "2"}}]})",
                       {"limits.queued_jobs", "string \"2\""}},
        BadTenantsCase{"count as a bool",
                       R"({"tenants": [{"name": "b", "api_key_sha256": "$B",
                           "limits": {"max_new_tokens": true}}]})",
                       {"limits.max_new_tokens", "boolean"}},
        BadTenantsCase{"count too large",
                       R"({"tenants": [{"name": "b", "api_key_sha256": "$B",
                           "limits": {"max_new_tokens": 18446744073709551615}}]})",
                       {"limits.max_new_tokens", "too large"}},
        BadTenantsCase{"negative rate",
                       R"({"tenants": [{"name": "b", "api_key_sha256": "$B",
                           "limits": {"requests_per_second": -0.5}}]})",
                       {"limits.requests_per_second", "negative"}},
        BadTenantsCase{"rate as a string",
                       R"({"tenants": [{"name": "b", "api_key_sha256": "$B",
                           "limits": {"requests_per_second": "50"}}]})",
                       {"limits.requests_per_second", "number"}},
        BadTenantsCase{"duplicate names",
                       R"({"tenants": [{"name": "b", "api_key_sha256": "$A"},
                                       {"name": "b", "api_key_sha256": "$B"}]})",
                       {"tenants[1] (\"b\").name", "duplicate", "tenants[0]"}},
        BadTenantsCase{"duplicate digests (any case)",
                       absl::StrCat(R"({"tenants": [{"name": "a", "api_key_sha256": "$A"},
                                       {"name": "b", "api_key_sha256": ")",
                                    absl::AsciiStrToUpper(kHashA), R"("}]})"),
                       {"tenants[1] (\"b\").api_key_sha256", "tenants[0] (\"a\")"}},
        BadTenantsCase{"duplicate JSON key",
                       R"({"tenants": [{"name": "a", "api_key_sha256": "$A",
                                        "api_key_sha256": "$B"}]})",
                       {"duplicate key \"api_key_sha256\""}}),
    [](const ::testing::TestParamInfo<BadTenantsCase>& param_info) {
      std::string name = param_info.param.label;
      for (char& c : name) {
        if (!absl::ascii_isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return name;
    });

TEST(TenantsFileTest, LoadsFromDiskAndNamesAMissingFile) {
  TempDir dir;
  const std::string path = dir.Path("tenants.json");
  WriteFile(path,
            absl::StrCat(R"({"tenants": [{"name": "a", "api_key_sha256": ")", kHashA, "\"}]}"));
  absl::StatusOr<std::vector<Tenant>> tenants = LoadTenantsFile(path);
  ASSERT_TRUE(tenants.ok()) << tenants.status();
  EXPECT_EQ((*tenants)[0].name, "a");

  WriteFile(path, R"({"tenants": []})");
  EXPECT_THAT(std::string(LoadTenantsFile(path).status().message()), StartsWith(path + ": "));

  absl::StatusOr<std::vector<Tenant>> missing = LoadTenantsFile(dir.Path("absent.json"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("absent.json"));
}

// ---------------------------------------------------------------------------------------
// Default key

TEST(DefaultKeyTest, CreatesOnceThenReadsBack) {
  TempDir dir;
  const std::string data_dir = dir.Path("data/nested");  // Created, parents included.
  absl::StatusOr<DefaultKey> first = LoadOrCreateDefaultKey(data_dir);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->created);
  EXPECT_EQ(first->path, data_dir + "/api_key");
  EXPECT_TRUE(first->warning.empty());
  EXPECT_THAT(first->key, StartsWith("sk-steerd-"));
  EXPECT_THAT(first->key, SizeIs(10 + 43));
  for (char c : first->key.substr(10)) {
    EXPECT_TRUE(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')
        << first->key;
  }
  EXPECT_EQ(Mode(first->path), 0600u);
  EXPECT_EQ(Mode(data_dir), 0700u);
  // Only the key file: the temporary file is gone.
  std::vector<std::string> entries;
  for (const auto& entry : std::filesystem::directory_iterator(data_dir)) {
    entries.push_back(entry.path().filename().string());
  }
  EXPECT_THAT(entries, ::testing::ElementsAre("api_key"));

  absl::StatusOr<DefaultKey> second = LoadOrCreateDefaultKey(data_dir);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->created);
  EXPECT_EQ(second->key, first->key);

  // Another data directory gets another key.
  absl::StatusOr<DefaultKey> other = LoadOrCreateDefaultKey(dir.Path("other"));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NE(other->key, first->key);
}

TEST(DefaultKeyTest, AcceptsAnOperatorsKeyAndChecksPermissions) {
  TempDir dir;
  const std::string path = dir.Path("api_key");
  WriteFile(path, "  my-own-long-secret-key-123\n\n");
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  absl::StatusOr<DefaultKey> key = LoadOrCreateDefaultKey(dir.path().string());
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->key, "my-own-long-secret-key-123");
  EXPECT_FALSE(key->created);

  // Group access: used, with a warning (Kubernetes fsGroup volumes look like this).
  ASSERT_EQ(chmod(path.c_str(), 0640), 0);
  key = LoadOrCreateDefaultKey(dir.path().string());
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_THAT(key->warning, AllOf(HasSubstr(path), HasSubstr("0640"), HasSubstr("chmod 600")));

  // Access by others: refused.
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  key = LoadOrCreateDefaultKey(dir.path().string());
  EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(key.status().message()),
              AllOf(HasSubstr("0644"), HasSubstr("chmod 600")));
}

TEST(DefaultKeyTest, RejectsAFileThatHoldsNoKeyWithoutQuotingIt) {
  TempDir dir;
  const std::string path = dir.Path("api_key");
  for (const std::string& contents :
       {std::string(""), std::string("short"), std::string("has a space in the middle of it"),
        std::string(600, 'k')}) {
    WriteFile(path, contents);
    ASSERT_EQ(chmod(path.c_str(), 0600), 0);
    absl::StatusOr<DefaultKey> key = LoadOrCreateDefaultKey(dir.path().string());
    EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition) << contents;
    EXPECT_THAT(std::string(key.status().message()), HasSubstr(path));
    if (!contents.empty()) {
      EXPECT_THAT(std::string(key.status().message()), Not(HasSubstr(contents)));
    }
  }
}

TEST(DefaultKeyTest, DefaultTenantAuthenticatesWithTheKey) {
  TempDir dir;
  absl::StatusOr<DefaultKey> key = LoadOrCreateDefaultKey(dir.path().string());
  ASSERT_TRUE(key.ok()) << key.status();
  const Tenant tenant = MakeDefaultTenant(key->key);
  EXPECT_EQ(tenant.name, "default");
  auto auth = Authenticator::Create({{tenant}});
  ASSERT_TRUE(auth.ok()) << auth.status();
  absl::StatusOr<const Tenant*> who = (*auth)->Authenticate("Bearer " + key->key);
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ((*who)->name, "default");
}

// ---------------------------------------------------------------------------------------
// Authenticator

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Authenticator::Options options;
    options.tenants = {MakeTenant("alice", "sk-alice-key-000000"),
                       MakeTenant("bob", "sk-bob-key-111111111")};
    auto auth = Authenticator::Create(options);
    ASSERT_TRUE(auth.ok()) << auth.status();
    auth_ = std::move(*auth);
  }

  void ExpectUnauthenticated(const std::string& value, const std::string& message_part) {
    absl::StatusOr<const Tenant*> who = auth_->Authenticate(value);
    ASSERT_FALSE(who.ok()) << value;
    EXPECT_EQ(who.status().code(), absl::StatusCode::kUnauthenticated) << value;
    EXPECT_THAT(std::string(who.status().message()), HasSubstr(message_part)) << value;
  }

  std::unique_ptr<Authenticator> auth_;
};

TEST_F(AuthenticatorTest, MapsEachKeyToItsTenant) {
  for (const char* value : {"Bearer sk-alice-key-000000", "bearer sk-alice-key-000000",
                            "BEARER   sk-alice-key-000000  ", "\tBearer\tsk-alice-key-000000"}) {
    absl::StatusOr<const Tenant*> who = auth_->Authenticate(value);
    ASSERT_TRUE(who.ok()) << value << ": " << who.status();
    EXPECT_EQ((*who)->name, "alice");
  }
  absl::StatusOr<const Tenant*> bob = auth_->Authenticate("Bearer sk-bob-key-111111111");
  ASSERT_TRUE(bob.ok()) << bob.status();
  EXPECT_EQ((*bob)->name, "bob");
  EXPECT_EQ(*bob, &auth_->tenants()[1]);
}

TEST_F(AuthenticatorTest, RejectsMissingMalformedAndUnknownKeys) {
  ExpectUnauthenticated("", "missing API key");
  ExpectUnauthenticated("   ", "missing API key");
  ExpectUnauthenticated("Bearer", "malformed");
  ExpectUnauthenticated("Bearer   ", "malformed");
  ExpectUnauthenticated("Bearersk-alice-key-000000", "malformed");
  ExpectUnauthenticated("Basic c2VjcmV0LXNlY3JldA==", "malformed");
  ExpectUnauthenticated("Bearer two words", "malformed");
  ExpectUnauthenticated("Bearer sk-alice-key-00000", "unknown API key");
  ExpectUnauthenticated("Bearer sk-alice-key-0000000", "unknown API key");
}

TEST_F(AuthenticatorTest, NeverEchoesTheKey) {
  for (const char* value : {"Bearer sk-secret-guess-42", "Basic sk-secret-guess-42",
                            "Bearer sk-secret guess-42", "Bearer sk-secret-guess-42\x01"}) {
    absl::StatusOr<const Tenant*> who = auth_->Authenticate(value);
    ASSERT_FALSE(who.ok());
    EXPECT_THAT(std::string(who.status().message()), Not(HasSubstr("secret"))) << value;
  }
}

TEST(AuthenticatorCreateTest, ValidatesTenants) {
  EXPECT_EQ(Authenticator::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
  Authenticator::Options same_key;
  same_key.tenants = {MakeTenant("a", "k"), MakeTenant("b", "k")};
  EXPECT_EQ(Authenticator::Create(same_key).status().code(), absl::StatusCode::kInvalidArgument);
  Authenticator::Options bad_hex;
  bad_hex.tenants = {MakeTenant("a", "k")};
  bad_hex.tenants[0].api_key_sha256_hex = "abc";
  EXPECT_EQ(Authenticator::Create(bad_hex).status().code(), absl::StatusCode::kInvalidArgument);
  Authenticator::Options upper;
  upper.tenants = {MakeTenant("a", "key-upper-case-hash")};
  upper.tenants[0].api_key_sha256_hex = absl::AsciiStrToUpper(upper.tenants[0].api_key_sha256_hex);
  auto auth = Authenticator::Create(upper);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE((*auth)->Authenticate("Bearer key-upper-case-hash").ok());
}

// ---------------------------------------------------------------------------------------
// TenantLimiter

class FakeClock {
 public:
  absl::Time Now() {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_) = absl::FromUnixSeconds(1700000000);
};

class TenantLimiterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TenantLimiter::Options options;
    options.clock = [this] { return clock_.Now(); };
    auto limiter = TenantLimiter::Create(options);
    ASSERT_TRUE(limiter.ok()) << limiter.status();
    limiter_ = std::move(*limiter);
  }

  static Tenant WithLimits(const std::string& name, double rps, int64_t concurrent) {
    Tenant tenant;
    tenant.name = name;
    tenant.limits.requests_per_second = rps;
    tenant.limits.concurrent_generations = concurrent;
    return tenant;
  }

  FakeClock clock_;
  std::unique_ptr<TenantLimiter> limiter_;
};

TEST_F(TenantLimiterTest, TokenBucketAllowsBurstThenRate) {
  const Tenant tenant = WithLimits("t", /*rps=*/2, /*concurrent=*/1);
  EXPECT_TRUE(limiter_->CheckRequestRate(tenant).ok());
  EXPECT_TRUE(limiter_->CheckRequestRate(tenant).ok());
  absl::Status over = limiter_->CheckRequestRate(tenant);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.message()),
              AllOf(HasSubstr("requests_per_second limit of 2 "), HasSubstr("500 ms")));

  clock_.Advance(absl::Milliseconds(250));  // Half a token.
  over = limiter_->CheckRequestRate(tenant);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.message()), HasSubstr("250 ms"));
  clock_.Advance(absl::Milliseconds(250));
  EXPECT_TRUE(limiter_->CheckRequestRate(tenant).ok());
  EXPECT_FALSE(limiter_->CheckRequestRate(tenant).ok());

  // A long quiet period refills only up to the burst.
  clock_.Advance(absl::Seconds(100));
  EXPECT_TRUE(limiter_->CheckRequestRate(tenant).ok());
  EXPECT_TRUE(limiter_->CheckRequestRate(tenant).ok());
  EXPECT_FALSE(limiter_->CheckRequestRate(tenant).ok());
}

TEST_F(TenantLimiterTest, FractionalRateHasBurstOfOne) {
  const Tenant tenant = WithLimits("slow", /*rps=*/0.5, /*concurrent=*/1);
  EXPECT_TRUE(limiter_->CheckRequestRate(tenant).ok());
  absl::Status over = limiter_->CheckRequestRate(tenant);
  EXPECT_THAT(std::string(over.message()), HasSubstr("requests_per_second limit of 0.5 "));
  clock_.Advance(absl::Milliseconds(1999));
  EXPECT_FALSE(limiter_->CheckRequestRate(tenant).ok());
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(limiter_->CheckRequestRate(tenant).ok());
}

TEST_F(TenantLimiterTest, ZeroRateIsUnlimitedAndTenantsAreIndependent) {
  const Tenant unlimited = WithLimits("u", /*rps=*/0, /*concurrent=*/1);
  for (int i = 0; i < 10000; ++i) ASSERT_TRUE(limiter_->CheckRequestRate(unlimited).ok());
  const Tenant a = WithLimits("a", /*rps=*/1, /*concurrent=*/1);
  const Tenant b = WithLimits("b", /*rps=*/1, /*concurrent=*/1);
  EXPECT_TRUE(limiter_->CheckRequestRate(a).ok());
  EXPECT_FALSE(limiter_->CheckRequestRate(a).ok());
  EXPECT_TRUE(limiter_->CheckRequestRate(b).ok());
}

TEST_F(TenantLimiterTest, LoweredRateClampsTheBurstAndBackwardClockIsHarmless) {
  Tenant tenant = WithLimits("t", /*rps=*/100, /*concurrent=*/1);
  EXPECT_TRUE(limiter_->CheckRequestRate(tenant).ok());  // 99 tokens left.
  tenant.limits.requests_per_second = 1;                 // Reloaded config.
  EXPECT_TRUE(limiter_->CheckRequestRate(tenant).ok());
  EXPECT_FALSE(limiter_->CheckRequestRate(tenant).ok());
  clock_.Advance(absl::Seconds(-30));
  EXPECT_FALSE(limiter_->CheckRequestRate(tenant).ok());
  clock_.Advance(absl::Seconds(31));
  EXPECT_TRUE(limiter_->CheckRequestRate(tenant).ok());
}

TEST_F(TenantLimiterTest, ConcurrentGenerationSlots) {
  const Tenant tenant = WithLimits("t", /*rps=*/0, /*concurrent=*/2);
  absl::StatusOr<GenerationSlot> first = limiter_->TryStartGeneration(tenant);
  absl::StatusOr<GenerationSlot> second = limiter_->TryStartGeneration(tenant);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(limiter_->ActiveGenerations("t"), 2);
  absl::StatusOr<GenerationSlot> third = limiter_->TryStartGeneration(tenant);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(third.status().message()),
              HasSubstr("concurrent_generations limit of 2 "));
  // Other tenants are not affected.
  EXPECT_TRUE(limiter_->TryStartGeneration(WithLimits("other", 0, 1)).ok());

  // Moving a slot keeps one count; releasing frees it once.
  GenerationSlot moved = std::move(*first);
  EXPECT_FALSE(first->held());
  EXPECT_TRUE(moved.held());
  EXPECT_EQ(limiter_->ActiveGenerations("t"), 2);
  moved.Release();
  moved.Release();
  EXPECT_EQ(limiter_->ActiveGenerations("t"), 1);
  absl::StatusOr<GenerationSlot> again = limiter_->TryStartGeneration(tenant);
  ASSERT_TRUE(again.ok());
  { GenerationSlot scoped = std::move(*again); }  // Destruction releases.
  EXPECT_EQ(limiter_->ActiveGenerations("t"), 1);
  *second = GenerationSlot();  // Move-assignment releases the old slot.
  EXPECT_EQ(limiter_->ActiveGenerations("t"), 0);

  const Tenant none = WithLimits("none", 0, 0);
  EXPECT_EQ(limiter_->TryStartGeneration(none).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(TenantLimiterTest, SlotsNeverExceedTheLimitUnderContention) {
  constexpr int kLimit = 3;
  const Tenant tenant = WithLimits("t", /*rps=*/0, kLimit);
  std::atomic<int> holding{0};
  std::atomic<int> max_holding{0};
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        absl::StatusOr<GenerationSlot> slot = limiter_->TryStartGeneration(tenant);
        if (!slot.ok()) continue;
        const int now = holding.fetch_add(1) + 1;
        int seen = max_holding.load();
        while (now > seen && !max_holding.compare_exchange_weak(seen, now)) {
        }
        admitted.fetch_add(1);
        holding.fetch_sub(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_LE(max_holding.load(), kLimit);
  EXPECT_GT(admitted.load(), 0);
  EXPECT_EQ(limiter_->ActiveGenerations("t"), 0);
}

}  // namespace
}  // namespace steerd
