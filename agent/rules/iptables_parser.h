// Parser for iptables-save output and iptables-restore input.
#pragma once

#include <string_view>

#include "rules/model.h"

namespace cw::rules {

// Parses the text of one family's rules (iptables-save for Ipv4,
// ip6tables-save for Ipv6): `*table` ... `COMMIT` sections with
// `:CHAIN POLICY [p:b]` headers, `-N`, `-A CHAIN ...`, `-I CHAIN [N] ...`,
// `-P`, `-F`, `-X`; comment lines and lines naming a command
// (`iptables-save`, `ip6tables-save`, ...) are ignored. Each rule keeps its
// line. Options the parser does not know leave the rule "not understood"
// rather than failing the parse; structural problems (a rule outside a
// table, an unknown chain, a missing COMMIT, an address of the other
// family) fail it with the line and the problem. Never throws.
ParseResult parseIptables(std::string_view text, Family family);

}  // namespace cw::rules
