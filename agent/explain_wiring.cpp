#include "explain_wiring.h"

#include "logging.h"

namespace cw {

std::unique_ptr<CaptureExplainer> attachExplainer(Agent& agent, const ExplainSettings& settings,
                                                  RulesReader reader, RouteResolver routes) {
  auto explainer = std::make_unique<CaptureExplainer>(std::move(reader), std::move(routes),
                                                      settings.redirect_port,
                                                      settings.min_read_interval_ns);
  CaptureExplainer* ex = explainer.get();
  ex->on_read = [&agent](uint32_t netns, const PodRules& rules, bool changed) {
    agent.metrics().addRulesRead(rules.error.empty());
    if (!changed) return;
    const PodLabels& pod = agent.reporter().pod(netns);
    logging::Fields f;
    if (!pod.namespace_.empty()) f["namespace"] = pod.namespace_;
    f["pod"] = pod.pod;
    f["netns"] = netns;
    f["backend"] = rules.backend;
    if (rules.error.empty()) {
      logging::write(rules.hasIstioChains() ? spdlog::level::info : spdlog::level::warn,
                     rules.hasIstioChains() ? "capture rules read" : "no capture rules", f);
    } else {
      f["error"] = rules.error;
      logging::warn("capture rules unreadable", f);
    }
  };
  agent.observeTargets([ex](const Target& t, bool added) {
    if (added) {
      ex->addTarget(t.netns, t.netns_path, monotonicNowNs());
    } else {
      ex->removeTarget(t.netns);
    }
  });
  // The batch's time, not a clock read per bypassed verdict (one was 3% of
  // the agent's CPU in a bypassed storm: perf, README Performance).
  agent.setExplainer([ex](const Connection& conn, uint64_t now_ns) -> const Why& {
    return ex->explain(conn, now_ns);
  });
  agent.addPeriodic([ex, interval = settings.rules_interval_ns] {
    ex->refresh(monotonicNowNs(), interval);
  });
  return explainer;
}

}  // namespace cw
