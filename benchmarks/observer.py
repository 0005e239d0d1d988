"""Watching the daemon's effects from outside, without inotify: a thread that polls in a tight loop.

While armed for one deploy it repeatedly reads ``os.readlink(ROOT/current)``, ``lstat`` of the reload
file (its ``st_ctime`` changes on every ``utime``, whatever mtime is written) and ``stat`` of the
status file (replaced by rename, so a new inode means a new status), and records the wall clock
(``time.time_ns``) right after the first read that shows each change. Between reads it calls
``sched_yield`` so that, on a small machine, the daemon is not starved by the observer.

While not armed the thread blocks on an event and costs nothing, so idle CPU readings of the
daemon are not disturbed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Observation", "Observer"]


@dataclass(slots=True)
class Observation:
    """What the observer saw for one deploy (all times are epoch ns, ``time.time_ns``)."""

    baseline_ns: int
    swap_seen_ns: int | None = None
    touch_seen_ns: int | None = None
    touch_ctime_ns: int | None = None  # the reload file's ctime after the touch: when the kernel did it
    status_seen_ns: int | None = None  # status file shows idle with the requested release
    status_changes: list[tuple[int, str]] = field(default_factory=list)  # (seen at, state) of each new status
    iterations: int = 0
    ended_ns: int = 0
    timed_out: bool = False

    @property
    def complete(self) -> bool:
        return None not in (self.swap_seen_ns, self.touch_seen_ns, self.status_seen_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_ns": self.baseline_ns,
            "swap_seen_ns": self.swap_seen_ns,
            "touch_seen_ns": self.touch_seen_ns,
            "touch_ctime_ns": self.touch_ctime_ns,
            "status_seen_ns": self.status_seen_ns,
            "status_changes": [list(c) for c in self.status_changes],
            "iterations": self.iterations,
            "ended_ns": self.ended_ns,
            "timed_out": self.timed_out,
        }


@dataclass(frozen=True, slots=True)
class _Target:
    link: str  # expected readlink(current), e.g. "releases/v2-0123456789ab"
    release: str
    request_id: str
    deadline: float  # time.monotonic()


def _ctime(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ctime_ns
    except OSError:
        return None


def _status_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


class Observer:
    """A polling thread; :meth:`arm` before writing the marker, :meth:`wait` after."""

    def __init__(self, root: Path, *, yield_cpu: bool = True, sleep_s: float = 0.0) -> None:
        self.current = root / "current"
        self.reload_file = root / "reload.touch"
        self.status_file = root / "deploy.status.json"
        self.yield_cpu = yield_cpu
        self.sleep_s = sleep_s  # > 0: a lazy observer (for checking that polling does not disturb the daemon)
        self._cond = threading.Condition()
        self._target: _Target | None = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._result: Observation | None = None
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-observer", daemon=True)
        self._thread.start()

    def arm(self, link: str, release: str, request_id: str, timeout_s: float = 30.0) -> None:
        """Start polling for a deploy to ``link``; returns once the baselines were read."""
        if self._error is not None:
            raise RuntimeError("observer thread failed") from self._error
        self._ready.clear()
        self._done.clear()
        self._result = None
        with self._cond:
            self._target = _Target(link, release, request_id, time.monotonic() + timeout_s)
            self._cond.notify()
        if not self._ready.wait(10.0):
            raise RuntimeError("observer did not start polling")

    def wait(self, timeout_s: float = 60.0) -> Observation:
        if not self._done.wait(timeout_s):
            raise RuntimeError("observer did not finish")
        if self._error is not None:
            raise RuntimeError("observer thread failed") from self._error
        assert self._result is not None
        return self._result

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(10.0)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._target is None and not self._closing:
                        self._cond.wait()
                    if self._closing:
                        return
                    target = self._target
                    self._target = None
                assert target is not None
                self._result = self._poll(target)
                self._done.set()
        except BaseException as e:
            self._error = e
            self._ready.set()
            self._done.set()

    def _poll(self, t: _Target) -> Observation:
        current, reload_file, status_file = self.current, self.reload_file, self.status_file
        readlink, time_ns, monotonic, sched_yield = os.readlink, time.time_ns, time.monotonic, os.sched_yield
        # Baselines. Reading the reload file's ctime also makes the next ctime update fine-grained
        # on kernels with multigrain timestamps (6.13+): a ctime nobody has read since its last change
        # is taken from the coarse (per-tick) clock and can be milliseconds early.
        base_ctime = _ctime(reload_file)
        base_status = _status_key(status_file)
        obs = Observation(baseline_ns=time_ns())
        self._ready.set()
        swap_seen = touch_seen = status_seen = False
        n = 0
        while not (swap_seen and touch_seen and status_seen):
            n += 1
            if not swap_seen:
                try:
                    link = readlink(current)
                except OSError:
                    link = None
                if link == t.link:
                    obs.swap_seen_ns = time_ns()
                    swap_seen = True
            if not touch_seen:
                ctime = _ctime(reload_file)
                if ctime != base_ctime:
                    obs.touch_seen_ns = time_ns()
                    obs.touch_ctime_ns = ctime
                    touch_seen = True
            if not status_seen:
                key = _status_key(status_file)
                if key != base_status:
                    seen = time_ns()
                    base_status = key
                    st = _read_status(status_file)
                    state = str(st.get("state")) if st else "?"
                    obs.status_changes.append((seen, state))
                    if st is not None and _status_done(st, t):
                        obs.status_seen_ns = seen
                        status_seen = True
            if n % 64 == 0 and monotonic() > t.deadline:
                obs.timed_out = True
                break
            if self.sleep_s > 0:
                time.sleep(self.sleep_s)
            elif self.yield_cpu:
                sched_yield()
        obs.iterations = n
        obs.ended_ns = time_ns()
        return obs


def _status_done(st: dict[str, Any], t: _Target) -> bool:
    cur = st.get("current")
    desired = st.get("desired")
    return (
        st.get("state") == "idle"
        and isinstance(cur, dict)
        and cur.get("release") == t.release
        and isinstance(desired, dict)
        and desired.get("id") == t.request_id
    )
