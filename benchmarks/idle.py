"""Idle cost of the daemon: CPU share of one core and RSS over a window with no deploys."""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.harness import proc_sample

__all__ = ["measure_idle", "system_ticks"]


def system_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is already in user)
    idle = fields[3] + fields[4]
    return total - idle, total


def context_switches(pid: int) -> dict[str, int]:
    """Voluntary + involuntary context switches of each thread of ``pid`` (each wake-up is one)."""
    out: dict[str, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                for raw in f:
                    if raw.startswith((b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:")):
                        out[tid] = out.get(tid, 0) + int(raw.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def measure_idle(pid: int, idle_s: float, settle_s: float = 1.0) -> dict[str, Any]:
    """Sleep ``settle_s``, then read the daemon's CPU time (``/proc/<pid>/stat`` ticks and the sum of
    its threads' schedstat run times) and RSS over ``idle_s`` seconds in which nothing is deployed."""
    time.sleep(settle_s)
    sys_a = system_ticks()
    ctx_a = context_switches(pid)
    a = proc_sample(pid)
    time.sleep(idle_s)
    b = proc_sample(pid)
    ctx_b = context_switches(pid)
    sys_b = system_ticks()
    wall_s = (b.wall_ns - a.wall_ns) / 1e9
    # per thread, so that a thread exiting during the window (anyio's idle workers do) cannot make the
    # total go down (its own switches are lost: the rate is a lower bound)
    switches = sum(n - ctx_a.get(tid, 0) for tid, n in ctx_b.items())
    tck = os.sysconf("SC_CLK_TCK")
    cpu_s = (b.ticks - a.ticks) / tck
    thread_ns = sum(ns - a.thread_ns.get(tid, 0) for tid, ns in b.thread_ns.items())
    busy = sys_b[0] - sys_a[0]
    total = max(1, sys_b[1] - sys_a[1])
    return {
        "wall_s": wall_s,
        "idle_cpu_pct": 100.0 * cpu_s / wall_s,
        "idle_cpu_pct_threads": 100.0 * thread_ns / 1e9 / wall_s,
        "wakeups_per_s": switches / wall_s,
        "cpu_us_per_wakeup": thread_ns / 1e3 / max(1, switches),
        "rss_mib": b.rss_kb / 1024,
        "rss_mib_start": a.rss_kb / 1024,
        "threads": b.threads,
        "system_busy_pct": 100.0 * busy / total,
        "daemon_pct_of_all_cores": 100.0 * (b.ticks - a.ticks) / total,
    }
