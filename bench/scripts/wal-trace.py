#!/usr/bin/env python3
"""Medians of the WAL flush timeline written by RINGKV_WAL_TRACE (engine/src/wal/trace.rs),
one row per interval, in µs, with p10 and p90.
usage: trace.py FILE.csv uring|std"""
import csv, sys, statistics as st
rows = list(csv.DictReader(open(sys.argv[1])))
io = sys.argv[2]
R = [{k: int(v) for k, v in r.items()} for r in rows]
def real_start(r): return r['io_start'] if io == 'uring' else r['wait']
out = {}
def add(k, v): out.setdefault(k, []).append(v / 1000.0)
for i in range(2, len(R)):
    p2, p, r = R[i-2], R[i-1], R[i]
    if r['appends'] < 2 or p['appends'] < 2 or not r['io_done'] or not p['io_done']: continue
    add('appends per flush', r['appends'] * 1000)
    add('cycle: io_done(n-1) -> io_done(n)', r['io_done'] - p['io_done'])
    add('device: io start -> io_done', r['io_done'] - real_start(r))
    add('idle: io_done(n-1) -> io start(n)', real_start(r) - p['io_done'])
    add('  io_done(n-1) -> take(n)', r['take'] - p['io_done'])
    add('  take(n) -> io_start(n) (encode, submit)', r['io_start'] - r['take'])
    add('  io_start(n) -> wait(n) (deliver n-1)', r['wait'] - r['io_start'])
    if p['deliver_start']:
        add('deliver(n-1) start after io_done(n-1)', p['deliver_start'] - p['io_done'])
        add('deliver(n-1) duration', p['deliver_end'] - p['deliver_start'])
    if p['woken_first']:
        add('first waiter of n-1 running, after io_done(n-1)', p['woken_first'] - p['io_done'])
        add('last waiter of n-1 running, after io_done(n-1)', p['woken_last'] - p['io_done'])
    add('first append of n enqueued, after io_done(n-2)', r['first_enqueued'] - p2['io_done'])
    add('last append of n enqueued, after io_done(n-2)', r['last_enqueued'] - p2['io_done'])
    add('last append of n enqueued, before take(n)', r['take'] - r['last_enqueued'])
print(f"{len(R)} flushes, io={io}; medians (p10, p90) in us")
for k, v in out.items():
    v.sort()
    q = lambda f: v[min(len(v)-1, int(f*len(v)))]
    print(f"  {k:55s} {st.median(v):9.1f}  ({q(0.1):.1f}, {q(0.9):.1f})")
