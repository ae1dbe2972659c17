// SPDX-License-Identifier: GPL-2.0
/* capturewatch: observe outbound TCP connections of watched network
 * namespaces and the sidecar's accepts on the redirect port.
 *
 * BTF-typed raw tracepoints only (tp_btf: no kprobes, no fentry trampoline,
 * no tracefs needed):
 *   sock/inet_sock_set_state (sk, oldstate, newstate)
 *   tcp/tcp_receive_reset    (sk)
 *
 * The programs run for every TCP state change on the node, so the common
 * path is kept short: the transitions that cannot concern an app socket
 * return before any map lookup, the socket is read with plain loads (tp_btf
 * gives a typed pointer; no bpf_probe_read_kernel call per field), and a
 * socket whose netns is not in watched_netns costs one hash lookup at
 * connect() and a look into the owner table (its two buckets) at its
 * established and at its close. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "capture.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

char LICENSE[] SEC("license") = "GPL";

/* Set between open and load. */
const volatile __u16 redirect_port = 15001;

struct owner {
	__u64 cgroup_id;
	__u32 pid;
	__u32 uid;
	__u32 gid;
	__u32 netns;
	__u8 flags;
	__u8 _pad[7];
	char comm[CW_COMM_LEN];
};

/* Active sockets of watched netns, from CLOSE->SYN_SENT until CLOSE. Every
 * TCP socket passes through CLOSE (a timewait one at tcp_done), where its
 * entry is freed.
 *
 * Not a BPF hash map: its insert and delete take a bucket lock and a
 * free-list lock with interrupts off, and cost 220-290 ns together on the
 * bench machine, its lookup 37 ns; these arrays, 31 and 13 ns (README
 * Performance). A socket's entry is in one of two buckets of
 * CW_OWNER_BUCKET_SLOTS keys (a cache line each) of the table's hot area, or
 * if both are full of its overflow area (owner_buckets, below), chosen by a
 * hash of its address (buckets_in): a key is claimed with a compare-and-swap and freed by
 * storing 0, so no lock is taken. The agent sizes the table at twice
 * --max-tracked-sockets slots: a socket whose two buckets are both full is
 * not tracked and is counted (the connection is then counted as lost),
 * instead of silently evicting the entry of a connection still open. */
struct owner_bucket {
	__u64 sk[CW_OWNER_BUCKET_SLOTS];
};

/* Mappable: the agent counts the keys in use (its tracked-sockets gauge) by
 * reading the table's memory, not by copying it out element by element
 * (9 ms of kernel time with the default bound). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1); /* set at load: owner_buckets */
	__type(key, __u32);
	__type(value, struct owner_bucket);
} owner_keys SEC(".maps");

/* Entry i of owners belongs to key i % CW_OWNER_BUCKET_SLOTS of bucket
 * i / CW_OWNER_BUCKET_SLOTS. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CW_OWNER_BUCKET_SLOTS); /* set at load: owner_buckets * slots */
	__type(key, __u32);
	__type(value, struct owner);
} owners SEC(".maps");

/* Set between open and load: the number of buckets of owner_keys, and how
 * many of them, at its start, are its hot area (0 in a table too small to
 * split). A new key goes to the hot area while its two buckets there have
 * room, else to the rest of the table (the overflow area). The hot area is
 * small (64 buckets per CPU, 128 to 512: 8-32 KiB of keys and 48-192 KiB of
 * entries), so the few hundred sockets a connection storm holds at any time
 * stay within a few pages that the CPU keeps cached and mapped; spread over
 * the whole table (the default bound's is 2 MiB of keys and 12 MiB of
 * entries), every connection's lookups were cache and TLB misses, about
 * 0.5 us per connection (README Performance). */
const volatile __u32 owner_buckets = 1;
const volatile __u32 hot_buckets = 0;

/* Keys in use in the overflow area: lookups skip that area while it holds
 * none, so a socket that was never tracked (a server's, another pod's) costs
 * no miss there at its close. Raised before a key is claimed there and
 * lowered after one is freed, so a lookup that could find the key sees it
 * non-zero. */
