#include "memory.h"

#include <dirent.h>
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "correlator.h"
#include "probe.h"

namespace cw::bench {
namespace {

using Clock = std::chrono::steady_clock;

ConnEvent appConnection(uint64_t i, uint64_t ts) {
  ConnEvent ev;
  ev.kind = EventKind::ActiveEstablished;
  ev.flags = CW_F_OWNER_KNOWN;
  ev.ts_ns = ts;
  ev.sock_id = 0xffff888000000000ull + i * 2048;  // like kernel struct sock addresses
  ev.cgroup_id = 5001;
  ev.netns = 4026532001u;
  ev.pid = 4321;
  ev.uid = 1337;
  ev.gid = 1337;
  // 198.18.x.y:port, unique per i (16 bits of port, the rest in the address).
  const uint8_t src[4] = {198, 18, static_cast<uint8_t>((i >> 24) & 0xff),
                          static_cast<uint8_t>((i >> 16) & 0xff)};
  ev.src = Endpoint{Address::fromV4(src), static_cast<uint16_t>(i & 0xffff)};
  const uint8_t dst[4] = {198, 19, 0, 1};
  ev.dst = Endpoint{Address::fromV4(dst), 443};
  std::memcpy(ev.comm.data(), "envoy", 6);
  return ev;
}

double secondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

uint64_t heapBytes() {
  struct mallinfo2 mi = ::mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

uint64_t selfRssKib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  }
  return 0;
}

nlohmann::ordered_json correlatorMemory(uint64_t n, uint64_t bound) {
  nlohmann::ordered_json j;
  j["connections"] = n;
  j["bound"] = bound;
  const uint64_t heap0 = heapBytes();
  const uint64_t rss0 = selfRssKib();
  {
    Correlator c(Correlator::Config{200'000'000, bound, bound});
    std::vector<Decision> out;
    out.reserve(1024);
    const uint64_t t0 = 1'000'000'000'000ull;

    auto start = Clock::now();
    for (uint64_t i = 0; i < n; ++i) {
      c.onEvent(appConnection(i, t0 + i), out);
      out.clear();
    }
    const double feed_s = secondsSince(start);
    const uint64_t heap_pending = heapBytes();
    j["pending"] = c.pendingConnections();
    j["pending_evicted"] = c.stats().pending_evicted;
    j["pending_heap_bytes"] = heap_pending - heap0;
    j["pending_bytes_per_entry"] =
        c.pendingConnections() > 0
            ? static_cast<double>(heap_pending - heap0) / static_cast<double>(c.pendingConnections())
            : 0.0;
    j["feed_ns_per_event"] = feed_s * 1e9 / static_cast<double>(n);

    // The grace window ends for all of them: n bypassed verdicts, each
    // followed until its close.
    start = Clock::now();
    uint64_t verdicts = 0;
    c.expire(t0 + n + 200'000'000, out);
    verdicts += out.size();
    out.clear();
    out.shrink_to_fit();
    const double expire_s = secondsSince(start);
    const uint64_t heap_followed = heapBytes();
    j["verdicts"] = verdicts;
    j["expire_ns_per_verdict"] = verdicts > 0 ? expire_s * 1e9 / static_cast<double>(verdicts) : 0.0;
    j["followed"] = c.followed();
    j["followed_evicted"] = c.stats().followed_evicted;
    j["followed_heap_bytes"] = heap_followed > heap0 ? heap_followed - heap0 : 0;
    j["followed_bytes_per_entry"] =
        c.followed() > 0 ? static_cast<double>(heap_followed - heap0) / static_cast<double>(c.followed())
                         : 0.0;
    j["peak_rss_growth_kib"] = selfRssKib() > rss0 ? selfRssKib() - rss0 : 0;

    start = Clock::now();
    uint64_t outcomes = 0;
    for (uint64_t i = 0; i < n; ++i) {
      ConnEvent ev = appConnection(i, t0 + 300'000'000 + i);
      ev.kind = EventKind::ActiveClosed;
      ev.flags |= CW_F_RESET_RECEIVED;
      c.onEvent(ev, out);
      outcomes += out.size();
      out.clear();
    }
    j["outcomes"] = outcomes;
    j["close_ns_per_event"] = secondsSince(start) * 1e9 / static_cast<double>(n);
    j["left_followed"] = c.followed();
  }
  j["heap_after_destroy_bytes"] = heapBytes() > heap0 ? heapBytes() - heap0 : 0;
  ::malloc_trim(0);
  return j;
}

nlohmann::ordered_json bpfMapMemory(uint32_t entries) {
  nlohmann::ordered_json j;
  j["owner_map_entries"] = entries;
  ProbeOptions options;
  options.max_tracked_sockets = entries;
  options.redirect_port = 15999;
  auto probe = Probe::open(options, [](std::span<const uint8_t>) {});
  j.update(bpfMapsOf(::getpid()));
  return j;
}

nlohmann::ordered_json bpfMapsOf(pid_t pid) {
  // /proc/PID/fdinfo has each map's type, size and memlock (the kernel's
  // accounting of its memory).
  const std::string dir = "/proc/" + std::to_string(pid) + "/fdinfo";
  uint64_t total = 0;
  nlohmann::ordered_json maps = nlohmann::ordered_json::array();
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream in(dir + "/" + e->d_name);
      std::string line;
      std::map<std::string, std::string> kv;
      while (std::getline(in, line)) {
        const size_t colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string v = line.substr(colon + 1);
        v.erase(0, v.find_first_not_of(" \t"));
        kv[line.substr(0, colon)] = v;
      }
      if (!kv.count("map_type") || !kv.count("memlock")) continue;
      const uint64_t memlock = std::stoull(kv["memlock"]);
      total += memlock;
      maps.push_back({{"map_type", std::stoi(kv["map_type"])},
                      {"max_entries", std::stoull(kv["max_entries"])},
                      {"value_size", std::stoull(kv["value_size"])},
                      {"memlock_bytes", memlock}});
    }
    ::closedir(d);
  }
  nlohmann::ordered_json j;
  j["maps"] = maps;
  j["total_memlock_bytes"] = total;
  return j;
}

}  // namespace cw::bench
