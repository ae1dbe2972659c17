// Reads a pod's live capture rules from inside its network namespace, from
// whichever backend holds them, and explains bypassed connections with the
// rules that were in force when they were opened.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "reporter.h"
#include "rules/explain.h"
#include "rules/model.h"
#include "verdict.h"

namespace cw {

// One read of a pod's nat rules.
struct PodRules {
  // "nftables" (Istio's native tables), "iptables-nft", "iptables-legacy",
  // or "none" (no Istio chains in any backend).
  std::string backend = "none";
  std::optional<rules::RuleSet> v4;  // the IPv4 view (iptables: the v4 table)
  std::optional<rules::RuleSet> v6;  // the IPv6 view (nftables: the same inet rules)
  std::string fingerprint;           // the raw text read, to tell changes apart
  std::string error;                 // why the read failed ("" when it worked)

  const rules::RuleSet* forFamily(bool ipv6) const { return ipv6 ? (v6 ? &*v6 : nullptr) : (v4 ? &*v4 : nullptr); }
  bool hasIstioChains() const { return backend != "none"; }
};

// The raw text of each backend in one netns (I/O, behind an interface so the
// explainer is tested with fixtures).
struct RulesText {
  std::string nft_json;       // libnftables JSON of the whole ruleset
  std::string iptables_nft_v4, iptables_nft_v6;
  std::string iptables_legacy_v4, iptables_legacy_v6;
  std::string error;          // a backend that could not be read
};
using RulesReader = std::function<RulesText(const std::string& netns_path)>;
// How a packet to dst leaves the netns: its output interface and the source
// address routing picks (empty / unset when unknown).
struct Route {
  std::string iface;
  std::optional<Address> src;
};
using RouteResolver = std::function<Route(const std::string& netns_path, const Address& dst)>;

// Reads from the live netns: libnftables (in a thread that joins the netns)
// and iptables-nft-save / iptables-legacy-save -t nat through nsenter.
RulesText readRulesText(const std::string& netns_path);
// `ip route get DST` inside the netns (through nsenter).
Route resolveRoute(const std::string& netns_path, const Address& dst);

// Picks the backend that holds Istio's chains and parses it. Pure.
PodRules parsePodRules(const RulesText& text);

// Per-target history of rule reads and the explanation of bypassed
// connections. Reads are rate-limited: at most one per min_interval_ns per
// target, plus a periodic refresh driven by the agent.
class CaptureExplainer {
 public:
  CaptureExplainer(RulesReader reader, RouteResolver routes, uint16_t redirect_port,
                   uint64_t min_interval_ns);

  void addTarget(uint32_t netns, const std::string& netns_path, uint64_t now_ns);
  void removeTarget(uint32_t netns);

  // Re-reads every target whose last read is older than max_age_ns. Returns
  // (ok, failed) counts of reads done.
  std::pair<int, int> refresh(uint64_t now_ns, uint64_t max_age_ns);

  // Why conn, seen bypassed, was not captured. The reference is valid until
  // the next call of explain, refresh, addTarget or removeTarget (it names
  // an explanation memoised with the rules, not a copy).
  const Why& explain(const Connection& conn, uint64_t now_ns);

  // Called after each read with its result (for metrics and logs).
  std::function<void(uint32_t netns, const PodRules&, bool changed)> on_read;

  static constexpr size_t kHistory = 8;

 private:
  // What explaining one connection against one snapshot found.
  struct Brief {
    bool captured = false;
    std::string rule;
    Why why;  // when not captured: what explain() returns
  };
  // The fields of a rules::Connection the agent varies (protocol is TCP and
  // the mark 0 for every connection it explains).
  struct MemoKey {
    uint32_t uid = 0;
    uint32_t gid = 0;
    Endpoint src;
    Endpoint dst;
    std::string out_interface;
    friend bool operator==(const MemoKey&, const MemoKey&) = default;
  };
  struct MemoKeyHash {
    size_t operator()(const MemoKey& k) const noexcept;
  };
  struct Snapshot {
    uint64_t read_ns = 0;
    std::shared_ptr<const PodRules> rules;
    // summarise() of each family's rules (v4, v6), computed on first use:
    // explaining a connection then only evaluates it.
    std::shared_ptr<const rules::Policy> policy[2];
    // Whether the family's rules match on the source port: if not, it is
    // left out of the memo key (each connection has its own).
    bool uses_source_port[2] = {true, true};
    // Explanations already computed against these rules. A storm of
    // bypassed connections repeats a few (uid, destination) pairs: each
    // costs one hash lookup, not a walk of the rules. Bounded (cleared when
    // full); a new snapshot starts empty.
    std::unordered_map<MemoKey, Brief, MemoKeyHash> memo[2];
  };
  static constexpr size_t kMemoEntries = 4096;
  // rules::explain with the snapshot's summary of that family's rules
  // (which must exist), memoised.
  const Brief& explainWith(Snapshot& s, bool ipv6, const rules::Connection& rc) const;
  struct Target {
    std::string netns_path;
    std::vector<Snapshot> history;  // one entry per change, oldest first
    uint64_t last_read_ns = 0;
    std::map<std::array<uint8_t, 16>, std::string> routes;  // dst -> output interface (bounded)
  };

  bool read(uint32_t netns, Target& t, uint64_t now_ns);
  // explain()'s answer when it is not a memoised one.
  const Why& answer(Why why) { return answer_ = std::move(why); }
  Why answer_;
  // If the last read rules are readable, have Istio's chains and say this
  // connection is not captured, their explanation (what explain() would
  // answer from them): no re-read is needed. Else nullptr.
  const Why* explainedByLastRead(Target& t, const Connection& conn);
  rules::Connection ruleConnection(Target& t, const Connection& conn);

  RulesReader reader_;
  RouteResolver routes_;
  uint16_t redirect_port_;
  uint64_t min_interval_ns_;
  std::map<uint32_t, Target> targets_;
};

}  // namespace cw
