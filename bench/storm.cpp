#include "storm.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <thread>

#include "lab/spawn.h"
#include "lab/system.h"

namespace cw::bench {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

std::atomic<bool> g_release{false};
void onRelease(int) { g_release.store(true); }

std::string errnoName(int err) {
  switch (err) {
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EADDRINUSE: return "EADDRINUSE";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOBUFS: return "ENOBUFS";
    case ENETUNREACH: return "ENETUNREACH";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case EAGAIN: return "EAGAIN";
    case 0: return "closed-while-connecting";
    default: return "errno-" + std::to_string(err);
  }
}

struct alignas(64) ThreadStats {
  std::atomic<uint64_t> established{0};
  uint64_t attempted = 0, failed = 0, sync_errors = 0;
  std::map<std::string, uint64_t> errors;
  bool done_opening = false;
};

struct Sock {
  sockaddr_storage addr{};
  socklen_t len = 0;
  int family = AF_INET;
};

Sock toSock(const Endpoint& ep, uint16_t port_override = 0) {
  Sock s;
  const uint16_t port = port_override != 0 ? port_override : ep.port;
  if (ep.addr.isV4()) {
    auto* in = reinterpret_cast<sockaddr_in*>(&s.addr);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    std::memcpy(&in->sin_addr, ep.addr.bytes.data() + 12, 4);
    s.len = sizeof(sockaddr_in);
    s.family = AF_INET;
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&s.addr);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    std::memcpy(&in6->sin6_addr, ep.addr.bytes.data(), 16);
    s.len = sizeof(sockaddr_in6);
    s.family = AF_INET6;
  }
  return s;
}

enum : uint8_t { kFree = 0, kConnecting = 1, kEstablished = 2 };

class StormThread {
 public:
  StormThread(const StormConfig& c, ThreadStats& stats, uint64_t quota, Clock::time_point end,
              size_t index)
      : c_(c), stats_(stats), quota_(quota), end_(end), next_(index) {
    for (const auto& d : c.destinations) dsts_.push_back(toSock(d));
    for (const auto& s : c.sources) srcs_.push_back(toSock(Endpoint{s, 0}));
  }

