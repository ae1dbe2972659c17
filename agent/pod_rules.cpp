#include "pod_rules.h"

#include <fcntl.h>
#include <nftables/libnftables.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <thread>

#include "lab/system.h"
#include "rules/iptables_parser.h"
#include "rules/nft_parser.h"

namespace cw {
namespace {

constexpr const char* kNativeTable = "istio-proxy-nat";

// libnftables' JSON of the whole ruleset of a netns. setns() changes only
// the calling thread, so the read runs on a short-lived thread.
std::string readNftJson(const std::string& netns_path, std::string& error) {
  std::string out;
  std::thread worker([&] {
    lab::UniqueFd fd(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      error = "cannot open " + netns_path + ": " + std::strerror(errno);
      return;
    }
    if (::setns(fd.get(), CLONE_NEWNET) != 0) {
      error = "cannot enter " + netns_path + ": " + std::strerror(errno);
      return;
    }
    nft_ctx* ctx = nft_ctx_new(NFT_CTX_DEFAULT);
    if (ctx == nullptr) {
      error = "libnftables: cannot create a context";
      return;
    }
    nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON);
    nft_ctx_buffer_output(ctx);
    nft_ctx_buffer_error(ctx);
    if (nft_run_cmd_from_buffer(ctx, "list ruleset") == 0) {
      const char* buf = nft_ctx_get_output_buffer(ctx);
      if (buf != nullptr) out = buf;
    } else {
      const char* err = nft_ctx_get_error_buffer(ctx);
      error = std::string("nft list ruleset: ") + (err != nullptr ? err : "failed");
    }
    nft_ctx_free(ctx);
  });
  worker.join();
  return out;
}

// `<tool>` (an iptables save command) inside the netns, through nsenter.
// A missing tool is not an error: that backend is simply absent.
std::string readSave(const std::string& netns_path, const char* tool, std::string& error) {
  if (lab::findExecutable(tool).empty()) return "";
  auto r = lab::runCommand({"nsenter", "--net=" + netns_path, tool}, "", std::chrono::seconds(10));
  if (r.exit_status != 0 || r.timed_out) {
    if (!error.empty()) error += "; ";
    error += std::string(tool) + " failed: " + (r.timed_out ? "timed out" : r.err);
    return "";
  }
  return r.out;
}

bool hasIstioChains(const std::string& save_text) {
  return save_text.find(":ISTIO_") != std::string::npos ||
         save_text.find("-N ISTIO_") != std::string::npos;
}

// The rules' own words, without counters (which change with traffic).
std::string fingerprintOf(const rules::RuleSet& rs) {
  std::string fp;
  for (const auto& table : rs.tables) {
    for (const auto& chain : table.chains) {
      fp += table.name + ' ' + chain.name + '\n';
      for (const auto& rule : chain.rules) fp += rule.text + '\n';
    }
  }
  return fp;
}

std::string reasonLabel(rules::Reason reason) {
  switch (reason) {
    case rules::Reason::None:
    case rules::Reason::Local:
    case rules::Reason::Unknown:
      return "unknown";
    default:
      return std::string(rules::reasonName(reason));
  }
}

}  // namespace

