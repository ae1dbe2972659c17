#include "lab/roles.h"

// netinet/in.h before the kernel headers: it tells linux/libc-compat.h not to
// redefine in6_addr and friends.
#include <netinet/in.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>

#include "lab/spawn.h"
#include "lab/system.h"

namespace cw::lab {

socklen_t toSockaddr(const Endpoint& ep, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof ss);
  if (ep.addr.isV4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(ep.port);
    std::memcpy(&sin->sin_addr, ep.addr.bytes.data() + 12, 4);
    return sizeof *sin;
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(ep.port);
  std::memcpy(&sin6->sin6_addr, ep.addr.bytes.data(), 16);
  return sizeof *sin6;
}

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kMaxConnections = 128;  // concurrent handler threads per server
constexpr size_t kMaxRequest = 64 * 1024;
constexpr auto kRelayLimit = 60s;  // a relayed connection lives at most this long

// ---- OpenSSL RAII --------------------------------------------------------

struct SslCtxFree {
  void operator()(SSL_CTX* p) const { SSL_CTX_free(p); }
};
struct SslFree {
  void operator()(SSL* p) const { SSL_free(p); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
using SslCtxPtr = std::shared_ptr<SSL_CTX>;
using SslPtr = std::unique_ptr<SSL, SslFree>;

std::string sslErrors() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

[[noreturn]] void throwSsl(const std::string& what) {
  throw std::runtime_error(what + ": " + sslErrors());
}

// TLS server context with a fresh self-signed P-256 certificate, all in memory.
SslCtxPtr makeServerContext() {
  std::unique_ptr<EVP_PKEY, PkeyFree> key(EVP_EC_gen("P-256"));
  if (!key) throwSsl("EC key generation");
  std::unique_ptr<X509, X509Free> cert(X509_new());
  if (!cert) throwSsl("X509_new");
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), static_cast<long>(::getpid()));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 7L * 24 * 3600);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("capturewatch lab"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("upstream.lab"), -1, -1, 0);
  if (X509_set_issuer_name(cert.get(), name) != 1 || X509_set_pubkey(cert.get(), key.get()) != 1 ||
      X509_sign(cert.get(), key.get(), EVP_sha256()) == 0) {
    throwSsl("self-signed certificate");
  }
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()), SslCtxFree{});
  if (!ctx) throwSsl("SSL_CTX_new(server)");
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  if (SSL_CTX_use_certificate(ctx.get(), cert.get()) != 1 ||
      SSL_CTX_use_PrivateKey(ctx.get(), key.get()) != 1 ||
      SSL_CTX_check_private_key(ctx.get()) != 1) {
    throwSsl("server certificate");
  }
  // No session tickets: the client never resumes, and post-handshake
  // messages would only complicate the relay.
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  return ctx;
}

// TLS client context: no verification (a lab), tolerant of a peer that closes
// without close_notify.
SslCtxPtr makeClientContext() {
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()), SslCtxFree{});
  if (!ctx) throwSsl("SSL_CTX_new(client)");
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  SSL_CTX_set_options(ctx.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
  return ctx;
}

// ---- sockets ---------------------------------------------------------------

void setNonBlocking(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return;
  ::fcntl(fd, F_SETFL, on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK));
}

void setIoTimeouts(int fd, std::chrono::milliseconds t) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// Small writes go out at once (as Envoy does): without it, Nagle holds a
// close_notify behind an unacknowledged answer for a delayed-ACK period.
void setNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Close with an RST instead of a FIN.
void resetAndClose(UniqueFd& fd) {
  if (!fd) return;
  linger l{1, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
  fd.reset();
}

uint16_t localPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

// A listening TCP socket (non-blocking, close-on-exec, SO_REUSEADDR).
UniqueFd listenTcp(const std::string& address, uint16_t port, bool v6only) {
  auto ep = Endpoint{Address::parse(address).value(), port};
  sockaddr_storage ss{};
  socklen_t len = toSockaddr(ep, ss);
  UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  const std::string where = "listen on " + ep.str();
  if (!fd) throw std::runtime_error(where + ": socket: " + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ss.ss_family == AF_INET6) {
    int v = v6only ? 1 : 0;
    if (::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v, sizeof v) != 0) {
      throw std::runtime_error(where + ": IPV6_V6ONLY: " + std::strerror(errno));
    }
  }
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    throw std::runtime_error(where + ": bind: " + std::strerror(errno));
  }
  if (::listen(fd.get(), 256) != 0) {
    throw std::runtime_error(where + ": listen: " + std::strerror(errno));
  }
  return fd;
}

