// Connects a CaptureExplainer to an Agent: targets, periodic re-reads,
// metrics and logs of rule reads.
#pragma once

#include <memory>

#include "agent.h"
#include "pod_rules.h"

namespace cw {

struct ExplainSettings {
  uint16_t redirect_port = 15001;
  uint64_t rules_interval_ns = 30'000'000'000;  // periodic re-read of every pod's rules
  uint64_t min_read_interval_ns = 1'000'000'000;  // on-demand re-reads, at most this often
};

// Creates the explainer and hooks it into the agent (explainer, periodic
// refresh, rule-read metrics and change logs). The returned object must
// outlive the agent's run().
std::unique_ptr<CaptureExplainer> attachExplainer(Agent& agent, const ExplainSettings& settings,
                                                  RulesReader reader = readRulesText,
                                                  RouteResolver routes = resolveRoute);

}  // namespace cw