namespace {

// `ip route get DST` without starting a process: one RTM_GETROUTE over
// rtnetlink from a short-lived thread inside the netns (setns() changes only
// the calling thread). The agent's loop waits for this when a bypassed
// connection has a new destination: forking nsenter + ip there delayed every
// verdict behind it by tens of milliseconds under load. nullopt if the
// kernel could not be asked (the caller falls back to `ip route get`).
std::optional<Route> netlinkRoute(const std::string& netns_path, const Address& dst) {
  std::optional<Route> result;
  std::thread worker([&] {
    lab::UniqueFd ns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns || ::setns(ns.get(), CLONE_NEWNET) != 0) return;
    lab::UniqueFd sock(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    if (!sock) return;
    timeval tv{1, 0};
    ::setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    const bool v4 = dst.isV4();
    const size_t alen = v4 ? 4 : 16;
    struct {
      nlmsghdr nh;
      rtmsg rt;
      alignas(4) unsigned char attr[RTA_SPACE(16)];
    } req{};
    req.rt.rtm_family = v4 ? AF_INET : AF_INET6;
    req.rt.rtm_dst_len = static_cast<unsigned char>(alen * 8);
    rtattr a{};
    a.rta_type = RTA_DST;
    a.rta_len = static_cast<unsigned short>(RTA_LENGTH(alen));
    std::memcpy(req.attr, &a, sizeof a);
    std::memcpy(req.attr + RTA_LENGTH(0), dst.bytes.data() + (v4 ? 12 : 0), alen);
    req.nh.nlmsg_len = static_cast<uint32_t>(offsetof(decltype(req), attr) + RTA_SPACE(alen));
    req.nh.nlmsg_type = RTM_GETROUTE;
    req.nh.nlmsg_flags = NLM_F_REQUEST;
    req.nh.nlmsg_seq = 1;
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(sock.get(), &req, req.nh.nlmsg_len, 0, reinterpret_cast<const sockaddr*>(&kernel),
                 sizeof kernel) < 0) {
      return;
    }
    alignas(nlmsghdr) unsigned char buf[8192];
    const ssize_t n = ::recv(sock.get(), buf, sizeof buf, 0);
    if (n < static_cast<ssize_t>(sizeof(nlmsghdr))) return;
    nlmsghdr h;
    std::memcpy(&h, buf, sizeof h);
    if (h.nlmsg_len > static_cast<size_t>(n) || h.nlmsg_len < NLMSG_LENGTH(sizeof(rtmsg))) {
      if (h.nlmsg_type == NLMSG_ERROR) result = Route{};  // no route: as `ip route get` failing
      return;
    }
    if (h.nlmsg_type != RTM_NEWROUTE) {
      if (h.nlmsg_type == NLMSG_ERROR) result = Route{};
      return;
    }
    Route route;
    // Attributes follow the rtmsg, each aligned to 4 bytes.
    size_t off = NLMSG_LENGTH(sizeof(rtmsg));
    while (off + sizeof(rtattr) <= h.nlmsg_len) {
      rtattr at;
      std::memcpy(&at, buf + off, sizeof at);
      if (at.rta_len < sizeof(rtattr) || off + at.rta_len > h.nlmsg_len) break;
      const unsigned char* data = buf + off + RTA_LENGTH(0);
      const size_t len = at.rta_len - RTA_LENGTH(0);
      if (at.rta_type == RTA_OIF && len >= sizeof(int)) {
        int ifindex = 0;
        std::memcpy(&ifindex, data, sizeof ifindex);
        char name[IF_NAMESIZE] = {};
        // A socket of this thread's netns: the name of the pod's interface.
        if (::if_indextoname(static_cast<unsigned>(ifindex), name) != nullptr) route.iface = name;
      } else if (at.rta_type == RTA_PREFSRC && len == alen) {
        route.src = v4 ? Address::fromV4(data) : Address::fromV6(data);
      }
      off += RTA_ALIGN(at.rta_len);
    }
    result = route;
  });
  worker.join();
  return result;
}

}  // namespace

Route resolveRoute(const std::string& netns_path, const Address& dst) {
  if (auto route = netlinkRoute(netns_path, dst)) return *route;
  auto r = lab::runCommand({"nsenter", "--net=" + netns_path, "ip", "-o", "route", "get", dst.str()},
                           "", std::chrono::seconds(5));
  Route route;
  if (r.exit_status != 0) return route;
  // "198.18.0.1 dev eth0 src 198.18.0.2 uid 0 \    cache"
  auto word_after = [&](const std::string& key) -> std::string {
    auto at = r.out.find(" " + key + " ");
    if (at == std::string::npos) return "";
    auto start = at + key.size() + 2;
    auto end = r.out.find_first_of(" \n", start);
    return r.out.substr(start, end == std::string::npos ? std::string::npos : end - start);
  };
  route.iface = word_after("dev");
  route.src = Address::parse(word_after("src"));
  return route;
}

