// Puts the records of the per-CPU ring buffers back in time order.
//
// The kernel writes each record to the ring of the CPU it runs on (one ring
// per CPU: no lock shared between CPUs, see bpf/capture.bpf.c). Each ring is
// in the order its records were made, but a socket's records can be in two
// rings (connect() on one CPU, the handshake's end in a softirq on another)
// and the rings are read one after another. The correlator needs every
// socket's records in order, and an accept no later than the grace window it
// belongs to: so records are held here and handed out by timestamp, once no
// record stamped earlier can still be on its way.
//
// Pure logic: copies the bytes, no I/O. Memory is reused from one read to
// the next (no allocation per record once warmed up).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace cw {

class ReorderBuffer {
 public:
  using Sink = std::function<void(std::span<const uint8_t>)>;

  // Copies one record. Its timestamp is its first 8 bytes (cw_event.ts_ns);
  // a record too short to have one is handed out first (the decoder then
  // counts it as malformed).
  void add(std::span<const uint8_t> record);

  // Hands `sink`, in timestamp order (equal stamps: in the order added),
  // every held record stamped before `settled_ns`; keeps the others.
  // Returns how many were handed out.
  size_t release(uint64_t settled_ns, const Sink& sink);
  size_t releaseAll(const Sink& sink) { return release(UINT64_MAX, sink); }

  size_t held() const { return entries_.size(); }

 private:
  struct Entry {
    uint64_t ts_ns;
    uint32_t offset;
    uint32_t size;
  };
  // Puts entries_ in time order by merging its runs (each ring's records are
  // in order already: a read of k rings adds k runs). Stable: equal stamps
  // keep the order they were added in.
  void mergeRuns();

  std::vector<uint8_t> bytes_;
  std::vector<Entry> entries_;
  std::vector<size_t> run_starts_;   // where entries_ goes back in time, in order
  std::vector<Entry> merge_scratch_;  // scratch for mergeRuns(), reused
  std::vector<size_t> merge_runs_;
  std::vector<uint8_t> kept_bytes_;  // scratch for release(), reused
  std::vector<Entry> kept_entries_;
};

}  // namespace cw
