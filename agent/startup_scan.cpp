#include "startup_scan.h"

// netinet/in.h before the kernel headers: it tells linux/libc-compat.h not to
// redefine in6_addr and friends.
#include <netinet/in.h>

#include <dirent.h>
#include <fcntl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <utility>

namespace cw {

namespace {

// ---- small RAII ------------------------------------------------------------

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string errnoText(int err) { return std::strerror(err); }

// Runs fn on a short-lived thread inside the network namespace at path (empty:
// the caller's), so that sockets it creates belong to that namespace. The
// calling thread's namespace is never changed. Exceptions of fn are rethrown.
void runInNetns(const std::string& path, const std::function<void()>& fn) {
  if (path.empty()) {
    fn();
    return;
  }
  Fd ns(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (ns.get() < 0) throw std::runtime_error("open " + path + ": " + errnoText(errno));
  std::exception_ptr error;
  std::thread worker([&] {
    try {
      // Network namespaces are per thread: this one only, and it ends here.
      if (::setns(ns.get(), CLONE_NEWNET) != 0) {
        throw std::runtime_error("setns " + path + ": " + errnoText(errno));
      }
      fn();
    } catch (...) {
      error = std::current_exception();
    }
  });
  worker.join();
  if (error) std::rethrow_exception(error);
}

// ---- sock_diag -------------------------------------------------------------

[[noreturn]] void malformed(const std::string& what) {
  throw std::runtime_error("malformed sock_diag reply: " + what);
}

constexpr size_t kRecvBuffer = 64 * 1024;  // a netlink dump datagram is at most 32 KiB
constexpr int kMaxDumpReads = 100'000;
constexpr int kRecvTimeoutSeconds = 5;

Endpoint diagEndpoint(uint8_t family, const uint32_t addr[4], uint16_t port_be) {
  Endpoint ep;
  uint8_t raw[16];
  std::memcpy(raw, addr, sizeof raw);
  ep.addr = family == AF_INET ? Address::fromV4(raw) : Address::fromV6(raw);
  ep.port = ntohs(port_be);
  return ep;
}

void parseDiagMessage(const uint8_t* p, size_t len, std::vector<ScannedSocket>& out) {
  if (len < sizeof(inet_diag_msg)) malformed("inet_diag_msg of " + std::to_string(len) + " bytes");
  inet_diag_msg msg;
  std::memcpy(&msg, p, sizeof msg);
  if (msg.idiag_family != AF_INET && msg.idiag_family != AF_INET6) return;  // not asked for

  ScannedSocket s;
  s.local = diagEndpoint(msg.idiag_family, msg.id.idiag_src, msg.id.idiag_sport);
  s.remote = diagEndpoint(msg.idiag_family, msg.id.idiag_dst, msg.id.idiag_dport);
  s.state = msg.idiag_state;
  s.uid = msg.idiag_uid;
  s.inode = msg.idiag_inode;

  size_t off = NLMSG_ALIGN(sizeof(inet_diag_msg));
  while (off < len) {
    if (len - off < sizeof(nlattr)) malformed("truncated attribute header");
    nlattr attr;
    std::memcpy(&attr, p + off, sizeof attr);
    if (attr.nla_len < sizeof(nlattr) || attr.nla_len > len - off) {
      malformed("attribute length " + std::to_string(attr.nla_len));
    }
    const uint8_t* payload = p + off + sizeof(nlattr);
    const size_t payload_len = attr.nla_len - sizeof(nlattr);
    switch (attr.nla_type & NLA_TYPE_MASK) {
      case INET_DIAG_CGROUP_ID:
        if (payload_len < sizeof(uint64_t)) malformed("short INET_DIAG_CGROUP_ID");
        std::memcpy(&s.cgroup_id, payload, sizeof(uint64_t));
        break;
      case INET_DIAG_SKV6ONLY:
        if (payload_len < 1) malformed("short INET_DIAG_SKV6ONLY");
        s.v6only = payload[0] != 0;
        break;
      default:
        break;
    }
    off += std::min<size_t>(NLA_ALIGN(attr.nla_len), len - off);
  }
  out.push_back(s);
}

// One dump (one family) on its own socket, in the calling thread's netns.
void dumpFamily(uint8_t family, std::vector<ScannedSocket>& out) {
  Fd fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (fd.get() < 0) throw std::runtime_error("socket(NETLINK_SOCK_DIAG): " + errnoText(errno));
  timeval tv{kRecvTimeoutSeconds, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  constexpr uint32_t kSeq = 1;
  struct {
    nlmsghdr nlh;
    inet_diag_req_v2 req;
  } request{};
  request.nlh.nlmsg_len = sizeof request;
  request.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  request.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  request.nlh.nlmsg_seq = kSeq;
  request.req.sdiag_family = family;
  request.req.sdiag_protocol = IPPROTO_TCP;
  // INET_DIAG_CGROUP_ID needs no request bit: the kernel (>= 5.9, with
  // CONFIG_SOCK_CGROUP_DATA) adds it to every socket it reports; so is
  // INET_DIAG_SKV6ONLY for AF_INET6 sockets in LISTEN (or CLOSE).
  request.req.idiag_ext = 0;
  request.req.idiag_states = (1u << kTcpEstablished) | (1u << kTcpSynSent) | (1u << kTcpListen);

  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd.get(), &request, sizeof request, 0, reinterpret_cast<sockaddr*>(&kernel),
               sizeof kernel) != static_cast<ssize_t>(sizeof request)) {
    throw std::runtime_error("sock_diag request: " + errnoText(errno));
  }

  std::vector<uint8_t> buf(kRecvBuffer);
  for (int reads = 0; reads < kMaxDumpReads; ++reads) {
    sockaddr_nl from{};
    iovec iov{buf.data(), buf.size()};
    msghdr mh{};
    mh.msg_name = &from;
    mh.msg_namelen = sizeof from;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    ssize_t n = ::recvmsg(fd.get(), &mh, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("sock_diag receive: " + errnoText(errno));
    }
    if (n == 0) throw std::runtime_error("sock_diag receive: end of stream before NLMSG_DONE");
    if ((mh.msg_flags & MSG_TRUNC) != 0) malformed("datagram truncated");
    if (from.nl_pid != 0) continue;  // not from the kernel
    if (scan_detail::parseInetDiagDatagram(
            std::span<const uint8_t>(buf.data(), static_cast<size_t>(n)), kSeq, out,
            kMaxScannedSockets)) {
      return;
    }
    if (out.size() >= kMaxScannedSockets) return;  // limit reached: the rest is dropped
  }
  throw std::runtime_error("sock_diag dump did not end after " + std::to_string(kMaxDumpReads) +
                           " reads");
}

// ---- conntrack -------------------------------------------------------------

struct ConntrackDump {
  std::vector<ConntrackEntry>* out;
  const ConntrackFilter* keep;
};

bool tupleEndpoint(const nf_conntrack* ct, uint8_t l3, nf_conntrack_attr v4, nf_conntrack_attr v6,
                   nf_conntrack_attr port, Endpoint& ep) {
  if (!nfct_attr_is_set(ct, port)) return false;
  if (l3 == AF_INET) {
    if (!nfct_attr_is_set(ct, v4)) return false;
    const uint32_t a = nfct_get_attr_u32(ct, v4);  // network order
    uint8_t raw[4];
    std::memcpy(raw, &a, sizeof raw);
    ep.addr = Address::fromV4(raw);
  } else {
    if (!nfct_attr_is_set(ct, v6)) return false;
    const void* a = nfct_get_attr(ct, v6);
    if (a == nullptr) return false;
    uint8_t raw[16];
    std::memcpy(raw, a, sizeof raw);
    ep.addr = Address::fromV6(raw);
  }
  ep.port = ntohs(nfct_get_attr_u16(ct, port));
  return true;
}

[[noreturn]] void malformedConntrack() {
  throw std::runtime_error("conntrack get: malformed answer");
}

// The entry of a conntrack message in out, if both its tuples are usable.
bool readEntry(const nf_conntrack* ct, ConntrackEntry& out) {
  if (!nfct_attr_is_set(ct, ATTR_L4PROTO) || nfct_get_attr_u8(ct, ATTR_L4PROTO) != IPPROTO_TCP) {
    return false;
  }
  if (!nfct_attr_is_set(ct, ATTR_L3PROTO)) return false;
  const uint8_t l3 = nfct_get_attr_u8(ct, ATTR_L3PROTO);
  if (l3 != AF_INET && l3 != AF_INET6) return false;
  return tupleEndpoint(ct, l3, ATTR_ORIG_IPV4_SRC, ATTR_ORIG_IPV6_SRC, ATTR_ORIG_PORT_SRC,
                       out.orig_src) &&
         tupleEndpoint(ct, l3, ATTR_ORIG_IPV4_DST, ATTR_ORIG_IPV6_DST, ATTR_ORIG_PORT_DST,
                       out.orig_dst) &&
         tupleEndpoint(ct, l3, ATTR_REPL_IPV4_SRC, ATTR_REPL_IPV6_SRC, ATTR_REPL_PORT_SRC,
                       out.reply_src) &&
         tupleEndpoint(ct, l3, ATTR_REPL_IPV4_DST, ATTR_REPL_IPV6_DST, ATTR_REPL_PORT_DST,
                       out.reply_dst);
}

int onConntrack(enum nf_conntrack_msg_type, struct nf_conntrack* ct, void* data) {
  auto* dump = static_cast<ConntrackDump*>(data);
  if (dump->out->size() >= kMaxConntrackEntries) return NFCT_CB_STOP;
  ConntrackEntry e;
  if (readEntry(ct, e)) {
    try {
      if (!*dump->keep || (*dump->keep)(e)) dump->out->push_back(e);
    } catch (...) {  // no exception may cross the C library
      return NFCT_CB_FAILURE;
    }
  }
  return NFCT_CB_CONTINUE;
}

void dumpConntrackHere(std::vector<ConntrackEntry>& out, const ConntrackFilter& keep) {
  nfct_handle* h = nfct_open(CONNTRACK, 0);
  if (h == nullptr) throw std::runtime_error("nfct_open: " + errnoText(errno));
  ConntrackDump dump{&out, &keep};
  if (nfct_callback_register(h, NFCT_T_ALL, onConntrack, &dump) != 0) {
    const int err = errno;
    nfct_close(h);
    throw std::runtime_error("nfct_callback_register: " + errnoText(err));
  }
  uint32_t family = AF_UNSPEC;  // both families
  const int rc = nfct_query(h, NFCT_Q_DUMP, &family);
  const int err = errno;
  nfct_close(h);
  // The callback's NFCT_CB_STOP (limit reached) ends the query early; it
  // is not an error.
  if (rc != 0 && out.size() < kMaxConntrackEntries) {
    throw std::runtime_error("conntrack dump: " + errnoText(err));
  }
}

// ---- /proc -----------------------------------------------------------------

// Reads at most `max` bytes of a file relative to dirfd; nullopt if unreadable.
std::optional<std::string> readSmall(int dirfd, const std::string& path, size_t max) {
  Fd fd(::openat(dirfd, path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return std::nullopt;
  std::string text;
  char buf[4096];
  while (text.size() < max) {
    ssize_t n = ::read(fd.get(), buf, std::min(sizeof buf, max - text.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return std::nullopt;
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

bool parseU32(std::string_view text, uint32_t& out) {
  if (text.empty()) return false;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && ptr == text.data() + text.size();
}

// ---- classification ----------------------------------------------------------

bool endpointLess(const Endpoint& a, const Endpoint& b) {
  return std::tie(a.addr.bytes, a.port) < std::tie(b.addr.bytes, b.port);
}

using Tuple = std::pair<Endpoint, Endpoint>;  // (local, remote) as one end sees it

struct TupleLess {
  bool operator()(const Tuple& a, const Tuple& b) const {
    if (endpointLess(a.first, b.first)) return true;
    if (endpointLess(b.first, a.first)) return false;
    return endpointLess(a.second, b.second);
  }
};

struct EndpointLess {
  bool operator()(const Endpoint& a, const Endpoint& b) const { return endpointLess(a, b); }
};

// 0.0.0.0, v4-mapped.
Address v4Any() {
  Address a;
  a.bytes[10] = 0xff;
  a.bytes[11] = 0xff;
  return a;
}

struct Listener {
  Endpoint local;
  bool v6only;
};

// Would `listener` accept a connection to `local`?
bool listenerTakes(const Listener& listener, const Endpoint& local) {
  if (listener.local.port != local.port) return false;
  const Address& la = listener.local.addr;
  if (la == local.addr) return true;
  // 0.0.0.0 takes IPv4 only; [::] takes IPv6 and, unless v6only, IPv4
  // (v4-mapped) too.
  if (la == v4Any()) return local.addr.isV4();
  if (la == Address{}) return !local.addr.isV4() || !listener.v6only;
  return false;
}

}  // namespace

// ---- scan_detail -------------------------------------------------------------

namespace scan_detail {

bool parseInetDiagDatagram(std::span<const uint8_t> datagram, uint32_t seq,
                           std::vector<ScannedSocket>& out, size_t max_sockets) {
  const uint8_t* data = datagram.data();
  const size_t size = datagram.size();
  size_t off = 0;
  while (off < size) {
    if (size - off < sizeof(nlmsghdr)) malformed("truncated netlink header");
    nlmsghdr h;
    std::memcpy(&h, data + off, sizeof h);
    if (h.nlmsg_len < sizeof(nlmsghdr) || h.nlmsg_len > size - off) {
      malformed("netlink message length " + std::to_string(h.nlmsg_len));
    }
    const uint8_t* payload = data + off + NLMSG_HDRLEN;
    const size_t payload_len = h.nlmsg_len - std::min<size_t>(h.nlmsg_len, NLMSG_HDRLEN);
    if (h.nlmsg_seq == seq) {
      if (h.nlmsg_type == NLMSG_DONE) {
        // A dump's DONE carries its status as an int.
        int status = 0;
        if (payload_len >= sizeof status) std::memcpy(&status, payload, sizeof status);
        if (status < 0) throw std::runtime_error("sock_diag dump failed: " + errnoText(-status));
        return true;
      }
      if (h.nlmsg_type == NLMSG_ERROR) {
        int error = 0;
        if (payload_len >= sizeof error) std::memcpy(&error, payload, sizeof error);
        throw std::runtime_error("sock_diag: " +
                                 (error < 0 ? errnoText(-error) : std::string("error message")));
      }
      if (h.nlmsg_type == SOCK_DIAG_BY_FAMILY && out.size() < max_sockets) {
        parseDiagMessage(payload, payload_len, out);
      }
    }
    off += std::min<size_t>(NLMSG_ALIGN(h.nlmsg_len), size - off);
  }
  return false;
}

uint64_t parseSocketLink(std::string_view link) {
  constexpr std::string_view kPrefix = "socket:[";
  if (link.size() <= kPrefix.size() + 1 || link.substr(0, kPrefix.size()) != kPrefix ||
      link.back() != ']') {
    return 0;
  }
  const std::string_view digits = link.substr(kPrefix.size(), link.size() - kPrefix.size() - 1);
  uint64_t inode = 0;
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), inode);
  if (ec != std::errc() || ptr != digits.data() + digits.size()) return 0;
  return inode;
}

std::optional<uint32_t> parseStatusGid(std::string_view status) {
  size_t pos = 0;
  while (pos < status.size()) {
    size_t end = status.find('\n', pos);
    if (end == std::string_view::npos) end = status.size();
    std::string_view line = status.substr(pos, end - pos);
    pos = end + 1;
    if (line.substr(0, 4) != "Gid:") continue;
    line.remove_prefix(4);
    const size_t start = line.find_first_not_of(" \t");
    if (start == std::string_view::npos) return std::nullopt;
    line.remove_prefix(start);
    const size_t stop = line.find_first_of(" \t");
    uint32_t gid = 0;
    if (!parseU32(line.substr(0, stop), gid)) return std::nullopt;
    return gid;
  }
  return std::nullopt;
}

}  // namespace scan_detail

// ---- I/O -----------------------------------------------------------------------

std::vector<ScannedSocket> scanTcpSockets(const std::string& netns_path) {
  std::vector<ScannedSocket> out;
  runInNetns(netns_path, [&] {
    dumpFamily(AF_INET, out);
    if (out.size() < kMaxScannedSockets) dumpFamily(AF_INET6, out);
  });
  return out;
}

// ConntrackReader builds its request itself: libnetfilter_conntrack's builder
// always adds an original tuple, which the kernel looks up first. The
// library's parser reads the answer.
namespace {

constexpr int kConntrackGetTimeoutMs = 1000;

class NetlinkRequest {
 public:
  explicit NetlinkRequest(uint16_t type, uint16_t flags, uint32_t seq) {
    nlmsghdr h{};
    h.nlmsg_type = type;
    h.nlmsg_flags = flags;
    h.nlmsg_seq = seq;
    append(&h, sizeof h);
  }
  void append(const void* data, size_t len) {
    const auto* p = static_cast<const uint8_t*>(data);
    buf_.insert(buf_.end(), p, p + len);
    buf_.resize(NLMSG_ALIGN(buf_.size()));
  }
  void attr(uint16_t type, const void* data, size_t len) {
    nlattr a{static_cast<uint16_t>(NLA_HDRLEN + len), type};
    append(&a, sizeof a);  // NLA_HDRLEN: already aligned
    append(data, len);
  }
  size_t beginNest(uint16_t type) {
    const size_t at = buf_.size();
    nlattr a{0, static_cast<uint16_t>(type | NLA_F_NESTED)};
    append(&a, sizeof a);
    return at;
  }
  void endNest(size_t at) {
    const auto len = static_cast<uint16_t>(buf_.size() - at);
    std::memcpy(buf_.data() + at + offsetof(nlattr, nla_len), &len, sizeof len);
  }
  std::span<const uint8_t> finish() {
    const auto len = static_cast<uint32_t>(buf_.size());
    std::memcpy(buf_.data() + offsetof(nlmsghdr, nlmsg_len), &len, sizeof len);
    return buf_;
  }

 private:
  std::vector<uint8_t> buf_;
};

void tupleAttrs(NetlinkRequest& req, bool v4, const Endpoint& src, const Endpoint& dst) {
  const size_t ip = req.beginNest(CTA_TUPLE_IP);
  if (v4) {
    req.attr(CTA_IP_V4_SRC, src.addr.bytes.data() + 12, 4);
    req.attr(CTA_IP_V4_DST, dst.addr.bytes.data() + 12, 4);
  } else {
    req.attr(CTA_IP_V6_SRC, src.addr.bytes.data(), 16);
    req.attr(CTA_IP_V6_DST, dst.addr.bytes.data(), 16);
  }
  req.endNest(ip);
  const size_t proto = req.beginNest(CTA_TUPLE_PROTO);
  const uint8_t tcp = IPPROTO_TCP;
  const uint16_t sport = htons(src.port);
  const uint16_t dport = htons(dst.port);
  req.attr(CTA_PROTO_NUM, &tcp, sizeof tcp);
  req.attr(CTA_PROTO_SRC_PORT, &sport, sizeof sport);
  req.attr(CTA_PROTO_DST_PORT, &dport, sizeof dport);
  req.endNest(proto);
}

}  // namespace

ConntrackReader::ConntrackReader(const std::string& netns_path) {
  runInNetns(netns_path, [&] {
    fd_ = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd_ < 0) throw std::runtime_error("netlink socket: " + errnoText(errno));
  });
  const timeval tv{kConntrackGetTimeoutMs / 1000, (kConntrackGetTimeoutMs % 1000) * 1000};
  if (::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
    const int err = errno;
    ::close(fd_);
    throw std::runtime_error("netlink SO_RCVTIMEO: " + errnoText(err));
  }
}

ConntrackReader::~ConntrackReader() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<ConntrackEntry> ConntrackReader::byReply(const Endpoint& reply_src,
                                                       const Endpoint& reply_dst) {
  if (reply_src.addr.isV4() != reply_dst.addr.isV4()) return std::nullopt;  // no such tuple
  const bool v4 = reply_src.addr.isV4();
  const uint32_t seq = ++seq_;
  NetlinkRequest req((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, NLM_F_REQUEST, seq);
  const nfgenmsg gen{static_cast<uint8_t>(v4 ? AF_INET : AF_INET6), NFNETLINK_V0, 0};
  req.append(&gen, sizeof gen);
  const size_t tuple = req.beginNest(CTA_TUPLE_REPLY);
  tupleAttrs(req, v4, reply_src, reply_dst);
  req.endNest(tuple);
  const auto msg = req.finish();
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd_, msg.data(), msg.size(), 0, reinterpret_cast<sockaddr*>(&kernel),
               sizeof kernel) < 0) {
    throw std::runtime_error("conntrack get: send: " + errnoText(errno));
  }
  // The answer: the entry, or an error (ENOENT: none). Answers to earlier
  // requests that timed out are skipped by their sequence number.
  std::vector<uint8_t> buf(16 * 1024);
  for (int reads = 0; reads < 16; ++reads) {
    const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("conntrack get: recv: " + errnoText(errno));
    }
    size_t len = static_cast<size_t>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, len);
         h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_seq != seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) malformedConntrack();
        nlmsgerr err;
        std::memcpy(&err, NLMSG_DATA(h), sizeof err);
        if (err.error == -ENOENT) return std::nullopt;
        throw std::runtime_error("conntrack get: " + errnoText(-err.error));
      }
      std::unique_ptr<nf_conntrack, void (*)(nf_conntrack*)> ct(nfct_new(), nfct_destroy);
      if (!ct) throw std::runtime_error("nfct_new: out of memory");
      ConntrackEntry e;
      if (nfct_nlmsg_parse(h, ct.get()) < 0 || !readEntry(ct.get(), e)) malformedConntrack();
      return e;
    }
  }
  throw std::runtime_error("conntrack get: no answer");
}

