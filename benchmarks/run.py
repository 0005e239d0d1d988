"""The deploy-latency benchmark: ``python -m benchmarks run`` (the default of ``python -m benchmarks``;
``make bench``).

1. builds a deterministic synthetic repository (2,000 small files; tags v1 and v2 differ in 100);
2. starts the real daemon (``python -m coordinator run``) on a temporary ROOT, deploys v1 and v2 once
   (so both releases are on disk), then measures deploys of a release already on disk, alternating:
   marker written -> ``current`` swapped -> reload file touched -> status ``idle``, from outside (a
   polling thread) and from the daemon's own JSON log timestamps (per-phase breakdown);
3. measures the old way, in-place ``git checkout -f tags/vX`` in a plain clone, for comparison;
4. measures the watcher trade-off: for several ``--watch-step-ms``, marker -> reload latency and the
   daemon's idle CPU and RSS;
5. measures the daemon's idle cost over 60 s at the default step (CPU share of one core, RSS);
6. repeats the on-disk deploys with a Kubernetes ConfigMap-style marker (``..data`` symlink swap,
   :mod:`benchmarks.configmap`);
7. new-tag deploys on synthetic repositories of 1k, 2k, 10k and 50k files with 10, 100 and 1,000
   changed files per tag, against in-place ``git checkout -f``, ``git worktree add`` and
   ``git archive | tar -x`` in the same run (:mod:`benchmarks.newtag`);
8. the unsafe window: torn reads seen by a reader while each method deploys (:mod:`benchmarks.torn`);
   then deploys of a release staged just before against deploys of a release already on disk, in one
   daemon (:mod:`benchmarks.staged`);
9. checks the issue's targets (:mod:`benchmarks.targets`), recommends a watcher step, draws the PNG
   plots (:mod:`benchmarks.plots`), writes ``benchmarks/results/<date>.json`` and ``.md`` and prints
   the Markdown;
10. appends the sections of the benchmarks run on their own too (``--skip`` leaves them out): shallow
    fetches (:mod:`benchmarks.gitsource`), reload strategies under load (:mod:`benchmarks.strategies`) and
    preparation with a build command, sandboxed against a full checkout (:mod:`benchmarks.buildsandbox`).

Generated repositories are cached under ``benchmarks/results/tmp/`` for the length of the run only.

Every daemon it starts is stopped at the end, also on errors and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_common_args,
    begin,
    cmd_out,
    cpu_model,
    dumps,
    finish_common_args,
    json_safe,
    loadavg,
    progress,
)
from benchmarks.configmap import ConfigMapMarker
from benchmarks.deploys import LOG_PHASES, DeployRecord, MarkerWriter
from benchmarks.harness import proc_sample, stop_all
from benchmarks.idle import measure_idle, system_ticks
from benchmarks.newtag import NewTagOptions, run_newtag
from benchmarks.plots import make_plots
from benchmarks.report import render
from benchmarks.repos import RepoCache
from benchmarks.session import Session, current_tag, read_status, wait_status
from benchmarks.staged import StagedOptions
from benchmarks.staged import measure as measure_staged
from benchmarks.stats import summarize
from benchmarks.synth import GIT_ENV, SynthRepo, build_repo, git
from benchmarks.targets import evaluate
from benchmarks.torn import METHODS as TORN_METHODS
from benchmarks.torn import run_torn
from coordinator.options import OPTIONS

__all__ = ["Session", "main", "measure_idle"]

TARGET_MS = 5.0  # the p50 the watchfiles step recommendation aims at (--poll, non-Linux; not a target)
IDLE_CPU_BUDGET_PCT = 1.0  # of one core, for the watcher-step recommendation
HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
KEEP_DEFAULT = int(OPTIONS["keep"].default)  # the daemon's --keep in every benchmark session
CLOCK_REALTIME_COARSE = 5  # Linux clock id; the clock file timestamps are taken from
#: benchmarks of their own whose sections follow the main report: --skip key -> (module, what it measures)
APPENDED = {
    "gitsource": ("benchmarks.gitsource", "shallow fetches"),
    "strategies": ("benchmarks.strategies", "reload strategies under load"),
    "buildsandbox": ("benchmarks.buildsandbox", "preparation with a build command, sandboxed against full"),
}


# ---------------------------------------------------------------------------------------------- machine


def _mount_of(path: Path) -> tuple[str, str, str, str]:
    """(device, mount point, file system type, options) of the file system holding ``path``."""
    best = ("?", "", "?", "")
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 4:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[1]):
                    best = (parts[0], mnt, parts[2], parts[3])
    except OSError:
        pass
    return best


def _ext4_journal(path: Path) -> bool | None:
    """Whether the ext4 file system holding ``path`` has a journal (None: not ext4, or unknown)."""
    device, _mnt, fs_type, _options = _mount_of(path)
    if fs_type != "ext4":
        return None
    dev = os.path.basename(device)
    try:
        return any(name.startswith(f"{dev}-") for name in os.listdir("/proc/fs/jbd2"))
    except FileNotFoundError:
        return False  # no journal on any file system
    except OSError:
        return None


def _remove_tree(path: Path) -> None:
    """``rm -rf`` (much faster than shutil.rmtree on a million entries)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["rm", "-rf", "--", str(path)], check=False, capture_output=True, timeout=600)
    shutil.rmtree(path, ignore_errors=True)


