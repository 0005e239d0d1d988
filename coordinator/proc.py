"""Running a child process in its own process group, with a time limit that kills the whole group.

Used for git (whose ssh or credential helpers are grandchildren) and for the build command (which
may start anything). On timeout, cancellation, or normal exit, every process still in the group
gets SIGKILL, so nothing the child started outlives it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from coordinator.exceptions import ConfigError

__all__ = ["GroupResult", "run_in_group"]


@dataclass(frozen=True, slots=True)
class GroupResult:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool

    def output_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of stdout (where stderr goes with ``merge_stderr``), as text."""
        return "\n".join(self.stdout.decode("utf-8", "replace").strip().splitlines()[-lines:])


async def _drain(stream: ByteReceiveStream | None, sink: bytearray, cap: int) -> None:
    if stream is None:
        return
    async for chunk in stream:
        sink += chunk
        if len(sink) > cap:
            del sink[: len(sink) - cap]


async def _feed(stream: ByteSendStream, data: bytes) -> None:
    async with stream:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.send(data)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_in_group(
    argv: Sequence[str],
    *,
    limit_s: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    merge_stderr: bool = False,
    max_output: int = 64 * 1024,
    stdin: bytes | None = None,
) -> GroupResult:
    """Run ``argv`` in a new session; return its exit code and the last ``max_output`` bytes of output.
    ``stdin`` is written to its standard input (default: /dev/null).

    ``timed_out`` is True (and ``returncode`` that of the killed process) when ``limit_s`` ran out.
    Cancellation kills the group and propagates.
    """
    proc = await anyio.open_process(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        start_new_session=True,
        umask=0o022,
    )
    out, err = bytearray(), bytearray()
    timed_out = False
    try:
        with anyio.move_on_after(limit_s) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, proc.stdout, out, max_output)
                tg.start_soon(_drain, proc.stderr, err, max_output)
                if proc.stdin is not None:
                    tg.start_soon(_feed, proc.stdin, stdin or b"")
            await proc.wait()
        timed_out = scope.cancelled_caught
    finally:
        _kill_group(proc.pid)
        with anyio.CancelScope(shield=True):
            await proc.wait()
            await proc.aclose()
    return GroupResult(proc.returncode, bytes(out), bytes(err), timed_out)


def split_command(command: str, option: str) -> list[str]:
    """``command``, the value of ``--option``, split as a POSIX shell would (it runs without one);
    ConfigError, with the fix, when it cannot be split or is empty."""
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise ConfigError(
            f"cannot split --{option} {command[:80]!r}: {e}",
            fix="quote it as a POSIX shell would (it is split, never run by a shell)",
            option=option,
        ) from e
    if not words:
        raise ConfigError(f"--{option} is empty", fix="give a program and its arguments", option=option)
    return words
