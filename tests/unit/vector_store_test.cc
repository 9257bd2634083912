#include "server/storage/sqlite_vector_store.h"
#include "tests/testing/store_backend.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/tenancy/sha256.h"

namespace steerd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;

// (name, version) of each entry, for compact expectations.
std::vector<std::pair<std::string, int64_t>> Refs(const std::vector<StoredVector>& vectors) {
  std::vector<std::pair<std::string, int64_t>> refs;
  for (const StoredVector& v : vectors) refs.emplace_back(v.name, v.version);
  return refs;
}

// The fixture of every test: a fresh store on backend(), on a location of its own.
class VectorStoreTestBase : public ::testing::Test {
 protected:
  virtual testing::StoreBackend backend() const = 0;

  void SetUp() override {
    absl::StatusOr<std::unique_ptr<testing::StoreLocation>> location =
        testing::StoreLocation::ForCurrentTest(backend());
    ASSERT_TRUE(location.ok()) << location.status();
    location_ = std::move(*location);
    path_ = location_->sqlite_path();
    Open();
  }
  void TearDown() override {
    store_.reset();
    location_.reset();
  }

  void Open() {
    absl::StatusOr<std::unique_ptr<VectorStore>> store = location_->OpenVectorStore([this] {
      absl::MutexLock lock(&clock_mu_);
      return now_ += absl::Milliseconds(1) + absl::Nanoseconds(7);
    });
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  // Raw SQL on the database under the store, through a connection of its own.
  void SqlOnFile(const std::string& sql) {
    const absl::Status status = location_->Exec(sql);
    ASSERT_TRUE(status.ok()) << status;
  }
  // New store objects on the same data, as after a restart.
  void Reopen() {
    store_.reset();
    location_->Close();
    Open();
  }

  static StoredVector Metadata(const std::string& tenant, const std::string& name,
                               const std::string& model = "tiny") {
    StoredVector v;
    v.tenant = tenant;
    v.name = name;
    v.model = model;
    v.model_fingerprint = "fp-" + model;
    v.num_layers = 3;
    v.hidden_size = 8;
    v.dtype = "F32";
    v.layer_norms = {0.5f, 1.25f, 3.0e-7f};
    v.description = "for tests";
    return v;
  }

  // Creates a version with distinct bytes and returns its version number.
  int64_t Put(const std::string& tenant, const std::string& name,
              const std::string& model = "tiny") {
    const std::string bytes = absl::StrCat("safetensors of ", tenant, "/", name, " #", ++puts_);
    absl::StatusOr<StoredVector> created =
        store_->Create(Metadata(tenant, name, model), bytes, /*max_stored_versions=*/-1);
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? created->version : -1;
  }

  VectorPage List(VectorListQuery query) {
    absl::StatusOr<VectorPage> page = store_->List(query);
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? *page : VectorPage{};
  }

  std::unique_ptr<testing::StoreLocation> location_;
  std::string path_;  // The SQLite backend's database file.
  absl::Mutex clock_mu_;
  absl::Time now_ ABSL_GUARDED_BY(clock_mu_) = absl::FromUnixSeconds(1700000000);
  int puts_ = 0;
  std::unique_ptr<VectorStore> store_;
};

// The conformance suite: every test runs on every backend.
class VectorStoreTest : public VectorStoreTestBase,
                        public ::testing::WithParamInterface<testing::StoreBackend> {
 protected:
  testing::StoreBackend backend() const override { return GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(Backends, VectorStoreTest,
                         testing::kEveryStoreBackend, testing::StoreBackendTestName);

// What only the SQLite file has: its schema_version rows, damaged files.
class SqliteVectorStoreTest : public VectorStoreTestBase {
 protected:
  testing::StoreBackend backend() const override { return testing::StoreBackend::kSqlite; }
};

TEST_P(VectorStoreTest, CreateFillsInAndRoundTripsEveryField) {
  StoredVector metadata = Metadata("acme", "calm");
  metadata.source = StoredVector::Source::kTraining;
  metadata.job_id = "job-7";
  const std::string bytes("\0\1binary\xff", 10);
  absl::StatusOr<StoredVector> created = store_->Create(metadata, bytes, 10);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->version, 1);
  EXPECT_EQ(created->sha256, Sha256Hex(bytes));
  EXPECT_EQ(created->size_bytes, 10);
  EXPECT_EQ(created->create_time, absl::FromUnixMicros(absl::ToUnixMicros(created->create_time)))
      << "create_time is truncated to what is stored";

  absl::StatusOr<StoredVector> got = store_->Get("acme", "calm", 1);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->tenant, "acme");
  EXPECT_EQ(got->name, "calm");
  EXPECT_EQ(got->version, 1);
  EXPECT_EQ(got->model, "tiny");
  EXPECT_EQ(got->model_fingerprint, "fp-tiny");
  EXPECT_EQ(got->num_layers, 3);
  EXPECT_EQ(got->hidden_size, 8);
  EXPECT_EQ(got->dtype, "F32");
  EXPECT_EQ(got->sha256, created->sha256);
  EXPECT_EQ(got->size_bytes, 10);
  EXPECT_EQ(got->layer_norms, metadata.layer_norms);
  EXPECT_EQ(got->create_time, created->create_time);
  EXPECT_EQ(got->source, StoredVector::Source::kTraining);
  EXPECT_EQ(got->job_id, "job-7");
  EXPECT_EQ(got->description, "for tests");

  absl::StatusOr<std::string> read = store_->ReadBytes("acme", "calm", 1);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, bytes);
}

