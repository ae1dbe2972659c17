// Where the API server is and how to authenticate to it: from a kubeconfig
// file (YAML, parsed with yaml-cpp) or from the pod's service account
// (in-cluster).
#pragma once

#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace cw::k8s {

class KubeconfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline constexpr const char* kServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";

struct ClusterConfig {
  std::string server;  // "https://10.96.0.1:443"
  // Trust: a CA bundle file or PEM data; or no verification at all.
  std::string ca_file;
  std::string ca_data;
  bool insecure_skip_tls_verify = false;
  // Credentials: a bearer token (inline or from a file), and/or a client
  // certificate and key (files or PEM data).
  std::string token;
  std::string token_file;
  std::string client_cert_file;
  std::string client_cert_data;
  std::string client_key_file;
  std::string client_key_data;
  std::string namespace_;  // the context's namespace / the service account's; informative
  std::string source;      // for messages: "kubeconfig /root/.kube/config, context kind-kind"

  // The token to send now. A token file is read again on each call, since
  // kubelet rotates projected service-account tokens; if it cannot be read
  // the token read before is used.
  std::string bearerToken() const;
};

// Parses kubeconfig text. Uses `context`, or current-context when empty.
// Relative file paths are taken relative to base_dir (the kubeconfig's
// directory, as kubectl does); *-data fields are base64-decoded. Fields used:
// cluster server, certificate-authority(-data), insecure-skip-tls-verify;
// user token, tokenFile, client-certificate(-data), client-key(-data).
// Throws KubeconfigError for invalid YAML, a missing context/cluster/user,
// bad base64, or a user that only has an exec/auth-provider plugin.
ClusterConfig parseKubeconfig(std::string_view yaml_text, const std::string& base_dir,
                              const std::string& context = "");

// Reads and parses a kubeconfig file; a token file it names must be readable.
ClusterConfig loadKubeconfig(const std::string& path, const std::string& context = "");

using EnvLookup = std::function<const char*(const char*)>;

// In-cluster configuration: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT,
// trusting <dir>/ca.crt, with the bearer token of <dir>/token (re-read on
// each request) and the namespace of <dir>/namespace. Throws KubeconfigError
// when the variables or the token are missing (not running in a pod).
ClusterConfig inClusterConfig(const std::string& service_account_dir = kServiceAccountDir,
                              const EnvLookup& getenv = ::getenv);

}  // namespace cw::k8s
