"""The daemon loop: hold the ROOT lock, reconcile at start, on every hint and on a periodic resync.

Hints coalesce: while a deploy runs, any number of marker changes only mark the daemon dirty, and
the next reconcile reads the marker once, so the latest request wins. A hint during the
cancellable part of a deploy (before the swap) also checks whether the marker now asks for another
release, or deploys were paused (``ROOT/deploy.pause`` is watched too), and if so cancels it; a hint
while a stage builds (``ROOT/stage.request`` is watched too) cancels it when the marker changed.
SIGTERM and SIGINT stop the daemon after any swap in progress has been reloaded, and after the queued
notifications (:mod:`coordinator.notify`) had ``--hook-timeout``.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog
from anyio.abc import TaskGroup

from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.exceptions import CoordinatorError, DeployFailed, LayoutError, MarkerRefused, PausedError
from coordinator.follower import Follower
from coordinator.fsutil import describe_os_error
from coordinator.lock import holding_lock
from coordinator.records import AttemptResult, StatusState
from coordinator.report import Attempt
from coordinator.watch import watch_marker

if TYPE_CHECKING:
    from coordinator.probes import ProbeServer

__all__ = ["run", "run_argv"]

log = structlog.get_logger("coordinator")


def run_argv(root: Path | str, repo: Path | str, *extra: str) -> list[str]:
    """The argv that starts this daemon as a subprocess of the running interpreter on ``root`` from
    ``repo``, with ``extra`` options (the demo, the tests and the benchmarks start it this way)."""
    return [sys.executable, "-m", "coordinator", "run", "--root", str(root), "--repo", str(repo), *extra]


class _Wake:
    """A level-triggered wake-up flag (an anyio Event that can be re-armed)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()


async def run(config: Config, *, once: bool = False, ready: Callable[[], None] | None = None) -> Attempt | None:
    """Run the daemon (or one reconcile with ``once``). Returns the last attempt with ``once``.

    Raises LockHeldError when another coordinator runs on ROOT; with ``once``, see :func:`_once`.
    """
    lay = config.layout
    if not await anyio.Path(lay.root).is_dir():
        raise LayoutError(f"root {lay.root} is not a directory", fix="create it or fix --root")
    state_dir = lay.state_dir
    try:
        await anyio.Path(state_dir).mkdir(mode=0o755, exist_ok=True)
    except FileExistsError as e:
        raise LayoutError(f"{state_dir} is not a directory", fix=f"remove {state_dir}") from e
    except OSError as e:
        err = describe_os_error(e, retried=False)
        raise LayoutError(f"cannot create {state_dir}: {e.strerror}", fix=err["fix"]) from e
    async with holding_lock(lay.lock_file):
        deployer = Deployer(config)
        deployer.store.retire_to_spare = not once  # only the daemon readies a spare, when idle
        try:
            await deployer.startup()
        except OSError as e:  # e.g. ROOT not writable by this user: exit 2 with one line, no traceback
            err = describe_os_error(e, retried=False)
            raise LayoutError(f"cannot prepare {lay.root}: {err['message']}", fix=err["fix"]) from e
        log.info("started", root=str(lay.root), marker=str(lay.marker), once=once)
        async with deployer.notifier.running():  # on the way out: what is queued, within --hook-timeout
            if once:
                return await _once(deployer)
            await _loop(config, deployer, ready)
        return None


async def _once(deployer: Deployer) -> Attempt | None:
    """One reconcile. Returns normally only when the marker's release is served (or there is no
    marker): a failed or rolled-back attempt, or a marker whose request failed before, raise
    DeployFailed (exit 1); an invalid marker raises MarkerRefused (exit 2); deploys paused on ROOT
    raise PausedError (exit 6: nothing new was deployed). With ``--follow`` the tags are listed once
    first; without a marker, no matching tag (or tags that cannot be listed) raise DeployFailed."""
    if deployer.follower is not None:
        await _follow_once(deployer, deployer.follower)
    try:
        attempt = await deployer.reconcile()
    except OSError as e:  # e.g. the status file could not be written on a full volume
        err = describe_os_error(e, retried=False)
        raise DeployFailed(err["message"], fix=err.get("fix")) from e
    if attempt is not None and attempt.result.failed:
        verb = "was rolled back" if attempt.result is AttemptResult.ROLLED_BACK else "failed"
        error = attempt.error
        raise DeployFailed(
            f"deploy of {attempt.tag} {verb}: {error['message'] if error else 'unknown error'}",
            fix=error.get("fix") if error else None,
        )
    state = deployer.reporter.published_state
    error = deployer.reporter.published_error
    if state is StatusState.INVALID:
        raise MarkerRefused(
            f"the marker was refused: {error['message'] if error else 'invalid'}",
            fix=error.get("fix") if error else None,
        )
    if state is StatusState.PAUSED:
        from coordinator.display import describe_pause

        root = deployer.layout.root
        raise PausedError(
            f"deploys are paused on {root} ({describe_pause(deployer.reporter.paused or {})}); nothing was deployed",
            fix=f"resume with `coordinator resume --root {root}`",
        )
    if state is not None and state.failed:
        raise DeployFailed(
            f"the marker's request failed: {error['message'] if error else 'unknown error'}",
            fix=error.get("fix") if error else "fix the cause, then change the marker (e.g. deploy again)",
        )
    return attempt