__s64 overflow_keys = 0;

/* Filled by the agent: netns inode -> target. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct cw_netns_value);
} watched_netns SEC(".maps");

/* Filled by the agent: cgroup v2 ids of the sidecars (--proxy-cgroup). The
 * agent decides a proxy connection at its established record, so the close
 * record of a socket whose owner is in one of these is not sent: one record
 * fewer for every connection the sidecar makes upstream. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} proxy_cgroups SEC(".maps");

/* The app sockets this CPU saw become ESTABLISHED last. A redirected
 * connection's handshake with the sidecar runs on loopback, where the app's
 * socket becomes ESTABLISHED and then, in the same softirq run on the same
 * CPU, the sidecar's accepted one: so the accept finds the app's socket here
 * and marks its owner entry, and that socket's close record, which the agent
 * would ignore (the connection is decided captured at its accept), is not
 * sent. A miss (the slot was taken by another socket in between) only costs
 * that close record. */
#define CW_RECENT_SLOTS 4
struct recent {
	__u64 sk[CW_RECENT_SLOTS];
	__u64 addr[CW_RECENT_SLOTS][2]; /* the app's local address, IPv4 as ::ffff:a.b.c.d */
	__u32 netns[CW_RECENT_SLOTS];
	__u16 port[CW_RECENT_SLOTS];
	__u32 next;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct recent);
} recent_established SEC(".maps");

/* One ring buffer per CPU, created and sized by the agent: a record goes to
 * the ring of the CPU it is made on. A single shared ring made every record
 * take a lock and a producer position that the CPUs pass back and forth
 * (bench, README Performance). The agent puts the rings' records back in
 * time order (agent/reorder_buffer.h). */
