#include "tests/testing/in_process_server.h"

#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/cli/default_model.h"
#include "server/util/status_macros.h"
#include "tests/testing/timeouts.h"

namespace steerd::testing {

absl::StatusOr<std::unique_ptr<InProcessServer>> InProcessServer::Start(Options options) {
  std::error_code error;
  std::filesystem::create_directories(options.data_dir, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", options.data_dir, ": ", error.message()));
  }
  std::unique_ptr<InProcessServer> server(new InProcessServer());
  if (options.tenants.empty()) {
    ASSIGN_OR_RETURN(DefaultKey key, LoadOrCreateDefaultKey(options.data_dir));
    server->default_key_ = key.key;
    options.tenants.push_back(MakeDefaultTenant(key.key));
  }
  if (options.core.models.empty()) {
    ASSIGN_OR_RETURN(std::string dir, FindDefaultModel());
    options.core.models.push_back({kDefaultModelName, dir});
  }
  if (options.core.num_threads == 0) options.core.num_threads = 1;

  ComposedServer::Options composed;
  composed.core = std::move(options.core);
  composed.training = options.training;
  composed.server.listen_address = "127.0.0.1:0";
  composed.server.max_message_bytes = options.max_message_bytes;
  if (options.http) {
    composed.http.emplace();
    composed.http->listen_address = "127.0.0.1:0";
    composed.http->max_body_bytes = options.max_message_bytes;
    composed.http->write_timeout = options.http_write_timeout;
    composed.http->send_buffer_bytes = options.http_send_buffer_bytes;
  }
  composed.tenants = std::move(options.tenants);
  composed.data_dir = options.data_dir;
  ASSIGN_OR_RETURN(server->server_, ComposedServer::Start(composed));
  RETURN_IF_ERROR(server->server_->LoadModels());
  return server;
}

InProcessServer::~InProcessServer() = default;

std::string InProcessServer::http_address() const {
  return absl::StrCat("127.0.0.1:", server_->http_port());
}

std::string InProcessServer::address() const {
  return absl::StrCat("127.0.0.1:", server_->port());
}

std::unique_ptr<client::SteerdClient> InProcessServer::Client(const std::string& key) const {
  client::ClientOptions options;
  options.api_key = key;
  options.timeout = ScaledTimeout(absl::Seconds(120));
  return client::SteerdClient::CreateWithChannel(
      server_->InProcessChannel(client::DefaultChannelArguments()), options);
}

std::string InProcessServer::ScrapeMetrics() const { return server_->metrics()->Render(); }

}  // namespace steerd::testing
