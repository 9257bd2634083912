// Translation between the Training service's protos (training.proto) and the plain
// types of the training manager: a CreateJobRequest becomes CreateJobParams (optional
// fields stay optional, so "unset" and "0" keep their documented meanings for
// NormalizeJobSpec), and stored jobs, their metrics and watch events become Job,
// JobMetrics and JobEvent messages. Only what the proto alone can get wrong (an enum
// value this server does not know) is rejected here; every other rule is the
// manager's, so both transports and tests see one set of messages.
#ifndef STEERD_SERVER_API_TRAINING_CONVERT_H_
#define STEERD_SERVER_API_TRAINING_CONVERT_H_

#include <optional>

#include "absl/status/statusor.h"
#include "server/engine/training_manager.h"
#include "server/engine/training_types.h"
#include "server/tenancy/tenants.h"
#include "steerd/v1/training.pb.h"

namespace steerd {

// CreateJobRequest -> CreateJobParams. ALGORITHM_UNSPECIFIED becomes RLOO; an unknown
// algorithm or reward type is INVALID_ARGUMENT.
absl::StatusOr<CreateJobParams> FromProto(const v1::CreateJobRequest& request);

// ListJobsRequest.state: STATE_UNSPECIFIED -> nullopt (all jobs); an unknown value is
// INVALID_ARGUMENT.
absl::StatusOr<std::optional<JobState>> JobStateFilter(v1::Job::State state);

v1::Job::State ToProto(JobState state);
void ToProto(const JobMetrics& metrics, v1::JobMetrics* out);
// Timestamps the record holds as InfinitePast (not started, not ended) stay unset.
void ToProto(const JobRecord& job, v1::Job* out);
void ToProto(const JobEvent& event, v1::JobEvent* out);

// The tenant's training limits, from the tenants file's fields of the same meaning.
JobLimits JobLimitsOf(const TenantLimits& limits);

}  // namespace steerd

#endif  // STEERD_SERVER_API_TRAINING_CONVERT_H_