struct ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096); /* template only: the size of the real ones does not matter */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1); /* set at load: the number of possible CPUs */
	__type(key, __u32);
	__array(values, struct ring);
} rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CW_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline __u32 sk_netns(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

static __always_inline bool netns_watched(__u32 netns)
{
	return bpf_map_lookup_elem(&watched_netns, &netns) != NULL;
}

/* A record's ends (at the same offsets in struct cw_accept_event and
 * struct cw_event). */
_Static_assert(__builtin_offsetof(struct cw_accept_event, saddr) ==
		       __builtin_offsetof(struct cw_event, saddr) &&
		       __builtin_offsetof(struct cw_accept_event, dport) ==
			       __builtin_offsetof(struct cw_event, dport),
	       "a full record starts with an accept record");
static __always_inline void fill_ends(struct cw_accept_event *e, const struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;

	e->family = family;
	__builtin_memset(e->saddr, 0, CW_ADDR_LEN);
	__builtin_memset(e->daddr, 0, CW_ADDR_LEN);
	if (family == AF_INET) {
		__u32 s4 = sk->__sk_common.skc_rcv_saddr;
		__u32 d4 = sk->__sk_common.skc_daddr;
		__builtin_memcpy(e->saddr, &s4, 4);
		__builtin_memcpy(e->daddr, &d4, 4);
	} else {
		__builtin_memcpy(e->saddr, &sk->__sk_common.skc_v6_rcv_saddr, CW_ADDR_LEN);
		__builtin_memcpy(e->daddr, &sk->__sk_common.skc_v6_daddr, CW_ADDR_LEN);
	}
	e->sport = sk->__sk_common.skc_num;
	e->dport = bpf_ntohs(sk->__sk_common.skc_dport);
}

/* A socket's address as a number: the verifier refuses arithmetic on a
 * socket pointer (the hashes below), not on a value read back from a map.
 * One slot per program: the kernel does not run a program on a CPU where it
 * is already running (the run is skipped and counted), but cw_receive_reset
 * can interrupt cw_set_state between its store and its load. */
enum { CW_SCRATCH_SET_STATE, CW_SCRATCH_RESET, CW_SCRATCH_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CW_SCRATCH_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sk_scratch SEC(".maps");

static __always_inline __u64 sk_key(const struct sock *sk, __u32 program)
{
	__u64 *v = bpf_map_lookup_elem(&sk_scratch, &program);
	if (!v)
		return 0;
	*(volatile __u64 *)v = (__u64)sk;
	return *(volatile __u64 *)v;
}

/* A socket's address mixed into 64 well-spread bits (MurmurHash3's
 * finalizer). Socket addresses come in runs a slab object apart; a plain
 * multiplicative hash of them filled some buckets early (2.5% of a million
 * such addresses found both of theirs full at half load, against none with
 * this mix and the placement of claim_in_area). */
static __always_inline __u64 mix(__u64 key)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdULL;
	key ^= key >> 33;
	key *= 0xc4ceb9fe1a85ec53ULL;
	key ^= key >> 33;
	return key;
}

/* The two buckets a socket's entry may be in within the area of `n` buckets
 * that starts at bucket `first`: the halves of its mix, each scaled to
 * [0, n). */
static __always_inline void buckets_in(__u64 h, __u32 first, __u32 n, __u32 b[2])
{
	b[0] = first + (__u32)(((h >> 32) * n) >> 32);
	b[1] = first + (__u32)(((h & 0xffffffffULL) * n) >> 32);
}

/* A key of owner_keys is the socket's address (8-byte aligned) with tag bits
 * in its low bits, so that a socket's close reads only its key, never its
 * owner entry (another cache line, usually cold by then: README
 * Performance). CW_KEY_QUIET: the socket's close record is not needed (its
 * owner is the proxy's, or the sidecar's accept of its connection was sent).
 * CW_KEY_RESET: a reset was received (tcp_receive_reset). */
#define CW_KEY_QUIET 1ULL
#define CW_KEY_RESET 2ULL
#define CW_KEY_TAGS 7ULL

/* The owner entry of the socket at `key` in the area of `n` buckets from
 * bucket `first` (h: mix(key)), or NULL; *slot is set to its index in owners
 * (the same index of the key in owner_keys' buckets) and *tags to its key's
 * tag bits. */
static __always_inline struct owner *find_in_area(__u64 key, __u64 h, __u32 first, __u32 n,
						  __u32 *slot, __u64 *tags)
{
	__u32 b[2];
	buckets_in(h, first, n, b);
#pragma unroll
	for (int j = 0; j < 2; j++) {
		struct owner_bucket *keys = bpf_map_lookup_elem(&owner_keys, &b[j]);
		if (!keys)
			return NULL;
#pragma unroll
		for (int i = 0; i < CW_OWNER_BUCKET_SLOTS; i++) {
			__u64 k = keys->sk[i];
			if ((k & ~CW_KEY_TAGS) != key)
				continue;
			*slot = b[j] * CW_OWNER_BUCKET_SLOTS + i;
			*tags = k & CW_KEY_TAGS;
			return bpf_map_lookup_elem(&owners, slot);
		}
	}
	return NULL;
}

/* The owner entry of the socket at `key`, or NULL (see find_in_area): in the
 * hot area, else in the overflow area if that holds any key. */
static __always_inline struct owner *find_owner(__u64 key, __u32 *slot, __u64 *tags)
{
	if (key == 0)
		return NULL;
	__u64 h = mix(key);
	struct owner *o = hot_buckets ? find_in_area(key, h, 0, hot_buckets, slot, tags) : NULL;
	if (o || *(volatile __s64 *)&overflow_keys == 0)
		return o;
	return find_in_area(key, h, hot_buckets, owner_buckets - hot_buckets, slot, tags);
}

/* The key of the entry at `slot` in owners (NULL only for a slot out of range). */
static __always_inline __u64 *owner_key(__u32 slot)
{
	__u32 b = slot / CW_OWNER_BUCKET_SLOTS;
	struct owner_bucket *keys = bpf_map_lookup_elem(&owner_keys, &b);
	return keys ? &keys->sk[slot % CW_OWNER_BUCKET_SLOTS] : NULL;
}

/* Adds `tag` to the tags of the key of the entry find_owner found at `slot`,
 * if that key is still the socket's at `key`: a compare-and-swap, since the
 * socket's close may free it on another CPU meanwhile, tried again once if
 * the other tag changed in between. */
static __always_inline void tag_owner(__u32 slot, __u64 key, __u64 tag)
{
	__u64 *k = owner_key(slot);
	if (!k)
		return;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		__u64 cur = *(volatile __u64 *)k;
		if ((cur & ~CW_KEY_TAGS) != key || __sync_val_compare_and_swap(k, cur, cur | tag) == cur)
			return;
	}
}

