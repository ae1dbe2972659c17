// Walks the nat table's locally-generated path (the OUTPUT hook) for one
// connection and says what happens to its first packet.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "rules/model.h"

namespace cw::rules {

// The connection whose SYN is evaluated.
struct Connection {
  Protocol protocol = Protocol::Tcp;
  uint32_t uid = 0;
  uint32_t gid = 0;
  // Source as chosen by routing; an unspecified address or port 0 means
  // unknown (matches on it are then unknown).
  Endpoint src;
  Endpoint dst;  // as the application asked for it (pre-NAT)
  // Output interface: "lo" when dst is loopback or one of the pod's own
  // addresses, else the routed interface (e.g. "eth0"). Empty: unknown.
  std::string out_interface = "eth0";
  // Packet mark when the packet reaches nat OUTPUT (mangle OUTPUT runs
  // first). 0 unless the application or mangle rules set one.
  uint32_t mark = 0;
};

enum class Verdict {
  Redirect,  // to the local port `port`
  Dnat,      // to `destination`
  Accept,    // not translated: leaves for its original destination
  Drop,      // dropped (or rejected)
  Unknown,   // the rules could not be evaluated for this connection
};
std::string_view verdictName(Verdict verdict);  // "redirect", "dnat", ...

struct Decision {
  Verdict verdict = Verdict::Unknown;
  uint16_t port = 0;     // Redirect: the local port
  Endpoint destination;  // Dnat

  std::string str() const;  // "redirect to :15001", "dnat to 1.2.3.4:80", "accept", ...
};

struct Evaluation {
  Decision decision;
  // Every rule visited that matched, in traversal order (jumps included).
  std::vector<Rule> path;
  // The rule whose verdict ended the traversal: the REDIRECT, or the RETURN /
  // ACCEPT after which nothing else matched. Empty when the packet fell off
  // the end of the chains to the policy.
  std::optional<Rule> deciding;
  // Set when the decision is Unknown because of a rule: the first rule on the
  // path whose outcome could not be determined.
  std::optional<Rule> not_understood;
  // Chains entered, as "table chain", in order (base chains included).
  std::vector<std::string> chains;
  // Why the decision is Unknown when no rule is to blame (no rules for the
  // family, a jump loop), or how the traversal ended ("policy accept").
  std::string note;

  bool enteredChain(std::string_view chain) const;  // by chain name, any table
};

// Evaluates connections against one RuleSet. Holds a reference: the RuleSet
// must outlive the Evaluator. Pure: no I/O, deterministic, bounded (jump
// depth 64, a budget of rule visits), never throws.
class Evaluator {
 public:
  explicit Evaluator(const RuleSet& rules);

  Evaluation evaluate(const Connection& conn) const;

  static constexpr int kMaxJumpDepth = 64;
  static constexpr size_t kMaxRuleVisits = 1000000;
  static constexpr size_t kMaxPathLength = 4096;

 private:
  const RuleSet& rules_;
};

// Convenience: Evaluator(rules).evaluate(conn).
Evaluation evaluate(const RuleSet& rules, const Connection& conn);

}  // namespace cw::rules
