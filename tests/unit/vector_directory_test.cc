// VectorDirectory: what a replica remembers of stored vectors, and what a change makes
// it forget. The store under it is a real SQLite store, wrapped to count reads and to
// play unreachable.
#include "server/engine/vector_directory.h"

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/store_backend.h"

namespace steerd {
namespace {

// A VectorStore that forwards to another, counts Get() calls and can be "down".
class CountingStore : public VectorStore {
 public:
  explicit CountingStore(VectorStore* store) : store_(store) {}
  int gets = 0;
  bool down = false;

  absl::StatusOr<StoredVector> Create(const StoredVector& metadata, const std::string& bytes,
                                      int64_t max) override {
    return store_->Create(metadata, bytes, max);
  }
  absl::StatusOr<StoredVector> Get(const std::string& tenant, const std::string& name,
                                   std::optional<int64_t> version) override {
    ++gets;
    if (down) return absl::UnavailableError("store down");
    return store_->Get(tenant, name, version);
  }
  absl::StatusOr<std::string> ReadBytes(const std::string& tenant, const std::string& name,
                                        int64_t version) override {
    return store_->ReadBytes(tenant, name, version);
  }
  absl::StatusOr<VectorPage> List(const VectorListQuery& query) override {
    return store_->List(query);
  }
  absl::StatusOr<std::vector<StoredVector>> Delete(const std::string& tenant,
                                                   const std::string& name,
                                                   std::optional<int64_t> version) override {
    return store_->Delete(tenant, name, version);
  }
  absl::StatusOr<int64_t> CountVersions(const std::string& tenant) override {
    return store_->CountVersions(tenant);
  }

 private:
  VectorStore* const store_;
};

class VectorDirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto location = testing::StoreLocation::ForCurrentTest(testing::StoreBackend::kSqlite);
    ASSERT_TRUE(location.ok()) << location.status();
    location_ = std::move(*location);
    auto store = location_->OpenVectorStore(nullptr);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    counting_ = std::make_unique<CountingStore>(store_.get());
    directory_ = std::make_unique<VectorDirectory>(VectorDirectory::Options(), counting_.get());
  }

  int64_t Put(const std::string& name) {
    StoredVector v;
    v.tenant = "t";
    v.name = name;
    v.model = "tiny";
    v.model_fingerprint = "fp";
    v.num_layers = 1;
    v.hidden_size = 2;
    v.dtype = "F32";
    v.layer_norms = {1.0f};
    auto created = store_->Create(v, absl::StrCat(name, " ", ++puts_), -1);
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? created->version : 0;
  }

  int64_t ResolvedVersion(const std::string& name, std::optional<int64_t> version) {
    auto resolved = directory_->Resolve("t", name, version);
    EXPECT_TRUE(resolved.ok()) << resolved.status();
    return resolved.ok() ? resolved->version : 0;
  }

  std::unique_ptr<testing::StoreLocation> location_;
  std::unique_ptr<VectorStore> store_;
  std::unique_ptr<CountingStore> counting_;
  std::unique_ptr<VectorDirectory> directory_;
  int puts_ = 0;
};

TEST_F(VectorDirectoryTest, RemembersVersionsAndTheLatestAliasAcrossAnOutage) {
  Put("calm");
  EXPECT_EQ(ResolvedVersion("calm", std::nullopt), 1);
  EXPECT_EQ(ResolvedVersion("calm", 1), 1);
  EXPECT_EQ(counting_->gets, 1) << "the alias's read also remembered the version";
  counting_->down = true;
  EXPECT_EQ(ResolvedVersion("calm", std::nullopt), 1);
  EXPECT_EQ(ResolvedVersion("calm", 1), 1);
  EXPECT_EQ(counting_->gets, 1);
  // What it never read fails as the store does.
  EXPECT_EQ(directory_->Resolve("t", "other", std::nullopt).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(VectorDirectoryTest, ACreateMovesTheAliasAndADeleteForgetsTheVersion) {
  Put("calm");
  EXPECT_EQ(ResolvedVersion("calm", std::nullopt), 1);
  Put("calm");
  // Until the change is applied, the alias still says 1 (this is the feed's delay).
  EXPECT_EQ(ResolvedVersion("calm", std::nullopt), 1);
  directory_->Apply({7, "t", "calm", 2, VectorChange::Kind::kCreated});
  EXPECT_EQ(ResolvedVersion("calm", std::nullopt), 2);
  EXPECT_EQ(ResolvedVersion("calm", 1), 1);

  ASSERT_TRUE(store_->Delete("t", "calm", 1).ok());
  directory_->Apply({8, "t", "calm", 1, VectorChange::Kind::kDeleted});
  EXPECT_EQ(directory_->Resolve("t", "calm", 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ResolvedVersion("calm", std::nullopt), 2);
  // A deletion of another tenant's same name touches nothing of this one.
  const int gets = counting_->gets;
  directory_->Apply({9, "u", "calm", 2, VectorChange::Kind::kDeleted});
  EXPECT_EQ(ResolvedVersion("calm", 2), 2);
  EXPECT_EQ(counting_->gets, gets);
}

// A read that raced a change is answered but not remembered: it may predate the change.
TEST_F(VectorDirectoryTest, AReadThatRacedAChangeIsNotRemembered) {
  Put("calm");
  class ChangingStore : public CountingStore {
   public:
    ChangingStore(VectorStore* store, VectorDirectory** directory)
        : CountingStore(store), directory_(directory) {}
    absl::StatusOr<StoredVector> Get(const std::string& tenant, const std::string& name,
                                     std::optional<int64_t> version) override {
      auto read = CountingStore::Get(tenant, name, version);
      // The feed applies "calm@2 created" while this read is on its way back.
      if (gets == 1) (*directory_)->Apply({1, "t", "calm", 2, VectorChange::Kind::kCreated});
      return read;
    }

   private:
    VectorDirectory** directory_;
  };
  VectorDirectory* raw = nullptr;
  ChangingStore changing(store_.get(), &raw);
  VectorDirectory directory(VectorDirectory::Options(), &changing);
  raw = &directory;
  EXPECT_EQ(directory.Resolve("t", "calm", std::nullopt)->version, 1);
  EXPECT_EQ(directory.size(), 0);
  Put("calm");
  EXPECT_EQ(directory.Resolve("t", "calm", std::nullopt)->version, 2);
  EXPECT_EQ(directory.size(), 2);
}

TEST_F(VectorDirectoryTest, StartsOverPastItsCapacity) {
  directory_ = std::make_unique<VectorDirectory>(VectorDirectory::Options{4}, counting_.get());
  for (int i = 0; i < 6; ++i) Put(absl::StrCat("v", i));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ResolvedVersion(absl::StrCat("v", i), 1), 1);
  EXPECT_LE(directory_->size(), 4);
}

}  // namespace
}  // namespace steerd
