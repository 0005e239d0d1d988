"""Reloads by a signal to the app server's master (``--reload-signal`` with ``--reload-pidfile``).

The signal strategy (gunicorn ``HUP``, uWSGI ``HUP``) reads the master's pid from a pid file and
signals it. PIDs are per namespace: the app server's pid file only names the right process when
coordinator shares its PID namespace.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
from pathlib import Path

import anyio

from coordinator.exceptions import ConfigError, ReloadError
from coordinator.fsutil import file_kind

__all__ = ["PIDFILE_MAX_BYTES", "SignalReloader", "parse_signal", "signal_name"]


def parse_signal(text: str) -> int:
    """A signal number from ``HUP``, ``SIGHUP``, ``sighup`` or ``1``; ConfigError if unknown."""
    raw = text.strip()
    signum: int | None = None
    if re.fullmatch(r"[0-9]{1,3}", raw):
        signum = int(raw)
        if signum not in signal.valid_signals():
            signum = None
    elif re.fullmatch(r"[A-Za-z0-9]{1,16}", raw):
        upper = raw.upper()
        member = signal.Signals.__members__.get(upper if upper.startswith("SIG") else "SIG" + upper)
        signum = None if member is None else int(member)
    fix = "give a signal name or number, e.g. HUP (gunicorn, uWSGI: graceful reload)"
    if signum is None:
        raise ConfigError(f"unknown signal {text[:40]!r}", fix=fix, option="reload-signal")
    if signum in (signal.SIGKILL, signal.SIGSTOP):
        raise ConfigError(
            f"{signal.Signals(signum).name} cannot reload anything: a process cannot handle it",
            fix=fix,
            option="reload-signal",
        )
    return signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


#: A pid file is a decimal number and a newline; anything longer is not one.
PIDFILE_MAX_BYTES = 64

_SHARED_NS_FIX = (
    "coordinator and the app server need a shared PID namespace "
    "(Kubernetes: shareProcessNamespace: true; Docker: --pid=container:<app>)"
)


class SignalReloader:
    """Send a signal to the pid in the app server's pid file (gunicorn ``HUP``)."""

    name = "signal"

    def __init__(self, pidfile: Path, signal_text: str) -> None:
        self.pidfile = pidfile
        self.signum = parse_signal(signal_text)
        self.signal_name = signal_name(self.signum)

    def token(self, last: int | None) -> int | None:
        return None

    def _error(self, message: str, fix: str | None = None, pid: int | None = None) -> ReloadError:
        return ReloadError(message, fix=fix, pidfile=str(self.pidfile), signal=self.signal_name, pid=pid)

    def read_pid(self) -> int:
        """The pid in the pid file (blocking); ReloadError, with the fix, when it holds none."""
        start_fix = "start the app server with a pid file (gunicorn --pid FILE, uWSGI --safe-pidfile FILE)"
        try:
            fd = os.open(self.pidfile, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise self._error(
                f"the pid file {self.pidfile} does not exist: is the app server running?", start_fix
            ) from e
        except OSError as e:
            why = "it is a symlink" if e.errno == errno.ELOOP else e.strerror
            raise self._error(f"cannot open the pid file {self.pidfile}: {why}", start_fix) from e
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise self._error(f"the pid file {self.pidfile} is {file_kind(mode)}, not a regular file", start_fix)
            data = os.read(fd, PIDFILE_MAX_BYTES + 1)
        except OSError as e:
            raise self._error(f"cannot read the pid file {self.pidfile}: {e.strerror}", start_fix) from e
        finally:
            os.close(fd)
        match = re.fullmatch(rb"\s*([0-9]{1,10})\s*", data) if len(data) <= PIDFILE_MAX_BYTES else None
        pid = int(match.group(1)) if match else 0
        if not 0 < pid < 2**31:
            shown = data[:PIDFILE_MAX_BYTES].decode("ascii", "replace")
            raise self._error(
                f"the pid file {self.pidfile} does not hold a process id: {shown!r}",
                fix="point --reload-pidfile at the app server master's pid file",
            )
        if pid == os.getpid():
            raise self._error(
                f"the pid file {self.pidfile} names coordinator itself (pid {pid}): "
                "it was written in another PID namespace",
                _SHARED_NS_FIX,
                pid,
            )
        return pid

    def _send(self) -> int:
        pid = self.read_pid()
        try:
            os.kill(pid, self.signum)
        except ProcessLookupError as e:
            raise self._error(
                f"no process {pid} (from {self.pidfile}): the app server is not running, "
                "the pid file is stale, or it lives in another PID namespace",
                _SHARED_NS_FIX,
                pid,
            ) from e
        except PermissionError as e:
            raise self._error(
                f"not allowed to send {self.signal_name} to process {pid} (from {self.pidfile})",
                fix="run coordinator as the same user as the app server; if they do not share a PID namespace, "
                "this pid may be an unrelated process: " + _SHARED_NS_FIX,
                pid=pid,
            ) from e
        except OSError as e:
            raise self._error(f"cannot send {self.signal_name} to process {pid}: {e.strerror}", pid=pid) from e
        return pid

    async def reload(self, token: int | None, *, release: str | None = None) -> None:
        await anyio.to_thread.run_sync(self.reload_blocking, token, release)

    def reload_blocking(self, token: int | None, release: str | None) -> None:
        self._send()

    async def already_done(self, token: int | None) -> bool:
        # A signal leaves no trace we can read back; after a crash the reload is repeated.
        return False
