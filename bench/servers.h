// Fast servers for the benchmark. The lab's sidecar and upstream are TLS and
// thread-per-connection: far too slow to find the machine's connection-rate
// limit. These are epoll servers, one SO_REUSEPORT listener per worker
// thread, that do the least a peer can do: accept, then close at once
// (Mode::kClose, the storm) or never accept, so that established connections
// wait in the accept queue until the client closes them (Mode::kHold, the
// concurrent-sockets test: no descriptor limit applies). Run with
// cw::lab::spawnInPod.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

namespace cw::bench {

struct ServerConfig {
  enum class Mode { kClose, kHold } mode = Mode::kClose;
  std::vector<uint16_t> ports;  // each on [::] (dual stack)
  int workers = 2;              // threads, each with its own listener per port
  int backlog = 2097152;        // capped by net.core.somaxconn of the netns
  std::chrono::seconds lifetime{600};
};

// Runs in the child: listens, sends 'R' on report_fd, serves until lifetime
// has passed (or the process is killed). Throws std::runtime_error if a
// listener cannot be set up (reported by spawnInPod as an 'E' frame).
void serverRole(const ServerConfig& config, int report_fd);

}  // namespace cw::bench