  void run() {
    ep_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep_) return;
    epoll_event events[512];
    const auto drain_limit = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(c_.drain_timeout_s));
    Clock::time_point drain_deadline{};
    bool stopping = false;
    while (true) {
      const auto now = Clock::now();
      if (!stopping && (now >= end_ || started_ >= quota_)) {
        stopping = true;
        drain_deadline = now + drain_limit;
      }
      while (!stopping && connecting_ + (c_.hold ? 0 : established_open_) <
                              static_cast<uint64_t>(c_.concurrency)) {
        if (!startOne()) break;
        if (started_ >= quota_) break;
      }
      if (stopping && connecting_ == 0 && (c_.hold || established_open_ == 0)) break;
      if (stopping && now >= drain_deadline) break;
      int n = ::epoll_wait(ep_.get(), events, 512, stopping ? 20 : 50);
      for (int i = 0; i < n; ++i) onEvent(static_cast<int>(events[i].data.fd), events[i].events);
    }
    stats_.done_opening = true;
    if (c_.hold) {
      const auto hold_end =
          Clock::now() + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(c_.hold_timeout_s));
      while (!g_release.load() && Clock::now() < hold_end) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    // Whatever is left: connecting sockets closed now fail (SYN_SENT ->
    // CLOSE: the agent reports them), established ones end normally -- held
    // ones with a reset, so that tens of thousands of TIME_WAITs do not keep
    // their ports from the next test.
    for (size_t fd = 0; fd < state_.size(); ++fd) {
      if (state_[fd] == kConnecting) fail(static_cast<int>(fd), 0);
      if (state_[fd] == kEstablished) {
        if (c_.hold) {
          linger lg{1, 0};
          ::setsockopt(static_cast<int>(fd), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        finish(static_cast<int>(fd));
      }
    }
  }

 private:
  bool startOne() {
    const Sock& dst = dsts_[next_ % dsts_.size()];
    int fd = ::socket(dst.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      syncError(errno);
      return false;
    }
    if (!srcs_.empty()) {
      const Sock& src = srcs_[next_ % srcs_.size()];
      int one = 1;
      ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      if (::bind(fd, reinterpret_cast<const sockaddr*>(&src.addr), src.len) != 0) {
        syncError(errno);
        ::close(fd);
        return false;
      }
    }
    ++next_;
    ++started_;
    if (static_cast<size_t>(fd) >= state_.size()) state_.resize(static_cast<size_t>(fd) * 2 + 64);
    int r = ::connect(fd, reinterpret_cast<const sockaddr*>(&dst.addr), dst.len);
    if (r != 0 && errno != EINPROGRESS) {
      const int err = errno;
      // EADDRNOTAVAIL (no free port) happens after the socket went SYN_SENT:
      // the kernel reports it as a failed connect. Others fail before.
      if (err == EADDRNOTAVAIL) {
        ++stats_.attempted;
        ++stats_.failed;
        ++stats_.errors[errnoName(err)];
      } else {
        syncError(err);
      }
      ::close(fd);
      return err != EADDRNOTAVAIL;  // out of ports: let some close first
    }
    ++stats_.attempted;
    epoll_event ev{};
    ev.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP | EPOLLET;
    ev.data.fd = fd;
    if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      fail(fd, errno);
      return false;
    }
    state_[static_cast<size_t>(fd)] = kConnecting;
    ++connecting_;
    if (r == 0) onEvent(fd, EPOLLOUT);
    return true;
  }

  void onEvent(int fd, uint32_t events) {
    uint8_t& st = state_[static_cast<size_t>(fd)];
    if (st == kConnecting) {
      if ((events & EPOLLERR) != 0 || ((events & EPOLLHUP) != 0 && (events & EPOLLOUT) == 0)) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        fail(fd, err);
        return;
      }
      if ((events & EPOLLOUT) == 0) return;
      st = kEstablished;
      --connecting_;
      ++established_open_;
      stats_.established.fetch_add(1, std::memory_order_relaxed);
    }
    if (st == kEstablished && !c_.hold &&
        (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
      finish(fd);
    }
  }

  void fail(int fd, int err) {
    ++stats_.failed;
    ++stats_.errors[errnoName(err)];
    state_[static_cast<size_t>(fd)] = kFree;
    --connecting_;
    ::close(fd);
  }

  void finish(int fd) {
    state_[static_cast<size_t>(fd)] = kFree;
    --established_open_;
    ::close(fd);
  }

  void syncError(int err) {
    ++stats_.sync_errors;
    ++stats_.errors[errnoName(err)];
  }

  const StormConfig& c_;
  ThreadStats& stats_;
  const uint64_t quota_;
  const Clock::time_point end_;
  std::vector<Sock> dsts_, srcs_;
  size_t next_;
  uint64_t started_ = 0, connecting_ = 0, established_open_ = 0;
  std::vector<uint8_t> state_;
  lab::UniqueFd ep_;
};

void setNoFileToHard() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

StormResult collect(std::vector<ThreadStats>& stats) {
  StormResult r;
  for (auto& s : stats) {
    r.attempted += s.attempted;
    r.established += s.established.load();
    r.failed += s.failed;
    r.sync_errors += s.sync_errors;
    for (const auto& [k, v] : s.errors) r.errors[k] += v;
  }
  return r;
}

json endpointJson(const Endpoint& e) { return json{{"addr", e.addr.str()}, {"port", e.port}}; }

Endpoint endpointFrom(const json& j) {
  return Endpoint{Address::parse(j.at("addr").get<std::string>()).value(), j.at("port").get<uint16_t>()};
}

}  // namespace

std::string StormConfig::toJson() const {
  json j;
  j["destinations"] = json::array();
  for (const auto& d : destinations) j["destinations"].push_back(endpointJson(d));
  j["sources"] = json::array();
  for (const auto& s : sources) j["sources"].push_back(s.str());
  j["threads"] = threads;
  j["concurrency"] = concurrency;
  j["duration_s"] = duration_s;
  j["warmup_s"] = warmup_s;
  j["max_connections"] = max_connections;
  j["drain_timeout_s"] = drain_timeout_s;
  j["hold"] = hold;
  j["hold_timeout_s"] = hold_timeout_s;
  return j.dump();
}

