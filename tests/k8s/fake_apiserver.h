// Test support: a loopback HTTPS server that answers like the Kubernetes API
// server, from scripted responses: JSON bodies (PodList, Status) and watch
// streams (chunked, one event per line) that end cleanly, drop the
// connection mid-stream, or stay open to stream events published later.
// Its TLS certificates are made in memory at start: a CA, a server
// certificate for 127.0.0.1 signed by it, and a client certificate for
// client-certificate authentication.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace cw::k8s::testing {

struct FakeRequest {
  std::string method;
  std::string target;                          // path and query as sent
  std::string path;                            // without the query
  std::map<std::string, std::string> params;   // query parameters, URL-decoded
  std::map<std::string, std::string> headers;  // names in lower case
  std::string client_cert_subject;  // subject CN of the client certificate; empty without one
  std::chrono::steady_clock::time_point received;

  std::string param(const std::string& name) const;
  bool isWatch() const { return param("watch") == "1" || param("watch") == "true"; }
};

struct FakeResponse {
  enum class End {
    Complete,  // a Content-Length body, or a chunked stream with its final chunk
    Drop,      // the stream stops without its final chunk: the connection is closed
    Hold,      // the stream stays open; publish() sends more, endWatches() ends it
  };
  int status = 200;
  std::string body;                // non-streaming body
  bool streaming = false;          // chunked: the lines below, then `end`
  std::vector<std::string> lines;  // each sent as "line\n"
  End end = End::Complete;
  size_t max_chunk = 0;  // split the stream into chunks of at most this; 0: a chunk per line
  bool hang_up = false;  // close the connection without answering

  static FakeResponse json(int status, std::string body);
  static FakeResponse stream(std::vector<std::string> lines, End end = End::Complete);
  static FakeResponse hangUp();
};

struct FakeApiServerOptions {
  bool require_client_cert = false;  // refuse TLS handshakes without a certificate of the CA
};

class FakeApiServer {
 public:
  using Handler = std::function<FakeResponse(const FakeRequest&)>;

  explicit FakeApiServer(Handler handler, FakeApiServerOptions options = {});
  ~FakeApiServer();
  FakeApiServer(const FakeApiServer&) = delete;
  FakeApiServer& operator=(const FakeApiServer&) = delete;

  std::string url() const;  // https://127.0.0.1:PORT
  uint16_t port() const { return port_; }
  const std::string& caPem() const { return ca_pem_; }
  const std::string& clientCertPem() const { return client_cert_pem_; }
  const std::string& clientKeyPem() const { return client_key_pem_; }

  // Sends a line to every watch held open now (End::Hold).
  void publish(const std::string& line);
  // Ends every held watch: with the final chunk, or by dropping the connection.
  void endWatches(bool drop);
  size_t heldWatches() const;

  std::vector<FakeRequest> requests() const;
  // Waits until `count` requests have arrived (or a held watch, with heldWatches()).
  bool waitForRequests(size_t count, std::chrono::milliseconds timeout) const;
  bool waitForHeldWatches(size_t count, std::chrono::milliseconds timeout) const;

 private:
  struct Tls;
  struct Connection;
  void acceptLoop();
  void serve(int fd);
  bool holdWatch(Connection& conn);

  Handler handler_;
  std::unique_ptr<Tls> tls_;
  std::string ca_pem_;
  std::string client_cert_pem_;
  std::string client_key_pem_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;

  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::vector<std::thread> connection_threads_;
  std::vector<int> open_fds_;
  std::vector<FakeRequest> requests_;
  std::vector<std::string> published_;  // lines for held watches
  uint64_t watch_generation_ = 0;       // bumped by endWatches()
  bool end_drop_ = false;
  size_t held_ = 0;
};

// A temporary directory (for kubeconfigs, tokens, a fake /proc and cgroup
// tree), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // Writes `text` to path()/relative, creating directories; returns the full path.
  std::string write(const std::string& relative, const std::string& text) const;

 private:
  std::string path_;
};

// The text of tests/fixtures/k8s/<name>.
std::string fixture(const std::string& name);
// Its non-empty lines (a watch stream fixture, one event per line).
std::vector<std::string> fixtureLines(const std::string& name);

}  // namespace cw::k8s::testing
