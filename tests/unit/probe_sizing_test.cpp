// The owner table's hot area (agent/probe.h, bpf/capture.bpf.c): 64 buckets
// per CPU, between 128 and 512, and never more than a quarter of the table.
#include <gtest/gtest.h>

#include "probe.h"

namespace cw {
namespace {

// The default bound (--max-tracked-sockets 131072): twice its slots, in
// buckets of CW_OWNER_BUCKET_SLOTS.
constexpr uint64_t kDefaultTableBuckets = 2 * 131072 / CW_OWNER_BUCKET_SLOTS;

TEST(ProbeSizingTest, HotAreaGrowsWithTheCpusBetweenItsBounds) {
  EXPECT_EQ(Probe::hotOwnerBuckets(kDefaultTableBuckets, 1), 128u);
  EXPECT_EQ(Probe::hotOwnerBuckets(kDefaultTableBuckets, 2), 128u);  // this bench's machine
  EXPECT_EQ(Probe::hotOwnerBuckets(kDefaultTableBuckets, 3), 192u);
  EXPECT_EQ(Probe::hotOwnerBuckets(kDefaultTableBuckets, 4), 256u);
  EXPECT_EQ(Probe::hotOwnerBuckets(kDefaultTableBuckets, 8), 512u);
  EXPECT_EQ(Probe::hotOwnerBuckets(kDefaultTableBuckets, 96), 512u);
}

TEST(ProbeSizingTest, HotAreaIsAtMostAQuarterOfASmallTable) {
  // --max-tracked-sockets 1024: 256 buckets, a hot area of 64 on any node.
  EXPECT_EQ(Probe::hotOwnerBuckets(256, 2), 64u);
  EXPECT_EQ(Probe::hotOwnerBuckets(256, 64), 64u);
  // A table of one bucket (--max-tracked-sockets 1..4) has no hot area.
  EXPECT_EQ(Probe::hotOwnerBuckets(1, 2), 0u);
}

}  // namespace
}  // namespace cw
