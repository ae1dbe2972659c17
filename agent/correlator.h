// The correlator: pure logic that joins the app's connect events with the
// sidecar's accepts on the redirect port and decides a verdict for each
// outbound connection. No I/O, no clocks, no globals: events and "now" come
// in, decisions go out, so it is unit-tested with synthetic streams.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>

#include "event.h"
#include "verdict.h"

namespace cw {

struct Decision {
  enum class Type : uint8_t {
    Verdict,  // first report of a connection
    Outcome,  // later report: a bypassed connection reported Open has ended
  };
  Type type = Type::Verdict;
  Connection conn;
};

// What conntrack holds for a connection the sidecar accepted: asked by the
// correlator for an accept no app connection claimed (see setRemapLookup).
struct RemapAnswer {
  enum class Status : uint8_t {
    kFound,     // src/dst: the connection's original tuple (the app's end, its destination)
    kNotFound,  // no conntrack entry has that reply tuple
    kError,     // the lookup failed (logged and counted by whoever made it)
  };
  Status status = Status::kNotFound;
  Endpoint src, dst;
};

class Correlator {
 public:
  struct Config {
    uint64_t grace_ns = 200'000'000;  // how long an app connection waits for its accept
    size_t max_pending = 65536;       // undecided app connections; unmatched accepts, each
    size_t max_followed = 65536;      // bypassed connections followed to their end
    size_t max_remap_lookups = 16;    // per expire() call; the rest wait for the next call
  };

  // Finds the conntrack entry whose reply tuple is accept_local -> accept_peer
  // (the sidecar's accepted socket's ends) in netns.
  using RemapLookup = std::function<RemapAnswer(uint32_t netns, const Endpoint& accept_local,
                                                const Endpoint& accept_peer)>;

  struct Stats {
    uint64_t events = 0;            // events accepted by onEvent
    uint64_t duplicates = 0;        // an event already seen for the same socket
    uint64_t orphan_accepts = 0;    // accepts on the redirect port no app connection claimed
    uint64_t pending_evicted = 0;   // pending entries dropped because max_pending was reached
    uint64_t followed_evicted = 0;  // followed bypasses dropped because max_followed was reached
    uint64_t outcomes_lost = 0;     // followed bypasses whose close event never came (socket reused)
    // Unclaimed accepts looked up in conntrack (setRemapLookup), by result:
    uint64_t remap_joined = 0;     // remapped source port: joined to its app connection
    uint64_t remap_unmatched = 0;  // no entry, not remapped, or no app connection waiting for it
    uint64_t remap_errors = 0;     // the lookup failed
  };

  explicit Correlator(Config config);
  // The pending indexes' functors point into the object.
  Correlator(const Correlator&) = delete;
  Correlator& operator=(const Correlator&) = delete;

  // Sockets whose owner is in one of these cgroup v2 ids are the proxy's.
  void addProxyCgroup(uint64_t cgroup_id);
  void removeProxyCgroup(uint64_t cgroup_id);
  const std::unordered_set<uint64_t>& proxyCgroups() const { return proxy_cgroups_; }

  // Forget everything pending for a netns (its target went away); nothing
  // is emitted for it.
  void forgetNetns(uint32_t netns);

  // Two app connections from one address and port (the kernel picks source
  // ports per destination) that are both redirected have the same redirected
  // tuple, so conntrack gives the second one another source port: the
  // sidecar accepts it from a port the app's socket does not have, and the
  // join on the app's end misses. With a lookup set, expire() asks conntrack
  // about each accept no connection claimed (at most max_remap_lookups per
  // call, each accept once) and joins a remapped one to the waiting app
  // connection of its original tuple. Without one, such a connection is
  // decided bypassed and its accept counted as an orphan.
  void setRemapLookup(RemapLookup lookup) { remap_lookup_ = std::move(lookup); }

  // Hands the `out` of the call under way to `spill` each time the call has
  // brought it to `batch` decisions; spill must take them (leave out empty)
  // and not call the correlator.
  // Without one, out grows by all that one call decides: a read of a
  // backlog (every proxy, local or captured record decides a connection),
  // or an expire() after a stall (up to max_pending).
  using Spill = std::function<void(std::vector<Decision>& out)>;
  void setSpill(size_t batch, Spill spill) {
    spill_batch_ = batch;
    spill_ = std::move(spill);
  }

  // Feeds one event; decisions reached are appended to out.
  void onEvent(const ConnEvent& ev, std::vector<Decision>& out);

  // The kernel lost accepts on the redirect port (ring buffer full), as
  // noticed at now_ns: a pending connection established before then that
  // finds no accept is Unknown, not Bypassed.
  void noteLostAccepts(uint64_t now_ns) { last_accept_loss_ns_ = now_ns; }

