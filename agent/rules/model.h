// Rule model for the netfilter rules that decide whether a pod's outbound
// connection is captured: tables, chains, ordered rules, each rule a list of
// matches (all must hold) and actions (the last one usually a verdict).
//
// Both parsers (iptables-save text, nft JSON) produce this model; the
// evaluator walks it for one connection. A rule or match the parsers do not
// understand is kept with its original text and evaluates as "unknown": the
// evaluator then answers Unknown and names the rule instead of guessing.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "event.h"

namespace cw::rules {

enum class Backend { Iptables, Nftables };
std::string_view backendName(Backend backend);  // "iptables", "nftables"

// Address family of a table (and of a match's implicit dependency). Inet
// tables (nftables) see both IPv4 and IPv6 packets.
enum class Family { Ipv4, Ipv6, Inet };
std::string_view familyName(Family family);  // "ip", "ip6", "inet"

enum class Protocol : uint8_t { Tcp = 6, Udp = 17 };
std::string_view protocolName(Protocol protocol);  // "tcp", "udp"

// An address prefix. IPv4 prefixes are stored v4-mapped (as cw::Address
// does); `prefix` counts bits of the family's own address (0..32 for IPv4).
struct Cidr {
  Address addr;
  int prefix = 0;

  // "10.0.0.0/8", "2001:db8::/32", "127.0.0.1" (a host). The address is
  // masked to the prefix.
  static std::optional<Cidr> parse(std::string_view text);
  bool isV4() const { return addr.isV4(); }
  bool contains(const Address& a) const;  // false across families
  std::string str() const;                // "10.0.0.0/8"
  friend bool operator==(const Cidr&, const Cidr&) = default;
};

struct PortRange {
  uint16_t first = 0;
  uint16_t last = 0;
  bool contains(uint16_t port) const { return port >= first && port <= last; }
  std::string str() const;  // "53" or "1000-2000"
  friend bool operator==(const PortRange&, const PortRange&) = default;
};

// A user or group in an owner match: a numeric range, or a name that the
// rules carry unresolved ("java"). Names are never looked up on this host.
struct OwnerId {
  uint32_t first = 0;
  uint32_t last = 0;
  std::string name;  // non-empty: unresolved name, first/last unused

  bool isName() const { return !name.empty(); }
  std::string str() const;  // "1337", "1000-2000" or the name
  friend bool operator==(const OwnerId&, const OwnerId&) = default;
};

enum class MatchKind {
  Protocol,            // names: "tcp", "udp", "6", ...
  Family,              // family: nft `meta nfproto ipv4`
  SourceAddress,       // cidrs
  DestinationAddress,  // cidrs
  InInterface,         // names ('+' or '*' suffix = prefix wildcard)
  OutInterface,        // names
  SourcePort,          // ports
  DestinationPort,     // ports
  OwnerUid,            // ids
  OwnerGid,            // ids
  SocketExists,        // -m owner --socket-exists
  Mark,                // values under mask
  ConnState,           // names: "new", "established", ...
  Unsupported,         // kept as text, evaluates as unknown
};
std::string_view matchKindName(MatchKind kind);

// One condition of a rule. Which fields are used depends on the kind.
struct Match {
  MatchKind kind = MatchKind::Unsupported;
  bool negated = false;

  // Implicit dependencies (nftables `ip daddr` needs an IPv4 packet, `tcp
  // dport` a TCP one): when they fail the match is false whatever `negated`.
  std::optional<Family> family;  // Ipv4 or Ipv6
  std::string l4;                // "tcp", "udp" or "" (any)

  std::vector<std::string> names;
  std::vector<Cidr> cidrs;
  std::vector<PortRange> ports;
  std::vector<OwnerId> ids;
  std::vector<uint32_t> values;  // Mark
  uint32_t mask = 0xffffffff;    // Mark

  // The value is a reference the rule set does not resolve (an nftables
  // named set, an ipset): the match evaluates as unknown.
  bool unresolved = false;

