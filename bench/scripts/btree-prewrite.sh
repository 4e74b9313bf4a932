#!/bin/bash
# Where ringkv's revision-append commit spends its time before its first page write, with the
# other engines' commits in between (`--interleave`) or not (BENCHMARKS.md "rev9"): runs
# `BIN --json engine btree --compare [--interleave] --phases revision-append` under `perf record`
# (cpu-clock + the fdatasync/pwrite64 tracepoints). ringkv's db file is fd 3 (opened first). A
# commit's window runs from the previous fdatasync's return (any engine) to ringkv's first
# pwrite64/pwritev; prints its wall and CPU per commit and the top symbols in it.
# usage: bench/scripts/btree-prewrite.sh BIN plain|inter [TOP]     env: DIR (default /work/benchdata)
BIN=$1; MODE=$2; TOP=${3:-12}; DIR=${DIR:-/work/benchdata}; T=$(mktemp -d /tmp/btree-prewrite.XXXX)
F=; [ "$MODE" = inter ] && F=--interleave
perf record -q -e cpu-clock/freq=4000/ -e syscalls:sys_enter_fdatasync -e syscalls:sys_exit_fdatasync \
  -e syscalls:sys_enter_pwrite64 -e syscalls:sys_enter_pwritev -o $T/perf.data \
  $BIN --json engine btree --compare $F --phases revision-append --dir $DIR > $T/out.json 2>/dev/null
perf script -i $T/perf.data -F time,event,ip,sym,trace 2>/dev/null > $T/script.txt
cat $T/out.json
python3 - $T/script.txt $TOP <<'PY'
import re,sys,collections
path=sys.argv[1]; freq=4000
ev=[]
for line in open(path):
    m=re.match(r'^\s*(\d+\.\d+):\s+(\S+):\s*(.*)$',line)
    if not m: continue
    t=float(m.group(1)); e=m.group(2); rest=m.group(3)
    if e.startswith('syscalls'):
        fd=re.search(r'fd: 0x([0-9a-f]+)',rest)
        ev.append((t,e.split(':')[1],int(fd.group(1),16) if fd else None,''))
    else:
        parts=rest.split()
        sym=' '.join(parts[1:]) if len(parts)>1 else '?'
        ev.append((t,'s',None,sym))
# find ringkv commits: enter_fdatasync fd3 ; take those after the last big bulk-load
last_exit=None; win=[]; cur_fd=None
commits=[]  # (start,end,samples_pre,samples_post)
pending_start=None; samples=[]; first_pw=None
for t,e,fd,sym in ev:
    if e=='sys_exit_fdatasync':
        if cur_fd==3 and pending_start is not None:
            commits.append((pending_start,t,samples,first_pw))
        pending_start=t; samples=[]; first_pw=None; cur_fd=None
    elif e=='sys_enter_fdatasync': cur_fd=fd
    elif e in ('sys_enter_pwrite64','sys_enter_pwritev'):
        if fd==3 and first_pw is None: first_pw=t
        if fd!=3 and fd is not None: samples_other=True
    else: samples.append((t,sym))
cs=[c for c in commits if c[3] is not None][-10:]
pre=collections.Counter(); post=collections.Counter(); npre=0; npost=0; tw=0
for s,e,smp,fp in cs:
    for t,sym in smp:
        if t<fp: pre[sym]+=1; npre+=1
        else: post[sym]+=1; npost+=1
    tw+=(fp-s)
print(f"{path}: commits={len(cs)} pre-write wall {tw*1000/len(cs):.2f} ms/commit, cpu samples pre {npre/freq*1000/len(cs):.2f} ms/commit, post {npost/freq*1000/len(cs):.2f}")
def norm(s): return re.sub(r'\s+\(.*\)$','',s)[:90]
agg=collections.Counter()
for k,v in pre.items(): agg[norm(k)]+=v
for k,v in agg.most_common(int(sys.argv[2]) if len(sys.argv)>2 else 25): print(f"  {v/freq*1000/len(cs):6.3f} ms  {k}")
PY
rm -rf $T
