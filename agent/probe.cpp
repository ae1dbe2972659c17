#include "probe.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdarg>
#include <ctime>
#include <cstring>
#include <mutex>
#include <vector>

#include "capture.skel.h"

namespace cw {
namespace {

// libbpf reports through a process-wide print callback; collect what it
// says during open/load so a failure can show the verifier log.
std::mutex g_libbpf_log_mutex;
std::string* g_libbpf_log = nullptr;

int collectLibbpfLog(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  std::lock_guard lock(g_libbpf_log_mutex);
  if (g_libbpf_log == nullptr || g_libbpf_log->size() > (256u << 10)) return 0;
  char buf[1024];
  int n = vsnprintf(buf, sizeof buf, fmt, args);
  if (n > 0) g_libbpf_log->append(buf, std::min<size_t>(static_cast<size_t>(n), sizeof buf - 1));
  return 0;
}

class LibbpfLogCapture {
 public:
  LibbpfLogCapture() {
    std::lock_guard lock(g_libbpf_log_mutex);
    g_libbpf_log = &log_;
    previous_ = libbpf_set_print(collectLibbpfLog);
  }
  ~LibbpfLogCapture() {
    std::lock_guard lock(g_libbpf_log_mutex);
    libbpf_set_print(previous_);
    g_libbpf_log = nullptr;
  }
  const std::string& text() const { return log_; }

 private:
  std::string log_;
  libbpf_print_fn_t previous_ = nullptr;
};

std::string privilegeHint(int err) {
  if (err == EPERM || err == EACCES) {
    return " (permission denied: run as root, or grant CAP_BPF, CAP_PERFMON and "
           "CAP_SYS_RESOURCE; kernel.unprivileged_bpf_disabled does not matter then)";
  }
  return "";
}

}  // namespace

uint64_t monotonicNowNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::unique_ptr<Probe> Probe::open(const ProbeOptions& options, Handler handler) {
  struct stat st {};
  if (::stat("/sys/kernel/btf/vmlinux", &st) != 0) {
    throw ProbeError(
        "kernel BTF not found (/sys/kernel/btf/vmlinux): capturewatch needs a kernel built with "
        "CONFIG_DEBUG_INFO_BTF=y");
  }
  if (options.ring_buffer_bytes < 4096 ||
      (options.ring_buffer_bytes & (options.ring_buffer_bytes - 1)) != 0) {
    throw ProbeError("ring buffer size must be a power of two of at least 4096 bytes, got " +
                     std::to_string(options.ring_buffer_bytes));
  }

  std::unique_ptr<Probe> probe(new Probe());
  probe->handler_ = std::move(handler);
  LibbpfLogCapture log;

  probe->skel_ = capture_bpf::open();
  if (probe->skel_ == nullptr) {
    int err = errno;
    throw ProbeError("cannot open the BPF object: " + std::string(strerror(err)) + "\n" +
                     log.text());
  }
  probe->skel_->rodata->redirect_port = options.redirect_port;
  const int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) throw ProbeError("cannot count the CPUs: " + std::string(strerror(-ncpu)));
  bpf_map__set_max_entries(probe->skel_->maps.rings, static_cast<uint32_t>(ncpu));
  // The owner table has twice the slots of the sockets it must hold, in
  // buckets of CW_OWNER_BUCKET_SLOTS (capture.bpf.c): a socket whose two buckets
  // are both full is counted, which with at most max_tracked_sockets open
  // practically never happens.
  const uint64_t owner_buckets =
      (2 * static_cast<uint64_t>(options.max_tracked_sockets) + CW_OWNER_BUCKET_SLOTS - 1) /
      CW_OWNER_BUCKET_SLOTS;
  probe->skel_->rodata->owner_buckets = static_cast<uint32_t>(owner_buckets);
  // Its first buckets are the hot area where new keys go first
  // (capture.bpf.c, hotOwnerBuckets): a table of one bucket has none.
  probe->skel_->rodata->hot_buckets =
      static_cast<uint32_t>(hotOwnerBuckets(owner_buckets, static_cast<uint64_t>(ncpu)));
  bpf_map__set_max_entries(probe->skel_->maps.owner_keys, static_cast<uint32_t>(owner_buckets));
  bpf_map__set_max_entries(probe->skel_->maps.owners,
                           static_cast<uint32_t>(owner_buckets * CW_OWNER_BUCKET_SLOTS));

