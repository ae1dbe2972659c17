#include "logging.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>

namespace cw::logging {
namespace {

std::atomic<Format> g_format{Format::Text};

bool needsQuotes(std::string_view s) {
  if (s.empty()) return true;
  for (char c : s) {
    if (c == ' ' || c == '"' || c == '=' || c == '\t' || c == '\n') return true;
  }
  return false;
}

void appendTextValue(std::string& out, const Fields& v) {
  if (v.is_string()) {
    const auto& s = v.get_ref<const std::string&>();
    if (needsQuotes(s)) {
      out += nlohmann::json(s).dump();
    } else {
      out += s;
    }
  } else {
    out += v.dump();
  }
}

}  // namespace

std::optional<Format> parseFormat(std::string_view text) {
  if (text == "text") return Format::Text;
  if (text == "json") return Format::Json;
  return std::nullopt;
}

std::optional<spdlog::level::level_enum> parseLevel(std::string_view text) {
  if (text == "trace") return spdlog::level::trace;
  if (text == "debug") return spdlog::level::debug;
  if (text == "info") return spdlog::level::info;
  if (text == "warn" || text == "warning") return spdlog::level::warn;
  if (text == "error") return spdlog::level::err;
  return std::nullopt;
}

void init(Format format, spdlog::level::level_enum level) {
  g_format = format;
  auto logger = spdlog::stdout_logger_mt("capturewatch");
  if (format == Format::Json) {
    logger->set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v)",
                        spdlog::pattern_time_type::utc);
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %-5l %v", spdlog::pattern_time_type::utc);
  }
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);  // log lines are the product: never buffer them
  spdlog::set_default_logger(logger);
}

bool enabled(spdlog::level::level_enum level) { return spdlog::default_logger_raw()->should_log(level); }

std::string render(Format format, std::string_view msg, const Fields& fields) {
  std::string out;
  if (format == Format::Json) {
    // The pattern opened the object with ts and level; add msg and fields.
    out += "\"msg\":";
    out += nlohmann::json(std::string(msg)).dump();
    for (const auto& [key, value] : fields.items()) {
      out += ',';
      out += nlohmann::json(key).dump();
      out += ':';
      out += value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    out += '}';
    return out;
  }
  out += msg;
  for (const auto& [key, value] : fields.items()) {
    out += ' ';
    out += key;
    out += '=';
    appendTextValue(out, value);
  }
  return out;
}

void write(spdlog::level::level_enum level, std::string_view msg, const Fields& fields) {
  auto* logger = spdlog::default_logger_raw();
  if (!logger->should_log(level)) return;
  logger->log(level, "{}", render(g_format.load(std::memory_order_relaxed), msg, fields));
}

}  // namespace cw::logging
