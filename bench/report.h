// The bench's one table (stdout) and its budget checks.
#pragma once

#include <nlohmann/json.hpp>
#include <ostream>

namespace cw::bench {

// The budgets of issue 6, each {name, value, limit, pass}, from the result.
nlohmann::ordered_json budgets(const nlohmann::ordered_json& result, int grace_ms);

// Prints the result as one table.
void printTable(const nlohmann::ordered_json& result, std::ostream& out);

}  // namespace cw::bench
