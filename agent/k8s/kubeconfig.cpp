#include "k8s/kubeconfig.h"

#include <algorithm>
#include <memory>
#include <new>
#include <optional>

#include <openssl/evp.h>
#include <yaml-cpp/yaml.h>

#include "k8s/file_text.h"

namespace cw::k8s {
namespace {

std::string trim(std::string s) {
  const char* space = " \t\r\n";
  s.erase(0, std::min(s.find_first_not_of(space), s.size()));
  s.erase(s.find_last_not_of(space) + 1);
  return s;
}

std::string readToken(const std::string& path, const std::string& what) {
  std::optional<std::string> text = readFileText(path);
  if (!text) throw KubeconfigError(what + ": cannot read token file " + path);
  return trim(std::move(*text));
}

std::string resolvePath(const std::string& path, const std::string& base_dir) {
  if (path.empty() || path.front() == '/' || base_dir.empty()) return path;
  return base_dir + "/" + path;
}

std::string directoryOf(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// The scalar at map[key]; empty if the map or the key is absent or null.
std::string scalar(const YAML::Node& map, const char* key) {
  if (!map.IsMap()) return {};
  const YAML::Node value = map[key];
  if (!value || value.IsNull()) return {};
  if (!value.IsScalar()) throw KubeconfigError(std::string("field ") + key + " is not a scalar");
  return value.Scalar();
}

bool flag(const YAML::Node& map, const char* key) {
  if (!map.IsMap()) return false;
  const YAML::Node value = map[key];
  if (!value || value.IsNull()) return false;
  bool result = false;
  if (!value.IsScalar() || !YAML::convert<bool>::decode(value, result)) {
    throw KubeconfigError(std::string("field ") + key + " is not a boolean");
  }
  return result;
}

// With OpenSSL's decoder: yaml-cpp 0.7's YAML::DecodeBase64 reads out of
// bounds on bytes >= 0x80 (found by tests/fuzz/k8s_kubeconfig_fuzz.cpp).
std::string decodeBase64(const std::string& text, const char* field) {
  if (text.empty()) return {};
  const KubeconfigError invalid(std::string("field ") + field + " is not valid base64");
  if (text.size() > (1u << 26)) throw invalid;
  const std::unique_ptr<EVP_ENCODE_CTX, decltype(&EVP_ENCODE_CTX_free)> ctx(EVP_ENCODE_CTX_new(),
                                                                            EVP_ENCODE_CTX_free);
  if (!ctx) throw std::bad_alloc();
  std::string out(text.size() / 4 * 3 + 80, '\0');
  auto* dst = reinterpret_cast<unsigned char*>(out.data());
  int len = 0;
  EVP_DecodeInit(ctx.get());
  if (EVP_DecodeUpdate(ctx.get(), dst, &len, reinterpret_cast<const unsigned char*>(text.data()),
                       static_cast<int>(text.size())) < 0) {
    throw invalid;
  }
  int total = len;
  if (EVP_DecodeFinal(ctx.get(), dst + total, &len) < 0) throw invalid;
  total += len;
  if (total <= 0) throw invalid;
  out.resize(static_cast<size_t>(total));
  return out;
}

// The `inner` map of the entry of list root[list] whose name is `name`.
YAML::Node findNamed(const YAML::Node& root, const char* list, const std::string& name,
                     const char* inner) {
  const YAML::Node entries = root[list];
  if (entries && entries.IsSequence()) {
    for (const YAML::Node& entry : entries) {
      if (entry.IsMap() && scalar(entry, "name") == name) {
        const YAML::Node value = entry[inner];
        if (value && value.IsMap()) return value;
        throw KubeconfigError(std::string(list) + " entry \"" + name + "\" has no " + inner);
      }
    }
  }
  throw KubeconfigError(std::string("no entry \"") + name + "\" in " + list);
}

ClusterConfig parseDocument(const YAML::Node& root, const std::string& base_dir,
                            const std::string& wanted_context) {
  if (!root.IsMap()) throw KubeconfigError("not a kubeconfig (the document is not a map)");
  const std::string context_name =
      wanted_context.empty() ? scalar(root, "current-context") : wanted_context;
  if (context_name.empty()) throw KubeconfigError("no current-context and no context given");

  const YAML::Node context = findNamed(root, "contexts", context_name, "context");
  const std::string cluster_name = scalar(context, "cluster");
  const std::string user_name = scalar(context, "user");
  if (cluster_name.empty())
    throw KubeconfigError("context \"" + context_name + "\" has no cluster");

  ClusterConfig config;
  config.source = "context " + context_name;
  config.namespace_ = scalar(context, "namespace");

  const YAML::Node cluster = findNamed(root, "clusters", cluster_name, "cluster");
  config.server = scalar(cluster, "server");
  if (config.server.empty())
    throw KubeconfigError("cluster \"" + cluster_name + "\" has no server");
  config.ca_file = resolvePath(scalar(cluster, "certificate-authority"), base_dir);
  config.ca_data =
      decodeBase64(scalar(cluster, "certificate-authority-data"), "certificate-authority-data");
  config.insecure_skip_tls_verify = flag(cluster, "insecure-skip-tls-verify");

  if (user_name.empty()) return config;
  const YAML::Node user = findNamed(root, "users", user_name, "user");
  config.token = scalar(user, "token");
  config.token_file = scalar(user, "tokenFile");
  if (config.token_file.empty()) config.token_file = scalar(user, "token-file");
  config.token_file = resolvePath(config.token_file, base_dir);
  config.client_cert_file = resolvePath(scalar(user, "client-certificate"), base_dir);
  config.client_cert_data =
      decodeBase64(scalar(user, "client-certificate-data"), "client-certificate-data");
  config.client_key_file = resolvePath(scalar(user, "client-key"), base_dir);
  config.client_key_data = decodeBase64(scalar(user, "client-key-data"), "client-key-data");

  const bool has_cert = !config.client_cert_file.empty() || !config.client_cert_data.empty();
  const bool has_key = !config.client_key_file.empty() || !config.client_key_data.empty();
  if (has_cert != has_key) {
    throw KubeconfigError("user \"" + user_name + "\" has a client certificate without a key " +
                          "or a key without a certificate");
  }
  const bool has_token = !config.token.empty() || !config.token_file.empty();
  if (!has_cert && !has_token && (user["exec"] || user["auth-provider"])) {
    throw KubeconfigError("user \"" + user_name +
                          "\" authenticates with an exec or auth-provider plugin, which is not "
                          "supported: use a token, a token file or a client certificate");
  }
  return config;
}

}  // namespace

std::string ClusterConfig::bearerToken() const {
  if (!token_file.empty()) {
    if (std::optional<std::string> text = readFileText(token_file)) return trim(std::move(*text));
  }
  return token;
}

ClusterConfig parseKubeconfig(std::string_view yaml_text, const std::string& base_dir,
                              const std::string& context) {
  try {
    return parseDocument(YAML::Load(std::string(yaml_text)), base_dir, context);
  } catch (const YAML::Exception& e) {
    throw KubeconfigError(std::string("invalid kubeconfig: ") + e.what());
  }
}

ClusterConfig loadKubeconfig(const std::string& path, const std::string& context) {
  const std::optional<std::string> text = readFileText(path);
  if (!text) throw KubeconfigError("kubeconfig " + path + ": cannot read");
  try {
    ClusterConfig config = parseKubeconfig(*text, directoryOf(path), context);
    config.source = "kubeconfig " + path + ", " + config.source;
    if (!config.token_file.empty()) {
      config.token = readToken(config.token_file, "kubeconfig " + path);
    }
    return config;
  } catch (const KubeconfigError& e) {
    throw KubeconfigError("kubeconfig " + path + ": " + e.what());
  }
}

ClusterConfig inClusterConfig(const std::string& service_account_dir, const EnvLookup& getenv) {
  const char* host = getenv("KUBERNETES_SERVICE_HOST");
  const char* port = getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || *host == '\0' || port == nullptr || *port == '\0') {
    throw KubeconfigError(
        "not running in a pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set): "
        "give --kubeconfig");
  }
  const std::string host_text = host;
  const bool ipv6 = host_text.find(':') != std::string::npos;
  ClusterConfig config;
  config.server = "https://" + (ipv6 ? "[" + host_text + "]" : host_text) + ":" + std::string(port);
  config.source = "in-cluster service account " + service_account_dir;
  config.token_file = service_account_dir + "/token";
  config.token = readToken(config.token_file, "in-cluster service account");
  config.ca_file = service_account_dir + "/ca.crt";
  if (!readFileText(config.ca_file)) {
    throw KubeconfigError("in-cluster service account: cannot read " + config.ca_file);
  }
  config.namespace_ = trim(readFileText(service_account_dir + "/namespace").value_or(""));
  return config;
}

}  // namespace cw::k8s
