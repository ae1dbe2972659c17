#include "k8s/kubeconfig.h"

#include <filesystem>
#include <fstream>
#include <map>

#include <gtest/gtest.h>

#include "../k8s/fake_apiserver.h"

namespace cw::k8s {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::TempDir;

TEST(KubeconfigTest, CurrentContextWithTokenFile) {
  const ClusterConfig c = parseKubeconfig(fixture("kubeconfig-token.yaml"), "/home/sre/.kube");
  EXPECT_EQ(c.server, "https://api.prod-eu.example.internal");
  EXPECT_EQ(c.ca_file, "/etc/capturewatch/prod-eu-ca.crt");
  EXPECT_FALSE(c.insecure_skip_tls_verify);
  EXPECT_EQ(c.namespace_, "edge");
  EXPECT_EQ(c.token_file, "/home/sre/.kube/tokens/capturewatch.token");  // relative to the file
  EXPECT_EQ(c.source, "context prod-eu");
}

TEST(KubeconfigTest, NamedContextWithInlineTokenAndInsecure) {
  const ClusterConfig c =
      parseKubeconfig(fixture("kubeconfig-token.yaml"), "/home/sre/.kube", "staging");
  EXPECT_EQ(c.server, "https://staging.example.internal:6443");
  EXPECT_TRUE(c.insecure_skip_tls_verify);
  EXPECT_EQ(c.token, "eyJhbGciOiJSUzI1NiIsImtpZCI6ImNpLWJvdCJ9.c3RhZ2luZw.c2lnbmF0dXJl");
  EXPECT_EQ(c.bearerToken(), c.token);
  EXPECT_TRUE(c.token_file.empty());
}

TEST(KubeconfigTest, InlineCertificateData) {
  const ClusterConfig c = parseKubeconfig(fixture("kubeconfig-data.yaml"), "/root/.kube");
  EXPECT_EQ(c.server, "https://10.0.3.10:6443");
  EXPECT_EQ(c.ca_data.rfind("-----BEGIN CERTIFICATE-----\nMIIBdzCC", 0), 0u);
  EXPECT_EQ(c.client_cert_data.rfind("-----BEGIN CERTIFICATE-----\nMIIBfDCC", 0), 0u);
  EXPECT_EQ(c.client_key_data.rfind("-----BEGIN PRIVATE KEY-----\n", 0), 0u);
  EXPECT_TRUE(c.ca_file.empty());
  EXPECT_TRUE(c.token.empty());
}

TEST(KubeconfigTest, CertificateFilesRelativeToTheKubeconfig) {
  const ClusterConfig c = parseKubeconfig(fixture("kubeconfig-files.yaml"), "/root/.kube");
  EXPECT_EQ(c.ca_file, "/root/.kube/pki/ca.crt");
  EXPECT_EQ(c.client_cert_file, "/root/.kube/pki/client.crt");
  EXPECT_EQ(c.client_key_file, "/etc/kind/client.key");
}

TEST(KubeconfigTest, ExecPluginIsRefusedWithAClearMessage) {
  try {
    parseKubeconfig(fixture("kubeconfig-exec.yaml"), "/root/.kube");
    FAIL() << "accepted an exec-only user";
  } catch (const KubeconfigError& e) {
    EXPECT_NE(std::string(e.what()).find("exec or auth-provider plugin"), std::string::npos)
        << e.what();
  }
}

TEST(KubeconfigTest, Errors) {
  const std::map<std::string, std::string> cases = {
      {"", "not a kubeconfig"},
      {"- a\n- b\n", "not a kubeconfig"},
      {"clusters: [\n", "invalid kubeconfig"},
      {"apiVersion: v1\n", "no current-context"},
      {"current-context: x\n", "no entry \"x\" in contexts"},
      {"current-context: x\ncontexts:\n- name: x\n  context:\n    cluster: c\n",
       "no entry \"c\" in clusters"},
      {"current-context: x\ncontexts:\n- name: x\n  context:\n    cluster: c\nclusters:\n"
       "- name: c\n  cluster: {}\n",
       "has no server"},
      {"current-context: x\ncontexts:\n- name: x\n  context:\n    cluster: c\nclusters:\n"
       "- name: c\n  cluster:\n    server: https://a\n    certificate-authority-data: '!!!'\n",
       "not valid base64"},
      {"current-context: x\ncontexts:\n- name: x\n  context:\n    cluster: c\nclusters:\n"
       "- name: c\n  cluster:\n    server: https://a\n    insecure-skip-tls-verify: maybe\n",
       "not a boolean"},
      {"current-context: x\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n"
       "clusters:\n- name: c\n  cluster:\n    server: https://a\nusers:\n- name: u\n  user:\n"
       "    client-certificate: c.crt\n",
       "without a key"},
      {"current-context: [x]\n", "not a scalar"},
  };
  for (const auto& [text, message] : cases) {
    try {
      parseKubeconfig(text, "/tmp");
      ADD_FAILURE() << "accepted:\n" << text;
    } catch (const KubeconfigError& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos)
          << text << "\n -> " << e.what();
    }
  }
}

