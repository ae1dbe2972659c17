#include "fake_apiserver.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#ifndef CW_FIXTURES
#define CW_FIXTURES "tests/fixtures"
#endif

namespace cw::k8s::testing {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct SslCtxFree {
  void operator()(SSL_CTX* p) const { SSL_CTX_free(p); }
};
struct SslFree {
  void operator()(SSL* p) const { SSL_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;

[[noreturn]] void throwSsl(const std::string& what) {
  char text[256] = {};
  ERR_error_string_n(ERR_get_error(), text, sizeof text);
  throw std::runtime_error("fake API server: " + what + ": " + text);
}

void addExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr) throwSsl("X509V3_EXT_conf_nid");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A certificate for `key` named `cn`, signed by issuer (self-signed when null).
X509Ptr makeCertificate(EVP_PKEY* key, const std::string& cn, X509* issuer, EVP_PKEY* issuer_key,
                        long serial, bool is_ca, const char* alt_names) {
  X509Ptr cert(X509_new());
  if (!cert) throwSsl("X509_new");
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 24L * 3600);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509* signer = issuer != nullptr ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  X509_set_pubkey(cert.get(), key);
  if (is_ca) {
    addExtension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
    addExtension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    addExtension(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
  }
  if (alt_names != nullptr) addExtension(cert.get(), signer, NID_subject_alt_name, alt_names);
  if (X509_sign(cert.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()) == 0) {
    throwSsl("X509_sign");
  }
  return cert;
}

std::string certPem(X509* cert) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string keyPem(EVP_PKEY* key) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

PkeyPtr makeKey() {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) throwSsl("EVP_EC_gen");
  return key;
}

const char* reasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 410:
      return "Gone";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

std::string urlDecode(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() &&
        std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else if (text[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

FakeRequest parseRequestHead(const std::string& head) {
  FakeRequest req;
  std::istringstream in(head);
  std::string line;
  std::getline(in, line);
  std::istringstream first(line);
  std::string version;
  first >> req.method >> req.target >> version;
  const auto q = req.target.find('?');
  req.path = req.target.substr(0, q);
  if (q != std::string::npos) {
    std::istringstream query(req.target.substr(q + 1));
    std::string pair;
    while (std::getline(query, pair, '&')) {
      const auto eq = pair.find('=');
      req.params[urlDecode(pair.substr(0, eq))] =
          eq == std::string::npos ? "" : urlDecode(pair.substr(eq + 1));
    }
  }
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(' '));
    req.headers[name] = value;
  }
  return req;
}

// Server threads get EPIPE, not SIGPIPE, when a client went away.
void blockSigpipe() {
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
}

std::string chunk(const std::string& data) {
  char size[32];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  return size + data + "\r\n";
}

}  // namespace

struct FakeApiServer::Tls {
  std::unique_ptr<SSL_CTX, SslCtxFree> ctx;
};

// One accepted connection: the socket and its TLS session.
struct FakeApiServer::Connection {
  int fd = -1;
  std::unique_ptr<SSL, SslFree> ssl;

