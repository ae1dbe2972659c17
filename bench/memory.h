// Memory measurements that need no traffic: the correlator's tables filled
// with synthetic event streams (up to 1M pending / followed connections), and
// the kernel memory of the BPF owner map at a given size.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>

namespace cw::bench {

// Feeds `n` app connections that no accept claims into a Correlator bounded
// at `bound` (pending and followed), then expires them (all bypassed, all
// followed), then closes them. Reports heap bytes per entry (mallinfo2), the
// process RSS growth, the time per event, and what the bound counted.
nlohmann::ordered_json correlatorMemory(uint64_t n, uint64_t bound);

// Loads the BPF programs with an owner map of `entries` and reports the
// kernel memory of each map (memlock, /proc/self/fdinfo). The programs are
// attached while measured and detached on return.
nlohmann::ordered_json bpfMapMemory(uint32_t entries);

// The BPF maps process `pid` holds (/proc/PID/fdinfo): each one's type, size
// and memlock, and their total.
nlohmann::ordered_json bpfMapsOf(pid_t pid);

// Heap bytes in use (mallinfo2().uordblks + hblkhd) and VmRSS of this process.
uint64_t heapBytes();
uint64_t selfRssKib();

}  // namespace cw::bench