TEST_P(VectorStoreTest, RejectsInconsistentMetadata) {
  StoredVector v = Metadata("t", "n");
  v.sha256 = Sha256Hex("other bytes");
  EXPECT_EQ(store_->Create(v, "bytes", -1).status().code(), absl::StatusCode::kInvalidArgument);
  v = Metadata("t", "n");
  v.size_bytes = 99;
  EXPECT_EQ(store_->Create(v, "bytes", -1).status().code(), absl::StatusCode::kInvalidArgument);
  v = Metadata("t", "n");
  v.layer_norms.pop_back();
  EXPECT_EQ(store_->Create(v, "bytes", -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Create(Metadata("", "n"), "b", -1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Create(Metadata("t", ""), "b", -1).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A matching sha256 is accepted.
  v = Metadata("t", "n");
  v.sha256 = Sha256Hex("bytes");
  v.size_bytes = 5;
  EXPECT_TRUE(store_->Create(v, "bytes", -1).ok());
}

TEST_P(VectorStoreTest, VersionsIncrementAndAreNeverReused) {
  EXPECT_EQ(Put("t", "a"), 1);
  EXPECT_EQ(Put("t", "a"), 2);
  EXPECT_EQ(Put("t", "b"), 1);
  EXPECT_EQ(Put("t", "a"), 3);

  // Deleting the latest version does not free its number.
  ASSERT_TRUE(store_->Delete("t", "a", 3).ok());
  EXPECT_EQ(Put("t", "a"), 4);
  // Nor does deleting every version of the name.
  absl::StatusOr<std::vector<StoredVector>> deleted = store_->Delete("t", "a", std::nullopt);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_THAT(Refs(*deleted), ElementsAre(Pair("a", 1), Pair("a", 2), Pair("a", 4)));
  EXPECT_EQ(Put("t", "a"), 5);
  // Even across a restart.
  Reopen();
  EXPECT_EQ(Put("t", "a"), 6);
  EXPECT_EQ(Put("t", "b"), 2);
}

TEST_P(VectorStoreTest, GetResolvesLatestAndReportsNotFound) {
  Put("t", "a");
  Put("t", "a");
  Put("t", "a");
  absl::StatusOr<StoredVector> latest = store_->Get("t", "a", std::nullopt);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->version, 3);
  ASSERT_TRUE(store_->Delete("t", "a", 3).ok());
  latest = store_->Get("t", "a", std::nullopt);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->version, 2) << "latest falls back after deleting the newest";
  EXPECT_EQ(store_->Get("t", "a", 1)->version, 1);

  absl::StatusOr<StoredVector> gone = store_->Get("t", "a", 3);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(gone.status().message(), "vector \"a@3\" not found");
  gone = store_->Get("t", "nope", std::nullopt);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(gone.status().message(), "vector \"nope\" not found");
  EXPECT_EQ(store_->ReadBytes("t", "a", 3).status().message(), "vector \"a@3\" not found");
}

TEST_P(VectorStoreTest, DeleteOneOrAll) {
  Put("t", "a");
  Put("t", "a");
  Put("t", "a");
  Put("t", "b");
  absl::StatusOr<std::vector<StoredVector>> one = store_->Delete("t", "a", 2);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_THAT(Refs(*one), ElementsAre(Pair("a", 2)));
  EXPECT_EQ(one->front().model, "tiny") << "returns the deleted metadata";
  EXPECT_EQ(store_->Get("t", "a", 2).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadBytes("t", "a", 2).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete("t", "a", 2).status().message(), "vector \"a@2\" not found");
  EXPECT_EQ(*store_->CountVersions("t"), 3);

  absl::StatusOr<std::vector<StoredVector>> all = store_->Delete("t", "a", std::nullopt);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(Refs(*all), ElementsAre(Pair("a", 1), Pair("a", 3)));
  EXPECT_EQ(store_->Get("t", "a", std::nullopt).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete("t", "a", std::nullopt).status().message(), "vector \"a\" not found");
  EXPECT_EQ(*store_->CountVersions("t"), 1);
  EXPECT_TRUE(store_->Get("t", "b", 1).ok()) << "other names are untouched";
}

TEST_P(VectorStoreTest, TenantsAreIsolated) {
  Put("alice", "shared");
  Put("alice", "shared");
  Put("bob", "shared");
  Put("bob", "bobs");
  EXPECT_EQ(store_->Get("bob", "shared", std::nullopt)->version, 1);
  EXPECT_EQ(store_->Get("alice", "shared", std::nullopt)->version, 2);
  absl::StatusOr<StoredVector> hidden = store_->Get("alice", "bobs", std::nullopt);
  EXPECT_EQ(hidden.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(hidden.status().message()), Not(HasSubstr("bob\"")));
  EXPECT_THAT(std::string(hidden.status().message()), Not(HasSubstr("alice")));
  EXPECT_EQ(store_->ReadBytes("alice", "bobs", 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete("alice", "bobs", std::nullopt).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete("alice", "shared", 2).status().code(), absl::StatusCode::kOk);
  EXPECT_EQ(*store_->CountVersions("alice"), 1);
  EXPECT_EQ(*store_->CountVersions("bob"), 2);
  EXPECT_EQ(*store_->CountVersions("carol"), 0);
  VectorListQuery query;
  query.tenant = "bob";
  query.all_versions = true;
  EXPECT_THAT(Refs(List(query).vectors), ElementsAre(Pair("bobs", 1), Pair("shared", 1)));
  EXPECT_THAT(store_->ReadBytes("bob", "shared", 1).value(), HasSubstr("bob/shared"));
}

TEST_P(VectorStoreTest, StoredVectorsLimitIsCheckedOnCreate) {
  ASSERT_TRUE(store_->Create(Metadata("t", "a"), "1", 2).ok());
  ASSERT_TRUE(store_->Create(Metadata("t", "b"), "2", 2).ok());
  absl::StatusOr<StoredVector> over = store_->Create(Metadata("t", "a"), "3", 2);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.status().message()), HasSubstr("stored_vectors limit of 2 reached"));
  // A refused create does not consume a version number.
  EXPECT_TRUE(store_->Create(Metadata("other", "a"), "x", 2).ok()) << "per tenant";
  ASSERT_TRUE(store_->Delete("t", "b", std::nullopt).ok());
  absl::StatusOr<StoredVector> fits = store_->Create(Metadata("t", "a"), "3", 2);
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(fits->version, 2);
  EXPECT_EQ(store_->Create(Metadata("t", "c"), "4", 0).status().code(),
            absl::StatusCode::kResourceExhausted);
}

