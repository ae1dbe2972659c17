#include "rules/iptables_parser.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <initializer_list>

#include "rules/text_util.h"

namespace cw::rules {

namespace {

struct BuiltinChain {
  const char* name;
  const char* hook;
  int priority;
};

// Built-in chains of each table with the priority the kernel registers them
// at (NF_IP_PRI_*), so that evaluation can order them like nft base chains.
std::vector<BuiltinChain> builtinChains(std::string_view table) {
  if (table == "nat") {
    return {{"PREROUTING", "prerouting", -100},
            {"INPUT", "input", 100},
            {"OUTPUT", "output", -100},
            {"POSTROUTING", "postrouting", 100}};
  }
  if (table == "mangle") {
    return {{"PREROUTING", "prerouting", -150},
            {"INPUT", "input", -150},
            {"FORWARD", "forward", -150},
            {"OUTPUT", "output", -150},
            {"POSTROUTING", "postrouting", -150}};
  }
  if (table == "raw") {
    return {{"PREROUTING", "prerouting", -300}, {"OUTPUT", "output", -300}};
  }
  if (table == "filter") {
    return {{"INPUT", "input", 0}, {"FORWARD", "forward", 0}, {"OUTPUT", "output", 0}};
  }
  if (table == "security") {
    return {{"INPUT", "input", 50}, {"FORWARD", "forward", 50}, {"OUTPUT", "output", 50}};
  }
  return {};
}

bool isOneOf(std::string_view s, std::initializer_list<std::string_view> options) {
  return std::find(options.begin(), options.end(), s) != options.end();
}

// Options of iptables itself (not of a match module): they end the options
// of a module or of a target.
bool isBaseOption(std::string_view tok) {
  return isOneOf(tok, {"-p",
                       "--protocol",
                       "-s",
                       "--source",
                       "--src",
                       "-d",
                       "--destination",
                       "--dst",
                       "-i",
                       "--in-interface",
                       "-o",
                       "--out-interface",
                       "-m",
                       "--match",
                       "-j",
                       "--jump",
                       "-g",
                       "--goto",
                       "-c",
                       "--set-counters",
                       "-f",
                       "--fragment",
                       "-4",
                       "--ipv4",
                       "-6",
                       "--ipv6",
                       "!"});
}

std::string joinTokens(const std::vector<std::string>& tokens, size_t from, size_t to) {
  std::string out;
  for (size_t i = from; i < to && i < tokens.size(); ++i) {
    if (!out.empty()) out += ' ';
    out += tokens[i];
  }
  return out;
}

// "53", "1000:2000", ":1023", "1024:" (iptables port syntax).
std::optional<PortRange> parsePortSpec(std::string_view text) {
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos) {
    auto p = parseU16(text);
    if (!p) return std::nullopt;
    return PortRange{*p, *p};
  }
  std::string_view a = text.substr(0, colon);
  std::string_view b = text.substr(colon + 1);
  auto first = a.empty() ? std::optional<uint16_t>(0) : parseU16(a);
  auto last = b.empty() ? std::optional<uint16_t>(65535) : parseU16(b);
  if (!first || !last || *first > *last) return std::nullopt;
  return PortRange{*first, *last};
}

std::optional<std::vector<PortRange>> parsePortList(std::string_view text) {
  std::vector<PortRange> out;
  for (std::string_view part : split(text, ',')) {
    auto range = parsePortSpec(part);
    if (!range) return std::nullopt;
    out.push_back(*range);
  }
  if (out.empty()) return std::nullopt;
  return out;
}

// "1337", "1000-2000" or a user/group name.
std::optional<OwnerId> parseOwnerId(std::string_view text) {
  if (text.empty()) return std::nullopt;
  if (std::isdigit(static_cast<unsigned char>(text[0]))) {
    const size_t dash = text.find('-');
    auto first = parseU32(text.substr(0, dash));
    auto last = dash == std::string_view::npos ? first : parseU32(text.substr(dash + 1));
    if (!first || !last || *first > *last) return std::nullopt;
    return OwnerId{*first, *last, ""};
  }
  for (char c : text) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' ||
          c == '$')) {
      return std::nullopt;
    }
  }
  return OwnerId{0, 0, std::string(text)};
}

