#include "rules/model.h"

#include <charconv>

namespace cw::rules {

std::string_view backendName(Backend backend) {
  switch (backend) {
    case Backend::Iptables:
      return "iptables";
    case Backend::Nftables:
      return "nftables";
  }
  return "?";
}

std::string_view familyName(Family family) {
  switch (family) {
    case Family::Ipv4:
      return "ip";
    case Family::Ipv6:
      return "ip6";
    case Family::Inet:
      return "inet";
  }
  return "?";
}

std::string_view protocolName(Protocol protocol) {
  return protocol == Protocol::Udp ? "udp" : "tcp";
}

std::string_view matchKindName(MatchKind kind) {
  switch (kind) {
    case MatchKind::Protocol:
      return "protocol";
    case MatchKind::Family:
      return "family";
    case MatchKind::SourceAddress:
      return "source-address";
    case MatchKind::DestinationAddress:
      return "destination-address";
    case MatchKind::InInterface:
      return "in-interface";
    case MatchKind::OutInterface:
      return "out-interface";
    case MatchKind::SourcePort:
      return "source-port";
    case MatchKind::DestinationPort:
      return "destination-port";
    case MatchKind::OwnerUid:
      return "owner-uid";
    case MatchKind::OwnerGid:
      return "owner-gid";
    case MatchKind::SocketExists:
      return "socket-exists";
    case MatchKind::Mark:
      return "mark";
    case MatchKind::ConnState:
      return "conntrack-state";
    case MatchKind::Unsupported:
      return "unsupported";
  }
  return "?";
}

std::string_view actionKindName(ActionKind kind) {
  switch (kind) {
    case ActionKind::Jump:
      return "jump";
    case ActionKind::Goto:
      return "goto";
    case ActionKind::Return:
      return "return";
    case ActionKind::Accept:
      return "accept";
    case ActionKind::Drop:
      return "drop";
    case ActionKind::Reject:
      return "reject";
    case ActionKind::Redirect:
      return "redirect";
    case ActionKind::Dnat:
      return "dnat";
    case ActionKind::Snat:
      return "snat";
    case ActionKind::Masquerade:
      return "masquerade";
    case ActionKind::Tproxy:
      return "tproxy";
    case ActionKind::SetMark:
      return "set-mark";
    case ActionKind::NoOp:
      return "no-op";
    case ActionKind::Unsupported:
      return "unsupported";
  }
  return "?";
}

std::optional<Cidr> Cidr::parse(std::string_view text) {
  const size_t slash = text.find('/');
  std::string_view addr_text = text.substr(0, slash);
  if (addr_text.empty() || addr_text.size() > 64) return std::nullopt;
  auto addr = Address::parse(std::string(addr_text));
  if (!addr) return std::nullopt;
  Cidr cidr;
  cidr.addr = *addr;
  const int max_prefix = addr->isV4() ? 32 : 128;
  cidr.prefix = max_prefix;
  if (slash != std::string_view::npos) {
    std::string_view len = text.substr(slash + 1);
    int value = -1;
    auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), value);
    if (len.empty() || ec != std::errc() || end != len.data() + len.size() || value < 0 ||
        value > max_prefix) {
      return std::nullopt;
    }
    cidr.prefix = value;
  }
  // Mask host bits so that equal prefixes compare equal.
  const int total = (cidr.isV4() ? 96 : 0) + cidr.prefix;
  for (int bit = total; bit < 128; ++bit) {
    cidr.addr.bytes[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
  }
  return cidr;
}

bool Cidr::contains(const Address& a) const {
  if (a.isV4() != isV4()) return false;
  const int total = (isV4() ? 96 : 0) + prefix;
  for (int bit = 0; bit < total; ++bit) {
    const uint8_t m = static_cast<uint8_t>(0x80u >> (bit % 8));
    if ((a.bytes[bit / 8] & m) != (addr.bytes[bit / 8] & m)) return false;
  }
  return true;
}

std::string Cidr::str() const { return addr.str() + "/" + std::to_string(prefix); }

std::string PortRange::str() const {
  if (first == last) return std::to_string(first);
  return std::to_string(first) + "-" + std::to_string(last);
}

std::string OwnerId::str() const {
  if (isName()) return name;
  if (first == last) return std::to_string(first);
  return std::to_string(first) + "-" + std::to_string(last);
}

bool Action::terminal() const {
  switch (kind) {
    case ActionKind::SetMark:
    case ActionKind::NoOp:
      return false;
    default:
      return true;
  }
}

bool Rule::understood() const {
  if (opaque) return false;
  for (const Match& m : matches) {
    if (m.kind == MatchKind::Unsupported) return false;
  }
  for (const Action& a : actions) {
    if (a.kind == ActionKind::Unsupported) return false;
  }
  return true;
}

std::string Rule::describe() const {
  if (backend == Backend::Iptables) {
    return text;
  }
  return std::string(familyName(family)) + " " + table + " " + chain + ": " + text;
}

const Chain* Table::find(std::string_view name) const {
  for (const Chain& c : chains) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

Chain* Table::find(std::string_view name) {
  for (Chain& c : chains) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

size_t RuleSet::ruleCount() const {
  size_t n = 0;
  for (const Table& t : tables) {
    for (const Chain& c : t.chains) n += c.rules.size();
  }
  return n;
}

std::string ParseError::str() const {
  if (line <= 0) return message;
  return "line " + std::to_string(line) + ": " + message;
}

ParseResult ParseResult::failure(int line, std::string message) {
  ParseResult r;
  r.error.line = line;
  r.error.message = std::move(message);
  return r;
}

}  // namespace cw::rules
