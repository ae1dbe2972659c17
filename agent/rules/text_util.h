// Small string helpers shared by the rule parsers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cw::rules {

std::string_view trim(std::string_view s);
std::string toLower(std::string_view s);
// Splits on `sep`, dropping empty parts.
std::vector<std::string_view> split(std::string_view s, char sep);
// Decimal only, no sign, no spaces; nullopt when out of range.
std::optional<uint16_t> parseU16(std::string_view s);
std::optional<uint32_t> parseU32(std::string_view s);
// Decimal, or hexadecimal with a 0x prefix (marks).
std::optional<uint32_t> parseU32Auto(std::string_view s);

}  // namespace cw::rules
