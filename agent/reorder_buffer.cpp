#include "reorder_buffer.h"

#include <algorithm>
#include <cstring>

namespace cw {

void ReorderBuffer::add(std::span<const uint8_t> record) {
  uint64_t ts = 0;
  if (record.size() >= sizeof ts) std::memcpy(&ts, record.data(), sizeof ts);
  if (!entries_.empty() && ts < entries_.back().ts_ns) sorted_ = false;
  entries_.push_back(Entry{ts, seq_++, static_cast<uint32_t>(bytes_.size()),
                           static_cast<uint32_t>(record.size())});
  bytes_.insert(bytes_.end(), record.begin(), record.end());
}

size_t ReorderBuffer::release(uint64_t settled_ns, const Sink& sink) {
  if (entries_.empty()) return 0;
  if (!sorted_) {
    std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) {
      return a.ts_ns != b.ts_ns ? a.ts_ns < b.ts_ns : a.seq < b.seq;
    });
    sorted_ = true;
  }
  const auto first_kept = std::partition_point(
      entries_.begin(), entries_.end(), [&](const Entry& e) { return e.ts_ns < settled_ns; });
  const size_t released = static_cast<size_t>(first_kept - entries_.begin());
  for (auto it = entries_.begin(); it != first_kept; ++it) {
    sink(std::span<const uint8_t>(bytes_.data() + it->offset, it->size));
  }
  if (first_kept == entries_.end()) {
    entries_.clear();
    bytes_.clear();
    return released;
  }
  // Keep the rest, compacted, in their (sorted) order.
  kept_entries_.clear();
  kept_bytes_.clear();
  for (auto it = first_kept; it != entries_.end(); ++it) {
    kept_entries_.push_back(Entry{it->ts_ns, it->seq, static_cast<uint32_t>(kept_bytes_.size()), it->size});
    kept_bytes_.insert(kept_bytes_.end(), bytes_.begin() + it->offset,
                       bytes_.begin() + it->offset + it->size);
  }
  entries_.swap(kept_entries_);
  bytes_.swap(kept_bytes_);
  return released;
}

}  // namespace cw
