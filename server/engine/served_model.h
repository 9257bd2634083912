// One model as the serving core holds it: its weights, tokenizer, chat template,
// resident vectors and engine. Internal to server/engine (it needs torch): the serving
// core owns these, and the training manager borrows them to run jobs on the same model
// and engine. Immutable after ServingCore::Create() (the engine and cache are
// thread-safe themselves).
#ifndef STEERD_SERVER_ENGINE_SERVED_MODEL_H_
#define STEERD_SERVER_ENGINE_SERVED_MODEL_H_

#include <memory>
#include <optional>
#include <vector>

#include "server/engine/engine.h"
#include "server/engine/metrics.h"
#include "server/engine/serving_core.h"
#include "server/engine/vector_cache.h"
#include "server/model/chat_template.h"
#include "server/model/tokenizer.h"
#include "server/model/transformer.h"

namespace steerd {

struct ServingCore::ServedModel {
  ModelInfo info;
  ModelMetrics metrics;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat_template;
  // [num_layers] residual-stream RMS per layer, measured once at load: uploads are
  // bounded relative to it (VectorTarget::residual_rms).
  std::vector<float> residual_rms;
  std::unique_ptr<VectorCache> vectors;
  std::unique_ptr<Engine> engine;  // Last: stops before what it uses goes away.
};

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_SERVED_MODEL_H_