  // Looks up unclaimed accepts in conntrack (setRemapLookup), then decides
  // as bypassed every pending app connection whose grace window ended at
  // now_ns (CLOCK_MONOTONIC, the clock of ConnEvent::ts_ns), and every one
  // whose close came at or before now_ns while no accept is unclaimed (its
  // accept can no longer come: see onActiveClosed), and drops accepts no
  // connection claimed. Call after draining events and noting lost accepts.
  void expire(uint64_t now_ns, std::vector<Decision>& out);

  size_t pendingConnections() const;
  // When the oldest pending app connection's grace window ends (CLOCK_MONOTONIC
  // ns); 0 when none is pending. The agent wakes up for it.
  uint64_t nextDeadline() const;
  size_t pendingAccepts() const;
  size_t followed() const;
  const Stats& stats() const { return stats_; }

 private:
  struct JoinKey {
    uint32_t netns;
    Endpoint app;
    friend bool operator==(const JoinKey&, const JoinKey&) = default;
  };
  struct JoinKeyHash {
    size_t operator()(const JoinKey& k) const noexcept;
  };
  // Position in time: (CLOCK_MONOTONIC ns, arrival number). Unique, and
  // orders entries oldest first, ties in order of arrival.
  using Stamp = std::pair<uint64_t, uint64_t>;
  struct Followed {
    Connection conn;
    uint64_t seq;  // key in followed_order_
  };

  static JoinKey keyOf(const Connection& c) { return JoinKey{c.netns, c.src}; }
  bool isProxy(uint64_t cgroup_id) const { return proxy_cgroups_.contains(cgroup_id); }
  static bool isLocal(const Endpoint& src, const Endpoint& dst) {
    return dst.addr.isLoopback() || dst.addr == src.addr;
  }
  static Connection connectionOf(const ConnEvent& ev);
  // Appends a decision to out, spilled at the batch (setSpill).
  void decide(std::vector<Decision>& out, Decision::Type type, const Connection& conn) {
    out.push_back(Decision{type, conn});
    if (spill_ && out.size() >= spill_batch_) spill_(out);
  }

  // True for a record seen already; unlinks the entries of an earlier
  // connection on the same (reused) socket otherwise.
  bool isDuplicate(const ConnEvent& ev);
  void onActiveEstablished(const ConnEvent& ev, std::vector<Decision>& out);
  void onActiveFailed(const ConnEvent& ev, std::vector<Decision>& out);
  void onPassiveEstablished(const ConnEvent& ev, std::vector<Decision>& out);
  void onActiveClosed(const ConnEvent& ev, std::vector<Decision>& out);

  // The pending connections live in a pool of slots (no allocation per
  // connection once it has grown), linked oldest established_ns first,
  // equal times in order of arrival. A slot's index is its handle; kNone
  // ends the list.
  using PendingIt = uint32_t;
  static constexpr PendingIt kNone = UINT32_MAX;
  struct PendingSlot {
    Connection conn;
    PendingIt prev = kNone;
    PendingIt next = kNone;
    uint32_t gen = 0;  // changed when the slot is freed: names one connection with its index
  };
  Connection& pendingConn(PendingIt it) { return pending_pool_[it].conn; }

