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


def measure_idle(pid: int, idle_s: float, settle_s: float = 1.0) -> dict[str, Any]:
    """Sleep ``settle_s``, then read the daemon's CPU time (``/proc/<pid>/stat`` ticks and the sum of
    its threads' schedstat run times) and RSS over ``idle_s`` seconds in which nothing is deployed."""
    time.sleep(settle_s)
    sys_a = system_ticks()
    a = proc_sample(pid)
    time.sleep(idle_s)
    b = proc_sample(pid)
    sys_b = system_ticks()
    wall_s = (b.wall_ns - a.wall_ns) / 1e9
    tck = os.sysconf("SC_CLK_TCK")
    cpu_s = (b.ticks - a.ticks) / tck
    thread_ns = sum(ns - a.thread_ns.get(tid, 0) for tid, ns in b.thread_ns.items())
    busy = sys_b[0] - sys_a[0]
    total = max(1, sys_b[1] - sys_a[1])
    return {
        "wall_s": wall_s,
        "idle_cpu_pct": 100.0 * cpu_s / wall_s,
        "idle_cpu_pct_threads": 100.0 * thread_ns / 1e9 / wall_s,
        "rss_mib": b.rss_kb / 1024,
        "rss_mib_start": a.rss_kb / 1024,
        "threads": b.threads,
        "system_busy_pct": 100.0 * busy / total,
        "daemon_pct_of_all_cores": 100.0 * (b.ticks - a.ticks) / total,
    }
