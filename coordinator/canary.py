"""The canary (``--canary-command``): the new release started privately, before the swap, and checked.

After the build and the pre-swap command, before ``current`` is swapped, :class:`Canary` starts the
command in the new release directory, on a free loopback port coordinator chose, and probes the
canary URL (:func:`canary_url`) until it answers 2xx with the expected text (``--health-expect``, as
the health check: :func:`coordinator.health.probe`), or ``--canary-timeout`` runs out, or the
command exits. Then it stops the canary, always (passed, failed, cancelled by a newer marker or
SIGTERM): SIGTERM to its process group, SIGKILL after :data:`STOP_GRACE` seconds to whatever is left.

The command:

* is split like a shell would (:func:`shlex.split`) and run without one; in its words ``$PORT`` and
  ``$RELEASE_DIR`` (or ``${PORT}``, ``${RELEASE_DIR}``) are replaced by their values, nothing else;
* gets the hooks' environment (:class:`~coordinator.hooks.HookContext`: ``RELEASE_DIR``, ``TAG``,
  ``SHA``, ``RELEASE``...), ``PORT``, ``COORDINATOR_PIN_CURRENT`` set to the release directory (an app
  loaded through :mod:`coordinator.pin` pins the new release, not ``current``) and
  ``COORDINATOR_CANARY``, a token new for each canary;
* runs in its own session and process group, its output (stderr merged) capped while it runs (the
  last 64 KiB kept; the last lines reach the error: :func:`coordinator.hooks.tail`).

Which processes are the canary's, how they are stopped, and how a canary a crash left running is
found again: :mod:`coordinator.canaryproc`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import structlog
from anyio.abc import ByteReceiveStream, Process

from coordinator.canaryproc import CANARY_ENV, record_path, stop_processes
from coordinator.exceptions import CanaryError, ConfigError
from coordinator.health import expected_text, probe
from coordinator.hooks import OUTPUT_BYTES, HookContext, tail
from coordinator.logs import present
from coordinator.proc import split_command
from coordinator.state import iso, write_json
from coordinator.statefile import CanaryRecord

if TYPE_CHECKING:
    from coordinator.config import Config

__all__ = [
    "STOP_GRACE",
    "Canary",
    "CanaryOutcome",
    "canary_url",
    "check_canary_options",
    "expand_words",
]

log = structlog.get_logger("coordinator")

#: seconds between SIGTERM and SIGKILL when the canary is stopped
STOP_GRACE = 5.0
#: seconds between two probes of the canary URL
PROBE_INTERVAL = 0.2
#: seconds one probe may take at most
PROBE_TIMEOUT = 2.0

_WORD_VAR = re.compile(r"\$(?:\{(PORT|RELEASE_DIR)\}|(PORT|RELEASE_DIR)(?![A-Za-z0-9_]))")


# ---------------------------------------------------------------------------------------------- options


def check_canary_options(command: str | None, url: str | None, health_url: str | None) -> None:
    """``--canary-command``, ``--canary-url`` and what they need (ConfigError: exit 2)."""
    if command is None:
        if url is not None:
            raise ConfigError(
                "--canary-url is used only with --canary-command",
                fix="add --canary-command (the command that starts the release on $PORT), or drop --canary-url",
                option="canary-url",
            )
        return
    split_command(command, "canary-command")
    if url is None:
        if health_url is None:
            raise ConfigError(
                "--canary-command needs a URL to probe: --canary-url or --health-url",
                fix="add --canary-url /health (probed on 127.0.0.1:$PORT), or --health-url (its path is used)",
                option="canary-command",
            )
        return
    if url.startswith("/"):
        return
    if not url.startswith(("http://", "https://")) or "{port}" not in url:
        raise ConfigError(
            f"--canary-url must be a path or an http(s) URL with {{port}}, not {url[:80]!r}",
            fix="e.g. --canary-url /health, or --canary-url 'http://127.0.0.1:{port}/health'",
            option="canary-url",
        )


def canary_url(url: str | None, health_url: str | None, port: int) -> str:
    """The URL the canary on ``port`` must answer: ``url`` (a path on ``http://127.0.0.1:PORT``, or a
    URL whose ``{port}`` is filled in), by default the path (and query) of ``health_url`` there."""
    if url is None:
        assert health_url is not None
        parts = urlsplit(health_url)
        url = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if url.startswith("/"):
        return f"http://127.0.0.1:{port}{url}"
    return url.replace("{port}", str(port))


def expand_words(words: Iterable[str], values: Mapping[str, str]) -> list[str]:
    """``words`` with ``$NAME`` and ``${NAME}`` replaced by ``values[NAME]`` for PORT and RELEASE_DIR
    (no other expansion: the command runs without a shell)."""
    return [_WORD_VAR.sub(lambda m: values[m.group(1) or m.group(2)], w) for w in words]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the canary binds it: a race is possible,
    and then the canary fails and says so)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------- the canary


@dataclass(frozen=True, slots=True)
class CanaryOutcome:
    """How one canary ended."""

    ok: bool
    reason: str  # one line: what passed, or why it failed
    output: str  # its last lines (see coordinator.hooks.tail)
    seconds: float
    checks: int
    url: str
    returncode: int | None = None  # it exited by itself, with this code, before it passed

    def describe(self) -> str:
        return f"{self.reason} (after {self.checks} checks in {self.seconds:.1f} s)"


class _Output:
    """The canary's output, the last ``cap`` bytes kept; ``eof`` set once the pipe is closed."""

    def __init__(self, cap: int = OUTPUT_BYTES) -> None:
        self.data = bytearray()
        self.cap = cap
        self.eof = anyio.Event()

    async def drain(self, stream: ByteReceiveStream | None) -> None:
        try:
            if stream is None:
                return
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                async for chunk in stream:
                    self.data += chunk
                    if len(self.data) > self.cap:
                        del self.data[: len(self.data) - self.cap]
        finally:
            self.eof.set()