// "0x539", "0x539/0xfff", "1337".
std::optional<std::pair<uint32_t, uint32_t>> parseMarkSpec(std::string_view text) {
  const size_t slash = text.find('/');
  auto value = parseU32Auto(text.substr(0, slash));
  auto mask = slash == std::string_view::npos ? std::optional<uint32_t>(0xffffffffu)
                                              : parseU32Auto(text.substr(slash + 1));
  if (!value || !mask) return std::nullopt;
  return std::make_pair(*value, *mask);
}

// DNAT --to-destination: "1.2.3.4", "1.2.3.4:80", "1.2.3.4:80-81", "[2001:db8::1]:80", "::1".
bool parseNatTarget(std::string_view text, Action& action) {
  std::string_view addr = text;
  std::string_view ports;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return false;
    addr = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return false;
      ports = rest.substr(1);
    }
  } else if (std::count(text.begin(), text.end(), ':') == 1) {
    const size_t colon = text.find(':');
    addr = text.substr(0, colon);
    ports = text.substr(colon + 1);
  }
  if (!addr.empty()) {
    if (addr.find('-') != std::string_view::npos) return false;  // address ranges: not modelled
    auto a = Address::parse(std::string(addr));
    if (!a) return false;
    action.address = *a;
  }
  if (!ports.empty()) {
    const size_t dash = ports.find('-');
    auto first = parseU16(ports.substr(0, dash));
    auto last = dash == std::string_view::npos ? first : parseU16(ports.substr(dash + 1));
    if (!first || !last || *first > *last) return false;
    action.ports = PortRange{*first, *last};
  }
  return action.address || action.ports;
}

class IptablesParser {
 public:
  explicit IptablesParser(Family family) : family_(family) {
    set_.backend = Backend::Iptables;
    set_.covers_ipv4 = family == Family::Ipv4;
    set_.covers_ipv6 = family == Family::Ipv6;
  }