  bool write(const std::string& data) {
    size_t done = 0;
    while (done < data.size()) {
      const int n = SSL_write(ssl.get(), data.data() + done, static_cast<int>(data.size() - done));
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

  // The head of the next request ("" when the client closed or went silent).
  std::string readHead(const std::atomic<bool>& stopping) {
    std::string head;
    char buf[4096];
    while (head.find("\r\n\r\n") == std::string::npos && head.size() < 64 * 1024) {
      if (SSL_pending(ssl.get()) == 0) {
        pollfd p{fd, POLLIN, 0};
        const int ready = ::poll(&p, 1, 100);
        if (stopping) return {};
        if (ready == 0) continue;
        if (ready < 0) return {};
      }
      const int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n <= 0) return {};
      head.append(buf, static_cast<size_t>(n));
    }
    return head;
  }

  // Whether the client closed its end.
  bool peerGone(int timeout_ms) const {
    pollfd p{fd, POLLRDHUP, 0};
    return ::poll(&p, 1, timeout_ms) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }
};

std::string FakeRequest::param(const std::string& name) const {
  auto it = params.find(name);
  return it == params.end() ? std::string() : it->second;
}

FakeResponse FakeResponse::json(int status, std::string body) {
  FakeResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

FakeResponse FakeResponse::stream(std::vector<std::string> lines, End end) {
  FakeResponse r;
  r.streaming = true;
  r.lines = std::move(lines);
  r.end = end;
  return r;
}

FakeResponse FakeResponse::hangUp() {
  FakeResponse r;
  r.hang_up = true;
  return r;
}

FakeApiServer::FakeApiServer(Handler handler, FakeApiServerOptions options)
    : handler_(std::move(handler)), tls_(std::make_unique<Tls>()) {
  PkeyPtr ca_key = makeKey();
  X509Ptr ca =
      makeCertificate(ca_key.get(), "fake-kubernetes-ca", nullptr, nullptr, 1, true, nullptr);
  PkeyPtr server_key = makeKey();
  X509Ptr server = makeCertificate(server_key.get(), "kube-apiserver", ca.get(), ca_key.get(), 2,
                                   false, "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc");
  PkeyPtr client_key = makeKey();
  X509Ptr client = makeCertificate(client_key.get(), "system:node:fake-node", ca.get(),
                                   ca_key.get(), 3, false, nullptr);
  ca_pem_ = certPem(ca.get());
  client_cert_pem_ = certPem(client.get());
  client_key_pem_ = keyPem(client_key.get());

  tls_->ctx.reset(SSL_CTX_new(TLS_server_method()));
  SSL_CTX* ctx = tls_->ctx.get();
  if (ctx == nullptr) throwSsl("SSL_CTX_new");
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate(ctx, server.get()) != 1 ||
      SSL_CTX_use_PrivateKey(ctx, server_key.get()) != 1) {
    throwSsl("server certificate");
  }
  X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca.get());
  // Needed to resume TLS sessions (curl does) when client certificates are asked for.
  static const unsigned char kSessionContext[] = "cw-fake-apiserver";
  SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof kSessionContext - 1);
  SSL_CTX_set_verify(ctx,
                     options.require_client_cert
                         ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                         : SSL_VERIFY_PEER,  // asks for a certificate, accepts none
                     nullptr);

  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) throw std::runtime_error("fake API server: socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 16) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(listen_fd_);
    throw std::runtime_error("fake API server: cannot listen on 127.0.0.1");
  }
  port_ = ntohs(addr.sin_port);
  accept_thread_ = std::thread([this] { acceptLoop(); });
}

FakeApiServer::~FakeApiServer() {
  stopping_ = true;
  changed_.notify_all();
  if (accept_thread_.joinable()) accept_thread_.join();
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);
    threads.swap(connection_threads_);
  }
  changed_.notify_all();
  for (std::thread& t : threads) t.join();
  ::close(listen_fd_);
}

std::string FakeApiServer::url() const { return "https://127.0.0.1:" + std::to_string(port_); }

void FakeApiServer::acceptLoop() {
  blockSigpipe();
  while (!stopping_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::lock_guard<std::mutex> lock(mutex_);
    open_fds_.push_back(fd);
    connection_threads_.emplace_back([this, fd] { serve(fd); });
  }
}

