// Exponential backoff with jitter for reconnecting to the API server: the
// n-th delay in a row is drawn uniformly from [initial, min(max, initial * 2^n)],
// so a DaemonSet's agents do not come back in step after an API server outage.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>

namespace cw::k8s {

class Backoff {
 public:
  using Duration = std::chrono::milliseconds;

  Backoff(Duration initial, Duration max, uint64_t seed = std::random_device{}());

  Duration next();
  void reset() { attempt_ = 0; }
  int attempts() const { return attempt_; }

 private:
  Duration initial_;
  Duration max_;
  int attempt_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace cw::k8s