int remainingMs(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return ms <= 0 ? 0 : static_cast<int>(std::min<long long>(ms, 1000));
}

// Waits for `events` on fd until deadline; false on timeout.
bool waitFor(int fd, short events, Clock::time_point deadline) {
  while (Clock::now() < deadline) {
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, remainingMs(deadline) + 1);
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) return false;
  }
  return false;
}

// Non-blocking connect with a deadline; returns a connected blocking socket
// or an empty fd (errno set).
UniqueFd connectWithin(const sockaddr_storage& ss, socklen_t len, Clock::time_point deadline) {
  UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return fd;
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    if (errno != EINPROGRESS) return UniqueFd();
    if (!waitFor(fd.get(), POLLOUT, deadline)) {
      errno = ETIMEDOUT;
      return UniqueFd();
    }
    int err = 0;
    socklen_t elen = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err != 0) {
      errno = err;
      return UniqueFd();
    }
  }
  setNonBlocking(fd.get(), false);
  return fd;
}

// Reads (blocking socket with timeouts) until the end of the HTTP headers.
bool readHttpRequest(int fd, Clock::time_point deadline) {
  std::string req;
  char buf[4096];
  for (int i = 0; i < 256 && Clock::now() < deadline; ++i) {
    if (req.find("\r\n\r\n") != std::string::npos) return true;
    if (req.size() > kMaxRequest) return false;
    if (!waitFor(fd, POLLIN, deadline)) return false;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    req.append(buf, static_cast<size_t>(n));
  }
  return req.find("\r\n\r\n") != std::string::npos;
}

std::string httpOk(const std::string& body) {
  return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

// ---- servers ---------------------------------------------------------------

using Handler = std::function<void(UniqueFd)>;

struct Listener {
  UniqueFd fd;
  Handler handler;
};

// Accepts on all listeners until `lifetime` has passed; one detached thread
// per connection, at most kMaxConnections at a time (the rest are reset). The
// threads end with the process.
void serve(std::vector<Listener>& listeners, std::chrono::seconds lifetime) {
  auto active = std::make_shared<std::atomic<int>>(0);
  const auto end = Clock::now() + lifetime;
  std::vector<pollfd> fds;
  for (auto& l : listeners) fds.push_back({l.fd.get(), POLLIN, 0});
  while (Clock::now() < end) {
    int rc = ::poll(fds.data(), fds.size(), remainingMs(end) + 1);
    if (rc < 0 && errno != EINTR)
      throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
    if (rc <= 0) continue;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      for (int burst = 0; burst < 64; ++burst) {
        UniqueFd conn(::accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC));
        if (!conn) break;
        if (active->load() >= kMaxConnections) {
          resetAndClose(conn);
          continue;
        }
        ++*active;
        try {
          std::thread([active, handler = listeners[i].handler, c = std::move(conn)]() mutable {
            try {
              handler(std::move(c));
            } catch (...) {
            }
            --*active;
          }).detach();
        } catch (const std::system_error&) {
          --*active;  // no thread: `conn` was moved into the failed lambda and closed
        }
      }
    }
  }
}

