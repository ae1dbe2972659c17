#include "k8s/label_selector.h"

#include <algorithm>
#include <cctype>

namespace cw::k8s {
namespace {

bool isAlnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

// [A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?, at most 63 characters.
bool isLabelName(std::string_view s) {
  if (s.empty() || s.size() > 63 || !isAlnum(s.front()) || !isAlnum(s.back())) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return isAlnum(c) || c == '-' || c == '_' || c == '.'; });
}

// Lower-case RFC 1123 subdomain, at most 253 characters.
bool isDnsSubdomain(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t dot = std::min(s.find('.', start), s.size());
    const std::string_view part = s.substr(start, dot - start);
    if (part.empty() || part.size() > 63 || part.front() == '-' || part.back() == '-') return false;
    for (char c : part) {
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
    }
    start = dot + 1;
  }
  return true;
}

bool isQualifiedName(std::string_view key) {
  const auto slash = key.find('/');
  if (slash == std::string_view::npos) return isLabelName(key);
  return isDnsSubdomain(key.substr(0, slash)) && isLabelName(key.substr(slash + 1));
}

bool isLabelValue(std::string_view value) { return value.empty() || isLabelName(value); }

// A hand-written scanner for this small grammar (no library parses it).
class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  std::vector<LabelRequirement> parseAll() {
    std::vector<LabelRequirement> out;
    skipSpace();
    if (atEnd()) return out;
    while (true) {
      out.push_back(parseRequirement());
      skipSpace();
      if (atEnd()) break;
      if (!consume(',')) fail("expected ',' or the end");
      skipSpace();
      if (atEnd()) fail("expected a requirement after ','");
    }
    return out;
  }

 private:
  LabelRequirement parseRequirement() {
    LabelRequirement req;
    if (consume('!')) {
      skipSpace();
      req.key = parseKey();
      req.op = LabelRequirement::Op::DoesNotExist;
      return req;
    }
    req.key = parseKey();
    skipSpace();
    if (atEnd() || peek() == ',') {
      req.op = LabelRequirement::Op::Exists;
      return req;
    }
    if (consume('=')) {
      consume('=');
      req.op = LabelRequirement::Op::Equals;
      req.values.push_back(parseValue());
    } else if (consume('!')) {
      if (!consume('=')) fail("expected '=' after '!'");
      req.op = LabelRequirement::Op::NotEquals;
      req.values.push_back(parseValue());
    } else if (peek() == '<' || peek() == '>') {
      fail("the operators '<' and '>' are not supported for labels");
    } else {
      const size_t word_at = pos_;
      const std::string word = parseWord();
      if (word == "in") {
        req.op = LabelRequirement::Op::In;
      } else if (word == "notin") {
        req.op = LabelRequirement::Op::NotIn;
      } else {
        pos_ = word_at;
        fail("expected an operator (=, ==, !=, in, notin), ',' or the end");
      }
      req.values = parseValueSet(word);
    }
    return req;
  }

  std::vector<std::string> parseValueSet(const std::string& op) {
    skipSpace();
    if (!consume('(')) fail("expected '(' after '" + op + "'");
    std::vector<std::string> values;
    while (true) {
      values.push_back(parseValue());
      skipSpace();
      if (consume(')')) break;
      if (!consume(',')) fail("expected ',' or ')' in the value set");
    }
    std::sort(values.begin(), values.end());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    if (values.size() == 1 && values.front().empty()) {
      fail("the value set of '" + op + "' is empty");
    }
    return values;
  }

  std::string parseKey() {
    const size_t at = pos_;
    std::string key = parseWord();
    if (key.empty()) fail("expected a label key");
    if (!isQualifiedName(key)) {
      pos_ = at;
      fail("invalid label key \"" + key +
           "\" (a name of at most 63 characters [A-Za-z0-9_.-], starting and ending with a "
           "letter or digit, optionally prefixed by a DNS subdomain and '/')");
    }
    return key;
  }

  std::string parseValue() {
    skipSpace();
    const size_t at = pos_;
    std::string value = parseWord();
    if (!isLabelValue(value)) {
      pos_ = at;
      fail("invalid label value \"" + value +
           "\" (at most 63 characters [A-Za-z0-9_.-], starting and ending with a letter or "
           "digit)");
    }
    return value;
  }

  // Characters up to the next space or operator character.
  std::string parseWord() {
    const size_t start = pos_;
    while (!atEnd() && !isSpecial(peek())) ++pos_;
    return std::string(text_.substr(start, pos_ - start));
  }

  static bool isSpecial(char c) {
    return std::isspace(static_cast<unsigned char>(c)) != 0 || c == ',' || c == '(' || c == ')' ||
           c == '=' || c == '!' || c == '<' || c == '>';
  }

  void skipSpace() {
    while (!atEnd() && std::isspace(static_cast<unsigned char>(peek())) != 0) ++pos_;
  }
  bool atEnd() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }
  bool consume(char c) {
    if (atEnd() || peek() != c) return false;
    ++pos_;
    return true;
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw SelectorError("label selector \"" + std::string(text_) + "\": " + what + " at position " +
                        std::to_string(pos_));
  }

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace

bool LabelRequirement::matches(const Labels& labels) const {
  const auto it = labels.find(key);
  const bool has = it != labels.end();
  const auto inValues = [&] {
    return has && std::find(values.begin(), values.end(), it->second) != values.end();
  };
  switch (op) {
    case Op::Equals:
    case Op::In:
      return inValues();
    case Op::NotEquals:
    case Op::NotIn:
      return !inValues();
    case Op::Exists:
      return has;
    case Op::DoesNotExist:
      return !has;
  }
  return false;
}

std::string LabelRequirement::str() const {
  const auto joined = [this] {
    std::string out;
    for (const std::string& v : values) out += (out.empty() ? "" : ",") + v;
    return out;
  };
  switch (op) {
    case Op::Equals:
      return key + "=" + values.front();
    case Op::NotEquals:
      return key + "!=" + values.front();
    case Op::In:
      return key + " in (" + joined() + ")";
    case Op::NotIn:
      return key + " notin (" + joined() + ")";
    case Op::Exists:
      return key;
    case Op::DoesNotExist:
      return "!" + key;
  }
  return key;
}

LabelSelector LabelSelector::parse(std::string_view text) {
  LabelSelector selector;
  selector.requirements_ = Parser(text).parseAll();
  return selector;
}

bool LabelSelector::matches(const Labels& labels) const {
  return std::all_of(requirements_.begin(), requirements_.end(),
                     [&](const LabelRequirement& r) { return r.matches(labels); });
}

std::string LabelSelector::str() const {
  std::string out;
  for (const LabelRequirement& r : requirements_) out += (out.empty() ? "" : ",") + r.str();
  return out;
}

}  // namespace cw::k8s
