// The bench's interval for a path's on/off ratio (bench/stats.h): what decides
// whether the rate budget is established.
#include "../../bench/report.h"
#include "../../bench/stats.h"

#include <gtest/gtest.h>

#include <cmath>

namespace cw::bench {
namespace {

TEST(BenchStatsTest, GeometricMeanAndStudentIntervalOfThreeRatios) {
  // ln 0.9, ln 1.0, ln 1.1: mean -0.0033499, sample sd 0.100382, standard
  // error 0.057956, t(2) 4.303.
  const auto r = pairedRatioInterval({0.9, 1.0, 1.1});
  EXPECT_EQ(r.n, 3u);
  EXPECT_NEAR(r.geomean, std::exp(-0.0033499), 1e-6);
  EXPECT_NEAR(r.lo, std::exp(-0.0033499 - 4.303 * 0.057956), 1e-4);
  EXPECT_NEAR(r.hi, std::exp(-0.0033499 + 4.303 * 0.057956), 1e-4);
}

TEST(BenchStatsTest, ARatioAndItsInverseCancel) {
  const auto r = pairedRatioInterval({0.8, 1.25});
  EXPECT_NEAR(r.geomean, 1.0, 1e-12);
  EXPECT_LT(r.lo, 1.0);
  EXPECT_GT(r.hi, 1.0);
  EXPECT_NEAR(r.lo * r.hi, 1.0, 1e-9);  // symmetric in the logarithm
}

TEST(BenchStatsTest, MoreRoundsOfTheSameSpreadNarrowTheInterval) {
  std::vector<double> few{0.92, 1.02, 0.95, 1.0, 0.96};
  std::vector<double> many;
  for (int i = 0; i < 6; ++i) many.insert(many.end(), few.begin(), few.end());
  const auto a = pairedRatioInterval(few);
  const auto b = pairedRatioInterval(many);
  EXPECT_NEAR(a.geomean, b.geomean, 1e-12);
  EXPECT_LT(b.hi - b.lo, (a.hi - a.lo) / 2);
  EXPECT_LT(a.lo, a.geomean);
  EXPECT_GT(a.hi, a.geomean);
}

TEST(BenchStatsTest, IdenticalRatiosGiveAnIntervalOfNoWidth) {
  const auto r = pairedRatioInterval({0.97, 0.97, 0.97, 0.97});
  EXPECT_NEAR(r.geomean, 0.97, 1e-12);
  EXPECT_NEAR(r.lo, 0.97, 1e-12);
  EXPECT_NEAR(r.hi, 0.97, 1e-12);
}

TEST(BenchStatsTest, FewerThanTwoUsableRatiosGiveNoInterval) {
  const auto none = pairedRatioInterval({});
  EXPECT_EQ(none.n, 0u);
  EXPECT_EQ(none.geomean, 0);
  // A round whose rate was not measured (0) or is not a number is left out.
  const auto one = pairedRatioInterval({0.95, 0.0, NAN});
  EXPECT_EQ(one.n, 1u);
  EXPECT_NEAR(one.geomean, 0.95, 1e-12);
  EXPECT_EQ(one.lo, one.hi);
}

TEST(BenchStatsTest, StudentQuantilesFallTowardsTheNormalOne) {
  EXPECT_NEAR(studentT975(1), 12.706, 1e-9);
  EXPECT_NEAR(studentT975(10), 2.228, 1e-9);
  EXPECT_NEAR(studentT975(30), 2.042, 1e-9);
  EXPECT_GE(studentT975(45), 2.0);
  EXPECT_GT(studentT975(200), 1.959);
  for (size_t df = 1; df < 200; ++df) EXPECT_GE(studentT975(df), studentT975(df + 1)) << df;
}

TEST(BenchStatsTest, ABudgetIsEstablishedOnlyByAWholeIntervalAtOrAboveItsLimit) {
  RatioInterval ci;
  ci.n = 50;
  ci.lo = 0.97, ci.hi = 0.99;
  EXPECT_STREQ(rateDecision(ci, 0.97), "established");
  ci.lo = 0.961, ci.hi = 0.989;  // the pooled bypassed interval of sessions 13-14
  EXPECT_STREQ(rateDecision(ci, 0.97), "undecided: the interval straddles the limit");
  ci.lo = 0.92, ci.hi = 0.969;
  EXPECT_STREQ(rateDecision(ci, 0.97), "not met");
  ci.n = 1, ci.lo = ci.hi = 0.99;
  EXPECT_STREQ(rateDecision(ci, 0.97), "too few rounds to decide");
}

// Two runs' results as cw_bench writes them: the summary's per-round ratios,
// for captured in both and for proxy in the first only.
nlohmann::ordered_json runOf(const std::vector<double>& captured,
                             const std::vector<double>& proxy = {}) {
  nlohmann::ordered_json r;
  r["summary"]["captured"]["ratio_per_round"] = captured;
  if (!proxy.empty()) r["summary"]["proxy"]["ratio_per_round"] = proxy;
  return r;
}

TEST(BenchStatsTest, PoolingTwoRunsNarrowsTheirIntervalToOneThatDecides) {
  // Each run of 8 rounds alone straddles 97% (96.9-102.3%, 96.7-102.1%);
  // their 16 rounds pooled (cw_bench --pool) give 97.8-101.1%.
  const std::vector<double> a{0.95, 1.04, 0.99, 1.02, 0.96, 1.03, 0.98, 1.00};
  const std::vector<double> b{1.03, 0.96, 1.01, 0.97, 1.04, 0.95, 1.00, 0.99};
  EXPECT_STREQ(rateDecision(pairedRatioInterval(a), 0.97),
               "undecided: the interval straddles the limit");
  EXPECT_STREQ(rateDecision(pairedRatioInterval(b), 0.97),
               "undecided: the interval straddles the limit");

  const auto pooled =
      poolRuns({runOf(a, {0.90, 0.91, 0.92}), runOf(b), nlohmann::ordered_json::object()});
  ASSERT_TRUE(pooled.contains("captured"));
  const auto& c = pooled["captured"];
  EXPECT_EQ(c["runs"].get<size_t>(), 2u);
  EXPECT_EQ(c["pairs"].get<size_t>(), 16u);
  EXPECT_NEAR(c["ci95"][0].get<double>(), 0.9779, 1e-3);
  EXPECT_NEAR(c["ci95"][1].get<double>(), 1.0108, 1e-3);
  EXPECT_EQ(c["decision"].get<std::string>(), "established");
  // A path only one run has is pooled from that run alone.
  ASSERT_TRUE(pooled.contains("proxy"));
  EXPECT_EQ(pooled["proxy"]["runs"].get<size_t>(), 1u);
  EXPECT_EQ(pooled["proxy"]["pairs"].get<size_t>(), 3u);
  EXPECT_EQ(pooled["proxy"]["decision"].get<std::string>(), "not met");
}

}  // namespace
}  // namespace cw::bench