void serveUpstreamConnection(UniqueFd fd, SSL_CTX* ctx) {
  // Strict mTLS: only a TLS ClientHello is acceptable as the first byte.
  pollfd p{fd.get(), POLLIN, 0};
  if (::poll(&p, 1, 2000) <= 0) {
    resetAndClose(fd);
    return;
  }
  unsigned char first = 0;
  ssize_t n = ::recv(fd.get(), &first, 1, MSG_PEEK);
  if (n <= 0) return;  // peer closed (or error): nothing to reject
  if (first != 0x16) {
    resetAndClose(fd);
    return;
  }
  setIoTimeouts(fd.get(), 5s);
  setNoDelay(fd.get());
  SslPtr ssl(SSL_new(ctx));
  if (!ssl || SSL_set_fd(ssl.get(), fd.get()) != 1 || SSL_accept(ssl.get()) != 1) {
    ERR_clear_error();
    resetAndClose(fd);
    return;
  }
  std::string req;
  char buf[4096];
  for (int i = 0; i < 256 && req.find("\r\n\r\n") == std::string::npos; ++i) {
    if (req.size() > kMaxRequest) return;
    int r = SSL_read(ssl.get(), buf, sizeof buf);
    if (r <= 0) {
      ERR_clear_error();
      return;
    }
    req.append(buf, static_cast<size_t>(r));
  }
  const std::string resp = httpOk("upstream: mtls ok\n");
  if (SSL_write(ssl.get(), resp.data(), static_cast<int>(resp.size())) > 0) {
    SSL_shutdown(ssl.get());
  }
  ERR_clear_error();
}

void serveAdminConnection(UniqueFd fd) {
  setIoTimeouts(fd.get(), 2s);
  if (!readHttpRequest(fd.get(), Clock::now() + 2s)) {
    resetAndClose(fd);
    return;
  }
  const std::string resp = httpOk("admin ok\n");
  [[maybe_unused]] ssize_t n = ::send(fd.get(), resp.data(), resp.size(), MSG_NOSIGNAL);
  ::shutdown(fd.get(), SHUT_WR);
}

// Relays between the app's socket (plain) and the upstream TLS session until
// both directions ended, an error, or the time limit. Both sockets
// non-blocking. A reset or error on one side resets the other.
void relay(UniqueFd& app, SSL* ssl, UniqueFd& up, Clock::time_point deadline) {
  setNonBlocking(app.get(), true);
  setNonBlocking(up.get(), true);
  std::string to_up, to_app;
  bool app_eof = false, up_eof = false, up_shut = false, app_shut = false;
  bool up_wants_write = false, write_wants_read = false;
  char buf[16384];
  auto fail = [&] {
    resetAndClose(app);
    resetAndClose(up);
  };
  while (Clock::now() < deadline) {
    bool progress = false;
    if (!app_eof && to_up.empty()) {
      ssize_t n = ::recv(app.get(), buf, sizeof buf, 0);
      if (n > 0) {
        to_up.assign(buf, static_cast<size_t>(n));
        progress = true;
      } else if (n == 0) {
        app_eof = true;
        progress = true;
      } else if (errno != EAGAIN && errno != EINTR) {
        return fail();
      }
    }
    if (!to_up.empty()) {
      write_wants_read = false;
      int r = SSL_write(ssl, to_up.data(), static_cast<int>(to_up.size()));
      if (r > 0) {
        to_up.erase(0, static_cast<size_t>(r));
        progress = true;
      } else {
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_WANT_WRITE) {
          up_wants_write = true;
        } else if (e == SSL_ERROR_WANT_READ) {
          write_wants_read = true;
        } else {
          ERR_clear_error();
          return fail();
        }
      }
    }
    if (app_eof && to_up.empty() && !up_shut) {
      SSL_shutdown(ssl);  // close_notify: the app finished sending
      ERR_clear_error();
      up_shut = true;
    }
    if (!up_eof && to_app.empty()) {
      int r = SSL_read(ssl, buf, sizeof buf);
      if (r > 0) {
        to_app.assign(buf, static_cast<size_t>(r));
        progress = true;
      } else {
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN) {
          up_eof = true;
          progress = true;
        } else if (e == SSL_ERROR_WANT_WRITE) {
          up_wants_write = true;
        } else if (e != SSL_ERROR_WANT_READ) {
          ERR_clear_error();
          return fail();
        }
      }
    }
    if (!to_app.empty()) {
      ssize_t n = ::send(app.get(), to_app.data(), to_app.size(), MSG_NOSIGNAL);
      if (n > 0) {
        to_app.erase(0, static_cast<size_t>(n));
        progress = true;
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        return fail();
      }
    }
    if (up_eof && to_app.empty() && !app_shut) {
      ::shutdown(app.get(), SHUT_WR);
      app_shut = true;
    }
    if (app_eof && up_eof && to_up.empty() && to_app.empty()) return;  // clean end
    if (progress || (to_app.empty() && !up_eof && SSL_pending(ssl) > 0)) continue;

    pollfd fds[2] = {{app.get(), 0, 0}, {up.get(), 0, 0}};
    if (!app_eof && to_up.empty()) fds[0].events |= POLLIN;
    if (!to_app.empty()) fds[0].events |= POLLOUT;
    if ((!up_eof && to_app.empty()) || write_wants_read) fds[1].events |= POLLIN;
    if (up_wants_write) fds[1].events |= POLLOUT;
    up_wants_write = false;
    int rc = ::poll(fds, 2, remainingMs(deadline) + 1);
    if (rc < 0 && errno != EINTR) return fail();
  }
  fail();  // time limit
}

