#include "rules/nft_parser.h"

#include <limits>
#include <map>

#include <nlohmann/json.hpp>

#include "rules/text_util.h"

namespace cw::rules {

namespace {

using json = nlohmann::json;

constexpr int kMaxJsonDepth = 64;

// ---- JSON access that never throws -------------------------------------

const json* member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

std::optional<std::string> stringOf(const json* j) {
  if (!j || !j->is_string()) return std::nullopt;
  return j->get<std::string>();
}

std::optional<int64_t> integerOf(const json* j) {
  if (!j) return std::nullopt;
  if (j->is_number_unsigned()) {
    const uint64_t v = j->get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (j->is_number_integer()) return j->get<int64_t>();
  return std::nullopt;
}

std::optional<uint32_t> u32Of(const json& j) {
  auto v = integerOf(&j);
  if (!v || *v < 0 || *v > 0xffffffffLL) return std::nullopt;
  return static_cast<uint32_t>(*v);
}

// The single key and value of a one-member object ({"match": {...}}).
bool singleMember(const json& obj, std::string& key, const json*& value) {
  if (!obj.is_object() || obj.size() != 1) return false;
  key = obj.begin().key();
  value = &obj.begin().value();
  return true;
}

// Deepest nesting of arrays/objects, computed without recursion so that
// hostile input cannot exhaust the stack before the parser sees it.
int nestingDepth(std::string_view text) {
  int depth = 0;
  int max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

int lineAt(std::string_view text, size_t byte) {
  int line = 1;
  for (size_t i = 0; i < byte && i < text.size(); ++i) {
    if (text[i] == '\n') ++line;
  }
  return line;
}

// ---- rendering back to nft syntax --------------------------------------

bool isMarkExpr(const json& left) {
  const json* meta = member(left, "meta");
  const json* ct = member(left, "ct");
  const auto key = stringOf(meta ? member(*meta, "key") : ct ? member(*ct, "key") : nullptr);
  return key && *key == "mark";
}

bool isInterfaceExpr(const json& left) {
  const json* meta = member(left, "meta");
  const auto key = stringOf(meta ? member(*meta, "key") : nullptr);
  return key && (*key == "oifname" || *key == "iifname" || *key == "oif" || *key == "iif");
}

std::string hex(uint64_t v) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  do {
    out.insert(out.begin(), digits[v & 0xf]);
    v >>= 4;
  } while (v);
  return "0x" + out;
}

std::string renderValue(const json& v, bool quote_strings, bool hex_numbers, int depth);

std::string renderExpr(const json& e, int depth) {
  if (depth > kMaxJsonDepth) return "...";
  if (const json* meta = member(e, "meta")) {
    const std::string key = stringOf(member(*meta, "key")).value_or("?");
    static const char* const kBare[] = {"iifname", "oifname", "iif",     "oif",     "mark",
                                        "skuid",   "skgid",   "iiftype", "oiftype", "cgroup"};
    for (const char* bare : kBare) {
      if (key == bare) return key;
    }
    return "meta " + key;
  }
  if (const json* payload = member(e, "payload")) {
    auto proto = stringOf(member(*payload, "protocol"));
    auto field = stringOf(member(*payload, "field"));
    if (proto && field) return *proto + " " + *field;
    return "@" +
           renderValue(member(*payload, "base") ? *member(*payload, "base") : json(), false, false,
                       depth + 1) +
           "," +
           renderValue(member(*payload, "offset") ? *member(*payload, "offset") : json(), false,
                       false, depth + 1) +
           "," +
           renderValue(member(*payload, "len") ? *member(*payload, "len") : json(), false, false,
                       depth + 1);
  }
  if (const json* ct = member(e, "ct")) {
    return "ct " + stringOf(member(*ct, "key")).value_or("?");
  }
  for (const char* op : {"&", "|", "^", "<<", ">>"}) {
    if (const json* args = member(e, op); args && args->is_array() && args->size() == 2) {
      const bool mark = isMarkExpr((*args)[0]);
      return renderExpr((*args)[0], depth + 1) + " " + op + " " +
             renderValue((*args)[1], false, mark, depth + 1);
    }
  }
  return renderValue(e, false, false, depth + 1);
}

std::string renderValue(const json& v, bool quote_strings, bool hex_numbers, int depth) {
  if (depth > kMaxJsonDepth) return "...";
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    return quote_strings ? "\"" + s + "\"" : s;
  }
  if (v.is_number_unsigned() || v.is_number_integer()) {
    if (hex_numbers) {
      if (auto u = integerOf(&v); u && *u >= 0) return hex(static_cast<uint64_t>(*u));
    }
    return v.dump();
  }
  if (v.is_array()) {
    std::string out;
    for (const json& x : v) {
      if (!out.empty()) out += ",";
      out += renderValue(x, quote_strings, hex_numbers, depth + 1);
    }
    return out;
  }
  if (const json* set = member(v, "set")) {
    std::string out = "{ ";
    if (set->is_array()) {
      bool first = true;
      for (const json& x : *set) {
        if (!first) out += ", ";
        first = false;
        out += renderValue(x, quote_strings, hex_numbers, depth + 1);
      }
    } else {
      out += renderValue(*set, quote_strings, hex_numbers, depth + 1);
    }
    return out + " }";
  }
  if (const json* prefix = member(v, "prefix")) {
    return stringOf(member(*prefix, "addr")).value_or("?") + "/" +
           (member(*prefix, "len") ? member(*prefix, "len")->dump() : "?");
  }
  if (const json* range = member(v, "range"); range && range->is_array() && range->size() == 2) {
    return renderValue((*range)[0], quote_strings, hex_numbers, depth + 1) + "-" +
           renderValue((*range)[1], quote_strings, hex_numbers, depth + 1);
  }
  if (const json* elem = member(v, "elem")) {
    if (const json* val = member(*elem, "val")) {
      return renderValue(*val, quote_strings, hex_numbers, depth + 1);
    }
  }
  if (v.is_object() && (member(v, "meta") || member(v, "payload") || member(v, "ct") ||
                        member(v, "&") || member(v, "|"))) {
    return renderExpr(v, depth + 1);
  }
  if (v.is_null()) return "";
  return v.dump();
}

std::string renderMatch(const json& m) {
  const json* left = member(m, "left");
  const json* right = member(m, "right");
  const std::string op = stringOf(member(m, "op")).value_or("==");
  if (!left || !right) return m.dump();
  std::string out = renderExpr(*left, 0);
  const json* band = member(*left, "&");
  // "==" is implicit except after a binary operation ("mark & 0xfff == 0x111").
  if ((op != "==" && op != "in") || (band && op == "==")) out += " " + op;
  const bool mark =
      isMarkExpr(*left) || (band && band->is_array() && !band->empty() && isMarkExpr((*band)[0]));
  out += " " + renderValue(*right, isInterfaceExpr(*left), mark, 0);
  return out;
}

std::string renderNat(const std::string& kind, const json& v) {
  std::string out = kind;
  if (!v.is_object()) return out;
  if (auto family = stringOf(member(v, "family"))) out += " " + *family;
  const json* addr = member(v, "addr");
  const json* port = member(v, "port");
  if (addr || port) {
    out += " to ";
    if (addr) {
      std::string a = renderValue(*addr, false, false, 1);
      if (port && a.find(':') != std::string::npos) a = "[" + a + "]";
      out += a;
    }
    if (port) out += ":" + renderValue(*port, false, false, 1);
  }
  return out;
}

std::string renderStatement(const std::string& key, const json& v) {
  if (key == "match") return renderMatch(v);
  if (key == "counter") return "counter";
  if (key == "accept" || key == "drop" || key == "return" || key == "continue") return key;
  if (key == "jump" || key == "goto") {
    return key + " " + stringOf(member(v, "target")).value_or("?");
  }
  if (key == "redirect" || key == "dnat" || key == "snat" || key == "masquerade" ||
      key == "tproxy") {
    return renderNat(key, v);
  }
  if (key == "mangle") {
    const json* k = member(v, "key");
    const json* value = member(v, "value");
    if (k && value) {
      std::string lhs = renderExpr(*k, 1);
      if (lhs == "mark") lhs = "meta mark";
      return lhs + " set " + renderValue(*value, false, isMarkExpr(*k), 1);
    }
  }
  if (key == "xt") {
    return "xt " + stringOf(member(v, "type")).value_or("?") + " \"" +
           stringOf(member(v, "name")).value_or("?") + "\"";
  }
  if (key == "log" || key == "notrack" || key == "reject" || key == "queue") return key;
  json wrapped;
  wrapped[key] = v;
  return wrapped.dump();
}

// ---- conversion to the model -------------------------------------------

// The values on the right of a match: a set's elements or the single value.
std::vector<const json*> elementsOf(const json& right) {
  std::vector<const json*> out;
  const json* set = member(right, "set");
  const json& list = set ? *set : right;
  if (list.is_array()) {
    for (const json& x : list) {
      const json* elem = member(x, "elem");
      const json* val = elem ? member(*elem, "val") : nullptr;
      out.push_back(val ? val : &x);
    }
  } else {
    out.push_back(&list);
  }
  return out;
}

bool isNamedSetRef(const json& right) {
  auto s = stringOf(&right);
  return s && !s->empty() && (*s)[0] == '@';
}

// A numeric value or range ({"range": [a, b]}).
std::optional<std::pair<int64_t, int64_t>> numericRange(const json& v) {
  if (auto n = integerOf(&v)) return std::make_pair(*n, *n);
  if (const json* r = member(v, "range"); r && r->is_array() && r->size() == 2) {
    auto a = integerOf(&(*r)[0]);
    auto b = integerOf(&(*r)[1]);
    if (a && b && *a <= *b) return std::make_pair(*a, *b);
  }
  if (auto s = stringOf(&v)) {
    if (auto n = parseU32(*s)) return std::pair<int64_t, int64_t>{*n, *n};
  }
  return std::nullopt;
}

// Applies a relational operator to a single value: "< 1024" is [min, 1023].
std::optional<std::pair<int64_t, int64_t>> relational(const std::string& op, int64_t v,
                                                      int64_t max) {
  using Range = std::pair<int64_t, int64_t>;
  if (op == "<") return Range{0, v - 1};
  if (op == "<=") return Range{0, v};
  if (op == ">") return Range{v + 1, max};
  if (op == ">=") return Range{v, max};
  return std::nullopt;
}

Match convertMatch(const json& m) {
  Match out;
  out.kind = MatchKind::Unsupported;
  out.text = renderMatch(m);
  const json* left = member(m, "left");
  const json* right = member(m, "right");
  const std::string op = stringOf(member(m, "op")).value_or("");
  if (!left || !right) return out;
  const bool relational_op = op == "<" || op == ">" || op == "<=" || op == ">=";
  if (op != "==" && op != "!=" && op != "in" && !relational_op) return out;
  out.negated = op == "!=";

  MatchKind kind = MatchKind::Unsupported;
  if (const json* meta = member(*left, "meta")) {
    const std::string key = stringOf(member(*meta, "key")).value_or("");
    if (key == "l4proto") {
      kind = MatchKind::Protocol;
    } else if (key == "nfproto" || key == "protocol") {
      kind = MatchKind::Family;
    } else if (key == "skuid") {
      kind = MatchKind::OwnerUid;
    } else if (key == "skgid") {
      kind = MatchKind::OwnerGid;
    } else if (key == "oifname" || key == "oif") {
      kind = MatchKind::OutInterface;
    } else if (key == "iifname" || key == "iif") {
      kind = MatchKind::InInterface;
    } else if (key == "mark") {
      kind = MatchKind::Mark;
    }
  } else if (const json* payload = member(*left, "payload")) {
    const std::string proto = stringOf(member(*payload, "protocol")).value_or("");
    const std::string field = stringOf(member(*payload, "field")).value_or("");
    if (proto == "ip") out.family = Family::Ipv4;
    if (proto == "ip6") out.family = Family::Ipv6;
    if (proto == "tcp" || proto == "udp") out.l4 = proto;
    if ((proto == "ip" || proto == "ip6") && (field == "saddr" || field == "daddr")) {
      kind = field == "saddr" ? MatchKind::SourceAddress : MatchKind::DestinationAddress;
    } else if ((proto == "tcp" || proto == "udp" || proto == "th") &&
               (field == "sport" || field == "dport")) {
      kind = field == "sport" ? MatchKind::SourcePort : MatchKind::DestinationPort;
    } else if ((proto == "ip" && field == "protocol") || (proto == "ip6" && field == "nexthdr")) {
      kind = MatchKind::Protocol;
    }
  } else if (const json* ct = member(*left, "ct")) {
    if (stringOf(member(*ct, "key")).value_or("") == "state") kind = MatchKind::ConnState;
  } else if (const json* band = member(*left, "&"); band && band->is_array() && band->size() == 2) {
    if (isMarkExpr((*band)[0]) && member((*band)[0], "meta")) {
      if (auto mask = u32Of((*band)[1])) {
        kind = MatchKind::Mark;
        out.mask = *mask;
      }
    }
  }
  if (kind == MatchKind::Unsupported) return out;  // dependencies kept above

  if (isNamedSetRef(*right)) {
    out.kind = kind;
    out.unresolved = true;
    return out;
  }
  const std::vector<const json*> elements = elementsOf(*right);
  if (elements.empty()) return out;
  if (relational_op && elements.size() != 1) return out;

  for (const json* e : elements) {
    switch (kind) {
      case MatchKind::Protocol: {
        std::string name;
        if (auto s = stringOf(e)) {
          name = toLower(*s);
        } else if (auto n = integerOf(e)) {
          name = *n == 6 ? "tcp" : *n == 17 ? "udp" : std::to_string(*n);
        } else {
          return out;
        }
        out.names.push_back(name);
        break;
      }
      case MatchKind::Family: {
        auto s = stringOf(e);
        if (!s) return out;
        if (*s == "ipv4" || *s == "ip") {
          out.names.push_back("ipv4");
        } else if (*s == "ipv6" || *s == "ip6") {
          out.names.push_back("ipv6");
        } else {
          out.names.push_back(*s);
        }
        break;
      }
      case MatchKind::SourceAddress:
      case MatchKind::DestinationAddress: {
        std::optional<Cidr> cidr;
        if (auto s = stringOf(e)) {
          cidr = Cidr::parse(*s);
        } else if (const json* p = member(*e, "prefix")) {
          auto addr = stringOf(member(*p, "addr"));
          auto len = integerOf(member(*p, "len"));
          if (addr && len && *len >= 0 && *len <= 128) {
            cidr = Cidr::parse(*addr + "/" + std::to_string(*len));
          }
        }
        if (!cidr) return out;
        if (out.family && cidr->isV4() != (*out.family == Family::Ipv4)) return out;
        out.cidrs.push_back(*cidr);
        break;
      }
      case MatchKind::InInterface:
      case MatchKind::OutInterface: {
        auto s = stringOf(e);
        if (!s) return out;
        out.names.push_back(*s);
        break;
      }
      case MatchKind::SourcePort:
      case MatchKind::DestinationPort: {
        auto r = numericRange(*e);
        if (!r || r->first < 0 || r->second > 65535) return out;
        if (relational_op) r = relational(op, r->first, 65535);
        if (!r || r->first < 0 || r->second > 65535) return out;
        if (r->first <= r->second) {
          out.ports.push_back({static_cast<uint16_t>(r->first), static_cast<uint16_t>(r->second)});
        }
        break;
      }
      case MatchKind::OwnerUid:
      case MatchKind::OwnerGid: {
        if (auto s = stringOf(e); s && !parseU32(*s)) {
          if (relational_op || s->empty()) return out;
          out.ids.push_back(OwnerId{0, 0, *s});  // a user/group name: not resolved here
          break;
        }
        auto r = numericRange(*e);
        if (!r || r->first < 0 || r->second > 0xffffffffLL) return out;
        if (relational_op) r = relational(op, r->first, 0xffffffffLL);
        if (!r || r->first < 0 || r->second > 0xffffffffLL) return out;
        if (r->first <= r->second) {
          out.ids.push_back(
              OwnerId{static_cast<uint32_t>(r->first), static_cast<uint32_t>(r->second), ""});
        }
        break;
      }
      case MatchKind::Mark: {
        if (relational_op) return out;
        auto v = u32Of(*e);
        if (!v) return out;
        out.values.push_back(*v);
        break;
      }
      case MatchKind::ConnState: {
        if (e->is_array()) {
          for (const json& s : *e) {
            if (!s.is_string()) return out;
            out.names.push_back(toLower(s.get<std::string>()));
          }
        } else if (auto s = stringOf(e)) {
          out.names.push_back(toLower(*s));
        } else {
          return out;
        }
        break;
      }
      default:
        return out;
    }
  }
  if (relational_op && kind != MatchKind::SourcePort && kind != MatchKind::DestinationPort &&
      kind != MatchKind::OwnerUid && kind != MatchKind::OwnerGid) {
    return out;
  }
  out.kind = kind;
  return out;
}

std::optional<PortRange> portsOf(const json* port) {
  if (!port) return std::nullopt;
  auto r = numericRange(*port);
  if (!r || r->first < 0 || r->second > 65535) return std::nullopt;
  return PortRange{static_cast<uint16_t>(r->first), static_cast<uint16_t>(r->second)};
}

// Converts one statement of a rule into a match or an action. An unknown
// statement makes the rule opaque: it may change what follows it.
void convertStatement(const std::string& key, const json& v, Rule& rule) {
  Action a;
  a.text = renderStatement(key, v);
  if (key == "match") {
    rule.matches.push_back(convertMatch(v));
    return;
  }
  if (key == "counter" || key == "log" || key == "notrack") {
    if (key != "counter") {
      a.kind = ActionKind::NoOp;
      rule.actions.push_back(std::move(a));
    }
    return;
  }
  if (key == "accept") {
    a.kind = ActionKind::Accept;
  } else if (key == "drop") {
    a.kind = ActionKind::Drop;
  } else if (key == "reject") {
    a.kind = ActionKind::Reject;
  } else if (key == "return") {
    a.kind = ActionKind::Return;
  } else if (key == "continue") {
    a.kind = ActionKind::NoOp;
  } else if (key == "jump" || key == "goto") {
    if (auto target = stringOf(member(v, "target"))) {
      a.kind = key == "jump" ? ActionKind::Jump : ActionKind::Goto;
      a.chain = *target;
    }
  } else if (key == "redirect" || key == "masquerade") {
    bool ok = v.is_null() || v.is_object();
    if (const json* port = member(v, "port")) {
      a.ports = portsOf(port);
      ok = ok && a.ports.has_value();
    }
    if (ok) a.kind = key == "redirect" ? ActionKind::Redirect : ActionKind::Masquerade;
  } else if (key == "dnat" || key == "snat") {
    bool ok = v.is_object();
    if (const json* addr = member(v, "addr")) {
      auto text = stringOf(addr);
      std::optional<Address> parsed;
      if (text) parsed = Address::parse(*text);
      if (parsed) {
        a.address = *parsed;
      } else {
        ok = false;  // a map, a range or an expression: not modelled
      }
    }
    if (const json* port = member(v, "port")) {
      a.ports = portsOf(port);
      ok = ok && a.ports.has_value();
    }
    if (ok && (a.address || a.ports)) a.kind = key == "dnat" ? ActionKind::Dnat : ActionKind::Snat;
  } else if (key == "tproxy") {
    a.ports = portsOf(member(v, "port"));
    a.kind = ActionKind::Tproxy;
  } else if (key == "mangle") {
    const json* k = member(v, "key");
    const json* value = member(v, "value");
    if (k && value) {
      if (isMarkExpr(*k) && member(*k, "meta")) {
        if (auto mark = u32Of(*value)) {
          a.kind = ActionKind::SetMark;
          a.mark_value = *mark;
          a.mark_mask = 0xffffffff;
        }
      } else {
        a.kind = ActionKind::NoOp;  // ct mark/zone, priority...: no effect on the NAT decision
      }
    }
  } else if (key == "xt") {
    if (stringOf(member(v, "type")).value_or("") == "match") {
      Match m;
      m.kind = MatchKind::Unsupported;
      m.text = a.text;
      rule.matches.push_back(std::move(m));
      return;
    }
  } else if (key == "limit" || key == "quota") {
    Match m;  // conditions whose outcome depends on traffic history
    m.kind = MatchKind::Unsupported;
    m.text = a.text;
    rule.matches.push_back(std::move(m));
    return;
  } else {
    rule.opaque = true;  // an unknown statement: it may change what follows
  }
  rule.actions.push_back(std::move(a));
}

std::optional<Family> familyOf(const std::string& name) {
  if (name == "ip") return Family::Ipv4;
  if (name == "ip6") return Family::Ipv6;
  if (name == "inet") return Family::Inet;
  return std::nullopt;
}

std::optional<int> priorityOf(const json* prio) {
  if (auto n = integerOf(prio)) {
    if (*n < std::numeric_limits<int>::min() || *n > std::numeric_limits<int>::max()) {
      return std::nullopt;
    }
    return static_cast<int>(*n);
  }
  static const std::map<std::string, int> kNamed = {{"raw", -300},    {"mangle", -150},
                                                    {"dstnat", -100}, {"filter", 0},
                                                    {"security", 50}, {"srcnat", 100}};
  if (auto s = stringOf(prio)) {
    if (auto it = kNamed.find(*s); it != kNamed.end()) return it->second;
  }
  return std::nullopt;
}

class NftParser {
 public:
  ParseResult run(std::string_view text) {
    if (text.size() > kMaxInputBytes) {
      return ParseResult::failure(0, "input of " + std::to_string(text.size()) +
                                         " bytes exceeds the limit of " +
                                         std::to_string(kMaxInputBytes) + " bytes");
    }
    if (nestingDepth(text) > kMaxJsonDepth) {
      return ParseResult::failure(
          0, "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    }
    json doc;
    try {
      doc = json::parse(text.begin(), text.end());
    } catch (const json::parse_error& e) {
      std::string what = e.what();
      if (auto close = what.find("] "); close != std::string::npos) what = what.substr(close + 2);
      return ParseResult::failure(lineAt(text, e.byte > 0 ? e.byte - 1 : 0),
                                  "invalid JSON: " + what);
    } catch (const std::exception& e) {
      return ParseResult::failure(0, std::string("invalid JSON: ") + e.what());
    }
    const json* items = member(doc, "nftables");
    if (!items || !items->is_array()) {
      return ParseResult::failure(1, "not nftables JSON: no top-level \"nftables\" array");
    }
    set_.backend = Backend::Nftables;
    set_.covers_ipv4 = true;
    set_.covers_ipv6 = true;
    try {
      size_t index = 0;
      for (const json& item : *items) {
        if (auto error = handleItem(item)) {
          return ParseResult::failure(0, "nftables[" + std::to_string(index) + "]: " + *error);
        }
        ++index;
      }
    } catch (const std::exception& e) {
      // Accessors above check types first; this is a last line of defence.
      return ParseResult::failure(0, std::string("unexpected JSON shape: ") + e.what());
    }
    ParseResult result;
    result.rules = std::move(set_);
    return result;
  }

 private:
  Table* findTable(Family family, const std::string& name) {
    for (Table& t : set_.tables) {
      if (t.family == family && t.name == name) return &t;
    }
    return nullptr;
  }

  // Locates the table an element names; nullopt-with-skip for families
  // this model ignores (bridge, arp, netdev).
  std::optional<std::string> locate(const json& v, const char* what, Table*& table, bool& skip) {
    table = nullptr;
    skip = false;
    auto family_name = stringOf(member(v, "family"));
    auto table_name = stringOf(member(v, "table"));
    if (!family_name || !table_name) return std::string(what) + " without family or table";
    auto family = familyOf(*family_name);
    if (!family) {
      skip = true;
      return std::nullopt;
    }
    table = findTable(*family, *table_name);
    if (!table) {
      return std::string(what) + " in unknown table " + *family_name + " " + *table_name;
    }
    return std::nullopt;
  }

  std::optional<std::string> handleItem(const json& item) {
    std::string key;
    const json* v = nullptr;
    if (!singleMember(item, key, v)) return "expected an object with one member";
    if (key == "table") {
      auto family_name = stringOf(member(*v, "family"));
      auto name = stringOf(member(*v, "name"));
      if (!family_name || !name) return "table without family or name";
      auto family = familyOf(*family_name);
      if (!family) return std::nullopt;  // bridge, arp, netdev: not on this path
      if (findTable(*family, *name)) return "duplicate table " + *family_name + " " + *name;
      Table t;
      t.name = *name;
      t.family = *family;
      set_.tables.push_back(std::move(t));
      return std::nullopt;
    }
    if (key == "chain") {
      Table* table = nullptr;
      bool skip = false;
      if (auto error = locate(*v, "chain", table, skip)) return error;
      if (skip) return std::nullopt;
      auto name = stringOf(member(*v, "name"));
      if (!name) return "chain without a name";
      if (table->find(*name)) return "duplicate chain " + *name;
      Chain c;
      c.name = *name;
      if (auto hook = stringOf(member(*v, "hook"))) {
        c.base = true;
        c.hook = *hook;
        c.type = stringOf(member(*v, "type")).value_or("filter");
        auto prio = priorityOf(member(*v, "prio"));
        if (!prio) return "base chain " + *name + " has a priority this parser does not know";
        c.priority = *prio;
        c.policy = stringOf(member(*v, "policy")).value_or("accept") == "drop"
                       ? ChainPolicy::Drop
                       : ChainPolicy::Accept;
      }
      table->chains.push_back(std::move(c));
      return std::nullopt;
    }
    if (key == "rule") {
      Table* table = nullptr;
      bool skip = false;
      if (auto error = locate(*v, "rule", table, skip)) return error;
      if (skip) return std::nullopt;
      auto chain_name = stringOf(member(*v, "chain"));
      if (!chain_name) return "rule without a chain";
      Chain* chain = table->find(*chain_name);
      if (!chain) return "rule in unknown chain " + *chain_name;
      if (++rule_count_ > kMaxRules) return "more than " + std::to_string(kMaxRules) + " rules";
      const json* exprs = member(*v, "expr");
      if (!exprs || !exprs->is_array()) return "rule without an expr array";

      Rule rule;
      rule.backend = Backend::Nftables;
      rule.family = table->family;
      rule.table = table->name;
      rule.chain = chain->name;
      if (auto handle = integerOf(member(*v, "handle")); handle && *handle > 0) {
        rule.handle = static_cast<uint64_t>(*handle);
      }
      rule.comment = stringOf(member(*v, "comment")).value_or("");
      std::string text;
      bool changed_packet = false;  // a statement before this one may have changed the packet
      for (const json& stmt : *exprs) {
        std::string stmt_key;
        const json* stmt_value = nullptr;
        if (!singleMember(stmt, stmt_key, stmt_value)) {
          rule.opaque = true;
          text += (text.empty() ? "" : " ") + stmt.dump();
          continue;
        }
        // Matches are evaluated against the packet as it entered the rule:
        // one after a statement that changes the packet (`meta mark set`)
        // would need ordering this model does not keep.
        if (stmt_key == "match" && changed_packet) rule.opaque = true;
        const size_t actions_before = rule.actions.size();
        convertStatement(stmt_key, *stmt_value, rule);
        if (rule.actions.size() > actions_before) {
          const ActionKind kind = rule.actions.back().kind;
          changed_packet =
              changed_packet || kind == ActionKind::SetMark || kind == ActionKind::Unsupported;
        }
        text += (text.empty() ? "" : " ") + renderStatement(stmt_key, *stmt_value);
      }
      if (!rule.comment.empty()) text += " comment \"" + rule.comment + "\"";
      rule.text = std::move(text);
      chain->rules.push_back(std::move(rule));
      return std::nullopt;
    }
    return std::nullopt;  // metainfo, sets, maps, counters, flowtables: not needed
  }

  RuleSet set_;
  size_t rule_count_ = 0;
};

}  // namespace

ParseResult parseNftJson(std::string_view text) { return NftParser().run(text); }

}  // namespace cw::rules