def _coarse_res_ms() -> float:
    try:
        return time.clock_getres(CLOCK_REALTIME_COARSE) * 1000
    except OSError:
        return math.nan


def machine_info(work: Path) -> dict[str, Any]:
    dirty = cmd_out(["git", "status", "--porcelain", "--", "coordinator"], PROJECT)
    _device, _mnt, fs_type, fs_options = _mount_of(work)
    return {
        "nproc": cmd_out(["nproc"]),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "git": cmd_out(["git", "--version"]),
        "watchfiles": importlib.metadata.version("watchfiles"),
        "watcher": os.environ.get("COORDINATOR_TEST_WATCHER") or "default (inotify on Linux)",
        "fs_type": fs_type,
        "fs_options": fs_options,
        "ext4_journal": _ext4_journal(work),
        "work_dir": str(work),
        "coordinator_rev": cmd_out(["git", "rev-parse", "--short", "HEAD"], PROJECT),
        # porcelain lines are "XY path"; the first line's leading space was stripped with the output
        "coordinator_dirty": [ln.split(maxsplit=1)[-1] for ln in dirty.splitlines() if ln.strip()]
        if dirty != "?"
        else [],
        "coarse_clock_res_ms": _coarse_res_ms(),
        "loadavg_start": loadavg(),
        "clk_tck": os.sysconf("SC_CLK_TCK"),
    }


_system_ticks = system_ticks
_read_status = read_status
_wait_status = wait_status
_current_tag = current_tag


# ---------------------------------------------------------------------------------------------- helpers


