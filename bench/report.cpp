#include "report.h"

#include "stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace cw::bench {
namespace {

// The rate budget: agent-on rate at least this share of agent-off.
constexpr double kRateBudget = 0.97;

using json = nlohmann::ordered_json;

template <typename... Args>
std::string fmt(const char* f, Args... args) {
  char buf[256];
  std::snprintf(buf, sizeof buf, f, args...);
  return buf;
}

std::string thousands(double v) {
  std::string s = std::to_string(static_cast<long long>(std::llround(v)));
  for (int i = static_cast<int>(s.size()) - 3; i > 0 && s[static_cast<size_t>(i) - 1] != '-'; i -= 3) {
    s.insert(static_cast<size_t>(i), ",");
  }
  return s;
}

std::string latency(double s) {
  if (s < 0) return "-";
  if (s < 0.001) return fmt("%.0f us", s * 1e6);
  return fmt("%.1f ms", s * 1e3);
}

void budget(json& out, const std::string& name, double value, double limit, bool higher_is_better,
            const std::string& unit, const std::string& note = "") {
  json b;
  b["name"] = name;
  b["value"] = value;
  b["limit"] = limit;
  b["unit"] = unit;
  b["pass"] = higher_is_better ? value >= limit : value <= limit;
  if (!note.empty()) b["note"] = note;
  out.push_back(b);
}

// A path's same-round interval, as the summary carries it (bench/main.cpp).
RatioInterval intervalOf(const json& summary) {
  RatioInterval ci;
  ci.geomean = summary.value("ratio_paired_geomean", 0.0);
  if (summary.contains("ratio_paired_ci95")) {
    ci.lo = summary["ratio_paired_ci95"][0].get<double>();
    ci.hi = summary["ratio_paired_ci95"][1].get<double>();
  }
  ci.n = summary.value("ratio_paired_rounds", size_t{0});
  return ci;
}

}  // namespace

json poolRuns(const std::vector<json>& results) {
  json out = json::object();
  std::map<std::string, std::vector<double>> ratios;
  std::map<std::string, size_t> runs;
  for (const json& r : results) {
    if (!r.contains("summary")) continue;
    for (const auto& [path, s] : r["summary"].items()) {
      if (!s.contains("ratio_per_round")) continue;
      for (double x : s["ratio_per_round"].get<std::vector<double>>()) ratios[path].push_back(x);
      ++runs[path];
    }
  }
  for (const auto& [path, v] : ratios) {
    const RatioInterval ci = pairedRatioInterval(v);
    out[path] = {{"runs", runs[path]},
                 {"pairs", ci.n},
                 {"geomean", ci.geomean},
                 {"ci95", {ci.lo, ci.hi}},
                 {"decision", rateDecision(ci, kRateBudget)}};
  }
  return out;
}

json budgets(const json& result, int grace_ms) {
  json out = json::array();
  if (result.contains("summary")) {
    for (const auto& [path, s] : result["summary"].items()) {
      // Established only when the whole 95% interval of the same-round
      // pairs is at or above the limit: one run's median can land on either
      // side by noise alone.
      const RatioInterval ci = intervalOf(s);
      budget(
          out, "agent-on rate / agent-off rate (" + path + ")", ci.geomean, kRateBudget, true,
          "ratio",
          fmt("same-round pairs' geometric mean, 95%% interval %.1f-%.1f%% over %zu rounds (%s); "
              "ratio of the medians %.1f%%",
              ci.lo * 100, ci.hi * 100, ci.n, rateDecision(ci, kRateBudget),
              s["ratio"].get<double>() * 100));
      out.back()["pass"] = ci.n >= 2 && ci.lo >= kRateBudget;
    }
    double lost = 0, missing = 0, mis = 0;
    for (const auto& [path, s] : result["summary"].items()) {
      lost += s["events_lost"].get<double>();
      missing += s["missing_verdicts"].get<double>();
      mis += s["misclassified_verdicts"].get<double>();
    }
    budget(out, "events lost at the max rate", lost, 0, false, "events");
    budget(out, "verdicts missing or misclassified at the max rate", missing + mis, 0, false,
           "connections");
    for (const auto& [path, s] : result["summary"].items()) {
      budget(out, "agent CPU per 10k conn/s (" + path + ")", s["agent_core_pct_per_10k_per_s"], 5.0,
             false, "% of one core");
    }
    for (const auto& [path, s] : result["summary"].items()) {
      budget(out, "verdict latency p99 (" + path + ")", s["latency_p99_s"].get<double>() * 1e3,
             grace_ms + 50.0, false, "ms",
             "share within " + std::to_string(grace_ms + 50) +
                 " ms (exact, from the histogram's bucket): " +
                 fmt("%.4f", s["latency_within_grace_plus_50ms"].get<double>()));
    }
  }
  if (result.contains("memory") && result["memory"].contains("real")) {
    // The budget is for 100k tracked sockets; each level is shown.
    for (const auto& level : result["memory"]["real"]) {
      double peak = 0;
      uint64_t held = 0;
      for (const std::string path : {"captured", "bypassed"}) {
        if (!level.contains(path)) continue;
        peak = std::max(peak, level[path].value("agent_peak_rss_mib", 0.0));
        held = std::max<uint64_t>(held, level[path].value("held", 0));
      }
      budget(out, "agent peak RSS with " + thousands(static_cast<double>(held)) + " tracked sockets",
             peak, 64, false, "MiB");
    }
  }
  if (result.contains("micro")) {
    double min_rate = -1;
    std::string which;
    for (const auto& m : result["micro"]) {
      const std::string name = m["name"];
      if (name.rfind("BM_Correlator", 0) != 0) continue;
      const double r = m["items_per_second"];
      if (min_rate < 0 || r < min_rate) {
        min_rate = r;
        which = name;
      }
    }
    if (min_rate >= 0) {
      budget(out, "correlator events/s per core (slowest stream: " + which + ")", min_rate, 2e6, true,
             "events/s");
    }
  }
  return out;
}

