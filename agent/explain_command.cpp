// `capturewatch explain`: a pod's capture policy as a person reads it, from
// the rules live in its network namespace, and optionally the trace of one
// hypothetical connection through them.
// Exit status: 0 captured (or policy printed), 1 not captured, 2 error.
#include <iostream>

#include "commands.h"
#include "pod_rules.h"
#include "rules/explain.h"
#include "targets.h"

namespace cw {
namespace {

template <typename T>
nlohmann::ordered_json strings(const std::vector<T>& items) {
  auto out = nlohmann::ordered_json::array();
  for (const auto& i : items) out.push_back(i.str());
  return out;
}

nlohmann::ordered_json policyJson(const rules::Policy& p) {
  nlohmann::ordered_json j;
  j["capture"] = p.capture;
  j["capture_ipv4"] = p.capture_ipv4;
  j["capture_ipv6"] = p.capture_ipv6;
  if (!p.capture) j["why_no_capture"] = p.why_no_capture;
  j["redirect_port"] = p.redirect_port ? nlohmann::ordered_json(*p.redirect_port) : nullptr;
  j["outbound_chain"] = p.outbound_chain;
  j["proxy_uid"] = p.proxy_uid ? nlohmann::ordered_json(*p.proxy_uid) : nullptr;
  j["proxy_gid"] = p.proxy_gid ? nlohmann::ordered_json(*p.proxy_gid) : nullptr;
  j["exempt_uids"] = strings(p.exempt_uids);
  j["exempt_gids"] = strings(p.exempt_gids);
  j["included_uids"] = strings(p.included_uids);
  j["included_gids"] = strings(p.included_gids);
  j["includes_all"] = p.includes_all;
  j["included_cidrs"] = strings(p.included_cidrs);
  j["included_ports"] = strings(p.included_ports);
  j["excluded_ports"] = strings(p.excluded_ports);
  j["excluded_cidrs"] = strings(p.excluded_cidrs);
  j["excluded_interfaces"] = p.excluded_interfaces;
  j["not_understood"] = p.not_understood;
  return j;
}

std::string indent(const std::string& text, const std::string& prefix) {
  std::string out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    out += prefix + text.substr(start, nl - start) + "\n";
    start = nl + 1;
  }
  return out;
}

}  // namespace

int explainCommand(const ExplainOptions& o) {
  try {
    const std::string path = o.pid ? "/proc/" + std::to_string(*o.pid) + "/ns/net" : o.netns_path;
    const uint32_t inode = netnsInode(path);
    const RulesText text = readRulesText(path);
    const PodRules pr = parsePodRules(text);
    if (!pr.error.empty()) throw std::runtime_error("the rules could not be read: " + pr.error);

    nlohmann::ordered_json doc;
    std::string out;
    doc["netns_path"] = path;
    doc["netns"] = inode;
    doc["backend"] = pr.backend;
    out += "network namespace: " + path + " (" + std::to_string(inode) + ")\n";
    out += "backend: " + pr.backend + (pr.hasIstioChains() ? "" : " (no Istio capture rules)") + "\n";

    struct View {
      const char* name;
      const rules::RuleSet* rules;
    };
    std::vector<View> views;
    if (pr.backend == "nftables") {
      views.push_back({"inet", pr.forFamily(false)});
    } else {
      views.push_back({"ipv4", pr.forFamily(false)});
      views.push_back({"ipv6", pr.forFamily(true)});
    }
    doc["policy"] = nlohmann::ordered_json::object();
    for (const auto& v : views) {
      out += std::string("\n") + v.name + " rules:\n";
      if (v.rules == nullptr) {
        out += "  no Istio capture rules: nothing is redirected to the sidecar\n";
        doc["policy"][v.name] = nullptr;
        continue;
      }
      rules::Policy policy = rules::summarise(*v.rules);
      out += indent(policy.str(), "  ");
      doc["policy"][v.name] = policyJson(policy);
    }

    int status = 0;
    if (o.dst) {
      const bool ipv6 = !o.dst->addr.isV4();
      Connection conn;
      conn.netns = inode;
      conn.uid = o.uid;
      conn.gid = o.gid;
      conn.dst = *o.dst;
      conn.established_ns = 0;
      // One hypothetical connection: explain it like a live gap.
      CaptureExplainer explainer([&](const std::string&) { return text; }, resolveRoute,
                                 o.redirect_port, 1);
      explainer.addTarget(inode, path, 1);
      Why why;
      bool captured = false;
      rules::Explanation e;
      const rules::RuleSet* rs = pr.forFamily(ipv6);
      if (rs != nullptr) {
        rules::Connection rc;
        rc.uid = o.uid;
        rc.gid = o.gid;
        rc.dst = *o.dst;
        // The kernel's own choice of interface and source address.
        Route route = resolveRoute(path, o.dst->addr);
        rc.out_interface = o.dst->addr.isLoopback() ? std::string("lo") : route.iface;
        if (route.src) rc.src.addr = *route.src;
        conn.src.addr = rc.src.addr;
        e = rules::explain(*rs, rc, o.redirect_port);
        captured = e.captured;
        if (!captured) why = explainer.explain(conn, 2);
      } else {
        why = explainer.explain(conn, 2);
      }
      nlohmann::ordered_json trace;
      trace["uid"] = o.uid;
      trace["gid"] = o.gid;
      trace["dst"] = o.dst->str();
      out += "\nconnection uid " + std::to_string(o.uid) + " gid " + std::to_string(o.gid) +
             " -> " + o.dst->str() + ":\n";
      auto path_json = nlohmann::ordered_json::array();
      if (rs != nullptr) {
        out += "  path:\n";
        for (const auto& rule : e.evaluation.path) {
          out += "    " + rule.describe() + "\n";
          path_json.push_back(rule.describe());
        }
        out += "  decision: " + e.evaluation.decision.str() + "\n";
        trace["decision"] = e.evaluation.decision.str();
      }
      trace["path"] = std::move(path_json);
      trace["captured"] = captured;
      if (captured) {
        out += "  verdict: captured (redirected to the sidecar's port " +
               std::to_string(o.redirect_port) + ")\n";
      } else {
        out += "  verdict: NOT captured (" + why.reason + ")\n";
        if (!why.rule.empty()) out += "  deciding rule: " + why.rule + "\n";
        if (!why.remedy.empty()) out += "  fix: " + why.remedy + "\n";
        trace["reason"] = why.reason;
        trace["rule"] = why.rule;
        trace["remedy"] = why.remedy;
        status = 1;
      }
      doc["connection"] = std::move(trace);
    }
    std::cout << (o.json ? doc.dump(2) + "\n" : out) << std::flush;
    return status;
  } catch (const std::exception& e) {
    std::cerr << "capturewatch explain: " << e.what() << "\n";
    return 2;
  }
}

}  // namespace cw