TEST(KubeconfigTest, Base64DataIsCheckedByteByByte) {
  // Found by tests/fuzz/k8s_kubeconfig_fuzz.cpp: a byte >= 0x80 in the data
  // made yaml-cpp 0.7's YAML::DecodeBase64 read out of bounds.
  std::string text = fixture("kubeconfig-data.yaml");
  const size_t at = text.find("certificate-authority-data: ") + 40;
  text[at] = static_cast<char>(0xe6);
  try {
    parseKubeconfig(text, "/root/.kube");
    FAIL() << "accepted invalid base64";
  } catch (const KubeconfigError& e) {
    EXPECT_NE(std::string(e.what()).find("certificate-authority-data is not valid base64"),
              std::string::npos)
        << e.what();
  }
  // Line breaks inside the data are fine; padding and alphabet are checked.
  const std::string base =
      "current-context: x\ncontexts:\n- name: x\n  context:\n    cluster: c\n"
      "clusters:\n- name: c\n  cluster:\n    server: https://a\n";
  EXPECT_EQ(
      parseKubeconfig(base + "    certificate-authority-data: \"aGVs\\nbG8=\"\n", "/").ca_data,
      "hello");
  for (const char* bad : {"====", "aGVsbG8=aGVs#", "a"}) {
    EXPECT_THROW(parseKubeconfig(base + "    certificate-authority-data: \"" + bad + "\"\n", "/"),
                 KubeconfigError)
        << bad;
  }
}

TEST(KubeconfigTest, LoadReadsTheTokenFile) {
  TempDir dir;
  dir.write("tokens/capturewatch.token", "token-one\n");
  const std::string path = dir.write("config", fixture("kubeconfig-token.yaml"));
  ClusterConfig c = loadKubeconfig(path);
  EXPECT_EQ(c.token, "token-one");
  EXPECT_EQ(c.bearerToken(), "token-one");
  EXPECT_NE(c.source.find(path), std::string::npos);
  // Rotated by kubelet: read again.
  dir.write("tokens/capturewatch.token", "token-two\n");
  EXPECT_EQ(c.bearerToken(), "token-two");
  // Gone: the last token read stays.
  fs::remove(fs::path(dir.path()) / "tokens/capturewatch.token");
  EXPECT_EQ(c.bearerToken(), "token-one");
}

TEST(KubeconfigTest, LoadFailsWithoutTheTokenFileOrTheKubeconfig) {
  TempDir dir;
  const std::string path = dir.write("config", fixture("kubeconfig-token.yaml"));
  EXPECT_THROW(loadKubeconfig(path), KubeconfigError);
  EXPECT_THROW(loadKubeconfig(dir.path() + "/absent"), KubeconfigError);
}

TEST(InClusterConfigTest, ServiceAccountAndEnvironment) {
  TempDir dir;
  dir.write("token", "sa-token\n");
  dir.write("ca.crt", "-----BEGIN CERTIFICATE-----\n");
  dir.write("namespace", "capturewatch");
  const std::map<std::string, std::string> env = {{"KUBERNETES_SERVICE_HOST", "10.96.0.1"},
                                                  {"KUBERNETES_SERVICE_PORT", "443"}};
  const auto lookup = [&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  const ClusterConfig c = inClusterConfig(dir.path(), lookup);
  EXPECT_EQ(c.server, "https://10.96.0.1:443");
  EXPECT_EQ(c.ca_file, dir.path() + "/ca.crt");
  EXPECT_EQ(c.token, "sa-token");
  EXPECT_EQ(c.token_file, dir.path() + "/token");
  EXPECT_EQ(c.namespace_, "capturewatch");
}

TEST(InClusterConfigTest, Ipv6ServiceHost) {
  TempDir dir;
  dir.write("token", "t");
  dir.write("ca.crt", "x");
  const auto lookup = [](const char* name) -> const char* {
    return std::string(name) == "KUBERNETES_SERVICE_HOST" ? "fd00:10:96::1" : "443";
  };
  EXPECT_EQ(inClusterConfig(dir.path(), lookup).server, "https://[fd00:10:96::1]:443");
}

TEST(InClusterConfigTest, OutsideAPod) {
  TempDir dir;
  dir.write("ca.crt", "x");
  const auto none = [](const char*) -> const char* { return nullptr; };
  EXPECT_THROW(inClusterConfig(dir.path(), none), KubeconfigError);
  const auto set = [](const char* name) -> const char* {
    return std::string(name) == "KUBERNETES_SERVICE_HOST" ? "10.96.0.1" : "443";
  };
  EXPECT_THROW(inClusterConfig(dir.path(), set), KubeconfigError);  // no token
}

}  // namespace
}  // namespace cw::k8s
