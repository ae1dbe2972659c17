#include "servers.h"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "lab/spawn.h"
#include "lab/system.h"

namespace cw::bench {
namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

int listenOn(uint16_t port, int backlog) {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("socket");
  int one = 1, zero = 0;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) fail("SO_REUSEPORT");
  if (::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) != 0) fail("IPV6_V6ONLY");
  sockaddr_in6 sa{};
  sa.sin6_family = AF_INET6;
  sa.sin6_port = htons(port);
  sa.sin6_addr = in6addr_any;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    fail("bind [::]:" + std::to_string(port));
  }
  if (::listen(fd, backlog) != 0) fail("listen");
  return fd;
}

void worker(const ServerConfig& config, const std::vector<int>& listeners,
            Clock::time_point deadline) {
  if (config.mode == ServerConfig::Mode::kHold) {
    // Never accept: established connections wait in the accept queue and
    // stay open until the client closes them or this process ends.
    while (Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return;
  }
  lab::UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) return;
  for (int fd : listeners) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev);
  }
  epoll_event events[64];
  while (Clock::now() < deadline) {
    int n = ::epoll_wait(ep.get(), events, 64, 200);
    for (int i = 0; i < n; ++i) {
      // Accept everything queued and close it: the accept queue must never
      // overflow, or the sidecar's accept would come long after the app's
      // connect.
      while (true) {
        int c = ::accept4(events[i].data.fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) break;  // EAGAIN (or EMFILE: the client sees a timeout)
        ::close(c);
      }
    }
  }
}

}  // namespace

void serverRole(const ServerConfig& config, int report_fd) {
  if (config.ports.empty() || config.workers < 1) throw std::invalid_argument("server: no ports");
  std::vector<std::vector<int>> listeners(static_cast<size_t>(config.workers));
  for (auto& l : listeners) {
    for (uint16_t port : config.ports) l.push_back(listenOn(port, config.backlog));
  }
  const auto deadline = Clock::now() + config.lifetime;
  std::vector<std::thread> threads;
  for (auto& l : listeners) threads.emplace_back([&config, &l, deadline] { worker(config, l, deadline); });
  lab::writeFrame(report_fd, lab::kFrameReady, "");
  for (auto& t : threads) t.join();
}

}  // namespace cw::bench