class Canary:
    """Starts ``--canary-command`` for one release, probes it, and stops it (see the module docstring)."""

    def __init__(
        self,
        command: str,
        *,
        url: str | None,
        health_url: str | None,
        expect: str,
        timeout: float,
        extra_env: Mapping[str, str] | None = None,
        record: Path | None = None,
        grace: float = STOP_GRACE,
    ) -> None:
        check_canary_options(command, url, health_url)
        self.command = command
        self.url = url
        self.health_url = health_url
        self.expect = expect
        self.timeout = timeout
        self.extra_env = dict(extra_env or {})
        self.record = record  # None: not recorded (coordinator check)
        self.grace = grace

    @classmethod
    def from_config(cls, config: Config, *, record: bool = True) -> Canary | None:
        """The canary ``config`` asks for (None: no ``--canary-command``); ``record``: recorded in the
        state directory while it runs (the daemon's; ``coordinator check`` writes nothing)."""
        if config.canary_command is None:
            return None
        return cls(
            config.canary_command,
            url=config.canary_url,
            health_url=config.health_url,
            expect=config.health_expect,
            timeout=config.canary_timeout,
            extra_env=config.extra_env,
            record=record_path(config.layout.state_dir) if record else None,
        )

    async def check(self, ctx: HookContext) -> CanaryOutcome:
        """:meth:`run`; raise CanaryError when the canary did not pass."""
        outcome = await self.run(ctx)
        if outcome.ok:
            log.info("canary_passed", **present(release=ctx.release, url=outcome.url, checks=outcome.checks))
            return outcome
        error = CanaryError(
            f"the canary of {ctx.tag} did not pass: {outcome.describe()}",
            fix="see its output; current is unchanged and nothing was reloaded. Fix the release and deploy "
            "again (the marker must change), or raise --canary-timeout if it starts slowly",
            release=ctx.release,
            url=outcome.url,
            rc=outcome.returncode,
            output=outcome.output,
        )
        log.error("canary_failed", **error.as_dict())
        raise error

    async def run(self, ctx: HookContext) -> CanaryOutcome:
        """Start the canary of ``ctx``'s release, probe it, stop it (also when cancelled)."""
        assert ctx.release_dir is not None
        port = free_port()
        token = secrets.token_hex(16)
        url = canary_url(self.url, self.health_url, port)
        values = {"PORT": str(port), "RELEASE_DIR": str(ctx.release_dir)}
        argv = expand_words(shlex.split(self.command), values)
        env = {
            **os.environ,
            **self.extra_env,
            **ctx.env(),
            **values,
            "COORDINATOR_PIN_CURRENT": str(ctx.release_dir),
            CANARY_ENV: token,
        }
        started = time.monotonic()
        record = CanaryRecord(token, ctx.release, iso())
        await self._write(record)  # before the start: a crash right after it still finds the token
        try:
            proc = await anyio.open_process(
                argv,
                cwd=ctx.release_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:  # no such program, not executable, the release directory gone
            await self._forget()
            reason = f"the canary command could not start: {argv[0]}: {e.strerror or e}"
            return CanaryOutcome(False, reason, "", time.monotonic() - started, 0, url)
        await self._write(CanaryRecord(token, ctx.release, record.started_at, proc.pid))
        log.debug("canary_started", **present(release=ctx.release, port=port, pgid=proc.pid, argv=argv))
        output = _Output()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(output.drain, proc.stdout)
                try:
                    ok, reason, checks, rc = await self._watch(proc, url, expected_text(self.expect, ctx.tag, ctx.sha))
                finally:
                    await stop_processes(token, proc.pid, self.grace)
                    with anyio.CancelScope(shield=True), anyio.move_on_after(0.5):
                        await output.eof.wait()  # its last words, unless an escaped process holds the pipe
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await proc.aclose()
                await self._forget()
        return CanaryOutcome(ok, reason, tail(bytes(output.data)), time.monotonic() - started, checks, url, rc)

    async def _watch(self, proc: Process, url: str, expect: str) -> tuple[bool, str, int, int | None]:
        """Probe ``url`` until it answers with ``expect``, the timeout runs out, or ``proc`` exits:
        (passed, why, checks made, its exit code if it exited first)."""
        result: list[tuple[bool, str]] = []
        checks = 0
        last = "no answer yet"
        with anyio.move_on_after(self.timeout):
            async with anyio.create_task_group() as tg:

                async def exited() -> None:
                    await proc.wait()
                    if not result:
                        result.append((False, f"the canary exited with code {proc.returncode} before it passed"))
                    tg.cancel_scope.cancel()

                async def probing() -> None:
                    nonlocal checks, last
                    while True:
                        checks += 1
                        answer = await anyio.to_thread.run_sync(
                            probe, url, expect, PROBE_TIMEOUT, abandon_on_cancel=True
                        )
                        if answer.ok and not result:
                            result.append((True, f"{url}: {answer.reason}"))
                            tg.cancel_scope.cancel()
                            return
                        last = answer.reason
                        await anyio.sleep(PROBE_INTERVAL)

                tg.start_soon(exited)
                tg.start_soon(probing)
        if not result:
            return False, f"no pass within {self.timeout:g} s: {last}", checks, None
        ok, reason = result[0]
        if ok:
            return True, reason, checks, None
        return False, f"{reason}; last check: {last}", checks, proc.returncode

    async def _write(self, record: CanaryRecord) -> None:
        path = self.record
        if path is not None:
            await anyio.to_thread.run_sync(partial(write_json, path, record.to_json(), durable=False))

    async def _forget(self) -> None:
        if self.record is not None:
            await anyio.Path(self.record).unlink(missing_ok=True)
