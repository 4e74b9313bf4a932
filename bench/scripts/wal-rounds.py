#!/usr/bin/env python3
"""Tables of a bench/scripts/wal-final.sh log: per run, each engine's ops/s, p50, records per fdatasync, CPU
per append; ratios to raft-engine and ringkv-wake-first over the run and as the median of the per-round
ratios; with 1 writer, p50 / raw p50. usage: wal-rounds.py LOG"""
import os, sys, json, re, statistics as st
runs = []; cur = None
for l in open(sys.argv[1]):
    l = l.rstrip()
    if l.startswith('## '):
        m = re.match(r'## (\S+) load (\S+) (\S+) (\S+): (\S+) .*--io (\S+).*--engines (\S+) --writers (\d+)', l)
        cur = dict(t=m[1], load=m[2], bin=os.path.basename(m[5]), io=m[6], writers=int(m[8]), res={}, rounds={}); runs.append(cur)
    elif l.startswith('{'):
        d = json.loads(l); cur['res'][d['engine']] = d
    elif l.startswith('disk wal rounds:'):
        m = re.match(r'disk wal rounds: (\S+)\s+ops/s per round \[([^\]]*)\]', l)
        cur['rounds'][m[1]] = [float(x) for x in m[2].split(',')]
def rr(r, a, b):  # median over rounds of a/b
    return st.median([x / max(y, 1e-9) for x, y in zip(r['rounds'][a], r['rounds'][b])])
for r in runs:
    res = r['res']
    line = f"{r['t']} load {r['load']:>5} {r['bin']:22} {r['io']:5} w={r['writers']:<2}"
    for e, d in res.items():
        line += f" | {e} {d['ops_per_sec']:.0f} p50 {d['p50_us']:.0f} rps {d['records_per_sync']:.1f} cpu {d['cpu_us_per_op']:.2f}"
    print(line)
    if 'raft-engine' in res:
        for e in res:
            if e.startswith('ringkv') or e.startswith('handoff'):
                print(f"     {e}/raft-engine run {res[e]['ops_per_sec']/res['raft-engine']['ops_per_sec']:.2f} round-median {rr(r, e, 'raft-engine'):.2f}")
    if 'ringkv-relay' in res:
        print(f"     ringkv/ringkv-relay run {res['ringkv']['ops_per_sec']/res['ringkv-relay']['ops_per_sec']:.2f} round-median {rr(r, 'ringkv', 'ringkv-relay'):.2f}")
    if 'ringkv-wake-first' in res:
        print(f"     ringkv/ringkv-wake-first run {res['ringkv']['ops_per_sec']/res['ringkv-wake-first']['ops_per_sec']:.2f} round-median {rr(r, 'ringkv', 'ringkv-wake-first'):.2f}")
    if r['writers'] == 1 and 'raw' in res:
        for e in res:
            if e != 'raw':
                print(f"     {e} p50 / raw p50 {res[e]['p50_us']/res['raw']['p50_us']:.2f}")