/* Frees the entry find_owner returned at `slot` (its key goes back to 0). */
static __always_inline void free_owner(__u32 slot)
{
	__u64 *k = owner_key(slot);
	if (!k)
		return;
	*k = 0;
	if (slot >= hot_buckets * CW_OWNER_BUCKET_SLOTS)
		__sync_fetch_and_sub(&overflow_keys, 1);
}

/* 1 if a bucket's key is in use, else 0, without a branch: a branch per key
 * would have the verifier follow every combination of the two buckets'
 * counts (the program then exceeds its 1M-instruction budget). */
static __always_inline int in_use(__u64 k)
{
	__u64 nz = k | (0 - k);
	asm volatile("" : "+r"(nz));
	return (int)(nz >> 63);
}

/* Claims a free key of bucket `b` (its keys at `keys`) for `tagged` (the
 * socket's address and its tags). */
static __always_inline struct owner *claim_in(struct owner_bucket *keys, __u32 b, __u64 tagged)
{
#pragma unroll
	for (int i = 0; i < CW_OWNER_BUCKET_SLOTS; i++) {
		if (keys->sk[i] != 0 || __sync_val_compare_and_swap(&keys->sk[i], 0, tagged) != 0)
			continue;
		__u32 slot = b * CW_OWNER_BUCKET_SLOTS + i;
		return bpf_map_lookup_elem(&owners, &slot);
	}
	return NULL;
}

/* A new key goes to the socket's first bucket while at most this many of its
 * keys are in use: one cache line read at connect() instead of two, and the
 * entry is found in the first bucket later. A fuller first bucket sends it
 * to the emptier of the two (a simulation of slab-like addresses with churn:
 * no failure at the bound, as with the emptier always; README Performance). */
#define CW_OWNER_FIRST_MAX_USED 3

/* The entry of the socket at `key` in bucket `b` (keys at `keys`), its key's
 * tags set to `tags`, or NULL; *used counts the bucket's keys in use. */
static __always_inline struct owner *existing_in(struct owner_bucket *keys, __u32 b, __u64 key,
						 __u64 tags, int *used)
{
	int n = 0;
#pragma unroll
	for (int i = 0; i < CW_OWNER_BUCKET_SLOTS; i++) {
		__u64 k = keys->sk[i];
		if ((k & ~CW_KEY_TAGS) == key) {
			__u32 slot = b * CW_OWNER_BUCKET_SLOTS + i;
			keys->sk[i] = key | tags; /* not the earlier connection's */
			return bpf_map_lookup_elem(&owners, &slot);
		}
		n += in_use(k);
	}
	*used = n;
	return NULL;
}

/* The entry of the socket at `key` in the area of `n` buckets from bucket
 * `first` (h: mix(key)): the one it has there (a socket connected again after
 * a failed connect, or one whose close was not seen, keeps it), or a key
 * claimed in its first bucket while that has room to spare, else in the
 * emptier of its two buckets (then in the other, if a concurrent claim took
 * the last free key). NULL when both are full. A stale entry in the second
 * bucket of a socket that now finds room in its first stays until its
 * address is tracked again with a fuller first bucket. */