RulesText readRulesText(const std::string& netns_path) {
  RulesText t;
  t.nft_json = readNftJson(netns_path, t.error);
  if (t.nft_json.find(kNativeTable) != std::string::npos) return t;  // native backend
  t.iptables_nft_v4 = readSave(netns_path, "iptables-nft-save", t.error);
  t.iptables_nft_v6 = readSave(netns_path, "ip6tables-nft-save", t.error);
  if (hasIstioChains(t.iptables_nft_v4) || hasIstioChains(t.iptables_nft_v6)) return t;
  t.iptables_legacy_v4 = readSave(netns_path, "iptables-legacy-save", t.error);
  t.iptables_legacy_v6 = readSave(netns_path, "ip6tables-legacy-save", t.error);
  return t;
}

PodRules parsePodRules(const RulesText& text) {
  PodRules pr;
  auto parseIpt = [&](const std::string& v4, const std::string& v6, const char* backend) {
    pr.backend = backend;
    for (auto [src, family, slot] :
         {std::tuple{&v4, rules::Family::Ipv4, &pr.v4}, std::tuple{&v6, rules::Family::Ipv6, &pr.v6}}) {
      if (!hasIstioChains(*src)) continue;  // this family has no capture rules
      auto parsed = rules::parseIptables(*src, family);
      if (parsed.ok()) {
        *slot = std::move(*parsed.rules);
        pr.fingerprint += fingerprintOf(**slot);
      } else {
        pr.error += std::string(backend) + (family == rules::Family::Ipv4 ? " (IPv4): " : " (IPv6): ") +
                    parsed.error.str() + "; ";
      }
    }
  };

  if (text.nft_json.find(kNativeTable) != std::string::npos) {
    pr.backend = "nftables";
    auto parsed = rules::parseNftJson(text.nft_json);
    if (parsed.ok()) {
      pr.fingerprint = fingerprintOf(*parsed.rules);
      pr.v4 = *parsed.rules;
      pr.v6 = std::move(*parsed.rules);
    } else {
      pr.error = "nftables: " + parsed.error.str();
    }
  } else if (hasIstioChains(text.iptables_nft_v4) || hasIstioChains(text.iptables_nft_v6)) {
    parseIpt(text.iptables_nft_v4, text.iptables_nft_v6, "iptables-nft");
  } else if (hasIstioChains(text.iptables_legacy_v4) || hasIstioChains(text.iptables_legacy_v6)) {
    parseIpt(text.iptables_legacy_v4, text.iptables_legacy_v6, "iptables-legacy");
  } else if (!text.error.empty() && text.nft_json.empty()) {
    pr.error = text.error;  // nothing could be read at all
  }
  return pr;
}

CaptureExplainer::CaptureExplainer(RulesReader reader, RouteResolver routes, uint16_t redirect_port,
                                   uint64_t min_interval_ns)
    : reader_(std::move(reader)),
      routes_(std::move(routes)),
      redirect_port_(redirect_port),
      min_interval_ns_(min_interval_ns) {}

rules::Connection CaptureExplainer::ruleConnection(Target& t, const Connection& conn) {
  rules::Connection rc;
  rc.protocol = rules::Protocol::Tcp;
  rc.uid = conn.uid;
  rc.gid = conn.gid;
  rc.src = conn.src;
  rc.dst = conn.dst;
  if (conn.dst.addr.isLoopback() || conn.dst.addr == conn.src.addr) {
    rc.out_interface = "lo";
    return rc;
  }
  auto it = t.routes.find(conn.dst.addr.bytes);
  if (it == t.routes.end()) {
    if (t.routes.size() >= 1024) t.routes.clear();
    it = t.routes.emplace(conn.dst.addr.bytes, routes_ ? routes_(t.netns_path, conn.dst.addr).iface : "")
             .first;
  }
  rc.out_interface = it->second;  // "" (unknown) makes interface matches unknown
  return rc;
}

