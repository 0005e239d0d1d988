"""Telling the app server to load the new release.

A reload strategy has three parts: ``token`` picks an identifier for the next reload (recorded
in the state file *before* the reload, so a restart can tell whether a crash happened before or after
it), ``reload`` performs it, and ``already_done`` tells, where the strategy can, whether the reload
with that token already happened (so it is not repeated after a crash). ``token`` is blocking and
cheap: the activation calls it in the worker thread that swaps ``current`` and records the reload.
``reload`` and ``already_done`` are async and keep the event loop free. The strategies whose reload
is a few system calls (touch, FIFO, signal) also offer it blocking (:class:`BlockingReload`), and the
activation does it in that same thread: one hand-off on the marker -> reload path.

The touch strategy (default, uWSGI ``--touch-reload``): uWSGI checks the file about once a second
and compares whole-second ``st_mtime`` with "greater than", so two touches within one second reload
once. Each reload therefore sets the mtime explicitly to a whole second strictly greater than the
previous one (and not earlier than now). Deploys faster than one a second therefore push the mtime
ahead of the clock by about a second per deploy (a benchmark of 500 deploys in two minutes left it
380 s ahead); it falls back in step with the clock once deploys are slower than that. The file is
created if missing; its directory must exist. A reload file that is a symlink is refused (writing
through it could touch a file outside the volume).

The other strategies (FIFO, signal, command) leave no trace the coordinator can read back, so their
token is None and ``already_done`` is always False: after a crash between "about to reload" and
"reloaded" they reload once more (at least once, never zero times). A second graceful reload of the
same release costs a round of worker restarts and nothing else.

The FIFO strategy is in :mod:`coordinator.fifo`, the signal strategy in :mod:`coordinator.pidsignal`.

The command strategy runs an argv (split like a shell would, but without a shell) in its own process
group with a time limit, with ``COORDINATOR_RELEASE`` set to the release now current.
"""

from __future__ import annotations

import errno
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio

from coordinator.config import Config
from coordinator.exceptions import ConfigError, ReloadError
from coordinator.fifo import FifoReloader
from coordinator.pidsignal import SignalReloader, signal_name
from coordinator.proc import run_in_group, split_command

__all__ = ["BlockingReload", "CommandReloader", "Reloader", "TouchReloader", "make_reloader"]


@runtime_checkable
class BlockingReload(Protocol):
    """A strategy whose reload is a few system calls (touch, FIFO write, signal): the activation does it
    in the worker thread that swaps ``current`` (no hand-off between the swap and the reload)."""

    def reload_blocking(self, token: int | None, release: str | None) -> None: ...


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
        """The next mtime: whole seconds, not before now, after ``last`` and the file's (blocking)."""
        candidates = [math.floor(time.time())]
        for seen in (last, self._file_mtime()):
            if seen is not None:
                candidates.append(seen + 1)
        return max(candidates)

    def _touch(self, token: int | None) -> None:
        if token is None:
            token = self.token(None)
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
        await anyio.to_thread.run_sync(self.reload_blocking, token, release)

    def reload_blocking(self, token: int | None, release: str | None) -> None:
        self._touch(token)

    async def already_done(self, token: int | None) -> bool:
        if token is None:
            return False
        return await anyio.to_thread.run_sync(self._file_mtime) == token


#: Lines of the reload command's output kept in a ReloadError.
OUTPUT_TAIL_LINES = 20


class CommandReloader:
    """Run an argv (no shell) in its own process group with a time limit."""

    name = "command"

    def __init__(self, command: str, timeout: float, env: Mapping[str, str] | None = None) -> None:
        argv = split_command(command, "reload-command")
        if not timeout > 0:  # also rejects NaN
            raise ConfigError("--reload-timeout must be positive", fix="give seconds > 0", option="reload-timeout")
        self.argv = argv
        self.timeout = timeout
        self.env = dict(env or {})

    def token(self, last: int | None) -> int | None:
        """No token: the command's effect is opaque (blocking by contract, trivially)."""
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
        output = result.output_tail(OUTPUT_TAIL_LINES)
        if result.timed_out:
            raise ReloadError(
                f"reload command {program!r} timed out after {self.timeout:g} s (its process group was killed)",
                fix="make it faster or raise --reload-timeout",
                program=program,
                output=output,
            )
        rc = result.returncode
        if rc != 0:
            how = f"was killed by {signal_name(-rc)}" if rc is not None and rc < 0 else f"failed with exit code {rc}"
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
