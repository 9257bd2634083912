// Fuzzes what CreateJob does with a request before it touches the stores: the bytes are
// parsed as a CreateJobRequest (as gRPC would), converted (FromProto) and validated and
// completed with defaults (NormalizeJobSpec) for a small model under default tenant
// limits, with built-in task datasets kept small so each run stays fast.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/api/training_convert.h"
#include "server/engine/job_spec.h"
#include "steerd/v1/training.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  steerd::v1::CreateJobRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto params = steerd::FromProto(request);
  if (!params.ok()) return 0;
  // The manager resolves the model by name first; any non-empty name finds this one.
  if (params->spec.model.empty()) return 0;
  steerd::ModelInfo model;
  model.name = params->spec.model;
  model.num_layers = 4;
  model.hidden_size = 64;
  model.max_context = 256;
  model.chat_template = "steerd-qa";
  steerd::JobSpecCaps caps;
  caps.task_train_examples = 16;
  caps.task_eval_examples = 8;
  const steerd::JobLimits limits = steerd::JobLimitsOf(steerd::TenantLimits());
  auto datasets = steerd::NormalizeJobSpec(model, limits, caps, &*params);
  if (datasets.ok()) (void)steerd::RewardOptionsOf(params->spec);
  return 0;
}
