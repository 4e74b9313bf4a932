#!/bin/bash
# A durable 1-key commit taken apart on the disk (BENCHMARKS.md "rev9"): the raw floor
# (`disk fsync --sizes 4K --io std`: O_DIRECT 4 KiB write + fdatasync) before and after, and
# `BIN --json engine btree --compare --phases commit-1` under `perf record` (cpu-clock at 4 kHz +
# pwrite64/pwritev/fdatasync tracepoints). Per engine (ringkv fd 3, LMDB fd 6 with its O_DSYNC
# meta descriptor fd 7, redb fd 8; in plain runs the engines' phases do not overlap), over its
# last 1,000 fdatasyncs: wall, CPU (samples), write requests and their time, fdatasync time; for
# ringkv also the commits that carry a zeros-ahead write (db.rs ZERO_AHEAD_PAGES) apart.
# usage: bench/scripts/btree-commit1.sh BIN     env: DIR (default /work/benchdata)
BIN=$1; DIR=${DIR:-/work/benchdata}; T=$(mktemp -d /tmp/btree-commit1.XXXX)
$BIN disk fsync --dir $DIR --sizes 4K --seconds 3 --io std
perf record -q -e syscalls:sys_enter_fdatasync -e syscalls:sys_exit_fdatasync -e syscalls:sys_enter_pwrite64 \
  -e syscalls:sys_exit_pwrite64 -e syscalls:sys_enter_pwritev -e syscalls:sys_exit_pwritev \
  -e cpu-clock/freq=4000/ -o $T/perf.data $BIN --json engine btree --compare --phases commit-1 --dir $DIR \
  > $T/out.json 2>/dev/null
perf script -i $T/perf.data -F time,event,ip,sym,trace 2>/dev/null > $T/script.txt
$BIN disk fsync --dir $DIR --sizes 4K --seconds 3 --io std
cat $T/out.json
python3 - $T/script.txt <<'PY'
import re,sys,statistics as st,collections
NC=1000
ev=[]; cpu=[]
for line in open(sys.argv[1]):
    m=re.match(r'^\s*(\d+\.\d+):\s+(\S+):\s*(.*)$',line)
    if m and m.group(2).startswith('cpu-clock'): cpu.append(float(m.group(1))); continue
    if not m or not m.group(2).startswith('syscalls'): continue
    t=float(m.group(1)); e=m.group(2).split(':')[1]; rest=m.group(3)
    fd=re.search(r'fd: 0x([0-9a-f]+)',rest); cnt=re.search(r'(?:count|vlen): 0x([0-9a-f]+)',rest)
    ev.append((t,e,int(fd.group(1),16) if fd else None,int(cnt.group(1),16) if cnt else 0))
calls=[]; open_=None
for t,e,fd,cnt in ev:
    if e.startswith('sys_enter'): open_=(t,e[10:],fd,cnt)
    elif open_ is not None: calls.append((open_[0],t,open_[1],open_[2],open_[3])); open_=None
names={3:'ringkv',6:'lmdb',8:'redb'}
for fd in (3,6,8):
    syncs=[c for c in calls if c[2]=='fdatasync' and c[3]==fd]
    per = 1
    if len(syncs)<NC+1: continue
    t0=syncs[-NC-1][1]; t1=syncs[-1][1]
    inph=[c for c in calls if t0<c[0]<=t1]
    ws=[c for c in inph if c[2] in ('pwrite64','pwritev')]; ss=[c for c in inph if c[2]=='fdatasync']
    wall=(t1-t0)*1e6/NC
    wt=sum(c[1]-c[0] for c in ws)*1e6/NC; stt=sum(c[1]-c[0] for c in ss)*1e6/NC
    sd=[(c[1]-c[0])*1e6 for c in ss]
    wfd=collections.Counter(c[3] for c in ws)
    big=[(c[1]-c[0])*1e6 for c in ws if c[1]-c[0]>0.0002]
    import bisect
    ncpu=bisect.bisect_right(cpu,t1)-bisect.bisect_right(cpu,t0)
    print(f"{names[fd]:6} CPU per commit (cpu-clock samples at 4 kHz): {ncpu/4000*1e6/NC:.0f} us")
    print(f"{names[fd]:6} per commit: wall {wall:7.1f} us = {len(ws)/NC:.1f} pwrites (by fd {dict(wfd)}) {wt:6.1f} us + {len(ss)/NC:.1f} fdatasync {stt:7.1f} us + rest {wall-wt-stt:6.1f} us | fdatasync median {st.median(sd):.0f} us; pwrites > 200us: {len(big)/NC:.2f}/commit median {st.median(big) if big else 0:.0f} us")
PY
python3 - $T/script.txt <<'PY'
import re,sys,statistics as st
ev=[]
for line in open(sys.argv[1]):
    m=re.match(r'^\s*(\d+\.\d+):\s+(\S+):\s*(.*)$',line)
    if not m or not m.group(2).startswith('syscalls'): continue
    t=float(m.group(1)); e=m.group(2).split(':')[1]; rest=m.group(3)
    fd=re.search(r'fd: 0x([0-9a-f]+)',rest); cnt=re.search(r'(?:count|vlen): 0x([0-9a-f]+)',rest)
    ev.append((t,e,int(fd.group(1),16) if fd else None,int(cnt.group(1),16) if cnt else 0))
calls=[]; op=None
for t,e,fd,cnt in ev:
    if e.startswith('sys_enter'): op=(t,e[10:],fd,cnt)
    elif op: calls.append((op[0],t,op[1],op[2],op[3])); op=None
r=[c for c in calls if c[3]==3]
commits=[]; cur=[]
for c in r:
    cur.append(c)
    if c[2]=='fdatasync': commits.append(cur); cur=[]
commits=commits[-1000:]
z=[];nz=[]
for cm in commits:
    big=any(c[2]=='pwrite64' and c[4]>=0x10000 for c in cm)
    w=sum(c[1]-c[0] for c in cm if c[2]!='fdatasync')*1e6; f=[c for c in cm if c[2]=='fdatasync'][0]; fd=(f[1]-f[0])*1e6
    (z if big else nz).append((w,fd,len(cm)-1))
for name,L in (('with zeros-ahead write',z),('without',nz)):
    if not L: continue
    print(f"{name}: {len(L)} commits; writes/commit {st.median([x[2] for x in L])}; write time median {st.median([x[0] for x in L]):.0f} us mean {st.mean([x[0] for x in L]):.0f}; fdatasync median {st.median([x[1] for x in L]):.0f} us mean {st.mean([x[1] for x in L]):.0f}")
PY
rm -rf $T
