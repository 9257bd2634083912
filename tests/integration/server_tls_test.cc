// TLS: with --tls-cert/--tls-key the server speaks only TLS, on the gRPC port and on the
// OpenAI-compatible HTTP port alike; a client that trusts the certificate is served, a
// plaintext client is not.
#include <httplib.h>

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
      {dir + "/data",
       {"--tls-cert", cert, "--tls-key", key, "--http-listen", "127.0.0.1:0"}});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_NE((*server)->output().find("with TLS"), std::string::npos);
  ASSERT_NE((*server)->http_port(), 0) << (*server)->output();

  // HTTPS, the certificate trusted: served.
  httplib::SSLClient https("127.0.0.1", (*server)->http_port());
  https.set_ca_cert_path(cert.c_str());
  https.enable_server_certificate_verification(true);
  https.set_bearer_token_auth((*server)->default_key().c_str());
  const httplib::Result listed = https.Get("/v1/models");
  ASSERT_TRUE(listed) << httplib::to_string(listed.error());
  EXPECT_EQ(listed->status, 200) << listed->body;
  EXPECT_NE(listed->body.find("\"steerd-tiny\""), std::string::npos) << listed->body;
  // Plain HTTP on the TLS port: no answer.
  httplib::Client plain("127.0.0.1", (*server)->http_port());
  plain.set_read_timeout(3, 0);
  const httplib::Result refused_http = plain.Get("/health");
  EXPECT_TRUE(!refused_http || refused_http->status != 200);

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