json costShare(const json& result) {
  json out = json::object();
  if (!result.contains("kernel_cost")) return out;
  for (const auto& [path, k] : result["kernel_cost"].items()) {
    const double machine_ns = k.value("machine_ns_per_connection", 0.0);
    if (machine_ns <= 0) continue;
    const double share = k["share"].get<double>();
    out[path] = {{"machine_ns_per_connection", machine_ns},
                 {"bpf_ns_per_connection", k["bpf_ns_per_connection"]},
                 {"agent_ns_per_connection", k["agent_ns_per_connection"]},
                 {"share", share},
                 {"ratio_expected", 1 - share},
                 {"ns_left_at_97_percent", 0.03 * machine_ns},
                 {"pairs", k["pairs"].size()}};
    if (k.contains("share_less_floor")) {
      const double less = k["share_less_floor"].get<double>();
      out[path].update(
          json{{"stats_floor_ns_per_run", k["stats_floor_ns_per_run"]},
               {"bpf_ns_per_connection_less_floor", k["bpf_ns_per_connection_less_floor"]},
               {"share_less_floor", less},
               {"ratio_expected_less_floor", 1 - less}});
    }
  }
  return out;
}

void printTable(const json& r, std::ostream& out) {
  const json& m = r["machine"];
  out << "\ncapturewatch benchmark  " << r["started"].get<std::string>() << "  (" << m["nproc"] << " x "
      << m["cpu_model"].get<std::string>() << ", Linux " << m["kernel"].get<std::string>() << ", "
      << m["memory"].get<std::string>() << ")\n";
  const json& o = r["options"];
  out << "storms: " << o["rounds"] << " rounds x " << o["duration_s"] << " s per path, agent off/on alternated; "
      << o["threads"] << " generator threads x " << o["concurrency"] << " connections in flight\n\n";

  if (r.contains("summary")) {
    char line[512];
    std::snprintf(line, sizeof line, "%-9s %11s %11s %7s %8s %5s %6s %6s %9s %8s %8s %9s %9s\n",
                  "path", "off conn/s", "on conn/s", "on/off", "ev/conn", "lost", "miss", "wrong",
                  "cpu s/1M", "%core/", "peakRSS", "lat p50", "lat p99");
    out << line;
    std::snprintf(line, sizeof line, "%-9s %11s %11s %7s %8s %5s %6s %6s %9s %8s %8s %9s %9s\n", "", "(median)",
                  "(median)", "", "", "", "", "", "", "10k/s", "MiB", "", "");
    out << line;
    for (const auto& [path, s] : r["summary"].items()) {
      std::snprintf(line, sizeof line, "%-9s %11s %11s %6.1f%% %8.2f %5.0f %6.0f %6.0f %9.2f %7.2f%% %8.1f %9s %9s\n",
                    path.c_str(), thousands(s["rate_off_median"]).c_str(),
                    thousands(s["rate_on_median"]).c_str(), s["ratio"].get<double>() * 100,
                    s["events_per_connection"].get<double>(), s["events_lost"].get<double>(),
                    s["missing_verdicts"].get<double>(), s["misclassified_verdicts"].get<double>(),
                    s["agent_cpu_s_per_million"].get<double>(),
                    s["agent_core_pct_per_10k_per_s"].get<double>(), s["agent_peak_rss_mib"].get<double>(),
                    latency(s["latency_p50_s"]).c_str(), latency(s["latency_p99_s"]).c_str());
      out << line;
    }
    out << "  on/off of the same round, geometric mean and its 95% interval:";
    for (const auto& [path, s] : r["summary"].items()) {
      const RatioInterval ci = intervalOf(s);
      if (ci.n == 0) continue;
      out << "  " << path << " " << fmt("%.1f%%", ci.geomean * 100)
          << (ci.n >= 2 ? fmt(" [%.1f-%.1f%%]", ci.lo * 100, ci.hi * 100) : std::string(" [-]"));
    }
    out << "\n";
    out << "  on/off of the same round (median, min..max):";
    for (const auto& [path, s] : r["summary"].items()) {
      if (!s.contains("ratio_per_round") || s["ratio_per_round"].empty()) continue;
      const auto v = s["ratio_per_round"].get<std::vector<double>>();
      out << "  " << path << " " << fmt("%.1f%%", s["ratio_paired_median"].get<double>() * 100) << " ("
          << fmt("%.0f", *std::min_element(v.begin(), v.end()) * 100) << ".."
          << fmt("%.0f%%)", *std::max_element(v.begin(), v.end()) * 100);
    }
    out << "\n";
    out << "  state changes the kernel skipped (program already running on that CPU; verdicts above tell\n"
           "  whether any mattered):";
    for (const auto& [path, s] : r["summary"].items()) {
      out << "  " << path << " " << fmt("%.0f", s.value("bpf_runs_skipped", 0.0));
    }
    out << "\n";
    out << "  (ev/conn: ring-buffer records per connection; miss/wrong: verdicts missing / not the expected one;\n"
           "   cpu: the agent process, all threads, /proc/PID/task/*/schedstat; latency: establishment -> verdict\n"
           "   reported, from capturewatch_verdict_latency_seconds, interpolated inside its bucket)\n";
  }
  if (r.contains("kernel_cost")) {
    out << "\nBPF programs (kernel.bpf_stats_enabled, agent on; median of the cost pairs):";
    for (const auto& [path, k] : r["kernel_cost"].items()) {
      out << "  " << path << " " << fmt("%.0f", k["bpf_ns_per_connection"].get<double>()) << " ns/conn ("
          << fmt("%.1f", k["runs_per_connection"].get<double>()) << " runs)";
    }
    out << "\n";
  }
  if (r.contains("cost_share") && !r["cost_share"].empty()) {
    out << "\ncost per connection against the machine's (nproc / off rate), each pair of storms "
           "back to back\n"
           "(medians): BPF + agent CPU, share, and the on/off that this leaves (bpf_stats adds two "
           "clock\n"
           "reads per run: a little high):\n";
    // "  path: BPF + agent ns of machine = share, on/off about ratio (", from
    // the raw figures or those less the stats floor (`suffix`).
    auto costLine = [&out](const std::string& path, const json& c, const std::string& suffix) {
      out << "  " << path << ": " << thousands(c["bpf_ns_per_connection" + suffix]) << " + "
          << thousands(c["agent_ns_per_connection"]) << " ns of "
          << thousands(c["machine_ns_per_connection"]) << " = "
          << fmt("%.1f%%", c["share" + suffix].get<double>() * 100) << ", on/off about "
          << fmt("%.1f%%", c["ratio_expected" + suffix].get<double>() * 100) << " (";
    };
    for (const auto& [path, c] : r["cost_share"].items()) {
      costLine(path, c, "");
      out << "97% leaves " << thousands(c["ns_left_at_97_percent"]) << " ns; " << c["pairs"]
          << (c["pairs"].get<size_t>() == 1 ? " pair)\n" : " pairs)\n");
    }
    bool any_floor = false;
    for (const auto& [path, c] : r["cost_share"].items()) {
      if (!c.contains("share_less_floor")) continue;
      if (!any_floor) {
        out << "the same less bpf_stats' own share of each run (the run time of an empty program "
               "on the same\n"
               "tracepoint in the same storm; the program's call is in it too: a little low):\n";
        any_floor = true;
      }
      costLine(path, c, "_less_floor");
      out << "floor " << fmt("%.0f", c["stats_floor_ns_per_run"].get<double>()) << " ns per run)\n";
    }
  }
  if (r.contains("unwatched")) {
    const json& u = r["unwatched"];
    out << "\nunwatched pod: " << thousands(u["rate_off_median"]) << " conn/s off, "
        << thousands(u["rate_on_median"]) << " on (" << fmt("%.1f%%", u["ratio"].get<double>() * 100)
        << "); ring buffer: agent read " << u["agent_events_read"] << " records, "
        << u["agent_verdicts"] << " verdicts over " << thousands(u["connections"])
        << " connections; a Probe in the bench saw " << u["probe_records_submitted"] << " submitted, "
        << u["probe_records_read"] << " read over " << thousands(u["probe_connections"]) << " connections\n";
  }
  if (r.contains("memory")) {
    const json& mem = r["memory"];
    if (mem.contains("real")) {
      out << "\nmemory, real connections held open (agent process, kernel sockets):\n";
      for (const auto& level : mem["real"]) {
        for (const std::string path : {"captured", "bypassed"}) {
          if (!level.contains(path)) continue;
          const json& p = level[path];
          const json& a = p.contains("agent_while_held") ? p["agent_while_held"] : p["agent"];
          out << "  " << path << ": " << thousands(p.value("held", 0)) << " concurrent, agent RSS "
              << fmt("%.1f", a["rss_kib"].get<double>() / 1024) << " MiB while held, peak "
              << fmt("%.1f", p["agent_peak_rss_mib"].get<double>()) << " MiB; verdicts "
              << (p["exact"].get<bool>() ? "exact" : "DIFFER") << " ("
              << p["agent"]["verdicts"].dump() << "), records lost " << p["agent"]["events_lost"]
              << ", owner insert failures " << p["agent"]["owner_insert_failed"]
              << ", correlator evictions " << p["agent"]["correlator_evictions"];
          if (p.value("agent_stalled_s", 0.0) > 0) {
            out << "; the agent stopped for " << fmt("%.1f", p["agent_stalled_s"].get<double>())
                << " s as they opened";
          }
          if (p.contains("agent_bpf_maps_while_held")) {
            out << "; BPF maps "
                << fmt("%.1f", p["agent_bpf_maps_while_held"]["total_memlock_bytes"].get<double>() / 1048576)
                << " MiB, machine memory used "
                << fmt("%.0f", p.value("machine_memory_used_while_held_mib", 0.0)) << " MiB";
          }
          out << "\n";
        }
      }
    }
    if (mem.contains("synthetic_correlator")) {
      out << "memory, synthetic streams into the correlator (this process's heap):\n";
      for (const auto& s : mem["synthetic_correlator"]) {
        out << "  " << thousands(s["connections"]) << " connections, bound " << thousands(s["bound"])
            << ": pending " << thousands(s["pending"]) << " ("
            << fmt("%.0f", s["pending_bytes_per_entry"].get<double>()) << " B each, "
            << fmt("%.1f", s["pending_heap_bytes"].get<double>() / 1048576) << " MiB), evicted "
            << thousands(s["pending_evicted"]) << "; followed " << thousands(s["followed"]) << " ("
            << fmt("%.0f", s["followed_bytes_per_entry"].get<double>()) << " B each), evicted "
            << thousands(s["followed_evicted"]) << "\n";
      }
    }
    if (mem.contains("kernel_maps")) {
      out << "memory, kernel BPF maps (memlock):\n";
      for (const auto& k : mem["kernel_maps"]) {
        out << "  owner map " << thousands(k["owner_map_entries"]) << " entries: all maps "
            << fmt("%.1f", k["total_memlock_bytes"].get<double>() / 1048576) << " MiB\n";
      }
    }
  }
  if (r.contains("micro")) {
    out << "\nmicro-benchmarks (one core):\n";
    for (const auto& b : r["micro"]) {
      char line[256];
      std::snprintf(line, sizeof line, "  %-44s %10.1f ns/iter %12s items/s\n",
                    b["name"].get<std::string>().c_str(), b["ns_per_iteration"].get<double>(),
                    thousands(b["items_per_second"]).c_str());
      out << line;
    }
  }
  if (r.contains("budgets")) {
    out << "\nbudgets:\n";
    for (const auto& b : r["budgets"]) {
      char line[512];
      std::snprintf(line, sizeof line, "  %-4s %-68s %12.4g %s (limit %g)%s\n",
                    b["pass"].get<bool>() ? "ok" : "FAIL", b["name"].get<std::string>().c_str(),
                    b["value"].get<double>(), b["unit"].get<std::string>().c_str(),
                    b["limit"].get<double>(),
                    b.contains("note") ? ("; " + b["note"].get<std::string>()).c_str() : "");
      out << line;
    }
  }
}

}  // namespace cw::bench
