"""The reconcile loop: observe the marker, the git cache and the volume, ask :func:`coordinator.plan.plan`
what to do, and have :class:`~coordinator.steps.DeploySteps` perform it with the parts that do the work:

* :class:`~coordinator.releases.ReleaseStore` builds and publishes release directories, and prunes;
* :class:`~coordinator.activate.Activator` swaps ``current``, reloads, verifies and rolls back;
* :class:`~coordinator.report.Reporter` writes the status file and the journal.

Ordering that makes a crash at any instant harmless: a new release is written under a hidden
temporary name and has its final name only once complete (see :mod:`coordinator.releases`); then
``current`` is swapped and reloaded, recorded before and after (see :mod:`coordinator.activate`).
Steps before the swap are cancellable (by SIGTERM, or when a newer marker supersedes the deploy or
deploys are paused: :meth:`Deployer.check_superseded`) and leave nothing behind; the swap, reload
and rollback are not. The pre-swap command (:mod:`coordinator.hooks`) runs between publish and swap:
SIGTERM stops it, a newer marker does not; a pause seen before or after it stops the deploy before the
swap. Then the canary (:mod:`coordinator.canary`, ``--canary-command``) starts the release privately
and checks it: a newer marker, a pause or SIGTERM stops it, and one that fails refuses the release
before anything is swapped. Every finished attempt is handed to the
:class:`~coordinator.notify.Notifier`. Once the marker's request is converged, the
:class:`~coordinator.stager.Stager` handles the stage request. When a reconcile leaves nothing to do,
the daemon has the :class:`~coordinator.spare.SpareKeeper` ready the spare (:meth:`Deployer.ready_spare`),
which a marker change cancels at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import anyio
import structlog

from coordinator.activate import Activator
from coordinator.config import Config
from coordinator.exceptions import CanaryError, CoordinatorError, MarkerError, RolledBack, SignatureError
from coordinator.failpoints import failpoint
from coordinator.follower import Follower
from coordinator.fsutil import describe_os_error
from coordinator.git import GitCache
from coordinator.logs import present
from coordinator.marker import DeployRequest, MarkerReading, read_marker, read_marker_file
from coordinator.notify import Notifier
from coordinator.pause import read_pause
from coordinator.plan import (
    Action,
    Observation,
    Plan,
    ReleaseInfo,
    Step,
    failure_blocks_marker,
    plan,
    resume_verify,
    settled_state,
)
from coordinator.records import AttemptResult, PauseRecord, StatusState
from coordinator.releases import ReleaseStore
from coordinator.reload import Reloader, make_reloader
from coordinator.report import Attempt, Reporter
from coordinator.spare import SpareKeeper
from coordinator.stager import Stager
from coordinator.state import load_state
from coordinator.statefile import PendingVerify, ReleaseMeta, State
from coordinator.steps import DeploySteps

__all__ = ["Deployer"]

log = structlog.get_logger("coordinator")


class Deployer:
    """Converges the volume to the marker. One instance per daemon, used under the ROOT lock."""

    def __init__(self, config: Config, reloader: Reloader | None = None) -> None:
        self.config = config
        self.layout = config.layout
        self.git = GitCache.from_config(config)
        self.state = State()
        self.store = ReleaseStore(config, self.git)
        self.reporter = Reporter(self.layout, self.state, verify=config.health_url is not None)
        self.activator = Activator(config, self.state, self.store, self.reporter, reloader or make_reloader(config))
        self.notifier = Notifier(config)  # delivers while the daemon runs it (Notifier.running)
        self._resume: PendingVerify | None = None
        self._supersede_scope: anyio.CancelScope | None = None
        self._inflight: DeployRequest | None = None
        self._inflight_digest: str | None = None
        self.follower = Follower(config, self.git) if config.follow else None
        self.spare = SpareKeeper(self.layout, self.git)
        self._spare_scope: anyio.CancelScope | None = None
        self._spare_digest: str | None = None  # the marker's digest when the readying began
        self._spare_settled: tuple[str | None, int] | None = None  # (reloaded, store generation) of the last pass
        self.steps = DeploySteps(
            config, self.git, self.state, self.store, self.reporter, self.activator, self._supersedable, self.read_pause
        )
        self.stager = Stager(
            config,
            self.git,
            self.reporter,
            self.state,
            self.activator.save_state,
            self.steps.build_release,
            self.steps.prune,
            self._notify,
        )

    @property
    def on_canary(self) -> Callable[[str], None] | None:
        """Called with passed, failed or cancelled when a canary ends (the metric)."""
        return self.steps.on_canary

    @on_canary.setter
    def on_canary(self, hook: Callable[[str], None] | None) -> None:
        self.steps.on_canary = hook

    @property
    def on_fetch_failure(self) -> Callable[[str], None] | None:
        """Called with "fetch" when a fetch fails (the metric)."""
        return self.steps.on_fetch_failure

    @on_fetch_failure.setter
    def on_fetch_failure(self, hook: Callable[[str], None] | None) -> None:
        self.steps.on_fetch_failure = hook

    # ------------------------------------------------------------------ start-up

    async def startup(self) -> None:
        """Check the volume, create the layout, remove temporary leftovers, recover a pending reload."""
        await anyio.to_thread.run_sync(self.store.prepare_layout)
        await self.spare.startup()  # a spare without a valid record is moved aside
        self.state.assign(await anyio.to_thread.run_sync(load_state, self.layout.state_file))
        await self.git.ensure()
        await self.steps.startup()  # a canary a crash left running stopped, the signing keys loaded
        current = await self.store.current()
        await self.activator.confirm_pending_reload(current)
        await self.reporter.load()
        self._resume = resume_verify(self.state, current, self.config.health_url is not None)

    async def read_marker(self) -> MarkerReading:
        """Read the marker (size-capped, never blocking on a FIFO) and validate it. Without a marker,
        with ``--follow``: the followed request, its digest ``follow:TAG@SHA`` (see :class:`Follower`)."""
        return self._or_followed(await read_marker(self.layout.marker, self.config.tag_pattern))

    def _or_followed(self, reading: MarkerReading) -> MarkerReading:
        if reading.digest is None and self.follower is not None and self.follower.request is not None:
            return MarkerReading(self.follower.request, None, self.follower.digest)
        return reading

    def _look(self) -> tuple[MarkerReading, PauseRecord | None, str | None, list[ReleaseInfo]]:
        """Everything a reconcile reads from the volume: the marker, the pause, ``current`` and the
        releases on disk (blocking: one worker-thread trip, the only one before a swap to a release
        on disk)."""
        reading = read_marker_file(self.layout.marker, self.config.tag_pattern)
        pause = read_pause(self.layout.pause_file)
        current, on_disk = self.store.observe_blocking()
        return reading, pause, current, on_disk

    def _look_spare(self) -> tuple[MarkerReading, tuple[str | None, ReleaseMeta | None]]:
        """What the idle pass reads: the marker, ``current`` and its metadata (blocking: one trip)."""
        return read_marker_file(self.layout.marker, self.config.tag_pattern), self.store.current_meta_blocking()

    def retry_in(self) -> float | None:
        """Seconds until a request whose fetch failed may fetch again (None: none waits)."""
        return self.steps.fetch_backoff.remaining(time.monotonic())

    async def read_pause(self) -> PauseRecord | None:
        """The pause in effect (None: not paused); logs when it appears, changes or goes."""
        return self._note_pause(await anyio.to_thread.run_sync(read_pause, self.layout.pause_file))

    def _note_pause(self, pause: PauseRecord | None) -> PauseRecord | None:
        before, self.reporter.paused = self.reporter.paused, pause
        if pause != before:
            if pause is None:
                log.info("deploys_resumed")
            elif "unreadable" in pause:
                log.warning("deploys_paused", **present(reason=pause["reason"], error=pause.get("unreadable")))
            else:
                log.info("deploys_paused", **present(reason=pause["reason"], by=pause["by"], at=pause["at"]))
        return pause

    # ------------------------------------------------------------------ reconciling

    async def reconcile(self) -> Attempt | None:
        """Converge once: returns the attempt made (None if nothing needed doing)."""
        reading, pause, current, on_disk = await anyio.to_thread.run_sync(self._look)
        reading = self._or_followed(reading)
        paused = self._note_pause(pause) is not None
        req = reading.request
        blocked = reading.digest is not None and reading.digest == self.state.failed_marker
        now, backoff = time.monotonic(), self.steps.fetch_backoff
        obs = Observation(
            request=req,
            invalid=reading.error is not None,
            current=current,
            reloaded=self.state.reloaded,
            releases=frozenset(r.name for r in on_disk),
            cached_sha=await self.git.resolve(req.tag) if req is not None and not (blocked or paused) else None,
            blocked=blocked,
            has_build=bool(self.config.build_command),
            has_health=self.config.health_url is not None,
            has_pre_swap=bool(self.config.pre_swap_command),
            has_canary=self.steps.canary is not None,
            previous=self.state.previous,
            failed_kind=self.state.failed_error.get("kind") if self.state.failed_error else None,
            resume_verify=self._resume,
            paused=paused,
            retry_in=backoff.remaining(now) if backoff.waiting(reading.digest, now) else None,
        )
        self._resume = None  # offered once, right after start-up
        p = plan(obs)
        if self.follower is not None:
            self.reporter.following = self.follower.record
        if reading.error is not None:
            self.reporter.log_marker_error(reading)
        if p.action is Action.RESUME_VERIFY:
            assert obs.resume_verify is not None
            return await self._resume_verify(reading, obs.resume_verify)
        if p.action in (Action.NOOP, Action.WAIT, Action.RELOAD, Action.PAUSED, Action.BACKOFF):
            await self._settle(obs, p, reading)
            await self.stager.reconcile(p.action, reading.digest, obs.current, obs.releases)
            return None
        assert req is not None
        attempt = await self._attempt(obs, p, reading, req)
        if self._followed_refused(attempt, reading, req):
            return await self.reconcile()  # the newest other tag, at once
        return attempt

    def _followed_refused(self, attempt: Attempt, reading: MarkerReading, req: DeployRequest) -> bool:
        """A followed tag (no marker) was refused for its signature: the follower passes it over and
        chose another tag (True), which is deployed at once."""
        follower = self.follower
        if follower is None or reading.digest is None or reading.digest != follower.digest:
            return False
        if attempt.error is None or attempt.error.get("kind") != SignatureError.kind:
            return False
        return follower.refuse(req.tag, req.sha, attempt.error["message"])

    async def _settle(self, obs: Observation, p: Plan, reading: MarkerReading) -> None:
        """No deploy: at most the reload a crash left undone; then publish the state."""
        if p.action is Action.RELOAD:
            assert obs.current is not None
            try:
                await self.activator.recovery_reload(obs.current)
            except CoordinatorError as e:  # logged; retried on the next reconcile
                if not obs.invalid:
                    state = settled_state(obs, p.action, reload_failed=True)
                    await self.reporter.publish(state, reading, obs.current, error=e.as_dict())
                    return
        error = self.steps.backoff_error if p.action is Action.BACKOFF else None
        await self.reporter.publish(settled_state(obs, p.action), reading, obs.current, error=error)

    async def _attempt(self, obs: Observation, p: Plan, reading: MarkerReading, req: DeployRequest) -> Attempt:
        """One deploy attempt for ``req``: journaled and published however it ends."""
        attempt = self.reporter.start(Attempt(tag=req.tag, request_id=req.request_id))
        try:
            if p.action is Action.FETCH or Step.PREPARE in p.steps:
                # a long deploy: show it. A swap to a release on disk skips this write (it would delay
                # the swap by a file and a directory fsync); the status is written once it is done.
                failpoint("before-deploying-status")
                await self.reporter.publish(StatusState.DEPLOYING, reading, obs.current)
            log.info(
                "deploy_started", **present(tag=req.tag, sha=req.sha, request_id=req.request_id, current=obs.current)
            )
            if p.action is Action.FETCH:
                with self._supersedable(req, reading.digest) as scope:
                    async with self.reporter.phase(attempt, Step.FETCH):
                        sha = await self.steps.fetch(req.tag, reading.digest)
                        failpoint("after-fetch")
                    p = plan(replace(obs, cached_sha=sha, fetched=True))
                if scope.cancelled_caught:
                    p = Plan(Action.NOOP, reason="superseded")
                    attempt.result = AttemptResult.CANCELLED
            if p.action is Action.ERROR:
                raise MarkerError(p.reason, fix="fix the sha in the marker, or the tag", tag=req.tag)
            attempt.sha, attempt.release = p.sha, p.target
            if p.action is Action.DEPLOY:
                assert p.target is not None and p.sha is not None
                superseded = await self.steps.deploy(attempt, req, reading.digest, p, obs.current)
                attempt.result = AttemptResult.CANCELLED if superseded else AttemptResult.SUCCESS
                if not superseded:
                    await self.steps.prune(attempt)  # the result stands: a SIGTERM now does not make it "cancelled"
            elif attempt.result is AttemptResult.RUNNING:
                attempt.result = AttemptResult.SUCCESS  # the fetch showed the tag is already current
        except CoordinatorError as e:
            await self._failed(attempt, e, reading)
            if isinstance(e, RolledBack | CanaryError):
                await self.steps.prune(attempt)  # the failed release is marked, so it goes now and never counts
        except OSError as e:
            attempt.result = AttemptResult.FAILED
            attempt.error = describe_os_error(e)
            log.error(
                "deploy_failed",
                **present(**{**attempt.error, "tag": req.tag, "request_id": req.request_id, "retryable": True}),
            )
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(attempt, reading, obs.current)
        attempt.log_end("deploy_succeeded", "deploy_superseded")
        return attempt

    async def _resume_verify(self, reading: MarkerReading, pending: PendingVerify) -> Attempt:
        """A daemon killed while verifying ``current`` verifies it again at start, and rolls back."""
        meta = await self.store.meta(pending.release)
        tag, sha = (meta.tag, meta.sha) if meta else (pending.release, "")
        attempt = self.reporter.start(Attempt(tag=tag, request_id=None, sha=sha, release=pending.release))
        log.info("verify_resumed", release=pending.release)
        try:
            await self.activator.verify_or_roll_back(attempt, pending)
            attempt.result = AttemptResult.SUCCESS
        except CoordinatorError as e:
            await self._failed(attempt, e, reading)
            if isinstance(e, RolledBack):
                await self.steps.prune(attempt)
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(attempt, reading, pending.back_to)
        return attempt

    async def _failed(self, attempt: Attempt, e: CoordinatorError, reading: MarkerReading) -> None:
        """Record a failed attempt; a permanent failure blocks these marker bytes until they change."""
        attempt.result = AttemptResult.ROLLED_BACK if isinstance(e, RolledBack) else AttemptResult.FAILED
        attempt.error = e.as_dict()
        permanent = failure_blocks_marker(reading.request, attempt.tag, e.retryable)
        if permanent:
            self.state.failed_marker = reading.digest
            self.state.failed_error = attempt.error
            await self.activator.save_state()
        log.error(
            "deploy_failed",
            **present(
                **{**e.as_dict(), "tag": attempt.tag, "request_id": attempt.request_id, "retryable": not permanent}
            ),
        )

    def _notify(self, attempt: Attempt, previous_current: str | None) -> None:
        """Queue the notification of a finished attempt (a deploy, or a stage: its journal entry says)."""
        ctx = self.store.hook_context(
            attempt.tag, attempt.sha or "", attempt.release, previous_current, attempt.request_id
        )
        self.notifier.submit(attempt.journal_entry(), ctx)

    async def _finish(self, attempt: Attempt, reading: MarkerReading, previous_current: str | None) -> None:
        """Journal a finished attempt, queue its notification, forget a cleared failure, and publish
        the resulting state."""
        try:
            await self.reporter.finish(attempt)
        finally:
            self._notify(attempt, previous_current)
        if attempt.result is AttemptResult.SUCCESS and self.state.failed_marker is not None:
            self.state.failed_marker = None
            self.state.failed_error = None
            await self.activator.save_state()
        current = await self.store.current()
        await self.stager.forget_staged(current)  # deployed: staged no more
        await self.reporter.publish(attempt.result.status_state, reading, current)

    # ------------------------------------------------------------------ superseding

    @contextlib.contextmanager
    def _supersedable(self, req: DeployRequest, digest: str | None) -> Iterator[anyio.CancelScope]:
        """A cancel scope that :meth:`check_superseded` cancels when a newer marker asks for another
        release. Only fetch, prepare and build run inside one; the pre-swap command (a migration is
        not stopped halfway for a newer marker), the swap and the reload never do."""
        scope = anyio.CancelScope()
        self._supersede_scope, self._inflight, self._inflight_digest = scope, req, digest
        try:
            with scope:
                yield scope
        finally:
            self._supersede_scope = None
            self._inflight = self._inflight_digest = None

    async def ready_spare(self, woken: Callable[[], bool] = lambda: False) -> None:
        """Idle: ready the spare for the next deploy (:mod:`coordinator.spare`), unless ``woken`` says
        a hint came; a marker change cancels it (:meth:`check_superseded`). Never raises but a cancel."""
        settled = (self.state.reloaded, self.store.generation)
        if settled == self._spare_settled:  # nothing deployed, published or pruned since the last pass
            return
        try:
            reading, (current, meta) = await anyio.to_thread.run_sync(self._look_spare)
            digest = self._or_followed(reading).digest
            scope = anyio.CancelScope()
            self._spare_scope, self._spare_digest = scope, digest
            try:
                if woken():
                    return
                with scope:
                    await self.spare.ready((meta.tag, meta.sha) if meta is not None and meta.name == current else None)
                if not scope.cancelled_caught:
                    self._spare_settled = settled
            finally:
                self._spare_scope = self._spare_digest = None
        except Exception:  # a bug or a volume error must not take the daemon down: the slot is tried again
            log.exception("spare_crashed")

    async def check_superseded(self) -> None:
        """Called on every watch event: cancel a deploy not yet swapped if the marker asks for another,
        or if deploys were paused meanwhile (it starts again after ``resume``); cancel the spare's
        readying when the marker changed."""
        spare = self._spare_scope
        if spare is not None:
            if (await self.read_marker()).digest != self._spare_digest and spare is self._spare_scope:
                log.info("spare_interrupted", reason="the marker changed")
                spare.cancel()
            return
        if self.stager.staging:  # a marker change cancels a stage (deploys come first)
            await self.stager.check_superseded((await self.read_marker()).digest)
            return
        scope, inflight = self._supersede_scope, self._inflight
        if scope is None or inflight is None:
            return
        if await self.read_pause() is not None:
            if scope is self._supersede_scope:
                log.info("deploy_paused", tag=inflight.tag)
                scope.cancel()
            return
        reading = await self.read_marker()
        if reading.request is None or reading.digest == self._inflight_digest:
            return
        new = reading.request
        if (new.tag, new.sha) != (inflight.tag, inflight.sha) and scope is self._supersede_scope:
            log.info("superseding", old_tag=inflight.tag, new_tag=new.tag)
            scope.cancel()

    async def publish_stopped(self) -> None:
        await self.reporter.publish_stopped()
