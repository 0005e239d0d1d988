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

The other strategies (FIFO, signal, command) leave no trace the coordinator can read back, so their
``token`` is None and ``already_done`` is always False: after a crash between "about to reload" and
"reloaded" they reload once more (at least once, never zero times). A second graceful reload of the
same release costs a round of worker restarts and nothing else.

The FIFO strategy (uWSGI ``--master-fifo``): uWSGI's master creates the FIFO (mode 0600, so the
coordinator must run as the same user, or root), reads it one byte at a time, runs the command each
byte names, and unlinks and recreates the FIFO whenever the last writer closes it, and again when it
re-execs itself on a full reload. The writer opens it non-blocking, so a FIFO nobody reads gives
ENXIO at once ("no reader") instead of hanging; the short gap while uWSGI recreates it is bridged by
retrying for ``retry_for`` seconds (nothing was written in that case, so retrying cannot reload
twice). Only a FIFO is written to: a regular file, symlink or device planted at the path is refused.

The signal strategy (gunicorn ``HUP``, uWSGI ``HUP``) reads the master's pid from a pid file and
signals it. PIDs are per namespace: the app server's pid file only names the right process when
coordinator shares its PID namespace.

The command strategy runs an argv (split like a shell would, but without a shell) in its own process
group with a time limit, with ``COORDINATOR_RELEASE`` set to the release now current.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shlex
import signal
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import anyio

from coordinator.config import Config
from coordinator.exceptions import ConfigError, ReloadError
from coordinator.proc import run_in_group

__all__ = [
    "FIFO_RELOAD_COMMANDS",
    "CommandReloader",
    "FifoReloader",
    "Reloader",
    "SignalReloader",
    "TouchReloader",
    "make_reloader",
    "parse_signal",
]


class Reloader(Protocol):
    name: str

    def token(self, last: int | None) -> int | None: ...

    async def reload(self, token: int | None, *, release: str | None = None) -> None: ...

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
            raise ReloadError(
                f"cannot touch the reload file {self.path}: {e.strerror}",
                fix=f"setting its mtime needs the file to be owned by uid {os.geteuid()}: chown it (or delete it)"
                if e.errno == errno.EPERM
                else "check the reload file and the volume holding it",
                path=str(self.path),
            ) from e
        finally:
            os.close(fd)

    async def reload(self, token: int | None, *, release: str | None = None) -> None:
        await anyio.to_thread.run_sync(self._touch, token if token is not None else self.token(None))

    async def already_done(self, token: int | None) -> bool:
        if token is None:
            return False
        return await anyio.to_thread.run_sync(self._file_mtime) == token


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

_FILE_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a FIFO")


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
            raise self._error(f"refusing to write to {self.path}: it is {_kind(st.st_mode)}, not a FIFO", refuse_fix)
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
                raise self._error(f"refusing to write to {self.path}: it is {_kind(mode)}, not a FIFO", refuse_fix)
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
        await anyio.to_thread.run_sync(self._write)

    async def already_done(self, token: int | None) -> bool:
        # A FIFO keeps no trace: uWSGI consumes the byte and even recreates the FIFO. After a crash we
        # cannot tell whether the write happened, so the reload is repeated (at least once).
        return False


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


def _signal_name(signum: int) -> str:
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

    def __init__(self, pidfile: Path, signal_name: str) -> None:
        self.pidfile = pidfile
        self.signum = parse_signal(signal_name)
        self.signal_name = _signal_name(self.signum)

    def token(self, last: int | None) -> int | None:
        return None

    def _error(self, message: str, fix: str | None = None, pid: int | None = None) -> ReloadError:
        return ReloadError(message, fix=fix, pidfile=str(self.pidfile), signal=self.signal_name, pid=pid)

    def _read_pid(self) -> int:
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
                raise self._error(f"the pid file {self.pidfile} is {_kind(mode)}, not a regular file", start_fix)
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
        pid = self._read_pid()
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
        await anyio.to_thread.run_sync(self._send)

    async def already_done(self, token: int | None) -> bool:
        # A signal leaves no trace we can read back; after a crash the reload is repeated.
        return False


#: Lines of the reload command's output kept in a ReloadError.
OUTPUT_TAIL_LINES = 20


class CommandReloader:
    """Run an argv (no shell) in its own process group with a time limit."""

    name = "command"

    def __init__(self, command: str, timeout: float, env: Mapping[str, str] | None = None) -> None:
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise ConfigError(
                f"cannot split --reload-command {command[:80]!r}: {e}",
                fix="quote it as a POSIX shell would (it is split, never run by a shell)",
                option="reload-command",
            ) from e
        if not argv:
            raise ConfigError(
                "--reload-command is empty", fix="give a program and its arguments", option="reload-command"
            )
        if not timeout > 0:  # also rejects NaN
            raise ConfigError("--reload-timeout must be positive", fix="give seconds > 0", option="reload-timeout")
        self.argv = argv
        self.timeout = timeout
        self.env = dict(env or {})

    def token(self, last: int | None) -> int | None:
        return None

    async def reload(self, token: int | None, *, release: str | None = None) -> None:
        env = {**os.environ, **self.env}
        env.pop("COORDINATOR_RELEASE", None)
        if release is not None:
            env["COORDINATOR_RELEASE"] = release
        program = self.argv[0]
        try:
            result = await run_in_group(self.argv, limit_s=self.timeout, env=env, merge_stderr=True)
        except OSError as e:
            raise ReloadError(
                f"cannot run the reload command {program!r}: {e.strerror}",
                fix="check --reload-command: the program must exist and be executable (no shell is used)",
                program=program,
            ) from e
        output = "\n".join(result.stdout.decode("utf-8", "replace").strip().splitlines()[-OUTPUT_TAIL_LINES:])
        if result.timed_out:
            raise ReloadError(
                f"reload command {program!r} timed out after {self.timeout:g} s (its process group was killed)",
                fix="make it faster or raise --reload-timeout",
                program=program,
                output=output,
            )
        rc = result.returncode
        if rc != 0:
            how = f"was killed by {_signal_name(-rc)}" if rc is not None and rc < 0 else f"failed with exit code {rc}"
            raise ReloadError(
                f"reload command {program!r} {how}",
                fix="see its output; the new release is current but may not be served yet",
                program=program,
                output=output,
                rc=rc,
            )

    async def already_done(self, token: int | None) -> bool:
        # The command's effect is opaque to coordinator; after a crash the reload is repeated.
        return False


def make_reloader(config: Config) -> Reloader:
    """The reload strategy ``config`` asks for (see :attr:`Config.reload_strategy`)."""
    strategy = config.reload_strategy
    if strategy == "fifo" and config.reload_fifo is not None:
        return FifoReloader(config.reload_fifo, config.reload_fifo_command)
    if strategy == "signal" and config.reload_signal is not None and config.reload_pidfile is not None:
        return SignalReloader(config.reload_pidfile, config.reload_signal)
    if strategy == "command" and config.reload_command is not None:
        return CommandReloader(config.reload_command, config.reload_timeout, config.extra_env)
    if strategy == "touch":
        return TouchReloader(config.layout.reload_file)
    raise ConfigError(f"reload strategy {strategy!r} is incomplete or unknown", fix="check the --reload-* options")