static __always_inline struct owner *claim_in_area(__u64 key, __u64 tags, __u64 h, __u32 first,
						   __u32 n)
{
	__u32 b[2];
	buckets_in(h, first, n, b);
	struct owner_bucket *k0 = bpf_map_lookup_elem(&owner_keys, &b[0]);
	if (!k0)
		return NULL;
	int used0 = 0;
	struct owner *o = existing_in(k0, b[0], key, tags, &used0);
	if (o)
		return o;
	if (used0 <= CW_OWNER_FIRST_MAX_USED) {
		o = claim_in(k0, b[0], key | tags);
		if (o)
			return o;
	}
	struct owner_bucket *k1 = bpf_map_lookup_elem(&owner_keys, &b[1]);
	if (!k1)
		return NULL;
	int used1 = 0;
	o = existing_in(k1, b[1], key, tags, &used1);
	if (o)
		return o;
	if (used1 < used0) {
		o = claim_in(k1, b[1], key | tags);
		return o ? o : claim_in(k0, b[0], key | tags);
	}
	o = claim_in(k0, b[0], key | tags);
	return o ? o : claim_in(k1, b[1], key | tags);
}

/* The entry of the socket at `key`, its key tagged `tags`: one it already
 * has in the overflow area, else one in the hot area (claim_in_area), else
 * one in the overflow area; NULL when its buckets in both are full. */
static __always_inline struct owner *claim_owner(__u64 key, __u64 tags)
{
	if (key == 0)
		return NULL;
	__u64 h = mix(key);
	const __u32 overflow_buckets = owner_buckets - hot_buckets;
	struct owner *o;
	if (*(volatile __s64 *)&overflow_keys != 0) {
		__u32 slot;
		__u64 old_tags;
		o = find_in_area(key, h, hot_buckets, overflow_buckets, &slot, &old_tags);
		if (o) {
			__u64 *k = owner_key(slot);
			if (k)
				*k = key | tags; /* not the earlier connection's */
			return o;
		}
	}
	if (hot_buckets) {
		o = claim_in_area(key, tags, h, 0, hot_buckets);
		if (o)
			return o;
	}
	__sync_fetch_and_add(&overflow_keys, 1);
	o = claim_in_area(key, tags, h, hot_buckets, overflow_buckets);
	if (!o)
		__sync_fetch_and_sub(&overflow_keys, 1);
	return o;
}

/* Reserve `size` bytes in this CPU's ring; a failed reserve (or a CPU
 * without a ring) is counted, by what its record would have been. */
static __always_inline void *reserve(__u32 size, __u8 kind)
{
	__u32 cpu = bpf_get_smp_processor_id();
	void *ring = bpf_map_lookup_elem(&rings, &cpu);
	void *e = ring ? bpf_ringbuf_reserve(ring, size, 0) : NULL;
	if (!e) {
		count(CW_CNT_RINGBUF_LOST);
		if (kind == CW_EV_ACTIVE_ESTABLISHED || kind == CW_EV_ACTIVE_FAILED)
			count(CW_CNT_LOST_ACTIVE);
		else if (kind == CW_EV_PASSIVE_ESTABLISHED)
			count(CW_CNT_LOST_PASSIVE);
	}
	return e;
}

/* The head every record starts with (struct cw_close_event), stamped now. */
static __always_inline void fill_head(void *record, const struct sock *sk, __u32 netns, __u8 kind,
				      __u8 flags, __u64 bytes_received)
{
	struct cw_close_event *h = record;
	h->ts_ns = bpf_ktime_get_ns();
	h->sock_id = (__u64)sk;
	h->bytes_received = bytes_received;
	h->netns = netns;
	h->kind = kind;
	h->flags = flags;
	h->family = 0; /* fill_ends sets it in a record that has ends */
}

static __always_inline void submit(void *record)
{
	count(CW_CNT_EVENTS);
	bpf_ringbuf_submit(record, 0);
}

/* An app socket's established or failed record. */
static __always_inline void emit(const struct sock *sk, __u8 kind, const struct owner *o,
				 __u8 flags)
{
	struct cw_event *e = reserve(sizeof(*e), kind);
	if (!e)
		return;
	fill_head(e, sk, o->netns, kind, o->flags | CW_F_OWNER_KNOWN | flags, 0);
	fill_ends((struct cw_accept_event *)e, sk);
	e->pid = o->pid;
	e->cgroup_id = o->cgroup_id;
	e->uid = o->uid;
	e->gid = o->gid;
	__builtin_memcpy(e->comm, o->comm, CW_COMM_LEN);
	submit(e);
}

