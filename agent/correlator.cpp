#include "correlator.h"

#include <algorithm>
#include <cstring>

namespace cw {

namespace {

// splitmix64's finaliser: every input bit affects every output bit.
constexpr uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

}  // namespace

size_t Correlator::JoinKeyHash::operator()(const JoinKey& k) const noexcept {
  uint64_t hi;
  uint64_t lo;
  std::memcpy(&hi, k.app.addr.bytes.data(), sizeof hi);
  std::memcpy(&lo, k.app.addr.bytes.data() + 8, sizeof lo);
  const uint64_t netns_port = (uint64_t{k.netns} << 16) | k.app.port;
  return static_cast<size_t>(mix(hi ^ mix(lo ^ mix(netns_port))));
}

size_t Correlator::BySock::operator()(SockId k) const noexcept { return static_cast<size_t>(mix(k.id)); }

template <typename Index>
void Correlator::indexSlot(Index& index, PendingIt it) {
  if (auto [at, inserted] = index.insert(it); !inserted) {
    index.erase(at);
    index.insert(it);
  }
}

Correlator::Correlator(Config config) : config_(config) {}

void Correlator::addProxyCgroup(uint64_t cgroup_id) { proxy_cgroups_.insert(cgroup_id); }

void Correlator::removeProxyCgroup(uint64_t cgroup_id) { proxy_cgroups_.erase(cgroup_id); }

size_t Correlator::pendingConnections() const { return pending_count_; }

uint64_t Correlator::nextDeadline() const {
  return pending_head_ == kNone ? 0 : pending_pool_[pending_head_].conn.established_ns + config_.grace_ns;
}

size_t Correlator::pendingAccepts() const { return accepts_.size(); }

size_t Correlator::followed() const { return followed_.size(); }

Connection Correlator::connectionOf(const ConnEvent& ev) {
  Connection c;
  c.flags = ev.flags;
  c.netns = ev.netns;
  c.pid = ev.pid;
  c.uid = ev.uid;
  c.gid = ev.gid;
  c.cgroup_id = ev.cgroup_id;
  c.sock_id = ev.sock_id;
  c.established_ns = ev.ts_ns;
  c.src = ev.src;
  c.dst = ev.dst;
  c.comm = ev.comm;
  return c;
}

void Correlator::onEvent(const ConnEvent& ev, std::vector<Decision>& out) {
  ++stats_.events;
  switch (ev.kind) {
    case EventKind::ActiveEstablished:
      onActiveEstablished(ev, out);
      return;
    case EventKind::ActiveFailed:
      onActiveFailed(ev, out);
      return;
    case EventKind::PassiveEstablished:
      onPassiveEstablished(ev, out);
      return;
    case EventKind::ActiveClosed:
      onActiveClosed(ev, out);
      return;
  }
}

bool Correlator::isDuplicate(const ConnEvent& ev) {
  // A socket cannot be established (or fail) twice: a known socket with
  // another time is a new connection on a reused socket whose close record
  // was lost. Only the very same record is a duplicate.
  if (auto f = followed_.find(ev.sock_id); f != followed_.end()) {
    if (f->second.conn.established_ns == ev.ts_ns) return true;
    ++stats_.outcomes_lost;
    followed_order_.erase(f->second.seq);
    followed_.erase(f);
  }
  if (auto p = pending_by_sock_.find(SockId{ev.sock_id}); p != pending_by_sock_.end()) {
    if (pendingConn(*p).established_ns == ev.ts_ns) return true;
    // The earlier connection stays pending (its accept may still come); only
    // its socket index goes, to the new connection.
    pending_by_sock_.erase(p);
  }
  return false;
}

void Correlator::onActiveEstablished(const ConnEvent& ev, std::vector<Decision>& out) {
  if (isDuplicate(ev)) {
    ++stats_.duplicates;
    return;
  }
  Connection conn = connectionOf(ev);

  // The sidecar's accept arrived first (events of different CPUs reorder).
  // One older than the grace window is an orphan whose app port was reused,
  // not this connection's.
  if (auto it = accepts_.find(keyOf(conn)); it != accepts_.end()) {
    const uint64_t accept_ns = it->second.stamp.first;
    accepts_by_time_.erase(it->second.stamp);
    accepts_.erase(it);
    if (accept_ns <= ev.ts_ns && ev.ts_ns - accept_ns >= config_.grace_ns) {
      ++stats_.orphan_accepts;
    } else {
      conn.verdict = Verdict::Captured;
      conn.decided_ns = ev.ts_ns;
      decide(out, Decision::Type::Verdict, conn);
      return;
    }
  }
  if (isProxy(conn.cgroup_id)) {
    conn.verdict = Verdict::Proxy;
  } else if (isLocal(conn.src, conn.dst)) {
    conn.verdict = Verdict::Local;
  } else {
    addPending(conn, out);
    return;
  }
  conn.decided_ns = ev.ts_ns;
  decide(out, Decision::Type::Verdict, conn);
}

void Correlator::onActiveFailed(const ConnEvent& ev, std::vector<Decision>& out) {
  if (isDuplicate(ev)) {
    ++stats_.duplicates;
    return;
  }
  Connection conn = connectionOf(ev);
  conn.verdict = isProxy(conn.cgroup_id)       ? Verdict::Proxy
                 : isLocal(conn.src, conn.dst) ? Verdict::Local
                                               : Verdict::Bypassed;
  conn.outcome = (ev.flags & CW_F_RESET_RECEIVED) != 0 ? Outcome::Refused : Outcome::Failed;
  conn.decided_ns = ev.ts_ns;
  decide(out, Decision::Type::Verdict, conn);
}

void Correlator::onPassiveEstablished(const ConnEvent& ev, std::vector<Decision>& out) {
  const JoinKey key{ev.netns, ev.dst};  // the accepted socket's peer is the app's end
  if (auto k = pending_by_key_.find(key); k != pending_by_key_.end()) {
    const PendingIt it = *k;
    Connection conn = pendingConn(it);
    conn.verdict = Verdict::Captured;
    conn.decided_ns = ev.ts_ns;
    erasePending(it);
    decide(out, Decision::Type::Verdict, conn);
    return;
  }
  addAccept(key, ev.src, ev.ts_ns);
}

void Correlator::onActiveClosed(const ConnEvent& ev, std::vector<Decision>& out) {
  if (auto s = pending_by_sock_.find(SockId{ev.sock_id}); s != pending_by_sock_.end()) {
    // Still waiting for its accept: keep the outcome for the verdict. The
    // socket is gone, so its id no longer names this connection.
    //
    // Its accept cannot come any more: the sidecar's socket becomes
    // ESTABLISHED (its accept record is made) before it sends anything, and
    // the app's socket closes only on something the sidecar sent (the ACK
    // of its FIN, or the sidecar's FIN or reset), or by a reset of its own,
    // after which no accept is made. Records come in time order, so an
    // accept of this connection would have come before this close. So
    // expire() decides it without waiting for the end of its grace window,
    // while it is still in the cache (a bypassed storm's connections last a
    // millisecond; waited for, each was decided 200 ms later from memory
    // the storm had evicted: README Performance), unless an accept is
    // unclaimed (conntrack may have remapped its port: lookUpRemaps).
    const PendingIt it = *s;
    pendingConn(it).outcome = outcomeFromClose(ev.flags, ev.bytes_received);
    pending_by_sock_.erase(s);
    closed_pending_.push_back(ClosedPending{it, pending_pool_[it].gen, ev.ts_ns});
    return;
  }
  if (auto f = followed_.find(ev.sock_id); f != followed_.end()) {
    Connection conn = f->second.conn;
    conn.outcome = outcomeFromClose(ev.flags, ev.bytes_received);
    followed_order_.erase(f->second.seq);
    followed_.erase(f);
    decide(out, Decision::Type::Outcome, conn);
  }
  // Otherwise a connection already reported closed (captured, proxy, local,
  // or evicted): nothing to report.
}

void Correlator::expire(uint64_t now_ns, std::vector<Decision>& out) {
  if (remap_lookup_) lookUpRemaps(out);

  // Closed without their accept (onActiveClosed). While an accept is
  // unclaimed they wait for their grace window like the others.
  if (accepts_.empty()) {
    size_t kept = 0;
    for (const ClosedPending& c : closed_pending_) {
      if (pending_pool_[c.it].gen != c.gen) continue;  // decided or dropped since
      if (c.closed_ns > now_ns) {
        closed_pending_[kept++] = c;  // a clock ahead of now: at a later call
        continue;
      }
      decideUnclaimed(c.it, now_ns, out);
    }
    closed_pending_.resize(kept);
  } else {
    closed_pending_.clear();
  }

  if (now_ns < config_.grace_ns) return;
  const uint64_t cutoff = now_ns - config_.grace_ns;  // expired: ts + grace <= now
  for (PendingIt it = pending_head_; it != kNone && pendingConn(it).established_ns <= cutoff;) {
    it = decideUnclaimed(it, now_ns, out);
  }

  for (auto it = accepts_by_time_.begin();
       it != accepts_by_time_.end() && it->first.first <= cutoff;) {
    accepts_.erase(it->second);
    it = accepts_by_time_.erase(it);
    ++stats_.orphan_accepts;
  }
}

Correlator::PendingIt Correlator::decideUnclaimed(PendingIt it, uint64_t now_ns,
                                                  std::vector<Decision>& out) {
  Connection conn = pendingConn(it);
  // Its accept may be among the lost ones: never guess it a gap (or captured).
  const bool maybe_lost = last_accept_loss_ns_ != 0 && last_accept_loss_ns_ >= conn.established_ns;
  conn.verdict = maybe_lost ? Verdict::Unknown : Verdict::Bypassed;
  conn.decided_ns = now_ns;
  const PendingIt next = erasePending(it);
  decide(out, Decision::Type::Verdict, conn);
  if (conn.verdict == Verdict::Bypassed && conn.outcome == Outcome::Open) follow(conn);
  return next;
}

void Correlator::forgetNetns(uint32_t netns) {
  for (PendingIt it = pending_head_; it != kNone;) {
    it = pendingConn(it).netns == netns ? erasePending(it) : pending_pool_[it].next;
  }
  for (auto it = accepts_by_time_.begin(); it != accepts_by_time_.end();) {
    if (it->second.netns == netns) {
      accepts_.erase(it->second);
      it = accepts_by_time_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = followed_.begin(); it != followed_.end();) {
    if (it->second.conn.netns == netns) {
      followed_order_.erase(it->second.seq);
      it = followed_.erase(it);
    } else {
      ++it;
    }
  }
}

void Correlator::addPending(const Connection& conn, std::vector<Decision>& out) {
  if (config_.max_pending == 0) {
    ++stats_.pending_evicted;
    return;
  }
  // At the bound with the oldest one's grace window over by this record's
  // time: a backlog came in one read (the agent was not scheduled for a
  // while, and the records it then read were handed over before its next
  // expire()). Records come in time order, so expire() may run at this
  // record's time: the connections whose window is over are decided, not
  // dropped unseen.
  if (pending_count_ >= config_.max_pending && conn.established_ns >= config_.grace_ns &&
      pendingConn(pending_head_).established_ns <= conn.established_ns - config_.grace_ns) {
    expire(conn.established_ns, out);
  }
  if (pending_count_ >= config_.max_pending) {
    // Drop the oldest without a verdict: its accept may still have come.
    erasePending(pending_head_);
    ++stats_.pending_evicted;
  }
  PendingIt it;
  if (!pending_free_.empty()) {
    it = pending_free_.back();
    pending_free_.pop_back();
  } else {
    it = static_cast<PendingIt>(pending_pool_.size());
    pending_pool_.emplace_back();
  }
  PendingSlot& slot = pending_pool_[it];
  slot.conn = conn;
  // Oldest first, equal times in order of arrival. Records come in time order
  // (the reorder buffer), so this is the tail but for a late record, which
  // walks back to its place.
  PendingIt after = pending_tail_;
  while (after != kNone && pendingConn(after).established_ns > conn.established_ns) {
    after = pending_pool_[after].prev;
  }
  slot.prev = after;
  slot.next = after == kNone ? pending_head_ : pending_pool_[after].next;
  (slot.prev == kNone ? pending_head_ : pending_pool_[slot.prev].next) = it;
  (slot.next == kNone ? pending_tail_ : pending_pool_[slot.next].prev) = it;
  ++pending_count_;
  indexSlot(pending_by_sock_, it);
  // Takes the key over from an older pending connection of the same app
  // endpoint (the port was reused after a close): the next accept is this
  // one's, the older one is decided at its expiry.
  indexSlot(pending_by_key_, it);
}

Correlator::PendingIt Correlator::erasePending(PendingIt it) {
  PendingSlot& slot = pending_pool_[it];
  const Connection& conn = slot.conn;
  if (auto s = pending_by_sock_.find(SockId{conn.sock_id}); s != pending_by_sock_.end() && *s == it) {
    pending_by_sock_.erase(s);
  }
  if (auto k = pending_by_key_.find(keyOf(conn)); k != pending_by_key_.end() && *k == it) {
    pending_by_key_.erase(k);
  }
  const PendingIt next = slot.next;
  (slot.prev == kNone ? pending_head_ : pending_pool_[slot.prev].next) = next;
  (next == kNone ? pending_tail_ : pending_pool_[next].prev) = slot.prev;
  slot.prev = slot.next = kNone;
  ++slot.gen;
  pending_free_.push_back(it);
  --pending_count_;
  return next;
}

void Correlator::lookUpRemaps(std::vector<Decision>& out) {
  size_t looked_up = 0;
  while (!remap_queue_.empty() && looked_up < config_.max_remap_lookups) {
    const auto [stamp, key] = remap_queue_.front();
    remap_queue_.pop_front();
    auto it = accepts_.find(key);
    if (it == accepts_.end() || it->second.stamp != stamp) continue;  // claimed or dropped since
    ++looked_up;
    const RemapAnswer answer = remap_lookup_(key.netns, it->second.local, key.app);
    if (answer.status == RemapAnswer::Status::kError) {
      ++stats_.remap_errors;
      continue;
    }
    // Found with the accept's own port: not remapped, an ordinary orphan.
    const PendingIt p = answer.status == RemapAnswer::Status::kFound && answer.src != key.app
                            ? findPending(key.netns, answer.src, answer.dst)
                            : kNone;
    if (p == kNone) {
      ++stats_.remap_unmatched;
      continue;
    }
    ++stats_.remap_joined;
    Connection conn = pendingConn(p);
    conn.verdict = Verdict::Captured;
    conn.decided_ns = stamp.first;
    erasePending(p);
    eraseAccept(key);
    decide(out, Decision::Type::Verdict, conn);
  }
  // Entries of accepts claimed since are only skipped above: drop them in
  // bulk before they outnumber the accepts they could name.
  if (remap_queue_.size() > 2 * std::max<size_t>(config_.max_pending, 1)) {
    std::erase_if(remap_queue_, [this](const std::pair<Stamp, JoinKey>& e) {
      auto it = accepts_.find(e.second);
      return it == accepts_.end() || it->second.stamp != e.first;
    });
  }
}

Correlator::PendingIt Correlator::findPending(uint32_t netns, const Endpoint& src,
                                              const Endpoint& dst) {
  if (auto k = pending_by_key_.find(JoinKey{netns, src}); k != pending_by_key_.end()) {
    if (pendingConn(*k).dst == dst) return *k;
  }
  // Another pending connection of the same app end took the index over (its
  // port was reused): rare enough for a walk.
  for (PendingIt it = pending_head_; it != kNone; it = pending_pool_[it].next) {
    const Connection& c = pendingConn(it);
    if (c.netns == netns && c.src == src && c.dst == dst) return it;
  }
  return kNone;
}

void Correlator::eraseAccept(const JoinKey& key) {
  if (auto it = accepts_.find(key); it != accepts_.end()) {
    accepts_by_time_.erase(it->second.stamp);
    accepts_.erase(it);
  }
}

void Correlator::addAccept(const JoinKey& key, const Endpoint& local, uint64_t ts_ns) {
  const Stamp stamp{ts_ns, seq_++};
  if (remap_lookup_) remap_queue_.emplace_back(stamp, key);
  if (auto it = accepts_.find(key); it != accepts_.end()) {
    ++stats_.duplicates;  // the later accept replaces the earlier one
    accepts_by_time_.erase(it->second.stamp);
    it->second = Accept{stamp, local};
    accepts_by_time_.emplace(stamp, key);
    return;
  }
  if (config_.max_pending == 0) {
    ++stats_.pending_evicted;
    return;
  }
  if (accepts_.size() >= config_.max_pending) {
    auto oldest = accepts_by_time_.begin();
    accepts_.erase(oldest->second);
    accepts_by_time_.erase(oldest);
    ++stats_.pending_evicted;
  }
  accepts_.emplace(key, Accept{stamp, local});
  accepts_by_time_.emplace_hint(accepts_by_time_.end(), stamp, key);
}

void Correlator::follow(const Connection& conn) {
  if (config_.max_followed == 0) {
    ++stats_.followed_evicted;
    return;
  }
  if (followed_.size() >= config_.max_followed) {
    auto oldest = followed_order_.begin();
    followed_.erase(oldest->second);
    followed_order_.erase(oldest);
    ++stats_.followed_evicted;
  }
  const uint64_t seq = seq_++;
  if (followed_.try_emplace(conn.sock_id, Followed{conn, seq}).second) {
    followed_order_.emplace_hint(followed_order_.end(), seq, conn.sock_id);
  }
}

}  // namespace cw