void CaptureExplainer::addTarget(uint32_t netns, const std::string& netns_path, uint64_t now_ns) {
  Target& t = targets_[netns];
  t.netns_path = netns_path;
  t.history.clear();
  t.routes.clear();
  read(netns, t, now_ns);
}

void CaptureExplainer::removeTarget(uint32_t netns) { targets_.erase(netns); }

bool CaptureExplainer::read(uint32_t netns, Target& t, uint64_t now_ns) {
  auto rules = std::make_shared<PodRules>(parsePodRules(reader_(t.netns_path)));
  t.last_read_ns = now_ns;
  const bool changed = t.history.empty() ||
                       t.history.back().rules->fingerprint != rules->fingerprint ||
                       t.history.back().rules->backend != rules->backend ||
                       t.history.back().rules->error != rules->error;
  if (on_read) on_read(netns, *rules, changed);
  if (changed) {
    Snapshot snap;
    snap.read_ns = now_ns;
    snap.rules = std::move(rules);
    t.history.push_back(std::move(snap));
    if (t.history.size() > kHistory) t.history.erase(t.history.begin());
  }
  return t.history.back().rules->error.empty();
}

std::pair<int, int> CaptureExplainer::refresh(uint64_t now_ns, uint64_t max_age_ns) {
  int ok = 0, failed = 0;
  for (auto& [netns, t] : targets_) {
    if (now_ns - t.last_read_ns < max_age_ns) continue;
    (read(netns, t, now_ns) ? ok : failed)++;
  }
  return {ok, failed};
}

size_t CaptureExplainer::MemoKeyHash::operator()(const MemoKey& k) const noexcept {
  uint64_t h = (uint64_t{k.uid} << 32) | k.gid;
  auto add = [&h](uint64_t v) { h = (h ^ v) * 0x9e3779b97f4a7c15ULL + (h >> 29); };
  for (const Endpoint* e : {&k.src, &k.dst}) {
    uint64_t hi, lo;
    std::memcpy(&hi, e->addr.bytes.data(), sizeof hi);
    std::memcpy(&lo, e->addr.bytes.data() + 8, sizeof lo);
    add(hi);
    add(lo);
    add(e->port);
  }
  return static_cast<size_t>(h ^ std::hash<std::string>{}(k.out_interface));
}

namespace {

bool usesSourcePort(const rules::RuleSet& rs) {
  for (const auto& table : rs.tables) {
    for (const auto& chain : table.chains) {
      for (const auto& rule : chain.rules) {
        for (const auto& m : rule.matches) {
          if (m.kind == rules::MatchKind::SourcePort) return true;
        }
      }
    }
  }
  return false;
}

}  // namespace

const CaptureExplainer::Brief& CaptureExplainer::explainWith(Snapshot& s, bool ipv6,
                                                             const rules::Connection& rc) const {
  const rules::RuleSet& rs = *s.rules->forFamily(ipv6);
  const int f = ipv6 ? 1 : 0;
  auto& policy = s.policy[f];
  if (!policy) {
    policy = std::make_shared<const rules::Policy>(rules::summarise(rs));
    s.uses_source_port[f] = usesSourcePort(rs);
  }
  MemoKey key{rc.uid, rc.gid, rc.src, rc.dst, rc.out_interface};
  if (!s.uses_source_port[f]) key.src.port = 0;
  auto& memo = s.memo[f];
  if (auto it = memo.find(key); it != memo.end()) return it->second;
  if (memo.size() >= kMemoEntries) memo.clear();
  rules::Explanation e = rules::explain(rules::Evaluator(rs), *policy, rc, redirect_port_);
  Brief brief{e.captured, e.rule, Why{}};
  if (!e.captured) brief.why = Why{reasonLabel(e.reason), std::move(e.rule), std::move(e.remedy)};
  return memo.emplace(std::move(key), std::move(brief)).first->second;
}

