// The kernel side of the agent: loads capture.bpf.c through its skeleton,
// attaches the BTF-typed raw tracepoints (tp_btf), keeps the watched-netns map and reads the
// ring buffers (one per CPU), handing their records out in time order. Owns
// every kernel object (RAII): destroying a Probe detaches and frees
// everything, so nothing half-attached is ever left behind.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
#include "capture.h"
}

#include "reorder_buffer.h"

struct capture_bpf;
struct ring_buffer;

namespace cw {

// Fatal at start: the message says what is missing and how to fix it.
class ProbeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ProbeOptions {
  uint16_t redirect_port = 15001;
  // All the CPUs' ring buffers together: a power of two, >= page size. Each
  // CPU gets the largest power of two <= ring_buffer_bytes / CPUs (at least
  // a page).
  uint32_t ring_buffer_bytes = 4u << 20;
  uint32_t max_tracked_sockets = 131072;  // open app sockets tracked (owner table: twice the slots)
  // Records one read (drain()) takes, all rings together (each ring gets an
  // equal share, at least one): what the agent holds between the rings and
  // the correlator stays bounded however fast the kernel writes. A read that
  // took a ring's whole share leaves the rest for the next (behind()).
  uint32_t read_budget = 16384;
};

struct ProbeCounters {
  uint64_t ringbuf_lost = 0;         // records dropped: ring buffer full
  uint64_t owner_insert_failed = 0;  // sockets whose two owner buckets were full
  uint64_t submitted = 0;            // records submitted
  // Of ringbuf_lost: app connections whose established/failed record was
  // lost (never seen), and accepts on the redirect port that were lost.
  uint64_t lost_active = 0;
  uint64_t lost_passive = 0;
  // TCP state changes the kernel did not run the programs for: the program
  // was already running on that CPU when the change came (an interrupt's
  // softirq during its run). bpf_prog_info.recursion_misses, both programs.
  uint64_t runs_skipped = 0;
};

// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns(), which
// stamps the records.
uint64_t monotonicNowNs();

class Probe {
 public:
  using Handler = std::function<void(std::span<const uint8_t>)>;

  // Checks the kernel (BTF, permissions), opens, loads and attaches.
  static std::unique_ptr<Probe> open(const ProbeOptions& options, Handler handler);
  ~Probe();
  Probe(const Probe&) = delete;
  Probe& operator=(const Probe&) = delete;

  void watchNetns(uint32_t netns_inode, uint32_t target_id);
  // ProbeCounters::lost_passive alone (one map read), for the poll loop.
  uint64_t lostAccepts() const;
  void unwatchNetns(uint32_t netns_inode);
  // The sidecars' cgroup v2 ids: their sockets' close records are not sent
  // (the agent decides a proxy connection at its established record). A
  // cgroup that cannot be added (map full, errno says why) only costs those
  // records: returns false.
  bool addProxyCgroup(uint64_t cgroup_id);
  void removeProxyCgroup(uint64_t cgroup_id);

  // Buckets of the owner table's hot area (capture.bpf.c): 64 per CPU (512
  // sockets, 4 KiB of keys and 24 KiB of entries), at least 128 and at most
  // 512 (4,096 sockets, 32 KiB of keys, 192 KiB of entries), and at most a
  // quarter of the table. The smaller the area, the likelier its lines are
  // still cached when a socket's next state change comes: on a 2-CPU node,
  // 128 buckets instead of 512 saved about 0.15 us of BPF per connection, a
  // tenth of the programs' cost (48 kernel-cost pairs, README Performance),
  // and the few hundred sockets a storm holds per CPU still fit.
  static constexpr uint64_t kHotOwnerBucketsPerCpu = 64;
  static constexpr uint64_t kHotOwnerBucketsMin = 128;
  static constexpr uint64_t kHotOwnerBucketsMax = 512;
  static constexpr uint64_t hotOwnerBuckets(uint64_t owner_buckets, uint64_t ncpu) {
    const uint64_t wanted =
        std::clamp(kHotOwnerBucketsPerCpu * ncpu, kHotOwnerBucketsMin, kHotOwnerBucketsMax);
    return std::min(owner_buckets / 4, wanted);
  }

  // How long after its timestamp a record is surely in its ring: between the
  // timestamp and the submit the program runs with preemption off, taking
  // well under a microsecond (more if an interrupt or the hypervisor steals
  // the CPU in between: hence the margin).
  static constexpr uint64_t kSettleNs = 2'000'000;

  // Waits up to timeout_ms for records, then reads every ring (drain()).
  // Returns the number of records read from the kernel (0 on timeout or EINTR).
  int poll(int timeout_ms);
  // The wait alone: up to timeout_ms for a record (none if the last read
  // left some behind).
  void wait(int timeout_ms);
  // Reads the rings now, without waiting or relying on a wakeup, each up to
  // its share of read_budget, then again those that had more than their
  // share, until the budget is spent; and hands the handler, in time order,
  // each record stamped more than kSettleNs before this read (or, while a
  // ring may hold more, before its last record read, less kSettleNs): the
  // later ones are held for the next read. Returns the number of records
  // read from the kernel.
  int drain();
  // The last read left records in a ring (its share was taken, or it was
  // not read while enough waited for a late one): read again at once.
  bool behind() const { return behind_; }
  // Every record stamped before this time (CLOCK_MONOTONIC, ns) has been
  // handed to the handler: the time up to which the agent may decide.
  uint64_t settledNs() const { return settled_ns_; }
  // Hands out the held records too (when stopping). Returns how many.
  size_t flush();

  ProbeCounters counters() const;

  // The app sockets the kernel's owner table tracks now (its keys in use),
  // counted in the table's memory, mapped read-only a window at a time (2
  // MiB with the default bound: well under a millisecond). -1 if it cannot
  // be mapped (errno says why).
  int64_t trackedSockets() const;

 private:
  uint64_t sumCounter(uint32_t idx) const;  // a per-CPU counter, summed
  uint64_t runsSkipped() const;
  mutable std::vector<uint64_t> counter_values_;  // one per possible CPU
  Probe() = default;
  static int onRecord(void* ctx, void* data, size_t size);

  // One libbpf reader per ring, so that each is read up to its own share;
  // the rings are waited on together through epoll_fd_.
  struct RingReader {
    Probe* probe = nullptr;
    ring_buffer* rb = nullptr;
    uint32_t left = 0;     // records this read may still take from the ring
    uint64_t last_ts = 0;  // stamp of the last record taken
    bool more = false;     // its last read took its whole share: it may hold more
    bool skipped = false;  // not read this time (enough held for order)
    uint64_t empty_at = 0;  // the settled time of the last read that emptied it
  };
  // Records held for order, in read budgets, past which the rings that are
  // not behind are not read until the late ones catch up.
  static constexpr uint32_t kHeldRounds = 4;

  capture_bpf* skel_ = nullptr;
  size_t owner_keys_bytes_ = 0;  // the owner table's keys (owner_keys' data)
  std::vector<int> ring_fds_;  // one ring buffer map per possible CPU
  std::vector<std::unique_ptr<RingReader>> readers_;  // the same order
  int epoll_fd_ = -1;
  uint32_t read_budget_ = 1;
  uint32_t ring_share_ = 1;  // read_budget / rings
  bool behind_ = false;
  ReorderBuffer reorder_;
  uint64_t settled_ns_ = 0;
  Handler handler_;
};

}  // namespace cw
