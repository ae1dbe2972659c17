// The bench's one table (stdout) and its budget checks.
#pragma once

#include <nlohmann/json.hpp>

#include <ostream>
#include <vector>

namespace cw::bench {

// The budgets of issue 6, each {name, value, limit, pass}, from the result.
nlohmann::ordered_json budgets(const nlohmann::ordered_json& result, int grace_ms);

// What the agent and its BPF programs cost per connection against what the
// whole machine spends on one at the agent-off rate (nproc cores / rate):
// at the machine's limit, the rate with the agent on is about 1 - that
// share of the rate with it off, whatever the noise of the rates. From the
// kernel-cost part, whose pairs of storms measure all three in the same
// minute (medians of the pairs); empty without it.
nlohmann::ordered_json costShare(const nlohmann::ordered_json& result);

// The same-round on/off ratios of several results (runs of the same agent),
// pooled per path: their geometric mean, its 95% interval and what that
// decides for the 97% budget. A run's interval covers the noise within it;
// pooling runs from different times also averages over the machine's
// slower and quicker spells.
nlohmann::ordered_json poolRuns(const std::vector<nlohmann::ordered_json>& results);

// Prints the result as one table.
void printTable(const nlohmann::ordered_json& result, std::ostream& out);

}  // namespace cw::bench