def _clean(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _diff(a: float | None, b: float | None) -> float | None:
    """``a - b``, or None when either is missing."""
    return None if a is None or b is None else a - b


def _vals(records: Sequence[DeployRecord], get: Callable[[DeployRecord], float | None]) -> list[float]:
    return _clean(get(r) for r in records)


def _sd(values: Sequence[float]) -> dict[str, Any]:
    return summarize(values).to_dict()


class _LoadMeter:
    """Whole-machine CPU use over an interval, split into the daemon, this process and the rest."""

    def __init__(self, daemon_pid: int) -> None:
        self.pid = daemon_pid
        self.sys0 = _system_ticks()
        self.daemon0 = proc_sample(daemon_pid).ticks
        self.self0 = os.times()
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        sys1 = _system_ticks()
        daemon1 = proc_sample(self.pid).ticks
        self1 = os.times()
        total = max(1, sys1[1] - self.sys0[1])  # jiffies over all CPUs
        tck = os.sysconf("SC_CLK_TCK")
        own = (self1.user - self.self0.user + self1.system - self.self0.system) * tck
        busy = sys1[0] - self.sys0[0]
        daemon = daemon1 - self.daemon0
        return {
            "wall_s": time.monotonic() - self.t0,
            "busy_pct": 100.0 * busy / total,
            "daemon_pct": 100.0 * daemon / total,
            "benchmark_pct": 100.0 * own / total,
            "others_pct": 100.0 * max(0.0, busy - daemon - own) / total,
        }


# ---------------------------------------------------------------------------------------------- phases


def run_baseline(work: Path, repo: SynthRepo, count: int) -> list[float]:
    clone = work / "baseline-clone"
    git(work, "clone", "-q", str(repo.path), str(clone))
    env = {**os.environ, **GIT_ENV}
    args = ["git", "-c", "advice.detachedHead=false", "checkout", "-q", "-f"]
    subprocess.run([*args, "tags/v1"], cwd=clone, env=env, check=True, capture_output=True)
    times: list[float] = []
    for i in range(count):
        tag = "v2" if i % 2 == 0 else "v1"
        t = time.perf_counter_ns()
        subprocess.run([*args, f"tags/{tag}"], cwd=clone, env=env, check=True, capture_output=True)
        times.append((time.perf_counter_ns() - t) / 1e6)
        if (clone / "VERSION").read_text().strip() != tag:
            raise RuntimeError(f"baseline checkout of {tag} did not update the tree")
    return times


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment (which the daemons inherit) for the block."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rule = (
        f"among the steps whose marker -> reload p50 meets the {TARGET_MS:g} ms target and whose idle CPU is "
        f"<= {IDLE_CPU_BUDGET_PCT:g} % of a core, the largest (cheapest); if none qualifies, the lowest p50 "
        "within the CPU budget"
    )
    ok = [r for r in rows if r["marker_to_reload"]["p50"] <= TARGET_MS and r["idle_cpu_pct"] <= IDLE_CPU_BUDGET_PCT]
    if ok:
        best = max(ok, key=lambda r: r["step_ms"])
        why = "meets the target within the CPU budget"
    else:
        within = [r for r in rows if r["idle_cpu_pct"] <= IDLE_CPU_BUDGET_PCT] or rows
        best = min(within, key=lambda r: r["marker_to_reload"]["p50"])
        why = "no step meets both the target and the CPU budget; lowest p50 within the budget"
    why += (
        f": marker -> reload p50 {best['marker_to_reload']['p50']:.2f} ms, p99 "
        f"{best['marker_to_reload']['p99']:.2f} ms, idle CPU {best['idle_cpu_pct']:.2f} % of a core"
    )
    return {"step_ms": best["step_ms"], "why": why, "rule": rule}


def _record_metrics(records: Sequence[DeployRecord]) -> dict[str, dict[str, Any]]:
    keys = ["ext_swap", "ext_touch_seen", "ext_touch_ctime", "ext_status_idle", "ext_deploying"]
    keys += ["log_started", "log_swap", "log_reloaded", "log_succeeded"]
    out = {k: _sd(_clean(getattr(r, k) for r in records)) for k in keys}
    return {k: v for k, v in out.items() if v["n"]}


