#include "rules/evaluator.h"

#include <algorithm>

namespace cw::rules {

namespace {

enum class Tri { False, True, Unknown };

Tri fromBool(bool b) { return b ? Tri::True : Tri::False; }

Tri applyNegation(Tri t, bool negated) {
  if (!negated || t == Tri::Unknown) return t;
  return t == Tri::True ? Tri::False : Tri::True;
}

bool contains(const std::vector<std::string>& names, std::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// iptables: a trailing '+' matches any suffix; nftables: a trailing '*'
// (unless escaped as "\*").
bool interfaceMatches(const std::string& pattern, const std::string& name, Backend backend) {
  const char wildcard = backend == Backend::Iptables ? '+' : '*';
  if (!pattern.empty() && pattern.back() == wildcard) {
    if (backend == Backend::Nftables && pattern.size() >= 2 &&
        pattern[pattern.size() - 2] == '\\') {
      return pattern.substr(0, pattern.size() - 2) + "*" == name;
    }
    return name.starts_with(std::string_view(pattern).substr(0, pattern.size() - 1));
  }
  return pattern == name;
}

// What a match sees of the packet.
struct Packet {
  const Connection& conn;
  Family family;  // Ipv4 or Ipv6
  uint32_t mark;
};

Tri evaluateMatch(const Match& m, const Packet& p, Backend backend) {
  // Implicit dependencies fail before negation applies: `ip daddr != X`
  // does not match an IPv6 packet.
  if (m.family && *m.family != Family::Inet && *m.family != p.family) return Tri::False;
  if (!m.l4.empty() && m.l4 != protocolName(p.conn.protocol)) return Tri::False;
  if (m.unresolved) return Tri::Unknown;

  Tri t = Tri::Unknown;
  switch (m.kind) {
    case MatchKind::Protocol:
      t = fromBool(contains(m.names, protocolName(p.conn.protocol)) || contains(m.names, "all"));
      break;
    case MatchKind::Family:
      t = fromBool(contains(m.names, p.family == Family::Ipv4 ? "ipv4" : "ipv6"));
      break;
    case MatchKind::SourceAddress:
    case MatchKind::DestinationAddress: {
      const Address& a = m.kind == MatchKind::SourceAddress ? p.conn.src.addr : p.conn.dst.addr;
      if (m.kind == MatchKind::SourceAddress && a.isUnspecified()) return Tri::Unknown;
      t = fromBool(std::any_of(m.cidrs.begin(), m.cidrs.end(),
                               [&](const Cidr& c) { return c.contains(a); }));
      break;
    }
    case MatchKind::InInterface:
      // A locally generated packet has no input interface.
      t = fromBool(std::any_of(m.names.begin(), m.names.end(), [&](const std::string& n) {
        return interfaceMatches(n, "", backend);
      }));
      break;
    case MatchKind::OutInterface:
      if (p.conn.out_interface.empty()) return Tri::Unknown;
      t = fromBool(std::any_of(m.names.begin(), m.names.end(), [&](const std::string& n) {
        return interfaceMatches(n, p.conn.out_interface, backend);
      }));
      break;
    case MatchKind::SourcePort:
    case MatchKind::DestinationPort: {
      const uint16_t port = m.kind == MatchKind::SourcePort ? p.conn.src.port : p.conn.dst.port;
      if (m.kind == MatchKind::SourcePort && port == 0) return Tri::Unknown;
      t = fromBool(std::any_of(m.ports.begin(), m.ports.end(),
                               [&](const PortRange& r) { return r.contains(port); }));
      break;
    }
    case MatchKind::OwnerUid:
    case MatchKind::OwnerGid: {
      const uint32_t id = m.kind == MatchKind::OwnerUid ? p.conn.uid : p.conn.gid;
      bool any_name = false;
      bool hit = false;
      for (const OwnerId& o : m.ids) {
        if (o.isName()) {
          any_name = true;
        } else if (id >= o.first && id <= o.last) {
          hit = true;
        }
      }
      // An unresolved name might be this very id.
      t = hit ? Tri::True : any_name ? Tri::Unknown : Tri::False;
      break;
    }
    case MatchKind::SocketExists:
      t = Tri::True;  // a locally generated connection has its socket
      break;
    case MatchKind::Mark:
      t = fromBool(std::any_of(m.values.begin(), m.values.end(),
                               [&](uint32_t v) { return (p.mark & m.mask) == v; }));
      break;
    case MatchKind::ConnState:
      // nat OUTPUT sees only the first packet of a connection.
      t = fromBool(contains(m.names, "new"));
      break;
    case MatchKind::Unsupported:
      return Tri::Unknown;
  }
  return applyNegation(t, m.negated);
}

// All matches must hold. A definite mismatch decides even when another
// match is unknown, unless the rule's structure itself is not understood.
Tri evaluateRule(const Rule& rule, const Packet& p) {
  if (rule.opaque) return Tri::Unknown;
  bool unknown = false;
  for (const Match& m : rule.matches) {
    const Tri t = evaluateMatch(m, p, rule.backend);
    if (t == Tri::False) return Tri::False;
    if (t == Tri::Unknown) unknown = true;
  }
  return unknown ? Tri::Unknown : Tri::True;
}

std::string unknownMatchesOf(const Rule& rule, const Packet& p) {
  if (rule.opaque) return "the rule's options are not fully understood";
  std::string out;
  for (const Match& m : rule.matches) {
    if (evaluateMatch(m, p, rule.backend) != Tri::Unknown) continue;
    if (!out.empty()) out += ", ";
    out += "`" + m.text + "`";
  }
  return "cannot tell whether " + out + " holds for this connection";
}

struct BaseChain {
  const Table* table;
  const Chain* chain;
};

class Walk {
 public:
  Walk(const Connection& conn, Family family, Evaluation& ev)
      : conn_(conn), family_(family), mark_(conn.mark), ev_(ev) {}

  // Traverses one base chain. Returns true when the decision is final
  // (translated, dropped, unknown); false when the packet leaves the chain
  // accepted and the next base chain at this hook gets it.
  bool run(const BaseChain& base) {
    struct Frame {
      const Chain* chain;
      size_t next;
    };
    std::vector<Frame> stack{{base.chain, 0}};
    enter(*base.table, *base.chain);
    while (!stack.empty()) {
      Frame& frame = stack.back();
      if (frame.next >= frame.chain->rules.size()) {
        if (stack.size() == 1) return policy(*base.chain);  // fell off the base chain
        stack.pop_back();                                   // implicit return
        continue;
      }
      const Rule& rule = frame.chain->rules[frame.next++];
      if (++visits_ > Evaluator::kMaxRuleVisits) {
        return unknown(nullptr, "gave up after " + std::to_string(Evaluator::kMaxRuleVisits) +
                                    " rule visits (a jump loop?)");
      }
      const Packet packet{conn_, family_, mark_};
      const Tri t = evaluateRule(rule, packet);
      if (t == Tri::False) continue;
      if (t == Tri::Unknown) return unknown(&rule, unknownMatchesOf(rule, packet));

      if (ev_.path.size() >= Evaluator::kMaxPathLength) {
        return unknown(nullptr, "gave up after " + std::to_string(Evaluator::kMaxPathLength) +
                                    " matching rules (a jump loop?)");
      }
      ev_.path.push_back(rule);
      ev_.deciding.reset();  // a later match supersedes an earlier verdict

      for (const Action& a : rule.actions) {
        switch (a.kind) {
          case ActionKind::NoOp:
            continue;
          case ActionKind::SetMark:
            mark_ = a.mark_xor ? ((mark_ & ~a.mark_mask) ^ a.mark_value)
                               : ((mark_ & ~a.mark_mask) | a.mark_value);
            continue;
          case ActionKind::Jump:
          case ActionKind::Goto: {
            const Chain* target = base.table->find(a.chain);
            if (!target || target->base) {
              return unknown(&rule, "jump to chain '" + a.chain + "', which is not a chain of " +
                                        std::string(familyName(base.table->family)) + " " +
                                        base.table->name);
            }
            if (a.kind == ActionKind::Jump) {
              if (static_cast<int>(stack.size()) >= Evaluator::kMaxJumpDepth) {
                return unknown(&rule, "jumps nested deeper than " +
                                          std::to_string(Evaluator::kMaxJumpDepth) +
                                          " (a jump loop?)");
              }
              stack.push_back({target, 0});
            } else {
              stack.back() = {target, 0};  // goto: returning from it returns past this chain
            }
            enter(*base.table, *target);
            break;
          }
          case ActionKind::Return:
            ev_.deciding = rule;
            if (stack.size() == 1) return policy(*base.chain);
            stack.pop_back();
            break;
          case ActionKind::Accept:
            ev_.deciding = rule;
            ev_.note = "accepted by a rule of " + base.chain->name;
            return false;
          case ActionKind::Drop:
          case ActionKind::Reject:
            ev_.deciding = rule;
            ev_.decision.verdict = Verdict::Drop;
            return true;
          case ActionKind::Redirect: {
            if (a.ports && a.ports->first != a.ports->last) {
              return unknown(&rule, "redirect to a port range: which port is not fixed");
            }
            ev_.deciding = rule;
            ev_.decision.verdict = Verdict::Redirect;
            ev_.decision.port = a.ports ? a.ports->first : conn_.dst.port;
            return true;
          }
          case ActionKind::Dnat: {
            if (a.ports && a.ports->first != a.ports->last) {
              return unknown(&rule, "DNAT to a port range: which port is not fixed");
            }
            if (a.address && a.address->isV4() != (family_ == Family::Ipv4)) {
              return unknown(&rule, "DNAT to an address of the other family");
            }
            ev_.deciding = rule;
            ev_.decision.verdict = Verdict::Dnat;
            ev_.decision.destination.addr = a.address.value_or(conn_.dst.addr);
            ev_.decision.destination.port = a.ports ? a.ports->first : conn_.dst.port;
            return true;
          }
          case ActionKind::Snat:
          case ActionKind::Masquerade:
          case ActionKind::Tproxy:
            return unknown(&rule, std::string(actionKindName(a.kind)) +
                                      " is not expected on the nat OUTPUT path");
          case ActionKind::Unsupported:
            return unknown(&rule, "action `" + a.text + "` is not understood");
        }
        break;  // a verdict or a jump ends the rule's statements
      }
    }
    return false;
  }

 private:
  void enter(const Table& table, const Chain& chain) {
    if (ev_.chains.size() < Evaluator::kMaxPathLength) {
      ev_.chains.push_back(table.name + " " + chain.name);
    }
  }

  bool policy(const Chain& base) {
    if (base.policy == ChainPolicy::Drop) {
      ev_.decision.verdict = Verdict::Drop;
      ev_.note = "policy drop of " + base.name;
      return true;
    }
    ev_.note = "policy accept of " + base.name;
    return false;
  }

  bool unknown(const Rule* rule, std::string why) {
    ev_.decision = Decision{};
    ev_.decision.verdict = Verdict::Unknown;
    if (rule) ev_.not_understood = *rule;
    ev_.deciding.reset();
    ev_.note = std::move(why);
    return true;
  }

  const Connection& conn_;
  Family family_;
  uint32_t mark_;
  Evaluation& ev_;
  size_t visits_ = 0;
};

}  // namespace

std::string_view verdictName(Verdict verdict) {
  switch (verdict) {
    case Verdict::Redirect:
      return "redirect";
    case Verdict::Dnat:
      return "dnat";
    case Verdict::Accept:
      return "accept";
    case Verdict::Drop:
      return "drop";
    case Verdict::Unknown:
      return "unknown";
  }
  return "?";
}

std::string Decision::str() const {
  switch (verdict) {
    case Verdict::Redirect:
      return "redirect to :" + std::to_string(port);
    case Verdict::Dnat:
      return "dnat to " + destination.str();
    case Verdict::Accept:
      return "accept (not translated)";
    case Verdict::Drop:
      return "drop";
    case Verdict::Unknown:
      return "unknown";
  }
  return "?";
}

bool Evaluation::enteredChain(std::string_view chain) const {
  return std::any_of(chains.begin(), chains.end(), [&](const std::string& c) {
    const size_t space = c.rfind(' ');
    return std::string_view(c).substr(space == std::string::npos ? 0 : space + 1) == chain;
  });
}

Evaluator::Evaluator(const RuleSet& rules) : rules_(rules) {}

Evaluation Evaluator::evaluate(const Connection& conn) const {
  Evaluation ev;
  const Family family = conn.dst.addr.isV4() ? Family::Ipv4 : Family::Ipv6;
  if (!conn.src.addr.isUnspecified() && conn.src.addr.isV4() != conn.dst.addr.isV4()) {
    ev.note = "source and destination addresses are of different families";
    return ev;
  }
  const bool covered = family == Family::Ipv4 ? rules_.covers_ipv4 : rules_.covers_ipv6;
  if (!covered) {
    ev.note = std::string("the rule set holds no ") + (family == Family::Ipv4 ? "IPv4" : "IPv6") +
              " rules (read them too)";
    return ev;
  }

  // Every nat base chain on the output hook that sees this family, in
  // priority order (stable: equal priorities keep the order they were read).
  std::vector<BaseChain> bases;
  for (const Table& t : rules_.tables) {
    if (t.family != Family::Inet && t.family != family) continue;
    for (const Chain& c : t.chains) {
      if (c.base && c.type == "nat" && c.hook == "output") bases.push_back({&t, &c});
    }
  }
  std::stable_sort(bases.begin(), bases.end(), [](const BaseChain& a, const BaseChain& b) {
    return a.chain->priority < b.chain->priority;
  });

  ev.decision.verdict = Verdict::Accept;
  if (bases.empty()) {
    ev.note = "no nat output chain: not translated";
    return ev;
  }
  Walk walk(conn, family, ev);
  for (const BaseChain& base : bases) {
    if (walk.run(base)) return ev;
  }
  ev.decision.verdict = Verdict::Accept;
  return ev;
}

Evaluation evaluate(const RuleSet& rules, const Connection& conn) {
  return Evaluator(rules).evaluate(conn);
}

}  // namespace cw::rules
