#include "http_server.h"

#include <httplib.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

namespace cw {
namespace {

void reject(const httplib::Request&, httplib::Response& res) {
  res.status = 405;
  res.set_header("Allow", "GET");
  res.set_content("method not allowed\n", "text/plain");
}

void bounded(httplib::Response& res, std::string body, const char* type) {
  if (body.size() > HttpServer::kMaxResponseBytes) {
    res.status = 500;
    res.set_content("response too large\n", "text/plain");
    return;
  }
  res.set_content(std::move(body), type);
}

}  // namespace

HttpServer::HttpServer(const std::string& address, Sources sources)
    : server_(std::make_unique<httplib::Server>()), sources_(std::move(sources)) {
  auto colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const int port = std::stoi(address.substr(colon + 1));

  // SO_REUSEADDR only: httplib's default also sets SO_REUSEPORT, which would
  // let a second agent share a port that is taken.
  server_->set_socket_options([](int sock) {
    int one = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  });
  server_->set_payload_max_length(4096);
  server_->set_read_timeout(5, 0);
  server_->set_write_timeout(5, 0);
  server_->set_keep_alive_max_count(10);

  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    prometheus::TextSerializer serializer;
    bounded(res, serializer.Serialize(sources_.registry->Collect()),
            "text/plain; version=0.0.4; charset=utf-8");
  });
  server_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    std::string missing = sources_.not_ready();
    if (missing.empty()) {
      res.set_content("ready\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content("not ready: " + missing + "\n", "text/plain");
    }
  });
  server_->Get("/gaps", [this](const httplib::Request&, httplib::Response& res) {
    bounded(res, sources_.gaps_json(), "application/json");
  });
  for (const char* pattern : {".*"}) {
    server_->Post(pattern, reject);
    server_->Put(pattern, reject);
    server_->Patch(pattern, reject);
    server_->Delete(pattern, reject);
    server_->Options(pattern, reject);
  }
  server_->set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.status == 404) res.set_content("not found\n", "text/plain");
  });

  if (port == 0) {
    port_ = server_->bind_to_any_port(host);
  } else if (server_->bind_to_port(host, port)) {
    port_ = port;
  } else {
    port_ = -1;
  }
  if (port_ <= 0) {
    throw HttpError("--metrics-address " + address + ": cannot listen (address in use, or not an " +
                    "address of this host)");
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
}

HttpServer::~HttpServer() {
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace cw
