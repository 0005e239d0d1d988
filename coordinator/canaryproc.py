"""The canary's processes (see :mod:`coordinator.canary`): finding them, stopping them, and stopping
those a crash left running.

Which processes are the canary's: the members of its process group, and every process whose
environment (``/proc/PID/environ``, as it was at ``exec``) holds its token. The token also reaches a
process that left the group (``setsid``, a daemon's double fork), so that one is stopped too; only a
process that leaves the group *and* drops its environment escapes (a cgroup, e.g. systemd's
``KillMode=control-group`` or a container, is then the only reliable boundary). The token is recorded
with the process group in ``.coordinator/canary.json`` (:class:`~coordinator.statefile.CanaryRecord`)
while the canary runs: a daemon restarted after a crash kills the processes holding it
(:func:`stop_leftover`). A pid or process group id is never trusted alone: it may have been reused, or
be another host's (the volume is shared).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import anyio
import structlog

from coordinator.state import read_json
from coordinator.statefile import CanaryRecord

__all__ = ["CANARY_ENV", "canary_pids", "record_path", "stop_leftover", "stop_processes"]

log = structlog.get_logger("coordinator")

#: the environment variable holding the canary's token (how its processes are told from others)
CANARY_ENV = "COORDINATOR_CANARY"


def record_path(state_dir: Path) -> Path:
    """Where the running canary is recorded."""
    return state_dir / "canary.json"


def _stat(pid: str) -> tuple[int, str] | None:
    """(process group, state letter) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[2]), fields[0].decode()


def _has_token(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:  # gone, or not ours (another user's process cannot be the canary's)
        return False


def canary_pids(token: str, pgid: int | None = None) -> list[int]:
    """Live (not zombie) processes of the canary: in process group ``pgid``, or holding ``token`` in
    their environment (blocking: scans ``/proc``)."""
    marker = f"{CANARY_ENV}={token}".encode()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        st = _stat(pid)
        if st is None or st[1] in ("Z", "X"):
            continue
        if (pgid is not None and st[0] == pgid) or _has_token(pid, marker):
            out.append(int(pid))
    return sorted(out)


def _signal_all(pgid: int | None, pids: Iterable[int], sig: signal.Signals) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def _until_gone(token: str, pgid: int | None, limit_s: float) -> list[int]:
    """Poll until no process of the canary is left or ``limit_s`` ran out; those left."""
    deadline = time.monotonic() + limit_s
    while True:
        left = await anyio.to_thread.run_sync(canary_pids, token, pgid)
        if not left or time.monotonic() >= deadline:
            return left
        await anyio.sleep(0.05)


async def stop_processes(token: str, pgid: int | None, grace: float) -> list[int]:
    """SIGTERM every process of the canary, SIGKILL those left after ``grace`` seconds; returns the
    pids that still ran after the grace (killed). Shielded: runs to the end when cancelled."""
    with anyio.CancelScope(shield=True):
        pids = await anyio.to_thread.run_sync(canary_pids, token, pgid)
        stubborn: list[int] = []
        if pids:
            _signal_all(pgid, pids, signal.SIGTERM)
            stubborn = await _until_gone(token, pgid, grace)
        if stubborn:
            _signal_all(pgid, stubborn, signal.SIGKILL)
            left = await _until_gone(token, pgid, 2.0)
            if left:
                log.error("canary_not_stopped", pids=left)
    return stubborn


async def stop_leftover(path: Path) -> list[int]:
    """At start-up: a canary recorded in ``path`` was left running by a daemon that died (a crash, a
    kill -9): kill its processes (those holding its token: see the module docstring) and forget it."""
    record = CanaryRecord.from_json(await anyio.to_thread.run_sync(read_json, path))
    if record is None:
        await anyio.Path(path).unlink(missing_ok=True)
        return []
    pids = await anyio.to_thread.run_sync(canary_pids, record.token, None)
    if pids:
        _signal_all(None, pids, signal.SIGKILL)
        await _until_gone(record.token, None, 2.0)
        log.warning("canary_leftover_killed", pids=pids, release=record.release, pgid=record.pgid)
    await anyio.Path(path).unlink(missing_ok=True)
    return pids
