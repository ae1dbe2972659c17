// Parser for the JSON that libnftables / `nft -j list ruleset` prints.
#pragma once

#include <string_view>

#include "rules/model.h"

namespace cw::rules {

// Parses `{"nftables": [{"metainfo": ...}, {"table": ...}, {"chain": ...},
// {"rule": ...}, ...]}`. Tables of family ip, ip6 and inet are kept (others,
// e.g. bridge or netdev, are skipped); chains with a hook are base chains.
// Each rule is rendered back to nft syntax in Rule::text
// (`oifname "lo" skuid 1337 counter return`). Expressions the parser does
// not know leave the rule "not understood"; malformed JSON or a rule naming
// an unknown table or chain fail the parse with the line and the problem.
// Never throws.
ParseResult parseNftJson(std::string_view json);

}  // namespace cw::rules