void serveRedirectConnection(UniqueFd app, SSL_CTX* client_ctx, uint16_t redirect_port) {
  sockaddr_in6 peer{};
  socklen_t plen = sizeof peer;
  if (::getpeername(app.get(), reinterpret_cast<sockaddr*>(&peer), &plen) != 0) return;
  sockaddr_storage orig{};
  socklen_t olen = 0;
  if (peer.sin6_family == AF_INET6 && !IN6_IS_ADDR_V4MAPPED(&peer.sin6_addr)) {
    olen = sizeof(sockaddr_in6);
    if (::getsockopt(app.get(), SOL_IPV6, IP6T_SO_ORIGINAL_DST, &orig, &olen) != 0) {
      return resetAndClose(app);
    }
  } else {
    olen = sizeof(sockaddr_in);
    if (::getsockopt(app.get(), SOL_IP, SO_ORIGINAL_DST, &orig, &olen) != 0) {
      return resetAndClose(app);
    }
  }
  uint16_t orig_port = orig.ss_family == AF_INET
                           ? ntohs(reinterpret_cast<sockaddr_in*>(&orig)->sin_port)
                           : ntohs(reinterpret_cast<sockaddr_in6*>(&orig)->sin6_port);
  // Not redirected (someone connected to the listener itself): forwarding
  // would loop back here.
  if (orig_port == redirect_port) return resetAndClose(app);

  UniqueFd up = connectWithin(orig, olen, Clock::now() + 3s);
  if (!up) return resetAndClose(app);
  setIoTimeouts(up.get(), 5s);
  setNoDelay(up.get());
  setNoDelay(app.get());
  SslPtr ssl(SSL_new(client_ctx));
  if (!ssl || SSL_set_fd(ssl.get(), up.get()) != 1 || SSL_connect(ssl.get()) != 1) {
    ERR_clear_error();
    resetAndClose(up);
    return resetAndClose(app);
  }
  relay(app, ssl.get(), up, Clock::now() + kRelayLimit);
}

// ---- client ----------------------------------------------------------------

ClientOutcome classifyErrno(int err) {
  switch (err) {
    case ECONNRESET:
    case EPIPE:
      return ClientOutcome::kReset;
    case ECONNREFUSED:
      return ClientOutcome::kRefused;
    default:
      return ClientOutcome::kOther;
  }
}