const Why* CaptureExplainer::explainedByLastRead(Target& t, const Connection& conn) {
  if (t.history.empty()) return nullptr;
  const PodRules& last = *t.history.back().rules;
  if (!last.error.empty() || !last.hasIstioChains()) return nullptr;
  const bool ipv6 = !conn.dst.addr.isV4();
  if (last.forFamily(ipv6) == nullptr) return nullptr;
  const Brief& e = explainWith(t.history.back(), ipv6, ruleConnection(t, conn));
  return e.captured ? nullptr : &e.why;
}

const Why& CaptureExplainer::explain(const Connection& conn, uint64_t now_ns) {
  auto it = targets_.find(conn.netns);
  if (it == targets_.end()) return answer(Why{"unknown", "", "the pod's rules were never read"});
  Target& t = it->second;
  // A gap may follow a rule change: look again, at a bounded rate, unless
  // the rules last read already explain it (they were in force when it was
  // opened; the periodic refresh still sees later changes). Reading forks
  // and runs the rules' tools in the pod's netns: under a storm of
  // bypassed connections, a read a second on the agent's loop delayed
  // every verdict behind it.
  if (now_ns - t.last_read_ns >= min_interval_ns_) {
    // Explained by the last read: that is the answer the code below would
    // give without a re-read (one evaluation instead of two per connection).
    if (const Why* why = explainedByLastRead(t, conn)) return *why;
    read(conn.netns, t, now_ns);
  }

  const PodRules& now = *t.history.back().rules;
  if (!now.error.empty()) {
    return answer(Why{"unknown", "", "the pod's rules could not be read: " + now.error});
  }
  const bool ipv6 = !conn.dst.addr.isV4();
  const rules::RuleSet* rs = now.forFamily(ipv6);
  if (!now.hasIstioChains() || rs == nullptr) {
    std::string where = now.hasIstioChains() ? std::string(ipv6 ? "IPv6" : "IPv4") + " " : "";
    return answer(
        Why{"no-capture-rules", "",
            "no Istio " + where +
                "capture rules in the pod's network namespace: the sidecar was injected "
                "without istio-init or the Istio CNI plugin (or interceptionMode is NONE, "
                "or the CNI plugin had not run yet when the pod started); restart the pod "
                "once the CNI plugin or init container is in place"});
  }

  const rules::Connection rc = ruleConnection(t, conn);
  // A reference into the last snapshot's memo: the loop below only finds this
  // key there again (no insert, so no clear) and inserts into older ones.
  const Brief& e = explainWith(t.history.back(), ipv6, rc);
  if (!e.captured) return e.why;

  // The rules capture this connection now. If an earlier read had rules
  // that did not, and the connection was opened before the first read that
  // did, it predates the rules.
  uint64_t capture_since = 0;
  bool earlier_without = false;
  for (auto s = t.history.rbegin(); s != t.history.rend(); ++s) {
    bool captures = s->rules->error.empty() && s->rules->forFamily(ipv6) != nullptr &&
                    explainWith(*s, ipv6, rc).captured;
    if (!captures) {
      earlier_without = true;
      break;
    }
    capture_since = s->read_ns;
  }
  if (earlier_without && conn.established_ns < capture_since) {
    return answer(Why{"predates-rules", e.rule,
                      "the connection was opened before the pod's capture rules were installed "
                      "(late istio-init or CNI, or rules reloaded); the rules capture it now: make "
                      "the app reconnect or restart the pod, and make the app wait for the "
                      "sidecar (holdApplicationUntilProxyStarts)"});
  }
  return answer(
      Why{"unknown", e.rule,
          "the pod's rules redirect this connection to the sidecar, yet it went direct: "
          "check for other netfilter rules or backends in the pod (capturewatch explain)"});
}

}  // namespace cw
