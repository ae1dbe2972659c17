#include "rules/explain.h"

#include <algorithm>

#include "rules/text_util.h"

namespace cw::rules {

namespace {

// ISTIO_OUTPUT and istio-output name the same chain in the two backends.
std::string canonicalChain(std::string_view name) {
  std::string out = toLower(name);
  std::replace(out.begin(), out.end(), '_', '-');
  return out;
}

bool isLoopback(const Cidr& c) {
  if (c.isV4()) return c.prefix >= 8 && c.addr.bytes[12] == 127;
  return c.prefix == 128 && c.addr.isLoopback();
}

template <typename T>
void addUnique(std::vector<T>& list, const T& value) {
  if (std::find(list.begin(), list.end(), value) == list.end()) list.push_back(value);
}

template <typename T>
std::string joined(const std::vector<T>& list) {
  std::string out;
  for (const T& v : list) {
    if (!out.empty()) out += ", ";
    out += v.str();
  }
  return out;
}

std::string joined(const std::vector<std::string>& list) {
  std::string out;
  for (const std::string& v : list) {
    if (!out.empty()) out += ", ";
    out += v;
  }
  return out;
}

std::vector<const Match*> matchesOf(const Rule& rule, MatchKind kind, bool negated) {
  std::vector<const Match*> out;
  for (const Match& m : rule.matches) {
    if (m.kind == kind && m.negated == negated) out.push_back(&m);
  }
  return out;
}

bool onLoopback(const Rule& rule) {
  for (const Match* m : matchesOf(rule, MatchKind::OutInterface, false)) {
    if (m->names == std::vector<std::string>{"lo"}) return true;
  }
  return false;
}

const Action* verdictOf(const Rule& rule) {
  for (const Action& a : rule.actions) {
    if (a.terminal()) return &a;
  }
  return nullptr;
}

bool isJumpTo(const Action* a, std::string_view chain) {
  return a && (a->kind == ActionKind::Jump || a->kind == ActionKind::Goto) && a->chain == chain;
}

bool letsThrough(const Action* a) {
  return a && (a->kind == ActionKind::Return || a->kind == ActionKind::Accept);
}

// Matches other than the protocol (which only narrows tcp/udp duplicates).
size_t conditionCount(const Rule& rule) {
  return static_cast<size_t>(std::count_if(rule.matches.begin(), rule.matches.end(),
                                           [](auto& m) { return m.kind != MatchKind::Protocol; }));
}

// Which packet families a rule can match: its table's, narrowed by family
// selectors (`ip daddr`, `meta nfproto`) and positive address matches.
std::pair<bool, bool> familiesOf(const Table& table, const Rule& rule) {
  bool v4 = table.family != Family::Ipv6;
  bool v6 = table.family != Family::Ipv4;
  for (const Match& m : rule.matches) {
    if (m.family == Family::Ipv4) v6 = false;
    if (m.family == Family::Ipv6) v4 = false;
    if (m.kind == MatchKind::Family && !m.negated) {
      v4 = v4 && std::find(m.names.begin(), m.names.end(), "ipv4") != m.names.end();
      v6 = v6 && std::find(m.names.begin(), m.names.end(), "ipv6") != m.names.end();
    }
    if ((m.kind == MatchKind::DestinationAddress || m.kind == MatchKind::SourceAddress) &&
        !m.negated && !m.cidrs.empty()) {
      v4 =
          v4 && std::any_of(m.cidrs.begin(), m.cidrs.end(), [](const Cidr& c) { return c.isV4(); });
      v6 = v6 &&
           std::any_of(m.cidrs.begin(), m.cidrs.end(), [](const Cidr& c) { return !c.isV4(); });
    }
  }
  return {v4, v6};
}

void summariseOutbound(const Table& table, const Chain& outbound, Policy& p) {
  const Chain* redirect = nullptr;
  const Chain* in_redirect = nullptr;
  for (const Chain& c : table.chains) {
    const std::string name = canonicalChain(c.name);
    if (name == "istio-redirect") redirect = &c;
    if (name == "istio-in-redirect") in_redirect = &c;
  }
  if (redirect) {
    p.redirect_chain = redirect->name;
    for (const Rule& r : redirect->rules) {
      const Action* a = verdictOf(r);
      if (a && a->kind == ActionKind::Redirect && a->ports && !p.redirect_port) {
        p.redirect_port = a->ports->first;
      }
    }
  }

  for (const Rule& rule : outbound.rules) {
    if (!rule.understood()) addUnique(p.not_understood, rule.describe());
    const Action* a = verdictOf(rule);
    const bool lo = onLoopback(rule);

    if (in_redirect && isJumpTo(a, in_redirect->name)) {
      // The proxy's own loopback traffic to the inbound port names its owner.
      for (const Match* m : matchesOf(rule, MatchKind::OwnerUid, false)) {
        if (!p.proxy_uid && !m->ids.empty() && !m->ids[0].isName()) p.proxy_uid = m->ids[0].first;
      }
      for (const Match* m : matchesOf(rule, MatchKind::OwnerGid, false)) {
        if (!p.proxy_gid && !m->ids.empty() && !m->ids[0].isName()) p.proxy_gid = m->ids[0].first;
      }
      continue;
    }

    const bool to_redirect = (redirect && isJumpTo(a, redirect->name)) ||
                             (!redirect && a && a->kind == ActionKind::Redirect &&
                              matchesOf(rule, MatchKind::DestinationPort, false).empty());
    if (to_redirect) {
      const auto [v4, v6] = familiesOf(table, rule);
      p.capture = p.capture || v4 || v6;
      p.capture_ipv4 = p.capture_ipv4 || v4;
      p.capture_ipv6 = p.capture_ipv6 || v6;
      if (!redirect && a->ports && !p.redirect_port) p.redirect_port = a->ports->first;
      bool narrowed = false;
      for (const Match* m : matchesOf(rule, MatchKind::DestinationAddress, false)) {
        for (const Cidr& c : m->cidrs) addUnique(p.included_cidrs, c);
        narrowed = true;
      }
      for (const Match* m : matchesOf(rule, MatchKind::DestinationPort, false)) {
        for (const PortRange& r : m->ports) addUnique(p.included_ports, r);
        narrowed = true;
      }
      if (!narrowed) p.includes_all = true;
      continue;
    }
    if (!letsThrough(a) || lo) continue;

    const auto uids = matchesOf(rule, MatchKind::OwnerUid, false);
    const auto gids = matchesOf(rule, MatchKind::OwnerGid, false);
    const auto not_uids = matchesOf(rule, MatchKind::OwnerUid, true);
    const auto not_gids = matchesOf(rule, MatchKind::OwnerGid, true);
    const auto ports = matchesOf(rule, MatchKind::DestinationPort, false);
    const auto cidrs = matchesOf(rule, MatchKind::DestinationAddress, false);
    const auto oifs = matchesOf(rule, MatchKind::OutInterface, false);
    if (!uids.empty()) {
      for (const Match* m : uids) {
        for (const OwnerId& id : m->ids) addUnique(p.exempt_uids, id);
      }
    } else if (!gids.empty()) {
      for (const Match* m : gids) {
        for (const OwnerId& id : m->ids) addUnique(p.exempt_gids, id);
      }
    } else if (!not_uids.empty() && not_uids.size() == conditionCount(rule)) {
      for (const Match* m : not_uids) {
        for (const OwnerId& id : m->ids) addUnique(p.included_uids, id);
      }
    } else if (!not_gids.empty() && not_gids.size() == conditionCount(rule)) {
      for (const Match* m : not_gids) {
        for (const OwnerId& id : m->ids) addUnique(p.included_gids, id);
      }
    } else if (!ports.empty()) {
      for (const Match* m : ports) {
        for (const PortRange& r : m->ports) addUnique(p.excluded_ports, r);
      }
    } else if (!cidrs.empty()) {
      for (const Match* m : cidrs) {
        for (const Cidr& c : m->cidrs) {
          if (!isLoopback(c)) addUnique(p.excluded_cidrs, c);
        }
      }
    } else if (!oifs.empty()) {
      for (const Match* m : oifs) {
        for (const std::string& n : m->names) addUnique(p.excluded_interfaces, n);
      }
    }
  }
  if (!p.proxy_uid) {
    for (const OwnerId& id : p.exempt_uids) {
      if (!id.isName()) {
        p.proxy_uid = id.first;
        break;
      }
    }
  }
  if (!p.proxy_gid) {
    for (const OwnerId& id : p.exempt_gids) {
      if (!id.isName()) {
        p.proxy_gid = id.first;
        break;
      }
    }
  }
}

}  // namespace

Policy summarise(const RuleSet& rules) {
  Policy p;
  p.backend = rules.backend;
  bool found_outbound = false;
  for (const Table& table : rules.tables) {
    std::vector<const Chain*> bases;
    for (const Chain& c : table.chains) {
      if (c.base && c.type == "nat" && c.hook == "output") bases.push_back(&c);
    }
    if (bases.empty()) continue;
    for (const Chain& c : table.chains) {
      if (c.base || canonicalChain(c.name) != "istio-output") continue;
      // It must be reachable from nat OUTPUT to matter.
      bool reached = false;
      for (const Chain* base : bases) {
        for (const Rule& r : base->rules) {
          if (isJumpTo(verdictOf(r), c.name)) reached = true;
          // Interfaces excluded before the jump (ExcludeInterfaces).
          const auto oifs = matchesOf(r, MatchKind::OutInterface, false);
          if (!reached && letsThrough(verdictOf(r)) && !oifs.empty() && !onLoopback(r)) {
            for (const Match* m : oifs) {
              for (const std::string& n : m->names) addUnique(p.excluded_interfaces, n);
            }
          }
        }
      }
      if (!reached) continue;
      found_outbound = true;
      p.outbound_chain = c.name;
      summariseOutbound(table, c, p);
    }
  }
  if (!found_outbound) {
    p.why_no_capture = rules.backend == Backend::Iptables
                           ? "no ISTIO_OUTPUT chain reached from nat OUTPUT"
                           : "no istio-output chain reached from a nat output base chain";
  } else if (!p.capture) {
    p.why_no_capture = p.outbound_chain + " never sends outbound traffic to the redirect" +
                       (p.redirect_chain.empty() ? "" : " (" + p.redirect_chain + ")");
  }
  return p;
}

std::string Policy::str() const {
  std::string out = "backend: " + std::string(backendName(backend)) + "\n";
  if (!capture) {
    out += "capture: none (" + why_no_capture + ")\n";
  } else {
    out += "capture: outbound traffic redirected to port " +
           (redirect_port ? std::to_string(*redirect_port) : std::string("?")) + " (" +
           outbound_chain + (redirect_chain.empty() ? "" : " -> " + redirect_chain) + ")\n";
    std::string dest = includes_all ? "all" : "";
    if (!included_cidrs.empty()) dest += (dest.empty() ? "" : "; ") + joined(included_cidrs);
    if (!included_ports.empty()) {
      dest += (dest.empty() ? "" : "; ") + std::string("ports ") + joined(included_ports);
    }
    out += "captured destinations: " + (dest.empty() ? std::string("none") : dest) + "\n";
  }
  if (proxy_uid || proxy_gid) {
    out += "proxy: uid " + (proxy_uid ? std::to_string(*proxy_uid) : std::string("?")) + ", gid " +
           (proxy_gid ? std::to_string(*proxy_gid) : std::string("?")) + "\n";
  }
  if (!exempt_uids.empty()) out += "exempt uids: " + joined(exempt_uids) + "\n";
  if (!exempt_gids.empty()) out += "exempt gids: " + joined(exempt_gids) + "\n";
  if (!included_uids.empty()) out += "only uids captured: " + joined(included_uids) + "\n";
  if (!included_gids.empty()) out += "only gids captured: " + joined(included_gids) + "\n";
  if (!excluded_ports.empty()) out += "excluded ports: " + joined(excluded_ports) + "\n";
  if (!excluded_cidrs.empty()) out += "excluded destinations: " + joined(excluded_cidrs) + "\n";
  if (!excluded_interfaces.empty()) {
    out += "excluded interfaces: " + joined(excluded_interfaces) + "\n";
  }
  for (const std::string& r : not_understood) out += "not understood: " + r + "\n";
  return out;
}

std::string_view reasonName(Reason reason) {
  switch (reason) {
    case Reason::None:
      return "";
    case Reason::OwnerUid:
      return "owner-uid";
    case Reason::OwnerGid:
      return "owner-gid";
    case Reason::ExcludedPort:
      return "excluded-port";
    case Reason::ExcludedCidr:
      return "excluded-cidr";
    case Reason::NotIncluded:
      return "not-included";
    case Reason::ExcludedInterface:
      return "excluded-interface";
    case Reason::Local:
      return "local";
    case Reason::NoCaptureRules:
      return "no-capture-rules";
    case Reason::Unknown:
      return "unknown";
  }
  return "unknown";
}

namespace {

// The reason a connection let through by `rule` (RETURN / ACCEPT) escapes,
// from the matches that selected it.
Reason reasonOf(const Rule& rule) {
  if (!matchesOf(rule, MatchKind::OwnerUid, false).empty()) return Reason::OwnerUid;
  if (!matchesOf(rule, MatchKind::OwnerGid, false).empty()) return Reason::OwnerGid;
  if (!matchesOf(rule, MatchKind::OutInterface, true).empty()) return Reason::ExcludedInterface;
  if (!matchesOf(rule, MatchKind::OutInterface, false).empty()) {
    return onLoopback(rule) ? Reason::Local : Reason::ExcludedInterface;
  }
  if (!matchesOf(rule, MatchKind::DestinationPort, false).empty()) return Reason::ExcludedPort;
  if (auto cidrs = matchesOf(rule, MatchKind::DestinationAddress, false); !cidrs.empty()) {
    const bool loopback = std::all_of(cidrs.begin(), cidrs.end(), [](const Match* m) {
      return std::all_of(m->cidrs.begin(), m->cidrs.end(), isLoopback);
    });
    return loopback ? Reason::Local : Reason::ExcludedCidr;
  }
  if (!matchesOf(rule, MatchKind::DestinationPort, true).empty() ||
      !matchesOf(rule, MatchKind::DestinationAddress, true).empty()) {
    return Reason::NotIncluded;
  }
  if (!matchesOf(rule, MatchKind::OwnerUid, true).empty()) return Reason::OwnerUid;
  if (!matchesOf(rule, MatchKind::OwnerGid, true).empty()) return Reason::OwnerGid;
  for (const Match* m : matchesOf(rule, MatchKind::SourceAddress, false)) {
    if (std::all_of(m->cidrs.begin(), m->cidrs.end(), isLoopback)) return Reason::Local;
  }
  if (conditionCount(rule) == 0) return Reason::NotIncluded;
  return Reason::Unknown;
}

std::string remedyFor(Reason reason, const Rule* rule, const Policy& policy,
                      const Connection& conn) {
  const bool negated_owner =
      rule &&
      matchesOf(*rule, reason == Reason::OwnerUid ? MatchKind::OwnerUid : MatchKind::OwnerGid,
                false)
          .empty();
  switch (reason) {
    case Reason::OwnerUid:
      if (negated_owner) {
        return "UID " + std::to_string(conn.uid) +
               " is not among the UIDs whose traffic is captured (" + joined(policy.included_uids) +
               "): run the app as one of them";
      }
      return "the container runs as UID " + std::to_string(conn.uid) +
             ", the proxy's UID, which Istio exempts from capture: run the app as another UID "
             "(securityContext.runAsUser)";
    case Reason::OwnerGid:
      if (negated_owner) {
        return "GID " + std::to_string(conn.gid) +
               " is not among the groups whose traffic is captured (" +
               joined(policy.included_gids) +
               "; ISTIO_OUTBOUND_OWNER_GROUPS / OwnerGroupsInclude): add it there or run the "
               "app with one of those groups (securityContext.runAsGroup)";
      }
      if (policy.proxy_gid && *policy.proxy_gid == conn.gid) {
        return "the container runs with GID " + std::to_string(conn.gid) +
               ", the proxy's GID, which Istio exempts from capture: run the app with another "
               "group (securityContext.runAsGroup)";
      }
      return "GID " + std::to_string(conn.gid) +
             " is excluded from capture (ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE / "
             "OwnerGroupsExclude): remove it from that list or run the app with another group "
             "(securityContext.runAsGroup)";
    case Reason::ExcludedPort:
      return "port " + std::to_string(conn.dst.port) +
             " is excluded from outbound capture (traffic.sidecar.istio.io/excludeOutboundPorts): "
             "remove it from the annotation to send this traffic through the sidecar";
    case Reason::ExcludedCidr: {
      std::string what = conn.dst.addr.str();
      if (rule) {
        for (const Match* m : matchesOf(*rule, MatchKind::DestinationAddress, false)) {
          for (const Cidr& c : m->cidrs) {
            if (c.contains(conn.dst.addr)) what += " (in " + c.str() + ")";
          }
        }
      }
      return what +
             " is excluded from outbound capture "
             "(traffic.sidecar.istio.io/excludeOutboundIPRanges): "
             "remove the range from the annotation to send this traffic through the sidecar";
    }
    case Reason::NotIncluded: {
      std::string scope;
      if (!policy.included_cidrs.empty()) scope = "IP ranges " + joined(policy.included_cidrs);
      if (!policy.included_ports.empty()) {
        scope +=
            (scope.empty() ? "" : "; ") + std::string("ports ") + joined(policy.included_ports);
      }
      return conn.dst.str() + " is outside the captured destinations" +
             (scope.empty() ? "" : " (" + scope + ")") +
             ": add it to traffic.sidecar.istio.io/includeOutboundIPRanges / "
             "includeOutboundPorts (or use \"*\")";
    }
    case Reason::ExcludedInterface:
      return "traffic leaving through " +
             (conn.out_interface.empty() ? std::string("this interface") : conn.out_interface) +
             " is excluded from capture (ExcludeInterfaces / "
             "traffic.sidecar.istio.io/excludeInterfaces): remove the interface from the "
             "annotation or route this traffic through a captured interface";
    case Reason::Local:
      return "the destination is inside the pod (loopback or the pod's own address): not subject "
             "to outbound capture";
    case Reason::NoCaptureRules: {
      const std::string why = policy.capture ? policy.outbound_chain + " sends no " +
                                                   (conn.dst.addr.isV4() ? "IPv4" : "IPv6") +
                                                   " traffic to the redirect"
                                             : policy.why_no_capture;
      return "no Istio outbound capture in this network namespace (" + why +
             "): check that injection ran istio-init or the istio-cni plugin, that "
             "sidecar.istio.io/interceptionMode is not NONE, and, with istio-cni, that the pod "
             "did not start before the node's CNI plugin was ready (restart the pod)";
    }
    case Reason::Unknown:
    case Reason::None:
      break;
  }
  return "";
}

}  // namespace

Explanation explain(const Evaluator& evaluator, const Policy& policy, const Connection& conn,
                    uint16_t redirect_port) {
  Explanation x;
  x.evaluation = evaluator.evaluate(conn);
  const Evaluation& ev = x.evaluation;
  const Decision& d = ev.decision;
  if (ev.deciding) x.rule = ev.deciding->describe();

  if (d.verdict == Verdict::Redirect && d.port == redirect_port) {
    x.captured = true;
    return x;
  }
  if (d.verdict == Verdict::Unknown) {
    x.reason = Reason::Unknown;
    if (ev.not_understood) {
      x.rule = ev.not_understood->describe();
      x.remedy = "capturewatch cannot evaluate the rule `" + x.rule + "` for this connection (" +
                 ev.note + "): check it by hand (iptables-save / nft list ruleset)";
    } else {
      x.remedy = "capturewatch cannot evaluate the rules for this connection: " + ev.note;
    }
    return x;
  }
  switch (d.verdict) {
    case Verdict::Redirect:
      x.reason = Reason::Unknown;
      x.remedy = "the rules redirect this connection to local port " + std::to_string(d.port) +
                 ", not to the sidecar's outbound port " + std::to_string(redirect_port) +
                 " (DNS capture or the inbound redirect): check the port";
      return x;
    case Verdict::Dnat:
      x.reason = Reason::Unknown;
      x.remedy = "the rules rewrite this connection's destination to " + d.destination.str() +
                 " instead of redirecting it to the sidecar: check that rule";
      return x;
    case Verdict::Drop:
      x.reason = Reason::Unknown;
      x.remedy =
          "the rules drop this connection (" + (ev.deciding ? "rule " + x.rule : ev.note) + ")";
      return x;
    case Verdict::Accept:
    case Verdict::Unknown:
      break;
  }
  const Family family = conn.dst.addr.isV4() ? Family::Ipv4 : Family::Ipv6;
  if (!policy.captures(family)) {
    x.reason = Reason::NoCaptureRules;
    x.remedy = remedyFor(x.reason, nullptr, policy, conn);
    return x;
  }
  if (!ev.deciding) {
    // Fell off the end: nothing on the way sent it to the redirect.
    x.reason = Reason::NotIncluded;
    x.remedy = remedyFor(x.reason, nullptr, policy, conn);
    return x;
  }
  x.reason = reasonOf(*ev.deciding);
  x.remedy = remedyFor(x.reason, &*ev.deciding, policy, conn);
  if (x.reason == Reason::Unknown) {
    x.remedy = "the rule `" + x.rule +
               "` lets this connection through for a reason capturewatch cannot name: check it "
               "by hand";
  }
  return x;
}

Explanation explain(const RuleSet& rules, const Connection& conn, uint16_t redirect_port) {
  return explain(Evaluator(rules), summarise(rules), conn, redirect_port);
}

}  // namespace cw::rules
