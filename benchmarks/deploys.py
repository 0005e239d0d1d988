"""One measured deploy: write the marker, watch the effects from outside, collect the daemon's log events.

Times are in milliseconds after ``t0``, the wall clock (``time.time_ns``) read just before the marker's
rename. Log timestamps come from the daemon's structlog ``TimeStamper`` (UTC, microseconds); both
clocks are the same ``CLOCK_REALTIME`` of this machine.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import Daemon, DaemonError, Event, write_marker
from benchmarks.observer import Observation, Observer

__all__ = ["LOG_PHASES", "DeployRecord", "Deployer", "MarkerWriter"]

#: writes the marker text and returns ``time.time_ns()`` taken just before it becomes visible
MarkerWriter = Callable[[str], int]
#: phase events whose ``duration_ms`` a record keeps (the daemon logs one event per step it runs)
_TIMED_EVENTS = ("fetch", "prepare", "build", "publish", "swap", "reload", "prune")

#: log-based phases of a deploy, in order: (key, label, what it spans)
LOG_PHASES: list[tuple[str, str, str]] = [
    ("detect", "detect", "marker rename -> `deploy_started` (watcher wake-up, marker and volume reads, plan)"),
    ("swap", "swap", "`deploy_started` -> `swap` event (temp symlink, rename over `current`, dir fsync)"),
    ("reload", "reload", "`swap` -> `reload` event (state save, touch, state save)"),
    ("prune", "prune", "`reload` -> `prune` event"),
    ("status", "status write", "`prune` -> `deploy_succeeded` (journal append, status `idle` write)"),
]


def _ms(ns: int | None, t0: int) -> float | None:
    return None if ns is None else (ns - t0) / 1e6


@dataclass(slots=True)
class DeployRecord:
    tag: str
    request_id: str
    t0_ns: int
    # outside view (observer)
    ext_swap: float | None
    ext_touch_ctime: float | None
    ext_touch_seen: float | None
    ext_status_idle: float | None
    ext_deploying: float | None
    observer_iterations: int
    observer_period_us: float
    ctime_ok: bool  # t0 <= ctime <= first seen
    # daemon log view
    log_started: float | None
    log_swap: float | None
    log_reloaded: float | None
    log_reload_end: float | None
    log_prune_end: float | None
    log_succeeded: float | None
    phase_ms: dict[str, float]  # duration_ms fields of the phase events (monotonic, inside the daemon)
    deploy_started_events: int
    prepare_stats: dict[str, Any] = field(default_factory=dict)  # the `prepare_stats` event, if any
    # debug-level `git` events that ended within the prepare phase: total duration_ms by git command
    prepare_git_ms: dict[str, float] = field(default_factory=dict)

    def phases(self) -> dict[str, float | None]:
        """Log-based phase spans (ms)."""

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        out: dict[str, float | None] = {
            "detect": self.log_started,
            "swap": span(self.log_started, self.log_swap),
            "reload": span(self.log_swap, self.log_reload_end),
            "prune": span(self.log_reload_end, self.log_prune_end),
            "status": span(self.log_prune_end, self.log_succeeded),
            "total": self.log_succeeded,
        }
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def _build_record(tag: str, rid: str, t0: int, obs: Observation, events: list[Event]) -> DeployRecord:
    def first(name: str, after: int = 0, **match: Any) -> Event | None:
        for e in events:
            if e.get("event") == name and e.get("_ts_ns", 0) >= after and all(e.get(k) == v for k, v in match.items()):
                return e
        return None

    def ts(e: Event | None) -> int | None:
        if e is None:
            return None
        v = e.get("_ts_ns")
        return v if isinstance(v, int) else None

    started = first("deploy_started", request_id=rid)
    started_ns = ts(started) or t0
    swap = first("swap", started_ns)
    reload_end = first("reload", started_ns)
    # `reloaded` (the reload recorded) is a debug event; at info the reload phase's end follows it
    reloaded = first("reloaded", started_ns) or reload_end
    prune_end = first("prune", started_ns)
    succeeded = first("deploy_succeeded", request_id=rid)
    phase_ms: dict[str, float] = {}
    for name in _TIMED_EVENTS:
        e = first(name, started_ns)
        if e is not None and isinstance(e.get("duration_ms"), int | float):
            phase_ms[name] = float(e["duration_ms"])
    pstats = first("prepare_stats", started_ns)  # a debug event: newtag runs its daemons at debug
    prepare_stats = {
        k: v
        for k, v in (pstats or {}).items()
        if k in ("mode", "linked", "written", "deleted", "rewritten", "fallback")
    }
    prepare_git_ms: dict[str, float] = {}
    prepare_end = ts(first("prepare", started_ns))
    if prepare_end is not None:
        lo = ts(first("fetch", started_ns)) or started_ns
        for e in events:
            at, ms = e.get("_ts_ns"), e.get("duration_ms")
            if e.get("event") == "git" and isinstance(at, int) and lo <= at <= prepare_end and isinstance(ms, float):
                cmd = str(e.get("cmd"))
                prepare_git_ms[cmd] = prepare_git_ms.get(cmd, 0.0) + ms
    deploying = next((ns for ns, state in obs.status_changes if state == "deploying"), None)
    period = (obs.ended_ns - obs.baseline_ns) / max(1, obs.iterations) / 1e3
    ctime_ok = (
        obs.touch_ctime_ns is not None
        and obs.touch_seen_ns is not None
        and t0 <= obs.touch_ctime_ns <= obs.touch_seen_ns
    )
    return DeployRecord(
        tag=tag,
        request_id=rid,
        t0_ns=t0,
        ext_swap=_ms(obs.swap_seen_ns, t0),
        ext_touch_ctime=_ms(obs.touch_ctime_ns, t0),
        ext_touch_seen=_ms(obs.touch_seen_ns, t0),
        ext_status_idle=_ms(obs.status_seen_ns, t0),
        ext_deploying=_ms(deploying, t0),
        observer_iterations=obs.iterations,
        observer_period_us=period,
        ctime_ok=ctime_ok,
        log_started=_ms(ts(started), t0),
        log_swap=_ms(ts(swap), t0),
        log_reloaded=_ms(ts(reloaded), t0),
        log_reload_end=_ms(ts(reload_end), t0),
        log_prune_end=_ms(ts(prune_end), t0),
        log_succeeded=_ms(ts(succeeded), t0),
        phase_ms=phase_ms,
        deploy_started_events=sum(1 for e in events if e.get("event") == "deploy_started"),
        prepare_stats=prepare_stats,
        prepare_git_ms=prepare_git_ms,
    )


class Deployer:
    """Drives deploys through one running daemon, one at a time."""

    def __init__(
        self,
        root: Path,
        daemon: Daemon,
        observer: Observer,
        releases: dict[str, str],
        seed: int,
        *,
        writer: MarkerWriter | None = None,
    ) -> None:
        self.root = root
        self.write: MarkerWriter = writer or (lambda text: write_marker(root, text))
        self.daemon = daemon
        self.observer = observer
        self.releases = releases  # tag -> release name
        self.rng = random.Random(seed)
        self.seq = 0
        self.anomalies: list[Event] = []  # warning/error events seen

    def _note(self, events: list[Event]) -> None:
        for e in events:
            if e.get("level") in ("warning", "error", "critical") or e.get("event") in (
                "deploy_superseded",
                "reconcile_crashed",
            ):
                self.anomalies.append(e)

    def deploy(self, tag: str, timeout_s: float = 30.0) -> DeployRecord:
        """Request ``tag``, wait until it is current, reloaded and the status says so; measure."""
        self.seq += 1
        rid = f"bench-{self.daemon.pid}-{self.seq:05d}"
        release = self.releases[tag]
        self._note(self.daemon.tail.read_new())  # drain what the previous deploy logged late
        self.observer.arm(f"releases/{release}", release, rid, timeout_s)
        t0 = self.write(json.dumps({"tag": tag, "id": rid}) + "\n")
        obs = self.observer.wait(timeout_s + 10)
        if obs.timed_out or not obs.complete:
            raise DaemonError(
                f"deploy {rid} of {tag} did not complete within {timeout_s:g} s "
                f"(swap seen: {obs.swap_seen_ns is not None}, touch seen: {obs.touch_seen_ns is not None}, "
                f"status changes: {[s for _, s in obs.status_changes]}); see {self.daemon.log_path}"
            )
        events: list[Event] = []
        self.daemon.wait_event(
            lambda e: e.get("event") == "deploy_succeeded" and e.get("request_id") == rid, 10.0, events
        )
        self._note(events)
        return _build_record(tag, rid, t0, obs, events)

    def wait_spare(self, timeout_s: float = 120.0) -> float | None:
        """When the last deploy's prune left a spare, wait until the daemon's idle pass readied it (or
        discarded it), as it would between deploys minutes apart; the readying's duration (ms)."""
        if not (self.root / ".coordinator" / "spare").exists():
            return None
        events: list[Event] = []
        try:
            e = self.daemon.wait_event(
                lambda e: e.get("event") in ("spare_ready", "spare_discarded"), timeout_s, events
            )
        except DaemonError:
            return None
        self._note(events)
        return float(e["duration_ms"]) if e.get("event") == "spare_ready" else None

    def pause(self, step_ms: int) -> None:
        """Let the daemon and its watcher settle, with jitter so markers land at random watcher phases."""
        time.sleep((3 * step_ms + self.rng.uniform(20.0, 70.0)) / 1000.0)

    def alternate(self, count: int, step_ms: int, first: str, other: str) -> list[DeployRecord]:
        out: list[DeployRecord] = []
        for i in range(count):
            self.pause(step_ms)
            out.append(self.deploy(first if i % 2 == 0 else other))
        return out
