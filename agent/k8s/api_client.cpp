#include "k8s/api_client.h"

#include <curl/curl.h>

#include <mutex>
#include <stdexcept>

namespace cw::k8s {
namespace {

constexpr size_t kMaxErrorBody = 64 * 1024;

struct EasyDeleter {
  void operator()(CURL* h) const { curl_easy_cleanup(h); }
};
struct MultiDeleter {
  void operator()(CURLM* m) const { curl_multi_cleanup(m); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

void initCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      throw std::runtime_error("curl_global_init failed");
    }
  });
}

// State of one request, seen by the write callback.
struct Transfer {
  CURL* easy = nullptr;
  const ApiClient::BodySink* sink = nullptr;
  const ApiClient::StatusSink* on_status = nullptr;
  std::string error_body;
  bool stopped_by_sink = false;
};

size_t onBody(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * count;
  long status = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  if (status >= 200 && status < 300) {
    if (!(*t->sink)(std::string_view(data, bytes))) {
      t->stopped_by_sink = true;
      return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    }
  } else if (t->error_body.size() < kMaxErrorBody) {
    t->error_body.append(data, std::min(bytes, kMaxErrorBody - t->error_body.size()));
  }
  return bytes;
}

size_t onHeader(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::string_view line(data, size * count);
  if ((line == "\r\n" || line == "\n") && *t->on_status) {
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    (*t->on_status)(status);
  }
  return size * count;
}

// Failures that retrying will not fix: configuration, not connectivity.
bool isTlsTrustError(CURLcode code) {
  switch (code) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
      return true;
    default:
      return false;
  }
}

void setBlob(CURL* easy, CURLoption option, const std::string& data) {
  curl_blob blob{const_cast<char*>(data.data()), data.size(), CURL_BLOB_COPY};
  curl_easy_setopt(easy, option, &blob);
}

}  // namespace

struct ApiClient::Handles {
  std::unique_ptr<CURLM, MultiDeleter> multi;
  std::unique_ptr<CURL, EasyDeleter> easy;
};

ApiClient::ApiClient(ClusterConfig config) : config_(std::move(config)) {
  initCurlOnce();
  handles_ = std::make_unique<Handles>();
  handles_->multi.reset(curl_multi_init());
  handles_->easy.reset(curl_easy_init());
  if (!handles_->multi || !handles_->easy) throw std::runtime_error("cannot create curl handles");
}

ApiClient::~ApiClient() = default;

void ApiClient::cancel() {
  cancelled_ = true;
  curl_multi_wakeup(handles_->multi.get());
}

std::string ApiClient::escape(std::string_view value) const {
  char* escaped =
      curl_easy_escape(handles_->easy.get(), value.data(), static_cast<int>(value.size()));
  if (escaped == nullptr) throw std::runtime_error("curl_easy_escape failed");
  std::string out(escaped);
  curl_free(escaped);
  return out;
}

HttpResponse ApiClient::get(const std::string& path_and_query, const BodySink& sink,
                            std::chrono::milliseconds timeout, const StatusSink& on_status) {
  HttpResponse response;
  if (cancelled_) {
    response.cancelled = true;
    response.error = "cancelled";
    return response;
  }
  CURL* easy = handles_->easy.get();
  CURLM* multi = handles_->multi.get();
  curl_easy_reset(easy);  // keeps the connection cache

  Transfer transfer;
  transfer.easy = easy;
  transfer.sink = &sink;
  transfer.on_status = &on_status;
  char error_text[CURL_ERROR_SIZE] = {};

  const std::string url = config_.server + path_and_query;
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "https,http");
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, error_text);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, onBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, onHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, 10'000L);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  // A peer that vanished without closing the connection is noticed in ~1 min.
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPIDLE, 30L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPINTVL, 10L);
  curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(easy, CURLOPT_USERAGENT, "capturewatch");

  if (config_.insecure_skip_tls_verify) {
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
  } else if (!config_.ca_data.empty()) {
    setBlob(easy, CURLOPT_CAINFO_BLOB, config_.ca_data);
  } else if (!config_.ca_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_CAINFO, config_.ca_file.c_str());
  }
  if (!config_.client_cert_data.empty()) {
    setBlob(easy, CURLOPT_SSLCERT_BLOB, config_.client_cert_data);
    curl_easy_setopt(easy, CURLOPT_SSLCERTTYPE, "PEM");
  } else if (!config_.client_cert_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSLCERT, config_.client_cert_file.c_str());
  }
  if (!config_.client_key_data.empty()) {
    setBlob(easy, CURLOPT_SSLKEY_BLOB, config_.client_key_data);
    curl_easy_setopt(easy, CURLOPT_SSLKEYTYPE, "PEM");
  } else if (!config_.client_key_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSLKEY, config_.client_key_file.c_str());
  }

  curl_slist* header_list = curl_slist_append(nullptr, "Accept: application/json");
  const std::string token = config_.bearerToken();
  if (!token.empty()) {
    const std::string auth = "Authorization: Bearer " + token;
    if (curl_slist* longer = curl_slist_append(header_list, auth.c_str())) header_list = longer;
  }
  const SlistPtr headers(header_list);
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers.get());

  if (curl_multi_add_handle(multi, easy) != CURLM_OK) {
    response.error = "curl_multi_add_handle failed";
    return response;
  }
  int running = 1;
  while (running != 0 && !cancelled_) {
    if (curl_multi_perform(multi, &running) != CURLM_OK) break;
    if (running == 0 || cancelled_) break;
    curl_multi_poll(multi, nullptr, 0, 1000, nullptr);  // cancel() wakes it up
  }
  bool done = false;
  CURLcode result = CURLE_OK;
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
    if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy) {
      done = true;
      result = msg->data.result;
    }
  }
  curl_multi_remove_handle(multi, easy);
  // The handle outlives this call's buffers: forget them.
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, nullptr);
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, nullptr);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, nullptr);

  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &response.status);
  response.error_body = std::move(transfer.error_body);
  response.stopped_by_sink = transfer.stopped_by_sink;
  if (!done) {
    response.cancelled = cancelled_;
    response.error = cancelled_ ? "cancelled" : "request did not complete";
  } else if (result != CURLE_OK && !transfer.stopped_by_sink) {
    response.error = curl_easy_strerror(result);
    if (error_text[0] != '\0') response.error += std::string(": ") + error_text;
    response.tls_trust_error = isTlsTrustError(result);
  }
  return response;
}

}  // namespace cw::k8s
