"""One coordinator per ROOT: an exclusive ``flock`` on ``ROOT/.coordinator/lock``.

The kernel drops a ``flock`` when its holder dies, even by ``kill -9``, so a stale lock file never
blocks a restart: the next coordinator simply takes the lock. The holder's pid is written into the
file only so that the refusal message can name it.

Clients (``coordinator status``, ``deploy --wait``) ask :func:`lock_holder` whether a coordinator
runs: it tries a *shared* lock without waiting and drops it at once, so it never takes the lock
from a daemon. A daemon starting during that instant sees only shared holders and retries for up
to :data:`PROBE_GRACE` seconds instead of refusing to start.

:func:`hold_lock` blocks (it opens and writes the lock file); the daemon takes the lock with
:func:`holding_lock`, which does the same in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio

from coordinator.exceptions import LayoutError, LockHeldError

__all__ = ["PROBE_GRACE", "hold_lock", "holding_lock", "lock_holder"]

#: how long a starting daemon retries while only clients probing liveness hold the lock (shared)
PROBE_GRACE = 2.0


@contextlib.contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold the ROOT lock for the duration of the block, or raise LockHeldError at once (blocking)."""
    fd = _acquire(path)
    try:
        yield
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def holding_lock(path: Path) -> AsyncIterator[None]:
    """:func:`hold_lock` for the event loop: the lock file is opened, locked and closed in a worker thread."""
    fd = await anyio.to_thread.run_sync(_acquire, path)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(os.close, fd)


def _acquire(path: Path) -> int:
    """Open and lock ``path``, write our pid into it; the open descriptor holds the lock."""
    try:
        # the state directory itself must not be a symlink either: the lock would be created outside ROOT
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LayoutError(
                f"{path.parent} is not a directory (a symlink or file was planted there)",
                fix=f"remove {path.parent}; coordinator recreates it",
            ) from e
        raise LayoutError(f"cannot open {path.parent}: {e.strerror}", fix="check ROOT is writable") from e
    try:
        fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LayoutError(f"lock file {path} is a symlink", fix="remove it; coordinator recreates it") from e
        raise LayoutError(
            f"cannot open lock file {path}: {e.strerror}",
            fix=f"make ROOT and {path.parent} writable by the user coordinator runs as (uid {os.geteuid()})",
        ) from e
    finally:
        os.close(dir_fd)
    try:
        try:
            _lock_exclusive(fd)
        except BlockingIOError as e:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise LockHeldError(
                f"another coordinator (pid {holder}) is already running on {path.parent.parent}",
                fix="stop it first, or use a different --root",
                pid=holder,
            ) from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_exclusive(fd: int) -> None:
    """``LOCK_EX`` without waiting for another daemon; raises BlockingIOError when one holds the lock.
    While the lock is only held shared (a client probing liveness, for microseconds), retry."""
    deadline = time.monotonic() + PROBE_GRACE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            try:  # a shared lock is granted only when no daemon holds it exclusively
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise
            fcntl.flock(fd, fcntl.LOCK_UN)
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def lock_holder(path: Path) -> tuple[bool, str | None]:
    """Whether a coordinator holds the lock at ``path`` (and the pid it wrote there), tested without
    taking it from anyone: a shared lock tried without waiting and dropped at once. A lock file
    that does not exist or cannot be opened means no coordinator holds it. Blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return True, pid or None
        except OSError:  # a file system without flock
            return False, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)