def _phase_summaries(records: Sequence[DeployRecord]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in [*(k for k, _, _ in LOG_PHASES), "total"]:
        out[key] = _sd(_clean(r.phases().get(key) for r in records))
    return out


def _inner_durations(records: Sequence[DeployRecord]) -> dict[str, dict[str, Any]]:
    names = sorted({k for r in records for k in r.phase_ms})
    return {n: _sd([r.phase_ms[n] for r in records if n in r.phase_ms]) for n in names}


# ---------------------------------------------------------------------------------------------- main


def run_all(args: argparse.Namespace, work: Path, started: float) -> dict[str, Any]:
    from coordinator.marker import release_name
    from coordinator.options import OPTIONS

    default_step = int(OPTIONS["watch-step-ms"].default)
    machine = machine_info(work)
    notes: list[str] = []

    progress(f"building the synthetic repository ({args.files} files) in {work}")
    repo = build_repo(work / "repo", files=args.files, changed=args.changed)
    releases = {tag: release_name(tag, sha) for tag, sha in repo.tags.items()}
    root = work / "root"
    root.mkdir()

    sections_s: dict[str, float] = {}
    section_t = time.monotonic()

    def section_done(name: str) -> None:
        nonlocal section_t
        now = time.monotonic()
        sections_s[name] = now - section_t
        section_t = now

    def session(
        name: str,
        step_ms: int | None,
        log_level: str,
        extra_args: Sequence[str] = (),
        writer: MarkerWriter | None = None,
    ) -> Session:
        return Session(
            root,
            repo.path,
            work / f"daemon-{name}.log",
            releases,
            step_ms=step_ms,
            log_level=log_level,
            seed=args.seed,
            observer_sleep_s=args.observer_sleep_us / 1e6,
            extra_args=extra_args,
            writer=writer,
        )

    # -- main: cold deploys, then deploys of a release already on disk at the default step
    anomalies: list[dict[str, Any]] = []
    progress(f"main daemon (default step {default_step} ms): first deploys of v1 and v2")
    with session("main", None, args.main_log_level) as drv:
        cold = [drv.deploy("v1", timeout_s=300), drv.deploy("v2", timeout_s=300)]
        progress(f"{args.deploys} deploys of a release already on disk")
        load = _LoadMeter(drv.daemon.pid)
        warm = drv.alternate(args.deploys, default_step, "v1", "v2")
        main_load = load.stop()
        anomalies += drv.anomalies
        idle_long: dict[str, Any] | None = None
        if "idle" not in args.skip:
            progress(f"idle cost: {args.idle_long_seconds:g} s with no deploy (default step)")
            idle_long = measure_idle(drv.daemon.pid, args.idle_long_seconds)
    section_done("on_disk_rename")
    bad_ctime = sum(1 for r in warm if not r.ctime_ok)
    ctime_before_swap = sum(
        1 for r in warm if r.ext_touch_ctime is not None and r.ext_swap is not None and r.ext_touch_ctime < r.ext_swap
    )
    ctime_lag = _sd(_vals(warm, lambda r: _diff(r.ext_touch_seen, r.ext_touch_ctime)))

    # -- the same deploys with a Kubernetes ConfigMap-style marker (..data symlink swap)
    cm_recs: list[DeployRecord] = []
    if "configmap" not in args.skip:
        cm = ConfigMapMarker(root / "configmap")
        now_tag = _current_tag(root, releases)
        cm.setup(json.dumps({"tag": now_tag}) + "\n")
        other = "v1" if now_tag == "v2" else "v2"
        progress(f"{args.configmap_deploys} deploys of a release on disk through a ConfigMap-style marker")
        with session("configmap", None, args.main_log_level, ["--marker", str(cm.marker)], cm) as drv:
            cm_recs = drv.alternate(args.configmap_deploys, default_step, other, now_tag)
            anomalies += drv.anomalies
        section_done("on_disk_configmap")

    # -- baseline
    progress(f"baseline: {args.baseline} in-place git checkouts")
    base = run_baseline(work, repo, args.baseline)
    section_done("baseline_checkout")

    # -- watcher steps
    rows: list[dict[str, Any]] = []
    step_records: dict[str, list[dict[str, Any]]] = {}
    for step in [] if "steps" in args.skip else args.steps:
        progress(
            f"--watch-step-ms {step} (watchfiles): {args.table_deploys} deploys, then {args.idle_seconds:g} s idle"
        )
        # the step applies to the watchfiles back-end only (--poll, non-Linux): measure that one
        with _env("COORDINATOR_TEST_WATCHER", "watchfiles"), session(f"step{step}", step, "info") as drv:
            first = "v1" if _current_tag(root, releases) == "v2" else "v2"
            recs = drv.alternate(args.table_deploys, step, first, "v2" if first == "v1" else "v1")
            idle = measure_idle(drv.daemon.pid, args.idle_seconds)
            anomalies += drv.anomalies
        rows.append(
            {
                "step_ms": step,
                "n": len(recs),
                "marker_to_reload": _sd(_vals(recs, lambda r: r.ext_touch_seen)),
                "marker_to_swap": _sd(_vals(recs, lambda r: r.ext_swap)),
                "detect": _sd(_vals(recs, lambda r: r.log_started)),
                "after_detect": _sd(_vals(recs, lambda r: _diff(r.ext_touch_seen, r.log_started))),
                **idle,
            }
        )
        step_records[str(step)] = [r.to_dict() for r in recs]
    section_done("watch_steps")

    # -- new-tag deploys and torn reads, on generated repositories cached for this run only
    # warm-up: the daemon's --keep (5) releases plus one, so that every timed new-tag deploy finds a
    # retired release in the spare, as a daemon that has run for a while does (benchmarks.newtag)
    cache = RepoCache(args.repo_cache, args.changes, args.newtag_reps, warmup=KEEP_DEFAULT + 1)
    newtag: dict[str, Any] | None = None
    if "newtag" not in args.skip:
        opt = NewTagOptions(
            sizes=args.sizes,
            changes=args.changes,
            reps=args.newtag_reps,
            first_reps=args.first_reps,
            first_reps_large=args.first_reps_large,
            seed=args.seed,
        )
        newtag = run_newtag(work, cache, opt, progress)
        notes += newtag.pop("notes")
        section_done("new_tags")
    torn: dict[str, Any] | None = None
    if "torn" not in args.skip:
        torn = run_torn(work, cache.get(args.torn_files), args.torn_methods, args.seed, progress, args.main_log_level)
        notes += torn.pop("notes")
        section_done("torn_reads")
    staged: dict[str, Any] | None = None
    if "staged" not in args.skip:
        (work / "staged").mkdir()
        staged_opt = StagedOptions(
            deploys=args.staged_deploys,
            files=args.files,
            changed=args.changed,
            seed=args.seed,
            log_level=args.main_log_level,
        )
        staged = measure_staged(work / "staged", staged_opt, progress)
        section_done("staged")

    # -- summary
    warm_touch = summarize(_vals(warm, lambda r: r.ext_touch_seen))
    base_s = summarize(base)
    target = {
        "metric": "marker rename -> reload file touched (seen from outside)",
        "threshold_ms": TARGET_MS,
        "p50_ms": warm_touch.p50,
        "p99_ms": warm_touch.p99,
        "n": warm_touch.n,
        "met": warm_touch.p50 <= TARGET_MS,
    }
    reco = recommend(rows) if rows else None
    machine["loadavg_end"] = loadavg()
    try:
        drift = os.lstat(root / "reload.touch").st_mtime - time.time()
    except OSError:
        drift = math.nan

    period = summarize(_vals(warm, lambda r: r.observer_period_us))
    deploying = sum(1 for r in warm if r.ext_deploying is not None)
    notes += [
        f"First deploys (fetch + checkout of {repo.files} files + syncfs), marker -> status idle: "
        + ", ".join(f"{r.tag} {r.ext_status_idle:.0f} ms" for r in cold if r.ext_status_idle is not None)
        + ".",
        "The reload file's ctime is set from the kernel's coarse clock "
        f"({machine['coarse_clock_res_ms']:.0f} ms ticks on this kernel): it was earlier than the moment the "
        f"swap was seen in {ctime_before_swap} of {len(warm)} deploys (impossible in real time, the touch follows "
        f"the swap), on average {ctime_lag['mean']:.2f} ms before the observer saw it (max {ctime_lag['max']:.2f}). "
        "Multigrain timestamps (Linux 6.13+) only make a queried ctime distinguishable from the previous one, "
        "not precise. The target therefore uses the moment the observer first saw the ctime change (upper bound, "
        "precise to one poll), and the ctime row is shown for reference only.",
        f"ctime outside [t0, first seen] in {bad_ctime} of {len(warm)} deploys.",
        "Pacing: each deploy waits until the previous one is complete (status `idle` with the new release and "
        "its `deploy_succeeded` event), then 3 x step + 20..70 ms (random, seeded) so markers land at random "
        "phases of the watcher's step timer and its own post-deploy events have settled. Deploys are faster "
        "than one per second, so the touch tokens (whole-second mtimes, each one second past the previous) run "
        f"ahead of the clock: at the end the reload file's mtime was {drift:.0f} s in the future. That is the "
        "daemon's deliberate uWSGI rule and does not affect these measurements, which use ctime changes, "
        "not mtime.",
        f"Observer: median {period.p50:.1f} us per poll of the three files (p99 {period.p99:.1f} us), "
        "`sched_yield` between polls; it only spins while a deploy is in flight.",
        f"Status `deploying` was published before the swap in {deploying} of {len(warm)} deploys of a release on disk.",
    ]
    multi = [r.request_id for r in warm if r.deploy_started_events != 1]
    if multi:
        notes.append(f"{len(multi)} deploys logged `deploy_started` more than once or never: {multi[:5]}")
    if anomalies:
        kinds = sorted({str(a.get("event")) for a in anomalies})
        notes.append(f"{len(anomalies)} warning/error events in the daemon logs: {', '.join(kinds)}.")
    else:
        notes.append("No warning or error events in the daemon logs.")
    overhead = ", ".join(f"{r['step_ms']} ms: {r['detect']['p50'] - 1.5 * r['step_ms']:.1f} ms" for r in rows)
    notes.append(
        "watchfiles returns a batch only once the change set stopped growing for one step, so the watcher alone "
        "waits between 1 and 2 steps after the rename (1.5 steps median); detect p50 minus 1.5 steps, i.e. the "
        f"wake-up path through threads and the event loop plus the reconcile's reads, by step: {overhead}."
    )
    if cm_recs:
        cm_touch = summarize(_vals(cm_recs, lambda r: r.ext_touch_seen))
        notes.append(
            "ConfigMap-style marker: each update writes a new `..<timestamp>` directory, renames a `..data_tmp` "
            "symlink over `..data` (t0 = just before that rename) and deletes the old directory, as kubelet does; "
            f"marker -> reload p50 {cm_touch.p50:.2f} ms against {warm_touch.p50:.2f} ms for a marker replaced by "
            "rename in the same run (ratio of p50s "
            f"{cm_touch.p50 / warm_touch.p50:.2f})."
        )
    idle_busy = [r["system_busy_pct"] for r in rows]
    idle_daemon = [r["daemon_pct_of_all_cores"] for r in rows]

    results: dict[str, Any] = {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "machine": machine,
        "config": {
            "files": args.files,
            "changed": args.changed,
            "deploys": args.deploys,
            "baseline": args.baseline,
            "table_deploys": args.table_deploys,
            "idle_seconds": args.idle_seconds,
            "steps": args.steps,
            "seed": args.seed,
            "default_step_ms": default_step,
            "main_log_level": args.main_log_level,
            "observer_sleep_us": args.observer_sleep_us,
            "configmap_deploys": args.configmap_deploys,
            "idle_long_seconds": args.idle_long_seconds,
            "sizes": args.sizes,
            "changes": args.changes,
            "newtag_reps": args.newtag_reps,
            "first_reps": args.first_reps,
            "first_reps_large": args.first_reps_large,
            "torn_files": args.torn_files,
            "torn_methods": args.torn_methods,
            "staged_deploys": args.staged_deploys,
            "skip": sorted(args.skip),
            "quick": args.quick,
        },
        "repo": {"files": repo.files, "changed": repo.changed, "bytes": repo.bytes_total, "tags": repo.tags},
        "releases": releases,
        "target": target,
        "recommendation": reco,
        "cold_deploys": [r.to_dict() for r in cold],
        "warm": {
            "n": len(warm),
            "metrics": _record_metrics(warm),
            "phases": _phase_summaries(warm),
            "phase_durations": _inner_durations(warm),
            "observer_period_us": period.to_dict(),
            "ctime_before_swap": ctime_before_swap,
            "ctime_lag_ms": ctime_lag,
        },
        "phase_labels": [list(p) for p in LOG_PHASES],
        "baseline": {
            "summary": base_s.to_dict(),
            "ratio_p50": warm_touch.p50 / base_s.p50,
            "ratio_p99": warm_touch.p99 / base_s.p99,
            "speedup_p50": base_s.p50 / warm_touch.p50,
        },
        "watch_steps": rows,
        "idle_long": idle_long,
        "configmap": (
            {
                "n": len(cm_recs),
                "metrics": _record_metrics(cm_recs),
                "phases": _phase_summaries(cm_recs),
                "phase_durations": _inner_durations(cm_recs),
            }
            if cm_recs
            else None
        ),
        "newtag": newtag,
        "torn": torn,
        "staged": staged,
        "sections_s": sections_s,
        "system": {
            "during_main": main_load,
            "busy_pct_during_idle": sum(idle_busy) / len(idle_busy) if idle_busy else math.nan,
            "daemon_pct_during_idle": sum(idle_daemon) / len(idle_daemon) if idle_daemon else math.nan,
        },
        "notes": notes,
        "samples": {
            "warm": _columns([r.to_dict() for r in warm]),
            "baseline_ms": base,
            "steps": {k: _columns(v) for k, v in step_records.items()},
            "configmap": _columns([r.to_dict() for r in cm_recs]),
        },
    }
    results["targets"] = evaluate(results)
    return results


def _columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per-deploy records as columns (one list per field; nested dicts flattened as ``a.b``)."""
    flat: list[dict[str, Any]] = []
    for row in rows:
        f: dict[str, Any] = {}
        for k, v in row.items():
            if isinstance(v, dict):
                f.update({f"{k}.{k2}": v2 for k2, v2 in v.items()})
            else:
                f[k] = v
        flat.append(f)
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    return {k: [f.get(k) for f in flat] for k in keys}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks run", description=__doc__.split("\n\n")[0])
    p.add_argument("--deploys", type=int, default=200, help="deploys of a release on disk (default 200)")
    p.add_argument("--baseline", type=int, default=100, help="in-place git checkouts (default 100)")
    p.add_argument("--table-deploys", type=int, default=50, help="deploys per watcher step (default 50)")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="idle window per watcher step (default 10)")
    p.add_argument(
        "--steps",
        default="1,2,3,5,10,50",
        help="watcher steps in ms, comma-separated (default 1,2,3,5,10,50)",
    )
    p.add_argument("--files", type=int, default=2000, help="files in the synthetic repository (default 2000)")
    p.add_argument("--changed", type=int, default=100, help="files v2 changes (default 100)")
    p.add_argument("--main-log-level", default="info", help="log level of the main daemon (default info)")
    p.add_argument("--observer-sleep-us", type=float, default=0.0, help="sleep between polls (default 0: spin)")
    add_common_args(p, keep_what="repo, ROOT, daemon logs", quick_what="a smoke run with small counts and sizes")
    p.add_argument("--configmap-deploys", type=int, default=None, help="deploys with a ConfigMap marker (= --deploys)")
    p.add_argument("--idle-long-seconds", type=float, default=60.0, help="idle window at the default step (60)")
    p.add_argument("--sizes", default="1000,2000,10000,50000", help="files per generated repository (new tags)")
    p.add_argument("--changes", default="10,100,1000", help="files changed per new tag (default 10,100,1000)")
    p.add_argument("--newtag-reps", type=int, default=5, help="new-tag deploys per size and change size (5)")
    p.add_argument("--first-reps", type=int, default=5, help="first deploys (fresh ROOT) per size <= 10k (5)")
    p.add_argument("--first-reps-large", type=int, default=3, help="first deploys per larger size (default 3)")
    p.add_argument("--torn-files", type=int, default=2000, help="files of the repository of the torn-read test")
    p.add_argument(
        "--torn-methods",
        default=",".join(k for k, _, _ in TORN_METHODS),
        help="deploy methods of the torn-read test (default: all)",
    )
    sections = ("configmap", "idle", "steps", "newtag", "torn", "staged", "plots", *APPENDED)
    p.add_argument(
        "--staged-deploys", type=int, default=None, help="deploys of each kind, staged section (50; --quick 3)"
    )
    p.add_argument("--skip", default="", help=f"sections to skip, comma-separated: {', '.join(sections)}")
    args = p.parse_args(argv)

    def ints(text: str) -> list[int]:
        return [int(x) for x in str(text).split(",") if x.strip()]

    args.steps, args.sizes, args.changes = ints(args.steps), ints(args.sizes), ints(args.changes)
    args.torn_methods = [m.strip() for m in str(args.torn_methods).split(",") if m.strip()]
    args.skip = {x.strip() for x in str(args.skip).split(",") if x.strip()}
    if args.quick:
        args.deploys, args.baseline, args.table_deploys, args.idle_seconds = 10, 6, 6, 1.0
        args.idle_long_seconds = 3.0
        args.sizes, args.changes, args.newtag_reps, args.first_reps = [300, 2000], [10, 100], 2, 3
        args.first_reps_large = 2
    if args.staged_deploys is None:
        args.staged_deploys = 3 if args.quick else 50
    if args.configmap_deploys is None:
        args.configmap_deploys = args.deploys
    finish_common_args(args, HERE / "results")
    if args.deploys < 2 or args.baseline < 2 or args.table_deploys < 2 or not args.steps:
        p.error("counts must be at least 2 and --steps non-empty")
    if args.staged_deploys < 1:
        p.error("--staged-deploys must be at least 1")
    if args.configmap_deploys < 2 or args.newtag_reps < 1 or min(args.first_reps, args.first_reps_large) < 1:
        p.error("--configmap-deploys must be at least 2, --newtag-reps and --first-reps at least 1")
    unknown = args.skip - set(sections)
    if unknown:
        p.error(f"unknown sections in --skip: {', '.join(sorted(unknown))}")
    bad = set(args.torn_methods) - {k for k, _, _ in TORN_METHODS}
    if bad:
        p.error(f"unknown torn-read methods: {', '.join(sorted(bad))}")
    if "torn" not in args.skip and "ours" not in args.torn_methods:
        p.error("the torn-read test needs the method 'ours'")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    started = time.time()
    work = begin("coordinator-bench-", args.tmp_dir, stop_all)
    if work is None:
        return 2
    # generated repositories: cached under benchmarks/results/tmp/ (gitignored) for this run only
    args.repo_cache = HERE / "results" / "tmp" / f"repos-{os.getpid()}-{int(started)}"
    try:
        results = json_safe(run_all(args, work, started))
    except KeyboardInterrupt:
        print(f"interrupted; work directory {work}", file=sys.stderr)
        return 130
    except Exception:
        args.keep_tmp = True
        print(f"benchmark failed; daemon logs kept in {work}", file=sys.stderr)
        raise
    finally:
        stop_all()
        if not args.keep_tmp:
            progress(f"removing the work directory {work} and the generated repositories")
            _remove_tree(work)
            _remove_tree(args.repo_cache)
    results["figures"] = []
    if args.write and "plots" not in args.skip:
        progress("drawing the plots")
        figures, err = make_plots(results, args.results_dir, results["date"])
        results["figures"] = figures
        if err:
            results["notes"].append(f"No plots: {err}")
    results["duration_s"] = round(time.time() - started, 1)
    report = render(results)
    if args.write:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        base = args.results_dir / results["date"]
        base.with_suffix(".json").write_text(dumps(results) + "\n")
        base.with_suffix(".md").write_text(report)
        progress(f"wrote {base}.json and {base}.md")
    for key, (module_name, what) in APPENDED.items():
        if key in args.skip:
            continue
        # a benchmark of its own (its module's run_for_report and render_section): a section appended
        module = importlib.import_module(module_name)
        progress(f"{what} ({module_name})")
        try:
            results[key] = module.run_for_report(args.quick, args.tmp_dir, args.keep_tmp)
        except KeyboardInterrupt:
            print(f"interrupted during the {what} benchmark", file=sys.stderr)
            return 130
        section: str = module.render_section(results[key])
        report += "\n" + section
        results["duration_s"] = round(time.time() - started, 1)
        if args.write:
            base = args.results_dir / results["date"]
            with open(base.with_suffix(".md"), "a") as f:
                f.write("\n" + section)
            base.with_suffix(".json").write_text(dumps(results) + "\n")
            progress(f"appended the {what} to {base}.json and {base}.md")
    progress(f"total run time {results['duration_s']:.0f} s")
    sys.stdout.write(report)
    sys.stdout.flush()
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
