#include "k8s/backoff.h"

#include <algorithm>

namespace cw::k8s {

Backoff::Backoff(Duration initial, Duration max, uint64_t seed)
    : initial_(std::max(initial, Duration(1))), max_(std::max(max, initial_)), rng_(seed) {}

Backoff::Duration Backoff::next() {
  ++attempt_;
  Duration ceiling = initial_;
  for (int i = 0; i < attempt_ && ceiling < max_; ++i) ceiling *= 2;
  ceiling = std::min(ceiling, max_);
  std::uniform_int_distribution<int64_t> pick(initial_.count(), ceiling.count());
  return Duration(pick(rng_));
}

}  // namespace cw::k8s
