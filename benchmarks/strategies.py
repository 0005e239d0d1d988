"""Reload strategies under load: ``python -m benchmarks strategies`` (also run at the end of
``python -m benchmarks run``, i.e. ``make bench``).

For each reload strategy (uWSGI ``--touch-reload``, uWSGI master FIFO graceful reload ``r``, uWSGI
``--lazy-apps`` chain reload ``c`` through the FIFO, gunicorn ``HUP``), on 127.0.0.1, with the real app
server (command lines from :mod:`tests.e2e.servers`, app from :mod:`tests.e2e.app`), the real daemon
(``python -m coordinator run ... --reload-...`` as a subprocess) and the bounded load generator of
:mod:`tests.e2e.load` running through every deploy:

1. N deploys (default 200: a failure as rare as one in a few thousand requests needs that many)
   alternating between two releases already on disk (v2, v1, v2, ...), each paced so
   that it completes and only the new version is served before the next; per deploy, marker written
   (just before its rename) -> the first response whose body names the new version (its finish time, as
   the load generator saw it);
2. request latency p50/p99/max of the requests that started within the deploy windows (marker written ->
   new version first served + 1 s) against steady state: after each deploy has settled, a window of the
   same length with no deploy (interleaved, so both are measured in the same run, under the same load);
3. failed requests and mixed-version responses (``app`` != ``late`` in one response; must be 0), and how
   long both versions were served side by side (first new-version response -> last old-version one).

Results: a Markdown section (appended to ``benchmarks/results/<date>.md`` by ``python -m benchmarks run``; standalone
it writes ``benchmarks/results/<date>-strategies.md`` and ``.json``). Every server and daemon runs in its
own process group and is stopped at the end, also on errors and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from benchmarks.harness import Event, LogTail, write_marker
from benchmarks.report import _f, _table
from benchmarks.stats import summarize
from benchmarks.targets import reload_target
from coordinator.daemon import run_argv
from tests.e2e.app import WSGI, make_app_repo
from tests.e2e.load import Failure, Load, Response
from tests.e2e.servers import (
    BIN,
    Process,
    free_port,
    gunicorn_hup,
    pin_env,
    uwsgi_fifo,
    uwsgi_lazy_chain,
    uwsgi_touch,
    wait_http,
)
from tests.helpers import GitRepo, deployed, read_status

__all__ = ["STRATEGIES", "Strategy", "main", "measure", "render_section"]

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
TAGS = ("v1", "v2")  # the two releases deployed alternately (both on disk before the measurement)
WINDOW_TAIL_S = 1.0  # a deploy window ends this long after the new version was first served
SETTLE_S = 0.25  # pause after a deploy converged before its steady window
TOUCH_JITTER_S = 1.0  # random pause before each touch deploy: markers land at random phases of uWSGI's 1 s check
JITTER_S = 0.25  # random pause before each marker of the other strategies
RECENT_S = 0.3  # converged: every response finished in the last RECENT_S names the new version
DEPLOY_TIMEOUT_S = 120.0  # a deploy whose new version is not served by then aborts the run (the server is stuck)
SLOW_S = 30.0  # a deploy served later than this is counted as *late* (kept in every figure, and named)
CLIENTS = 4
#: the daemon's info event at the end of its reload phase (`reloaded` itself is a debug event)
RELOAD_EVENT = "reload"
DEFAULT_DEPLOYS = 200  # per strategy, in `make bench` too (about 70 min for the four)
CLIENT_PAUSE_S = 0.01

#: every process this module started and has not stopped yet (stopped by :func:`stop_all`)
_LIVE: list[Process] = []


@dataclass(frozen=True, slots=True)
class Strategy:
    key: str
    title: str
    server: str  # what the server set-up is (Markdown)
    options: str  # coordinator options (Markdown)
    argv: Callable[[int, Path, Path], list[str]]  # (port, root, tmp) -> server command line
    daemon_args: Callable[[Path, Path], list[str]]  # (root, tmp) -> coordinator reload options
    done_line: str | None = None  # a server log line that says a reload finished (once per deploy)
    jitter_s: float = JITTER_S  # random pause (0..jitter_s, seeded) before each marker


def _fifo(tmp: Path) -> Path:
    return tmp / "uwsgi.fifo"


def _pidfile(tmp: Path) -> Path:
    return tmp / "gunicorn.pid"


STRATEGIES: list[Strategy] = [
    Strategy(
        "uwsgi-touch",
        "uWSGI touch",
        "uWSGI prefork, 2 workers, `--touch-reload ROOT/reload.touch` (graceful full reload)",
        "default (touch `ROOT/reload.touch`)",
        lambda port, root, tmp: uwsgi_touch(port, root),
        lambda root, tmp: [],
        jitter_s=TOUCH_JITTER_S,
    ),
    Strategy(
        "uwsgi-fifo-r",
        "uWSGI FIFO `r`",
        "uWSGI prefork, 2 workers, `--master-fifo` (graceful full reload)",
        "`--reload-fifo F --reload-fifo-command r`",
        lambda port, root, tmp: uwsgi_fifo(port, root, _fifo(tmp)),
        lambda root, tmp: ["--reload-fifo", str(_fifo(tmp)), "--reload-fifo-command", "r"],
    ),
    Strategy(
        "uwsgi-lazy-chain-c",
        "uWSGI lazy-apps chain `c`",
        "uWSGI `--lazy-apps`, 2 workers, `--master-fifo` (chain reload: one worker at a time)",
        "`--reload-fifo F --reload-fifo-command c`",
        lambda port, root, tmp: uwsgi_lazy_chain(port, root, _fifo(tmp)),
        lambda root, tmp: ["--reload-fifo", str(_fifo(tmp)), "--reload-fifo-command", "c"],
        done_line="chain reloading complete",
    ),
    Strategy(
        "gunicorn-hup",
        "gunicorn HUP",
        "gunicorn, 2 sync workers, no `--preload` (HUP: new workers, old ones stop gracefully)",
        "`--reload-signal HUP --reload-pidfile F`",
        lambda port, root, tmp: gunicorn_hup(port, root, _pidfile(tmp)),
        lambda root, tmp: ["--reload-signal", "HUP", "--reload-pidfile", str(_pidfile(tmp))],
    ),
]


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------- small helpers


def machine_info() -> dict[str, Any]:
    return {
        "nproc": cmd_out(["nproc"]),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "coordinator_rev": cmd_out(["git", "rev-parse", "--short", "HEAD"], PROJECT),
        "coordinator_dirty": _dirty(),
        "loadavg_start": loadavg(),
    }


# ---------------------------------------------------------------------------------------------- processes


def _start(argv: Sequence[str], log: Path, env: dict[str, str] | None, cwd: Path, *, clean_env: bool) -> Process:
    """Start ``argv`` in its own process group (:class:`tests.e2e.servers.Process`) and register it."""
    proc = Process(argv, log, env=env, cwd=cwd)
    if clean_env:  # the daemon: nothing from our environment may change its configuration
        proc.env = {k: v for k, v in os.environ.items() if not k.startswith(("COORDINATOR_", "WATCHFILES_", "GIT_"))}
    _LIVE.append(proc)
    return proc.start()


def _stop(proc: Process) -> None:
    try:
        proc.stop()
    finally:
        if proc in _LIVE:
            _LIVE.remove(proc)


def stop_all() -> None:
    """Stop (whole process groups) every server and daemon still running, newest first."""
    for proc in reversed(list(_LIVE)):
        try:
            _stop(proc)
        except Exception as e:  # keep stopping the others
            print(f"warning: could not stop pid {proc.proc.pid if proc.proc else '?'}: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- one strategy


@dataclass(slots=True)
class Deploy:
    """One measured deploy. Times are ``time.monotonic()`` seconds, like the load generator's."""

    tag: str
    old: str
    request_id: str
    t0: float  # just before the marker's rename
    t0_wall_ns: int
    first_seen: float = math.nan  # when the pacing loop first saw a new-version response (>= first_new)
    converged: float = math.nan
    steady_start: float = math.nan
    steady_end: float = math.nan
    # filled in by the analysis, from every response
    first_new: float = math.nan
    window_end: float = math.nan
    last_old: float | None = None
    reloaded_ms: float | None = None  # marker -> the daemon's `reload` phase event (log timestamps)


