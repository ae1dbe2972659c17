// What kernel.bpf_stats_enabled itself adds to a program's measured run time
// on this machine: an empty program on the agent's tracepoint, whose run time
// is nothing but the window between the kernel's two clock reads around a
// program (bench, README Performance).
#pragma once

#include <cstdint>

namespace cw::bench {

class StatsFloor {
 public:
  struct Reading {
    uint64_t runs = 0;
    uint64_t run_ns = 0;
  };

  // Loads an empty tp_btf program named cwb_stats_floor (it returns at
  // once) and attaches it to sock/inet_sock_set_state, where cw_set_state
  // runs. Throws std::runtime_error when the kernel refuses either.
  StatsFloor();
  ~StatsFloor();
  StatsFloor(const StatsFloor&) = delete;
  StatsFloor& operator=(const StatsFloor&) = delete;

  // Its runs and run time so far (counted while bpf_stats_enabled is 1).
  Reading read() const;

 private:
  int prog_fd_ = -1;
  int link_fd_ = -1;
};

}  // namespace cw::bench