  if (int err = capture_bpf::load(probe->skel_); err != 0) {
    throw ProbeError("cannot load the BPF programs: " + std::string(strerror(-err)) +
                     privilegeHint(-err) + "\n" + log.text());
  }
  if (int err = capture_bpf::attach(probe->skel_); err != 0) {
    throw ProbeError(
        "cannot attach to the tracepoints sock/inet_sock_set_state and tcp/tcp_receive_reset: " +
        std::string(strerror(-err)) + privilegeHint(-err) + "\n" + log.text());
  }
  probe->owner_keys_bytes_ =
      static_cast<size_t>(owner_buckets) * sizeof(uint64_t) * CW_OWNER_BUCKET_SLOTS;
  if (options.read_budget == 0) throw ProbeError("the ring buffer read budget must be at least 1");
  probe->read_budget_ = options.read_budget;
  probe->ring_share_ = std::max<uint32_t>(1, options.read_budget / static_cast<uint32_t>(ncpu));
  probe->epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (probe->epoll_fd_ < 0) {
    throw ProbeError("cannot create an epoll instance: " + std::string(strerror(errno)));
  }
  // One ring per possible CPU (the programs write to their CPU's ring).
  const uint32_t page = static_cast<uint32_t>(::sysconf(_SC_PAGESIZE));
  const uint32_t per_cpu =
      std::max(page, std::bit_floor(options.ring_buffer_bytes / static_cast<uint32_t>(ncpu)));
  for (uint32_t cpu = 0; cpu < static_cast<uint32_t>(ncpu); ++cpu) {
    const int fd = bpf_map_create(BPF_MAP_TYPE_RINGBUF, "cw_ring", 0, 0, per_cpu, nullptr);
    if (fd < 0) {
      int err = errno;
      throw ProbeError("cannot create the BPF ring buffer of CPU " + std::to_string(cpu) + " (" +
                       std::to_string(per_cpu) + " bytes): " + strerror(err) + privilegeHint(err));
    }
    probe->ring_fds_.push_back(fd);
    if (bpf_map_update_elem(bpf_map__fd(probe->skel_->maps.rings), &cpu, &fd, BPF_ANY) != 0) {
      int err = errno;
      throw ProbeError("cannot install the ring buffer of CPU " + std::to_string(cpu) + ": " +
                       strerror(err));
    }
    auto reader = std::make_unique<RingReader>();
    reader->probe = probe.get();
    reader->rb = ring_buffer__new(fd, &Probe::onRecord, reader.get(), nullptr);
    if (reader->rb == nullptr) {
      int err = errno;
      throw ProbeError("cannot open the BPF ring buffer: " + std::string(strerror(err)));
    }
    probe->readers_.push_back(std::move(reader));
    // The ring itself is waited on (readable while it holds records), not
    // the reader's own epoll instance: one epoll for all, none nested.
    epoll_event ev{};
    ev.events = EPOLLIN;
    if (::epoll_ctl(probe->epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      int err = errno;
      throw ProbeError("cannot wait on the BPF ring buffer: " + std::string(strerror(err)));
    }
  }
  return probe;
}

Probe::~Probe() {
  for (auto& r : readers_) ring_buffer__free(r->rb);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  if (skel_ != nullptr) capture_bpf::destroy(skel_);
  for (int fd : ring_fds_) ::close(fd);
}

// Returned by onRecord when a ring's share is taken: libbpf then stops
// reading that ring (the record just given is consumed) and
// ring_buffer__consume returns it.
constexpr int kShareTaken = -ENOSPC;

int Probe::onRecord(void* ctx, void* data, size_t size) {
  auto* r = static_cast<RingReader*>(ctx);
  r->probe->reorder_.add(std::span<const uint8_t>(static_cast<const uint8_t*>(data), size));
  if (size >= sizeof r->last_ts) std::memcpy(&r->last_ts, data, sizeof r->last_ts);
  return --r->left == 0 ? kShareTaken : 0;
}

void Probe::watchNetns(uint32_t netns_inode, uint32_t target_id) {
  cw_netns_value value{target_id, 0};
  if (bpf_map__update_elem(skel_->maps.watched_netns, &netns_inode, sizeof netns_inode, &value,
                           sizeof value, BPF_ANY) != 0) {
    int err = errno;
    throw ProbeError("cannot add netns " + std::to_string(netns_inode) +
                     " to the watched set: " + strerror(err));
  }
}

void Probe::unwatchNetns(uint32_t netns_inode) {
  bpf_map__delete_elem(skel_->maps.watched_netns, &netns_inode, sizeof netns_inode, 0);
}

bool Probe::addProxyCgroup(uint64_t cgroup_id) {
  const uint8_t one = 1;
  return bpf_map__update_elem(skel_->maps.proxy_cgroups, &cgroup_id, sizeof cgroup_id, &one,
                              sizeof one, BPF_ANY) == 0;
}

void Probe::removeProxyCgroup(uint64_t cgroup_id) {
  bpf_map__delete_elem(skel_->maps.proxy_cgroups, &cgroup_id, sizeof cgroup_id, 0);
}

void Probe::wait(int timeout_ms) {
  // Records left by the last read are there now: no wait (a ring the
  // reader is behind on does not wake it).
  epoll_event ev{};  // which ring does not matter: drain() reads them all
  if (::epoll_wait(epoll_fd_, &ev, 1, behind_ ? 0 : timeout_ms) < 0 && errno != EINTR) {
    throw ProbeError("ring buffer poll failed: " + std::string(strerror(errno)));
  }
}

int Probe::poll(int timeout_ms) {
  wait(timeout_ms);
  return drain();
}

int Probe::drain() {
  // "now" before the read: a record stamped more than kSettleNs before it
  // is in its ring by then, so this read has it.
  const uint64_t now = monotonicNowNs();
  const uint64_t settled_now = now > kSettleNs ? now - kSettleNs : 0;
  // While a ring the reads left behind catches up, the other rings' newer
  // records are held here (they cannot go before its older ones): past
  // kHeldRounds budgets of them, the rings that are not behind wait in the
  // kernel instead (a ring that overflows meanwhile counts its losses).
  const bool held_full =
      reorder_.held() >= static_cast<size_t>(read_budget_) * kHeldRounds &&
      std::any_of(readers_.begin(), readers_.end(), [](const auto& r) { return r->more; });
  uint32_t budget = read_budget_;
  int n = 0;
  for (auto& r : readers_) r->skipped = held_full && !r->more;
  for (bool first_round = true;; first_round = false) {
    // The first round reads every ring but the skipped ones; the next ones
    // only the rings that had more than their share, until the budget is
    // spent.
    bool cut = false;
    for (auto& r : readers_) {
      if (r->skipped || !(first_round || r->more) || budget == 0) continue;
      const uint32_t take = std::min(ring_share_, budget);
      r->left = take;
      const int err = ring_buffer__consume(r->rb);
      const uint32_t got = take - r->left;
      n += static_cast<int>(got);
      budget -= got;
      if (err < 0 && err != kShareTaken) {
        throw ProbeError("ring buffer read failed: " + std::string(strerror(-err)));
      }
      r->more = err == kShareTaken;
      if (!r->more) r->empty_at = settled_now;
      cut = cut || r->more;
    }
    // A ring that may hold more (its share taken) holds records stamped
    // after its last one read (less the moments a program was interrupted
    // between its reserve and its stamp: kSettleNs covers them); a skipped
    // one, records stamped after the last read that emptied it settled. Only
    // what is older than that is complete. Never less than what an earlier
    // read settled.
    uint64_t settled = settled_now;
    for (const auto& r : readers_) {
      uint64_t complete = settled_now;
      if (r->more) {
        complete = r->last_ts > kSettleNs ? r->last_ts - kSettleNs : 0;
      } else if (r->skipped) {
        complete = r->empty_at;
      }
      settled = std::min(settled, std::max(settled_ns_, complete));
    }
    reorder_.release(settled, handler_);
    settled_ns_ = std::max(settled_ns_, settled);
    if (!cut || budget == 0) break;
  }
  behind_ = std::any_of(readers_.begin(), readers_.end(),
                        [](const auto& r) { return r->more || r->skipped; });
  return n;
}

size_t Probe::flush() { return reorder_.releaseAll(handler_); }

uint64_t Probe::sumCounter(uint32_t idx) const {
  // Read on every poll (lost accepts): the per-CPU buffer is kept, not allocated.
  if (counter_values_.empty()) {
    const int ncpu = libbpf_num_possible_cpus();
    counter_values_.resize(static_cast<size_t>(ncpu > 0 ? ncpu : 1));
  }
  if (bpf_map__lookup_elem(skel_->maps.counters, &idx, sizeof idx, counter_values_.data(),
                           counter_values_.size() * sizeof(uint64_t), 0) != 0) {
    return 0;
  }
  uint64_t total = 0;
  for (uint64_t v : counter_values_) total += v;
  return total;
}

uint64_t Probe::lostAccepts() const { return sumCounter(CW_CNT_LOST_PASSIVE); }

uint64_t Probe::runsSkipped() const {
  uint64_t total = 0;
  for (const bpf_program* prog : {skel_->progs.cw_set_state, skel_->progs.cw_receive_reset}) {
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) == 0) total += info.recursion_misses;
  }
  return total;
}