void FakeApiServer::serve(int fd) {
  blockSigpipe();
  Connection conn;
  conn.fd = fd;
  conn.ssl.reset(SSL_new(tls_->ctx.get()));
  if (conn.ssl && SSL_set_fd(conn.ssl.get(), fd) == 1 && SSL_accept(conn.ssl.get()) == 1) {
    std::string client_cn;
    if (X509* peer = SSL_get_peer_certificate(conn.ssl.get())) {
      char cn[256] = {};
      X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
      client_cn = cn;
      X509_free(peer);
    }
    // Requests on this connection, one after the other (keep-alive).
    while (!stopping_) {
      const std::string head = conn.readHead(stopping_);
      if (head.empty()) break;
      FakeRequest req = parseRequestHead(head);
      req.client_cert_subject = client_cn;
      req.received = std::chrono::steady_clock::now();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        requests_.push_back(req);
      }
      changed_.notify_all();
      const FakeResponse res = handler_(req);
      if (res.hang_up) break;

      std::string out = "HTTP/1.1 " + std::to_string(res.status) + " " + reasonPhrase(res.status) +
                        "\r\nAudit-Id: 4f1c2a8e-1b7d-4c53-9a0e-6d2f3b8c1e57\r\n"
                        "Cache-Control: no-cache, private\r\nContent-Type: application/json\r\n";
      if (!res.streaming) {
        out += "Content-Length: " + std::to_string(res.body.size()) + "\r\n\r\n" + res.body;
        if (!conn.write(out)) break;
        continue;
      }
      out += "Transfer-Encoding: chunked\r\n\r\n";
      std::string stream;
      for (const std::string& line : res.lines) {
        if (res.max_chunk == 0) {
          out += chunk(line + "\n");
        } else {
          stream += line + "\n";
        }
      }
      for (size_t at = 0; at < stream.size(); at += res.max_chunk) {
        out += chunk(stream.substr(at, res.max_chunk));
      }
      if (!conn.write(out)) break;
      if (res.end == FakeResponse::End::Drop) break;
      if (res.end == FakeResponse::End::Hold && !holdWatch(conn)) break;
      if (!conn.write("0\r\n\r\n")) break;
    }
    SSL_shutdown(conn.ssl.get());
  }
  std::lock_guard<std::mutex> lock(mutex_);
  open_fds_.erase(std::remove(open_fds_.begin(), open_fds_.end(), fd), open_fds_.end());
  ::close(fd);
}

// Streams published lines until endWatches(): true if it ended cleanly.
bool FakeApiServer::holdWatch(Connection& conn) {
  std::unique_lock<std::mutex> lock(mutex_);
  size_t sent = published_.size();
  const uint64_t generation = watch_generation_;
  ++held_;
  changed_.notify_all();
  bool clean = false;
  while (true) {
    changed_.wait_for(lock, std::chrono::milliseconds(20), [&] {
      return stopping_ || watch_generation_ != generation || sent < published_.size();
    });
    if (stopping_) break;
    if (watch_generation_ != generation) {
      clean = !end_drop_;
      break;
    }
    if (sent < published_.size()) {
      const std::string line = published_[sent++];
      lock.unlock();
      const bool ok = conn.write(chunk(line + "\n"));
      lock.lock();
      if (!ok) break;
      continue;
    }
    lock.unlock();
    const bool gone = conn.peerGone(0);
    lock.lock();
    if (gone) break;
  }
  --held_;
  changed_.notify_all();
  return clean;
}

void FakeApiServer::publish(const std::string& line) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    published_.push_back(line);
  }
  changed_.notify_all();
}

void FakeApiServer::endWatches(bool drop) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++watch_generation_;
    end_drop_ = drop;
  }
  changed_.notify_all();
}

size_t FakeApiServer::heldWatches() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return held_;
}

std::vector<FakeRequest> FakeApiServer::requests() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return requests_;
}

bool FakeApiServer::waitForRequests(size_t count, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return requests_.size() >= count; });
}

bool FakeApiServer::waitForHeldWatches(size_t count, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return held_ >= count; });
}

TempDir::TempDir() {
  std::string templ = (std::filesystem::temp_directory_path() / "cw-k8s-test-XXXXXX").string();
  if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::write(const std::string& relative, const std::string& text) const {
  const std::filesystem::path file = std::filesystem::path(path_) / relative;
  std::filesystem::create_directories(file.parent_path());
  std::ofstream out(file, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + file.string());
  return file.string();
}

std::string fixture(const std::string& name) {
  const std::string path = std::string(CW_FIXTURES) + "/k8s/" + name;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read fixture " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> fixtureLines(const std::string& name) {
  std::vector<std::string> lines;
  std::istringstream in(fixture(name));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

}  // namespace cw::k8s::testing