async def _follow_once(deployer: Deployer, follower: Follower) -> None:
    await follower.check()
    if follower.request is not None or (await deployer.read_marker()).digest is not None:
        return
    err = follower.last_error
    if err is not None:
        raise DeployFailed(f"cannot list the tags of the repository: {err.message}", fix=err.fix)
    raise DeployFailed(
        f"no marker, and {follower.record['reason']}", fix="push a tag matching --follow, or fix --follow"
    )


async def _loop(config: Config, deployer: Deployer, ready: Callable[[], None] | None) -> None:
    wake = _Wake()
    stop = anyio.Event()
    probes: ProbeServer | None = None
    if config.http_address:
        # prometheus-client and the HTTP endpoint are loaded only when asked for (~45 ms, ~2 MiB), in a
        # worker thread: importing reads files (prometheus-client's process collector reads /proc)
        await anyio.to_thread.run_sync(importlib.import_module, "coordinator.probes")
        from coordinator.metrics import Metrics
        from coordinator.probes import Liveness, ProbeServer

        metrics = Metrics()
        deployer.reporter.on_phase = metrics.phase_finished
        deployer.reporter.on_attempt = metrics.attempt_changed
        deployer.notifier.on_failure = metrics.hook_failed
        deployer.on_fetch_failure = metrics.fetch_failed
        deployer.on_canary = metrics.canary_finished
        if deployer.follower is not None:
            deployer.follower.on_failure = metrics.fetch_failed
        probes = await ProbeServer.open(config, deployer, metrics, Liveness(stop))

    def reconcile_failed() -> None:
        if probes is not None:
            probes.metrics.reconcile_errors.inc()

    async with anyio.create_task_group() as tg:

        def on_hint() -> None:
            wake.set()
            tg.start_soon(deployer.check_superseded)

        async def watch() -> None:
            # /healthz fails if the watcher is gone
            with probes.liveness.running("watcher") if probes is not None else contextlib.nullcontext():
                await watch_marker(
                    config.layout.marker,
                    on_hint,
                    poll=config.poll,
                    step_ms=config.watch_step_ms,
                    stop_event=stop,
                    also=(config.layout.pause_file, config.layout.stage_marker),
                )

        async def follow(follower: Follower) -> None:
            """List the tags now and every period (± jitter); each look is a hint to reconcile."""
            while True:
                try:
                    delay = await follower.check()
                except Exception:  # a bug must not take the daemon down: log it, look again after a period
                    log.exception("follow_check_crashed")
                    delay = config.period
                on_hint()
                await anyio.sleep(delay)

        tg.start_soon(_signals, tg, stop)
        if probes is not None:
            tg.start_soon(probes.serve)
        tg.start_soon(watch)
        if deployer.follower is not None:
            tg.start_soon(follow, deployer.follower)
        if ready is not None:
            ready()
        try:
            while True:
                wake.clear()
                try:
                    await deployer.reconcile()
                except CoordinatorError as e:
                    reconcile_failed()
                    log.error("reconcile_failed", **e.as_dict())
                except OSError as e:  # the volume refused a write (full, read-only...): retried on resync
                    reconcile_failed()
                    log.error("reconcile_failed", **describe_os_error(e), retryable=True)
                except Exception:  # a bug must not take the daemon down: log it, retry on the next hint/resync
                    reconcile_failed()
                    log.exception("reconcile_crashed")
                if not wake.is_set():  # idle: ready the spare (a marker change cancels it)
                    await deployer.ready_spare(wake.is_set)
                retry_in = deployer.retry_in()  # a failed fetch waiting its back-off: wake when it ends
                with anyio.move_on_after(min(config.resync_interval, retry_in or config.resync_interval)):
                    await wake.wait()
        finally:
            with anyio.CancelScope(shield=True):
                if probes is not None:
                    await probes.aclose()
                await deployer.publish_stopped()
                log.info("stopped")


async def _signals(tg: TaskGroup, stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            stop.set()
            tg.cancel_scope.cancel()
            return