int64_t Probe::trackedSockets() const {
  // The table is mapped read-only a window at a time: mapped whole, it would
  // add its size (2 MiB with the default bound, 16 MiB at a million) to the
  // agent's resident memory. The programs claim and free keys meanwhile:
  // each word is read once, whole.
  constexpr size_t kWindow = 256 * 1024;  // a multiple of the page size
  const int fd = bpf_map__fd(skel_->maps.owner_keys);
  int64_t total = 0;
  for (size_t offset = 0; offset < owner_keys_bytes_; offset += kWindow) {
    const size_t len = std::min(kWindow, owner_keys_bytes_ - offset);
    void* window = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
    if (window == MAP_FAILED) return -1;
    const auto* keys = static_cast<const uint64_t*>(window);
    for (size_t i = 0; i < len / sizeof(uint64_t); ++i) {
      total += __atomic_load_n(&keys[i], __ATOMIC_RELAXED) != 0 ? 1 : 0;
    }
    ::munmap(window, len);
  }
  return total;
}

ProbeCounters Probe::counters() const {
  // What a loss lost (lost_active, lost_passive) is read before its cause
  // (ringbuf_lost, owner_insert_failed), which the programs count first: a
  // loss counted in the one read is then always in the other (the agent's
  // "records lost" line names its cause from them).
  ProbeCounters c;
  c.lost_active = sumCounter(CW_CNT_LOST_ACTIVE);
  c.lost_passive = sumCounter(CW_CNT_LOST_PASSIVE);
  c.ringbuf_lost = sumCounter(CW_CNT_RINGBUF_LOST);
  c.owner_insert_failed = sumCounter(CW_CNT_OWNER_INSERT_FAIL);
  c.submitted = sumCounter(CW_CNT_EVENTS);
  c.runs_skipped = runsSkipped();
  return c;
}

}  // namespace cw
