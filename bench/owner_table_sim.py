#!/usr/bin/env python3
"""Simulates the placement of bpf/capture.bpf.c's owner table (claim_owner).

Buckets of 8 keys; a socket's two buckets are the halves of a 64-bit mix of
its address (buckets_of). Addresses come as the slab allocator hands them out:
runs of objects 2,304 bytes apart in 32 KiB slabs. The table is filled to a
fraction of its slots, then churned (a random live socket closes, a new one
opens) for half as many again. Prints, per policy, the insertions that found
both buckets full and the bucket lines read per insertion:
  emptier   always the emptier of the two buckets (session 9)
  first     the first bucket while at most THR of its keys are in use, else the
            emptier (session 10, THR = CW_OWNER_FIRST_MAX_USED = 3)
The agent sizes the table at twice --max-tracked-sockets: fill 0.5 is the bound.

usage: owner_table_sim.py [BUCKETS]   (default 32768, the default table)
"""
import random
import sys

MASK = 2**64 - 1


def mix(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & MASK
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & MASK
    k ^= k >> 33
    return k


def run(policy, nb, held, churn, thr, seed=1):
    random.seed(seed)
    used = [0] * nb
    where = {}
    fails = 0
    reads = 0

    def buckets(a):
        m = mix(a)
        return ((m >> 32) * nb) >> 32, ((m & 0xFFFFFFFF) * nb) >> 32

    def insert(a):
        nonlocal fails, reads
        b0, b1 = buckets(a)
        reads += 1
        if policy == "first" and used[b0] <= thr:
            order = (b0,)
        else:
            reads += 1  # the second bucket
            order = (b1, b0) if used[b1] < used[b0] else (b0, b1)
        for b in order:
            if used[b] < 8:
                used[b] += 1
                where[a] = b
                return
        fails += 1

    base = 0xFFFF888000000000
    addrs = set()
    while len(addrs) < held + churn:
        page = random.randrange(1 << 22) * 32768
        for j in range(14):
            addrs.add(base + page + j * 2304)
    addrs = list(addrs)
    random.shuffle(addrs)
    live = []
    for a in addrs[:held]:
        insert(a)
        live.append(a)
    for a in addrs[held:held + churn]:
        i = random.randrange(len(live))
        old = live[i]
        if old in where:
            used[where.pop(old)] -= 1
        live[i] = a
        insert(a)
    return fails, reads / (held + churn)


def main():
    nb = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
    for fill in (0.5, 0.75):
        held = int(nb * 8 * fill)
        for policy, thr in (("emptier", 0), ("first", 3)):
            fails, reads = run(policy, nb, held, held // 2, thr)
            print(f"fill {fill:.2f} {policy:8s} thr={thr} insertions={held + held // 2} "
                  f"fails={fails} bucket reads/insertion={reads:.2f}")


if __name__ == "__main__":
    main()
