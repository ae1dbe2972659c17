// The connection-storm generator: epoll, many concurrent short non-blocking
// TCP connections, closed loop (each thread keeps `concurrency` connections in
// flight, a new one starts as soon as one ends), so the rate it reaches is the
// highest the machine sustains. Runs in a child made by cw::lab::spawnInPod
// (the pod's netns, a cgroup, a uid), bounded in time and in count.
//
// A connection: socket, non-blocking connect, wait until it is established,
// then until the peer closes (the bench servers close at once), then close.
// The client never sends the first FIN, so it never holds a TIME_WAIT and
// ephemeral ports are reused at once.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "event.h"

namespace cw::bench {

struct StormConfig {
  std::vector<Endpoint> destinations;  // round robin (IPv4 or IPv6)
  std::vector<Address> sources;        // bind() round robin (IP_BIND_ADDRESS_NO_PORT); empty: none
  int threads = 2;
  int concurrency = 128;               // in flight per thread
  double duration_s = 3.0;             // stop starting connections after this
  double warmup_s = 0.3;               // excluded from the rate
  uint64_t max_connections = 2'000'000;  // stop starting connections after this many
  double drain_timeout_s = 3.0;        // then wait this long for those in flight

  // Hold mode: open max_connections (at most `concurrency` per thread
  // connecting at once) and keep every established one open; report a 'D'
  // frame "holding", keep them until SIGUSR1 or hold_timeout_s, close them
  // all, report again. For the concurrent-sockets memory test.
  bool hold = false;
  double hold_timeout_s = 60.0;

  std::string toJson() const;
  static StormConfig fromJson(const std::string& text);
};

struct StormResult {
  uint64_t attempted = 0;     // connect() reached the kernel (SYN_SENT): each gets a verdict
  uint64_t established = 0;   // connect() succeeded
  uint64_t failed = 0;        // connect() failed after SYN_SENT (refused, timeout, closed at drain)
  uint64_t sync_errors = 0;   // socket()/connect() failed at once: never in the kernel's view
  uint64_t window_established = 0;  // established inside the measured window
  double window_s = 0;              // length of the measured window
  double elapsed_s = 0;             // start to the end of the drain
  std::map<std::string, uint64_t> errors;  // errno name -> count (failed + sync_errors)
  bool holding = false;             // hold mode: the intermediate report

  double rate() const { return window_s > 0 ? static_cast<double>(window_established) / window_s : 0; }
  std::string toJson() const;
  static StormResult fromJson(const std::string& text);
};

// Runs in the child; sends 'D' frames with StormResult JSON on report_fd
// (hold mode: one when holding, one at the end).
void stormRole(const StormConfig& config, int report_fd);

}  // namespace cw::bench
