// Statistics of the bench's rate ratios (header-only: the unit tests use it
// without Google Benchmark).
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

namespace cw::bench {

// The on/off ratio of a path over its rounds, each round's pair ran back to
// back: the geometric mean of the ratios (the mean of their logarithms, so
// that 0.9 and 1/0.9 cancel) and a 95% confidence interval for it, from
// Student's t with n - 1 degrees of freedom. The rounds' noise (this
// machine: ±12% per pair with no agent at all) is what the interval is
// made of: a budget is established only when the whole interval is on its
// side of the limit. n < 2 gives no interval (lo = hi = the one ratio, or 0
// for none).
struct RatioInterval {
  double geomean = 0;
  double lo = 0;
  double hi = 0;
  size_t n = 0;
};

// Two-sided 95% quantile of Student's t with df degrees of freedom (df >= 1);
// past 30, the value of the next lower tabulated df (the interval is then a
// little wide rather than narrow).
inline double studentT975(size_t df) {
  static constexpr double kTable[] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306,
                                      2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
                                      2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
                                      2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  if (df == 0) return INFINITY;
  if (df <= 30) return kTable[df - 1];
  if (df < 40) return 2.042;
  if (df < 60) return 2.021;
  if (df < 120) return 2.000;
  return 1.980;
}

inline RatioInterval pairedRatioInterval(const std::vector<double>& ratios) {
  RatioInterval r;
  std::vector<double> logs;
  for (double x : ratios) {
    if (x > 0 && std::isfinite(x)) logs.push_back(std::log(x));
  }
  r.n = logs.size();
  if (r.n == 0) return r;
  double mean = 0;
  for (double l : logs) mean += l;
  mean /= static_cast<double>(r.n);
  r.geomean = std::exp(mean);
  if (r.n < 2) {
    r.lo = r.hi = r.geomean;
    return r;
  }
  double ss = 0;
  for (double l : logs) ss += (l - mean) * (l - mean);
  const double se = std::sqrt(ss / static_cast<double>(r.n - 1) / static_cast<double>(r.n));
  const double half = studentT975(r.n - 1) * se;
  r.lo = std::exp(mean - half);
  r.hi = std::exp(mean + half);
  return r;
}

// What an interval decides for a budget of at least `limit`: established
// only when the whole interval is at or above it, not met when it is all
// below, otherwise undecided (and with fewer than two rounds, nothing).
inline const char* rateDecision(const RatioInterval& ci, double limit) {
  return ci.n < 2         ? "too few rounds to decide"
         : ci.lo >= limit ? "established"
         : ci.hi < limit  ? "not met"
                          : "undecided: the interval straddles the limit";
}

}  // namespace cw::bench
