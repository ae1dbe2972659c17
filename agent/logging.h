// Structured logging on spdlog: a message plus key/value fields, rendered
// as "msg key=value ..." (text) or one JSON object per line (json).
#pragma once

#include <spdlog/common.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace cw::logging {

enum class Format { Text, Json };

// Fields keep their insertion order in the output.
using Fields = nlohmann::ordered_json;

std::optional<Format> parseFormat(std::string_view text);
std::optional<spdlog::level::level_enum> parseLevel(std::string_view text);

// Sets up the process logger on stdout. Call once, before other threads log.
void init(Format format, spdlog::level::level_enum level);

bool enabled(spdlog::level::level_enum level);

// Renders msg and fields for the given format (exposed for tests).
std::string render(Format format, std::string_view msg, const Fields& fields);

void write(spdlog::level::level_enum level, std::string_view msg,
           const Fields& fields = Fields::object());

inline void debug(std::string_view msg, const Fields& f = Fields::object()) {
  write(spdlog::level::debug, msg, f);
}
inline void info(std::string_view msg, const Fields& f = Fields::object()) {
  write(spdlog::level::info, msg, f);
}
inline void warn(std::string_view msg, const Fields& f = Fields::object()) {
  write(spdlog::level::warn, msg, f);
}
inline void error(std::string_view msg, const Fields& f = Fields::object()) {
  write(spdlog::level::err, msg, f);
}

}  // namespace cw::logging