ClientRecord oneRequest(const Endpoint& dst) {
  ClientRecord rec;
  sockaddr_storage ss{};
  socklen_t len = toSockaddr(dst, ss);
  const auto deadline = Clock::now() + 3s;
  UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return rec;
  int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len);
  const int connect_errno = errno;
  // The port is chosen by connect() itself, before the SYN leaves.
  rec.local_port = localPort(fd.get());
  if (rc != 0) {
    if (connect_errno != EINPROGRESS) {
      rec.outcome = classifyErrno(connect_errno);
      return rec;
    }
    if (!waitFor(fd.get(), POLLOUT, deadline)) return rec;
    int err = 0;
    socklen_t elen = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err != 0) {
      rec.outcome = classifyErrno(err);
      return rec;
    }
  }
  const std::string request = "GET / HTTP/1.0\r\nHost: " + dst.str() +
                              "\r\nUser-Agent: capturewatch-lab\r\nAccept: */*\r\n\r\n";
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!waitFor(fd.get(), POLLOUT, deadline)) return rec;
    } else {
      rec.outcome = classifyErrno(errno);
      return rec;
    }
  }
  std::string answer;
  char buf[4096];
  while (true) {
    if (!waitFor(fd.get(), POLLIN, deadline)) return rec;  // timeout: other
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n > 0) {
      if (answer.size() < kMaxRequest) answer.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EAGAIN && errno != EINTR) {
      rec.outcome = classifyErrno(errno);
      return rec;
    }
  }
  // "HTTP/1.1 200 OK"
  const auto sp = answer.find(' ');
  const bool ok = answer.rfind("HTTP/1.", 0) == 0 && sp != std::string::npos &&
                  answer.compare(sp + 1, 3, "200") == 0;
  rec.outcome = ok ? ClientOutcome::kOk : ClientOutcome::kOther;
  return rec;
}

}  // namespace

const char* outcomeName(ClientOutcome outcome) {
  switch (outcome) {
    case ClientOutcome::kOk:
      return "ok";
    case ClientOutcome::kReset:
      return "reset";
    case ClientOutcome::kRefused:
      return "refused";
    case ClientOutcome::kOther:
      return "other";
  }
  return "other";
}

void upstreamRole(uint16_t port, std::chrono::seconds lifetime, int report_fd) {
  SslCtxPtr ctx = makeServerContext();
  std::vector<Listener> listeners;
  listeners.push_back({listenTcp("::", port, /*v6only=*/false),
                       [ctx](UniqueFd fd) { serveUpstreamConnection(std::move(fd), ctx.get()); }});
  if (!writeFrame(report_fd, kFrameReady, "")) return;
  serve(listeners, lifetime);
}

void sidecarRole(uint16_t redirect_port, uint16_t admin_port, std::chrono::seconds lifetime,
                 int report_fd) {
  SslCtxPtr ctx = makeClientContext();
  std::vector<Listener> listeners;
  listeners.push_back(
      {listenTcp("::", redirect_port, /*v6only=*/false), [ctx, redirect_port](UniqueFd fd) {
         serveRedirectConnection(std::move(fd), ctx.get(), redirect_port);
       }});
  listeners.push_back({listenTcp("127.0.0.1", admin_port, false), serveAdminConnection});
  listeners.push_back({listenTcp("::1", admin_port, /*v6only=*/true), serveAdminConnection});
  if (!writeFrame(report_fd, kFrameReady, "")) return;
  serve(listeners, lifetime);
}

void clientRole(const Endpoint& dst, int count, int report_fd) {
  std::vector<ClientRecord> records;
  records.reserve(static_cast<size_t>(std::max(count, 0)));
  for (int i = 0; i < count; ++i) records.push_back(oneRequest(dst));
  writeFrame(report_fd, kFrameData, encodeClientRecords(records));
}

std::string encodeClientRecords(const std::vector<ClientRecord>& records) {
  std::string out;
  out.reserve(records.size() * 3);
  for (const auto& r : records) {
    out += static_cast<char>(r.local_port >> 8);
    out += static_cast<char>(r.local_port & 0xff);
    out += static_cast<char>(r.outcome);
  }
  return out;
}

std::vector<ClientRecord> decodeClientRecords(const std::string& payload) {
  if (payload.size() % 3 != 0) throw std::runtime_error("malformed client report");
  std::vector<ClientRecord> out;
  for (size_t i = 0; i < payload.size(); i += 3) {
    ClientRecord r;
    r.local_port = static_cast<uint16_t>((static_cast<uint8_t>(payload[i]) << 8) |
                                         static_cast<uint8_t>(payload[i + 1]));
    const auto o = static_cast<uint8_t>(payload[i + 2]);
    if (o > static_cast<uint8_t>(ClientOutcome::kOther))
      throw std::runtime_error("malformed client report");
    r.outcome = static_cast<ClientOutcome>(o);
    out.push_back(r);
  }
  return out;
}

}  // namespace cw::lab