class VectorStoreListTest : public VectorStoreTest {
 protected:
  void SetUp() override {
    VectorStoreTest::SetUp();
    // Created out of name order; versions 1..3 of "b" alternate models.
    Put("t", "c", "tiny");   // c@1
    Put("t", "b", "tiny");   // b@1
    Put("t", "b", "large");  // b@2
    Put("t", "b", "tiny");   // b@3
    Put("t", "a", "large");  // a@1
    Put("t", "B", "tiny");   // B@1: uppercase sorts first (byte order).
    Put("other", "a", "tiny");
  }

  VectorListQuery Query(bool all_versions, int64_t limit = 50) {
    VectorListQuery query;
    query.tenant = "t";
    query.all_versions = all_versions;
    query.limit = limit;
    return query;
  }
};

INSTANTIATE_TEST_SUITE_P(Backends, VectorStoreListTest,
                         testing::kEveryStoreBackend, testing::StoreBackendTestName);

TEST_P(VectorStoreListTest, OrdersByNameThenNewestFirst) {
  VectorPage all = List(Query(/*all_versions=*/true));
  EXPECT_THAT(Refs(all.vectors), ElementsAre(Pair("B", 1), Pair("a", 1), Pair("b", 3), Pair("b", 2),
                                             Pair("b", 1), Pair("c", 1)));
  EXPECT_FALSE(all.more);
  EXPECT_EQ(all.vectors[0].tenant, "t");

  VectorPage latest = List(Query(/*all_versions=*/false));
  EXPECT_THAT(Refs(latest.vectors),
              ElementsAre(Pair("B", 1), Pair("a", 1), Pair("b", 3), Pair("c", 1)));
  EXPECT_FALSE(latest.more);
}