/* The sidecar's accept of sk: the head and the ends, no owner (capture.h). */
static __always_inline bool emit_accept(const struct sock *sk, __u32 netns)
{
	struct cw_accept_event *e = reserve(sizeof(*e), CW_EV_PASSIVE_ESTABLISHED);
	if (!e)
		return false;
	fill_head(e, sk, netns, CW_EV_PASSIVE_ESTABLISHED, 0, 0);
	fill_ends(e, sk);
	e->_pad = 0;
	submit(e);
	return true;
}

/* A close record: the head alone, netns 0 (capture.h). */
static __always_inline void emit_close(const struct sock *sk, __u64 bytes_received, __u8 flags)
{
	struct cw_close_event *e = reserve(sizeof(*e), CW_EV_ACTIVE_CLOSED);
	if (e) {
		fill_head(e, sk, 0, CW_EV_ACTIVE_CLOSED, flags, bytes_received);
		submit(e);
	}
}

/* A socket's local (local=true) or remote end, as the join sees it: IPv4 as
 * ::ffff:a.b.c.d, so that an AF_INET app socket and the AF_INET6 socket a
 * dual-stack sidecar accepts for it name the same address. */
static __always_inline void end_of(const struct sock *sk, bool local, __u64 addr[2])
{
	if (sk->__sk_common.skc_family == AF_INET) {
		__u32 a4 = local ? sk->__sk_common.skc_rcv_saddr : sk->__sk_common.skc_daddr;
		addr[0] = 0;
		addr[1] = ((__u64)a4 << 32) | bpf_htonl(0xffff);
	} else if (local) {
		__builtin_memcpy(addr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
	} else {
		__builtin_memcpy(addr, &sk->__sk_common.skc_v6_daddr, 16);
	}
}

/* The app socket sk of a watched netns just became ESTABLISHED. */
static __always_inline void remember_established(const struct sock *sk, __u32 netns)
{
	__u32 zero = 0;
	struct recent *r = bpf_map_lookup_elem(&recent_established, &zero);
	if (!r)
		return;
	__u32 i = r->next++ % CW_RECENT_SLOTS;
	r->sk[i] = (__u64)sk;
	r->netns[i] = netns;
	r->port[i] = sk->__sk_common.skc_num;
	end_of(sk, true, r->addr[i]);
}

/* The sidecar accepted sk (its accept record is in the ring): if its peer is
 * an app socket this CPU just saw established, that socket's close record is
 * not needed. */
static __always_inline void join_accept(const struct sock *sk, __u32 netns)
{
	__u32 zero = 0;
	struct recent *r = bpf_map_lookup_elem(&recent_established, &zero);
	if (!r)
		return;
	__u64 peer[2];
	__u16 peer_port = bpf_ntohs(sk->__sk_common.skc_dport);
	end_of(sk, false, peer);
#pragma unroll
	for (int i = 0; i < CW_RECENT_SLOTS; i++) {
		if (r->sk[i] == 0 || r->netns[i] != netns || r->port[i] != peer_port ||
		    r->addr[i][0] != peer[0] || r->addr[i][1] != peer[1])
			continue;
		__u64 key = r->sk[i];
		__u32 slot;
		__u64 tags;
		r->sk[i] = 0;
		struct owner *o = find_owner(key, &slot, &tags);
		if (o && o->netns == netns)
			tag_owner(slot, key, CW_KEY_QUIET); /* CW_F_ACCEPT_SEEN */
		return;
	}
}

static __always_inline void record_owner(const struct sock *sk)
{
	__u32 netns = sk_netns(sk);
	if (!netns_watched(netns))
		return;

	/* Bound to the redirect port before connect() (where the sidecar does
	 * not listen on it): not tracked, since the close of a socket on that
	 * port skips the owner table (cw_set_state), and counted as lost. */
	if (sk->__sk_common.skc_num == redirect_port) {
		count(CW_CNT_LOST_ACTIVE);
		return;
	}

	__u64 key = sk_key(sk, CW_SCRATCH_SET_STATE);
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	bool proxy = bpf_map_lookup_elem(&proxy_cgroups, &cgroup_id) != NULL;
	struct owner *o = (key & CW_KEY_TAGS) ? NULL : claim_owner(key, proxy ? CW_KEY_QUIET : 0);
	if (!o) {
		/* Both buckets full: this connection will emit nothing. */
		count(CW_CNT_OWNER_INSERT_FAIL);
		count(CW_CNT_LOST_ACTIVE);
		return;
	}
	o->cgroup_id = cgroup_id;
	o->pid = pid_tgid >> 32;
	o->uid = (__u32)uid_gid;
	o->gid = uid_gid >> 32;
	o->netns = netns;
	/* Loaded straight from the task (a BTF pointer), not copied with
	 * bpf_get_current_comm's string copy. */
	struct task_struct *task = bpf_get_current_task_btf();
	__builtin_memcpy(o->comm, task->comm, CW_COMM_LEN);
	o->flags = proxy ? CW_F_PROXY_OWNER : 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(cw_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	/* Only these transitions matter; the others (most of a connection's
	 * ten) return before touching any map. */
	bool passive = oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED;
	if (!passive && newstate != TCP_CLOSE && oldstate != TCP_SYN_SENT &&
	    !(oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT))
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;

	/* connect(): process context, the owner is the current task. */
	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		record_owner(sk);
		return 0;
	}

	/* The sidecar accepted a connection on the redirect port. */
	if (passive) {
		if (sk->__sk_common.skc_num != redirect_port)
			return 0;
		__u32 netns = sk_netns(sk);
		if (netns_watched(netns) && emit_accept(sk, netns))
			join_accept(sk, netns);
		return 0;
	}

	/* A socket on the redirect port is the sidecar's (accepted above), never
	 * one with an owner entry (record_owner tracks none): its close skips the
	 * owner table, where the two buckets of a socket it never saw are
	 * usually cache misses (README Performance). */
	if (sk->__sk_common.skc_num == redirect_port)
		return 0;

	__u32 slot;
	__u64 tags = 0;
	struct owner *o = find_owner(sk_key(sk, CW_SCRATCH_SET_STATE), &slot, &tags);
	if (!o)
		return 0; /* not an app socket of a watched netns */

	if (oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED) {
		emit(sk, CW_EV_ACTIVE_ESTABLISHED, o, 0);
		if (!(o->flags & CW_F_PROXY_OWNER))
			remember_established(sk, o->netns);
	} else if (oldstate == TCP_SYN_SENT && newstate == TCP_CLOSE) {
		emit(sk, CW_EV_ACTIVE_FAILED, o, (tags & CW_KEY_RESET) ? CW_F_RESET_RECEIVED : 0);
		free_owner(slot);
	} else if (newstate == TCP_CLOSE) {
		if (tags & CW_KEY_QUIET) {
			/* Decided (proxy, captured) by the records already sent. */
			free_owner(slot);
			return 0;
		}
		/* The peer closed first: the socket went through CLOSE_WAIT,
		 * whose only ways out are LAST_ACK and CLOSE (read here rather
		 * than with a lookup at CLOSE_WAIT). */
		__u8 flags = (tags & CW_KEY_RESET) ? CW_F_RESET_RECEIVED : 0;
		if (oldstate == TCP_CLOSE_WAIT || oldstate == TCP_LAST_ACK)
			flags |= CW_F_PEER_FIN;
		/* bytes_received counts the peer's FIN as one byte: a peer
		 * that closed without a reply byte is not "data". */
		struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
		__u64 rx = tp && tp->data_segs_in ? tp->bytes_received : 0;
		/* Without the owner's fields, netns and ends: the agent knows
		 * the connection by its socket from the established record. */
		emit_close(sk, rx, flags);
		free_owner(slot);
	}
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(cw_receive_reset, struct sock *sk)
{
	__u32 slot;
	__u64 tags;
	__u64 key = sk_key(sk, CW_SCRATCH_RESET);
	if (find_owner(key, &slot, &tags))
		tag_owner(slot, key, CW_KEY_RESET);
	return 0;
}
