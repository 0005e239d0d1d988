"""The real daemon as a subprocess, its JSON log read incrementally, and /proc readings of it.

Every daemon started here is registered and :func:`stop_all` stops whatever is still running; the
children also get ``PR_SET_PDEATHSIG`` so that they die with the benchmark even if it is killed
with SIGKILL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from coordinator.daemon import run_argv

__all__ = [
    "Daemon",
    "DaemonError",
    "Event",
    "LogTail",
    "ProcSample",
    "parse_ts_ns",
    "proc_sample",
    "stop_all",
    "write_marker",
]

Event = dict[str, Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_LIVE: list[Daemon] = []
_PR_SET_PDEATHSIG = 1


class DaemonError(RuntimeError):
    pass


def parse_ts_ns(text: str) -> int:
    """Epoch nanoseconds of an ISO 8601 timestamp as structlog writes it (microsecond precision)."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return ((dt - _EPOCH) // _US) * 1000


class LogTail:
    """Reads the complete JSON lines appended to a log file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.bad_lines = 0

    def read_new(self) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out: list[Event] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if not isinstance(obj, dict):
                self.bad_lines += 1
                continue
            ts = obj.get("timestamp")
            if isinstance(ts, str):
                try:
                    obj["_ts_ns"] = parse_ts_ns(ts)
                except ValueError:
                    self.bad_lines += 1
            out.append(obj)
        return out


def _pdeathsig() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl

    def set_pdeathsig() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return set_pdeathsig


def _daemon_env() -> dict[str, str]:
    """The benchmark's environment minus anything that would change the daemon's configuration,
    except ``COORDINATOR_TEST_WATCHER=watchfiles`` (measures the watchfiles back-end on Linux)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k == "COORDINATOR_TEST_WATCHER"
        or (not k.startswith(("COORDINATOR_", "WATCHFILES_")) and not k.startswith("GIT_"))
    }


class Daemon:
    """``python -m coordinator run`` on ``root``, logging JSON to ``log_path``."""

    def __init__(
        self,
        root: Path,
        repo: Path | str,
        log_path: Path,
        *,
        step_ms: int | None = None,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.log_path = log_path
        self.step_ms = step_ms
        self.log_level = log_level
        self.args = run_argv(root, repo, "--log-format", "json", "--log-level", log_level)
        if step_ms is not None:
            self.args += ["--watch-step-ms", str(step_ms)]
        self.args += list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail = LogTail(log_path)
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DaemonError("daemon not started")
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> list[Event]:
        """Start the daemon and wait for its ``started`` event; returns the events read so far."""
        if self.log_path.exists():
            raise DaemonError(f"{self.log_path} exists: each daemon gets a fresh log file")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_daemon_env(),
            cwd=str(Path(__file__).resolve().parent.parent),
            preexec_fn=_pdeathsig(),  # only from the main thread, with no observer thread running
        )
        _LIVE.append(self)
        seen: list[Event] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen += self.tail.read_new()
            if any(e.get("event") == "started" for e in seen):
                return seen
            if self.proc.poll() is not None:
                raise DaemonError(f"daemon exited with {self.proc.returncode} at start; see {self.log_path}")
            time.sleep(0.01)
        raise DaemonError(f"daemon did not log 'started' within {timeout:g} s; see {self.log_path}")

    def wait_event(self, pred: Callable[[Event], bool], timeout: float, into: list[Event]) -> Event:
        """Read events into ``into`` until one satisfies ``pred``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.tail.read_new():
                into.append(e)
                if pred(e):
                    return e
            if time.monotonic() >= deadline:
                raise DaemonError(f"expected log event not seen within {timeout:g} s; see {self.log_path}")
            if self.proc is not None and self.proc.poll() is not None:
                raise DaemonError(f"daemon exited with {self.proc.returncode}; see {self.log_path}")
            time.sleep(0.001)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed. Returns the exit code (None if never started)."""
        rc: int | None = None
        try:
            if self.proc is not None:
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGTERM)
                    try:
                        self.proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait(10)
                rc = self.proc.returncode
        finally:
            if self._log is not None and not self._log.closed:
                self._log.close()
            if self in _LIVE:
                _LIVE.remove(self)
        return rc


def stop_all() -> None:
    """Stop every daemon this process started that is still registered."""
    for d in list(_LIVE):
        try:
            d.stop(timeout=10.0)
        except Exception as e:  # keep stopping the others
            print(f"warning: could not stop daemon pid {d.proc.pid if d.proc else '?'}: {e}", file=sys.stderr)


def write_marker(root: Path, text: str) -> int:
    """Write ROOT/deploy.request atomically (temp file in ROOT, fsync, rename).

    Returns ``time.time_ns()`` taken just before the rename: the moment the request becomes visible.
    """
    tmp = root / ".deploy.request.bench-writing"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    t0 = time.time_ns()
    os.rename(tmp, root / "deploy.request")
    return t0


class ProcSample:
    """CPU time and memory of a process at one instant, from /proc."""

    def __init__(self, pid: int) -> None:
        self.wall_ns = time.monotonic_ns()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
        # the command name (field 2) may contain spaces: split after its closing parenthesis
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state); utime is field 14, stime field 15
        self.ticks = int(fields[11]) + int(fields[12])
        self.rss_kb = 0
        self.threads = 0
        with open(f"/proc/{pid}/status", "rb") as f:
            for raw in f:
                line = raw.decode()
                if line.startswith("VmRSS:"):
                    self.rss_kb = int(line.split()[1])
                elif line.startswith("Threads:"):
                    self.threads = int(line.split()[1])
        self.thread_ns: dict[str, int] = {}
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                        self.thread_ns[tid] = int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
        except OSError:
            pass


def proc_sample(pid: int) -> ProcSample:
    return ProcSample(pid)