def _write_marker(root: Path, tag: str, request_id: str) -> tuple[float, int]:
    """The marker, written atomically by :func:`benchmarks.harness.write_marker`; (monotonic, wall ns) t0."""
    before_mono, before_wall = time.monotonic(), time.time_ns()
    t0_wall = write_marker(root, json.dumps({"tag": tag, "id": request_id}) + "\n")
    # write_marker returns the wall clock just before the rename; the same instant on the monotonic clock
    return before_mono + (t0_wall - before_wall) / 1e9, t0_wall


def _once(root: Path, repo: Path, tag: str, log: Path) -> None:
    """``coordinator run --once`` for ``tag`` (default touch strategy; no server runs yet)."""
    write_marker(root, tag + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COORDINATOR_", "WATCHFILES_", "GIT_"))}
    with open(log, "ab") as out:
        rc = subprocess.run(
            run_argv(root, repo, "--once", "--log-format", "json"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=PROJECT,
            timeout=120,
            check=False,
        ).returncode
    if rc != 0:
        raise BenchError(f"coordinator run --once for {tag} exited with {rc}; see {log}")


class _Cursor:
    """Reads the load generator's responses incrementally (its lists are only ever appended to)."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.seen = 0
        self.recent: list[Response] = []

    def poll(self) -> list[Response]:
        new = self.load.responses[self.seen :]
        self.seen += len(new)
        self.recent = [r for r in self.recent if r.finished >= time.monotonic() - 2.0] + new
        return new


def _wait(pred: Callable[[], bool], timeout: float, what: str, check: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        check()
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not within {timeout:g} s")
        time.sleep(0.005)


def run_strategy(s: Strategy, repo: Path, work: Path, deploys: int, seed: int) -> dict[str, Any]:
    tmp = work / s.key
    root = tmp / "volume"
    root.mkdir(parents=True)
    # both releases on disk before the server starts: v2, then v1 (current = v1, previous = v2)
    for tag in reversed(TAGS):
        _once(root, repo, tag, tmp / "once.log")
    port = free_port()
    server_log, daemon_log = tmp / "server.log", tmp / "daemon.log"
    load: Load | None = None
    procs: list[Process] = []
    try:
        server = _start(s.argv(port, root, tmp), server_log, pin_env(root), tmp, clean_env=False)
        procs.append(server)
        wait_http(port, "app=v1 late=v1", timeout=60, server=server)
        daemon_argv = run_argv(root, repo, "--log-format", "json", *s.daemon_args(root, tmp))
        daemon = _start(daemon_argv, daemon_log, None, PROJECT, clean_env=True)
        procs.append(daemon)
        tail = LogTail(daemon_log)
        events: list[Event] = []

        def check() -> None:
            if not server.alive():
                raise BenchError(f"{s.key}: the server exited; see {server_log}")
            if not daemon.alive():
                raise BenchError(f"{s.key}: the daemon exited; see {daemon_log}")

        def started() -> bool:
            events.extend(tail.read_new())
            return any(e.get("event") == "started" for e in events)

        _wait(started, 30, f"{s.key}: daemon `started` event", check)
        _wait(
            lambda: deployed(root, "v1") and (read_status(root) or {}).get("pid") == daemon.pid,
            30,
            f"{s.key}: status idle on v1 from the daemon",
            check,
        )
        start_reloads = sum(1 for e in tail.read_new() + events if e.get("event") == RELOAD_EVENT)
        # a late deploy (a reload the server missed, up to DEPLOY_TIMEOUT_S) must not end the load early
        budget = 20.0 + deploys * 15.0 + 4 * DEPLOY_TIMEOUT_S
        # the load must outlast every deploy: about 1,800 requests per deploy were measured (uWSGI touch,
        # 4 clients); a fixed cap of 200,000 ran out at deploy 125 of a 200-deploy run
        cap = 50_000 + deploys * 10_000
        load = Load(
            port, clients=CLIENTS, pause=CLIENT_PAUSE_S, timeout=5.0, max_requests=cap, max_seconds=budget
        ).start()
        cursor = _Cursor(load)
        time.sleep(1.0)  # warm-up: each worker has served (and imported `late`)
        cursor.poll()
        rng = random.Random(seed)
        done_count = server.log().count(s.done_line) if s.done_line else 0
        records: list[Deploy] = []
        for i in range(deploys):
            tag, old = ("v2", "v1") if i % 2 == 0 else ("v1", "v2")
            time.sleep(rng.uniform(0.0, s.jitter_s))
            rid = f"bench-{s.key}-{i + 1:03d}"
            t0, t0_wall = _write_marker(root, tag, rid)
            d = Deploy(tag, old, rid, t0, t0_wall)
            records.append(d)

            def new_seen(d: Deploy = d) -> bool:
                for r in cursor.poll():
                    if r.app == d.tag and r.finished >= d.t0 and math.isnan(d.first_seen):
                        d.first_seen = r.finished
                return not math.isnan(d.first_seen)

            _wait(new_seen, DEPLOY_TIMEOUT_S, f"{s.key}: {tag} served (deploy {i + 1})", check)
            if d.first_seen - d.t0 > SLOW_S:
                progress(f"strategy {s.key}: deploy {i + 1} ({tag}) served only after {d.first_seen - d.t0:.1f} s")
            want_done = done_count + 1

            def converged(d: Deploy = d, want_done: int = want_done) -> bool:
                cursor.poll()
                now = time.monotonic()
                if now < d.first_seen + WINDOW_TAIL_S or not deployed(root, d.tag):
                    return False
                if s.done_line is not None and server.log().count(s.done_line) < want_done:
                    return False
                recent = [r for r in cursor.recent if r.finished >= now - RECENT_S]
                return len(recent) >= 3 and all(r.app == d.tag for r in recent)

            _wait(converged, DEPLOY_TIMEOUT_S, f"{s.key}: {tag} converged (deploy {i + 1})", check)
            d.converged = time.monotonic()
            if s.done_line is not None:
                done_count = server.log().count(s.done_line)
            time.sleep(SETTLE_S)
            # steady state: as long as this deploy's window (marker -> new version + 1 s), no deploy
            length = d.first_seen + WINDOW_TAIL_S - d.t0
            d.steady_start = time.monotonic()
            time.sleep(length)
            d.steady_end = d.steady_start + length
            check()
        load.stop()
        if load.stopped_at - load.started_at >= budget - 0.5:
            raise BenchError(f"{s.key}: the load generator reached its time bound ({budget:g} s) before the end")
        events += tail.read_new()
        server_text = server.log()
    finally:
        if load is not None:
            load.stop()
        for p in reversed(procs):
            _stop(p)
    return _analyse(s, load, records, events, server_text, start_reloads)


# ---------------------------------------------------------------------------------------------- analysis


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def _co_corrected(latencies_ms: Sequence[float], interval_ms: float) -> list[float]:
    """Latencies corrected for coordinated omission, as HdrHistogram's ``recordValueWithExpectedInterval``:
    a closed-loop client stuck for L ms did not send the requests it would have sent every ``interval_ms``
    meanwhile; each of those is added with the latency it would have seen (L - interval, L - 2 interval, ...).
    """
    out: list[float] = []
    for v in latencies_ms:
        out.append(v)
        missed = v - interval_ms
        while interval_ms > 0 and missed > 0:
            out.append(missed)
            missed -= interval_ms
    return out


def _longest_gap_ms(finished: Sequence[float], start: float, end: float) -> float:
    """The longest time within [start, end] in which no response finished (any version), in ms."""
    points = [start, *(t for t in finished if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points)) * 1000


def _analyse(
    s: Strategy, load: Load, records: list[Deploy], events: list[Event], server_log: str, start_reloads: int
) -> dict[str, Any]:
    responses = sorted(load.responses, key=lambda r: r.finished)
    failures: list[Failure] = list(load.failures)
    reloaded = [e for e in events if e.get("event") == RELOAD_EVENT and isinstance(e.get("_ts_ns"), int)]
    for i, d in enumerate(records):
        until = records[i + 1].t0 if i + 1 < len(records) else math.inf
        new = [r.finished for r in responses if r.app == d.tag and d.t0 <= r.finished < until]
        d.first_new = min(new)
        d.window_end = d.first_new + WINDOW_TAIL_S
        olds = [r.finished for r in responses if r.app == d.old and d.t0 <= r.finished < until]
        d.last_old = max(olds) if olds else None
        next_wall = records[i + 1].t0_wall_ns if i + 1 < len(records) else None
        rel = [
            e["_ts_ns"]
            for e in reloaded
            if e["_ts_ns"] >= d.t0_wall_ns and (next_wall is None or e["_ts_ns"] < next_wall)
        ]
        d.reloaded_ms = (min(rel) - d.t0_wall_ns) / 1e6 if rel else None

    def in_deploy(t: float) -> bool:
        return any(d.t0 <= t <= d.window_end for d in records)

    def in_steady(t: float) -> bool:
        return any(d.steady_start <= t <= d.steady_end for d in records)

    lat = [(r.started, (r.finished - r.started) * 1000) for r in responses]
    during = [ms for t, ms in lat if in_deploy(t)]
    steady = [ms for t, ms in lat if in_steady(t)]
    during_s, steady_s = summarize(during), summarize(steady)
    interval_ms = CLIENT_PAUSE_S * 1000 + steady_s.p50
    during_co, steady_co = summarize(_co_corrected(during, interval_ms)), summarize(_co_corrected(steady, interval_ms))
    finished = [r.finished for r in responses]
    gaps_deploy = [_longest_gap_ms(finished, d.t0, d.window_end) for d in records]
    gaps_steady = [_longest_gap_ms(finished, d.steady_start, d.steady_end) for d in records]
    deploy_time = sum(d.window_end - d.t0 for d in records)
    steady_time = sum(d.steady_end - d.steady_start for d in records)
    marker_to_new = [(d.first_new - d.t0) * 1000 for d in records]
    late = [i + 1 for i, ms in enumerate(marker_to_new) if ms > SLOW_S * 1000]
    overlap = [((d.last_old - d.first_new) * 1000 if d.last_old is not None else math.nan) for d in records]
    old_after_new = sum(
        1
        for d in records
        for r in responses
        if r.app == d.old and d.first_new < r.finished and (d.t0 <= r.finished <= d.window_end)
    )
    mixed = [r for r in responses if r.app != r.late]
    fail_during = [f for f in failures if in_deploy(f.started)]
    fail_steady = [f for f in failures if in_steady(f.started)]
    reloads = sum(1 for e in events if e.get("event") == RELOAD_EVENT)
    warnings = [
        str(e.get("event"))
        for e in events
        if e.get("level") in ("warning", "error", "critical") or e.get("event") == "deploy_failed"
    ]
    return {
        "key": s.key,
        "title": s.title,
        "server": s.server,
        "options": s.options,
        "deploys": len(records),
        "late_deploys": late,  # deploy numbers (from 1) whose new version was served only after SLOW_S
        "marker_to_new_ms": summarize(marker_to_new).to_dict(),
        "marker_to_reloaded_ms": summarize([d.reloaded_ms for d in records if d.reloaded_ms is not None]).to_dict(),
        "reloaded_to_new_ms": summarize(
            [m - d.reloaded_ms for m, d in zip(marker_to_new, records, strict=True) if d.reloaded_ms is not None]
        ).to_dict(),
        "latency_steady_ms": steady_s.to_dict(),
        "latency_deploys_ms": during_s.to_dict(),
        "ratio": {
            "p50": _ratio(during_s.p50, steady_s.p50),
            "p99": _ratio(during_s.p99, steady_s.p99),
            "max": _ratio(during_s.max, steady_s.max),
        },
        "co_interval_ms": interval_ms,
        "latency_steady_co_ms": steady_co.to_dict(),
        "latency_deploys_co_ms": during_co.to_dict(),
        "ratio_co": {
            "p50": _ratio(during_co.p50, steady_co.p50),
            "p99": _ratio(during_co.p99, steady_co.p99),
            "max": _ratio(during_co.max, steady_co.max),
        },
        "gap_ms": {"deploys": summarize(gaps_deploy).to_dict(), "steady": summarize(gaps_steady).to_dict()},
        "window_s": {"deploys": deploy_time, "steady": steady_time},
        "rate_rps": {"deploys": len(during) / deploy_time, "steady": len(steady) / steady_time},
        "requests": len(responses) + len(failures),
        "requests_deploys": len(during) + len(fail_during),
        "requests_steady": len(steady) + len(fail_steady),
        "failures": len(failures),
        "failures_deploys": len(fail_during),
        "failures_steady": len(fail_steady),
        "failure_samples": [f"{f.error}" for f in failures[:5]],
        "mixed": len(mixed),
        "mixed_samples": [f"app={r.app} late={r.late} pid={r.pid}" for r in mixed[:5]],
        "old_after_new": old_after_new,
        "overlap_ms": summarize([v for v in overlap if math.isfinite(v)]).to_dict(),
        "worker_pids": len({r.pid for r in responses}),
        "reloads": reloads,
        "reloads_at_start": start_reloads,
        "daemon_warnings": warnings,
        "server_log": {
            "chain_already_running": server_log.count("chain reload already running"),
            "done_lines": server_log.count(s.done_line) if s.done_line else None,
        },
        "samples": {
            "marker_to_new_ms": marker_to_new,
            "marker_to_reloaded_ms": [d.reloaded_ms for d in records],
            "overlap_ms": overlap,
            "gap_deploy_ms": gaps_deploy,
            "gap_steady_ms": gaps_steady,
            "window_s": [d.window_end - d.t0 for d in records],
            "tag": [d.tag for d in records],
        },
    }


# ---------------------------------------------------------------------------------------------- all


def _dirty() -> list[str]:
    """Paths under coordinator/ with uncommitted changes (``git status --porcelain``: 2 status letters,
    a space, the path)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "coordinator"], cwd=PROJECT, capture_output=True, timeout=30
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.splitlines() if len(line) > 3]


