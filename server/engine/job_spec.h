// Validation of a training job request, and its defaults: everything CreateJob can
// reject without the stores, with the codes and messages training.proto documents
// (INVALID_ARGUMENT naming the field, FAILED_PRECONDITION for a chat template the model
// lacks, RESOURCE_EXHAUSTED for a tenant's per-job limits). On success every default is
// filled in (hyperparameters, reward type and values, the built-in task's datasets), so
// the stored job says exactly what it runs with. Torch-free and stateless.
#ifndef STEERD_SERVER_ENGINE_JOB_SPEC_H_
#define STEERD_SERVER_ENGINE_JOB_SPEC_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "server/engine/job_store.h"
#include "server/engine/serving_core.h"
#include "server/engine/training_manager.h"
#include "server/train/rewards.h"

namespace steerd {

// Job ids are "job-" and 24 hex digits; anything longer than this is refused before
// any lookup, so an error never echoes a client's megabyte-long id.
inline constexpr size_t kMaxJobIdBytes = 64;

// INVALID_ARGUMENT for an empty id or one longer than kMaxJobIdBytes (the message
// gives its length, not its bytes).
absl::Status ValidateJobId(const std::string& id);

// Checks `params` for `model` and the tenant's `limits`, fills every default in
// `params->spec` and returns the job's datasets (inline examples, or the built-in task's
// train split and evaluation split, drawn with data seed 0 like the offline CLI's
// `steerd train --task` and `steerd eval`, so offline and API accuracies are measured on
// the same problems). `params->spec.model` must
// already name `model` (the caller resolves NOT_FOUND). The job's seed is drawn here
// when the request leaves it unset.
absl::StatusOr<JobDatasets> NormalizeJobSpec(const ModelInfo& model, const JobLimits& limits,
                                             const JobSpecCaps& caps, CreateJobParams* params);

// The reward of a normalized spec as the verifier's options.
train::RewardOptions RewardOptionsOf(const JobSpec& spec);

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_JOB_SPEC_H_
