// Reads a RuleSet the way an engineer would: what Istio's capture policy
// is (summarise) and why one connection is or is not captured (explain).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "rules/evaluator.h"
#include "rules/model.h"

namespace cw::rules {

// Istio's outbound capture policy as found in the rules.
struct Policy {
  Backend backend = Backend::Iptables;
  // An Istio outbound chain (ISTIO_OUTPUT / istio-output), reached from nat
  // OUTPUT, sends traffic to the outbound redirect. False: "no capture rules".
  bool capture = false;
  bool capture_ipv4 = false;              // ...for IPv4 traffic
  bool capture_ipv6 = false;              // ...for IPv6 traffic
  std::string outbound_chain;             // "ISTIO_OUTPUT", "istio-output"; empty if none
  std::string redirect_chain;             // "ISTIO_REDIRECT", "istio-redirect"; empty if none
  std::optional<uint16_t> redirect_port;  // target of the redirect chain (15001)

  // The proxy's own UID/GID as the rules name them (the owner that may
  // redirect to the inbound port over loopback), not a constant.
  std::optional<uint32_t> proxy_uid;
  std::optional<uint32_t> proxy_gid;
  std::vector<OwnerId> exempt_uids;  // RETURN for these owners
  std::vector<OwnerId> exempt_gids;
  std::vector<OwnerId> included_uids;  // RETURN for everyone else (OwnerGroupsInclude)
  std::vector<OwnerId> included_gids;

  std::vector<PortRange> excluded_ports;  // RETURN for these destination ports
  std::vector<Cidr> excluded_cidrs;       // RETURN for these destinations (loopback omitted)
  bool includes_all = false;              // an unconditional jump to the redirect
  std::vector<Cidr> included_cidrs;       // redirect only these destinations...
  std::vector<PortRange> included_ports;  // ...or these destination ports
  std::vector<std::string> excluded_interfaces;

  std::vector<std::string> not_understood;  // outbound rules the model does not understand
  std::string why_no_capture;               // when !capture

  bool captures(Family family) const {
    return family == Family::Ipv4 ? capture_ipv4 : capture_ipv6;
  }

  // Multi-line, for people: "backend: iptables\ncapture: ...".
  std::string str() const;
};

Policy summarise(const RuleSet& rules);

enum class Reason {
  None,               // captured
  OwnerUid,           // "owner-uid"
  OwnerGid,           // "owner-gid"
  ExcludedPort,       // "excluded-port"
  ExcludedCidr,       // "excluded-cidr"
  NotIncluded,        // "not-included"
  ExcludedInterface,  // "excluded-interface"
  Local,              // "local": loopback / pod-local destination, not subject to capture
  NoCaptureRules,     // "no-capture-rules"
  Unknown,            // "unknown"
};
std::string_view reasonName(Reason reason);  // "" for None

struct Explanation {
  bool captured = false;  // redirected to redirect_port
  Reason reason = Reason::None;
  std::string rule;    // the deciding (or not understood) rule, in its own syntax; may be empty
  std::string remedy;  // one line an engineer can act on; empty when captured
  Evaluation evaluation;
};

// Whether the rules capture `conn` (redirect it to `redirect_port`) and, if
// not, why. The Evaluator and Policy overload lets callers that explain many
// connections summarise once.
Explanation explain(const RuleSet& rules, const Connection& conn, uint16_t redirect_port);
Explanation explain(const Evaluator& evaluator, const Policy& policy, const Connection& conn,
                    uint16_t redirect_port);

}  // namespace cw::rules