def _versions() -> dict[str, str]:
    out = {"uwsgi": cmd_out([str(BIN / "uwsgi"), "--version"])}
    try:
        out["gunicorn"] = importlib.metadata.version("gunicorn")
    except importlib.metadata.PackageNotFoundError:
        out["gunicorn"] = "?"
    return out


def _slow_app_repo(path: Path, delay_s: float) -> GitRepo:
    """The e2e test app (its ``wsgi.py``) with tags v1 and v2 whose eagerly imported module sleeps ``delay_s``
    at import: an app that takes as long to load as a real one."""
    repo = GitRepo(path)
    for tag in TAGS:
        files = {
            "wsgi.py": WSGI.format(health_fails=False),
            "eager.py": f"import time\n\ntime.sleep({delay_s!r})\nVERSION = {tag!r}\n",
            "late.py": f"VERSION = {tag!r}\n",
        }
        repo.commit(files, tag=tag, message=f"version {tag}, import takes {delay_s:g} s")
    return repo


def measure(
    deploys: int,
    work: Path,
    seed: int = 20240101,
    only: Sequence[str] | None = None,
    import_delay_s: float = 0.0,
) -> dict[str, Any]:
    """Run every strategy (or those in ``only``) in ``work``; the JSON-safe results. ``import_delay_s`` > 0
    makes each load of the app take that much longer (the e2e app itself loads in milliseconds)."""
    started = time.time()
    loadavg_start = loadavg()
    chosen = [s for s in STRATEGIES if only is None or s.key in only]
    progress(f"strategies: building the test app repository in {work}")
    if import_delay_s > 0:
        repo = _slow_app_repo(work / "app-repo", import_delay_s)
    else:
        repo = make_app_repo(work / "app-repo", len(TAGS))
    rows: list[dict[str, Any]] = []
    for i, s in enumerate(chosen):
        progress(f"strategy {s.key}: {deploys} deploys under load")
        row = run_strategy(s, repo.path, work, deploys, seed + i)
        m = row["marker_to_new_ms"]
        progress(
            f"strategy {s.key}: marker->new p50 {m['p50']:.0f} ms max {m['max']:.0f} ms; "
            f"p99 {row['latency_steady_ms']['p99']:.1f} -> {row['latency_deploys_ms']['p99']:.1f} ms; "
            f"failed {row['failures']} mixed {row['mixed']} late {len(row['late_deploys'])}"
        )
        rows.append(row)
    results: dict[str, Any] = {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "config": {
            "deploys": deploys,
            "seed": seed,
            "clients": CLIENTS,
            "client_pause_s": CLIENT_PAUSE_S,
            "window_tail_s": WINDOW_TAIL_S,
            "settle_s": SETTLE_S,
            "jitter_s": JITTER_S,
            "touch_jitter_s": TOUCH_JITTER_S,
            "recent_s": RECENT_S,
            "tags": list(TAGS),
            "import_delay_s": import_delay_s,
        },
        "versions": _versions(),
        "strategies": rows,
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg(),
    }
    out: dict[str, Any] = json_safe(results)
    return out


