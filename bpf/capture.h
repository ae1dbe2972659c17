/* Boundary between the BPF programs (capture.bpf.c) and the agent.
 * Pure C, fixed-size types only: included by BPF C and by C++ (agent/event.h
 * checks the layout with static_assert). */
#ifndef CAPTUREWATCH_CAPTURE_H
#define CAPTUREWATCH_CAPTURE_H

#ifdef __cplusplus
#include <linux/types.h>
#endif

#define CW_COMM_LEN 16
#define CW_ADDR_LEN 16
/* Keys per bucket of the kernel's owner table (owner_keys: one cache line). */
#define CW_OWNER_BUCKET_SLOTS 8

/* Kinds of ring-buffer record. */
enum cw_event_kind {
	/* An app socket of a watched netns went SYN_SENT -> ESTABLISHED.
	 * Owner fields come from the CLOSE -> SYN_SENT record. */
	CW_EV_ACTIVE_ESTABLISHED = 1,
	/* An app socket went SYN_SENT -> CLOSE: connect() failed. */
	CW_EV_ACTIVE_FAILED = 2,
	/* A socket of a watched netns with local port == redirect port went
	 * SYN_RECV -> ESTABLISHED: the sidecar accepted a redirected connection.
	 * src = the sidecar's local end, dst = the peer (the app's end). */
	CW_EV_PASSIVE_ESTABLISHED = 3,
	/* An established app socket reached CLOSE: outcome of the connection
	 * (flags, bytes_received). A struct cw_close_event, netns 0: the agent
	 * knows the connection by its sock_id from its established record.
	 * Not sent for a socket of the proxy (CW_F_PROXY_OWNER), nor for one
	 * whose accept on the redirect port the kernel matched to it
	 * (CW_F_ACCEPT_SEEN): both are decided without it. */
	CW_EV_ACTIVE_CLOSED = 4,
};

/* cw_event.flags */
#define CW_F_OWNER_KNOWN 0x01    /* owner fields were recorded at SYN_SENT */
#define CW_F_RESET_RECEIVED 0x02 /* tcp_receive_reset fired for this socket */
#define CW_F_PEER_FIN 0x04       /* the peer closed first (closed from CLOSE_WAIT or LAST_ACK) */
#define CW_F_PROXY_OWNER 0x08    /* the owner's cgroup was in proxy_cgroups at connect(): the
                                  * socket's close record is not sent */
#define CW_F_ACCEPT_SEEN 0x10    /* kernel only (never in a record): the sidecar's accept of
                                  * this socket's connection was sent, so its close is not
                                  * (kept as a tag of the socket's key in the owner table) */

/* Every record starts with the same 32 bytes (struct cw_close_event), and
 * each kind sends only the prefix of struct cw_event it needs: a close only
 * the head (40 bytes in the ring with its header instead of 112), the
 * sidecar's accept the head and the socket's ends (struct cw_accept_event,
 * 80 bytes), an app socket's established or failed record the whole of
 * struct cw_event. Ring memory is cold when a record is written, so each
 * cache line less is a miss less (README Performance). The agent tells
 * them by kind; the timestamp comes first in all (it orders records by it).
 * CW_RECORD_HEAD is the head's fields, CW_RECORD_ENDS the ends'. */
#define CW_RECORD_HEAD                                                                     \
	__u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC, nanoseconds */       \
	__u64 sock_id;        /* kernel address of struct sock: opaque identity while open */ \
	__u64 bytes_received; /* CLOSED only: tcp_sock.bytes_received (the peer's FIN     \
	                       * counts as one) if any data segment came, else 0 */         \
	__u32 netns;          /* network namespace inode number (0 in a close record) */   \
	__u8 kind;            /* enum cw_event_kind */                                     \
	__u8 flags;           /* CW_F_* */                                                 \
	__u16 family          /* AF_INET (2) or AF_INET6 (10); 0 in a close record */

/* A socket's two ends, after the head in an accept and in a full record. */
#define CW_RECORD_ENDS                                                                     \
	__u8 saddr[CW_ADDR_LEN]; /* local address, network byte order; AF_INET: first 4 bytes */ \
	__u8 daddr[CW_ADDR_LEN]; /* remote address, network byte order; AF_INET: first 4 bytes */ \
	__u16 sport;          /* local port, host byte order */                            \
	__u16 dport           /* remote port, host byte order */

/* A close (CW_EV_ACTIVE_CLOSED): the head alone. */
struct cw_close_event {
	CW_RECORD_HEAD;
};

/* The sidecar's accept (CW_EV_PASSIVE_ESTABLISHED): the head and the ends. */
struct cw_accept_event {
	CW_RECORD_HEAD;
	CW_RECORD_ENDS;
	__u32 _pad; /* struct cw_event's pid */
};

/* An app socket's established or failed record: the head, the ends, then
 * its owner. */
struct cw_event {
	CW_RECORD_HEAD;
	CW_RECORD_ENDS;
	__u32 pid;            /* tgid of the connecting task (0 if unknown) */
	__u64 cgroup_id;      /* cgroup v2 id of the connecting task (0 if unknown) */
	__u32 uid;            /* real uid of the connecting task */
	__u32 gid;            /* real gid of the connecting task */
	char comm[CW_COMM_LEN]; /* task comm at connect(), NUL-terminated */
};

/* Index into the per-CPU counters array. */
enum cw_counter {
	CW_CNT_RINGBUF_LOST = 0,    /* bpf_ringbuf_reserve failed: event dropped */
	CW_CNT_OWNER_INSERT_FAIL,   /* owner map update failed */
	CW_CNT_EVENTS,              /* records submitted */
	CW_CNT_LOST_ACTIVE,         /* app connections not seen at all: their established
	                             * or failed record was lost, or their owner could
	                             * not be recorded (owner map full) */
	CW_CNT_LOST_PASSIVE,        /* of the lost: an accept on the redirect port (its
	                             * connection cannot be told captured) */
	CW_CNT_MAX,
};

/* Value of the watched_netns map: which target a netns belongs to. */
struct cw_netns_value {
	__u32 target_id;
	__u32 _pad;
};

#endif