  ParseResult run(std::string_view text) {
    if (text.size() > kMaxInputBytes) {
      return ParseResult::failure(0, "input of " + std::to_string(text.size()) +
                                         " bytes exceeds the limit of " +
                                         std::to_string(kMaxInputBytes) + " bytes");
    }
    int number = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string_view::npos) end = text.size();
      ++number;
      std::string_view line = trim(text.substr(pos, end - pos));
      if (auto error = handleLine(number, line)) return ParseResult::failure(number, *error);
      pos = end + 1;
    }
    if (current_ >= 0) {
      return ParseResult::failure(number, "table '" + set_.tables[current_].name + "' (line " +
                                              std::to_string(section_line_) +
                                              ") has no COMMIT: input truncated?");
    }
    ParseResult result;
    result.rules = std::move(set_);
    return result;
  }

 private:
  Table& table() { return set_.tables[static_cast<size_t>(current_)]; }

  std::optional<std::string> handleLine(int number, std::string_view line) {
    if (line.empty() || line[0] == '#') return std::nullopt;
    if (line.find('\0') != std::string_view::npos) return "NUL byte in line";
    std::vector<std::string> tokens;
    if (auto error = tokenize(line, tokens)) return error;
    if (tokens.empty()) return std::nullopt;

    // Counters written by iptables-save -c: "[12:3456] -A ..."
    std::string_view rule_text = line;
    if (tokens[0].size() >= 2 && tokens[0].front() == '[' && tokens[0].back() == ']') {
      tokens.erase(tokens.begin());
      rule_text = trim(line.substr(line.find(']') + 1));
      if (tokens.empty()) return std::nullopt;
    }
    const std::string& cmd = tokens[0];

    // The goldens list the commands the test harness ran: not rules.
    if (cmd.starts_with("iptables") || cmd.starts_with("ip6tables")) return std::nullopt;

    if (cmd[0] == '*') {
      std::string name = cmd.size() > 1 ? cmd.substr(1) : (tokens.size() > 1 ? tokens[1] : "");
      if (name.empty()) return "table header without a name";
      if (current_ >= 0) {
        return "table '" + name + "' starts before COMMIT of table '" + table().name + "'";
      }
      startTable(name, number);
      return std::nullopt;
    }
    if (cmd == "COMMIT") {
      if (current_ < 0) return "COMMIT outside a table";
      current_ = -1;
      return std::nullopt;
    }
    if (current_ < 0) return "'" + cmd + "' outside a table (no *table line before it)";

    if (cmd[0] == ':') {
      std::string name = cmd.substr(1);
      if (name.empty()) return "chain header without a name";
      Chain* chain = declareChain(name);
      if (tokens.size() > 1 && chain->base) {
        if (tokens[1] == "DROP") {
          chain->policy = ChainPolicy::Drop;
        } else if (tokens[1] == "ACCEPT") {
          chain->policy = ChainPolicy::Accept;
        } else {
          return "unknown policy '" + tokens[1] + "' for chain " + name;
        }
      }
      return std::nullopt;
    }
    if (cmd == "-N" || cmd == "--new-chain") {
      if (tokens.size() < 2) return "-N without a chain name";
      declareChain(tokens[1]);
      return std::nullopt;
    }
    if (cmd == "-P" || cmd == "--policy") {
      if (tokens.size() < 3) return "-P needs a chain and a policy";
      Chain* chain = table().find(tokens[1]);
      if (!chain || !chain->base) return "-P on '" + tokens[1] + "', not a built-in chain";
      if (tokens[2] != "ACCEPT" && tokens[2] != "DROP") return "unknown policy '" + tokens[2] + "'";
      chain->policy = tokens[2] == "DROP" ? ChainPolicy::Drop : ChainPolicy::Accept;
      return std::nullopt;
    }
    if (cmd == "-F" || cmd == "--flush") {
      for (Chain& c : table().chains) {
        if (tokens.size() < 2 || c.name == tokens[1]) {
          rule_count_ -= std::min(rule_count_, c.rules.size());
          c.rules.clear();
        }
      }
      return std::nullopt;
    }
    if (cmd == "-X" || cmd == "--delete-chain") {
      auto& chains = table().chains;
      std::erase_if(chains, [&](const Chain& c) {
        return !c.base && (tokens.size() < 2 || c.name == tokens[1]);
      });
      return std::nullopt;
    }
    if (cmd == "-Z" || cmd == "--zero") return std::nullopt;
    if (cmd == "-A" || cmd == "--append" || cmd == "-I" || cmd == "--insert") {
      return addRule(number, rule_text, tokens, cmd == "-I" || cmd == "--insert");
    }
    return "unknown command '" + cmd + "'";
  }

  // Splits a line into words; double quotes group, backslash escapes.
  static std::optional<std::string> tokenize(std::string_view line, std::vector<std::string>& out) {
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
      if (i >= line.size()) break;
      std::string word;
      bool quoted = false;
      while (i < line.size() && (quoted || !std::isspace(static_cast<unsigned char>(line[i])))) {
        char c = line[i++];
        if (c == '"') {
          quoted = !quoted;
        } else if (c == '\\' && i < line.size()) {
          word += line[i++];
        } else {
          word += c;
        }
      }
      if (quoted) return "unterminated quote";
      out.push_back(std::move(word));
    }
    return std::nullopt;
  }

  void startTable(const std::string& name, int number) {
    section_line_ = number;
    // A second section for the same table replaces it, as iptables-restore
    // (without --noflush) does.
    std::erase_if(set_.tables, [&](const Table& t) { return t.name == name; });
    rule_count_ = set_.ruleCount();
    Table t;
    t.name = name;
    t.family = family_;
    for (const BuiltinChain& b : builtinChains(name)) {
      Chain c;
      c.name = b.name;
      c.base = true;
      c.type = name;
      c.hook = b.hook;
      c.priority = b.priority;
      c.policy = ChainPolicy::Accept;
      t.chains.push_back(std::move(c));
    }
    set_.tables.push_back(std::move(t));
    current_ = static_cast<int>(set_.tables.size()) - 1;
  }

  Chain* declareChain(const std::string& name) {
    if (Chain* existing = table().find(name)) return existing;
    Chain c;
    c.name = name;
    table().chains.push_back(std::move(c));
    return &table().chains.back();
  }

  std::optional<std::string> addRule(int number, std::string_view rule_text,
                                     const std::vector<std::string>& tokens, bool insert) {
    if (tokens.size() < 2) return "'" + tokens[0] + "' without a chain name";
    Chain* chain = table().find(tokens[1]);
    if (!chain) return "chain '" + tokens[1] + "' does not exist in table '" + table().name + "'";
    size_t first_option = 2;
    size_t position = chain->rules.size();  // append
    if (insert) {
      position = 0;
      if (tokens.size() > 2) {
        if (auto index = parseU32(tokens[2])) {
          if (*index == 0 || *index > chain->rules.size() + 1) {
            return "insert position " + tokens[2] + " is out of range for chain '" + chain->name +
                   "' (" + std::to_string(chain->rules.size()) + " rules)";
          }
          position = *index - 1;
          first_option = 3;
        }
      }
    }
    if (rule_count_ >= kMaxRules) {
      return "more than " + std::to_string(kMaxRules) + " rules";
    }

    Rule rule;
    rule.backend = Backend::Iptables;
    rule.family = family_;
    rule.table = table().name;
    rule.chain = chain->name;
    rule.text = std::string(rule_text);
    rule.line = number;
    if (auto error = parseOptions(tokens, first_option, rule)) return error;

    // parseOptions may have declared nothing, but keep the pointer fresh.
    chain = table().find(tokens[1]);
    chain->rules.insert(chain->rules.begin() + static_cast<std::ptrdiff_t>(position),
                        std::move(rule));
    ++rule_count_;
    return std::nullopt;
  }

  // Parses the match and target options of one rule.
  std::optional<std::string> parseOptions(const std::vector<std::string>& tokens, size_t i,
                                          Rule& rule) {
    const size_t n = tokens.size();
    bool negate = false;
    std::string protocol;     // from -p, when not negated
    std::string module;       // current -m
    int unknown_module = -1;  // index in rule.matches of the current unknown module

    auto fragment = [&](size_t from, size_t to) {
      return negate ? "! " + joinTokens(tokens, from, to) : joinTokens(tokens, from, to);
    };
    auto unsupported = [&](size_t from, size_t to, bool opaque) {
      Match m;
      m.kind = MatchKind::Unsupported;
      m.negated = negate;
      m.text = fragment(from, to);
      rule.matches.push_back(std::move(m));
      if (opaque) rule.opaque = true;
    };
    // Index just past an option's arguments: the words up to the next word
    // starting with '-' or a base option.
    auto argsEnd = [&](size_t from) {
      size_t j = from;
      while (j < n && !tokens[j].starts_with("-") && !isBaseOption(tokens[j])) ++j;
      return j;
    };

    while (i < n) {
      const std::string& tok = tokens[i];
      if (tok == "!") {
        if (negate) {
          unsupported(i, i + 1, true);
        }
        negate = true;
        ++i;
        continue;
      }
      const bool has_value = i + 1 < n;
      const std::string value = has_value ? tokens[i + 1] : std::string();

      if (isOneOf(tok, {"-p", "--protocol"})) {
        if (!has_value) return "option " + tok + " needs a value";
        std::string proto = toLower(value);
        if (!(proto == "all" && !negate)) {
          Match m;
          m.kind = MatchKind::Protocol;
          m.negated = negate;
          m.names = {proto == "6" ? "tcp" : proto == "17" ? "udp" : proto};
          m.text = fragment(i, i + 2);
          rule.matches.push_back(std::move(m));
        }
        if (!negate) protocol = proto;
        i += 2;
      } else if (isOneOf(tok, {"-s", "--source", "--src", "-d", "--destination", "--dst"})) {
        if (!has_value) return "option " + tok + " needs a value";
        Match m;
        m.kind = isOneOf(tok, {"-s", "--source", "--src"}) ? MatchKind::SourceAddress
                                                           : MatchKind::DestinationAddress;
        m.negated = negate;
        m.text = fragment(i, i + 2);
        for (std::string_view part : split(value, ',')) {
          auto cidr = Cidr::parse(part);
          if (!cidr) {
            m.kind = MatchKind::Unsupported;  // a host name, say: not resolved here
            break;
          }
          if (cidr->isV4() != (family_ == Family::Ipv4)) {
            return "address '" + std::string(part) + "' is not " +
                   (family_ == Family::Ipv4 ? "IPv4" : "IPv6") + " (wrong family for this input)";
          }
          m.cidrs.push_back(*cidr);
        }
        rule.matches.push_back(std::move(m));
        i += 2;
      } else if (isOneOf(tok, {"-i", "--in-interface", "-o", "--out-interface"})) {
        if (!has_value) return "option " + tok + " needs a value";
        Match m;
        m.kind = isOneOf(tok, {"-i", "--in-interface"}) ? MatchKind::InInterface
                                                        : MatchKind::OutInterface;
        m.negated = negate;
        m.names = {value};
        m.text = fragment(i, i + 2);
        rule.matches.push_back(std::move(m));
        i += 2;
      } else if (isOneOf(tok, {"-m", "--match"})) {
        if (!has_value) return "option " + tok + " needs a value";
        module = value;
        unknown_module = -1;
        if (!isOneOf(module, {"tcp", "udp", "multiport", "owner", "mark", "conntrack", "state",
                              "comment", "connmark"})) {
          // An unknown module: its options are kept as one unknown condition.
          unknown_module = static_cast<int>(rule.matches.size());
          Match m;
          m.kind = MatchKind::Unsupported;
          m.text = joinTokens(tokens, i, i + 2);
          rule.matches.push_back(std::move(m));
        }
        i += 2;
      } else if (isOneOf(tok, {"-j", "--jump", "-g", "--goto"})) {
        if (!has_value) return "option " + tok + " needs a target";
        size_t end = i + 2;
        while (end < n && !isBaseOption(tokens[end])) ++end;
        rule.actions.push_back(parseTarget(tokens, i, end, isOneOf(tok, {"-g", "--goto"})));
        if (negate) rule.opaque = true;
        i = end;
      } else if (isOneOf(tok, {"-c", "--set-counters"})) {
        i += 3;
      } else if (isOneOf(tok, {"-4", "--ipv4", "-6", "--ipv6"})) {
        ++i;
      } else if (isOneOf(tok, {"-f", "--fragment"})) {
        unsupported(i, i + 1, false);
        ++i;
      } else if (unknown_module >= 0 && tok.starts_with("--")) {
        const size_t end = argsEnd(i + 1);
        Match& m = rule.matches[static_cast<size_t>(unknown_module)];
        m.text += " " + fragment(i, end);
        i = end;
      } else if (isOneOf(tok, {"--dport", "--destination-port", "--sport", "--source-port"}) &&
                 (module.empty() || module == "tcp" || module == "udp")) {
        if (!has_value) return "option " + tok + " needs a value";
        Match m;
        m.kind = isOneOf(tok, {"--dport", "--destination-port"}) ? MatchKind::DestinationPort
                                                                 : MatchKind::SourcePort;
        m.negated = negate;
        m.l4 = (module == "tcp" || module == "udp") ? module : protocol;
        m.text = fragment(i, i + 2);
        auto range = parsePortSpec(value);
        if (range) m.ports = {*range};
        if (!range || m.l4.empty()) {
          m.kind = MatchKind::Unsupported;
          rule.opaque = rule.opaque || m.l4.empty();
        }
        rule.matches.push_back(std::move(m));
        i += 2;
      } else if (module == "multiport" &&
                 isOneOf(tok, {"--dports", "--destination-ports", "--sports", "--source-ports"})) {
        if (!has_value) return "option " + tok + " needs a value";
        Match m;
        m.kind = isOneOf(tok, {"--dports", "--destination-ports"}) ? MatchKind::DestinationPort
                                                                   : MatchKind::SourcePort;
        m.negated = negate;
        m.l4 = protocol;
        m.text = fragment(i, i + 2);
        auto list = parsePortList(value);
        if (list) m.ports = *list;
        if (!list || m.l4.empty()) m.kind = MatchKind::Unsupported;
        rule.matches.push_back(std::move(m));
        i += 2;
      } else if (module == "owner" && isOneOf(tok, {"--uid-owner", "--gid-owner"})) {
        if (!has_value) return "option " + tok + " needs a value";
        Match m;
        m.kind = tok == "--uid-owner" ? MatchKind::OwnerUid : MatchKind::OwnerGid;
        m.negated = negate;
        m.text = fragment(i, i + 2);
        if (auto id = parseOwnerId(value)) {
          m.ids = {*id};
        } else {
          m.kind = MatchKind::Unsupported;
        }
        rule.matches.push_back(std::move(m));
        i += 2;
      } else if (module == "owner" && tok == "--socket-exists") {
        Match m;
        m.kind = MatchKind::SocketExists;
        m.negated = negate;
        m.text = fragment(i, i + 1);
        rule.matches.push_back(std::move(m));
        ++i;
      } else if (module == "mark" && tok == "--mark") {
        if (!has_value) return "option " + tok + " needs a value";
        Match m;
        m.kind = MatchKind::Mark;
        m.negated = negate;
        m.text = fragment(i, i + 2);
        if (auto mark = parseMarkSpec(value)) {
          m.values = {mark->first};
          m.mask = mark->second;
        } else {
          m.kind = MatchKind::Unsupported;
        }
        rule.matches.push_back(std::move(m));
        i += 2;
      } else if ((module == "conntrack" && tok == "--ctstate") ||
                 (module == "state" && tok == "--state")) {
        if (!has_value) return "option " + tok + " needs a value";
        Match m;
        m.kind = MatchKind::ConnState;
        m.negated = negate;
        m.text = fragment(i, i + 2);
        for (std::string_view s : split(value, ',')) m.names.push_back(toLower(s));
        rule.matches.push_back(std::move(m));
        i += 2;
      } else if (module == "comment" && tok == "--comment") {
        if (!has_value) return "option " + tok + " needs a value";
        rule.comment = value;
        i += 2;
      } else if (module == "connmark" && tok == "--mark" && has_value) {
        unsupported(i, i + 2, false);  // the conntrack mark: not known for a connection
        i += 2;
      } else {
        // An option this parser does not know (or one that modifies another,
        // like --suppl-groups): the rule's structure is not understood.
        const size_t end = argsEnd(i + 1);
        unsupported(i, end, true);
        i = end;
      }
      negate = false;
    }
    if (negate) rule.opaque = true;  // a dangling "!"
    return std::nullopt;
  }

  // Parses "-j NAME [options]" (tokens[from, to)) or "-g CHAIN".
  Action parseTarget(const std::vector<std::string>& tokens, size_t from, size_t to, bool go) {
    Action a;
    a.text = joinTokens(tokens, from, to);
    const std::string& name = tokens[from + 1];
    const Chain* chain = table().find(name);
    const bool has_options = to > from + 2;
    if (chain && !chain->base) {
      a.kind = go ? ActionKind::Goto : ActionKind::Jump;
      a.chain = name;
      if (has_options) a.kind = ActionKind::Unsupported;
      return a;
    }
    if (go) return a;  // goto to something that is not a user chain

    // Options as (name, value) pairs; a flag has an empty value.
    std::vector<std::pair<std::string, std::string>> options;
    for (size_t i = from + 2; i < to; ++i) {
      if (!tokens[i].starts_with("--")) return a;  // malformed: keep as unsupported
      const std::string& option = tokens[i];
      std::string value;
      if (i + 1 < to && !tokens[i + 1].starts_with("--")) value = tokens[++i];
      options.emplace_back(option, value);
    }
    auto only = [&](std::initializer_list<std::string_view> allowed) {
      return std::all_of(options.begin(), options.end(),
                         [&](const auto& o) { return isOneOf(o.first, allowed); });
    };

    if (name == "ACCEPT" || name == "DROP" || name == "RETURN") {
      if (!options.empty()) return a;
      a.kind = name == "ACCEPT" ? ActionKind::Accept
               : name == "DROP" ? ActionKind::Drop
                                : ActionKind::Return;
    } else if (name == "REJECT") {
      if (!only({"--reject-with"})) return a;
      a.kind = ActionKind::Reject;
    } else if (name == "REDIRECT" || name == "MASQUERADE") {
      if (!only({"--to-ports", "--to-port", "--random"})) return a;
      for (const auto& [opt, value] : options) {
        if (opt == "--random") continue;
        const size_t dash = value.find('-');
        auto first = parseU16(std::string_view(value).substr(0, dash));
        auto last =
            dash == std::string::npos ? first : parseU16(std::string_view(value).substr(dash + 1));
        if (!first || !last || *first > *last) return a;
        a.ports = PortRange{*first, *last};
      }
      a.kind = name == "REDIRECT" ? ActionKind::Redirect : ActionKind::Masquerade;
    } else if (name == "DNAT" || name == "SNAT") {
      const char* to_opt = name == "DNAT" ? "--to-destination" : "--to-source";
      if (!only({to_opt, "--random", "--persistent", "--random-fully"})) return a;
      int targets = 0;
      Action nat = a;
      for (const auto& [opt, value] : options) {
        if (opt != to_opt) continue;
        if (++targets > 1 || !parseNatTarget(value, nat)) return a;
      }
      if (targets != 1) return a;
      if (nat.address && nat.address->isV4() != (family_ == Family::Ipv4)) return a;
      a = nat;
      a.kind = name == "DNAT" ? ActionKind::Dnat : ActionKind::Snat;
    } else if (name == "MARK") {
      if (options.size() != 1) return a;
      const auto& [opt, value] = options[0];
      auto mark = parseMarkSpec(value);
      if (!mark) return a;
      if (opt == "--set-mark") {
        a.mark_value = mark->first;
        a.mark_mask = mark->second;
      } else if (opt == "--set-xmark") {
        a.mark_value = mark->first;
        a.mark_mask = mark->second;
        a.mark_xor = true;
      } else if (opt == "--and-mark") {
        a.mark_value = 0;
        a.mark_mask = ~mark->first;
      } else if (opt == "--or-mark") {
        a.mark_value = mark->first;
        a.mark_mask = 0;
      } else if (opt == "--xor-mark") {
        a.mark_value = mark->first;
        a.mark_mask = 0;
        a.mark_xor = true;
      } else {
        return a;
      }
      a.kind = ActionKind::SetMark;
    } else if (name == "TPROXY") {
      if (!only({"--on-port", "--on-ip", "--tproxy-mark"})) return a;
      for (const auto& [opt, value] : options) {
        if (opt != "--on-port") continue;
        auto port = parseU16(value);
        if (!port) return a;
        a.ports = PortRange{*port, *port};
      }
      a.kind = ActionKind::Tproxy;
    } else if (name == "CT" || name == "NOTRACK" || name == "LOG" || name == "NFLOG" ||
               name == "TRACE") {
      a.kind = ActionKind::NoOp;  // connection tracking zones, logging: no effect on NAT
    }
    return a;  // anything else (CONNMARK, unknown targets): unsupported
  }

  Family family_;
  RuleSet set_;
  int current_ = -1;  // index of the table being read, -1 outside *table ... COMMIT
  int section_line_ = 0;
  size_t rule_count_ = 0;
};

}  // namespace

ParseResult parseIptables(std::string_view text, Family family) {
  if (family == Family::Inet) {
    return ParseResult::failure(0, "iptables rules are per family: give Ipv4 or Ipv6");
  }
  return IptablesParser(family).run(text);
}

}  // namespace cw::rules
