// An in-process fake steerd for tests of the client library and steerctl: a real gRPC
// server on a free local port (plain or TLS) whose steerd.v1 services have canned
// behaviour, plus gRPC's own grpc.health.v1 service (steerd.v1.Generation reported
// NOT_SERVING). Every call must carry "authorization: Bearer <kFakeApiKey>" (else
// UNAUTHENTICATED). Lists are paged (page size 2 unless asked) with "page:<index>"
// tokens. Models: m0 ... m4; GetModel knows m0 only. Vectors: v0 ... v4 in the list;
// Get/Export/Delete know "known" (Get also "known@1"); Create refuses empty bytes and
// the name "over-limit" (RESOURCE_EXHAUSTED with limit details). Generation: model
// "wrong-fingerprint" fails FAILED_PRECONDITION; GenerateStream sends max_new_tokens
// chunks (3 by default) and has special prompts (below). Training: see the job scripts
// below. Some names and prompts answer UNAVAILABLE (below), for the client's retries.
// What the services saw is kept in ObservedCalls for assertions.
// Thread-safe: the services run on gRPC's threads and record under ObservedCalls::mu.
#ifndef STEERD_TESTS_TESTING_FAKE_STEERD_SERVER_H_
#define STEERD_TESTS_TESTING_FAKE_STEERD_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "steerd/v1/generation.pb.h"
#include "steerd/v1/training.pb.h"
#include "steerd/v1/vectors.pb.h"

namespace steerd::testing {

// The API key the fake services accept.
inline constexpr char kFakeApiKey[] = "test-key";
// How many models and vectors the fake lists hold.
inline constexpr int kFakeNumModels = 5;
inline constexpr int kFakeNumVectors = 5;
// What ExportVector returns: binary bytes with a NUL in the middle, as a safetensors
// file has.
inline const std::string kFakeExportBytes("ST\0\x01\xff payload", 13);

// Prompts with special behaviour in the fake Generation service.
inline constexpr char kForeverPrompt[] = "forever";            // streams until cancelled
inline constexpr char kFailMidStreamPrompt[] = "fail-midway";  // 2 chunks, then INTERNAL
// The first attempt fails UNAVAILABLE before any chunk; the next ones stream as usual.
inline constexpr char kUnavailableFirstPrompt[] = "unavailable-first";
// 1 chunk, then UNAVAILABLE, every attempt.
inline constexpr char kUnavailableMidStreamPrompt[] = "unavailable-midway";

// GetModel names that answer UNAVAILABLE: a name starting with kUnavailableOnceModel
// fails its first attempt on this server and then succeeds (each test its own name);
// kUnavailableModel fails every attempt.
inline constexpr char kUnavailableOnceModel[] = "unavailable-once";
inline constexpr char kUnavailableModel[] = "unavailable-always";

// Jobs of the fake Training service. WatchJob plays a script per id:
//   job-ok       QUEUED, RUNNING, steps 1-4 with metrics, SUCCEEDED publishing arith@3
//   job-fail     QUEUED, RUNNING, step 1, FAILED "out of memory"
//   job-cancel   QUEUED, CANCELLED
//   job-endless* RUNNING, then nothing until the client goes (each test its own id)
//   job-drain    RUNNING, then the stream fails UNAVAILABLE (the server drains)
//   job-unended  RUNNING, then the stream ends OK (a server bug)
//   job-slow     QUEUED, RUNNING, SUCCEEDED, 150 ms apart
//   job-run      RUNNING, then as job-endless (CancelJob leaves it RUNNING)
// CreateJob answers with the job "job-<output_vector>", so `train --output ok` watches
// job-ok. ListJobs has kFakeNumJobs other jobs, job-0 ... job-4.
inline constexpr int kFakeNumJobs = 5;

// What the fake services saw, for assertions.
struct ObservedCalls {
  absl::Mutex mu;
  std::vector<std::string> model_page_tokens ABSL_GUARDED_BY(mu);
  // GetModel calls that reached this server (every attempt of every call).
  int get_model_calls ABSL_GUARDED_BY(mu) = 0;
  // Attempts by call: "GetModel <name>", "GenerateStream <prompt>".
  std::map<std::string, int> attempts ABSL_GUARDED_BY(mu);
  std::vector<v1::ListVectorsRequest> vector_list_requests ABSL_GUARDED_BY(mu);
  v1::CreateVectorRequest last_create ABSL_GUARDED_BY(mu);
  v1::GenerateRequest last_generate ABSL_GUARDED_BY(mu);
  int streams_cancelled ABSL_GUARDED_BY(mu) = 0;
  std::vector<v1::CreateJobRequest> job_creates ABSL_GUARDED_BY(mu);
  std::vector<v1::ListJobsRequest> job_list_requests ABSL_GUARDED_BY(mu);
  // The authorization metadata of every Training call, in order.
  std::vector<std::string> training_authorizations ABSL_GUARDED_BY(mu);
  // Ids of the endless watches that ended (the client went away). Handlers of an
  // earlier test may still be winding down, so tests wait for their own ids.
  std::multiset<std::string> endless_watches_ended ABSL_GUARDED_BY(mu);

  // Waits up to 30 s until `ids` holds `id`.
  bool AwaitId(const std::multiset<std::string>* ids, const std::string& id) {
    absl::MutexLock lock(&mu);
    auto holds = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return ids->count(id) > 0; };
    return mu.AwaitWithTimeout(absl::Condition(&holds), absl::Seconds(30));
  }

  void Reset() {
    absl::MutexLock lock(&mu);
    model_page_tokens.clear();
    get_model_calls = 0;
    attempts.clear();
    vector_list_requests.clear();
    last_create.Clear();
    last_generate.Clear();
    streams_cancelled = 0;
    job_creates.clear();
    job_list_requests.clear();
    training_authorizations.clear();
    endless_watches_ended.clear();
  }
};

class FakeSteerdServer {
 public:
  explicit FakeSteerdServer(std::shared_ptr<grpc::ServerCredentials> credentials =
                                grpc::InsecureServerCredentials());
  ~FakeSteerdServer();

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  bool ok() const { return server_ != nullptr && port_ > 0; }
  ObservedCalls& observed() { return observed_; }

 private:
  ObservedCalls observed_;
  // FakeModels, FakeVectors, FakeGeneration and FakeTraining (fake_steerd_server.cc).
  std::vector<std::unique_ptr<grpc::Service>> services_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace steerd::testing

#endif  // STEERD_TESTS_TESTING_FAKE_STEERD_SERVER_H_