  // The pending indexes hold 4-byte slot indexes and read each one's key
  // from its slot: an index of 16k slots is 64 KiB plus its control bytes,
  // instead of 256-448 KiB with the keys in it, so that after a batch's
  // worth of other work it is still (mostly) in cache; the slot, read to
  // compare, is the one being written or decided anyway (README Performance).
  struct SockId {
    uint64_t id;
  };
  struct BySock {  // hash and equality, slots against slots or sock ids
    const std::vector<PendingSlot>* pool;
    using is_transparent = void;
    uint64_t sockOf(PendingIt s) const { return (*pool)[s].conn.sock_id; }
    size_t operator()(PendingIt s) const noexcept { return (*this)(SockId{sockOf(s)}); }
    size_t operator()(SockId k) const noexcept;
    bool operator()(PendingIt a, PendingIt b) const noexcept { return sockOf(a) == sockOf(b); }
    bool operator()(PendingIt a, SockId k) const noexcept { return sockOf(a) == k.id; }
    bool operator()(SockId k, PendingIt a) const noexcept { return sockOf(a) == k.id; }
  };
  struct ByKey {  // hash and equality, slots against slots or join keys
    const std::vector<PendingSlot>* pool;
    using is_transparent = void;
    JoinKey keyOfSlot(PendingIt s) const { return keyOf((*pool)[s].conn); }
    size_t operator()(PendingIt s) const noexcept { return JoinKeyHash{}(keyOfSlot(s)); }
    size_t operator()(const JoinKey& k) const noexcept { return JoinKeyHash{}(k); }
    bool operator()(PendingIt a, PendingIt b) const noexcept { return keyOfSlot(a) == keyOfSlot(b); }
    bool operator()(PendingIt a, const JoinKey& k) const noexcept { return keyOfSlot(a) == k; }
    bool operator()(const JoinKey& k, PendingIt a) const noexcept { return keyOfSlot(a) == k; }
  };
  // Indexes slot `it` in `index`, replacing the slot of an equal key.
  template <typename Index>
  static void indexSlot(Index& index, PendingIt it);
  void addPending(const Connection& conn, std::vector<Decision>& out);
  // Removes a pending entry and its index entries; returns the next one.
  PendingIt erasePending(PendingIt it);
  void addAccept(const JoinKey& key, const Endpoint& local, uint64_t ts_ns);
  void eraseAccept(const JoinKey& key);
  // Decides pending connection `it`, whose accept did not come, at now_ns;
  // returns the next pending one.
  PendingIt decideUnclaimed(PendingIt it, uint64_t now_ns, std::vector<Decision>& out);
  // The remap lookups of expire(); decisions for the accepts joined.
  void lookUpRemaps(std::vector<Decision>& out);
  // The pending connection with this original tuple, or kNone.
  PendingIt findPending(uint32_t netns, const Endpoint& src, const Endpoint& dst);
  void follow(const Connection& conn);

  Config config_;
  Stats stats_;
  uint64_t seq_ = 0;  // arrival counter for Stamp
  uint64_t last_accept_loss_ns_ = 0;  // 0: no accept was ever lost
  std::unordered_set<uint64_t> proxy_cgroups_;
  // Undecided app connections, oldest (established_ns) first, so that
  // expiry and eviction take from the front. A slot pool and a linked list
  // instead of a node-based ordered map: a bypassed storm spent 20% of the
  // agent's CPU on the map's node allocations, rebalancing and cold node
  // walks at expiry (README Performance).
  std::vector<PendingSlot> pending_pool_;
  std::vector<PendingIt> pending_free_;  // free slots, most recently freed last
  PendingIt pending_head_ = kNone;       // oldest
  PendingIt pending_tail_ = kNone;       // newest
  size_t pending_count_ = 0;
  // The pending indexes are flat (open addressing) hash tables of small
  // entries: a lookup costs one or two cache lines instead of a walk of
  // separately allocated nodes, which the agent pays for in cache misses
  // after every batch (its caches are cold then on a busy node; README
  // Performance).
  // Pending sockets still open, by sock_id. A close removes the socket from
  // here (its id may be reused by the kernel at once) but the connection
  // stays pending until its accept or the end of its grace window.
  absl::flat_hash_set<PendingIt, BySock, BySock> pending_by_sock_{0, BySock{&pending_pool_},
                                                                  BySock{&pending_pool_}};
  // Pending connections by join key.
  absl::flat_hash_set<PendingIt, ByKey, ByKey> pending_by_key_{0, ByKey{&pending_pool_},
                                                               ByKey{&pending_pool_}};
  // Pending connections whose app socket closed, in order of their close:
  // slot, its generation then, and the close's time. expire() decides them
  // without waiting for their grace window to end (onActiveClosed).
  struct ClosedPending {
    PendingIt it;
    uint32_t gen;
    uint64_t closed_ns;
  };
  std::vector<ClosedPending> closed_pending_;
  // Accepts seen before their app connection (or whose app end conntrack
  // remapped): join key -> when, and the sidecar's end; the same oldest first.
  struct Accept {
    Stamp stamp;
    Endpoint local;
  };
  absl::flat_hash_map<JoinKey, Accept, JoinKeyHash> accepts_;
  std::map<Stamp, JoinKey> accepts_by_time_;
  // Accepts not looked up in conntrack yet, in arrival order (entries of
  // accepts claimed or dropped since are skipped); only with a lookup set.
  RemapLookup remap_lookup_;
  Spill spill_;
  size_t spill_batch_ = 0;
  std::deque<std::pair<Stamp, JoinKey>> remap_queue_;
  // Bypassed connections reported Open, waiting for their close, by sock_id;
  // followed_order_ (seq -> sock_id) finds the oldest to evict. Node-based:
  // a flat table would hold its entries (a whole Connection each) in twice
  // as many slots, 20 MiB more at the 65,536 bound (bench, 100k bypassed
  // held open), for connections that are rarely looked up.
  std::unordered_map<uint64_t, Followed> followed_;
  std::map<uint64_t, uint64_t> followed_order_;
};

}  // namespace cw
