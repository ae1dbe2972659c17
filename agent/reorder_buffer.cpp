#include "reorder_buffer.h"

#include <algorithm>
#include <cstring>

namespace cw {

void ReorderBuffer::add(std::span<const uint8_t> record) {
  uint64_t ts = 0;
  if (record.size() >= sizeof ts) std::memcpy(&ts, record.data(), sizeof ts);
  if (!entries_.empty() && ts < entries_.back().ts_ns) run_starts_.push_back(entries_.size());
  entries_.push_back(
      Entry{ts, static_cast<uint32_t>(bytes_.size()), static_cast<uint32_t>(record.size())});
  bytes_.insert(bytes_.end(), record.begin(), record.end());
}

void ReorderBuffer::mergeRuns() {
  // Bottom-up: merge neighbouring runs pairwise until one is left; each pass
  // moves every entry once, so k runs cost n log k (a read of 2 rings: one
  // pass), against n log n for a sort.
  const auto before = [](const Entry& a, const Entry& b) { return a.ts_ns < b.ts_ns; };
  while (!run_starts_.empty()) {
    merge_scratch_.resize(entries_.size());
    merge_runs_.clear();
    size_t from = 0;
    for (size_t r = 0; r <= run_starts_.size(); r += 2) {
      const size_t mid = r < run_starts_.size() ? run_starts_[r] : entries_.size();
      const size_t to = r + 1 < run_starts_.size() ? run_starts_[r + 1] : entries_.size();
      // std::merge takes from the first range on equal keys: stable.
      std::merge(entries_.begin() + static_cast<std::ptrdiff_t>(from),
                 entries_.begin() + static_cast<std::ptrdiff_t>(mid),
                 entries_.begin() + static_cast<std::ptrdiff_t>(mid),
                 entries_.begin() + static_cast<std::ptrdiff_t>(to),
                 merge_scratch_.begin() + static_cast<std::ptrdiff_t>(from), before);
      if (to < entries_.size()) merge_runs_.push_back(to);
      from = to;
    }
    entries_.swap(merge_scratch_);
    run_starts_.swap(merge_runs_);
  }
}

size_t ReorderBuffer::release(uint64_t settled_ns, const Sink& sink) {
  if (entries_.empty()) return 0;
  mergeRuns();
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
    kept_entries_.push_back(Entry{it->ts_ns, static_cast<uint32_t>(kept_bytes_.size()), it->size});
    kept_bytes_.insert(kept_bytes_.end(), bytes_.begin() + it->offset,
                       bytes_.begin() + it->offset + it->size);
  }
  entries_.swap(kept_entries_);
  bytes_.swap(kept_bytes_);
  return released;
}

}  // namespace cw
