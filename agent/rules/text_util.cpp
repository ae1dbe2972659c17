#include "rules/text_util.h"

#include <cctype>
#include <charconv>

namespace cw::rules {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string toLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t end = s.find(sep, pos);
    if (end == std::string_view::npos) end = s.size();
    if (end > pos) out.push_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

namespace {

std::optional<uint32_t> parseBase(std::string_view s, int base) {
  if (s.empty() || !std::isxdigit(static_cast<unsigned char>(s.front()))) return std::nullopt;
  uint32_t value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value, base);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

}  // namespace

std::optional<uint32_t> parseU32(std::string_view s) { return parseBase(s, 10); }

std::optional<uint16_t> parseU16(std::string_view s) {
  auto v = parseU32(s);
  if (!v || *v > 65535) return std::nullopt;
  return static_cast<uint16_t>(*v);
}

std::optional<uint32_t> parseU32Auto(std::string_view s) {
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
    return parseBase(s.substr(2), 16);
  return parseBase(s, 10);
}

}  // namespace cw::rules
