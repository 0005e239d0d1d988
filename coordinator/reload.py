"""Telling the app server to load the new release.

A reload strategy has three parts: ``token`` picks an identifier for the next reload (recorded in
the state file *before* the reload, so a restart can tell whether a crash happened before or after
it), ``reload`` performs it, and ``already_done`` tells, where the strategy can, whether the reload
with that token already happened (so it is not repeated after a crash).

The touch strategy (default, uWSGI ``--touch-reload``): uWSGI checks the file about once a second
and compares whole-second ``st_mtime`` with "greater than", so two touches within one second reload
once. Each reload therefore sets the mtime explicitly to a whole second strictly greater than the
previous one (and not earlier than now). Deploys faster than one a second therefore push the mtime
ahead of the clock by about a second per deploy (a benchmark of 500 deploys in two minutes left it
380 s ahead); it falls back in step with the clock once deploys are slower than that. The file is
created if missing; its directory must exist. A reload file that is a symlink is refused (writing
through it could touch a file outside the volume).
"""

from __future__ import annotations

import errno
import math
import os
import time
from pathlib import Path
from typing import Protocol

import anyio

from coordinator.exceptions import ReloadError

__all__ = ["Reloader", "TouchReloader"]


class Reloader(Protocol):
    name: str

    def token(self, last: int | None) -> int | None: ...

    async def reload(self, token: int | None) -> None: ...

    async def already_done(self, token: int | None) -> bool: ...


class TouchReloader:
    """Touch a file with a strictly increasing whole-second mtime (uWSGI ``--touch-reload``)."""

    name = "touch"

    def __init__(self, path: Path) -> None:
        self.path = path

    def _file_mtime(self) -> int | None:
        try:
            return math.floor(os.lstat(self.path).st_mtime)
        except OSError:
            return None

    def token(self, last: int | None) -> int:
        candidates = [math.floor(time.time())]
        for seen in (last, self._file_mtime()):
            if seen is not None:
                candidates.append(seen + 1)
        return max(candidates)

    def _touch(self, token: int) -> None:
        if not self.path.parent.is_dir():
            raise ReloadError(
                f"the reload file's directory {self.path.parent} does not exist",
                fix="create it, or point --reload-file at a file in an existing directory",
                path=str(self.path),
            )
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as e:
            why = "it is a symlink" if e.errno == errno.ELOOP else e.strerror
            raise ReloadError(
                f"cannot open the reload file {self.path}: {why}",
                fix="make the reload file a regular file that coordinator can write",
                path=str(self.path),
            ) from e
        try:
            ns = token * 1_000_000_000
            os.utime(fd, ns=(ns, ns))
        except OSError as e:
            raise ReloadError(f"cannot touch the reload file {self.path}: {e.strerror}", path=str(self.path)) from e
        finally:
            os.close(fd)

    async def reload(self, token: int | None) -> None:
        await anyio.to_thread.run_sync(self._touch, token if token is not None else self.token(None))

    async def already_done(self, token: int | None) -> bool:
        if token is None:
            return False
        return await anyio.to_thread.run_sync(self._file_mtime) == token
