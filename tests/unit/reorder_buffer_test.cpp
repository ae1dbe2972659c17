// ReorderBuffer: records read ring after ring come out in timestamp order,
// and none is handed out before the records stamped earlier can have been read.
#include "reorder_buffer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace cw {
namespace {

// A record: an 8-byte timestamp, then a tag.
std::vector<uint8_t> rec(uint64_t ts, const std::string& tag) {
  std::vector<uint8_t> r(sizeof ts + tag.size());
  std::memcpy(r.data(), &ts, sizeof ts);
  std::memcpy(r.data() + sizeof ts, tag.data(), tag.size());
  return r;
}

std::string tagOf(std::span<const uint8_t> r) {
  if (r.size() < 8) return "short:" + std::to_string(r.size());
  return std::string(reinterpret_cast<const char*>(r.data()) + 8, r.size() - 8);
}

struct Collect {
  std::vector<std::string> tags;
  ReorderBuffer::Sink sink() {
    return [this](std::span<const uint8_t> r) { tags.push_back(tagOf(r)); };
  }
};

TEST(ReorderBufferTest, RingsReadOneAfterAnotherComeOutInTimeOrder) {
  // CPU 0's ring, then CPU 1's: a socket's connect() on CPU 0 at 100 and its
  // close on CPU 1 at 150 must not be overtaken by CPU 1's 120.
  ReorderBuffer b;
  for (auto [ts, tag] : {std::pair{100, "a-established"}, {150, "b-accept"}, {300, "a-closed"}}) {
    const auto r = rec(ts, tag);
    b.add(r);
  }
  for (auto [ts, tag] : {std::pair{120, "c-established"}, {200, "c-closed"}}) {
    const auto r = rec(ts, tag);
    b.add(r);
  }
  Collect out;
  EXPECT_EQ(b.releaseAll(out.sink()), 5u);
  EXPECT_EQ(out.tags, (std::vector<std::string>{"a-established", "c-established", "b-accept",
                                                 "c-closed", "a-closed"}));
  EXPECT_EQ(b.held(), 0u);
}

TEST(ReorderBufferTest, HoldsRecordsStampedAfterTheSettledTime) {
  ReorderBuffer b;
  for (auto [ts, tag] : {std::pair{300, "late"}, {100, "early"}, {199, "edge"}, {200, "at"}}) {
    const auto r = rec(ts, tag);
    b.add(r);
  }
  Collect out;
  EXPECT_EQ(b.release(200, out.sink()), 2u);  // strictly before 200
  EXPECT_EQ(out.tags, (std::vector<std::string>{"early", "edge"}));
  EXPECT_EQ(b.held(), 2u);

  // A record read later but stamped before the held ones still comes first.
  const auto r = rec(250, "read-later");
  b.add(r);
  EXPECT_EQ(b.release(1000, out.sink()), 3u);
  EXPECT_EQ(out.tags, (std::vector<std::string>{"early", "edge", "at", "read-later", "late"}));
  EXPECT_EQ(b.held(), 0u);
}

TEST(ReorderBufferTest, EqualStampsKeepTheOrderTheyWereAdded) {
  ReorderBuffer b;
  for (const char* tag : {"first", "second", "third"}) {
    const auto r = rec(500, tag);
    b.add(r);
  }
  const auto r = rec(400, "older");
  b.add(r);
  Collect out;
  b.releaseAll(out.sink());
  EXPECT_EQ(out.tags, (std::vector<std::string>{"older", "first", "second", "third"}));
}

TEST(ReorderBufferTest, KeptRecordsKeepTheirBytes) {
  // Held records are compacted between releases: their bytes must survive.
  ReorderBuffer b;
  for (int i = 0; i < 100; ++i) {
    const auto r = rec(static_cast<uint64_t>(1000 - i), "r" + std::to_string(1000 - i));
    b.add(r);
  }
  Collect out;
  EXPECT_EQ(b.release(951, out.sink()), 50u);
  EXPECT_EQ(out.tags.front(), "r901");
  EXPECT_EQ(out.tags.back(), "r950");
  out.tags.clear();
  EXPECT_EQ(b.releaseAll(out.sink()), 50u);
  EXPECT_EQ(out.tags.front(), "r951");
  EXPECT_EQ(out.tags.back(), "r1000");
}

TEST(ReorderBufferTest, ShortRecordsAreHandedOutFirstNotLost) {
  ReorderBuffer b;
  const auto r = rec(10, "ok");
  b.add(r);
  const std::vector<uint8_t> short_record = {1, 2, 3};
  b.add(short_record);
  Collect out;
  EXPECT_EQ(b.release(5, out.sink()), 1u);
  EXPECT_EQ(out.tags, (std::vector<std::string>{"short:3"}));
  EXPECT_EQ(b.held(), 1u);
}

TEST(ReorderBufferTest, ReadsOfManyRingsComeOutAsAStableSortWould) {
  // Each read takes 1 to 7 rings in turn, each ring in time order, with
  // stamps that collide across rings, and releases up to a point: what comes
  // out, over all the reads, is the records in time order, equal stamps in
  // the order they were added (a stable sort of everything added).
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    ReorderBuffer b;
    Collect out;
    std::vector<std::pair<uint64_t, std::string>> added;
    uint64_t t0 = 0;
    int n = 0;
    for (int read = 0; read < 6; ++read) {
      const int rings = 1 + static_cast<int>(rng() % 7);
      for (int ring = 0; ring < rings; ++ring) {
        uint64_t ts = t0 + rng() % 4;
        for (int k = static_cast<int>(rng() % 20); k > 0; --k) {
          ts += rng() % 3;  // in order within a ring, equal stamps common
          const std::string tag = "r" + std::to_string(n++);
          added.emplace_back(ts, tag);
          b.add(rec(ts, tag));
        }
      }
      t0 += 30;
      b.release(t0 - static_cast<uint64_t>(rng() % 40), out.sink());
    }
    b.releaseAll(out.sink());
    std::stable_sort(added.begin(), added.end(),
                     [](const auto& a, const auto& c) { return a.first < c.first; });
    std::vector<std::string> want;
    for (const auto& [ts, tag] : added) want.push_back(tag);
    ASSERT_EQ(out.tags, want) << "trial " << trial;
  }
}

}  // namespace
}  // namespace cw