# ---------------------------------------------------------------------------------------------- report


def _ok(v: Any) -> str:
    return str(v) if v == 0 else f"**{v}**"


def _cells(s: dict[str, Any], cols: Sequence[str] = ("p50", "p90", "p99", "max")) -> list[str]:
    return [_f(s.get(c)) if c else "-" for c in cols]


def render_section(r: dict[str, Any], level: int = 2) -> str:
    """The Markdown section (heading level ``level``) for the results of :func:`measure`."""
    h, hh = "#" * level, "#" * (level + 1)
    cfg = r["config"]
    rows = r["strategies"]
    out = [
        f"{h} Reload strategies under load: {cfg['deploys']} deploys each",
        "",
        f"`python -m benchmarks strategies`. Real servers on 127.0.0.1 (uWSGI {r['versions']['uwsgi']}, gunicorn "
        f"{r['versions']['gunicorn']}), the real daemon (`python -m coordinator run` with the strategy's reload "
        "options), the e2e test app (`tests/e2e/app.py`, loaded through `coordinator.pin`) and the e2e load "
        f"generator: {cfg['clients']} client threads, a new connection per request, "
        f"{cfg['client_pause_s'] * 1000:.0f} ms between a client's requests, running through every deploy. "
        "Deploys alternate v2/v1, both releases already on disk; before each marker a random pause (seeded; "
        f"0..{cfg['touch_jitter_s']:g} s for touch, so that markers land at random phases of uWSGI's "
        f"once-a-second check, 0..{cfg['jitter_s']:g} s for the others); the next deploy waits until the "
        "status is `idle`, every "
        f"response of the last {cfg['recent_s'] * 1000:.0f} ms names the new version (and, for the chain reload, "
        "uWSGI logged `chain reloading complete`). Total run time "
        f"{_f(r['duration_s'], 0)} s; load average {r['loadavg_start']} at its start, {r['loadavg_end']} at its end.",
        "",
        "*marker -> new version*: marker written (just before its rename) -> the first response whose body names "
        "the new version (its finish time). *During deploys*: requests that started from the marker to the new "
        f"version first served + {cfg['window_tail_s']:g} s. *Steady*: after each deploy has settled "
        f"(+{cfg['settle_s']:g} s), a window of the same length with no deploy, in the same run under the same "
        "load. *Ratio*: during / steady. *CO-corrected*: the load generator is closed-loop, so a server that "
        "stalls delays only the few requests in flight (coordinated omission); the corrected figures add the "
        "requests each client would have sent meanwhile (HdrHistogram's expected-interval correction, interval "
        "= client pause + steady p50). *Stall*: the longest time in a window in which no response finished. "
        "*Mixed*: responses whose eagerly and lazily imported modules name different versions. *Overlap*: "
        "first new-version response -> last old-version response after the marker (negative: the old version "
        "was gone before the new one answered).",
        "",
        f"{hh} Summary",
        "",
    ]
    summary: list[list[str]] = []
    for s in rows:
        m = s["marker_to_new_ms"]
        summary.append(
            [
                s["title"],
                _f(m["p50"], 0),
                _f(m["p90"], 0),
                _f(m["max"], 0),
                _f(s["ratio"]["p50"]),
                _f(s["ratio"]["p99"]),
                _f(s["ratio"]["max"]),
                _f(s["ratio_co"]["p99"]),
                _f(s["gap_ms"]["deploys"]["max"], 0) + " / " + _f(s["gap_ms"]["steady"]["max"], 0),
                str(s["requests"]),
                _ok(s["failures"]),
                _ok(s["mixed"]),
                _ok(len(s.get("late_deploys", []))),
                _f(s["overlap_ms"]["max"], 0),
            ]
        )
    out += _table(
        [
            "strategy",
            "marker->new version p50 ms",
            "p90",
            "max",
            "latency ratio p50",
            "p99",
            "max",
            "p99 ratio CO-corrected",
            "longest stall ms deploys / steady",
            "requests",
            "failed",
            "mixed",
            f"late (> {SLOW_S:g} s)",
            "overlap max ms",
        ],
        summary,
    )
    out += _reading(rows)
    t = reload_target(r)
    verdict = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
    out += [f"Target: {t['target']}: {verdict}: {t['figure']}." + (f" ({t['why']})" if t.get("why") else ""), ""]
    out += [f"- {n}" for n in _notes(r)] + [""]
    for s in rows:
        st, dp, ratio = s["latency_steady_ms"], s["latency_deploys_ms"], s["ratio"]
        stc, dpc, rco = s["latency_steady_co_ms"], s["latency_deploys_co_ms"], s["ratio_co"]
        gap = s["gap_ms"]
        out += [f"{hh} {s['title']}", "", f"{s['server']}; coordinator {s['options']}.", ""]
        table = [
            ["**marker -> new version served**", *_cells(s["marker_to_new_ms"]), str(s["marker_to_new_ms"]["n"])],
            ["marker -> daemon's `reload` phase event (log)", *_cells(s["marker_to_reloaded_ms"]), ""],
            ["`reload` event -> new version served", *_cells(s["reloaded_to_new_ms"]), ""],
            ["request latency, steady", *_cells(st), str(st["n"])],
            ["request latency, during deploys", *_cells(dp), str(dp["n"])],
            ["**ratio during / steady**", *_cells(ratio, ("p50", "", "p99", "max")), ""],
            ["request latency, steady, CO-corrected", *_cells(stc), str(stc["n"])],
            ["request latency, during deploys, CO-corrected", *_cells(dpc), str(dpc["n"])],
            ["ratio during / steady, CO-corrected", *_cells(rco, ("p50", "", "p99", "max")), ""],
            ["longest stall per window, steady", *_cells(gap["steady"]), str(gap["steady"]["n"])],
            ["longest stall per window, during deploys", *_cells(gap["deploys"]), str(gap["deploys"]["n"])],
        ]
        out += _table(["ms", "p50", "p90", "p99", "max", "n"], table)
        ov = s["overlap_ms"]
        rate = s["rate_rps"]
        srv = s["server_log"]
        chain = (
            f" uWSGI logged `{STRATEGIES_BY_KEY[s['key']].done_line}` {srv['done_lines']} times and "
            f"`chain reload already running` {srv['chain_already_running']} times."
            if srv["done_lines"] is not None
            else ""
        )
        out += [
            f"Requests {s['requests']} ({s['requests_deploys']} during deploys in {_f(s['window_s']['deploys'], 1)} s, "
            f"{_f(rate['deploys'], 0)} req/s; {s['requests_steady']} steady in {_f(s['window_s']['steady'], 1)} s, "
            f"{_f(rate['steady'], 0)} req/s); failed {_ok(s['failures'])} ({s['failures_deploys']} during deploys, "
            f"{s['failures_steady']} steady); mixed {_ok(s['mixed'])}; {s['old_after_new']} old-version responses "
            f"after the first new-version one; overlap p50 {_f(ov['p50'], 0)} ms, max {_f(ov['max'], 0)} ms; "
            f"{s['worker_pids']} worker pids seen; {s['reloads']} reloads by the daemon "
            f"({s['reloads_at_start']} at its start).{chain}"
            + (
                f" **Late deploys** (new version served only after {SLOW_S:g} s): "
                f"{len(s['late_deploys'])}, numbers {s['late_deploys']}."
                if s.get("late_deploys")
                else ""
            )
            + (f" Daemon warnings: {', '.join(s['daemon_warnings'])}." if s["daemon_warnings"] else "")
            + (f" Failures: {s['failure_samples']}." if s["failure_samples"] else "")
            + (f" Mixed: {s['mixed_samples']}." if s["mixed_samples"] else ""),
            "",
        ]
    return "\n".join(out)


