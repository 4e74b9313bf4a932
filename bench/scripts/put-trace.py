#!/usr/bin/env python3
"""Median timeline of one 1-client put across processes and threads, from a perf recording of
raw_syscalls:sys_enter/sys_exit (bench/scripts/put-trace.sh makes it).

usage: perf script -F pid,tid,comm,time,event,trace -i perf.data | put-trace.py CLIENT_PID 'PID=label' ...

A put is the window from one client request write (the client's first sendto/write/writev of
a window) to the next one. In each window the events of the traced node threads are listed as
(process label, thread name, syscall, enter/exit); windows whose list equals the most common list
are aligned by the n-th occurrence of each (thread, syscall, enter/exit), and every event seen in
at least half of the windows is printed at its median offset from the window's start, with the
step from the previous row (medians of different events: steps are indicative, not additive). Threads that are not in most windows (housekeeping ticks)
are dropped first.
"""
import collections
import re
import statistics
import sys

NAMES = {0: "read", 1: "write", 7: "poll", 17: "pread64", 18: "pwrite64", 19: "readv", 20: "writev",
         24: "sched_yield", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 75: "fdatasync",
         74: "fsync", 202: "futex", 230: "clock_nanosleep", 232: "epoll_wait", 281: "epoll_pwait",
         271: "ppoll", 426: "io_uring_enter", 35: "nanosleep", 228: "clock_gettime", 441: "epoll_pwait2"}
SEND = {"sendto", "write", "writev", "sendmsg"}
RECV = {"recvfrom", "read", "readv", "recvmsg"}


def main():
    client = int(sys.argv[1])
    labels = {}
    for a in sys.argv[2:]:
        p, l = a.split("=", 1)
        labels[int(p)] = l
    labels[client] = "client"
    line_re = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+)(.*)$")
    events = []  # (t_us, pid, tid, comm, name, dir, ret)
    for line in sys.stdin:
        m = line_re.match(line)
        if not m:
            continue
        comm, pid, tid, t, d, nr, rest = m.groups()
        pid = int(pid)
        if pid not in labels:
            continue
        name = NAMES.get(int(nr), "nr%s" % nr)
        ret = None
        if d == "exit":
            r = re.search(r"= (-?\d+)", rest)
            ret = int(r.group(1)) if r else None
        events.append((float(t) * 1e6, pid, int(tid), re.sub(r"-\d+$", "", comm.strip()), name, d, ret))
    events.sort()
    # Window starts: the client thread's request writes. The client with one connection writes
    # each request with one send call; the first client send after a client receive starts a put.
    starts = []
    got_reply = True
    for e in events:
        if e[1] != client:
            continue
        if e[4] in SEND and e[5] == "enter" and got_reply:
            starts.append(e[0])
            got_reply = False
        elif e[4] in RECV and e[5] == "exit" and e[6] is not None and e[6] > 0:
            got_reply = True
    windows = []
    j = 0
    for a, b in zip(starts, starts[1:]):
        w = []
        while j < len(events) and events[j][0] < a:
            j += 1
        k = j
        while k < len(events) and events[k][0] < b:
            e = events[k]
            w.append((e[0] - a, "%s/%s" % (labels[e[1]], e[3]), e[4], e[5]))
            k += 1
        windows.append(w)
    if not windows:
        sys.exit("no puts found")
    # Threads present in at least 80 % of windows.
    seen = collections.Counter()
    for w in windows:
        for th in {x[1] for x in w}:
            seen[th] += 1
    keep = {th for th, n in seen.items() if n >= 0.8 * len(windows)}
    # Drop clock_nanosleep/epoll timeouts of periodic threads by keeping only kept threads.
    # Each event is named by (thread, syscall, enter/exit, its ordinal among the same in the
    # window); events present in at least half of the windows get their median offset.
    offs = collections.defaultdict(list)
    for w in windows:
        nth = collections.Counter()
        for t, th, name, d in w:
            if th not in keep:
                continue
            key = (th, name, d)
            nth[key] += 1
            offs[key + (nth[key],)].append(t)
    rows = [(statistics.median(v), k, len(v)) for k, v in offs.items() if len(v) >= len(windows) / 2]
    rows.sort()
    ends = [w[-1][0] for w in windows if w]
    print("puts %d; events present in >= half of them, median offset from the client's send" % len(windows))
    print("%9s %8s %6s  %-34s %s" % ("t µs", "step", "in %", "thread", "syscall (nth)"))
    prev = 0.0
    for med, (th, name, d, n), cnt in rows:
        print("%9.1f %8.1f %6.0f  %-34s %s %s (%d)" % (med, med - prev, 100.0 * cnt / len(windows), th, name, d, n))
        prev = med
    iv = [b - a for a, b in zip(starts, starts[1:])]
    print("median put-to-put interval %.1f µs" % statistics.median(iv))


main()