  std::string text;  // this match in the rules' own syntax
};

enum class ActionKind {
  Jump,  // chain
  Goto,  // chain
  Return,
  Accept,
  Drop,
  Reject,
  Redirect,  // ports (nullopt: keep the destination port)
  Dnat,      // address and/or ports
  Snat,      // address and/or ports
  Masquerade,
  Tproxy,       // ports
  SetMark,      // mark = ((mark & ~mask) | value), or ^ value when xor
  NoOp,         // no effect on the nat decision: counter, log, CT zone, notrack
  Unsupported,  // kept as text; evaluates as unknown when reached
};
std::string_view actionKindName(ActionKind kind);

struct Action {
  ActionKind kind = ActionKind::Unsupported;
  std::string chain;
  std::optional<PortRange> ports;
  std::optional<Address> address;
  uint32_t mark_value = 0;
  uint32_t mark_mask = 0xffffffff;
  bool mark_xor = false;
  std::string text;

  // Ends the traversal of the current chain (verdicts, NAT targets).
  bool terminal() const;
};

struct Rule {
  Backend backend = Backend::Iptables;
  Family family = Family::Ipv4;  // of its table
  std::string table;             // "nat", "istio-proxy-nat"
  std::string chain;             // "ISTIO_OUTPUT", "istio-output"
  std::vector<Match> matches;    // all must hold
  std::vector<Action> actions;   // applied in order when the rule matches

  // The parser could not follow the rule's structure (an unknown option
  // whose arguments it cannot delimit, an unknown statement): no match of
  // it can be trusted, so reaching it makes the answer unknown.
  bool opaque = false;

  std::string text;     // iptables: the line as written; nft: rendered statements
  std::string comment;  // -m comment / nft comment
  int line = 0;         // 1-based source line (iptables), 0 if none
  uint64_t handle = 0;  // nft rule handle, 0 if none

  // Everything is understood: no Unsupported match or action, not opaque.
  bool understood() const;
  // The rule with its context, as an engineer would look it up:
  // iptables "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN" (the line
  // names its chain); nft "inet istio-proxy-nat istio-output: skuid 1337 counter return".
  std::string describe() const;
};

enum class ChainPolicy { None, Accept, Drop };  // None: a regular (non-base) chain

struct Chain {
  std::string name;
  bool base = false;  // attached to a hook
  std::string type;   // base chains: "nat", "filter", "route" (iptables: the table name)
  std::string hook;   // base chains: "output", "prerouting", ...
  int priority = 0;   // base chains
  ChainPolicy policy = ChainPolicy::None;
  std::vector<Rule> rules;
};

struct Table {
  std::string name;
  Family family = Family::Ipv4;
  std::vector<Chain> chains;

  const Chain* find(std::string_view chain) const;
  Chain* find(std::string_view chain);
};

// One view of a network namespace's rules: iptables (one family, from
// iptables-save or ip6tables-save) or nftables (every table: both families).
struct RuleSet {
  Backend backend = Backend::Iptables;
  bool covers_ipv4 = false;  // rules for IPv4 packets were read
  bool covers_ipv6 = false;  // rules for IPv6 packets were read
  std::vector<Table> tables;

  size_t ruleCount() const;
};

// A parse failure: where and what. line is 1-based (0: the input as a whole).
struct ParseError {
  int line = 0;
  std::string message;
  std::string str() const;  // "line 12: unknown command -Q"
};

struct ParseResult {
  std::optional<RuleSet> rules;  // set on success
  ParseError error;              // meaningful when rules is empty

  bool ok() const { return rules.has_value(); }
  static ParseResult failure(int line, std::string message);
};

// Bounds on what a parser accepts; larger input is refused with an error.
inline constexpr size_t kMaxInputBytes = 16u << 20;  // 16 MiB
inline constexpr size_t kMaxRules = 100000;

}  // namespace cw::rules
