// TLS: with --tls-cert/--tls-key the server speaks only TLS; a client that trusts the
// certificate is served, a plaintext client is not.
#include <string>

#include "absl/strings/str_cat.h"
#include "client/steerd_client.h"
#include "gtest/gtest.h"
#include "tests/testing/server_process.h"
#include "tests/testing/subprocess.h"

namespace steerd {
namespace {

TEST(ServerTlsTest, ServesTlsClientsAndRefusesPlaintext) {
  const std::string dir = testing::MakeTempDir("steerd-tls");
  const std::string cert = dir + "/cert.pem", key = dir + "/key.pem";
  auto openssl = testing::RunShellCommand(absl::StrCat(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
      "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
      key, " -out ", cert));
  ASSERT_EQ(openssl.exit_code, 0) << openssl.err;
  auto server = testing::ServerProcess::Start(
      {dir + "/data", {"--tls-cert", cert, "--tls-key", key}});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_NE((*server)->output().find("with TLS"), std::string::npos);

  client::ClientOptions options;
  options.address = (*server)->address();
  options.api_key = (*server)->default_key();
  options.tls_ca_file = cert;
  options.timeout = absl::Seconds(20);
  auto secure = client::SteerdClient::Create(options);
  ASSERT_TRUE(secure.ok()) << secure.status();
  auto models = (*secure)->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 1u);
  EXPECT_EQ((*models)[0].name(), "steerd-tiny");

  options.tls_ca_file.clear();
  options.timeout = absl::Seconds(3);
  auto plaintext = client::SteerdClient::Create(options);
  ASSERT_TRUE(plaintext.ok());
  auto refused = (*plaintext)->ListModels();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
}

TEST(ServerTlsTest, HalfATlsConfigurationIsAnError) {
  const std::string dir = testing::MakeTempDir("steerd-tls-half");
  auto server = testing::ServerProcess::Start({dir + "/data", {"--tls-cert", dir + "/x.pem"}});
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("TLS needs both --tls-cert and --tls-key"),
            std::string::npos)
      << server.status();
}

}  // namespace
}  // namespace steerd
