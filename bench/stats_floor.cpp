#include "stats_floor.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace cw::bench {

StatsFloor::StatsFloor() {
  btf* vmlinux = btf__load_vmlinux_btf();
  if (vmlinux == nullptr) {
    throw std::runtime_error("stats floor: cannot read the kernel's BTF: " +
                             std::string(std::strerror(errno)));
  }
  const int type_id =
      btf__find_by_name_kind(vmlinux, "btf_trace_inet_sock_set_state", BTF_KIND_TYPEDEF);
  btf__free(vmlinux);
  if (type_id < 0)
    throw std::runtime_error("stats floor: the kernel has no inet_sock_set_state tracepoint");

  // r0 = 0; exit
  const bpf_insn insns[] = {
      {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 0, .imm = 0},
      {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0},
  };
  LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_TRACE_RAW_TP,
              .attach_btf_id = static_cast<__u32>(type_id));
  prog_fd_ = bpf_prog_load(BPF_PROG_TYPE_TRACING, "cwb_stats_floor", "GPL", insns, 2, &opts);
  if (prog_fd_ < 0) {
    throw std::runtime_error("stats floor: cannot load the empty program: " +
                             std::string(std::strerror(errno)));
  }
  link_fd_ = bpf_raw_tracepoint_open(nullptr, prog_fd_);
  if (link_fd_ < 0) {
    const int err = errno;
    ::close(prog_fd_);
    throw std::runtime_error("stats floor: cannot attach the empty program: " +
                             std::string(std::strerror(err)));
  }
}

StatsFloor::~StatsFloor() {
  if (link_fd_ >= 0) ::close(link_fd_);
  if (prog_fd_ >= 0) ::close(prog_fd_);
}

StatsFloor::Reading StatsFloor::read() const {
  bpf_prog_info info{};
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(prog_fd_, &info, &len) != 0) return {};
  return Reading{info.run_cnt, info.run_time_ns};
}

}  // namespace cw::bench