def _reading(rows: list[dict[str, Any]]) -> list[str]:
    clean = [s for s in rows if s["failures"] == 0 and s["mixed"] == 0 and not s.get("late_deploys")]
    if not clean:
        return ["No strategy served every request without a failure, a mixed response or a late deploy.", ""]
    fastest = min(clean, key=lambda s: s["marker_to_new_ms"]["p50"])
    gentlest = min(clean, key=lambda s: s["ratio"]["p99"])
    gentlest_co = min(clean, key=lambda s: s["ratio_co"]["p99"])
    dirty = [s["title"] for s in rows if s not in clean]
    return [
        f"With 0 failed, 0 mixed and no late deploy: {', '.join(s['title'] for s in clean)}"
        + (f" (not: {', '.join(dirty)})" if dirty else "")
        + f". Fastest to serve the new version: {fastest['title']} "
        f"(p50 {_f(fastest['marker_to_new_ms']['p50'], 0)} ms). Smallest p99 latency ratio during deploys: "
        f"{gentlest['title']} ({_f(gentlest['ratio']['p99'])} x); CO-corrected: {gentlest_co['title']} "
        f"({_f(gentlest_co['ratio_co']['p99'])} x).",
        "",
    ]


def _notes(r: dict[str, Any]) -> list[str]:
    rows = r["strategies"]
    delay = r["config"].get("import_delay_s") or 0.0
    load = (
        "The e2e app loads in milliseconds."
        if delay == 0
        else f"Each load of the app took {delay:g} s longer than the e2e app's (`--import-delay {delay:g}`)."
    )
    notes = [
        f"{load} gunicorn's HUP stops the old workers as soon as the new ones are forked (`Arbiter.reload`), and "
        "a uWSGI full reload (touch, FIFO `r`) loads the app again in the master before it forks workers, so "
        "with a slower app both serve nothing for about the app's load time longer; the chain reload replaces "
        "a worker only once its successor is ready. `python -m benchmarks strategies --import-delay 1` measures it.",
    ]
    stalled = [s["title"] for s in rows if (s["gap_ms"]["deploys"]["max"] or 0) > 200]
    if stalled:
        notes.append(
            "A closed-loop client waits out a stall with a single request, so a stall delays only the "
            f"{r['config']['clients']} requests in flight per deploy, about 1 % of a window's requests: the raw "
            "p99 lands on either side of them depending on the window's length. For the strategies that stall ("
            + ", ".join(stalled)
            + ") read the CO-corrected ratio and the longest stall."
        )
    return notes


