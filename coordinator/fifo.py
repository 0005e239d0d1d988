"""uWSGI master FIFO reloads (``--reload-fifo``).

UWSGI's master creates the FIFO (mode 0600, so the
coordinator must run as the same user, or root), reads it one byte at a time, runs the command each
byte names, and unlinks and recreates the FIFO whenever the last writer closes it, and again when it
re-execs itself on a full reload. The writer opens it non-blocking, so a FIFO nobody reads gives
ENXIO at once ("no reader") instead of hanging; the short gap while uWSGI recreates it is bridged by
retrying for ``retry_for`` seconds (nothing was written in that case, so retrying cannot reload
twice). Only a FIFO is written to: a regular file, symlink or device planted at the path is refused.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import anyio

from coordinator.exceptions import ConfigError, ReloadError
from coordinator.fsutil import file_kind

__all__ = ["FIFO_RELOAD_COMMANDS", "FifoReloader"]


#: uWSGI master FIFO commands that reload (uWSGI core/fifo.c): graceful reload of master and workers,
#: brutal reload, chain reload (one worker at a time, needs --lazy-apps), graceful and brutal
#: reload of the workers only.
FIFO_RELOAD_COMMANDS: dict[str, str] = {
    "r": "graceful reload",
    "R": "brutal reload",
    "c": "chain reload (needs --lazy-apps)",
    "w": "graceful reload of the workers",
    "W": "brutal reload of the workers",
}


class _NoReader(Exception):
    """A transient FIFO state (missing, or nobody reading it): nothing was written, retry."""

    def __init__(self, error: ReloadError) -> None:
        super().__init__(error.message)
        self.error = error


class FifoReloader:
    """Write a reload command to a uWSGI master FIFO (``--master-fifo``), never blocking."""

    name = "fifo"

    def __init__(self, path: Path, command: str = "r", *, retry_for: float = 0.25) -> None:
        cmd = command.strip()
        if cmd not in FIFO_RELOAD_COMMANDS:
            raise ConfigError(
                f"{command!r} is not a uWSGI master FIFO reload command",
                fix="use one of " + ", ".join(f"{c} ({what})" for c, what in FIFO_RELOAD_COMMANDS.items()),
                option="reload-fifo-command",
            )
        self.path = path
        self.command = cmd
        self.retry_for = retry_for

    def token(self, last: int | None) -> int | None:
        return None

    def _error(self, message: str, fix: str | None = None) -> ReloadError:
        return ReloadError(message, fix=fix, path=str(self.path), command=self.command)

    def _no_reader(self) -> _NoReader:
        return _NoReader(
            self._error(
                f"no reader on the FIFO {self.path}: no uWSGI master has it open",
                fix="start uWSGI with --master-fifo pointing at this path (on a volume both containers mount)",
            )
        )

    def _write_once(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            raise _NoReader(
                self._error(
                    f"the FIFO {self.path} does not exist: no uWSGI master created it",
                    fix="start uWSGI with --master-fifo pointing at this path (on a volume both containers mount)",
                )
            ) from None
        except OSError as e:
            raise self._error(f"cannot stat the FIFO {self.path}: {e.strerror}") from e
        refuse_fix = "remove it; uWSGI creates the FIFO itself at start"
        if not stat.S_ISFIFO(st.st_mode):  # checked before open: opening a device can have side effects
            raise self._error(
                f"refusing to write to {self.path}: it is {file_kind(st.st_mode)}, not a FIFO", refuse_fix
            )
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):  # ENOENT: uWSGI is recreating it
                raise self._no_reader() from e
            if e.errno == errno.ELOOP:
                raise self._error(f"refusing to write to {self.path}: it is a symlink, not a FIFO", refuse_fix) from e
            if e.errno in (errno.EACCES, errno.EPERM):
                raise self._error(
                    f"not allowed to write to the FIFO {self.path}",
                    fix="uWSGI creates it with mode 0600: run coordinator as the same user as uWSGI",
                ) from e
            raise self._error(f"cannot open the FIFO {self.path}: {e.strerror}") from e
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISFIFO(mode):  # replaced between lstat and open
                raise self._error(f"refusing to write to {self.path}: it is {file_kind(mode)}, not a FIFO", refuse_fix)
            try:
                written = os.write(fd, self.command.encode("ascii"))
            except BlockingIOError as e:
                raise self._error(
                    f"the FIFO {self.path} is full: its reader is not reading",
                    fix="check that the uWSGI master is alive and not stopped; it reads the FIFO in its event loop",
                ) from e
            except BrokenPipeError as e:  # the reader closed it between our open and write
                raise self._no_reader() from e
            except OSError as e:
                raise self._error(f"cannot write to the FIFO {self.path}: {e.strerror}") from e
            if written != len(self.command):  # cannot happen below PIPE_BUF, which is at least 512
                raise self._error(f"short write to the FIFO {self.path}")
        finally:
            os.close(fd)

    def _write(self) -> None:
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                self._write_once()
                return
            except _NoReader as e:
                if time.monotonic() >= deadline:
                    raise e.error from e.__cause__
            time.sleep(0.02)

    async def reload(self, token: int | None, *, release: str | None = None) -> None:
        await anyio.to_thread.run_sync(self.reload_blocking, token, release)

    def reload_blocking(self, token: int | None, release: str | None) -> None:
        self._write()

    async def already_done(self, token: int | None) -> bool:
        # A FIFO keeps no trace: uWSGI consumes the byte and even recreates the FIFO. After a crash we
        # cannot tell whether the write happened, so the reload is repeated (at least once).
        return False
