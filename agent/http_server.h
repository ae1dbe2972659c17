// The agent's HTTP endpoints on --metrics-address (cpp-httplib):
//   GET /metrics  Prometheus text exposition
//   GET /healthz  200 while the process serves
//   GET /readyz   200 when BPF is attached and targets are synced, else 503
//   GET /gaps     JSON of the recent capture gaps (bounded, newest first)
// Anything else: 404, or 405 for another method. Requests are small and
// responses bounded.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace httplib {
class Server;
}
namespace prometheus {
class Registry;
}

namespace cw {

class HttpError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class HttpServer {
 public:
  struct Sources {
    std::shared_ptr<prometheus::Registry> registry;
    // Returns "" when ready, else what is missing.
    std::function<std::string()> not_ready;
    std::function<std::string()> gaps_json;
  };

  // Binds HOST:PORT ("[v6]:PORT" too) and serves on a thread. Throws
  // HttpError if the address cannot be bound.
  HttpServer(const std::string& address, Sources sources);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

  static constexpr size_t kMaxResponseBytes = 8u << 20;

 private:
  std::unique_ptr<httplib::Server> server_;
  Sources sources_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace cw