STRATEGIES_BY_KEY = {s.key: s for s in STRATEGIES}


def render_standalone(r: dict[str, Any], machine: dict[str, Any]) -> str:
    head = [
        f"# coordinator benchmark, {r['date']}: reload strategies",
        "",
        f"- {machine['nproc']} CPUs (`nproc`), {machine['cpu_model']}; Linux {machine['kernel']}; "
        f"Python {machine['python']}; coordinator at {machine['coordinator_rev']}"
        + (
            f" plus uncommitted changes in {', '.join(machine['coordinator_dirty'])}"
            if machine["coordinator_dirty"]
            else ""
        ),
        f"- load average at start {machine['loadavg_start']}, at end {r['loadavg_end']}; "
        f"total run time {_f(r['duration_s'], 0)} s",
        "",
    ]
    return "\n".join(head) + "\n" + render_section(r)


# ---------------------------------------------------------------------------------------------- main


def run_for_report(quick: bool, tmp_dir: Path | None = None, keep_tmp: bool = False) -> dict[str, Any]:
    """What ``benchmarks.run`` calls: measure in a fresh work directory, always clean up the processes."""
    work = Path(tempfile.mkdtemp(prefix="coordinator-bench-strategies-", dir=tmp_dir))
    try:
        return measure(2 if quick else DEFAULT_DEPLOYS, work)
    except Exception:
        keep_tmp = True
        print(f"strategies benchmark failed; logs kept in {work}", file=sys.stderr)
        raise
    finally:
        stop_all()
        if not keep_tmp:
            shutil.rmtree(work, ignore_errors=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks strategies", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--deploys", type=int, default=DEFAULT_DEPLOYS, help=f"deploys per strategy (default {DEFAULT_DEPLOYS})"
    )
    p.add_argument(
        "--only", default=None, help=f"comma-separated strategies (default all: {','.join(STRATEGIES_BY_KEY)})"
    )
    p.add_argument(
        "--import-delay",
        type=float,
        default=0.0,
        help="seconds each load of the app sleeps (default 0: the e2e app, which loads in milliseconds)",
    )
    add_common_args(p, keep_what="volumes, server and daemon logs", quick_what="a smoke run: 2 deploys per strategy")
    args = p.parse_args(argv)
    finish_common_args(args, HERE / "results")
    if args.quick:
        args.deploys = 2
    if args.deploys < 1:
        p.error("--deploys must be at least 1")
    if args.only is not None:
        args.only = [k.strip() for k in str(args.only).split(",") if k.strip()]
        unknown = [k for k in args.only if k not in STRATEGIES_BY_KEY]
        if unknown or not args.only:
            p.error(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES_BY_KEY)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    work = begin("coordinator-bench-strategies-", args.tmp_dir, stop_all)
    if work is None:
        return 2
    machine = machine_info()
    try:
        results = measure(args.deploys, work, args.seed, args.only, args.import_delay)
    except KeyboardInterrupt:
        print(f"interrupted; work directory {work}", file=sys.stderr)
        return 130
    except Exception:
        args.keep_tmp = True
        print(f"benchmark failed; server and daemon logs kept in {work}", file=sys.stderr)
        raise
    finally:
        stop_all()
        if not args.keep_tmp:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"] = json_safe(machine)
    report = render_standalone(results, machine)
    if args.write:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        suffix = f"-import{args.import_delay:g}s" if args.import_delay > 0 else ""
        base = args.results_dir / f"{results['date']}-strategies{suffix}"
        base.parent.joinpath(base.name + ".json").write_text(dumps(results) + "\n")
        base.parent.joinpath(base.name + ".md").write_text(report)
        progress(f"wrote {base}.json and {base}.md")
    sys.stdout.write(report)
    sys.stdout.flush()
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
