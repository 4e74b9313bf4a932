#!/usr/bin/env python3
"""Tables of a bench/scripts/wal9-final.sh log: per run, each engine's ops/s, records per fdatasync, CPU per
append, p50, and its ratio to raft-engine over the run and as the median of the per-round ratios; with one
writer, p50 / raw p50; then, per (io, writers), the median over runs of the per-round-median ratios.
usage: wal9-rounds.py LOG"""
import sys, json, re, statistics as st
runs = []; cur = None
for l in open(sys.argv[1]):
    if l.startswith('## '):
        m = re.match(r'## (\S+) load (\S+) \S+ \S+: .*--io (\S+).*--writers (\d+)', l)
        cur = dict(t=m[1], load=m[2], io=m[3], w=int(m[4]), res={}, rounds={}); runs.append(cur)
    elif l.startswith('{') and cur:
        d = json.loads(l); cur['res'][d['engine']] = d
    elif l.startswith('disk wal rounds:') and cur:
        m = re.match(r'disk wal rounds: (\S+)\s+ops/s per round \[([^\]]*)\]', l)
        cur['rounds'][m[1]] = [float(x) for x in m[2].split(',')]
def rr(r, a, b):
    return st.median([x / max(y, 1e-9) for x, y in zip(r['rounds'][a], r['rounds'][b])])
summary = {}
for r in runs:
    print(f"{r['t']} load {r['load']} io={r['io']} writers={r['w']}")
    res = r['res']
    for e, d in res.items():
        line = f"  {e:16} {d['ops_per_sec']:8.0f} ops/s  rps {d['records_per_sync']:5.1f}  cpu {d['cpu_us_per_op']:5.2f}  p50 {d['p50_us']:7.1f}"
        if 'raft-engine' in res and e != 'raft-engine':
            q = rr(r, e, 'raft-engine')
            line += f"  /raft-engine run {d['ops_per_sec'] / res['raft-engine']['ops_per_sec']:.2f} rounds {q:.2f}"
            summary.setdefault((r['io'], r['w'], e, 'raft-engine ops/s'), []).append(q)
        if r['w'] == 1 and 'raw' in res and e != 'raw':
            q = d['p50_us'] / res['raw']['p50_us']
            line += f"  p50/raw {q:.2f}"
            summary.setdefault((r['io'], r['w'], e, 'raw p50 (p50 ratio)'), []).append(q)
        print(line)
print("medians over runs (per-round-median ratios; for p50, the run's ratio):")
for k, v in sorted(summary.items()):
    print(f"  io={k[0]:5} writers={k[1]:<2} {k[2]:16} / {k[3]:22} {st.median(v):.2f}  {[round(x, 2) for x in v]}")