TEST_P(VectorStoreListTest, Filters) {
  VectorListQuery query = Query(/*all_versions=*/false);
  query.model = "large";
  // b's latest overall is b@3 (tiny); among "large" versions it is b@2.
  EXPECT_THAT(Refs(List(query).vectors), ElementsAre(Pair("a", 1), Pair("b", 2)));
  query.all_versions = true;
  EXPECT_THAT(Refs(List(query).vectors), ElementsAre(Pair("a", 1), Pair("b", 2)));
  query.model = "tiny";
  query.name = "b";
  EXPECT_THAT(Refs(List(query).vectors), ElementsAre(Pair("b", 3), Pair("b", 1)));
  query.all_versions = false;
  EXPECT_THAT(Refs(List(query).vectors), ElementsAre(Pair("b", 3)));
  query.model = "";
  query.name = "zzz";
  EXPECT_TRUE(List(query).vectors.empty());
  query.name = "";
  query.model = "unknown-model";
  EXPECT_TRUE(List(query).vectors.empty());
}

TEST_P(VectorStoreListTest, PagesWithLimitAndCursor) {
  for (const bool all_versions : {true, false}) {
    SCOPED_TRACE(all_versions ? "all versions" : "latest only");
    const std::vector<std::pair<std::string, int64_t>> expected =
        Refs(List(Query(all_versions)).vectors);
    for (int64_t page_size : {1, 2, 3, 4, 100}) {
      SCOPED_TRACE(absl::StrCat("page size ", page_size));
      std::vector<std::pair<std::string, int64_t>> seen;
      VectorListQuery query = Query(all_versions, page_size);
      for (int pages = 0; pages < 20; ++pages) {
        VectorPage page = List(query);
        EXPECT_LE(static_cast<int64_t>(page.vectors.size()), page_size);
        for (const auto& ref : Refs(page.vectors)) seen.push_back(ref);
        if (!page.more) break;
        ASSERT_FALSE(page.vectors.empty());
        query.after_name = page.vectors.back().name;
        query.after_version = page.vectors.back().version;
      }
      EXPECT_EQ(seen, expected);
    }
  }
  // Limit 0 returns nothing but says whether something exists.
  VectorPage empty = List(Query(/*all_versions=*/true, /*limit=*/0));
  EXPECT_TRUE(empty.vectors.empty());
  EXPECT_TRUE(empty.more);
  VectorListQuery nobody = Query(/*all_versions=*/true, /*limit=*/0);
  nobody.tenant = "nobody";
  EXPECT_FALSE(List(nobody).more);
  VectorListQuery negative = Query(true, -1);
  EXPECT_EQ(store_->List(negative).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(VectorStoreListTest, CursorResumesStrictlyAfterInListingOrder) {
  VectorListQuery query = Query(/*all_versions=*/true);
  query.after_name = "b";
  query.after_version = 2;
  EXPECT_THAT(Refs(List(query).vectors), ElementsAre(Pair("b", 1), Pair("c", 1)));
  // A cursor whose entry was deleted meanwhile still resumes at the right place.
  query.after_name = "aa";
  query.after_version = 1;
  EXPECT_THAT(Refs(List(query).vectors),
              ElementsAre(Pair("b", 3), Pair("b", 2), Pair("b", 1), Pair("c", 1)));
}

TEST_P(VectorStoreTest, PersistsAcrossReopen) {
  const std::string bytes(300 * 1024, 'x');  // About a real 8B-model vector.
  absl::StatusOr<StoredVector> created = store_->Create(Metadata("t", "big"), bytes, -1);
  ASSERT_TRUE(created.ok()) << created.status();
  Put("t", "small");
  Reopen();
  absl::StatusOr<StoredVector> got = store_->Get("t", "big", std::nullopt);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->sha256, created->sha256);
  EXPECT_EQ(got->create_time, created->create_time);
  EXPECT_EQ(*store_->ReadBytes("t", "big", 1), bytes);
  EXPECT_EQ(*store_->CountVersions("t"), 2);
}

TEST_P(VectorStoreTest, ConcurrentCreatesGetDistinctVersions) {
  constexpr int kThreads = 6;
  constexpr int kPerThread = 8;
  constexpr int kLimit = 40;  // Fewer than kThreads * kPerThread attempts.
  absl::Mutex mu;
  std::vector<int64_t> versions;
  int refused = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        absl::StatusOr<StoredVector> created =
            store_->Create(Metadata("t", "hot"), absl::StrCat("bytes ", t, ".", i), kLimit);
        // Readers run alongside the writers.
        VectorListQuery query;
        query.tenant = "t";
        EXPECT_TRUE(store_->List(query).ok());
        absl::MutexLock lock(&mu);
        if (created.ok()) {
          versions.push_back(created->version);
        } else {
          EXPECT_EQ(created.status().code(), absl::StatusCode::kResourceExhausted);
          ++refused;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_EQ(versions.size(), static_cast<size_t>(kLimit));
  EXPECT_EQ(refused, kThreads * kPerThread - kLimit);
  std::sort(versions.begin(), versions.end());
  for (int i = 0; i < kLimit; ++i) EXPECT_EQ(versions[i], i + 1);
  EXPECT_EQ(*store_->CountVersions("t"), kLimit);
}

TEST_F(SqliteVectorStoreTest, SchemaVersionIsCheckedAndTheFileMayBeShared) {
  Put("t", "a");
  store_.reset();
  // Another store's tables in the same file, and its own schema_version row, are fine.
  SqlOnFile("CREATE TABLE jobs (id TEXT PRIMARY KEY);"
         "INSERT INTO schema_version (component, version) VALUES ('jobs', 7);");
  Open();
  EXPECT_EQ(store_->Get("t", "a", 1)->version, 1);
  store_.reset();

  // A file written by a newer steerd is refused rather than misread.
  SqlOnFile("UPDATE schema_version SET version = 2 WHERE component = 'vectors'");
  SqliteVectorStore::Options options;
  options.path = path_;
  absl::StatusOr<std::unique_ptr<SqliteVectorStore>> newer = SqliteVectorStore::Create(options);
  EXPECT_EQ(newer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(newer.status().message()), HasSubstr("schema version 2"));

  SqlOnFile("UPDATE schema_version SET version = 1 WHERE component = 'vectors'");
  Open();
  EXPECT_EQ(store_->Get("t", "a", 1)->version, 1);
}

TEST_F(SqliteVectorStoreTest, NotADatabaseIsAnError) {
  store_.reset();
  const std::filesystem::path dir = std::filesystem::path(path_).parent_path();
  const std::string junk = (dir / "junk.db").string();
  {
    std::ofstream out(junk, std::ios::binary);
    out << std::string(8192, 'j');
  }
  SqliteVectorStore::Options options;
  options.path = junk;
  absl::StatusOr<std::unique_ptr<SqliteVectorStore>> store = SqliteVectorStore::Create(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("not a database"));
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(junk));
  EXPECT_EQ(SqliteVectorStore::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
}

// A file whose pages were damaged is refused when opened, naming the path, instead of
// opening and failing every later query with INTERNAL (before the fix the server
// started and reported SERVING).
TEST_F(SqliteVectorStoreTest, ADamagedFileIsRefusedAtOpen) {
  for (int i = 0; i < 20; ++i) Put("t", absl::StrCat("v", i));
  store_.reset();
  SqlOnFile("PRAGMA wal_checkpoint(TRUNCATE)");
  const auto size = std::filesystem::file_size(path_);
  ASSERT_GT(size, 3 * 4096u);
  {
    // Page 1 (the header and schema) stays; everything after it becomes junk.
    std::fstream file(path_, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(4096);
    const std::string junk(size - 4096, '\x5a');
    file.write(junk.data(), junk.size());
  }
  SqliteVectorStore::Options options;
  options.path = path_;
  absl::StatusOr<std::unique_ptr<SqliteVectorStore>> store = SqliteVectorStore::Create(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(path_));
}

// A version whose Create() returned survives the process being killed right after.
TEST_P(VectorStoreTest, CreateIsDurableAcrossKill9) {
  store_.reset();  // No connection may cross fork().
  location_->Close();
  const std::string bytes = "durable bytes";
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto store = location_->OpenVectorStore(nullptr);
    if (!store.ok()) _exit(2);
    if (!(*store)->Create(Metadata("t", "survivor"), bytes, -1).ok()) _exit(3);
    kill(getpid(), SIGKILL);  // No destructors, no close, no checkpoint.
    _exit(4);
  }
  int wait_status = 0;
  ASSERT_EQ(waitpid(child, &wait_status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wait_status)) << "child exited with " << WEXITSTATUS(wait_status);
  ASSERT_EQ(WTERMSIG(wait_status), SIGKILL);
  Open();
  absl::StatusOr<StoredVector> got = store_->Get("t", "survivor", std::nullopt);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->version, 1);
  EXPECT_EQ(*store_->ReadBytes("t", "survivor", 1), bytes);
}

}  // namespace
}  // namespace steerd
