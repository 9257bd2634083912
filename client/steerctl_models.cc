// steerctl models: the base models the server has loaded.
#include "client/steerctl_common.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/steerd_client.h"
#include "server/util/status_macros.h"

namespace steerd::client::steerctl {

namespace v1 = ::steerd::v1;

absl::Status RunModels(const Command& c) {
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(std::vector<v1::Model> models, client->ListModels());
  if (c.flags.Bool("json")) {
    v1::ListModelsResponse response;
    for (v1::Model& model : models) *response.add_models() = std::move(model);
    return PrintJson(response, c.out);
  }
  if (models.empty()) {
    c.err << "no models loaded\n";
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "ARCHITECTURE", "LAYERS", "HIDDEN", "VOCAB", "CONTEXT", "DTYPE", "DEVICE",
       "CHAT_TEMPLATE", "FINGERPRINT"}};
  for (const v1::Model& model : models) {
    rows.push_back({model.name(), OrDash(model.architecture()),
                    absl::StrCat(model.num_layers()), absl::StrCat(model.hidden_size()),
                    absl::StrCat(model.vocab_size()), absl::StrCat(model.max_context()),
                    OrDash(model.dtype()), OrDash(model.device()),
                    OrDash(model.chat_template()), OrDash(model.fingerprint())});
  }
  PrintTable(rows, c.out);
  return absl::OkStatus();
}

}  // namespace steerd::client::steerctl
