// HTTPS GETs to the Kubernetes API server with libcurl: TLS trust and client
// certificates from a ClusterConfig, the bearer token on every request, the
// body streamed to a callback, and a cancel() that aborts a request blocked
// on a silent watch at once from another thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "k8s/kubeconfig.h"

namespace cw::k8s {

struct HttpResponse {
  long status = 0;         // HTTP status; 0 if no response arrived
  std::string error;       // transport error (connect, TLS, dropped connection); empty if none
  std::string error_body;  // body of a non-2xx response (first 64 KiB)
  bool cancelled = false;  // cancel() was called
  bool stopped_by_sink = false;  // the body callback returned false
  bool tls_trust_error = false;  // the server's certificate is not trusted, or ours is unusable

  bool ok() const { return error.empty() && status >= 200 && status < 300; }
};

class ApiClient {
 public:
  // Receives the body of a 2xx response as it arrives; false aborts the request.
  using BodySink = std::function<bool(std::string_view chunk)>;
  // Told the status code as soon as a response's headers are complete.
  using StatusSink = std::function<void(long status)>;

  explicit ApiClient(ClusterConfig config);
  ~ApiClient();
  ApiClient(const ApiClient&) = delete;
  ApiClient& operator=(const ApiClient&) = delete;

  // GET server + path_and_query (already URL-encoded). `timeout` bounds the
  // whole request. Blocks; returns early when cancel() is called.
  HttpResponse get(const std::string& path_and_query, const BodySink& sink,
                   std::chrono::milliseconds timeout, const StatusSink& on_status = {});

  // From any thread: aborts the current request and makes later ones return
  // cancelled at once.
  void cancel();

  // URL-encodes a query parameter value (curl_easy_escape).
  std::string escape(std::string_view value) const;

  const ClusterConfig& config() const { return config_; }

 private:
  struct Handles;
  ClusterConfig config_;
  std::unique_ptr<Handles> handles_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace cw::k8s