std::vector<ConntrackEntry> dumpConntrack(const std::string& netns_path, const ConntrackFilter& keep) {
  std::vector<ConntrackEntry> out;
  runInNetns(netns_path, [&] { dumpConntrackHere(out, keep); });
  return out;
}

Owners socketOwners(const std::string& proc_root, const std::set<uint64_t>& inodes,
                    size_t max_fds) {
  Owners owners;
  if (inodes.empty()) return owners;
  Fd root(::open(proc_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (root.get() < 0) return owners;

  // Processes in pid order, so that the lowest pid holding a socket wins.
  std::vector<uint32_t> pids;
  {
    const int listing = ::openat(root.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (listing < 0) return owners;
    DIR* dir = ::fdopendir(listing);
    if (dir == nullptr) {
      ::close(listing);
      return owners;
    }
    constexpr size_t kMaxPids = 4'194'304;  // the kernel's largest pid_max
    while (pids.size() < kMaxPids) {
      const dirent* e = ::readdir(dir);
      if (e == nullptr) break;
      uint32_t pid = 0;
      if (parseU32(e->d_name, pid) && pid > 0) pids.push_back(pid);
    }
    ::closedir(dir);  // closes `listing`
  }
  std::sort(pids.begin(), pids.end());

  size_t fds_seen = 0;
  for (uint32_t pid : pids) {
    if (fds_seen >= max_fds || owners.size() == inodes.size()) break;
    const std::string dir_name = std::to_string(pid);
    int fd_dir =
        ::openat(root.get(), (dir_name + "/fd").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_dir < 0) continue;  // gone, or not ours to read
    DIR* dir = ::fdopendir(fd_dir);
    if (dir == nullptr) {
      ::close(fd_dir);
      continue;
    }
    std::optional<OwnerProcess> process;  // read once, when a first socket matches
    while (fds_seen < max_fds) {
      const dirent* e = ::readdir(dir);
      if (e == nullptr) break;
      if (e->d_name[0] == '.') continue;
      ++fds_seen;
      char link[64];
      const ssize_t n = ::readlinkat(::dirfd(dir), e->d_name, link, sizeof link);
      if (n <= 0 || static_cast<size_t>(n) >= sizeof link) continue;
      const uint64_t inode = scan_detail::parseSocketLink(std::string_view(link, n));
      if (inode == 0 || !inodes.contains(inode) || owners.contains(inode)) continue;
      if (!process) {
        process.emplace();
        process->pid = pid;
        if (auto comm = readSmall(root.get(), dir_name + "/comm", 64)) {
          std::string c = comm->substr(0, comm->find('\n'));
          process->comm = c.substr(0, CW_COMM_LEN - 1);
        }
        if (auto status = readSmall(root.get(), dir_name + "/status", 16 * 1024)) {
          process->gid = scan_detail::parseStatusGid(*status).value_or(0);
        }
      }
      owners.emplace(inode, *process);
    }
    ::closedir(dir);
  }
  return owners;
}

// ---- classification ------------------------------------------------------------

ConntrackFilter conntrackFilterFor(const std::vector<ScannedSocket>& sockets) {
  auto wanted = std::make_shared<std::set<Tuple, TupleLess>>();
  for (const auto& s : sockets) {
    if (s.state != kTcpListen) wanted->insert(Tuple{s.local, s.remote});
  }
  return [wanted](const ConntrackEntry& e) {
    return wanted->contains(Tuple{e.orig_src, e.orig_dst}) ||
           wanted->contains(Tuple{e.reply_src, e.reply_dst});
  };
}

std::vector<Connection> classifyOpenConnections(const std::vector<ScannedSocket>& sockets,
                                                const std::vector<ConntrackEntry>& conntrack,
                                                const Owners& owners,
                                                const ClassifyConfig& config) {
  std::vector<Listener> listeners;
  // The sidecar's accepted ends: app's end -> sidecar's end.
  std::multimap<Endpoint, Endpoint, EndpointLess> sidecar_peers;
  for (const auto& s : sockets) {
    if (s.state == kTcpListen) {
      listeners.push_back({s.local, s.v6only});
    } else if (s.state == kTcpEstablished && s.local.port == config.redirect_port) {
      sidecar_peers.emplace(s.remote, s.local);
    }
  }

  // Conntrack by the initiator's view (orig src, orig dst): redirected or
  // not; and the responders' views (reply src, reply dst) of connections
  // whose two tuples differ.
  std::map<Tuple, bool, TupleLess> initiated;
  std::set<Tuple, TupleLess> responded;
  const ConntrackFilter usable = conntrackFilterFor(sockets);
  for (const auto& e : conntrack) {
    if (!usable(e)) continue;
    const bool redirected =
        e.reply_src.port == config.redirect_port && !(e.reply_src == e.orig_dst);
    auto [it, inserted] = initiated.emplace(Tuple{e.orig_src, e.orig_dst}, redirected);
    if (!inserted) it->second = it->second || redirected;
    responded.insert(Tuple{e.reply_src, e.reply_dst});
  }

  std::vector<Connection> out;
  std::set<uint64_t> seen_inodes;
  for (const auto& s : sockets) {
    if (s.state != kTcpEstablished && s.state != kTcpSynSent) continue;
    if (s.local.port == config.redirect_port) continue;  // the sidecar's accepted end
    if (s.remote.port == 0 || s.remote.addr.isUnspecified()) continue;
    const Tuple tuple{s.local, s.remote};
    const auto ct = initiated.find(tuple);
    if (s.state == kTcpEstablished) {
      const bool accepted = std::any_of(listeners.begin(), listeners.end(), [&](const Listener& l) {
        return listenerTakes(l, s.local);
      });
      if (accepted) continue;
      // The responding end of a connection conntrack saw the peer open.
      if (ct == initiated.end() && responded.contains(tuple)) continue;
    }
    if (s.inode != 0 && !seen_inodes.insert(s.inode).second) continue;

    Connection c;
    c.outcome = Outcome::Open;
    c.flags = kScanFlagFoundAtStart;
    if (s.state == kTcpSynSent) c.flags |= kScanFlagConnecting;
    c.netns = config.netns;
    c.uid = s.uid;
    c.cgroup_id = s.cgroup_id;
    c.sock_id = s.inode;
    c.src = s.local;
    c.dst = s.remote;
    if (auto o = owners.find(s.inode); s.inode != 0 && o != owners.end()) {
      c.pid = o->second.pid;
      c.gid = o->second.gid;
      c.flags |= CW_F_OWNER_KNOWN;
      const size_t n = std::min(o->second.comm.size(), c.comm.size() - 1);
      std::memcpy(c.comm.data(), o->second.comm.data(), n);
    }

    bool captured = false;
    if (ct != initiated.end()) {
      captured = ct->second;
    } else {
      const auto [lo, hi] = sidecar_peers.equal_range(s.local);
      // A sidecar end that is this socket's own destination is a direct
      // connection to the redirect port, not a redirect.
      captured = std::any_of(lo, hi, [&](const auto& p) { return !(p.second == s.remote); });
    }
    if (config.proxy_cgroups.contains(s.cgroup_id)) {
      c.verdict = Verdict::Proxy;
    } else if (captured) {
      c.verdict = Verdict::Captured;
    } else if (s.remote.addr.isLoopback() || s.remote.addr == s.local.addr) {
      c.verdict = Verdict::Local;
    } else {
      c.verdict = Verdict::Bypassed;
    }
    out.push_back(c);
  }

  std::sort(out.begin(), out.end(), [](const Connection& a, const Connection& b) {
    if (endpointLess(a.src, b.src)) return true;
    if (endpointLess(b.src, a.src)) return false;
    if (endpointLess(a.dst, b.dst)) return true;
    if (endpointLess(b.dst, a.dst)) return false;
    return a.sock_id < b.sock_id;
  });
  return out;
}

}  // namespace cw
