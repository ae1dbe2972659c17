// The kernel side of the agent: loads capture.bpf.c through its skeleton,
// attaches the BTF-typed raw tracepoints (tp_btf), keeps the watched-netns map and reads the
// ring buffer. Owns every kernel object (RAII): destroying a Probe detaches
// and frees everything, so nothing half-attached is ever left behind.
#pragma once

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
  uint32_t ring_buffer_bytes = 4u << 20;  // power of two, >= page size
  uint32_t max_tracked_sockets = 131072;  // owner map entries (open app sockets tracked)
};

struct ProbeCounters {
  uint64_t ringbuf_lost = 0;         // records dropped: ring buffer full
  uint64_t owner_insert_failed = 0;  // owner map updates that failed
  uint64_t submitted = 0;            // records submitted
  // Of ringbuf_lost: app connections whose established/failed record was
  // lost (never seen), and accepts on the redirect port that were lost.
  uint64_t lost_active = 0;
  uint64_t lost_passive = 0;
};

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

  // Waits up to timeout_ms for records and hands each one to the handler.
  // Returns the number of records consumed (0 on timeout or EINTR).
  int poll(int timeout_ms);
  // Hands every record in the ring buffer to the handler now, without
  // waiting or relying on a wakeup. Returns the number consumed.
  int drain();

  ProbeCounters counters() const;

 private:
  uint64_t sumCounter(uint32_t idx) const;  // a per-CPU counter, summed
  mutable std::vector<uint64_t> counter_values_;  // one per possible CPU
  Probe() = default;
  static int onRecord(void* ctx, void* data, size_t size);

  capture_bpf* skel_ = nullptr;
  ring_buffer* ring_ = nullptr;
  Handler handler_;
};

}  // namespace cw