StormConfig StormConfig::fromJson(const std::string& text) {
  const json j = json::parse(text);
  StormConfig c;
  for (const auto& d : j.at("destinations")) c.destinations.push_back(endpointFrom(d));
  for (const auto& s : j.at("sources")) c.sources.push_back(Address::parse(s.get<std::string>()).value());
  c.threads = j.at("threads");
  c.concurrency = j.at("concurrency");
  c.duration_s = j.at("duration_s");
  c.warmup_s = j.at("warmup_s");
  c.max_connections = j.at("max_connections");
  c.drain_timeout_s = j.at("drain_timeout_s");
  c.hold = j.at("hold");
  c.hold_timeout_s = j.at("hold_timeout_s");
  return c;
}

std::string StormResult::toJson() const {
  return json{{"attempted", attempted},       {"established", established},
              {"failed", failed},             {"sync_errors", sync_errors},
              {"window_established", window_established},
              {"window_s", window_s},         {"elapsed_s", elapsed_s},
              {"errors", errors},             {"holding", holding}}
      .dump();
}

StormResult StormResult::fromJson(const std::string& text) {
  const json j = json::parse(text);
  StormResult r;
  r.attempted = j.at("attempted");
  r.established = j.at("established");
  r.failed = j.at("failed");
  r.sync_errors = j.at("sync_errors");
  r.window_established = j.at("window_established");
  r.window_s = j.at("window_s");
  r.elapsed_s = j.at("elapsed_s");
  r.errors = j.at("errors").get<std::map<std::string, uint64_t>>();
  r.holding = j.at("holding");
  return r;
}

void stormRole(const StormConfig& config, int report_fd) {
  if (config.destinations.empty() || config.threads < 1 || config.concurrency < 1) {
    throw std::invalid_argument("storm: bad config");
  }
  setNoFileToHard();
  struct sigaction sa {};
  sa.sa_handler = onRelease;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGUSR1, &sa, nullptr);

  const auto start = Clock::now();
  const auto end = start + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(config.duration_s));
  std::vector<ThreadStats> stats(static_cast<size_t>(config.threads));
  std::vector<std::thread> threads;
  const uint64_t per_thread = config.max_connections / static_cast<uint64_t>(config.threads);
  for (size_t i = 0; i < stats.size(); ++i) {
    const uint64_t quota =
        per_thread + (i == 0 ? config.max_connections % static_cast<uint64_t>(config.threads) : 0);
    threads.emplace_back([&config, &stats, quota, end, i] {
      StormThread t(config, stats[i], quota, end, i);
      t.run();
    });
  }
  auto established = [&] {
    uint64_t n = 0;
    for (auto& s : stats) n += s.established.load(std::memory_order_relaxed);
    return n;
  };
  uint64_t window_start = 0, window_end = 0;
  Clock::time_point t_start = start, t_end = start;
  if (!config.hold) {
    const auto warm = start + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(config.warmup_s));
    std::this_thread::sleep_until(warm);
    window_start = established();
    t_start = Clock::now();
    std::this_thread::sleep_until(end);
    window_end = established();
    t_end = Clock::now();
  } else {
    // Report once every thread has opened its share.
    const auto limit = end + std::chrono::seconds(5);
    while (Clock::now() < limit) {
      bool all = true;
      for (auto& s : stats) all = all && s.done_opening;
      if (all) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    StormResult holding;
    holding.established = established();
    holding.holding = true;
    holding.elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
    lab::writeFrame(report_fd, lab::kFrameData, holding.toJson());
  }
  for (auto& t : threads) t.join();
  StormResult r = collect(stats);
  r.window_established = window_end - window_start;
  r.window_s = std::chrono::duration<double>(t_end - t_start).count();
  r.elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
  lab::writeFrame(report_fd, lab::kFrameData, r.toJson());
}

}  // namespace cw::bench
