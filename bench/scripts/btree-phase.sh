#!/bin/bash
# CPU of one `engine btree` phase of ringkv's backend, from perf samples (BENCHMARKS.md "Backend:
# borrowed write path", issue 3 session 5). Runs `BIN engine btree --dir DIR --phases get-1t,PHASE`
# under `perf record` (cpu-clock samples + the fdatasync tracepoint); the phase's window is the span of
# its last N-2 fdatasyncs (one per commit; get-1t warms the map like the full bench does).
# usage: bench/scripts/btree-phase.sh BIN PHASE [prof]
#   PHASE: commit-1 | commit-1000 | revision-append (1M keys: 1000, 100, 10 commits)
#   prints CPU ms and wall ms per commit; with `prof`, also the self and inclusive symbol shares.
# env: DIR (default /dev/shm), FREQ (default 4000 Hz), APPEND (revision-append commits, passed as
#      --append-commits; default 10), MIMALLOC_PURGE_DELAY (mimalloc's env option; ringkv-bench
#      after rev9 turns purging off itself)
BIN=$1; PH=$2; MODE=$3; DIR=${DIR:-/dev/shm}; FREQ=${FREQ:-4000}; APPEND=${APPEND:-10}
EXTRA=; [ "$APPEND" != 10 ] && EXTRA="--append-commits $APPEND"
D=$(mktemp -d /tmp/btree-phase.XXXX)
G=; [ "$MODE" = prof ] && G=-g
perf record -q $G -e cpu-clock/freq=$FREQ/ -e syscalls:sys_enter_fdatasync -o $D/perf.data \
  $BIN engine btree --dir $DIR --phases get-1t,$PH $EXTRA > /dev/null 2>&1
perf script -i $D/perf.data -F time,event,ip,sym 2>/dev/null > $D/script.txt
python3 - $D/script.txt $PH $FREQ "$MODE" $APPEND <<'PY'
import collections, re, sys
path, phase, freq, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
n = {"commit-1": 1000, "commit-1000": 100, "revision-append": int(sys.argv[5])}[phase]
samples, fsyncs, cur = [], [], None
for line in open(path):
    m = re.match(r"^\s*(\d+\.\d+):\s*(\S+)", line)
    if m:
        t = float(m.group(1))
        if "fdatasync" in m.group(2):
            fsyncs.append(t); cur = None
        else:
            cur = (t, []); samples.append(cur)
        continue
    if cur is not None and line.strip():
        parts = line.strip().split(" ", 1)
        cur[1].append(parts[1][:100] if len(parts) > 1 else "?")
w = fsyncs[-(n - 2):]
a, b = w[0], w[-1]
sel = [st for t, st in samples if a < t <= b]
k = len(w) - 1
print(f"{phase}: cpu_ms_per_commit={len(sel) / freq * 1000 / k:.3f} wall_ms_per_commit={(b - a) * 1000 / k:.3f} samples={len(sel)}")
if mode == "prof":
    self_c = collections.Counter(st[0] for st in sel if st)
    incl = collections.Counter(s for st in sel for s in set(st))
    print("-- self"); [print(f"{100 * c / len(sel):5.1f}% {s}") for s, c in self_c.most_common(25)]
    print("-- inclusive"); [print(f"{100 * c / len(sel):5.1f}% {s}") for s, c in incl.most_common(40)]
PY
rm -rf $D
