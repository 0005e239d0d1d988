"""Staged releases: ``ROOT/stage.request`` (written by ``coordinator stage``, same formats and
validation as the marker) asks for a release to be fetched, prepared, built and published without
being swapped in; a later ``deploy`` of that tag finds it on disk and only swaps and reloads.

:class:`Stager` handles the stage request once the deployer's reconcile found the marker's request
converged (deploys come first; :func:`coordinator.plan.plan_stage` decides, paused included: a stage
changes nothing served). A change of the marker cancels a stage in flight (:meth:`Stager.check_superseded`);
the stage resumes on the next reconcile. The staged release is remembered in ``state.json``
(``State.staged``) and kept by retention until it is deployed or another one is staged; the stage
request's bytes once handled for good (``State.stage_done``) are not handled again until they change.
Each stage attempt is journaled (``action: stage``) and shown in the status file's ``stage``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import replace

import anyio
import structlog

from coordinator.config import Config
from coordinator.exceptions import CoordinatorError, MarkerError
from coordinator.fsutil import describe_os_error
from coordinator.git import GitCache
from coordinator.logs import present
from coordinator.marker import DeployRequest, MarkerReading, read_marker
from coordinator.plan import Action, StageAction, StageObservation, StagePlan, Step, plan_stage, staged_after
from coordinator.records import AttemptAction, AttemptResult, ErrorInfo, StageRecord, StageState
from coordinator.report import Attempt, Reporter
from coordinator.state import iso
from coordinator.statefile import StageDone, StagedRelease, State

__all__ = ["Stager"]

log = structlog.get_logger("coordinator")

#: builds release ``name`` (attempt, tag, name, sha, current): DeploySteps.build_release's prepare, build, publish
BuildRelease = Callable[[Attempt, str, str, str, str | None], Awaitable[None]]


class Stager:
    """Converges the stage request: one instance per daemon, driven by the deployer's reconcile."""

    def __init__(
        self,
        config: Config,
        git: GitCache,
        reporter: Reporter,
        state: State,
        save_state: Callable[[], Awaitable[None]],
        build_release: BuildRelease,
        prune: Callable[[Attempt], Awaitable[None]],
        notify: Callable[[Attempt, str | None], None] | None = None,
    ) -> None:
        self.config = config
        self.path = config.layout.stage_marker
        self.git = git
        self.reporter = reporter
        self.state = state  # shared with the deployer
        self._save_state = save_state
        self._build_release = build_release
        self._prune = prune
        self._notify = notify  # --notify-command and --webhook-url, as for a deploy
        self.last_attempt: Attempt | None = None
        self._scope: anyio.CancelScope | None = None
        self._inflight: tuple[DeployRequest, str | None, str | None] | None = None  # request, its digest, marker's
        self._logged_invalid: str | None = None

    @property
    def staging(self) -> bool:
        """A stage attempt is in its cancellable part (fetch, prepare, build, publish)."""
        return self._scope is not None

    async def read_request(self) -> MarkerReading:
        return await read_marker(self.path, self.config.tag_pattern)

    async def forget_staged(self, current: str | None, on_disk: Iterable[str] | None = None) -> None:
        """Forget the staged release once it is current (deployed) or, with ``on_disk``, gone."""
        staged = self.state.staged
        after = staged_after(staged, current, on_disk)
        if staged is not None and after is None:
            log.info("staged_released", release=staged.release, deployed=staged.release == current)
            self.state.staged = None
            await self._save_state()

    # ------------------------------------------------------------------ reconciling

    async def reconcile(
        self, deploy_action: Action, deploy_digest: str | None, current: str | None, on_disk: frozenset[str]
    ) -> Attempt | None:
        """Handle the stage request once; returns the stage attempt made (None: nothing needed doing).
        The status file's ``stage`` and ``staged`` are published however it ends."""
        await self.forget_staged(current, on_disk)
        reading = await self.read_request()
        req = reading.request
        obs = StageObservation(
            request=req,
            digest=reading.digest,
            invalid=reading.error is not None,
            deploy_action=deploy_action,
            done=self.state.stage_done,
            current=current,
            releases=on_disk,
            has_build=bool(self.config.build_command),
        )
        p = plan_stage(obs)
        if p.action is StageAction.FETCH and req is not None:  # the cache first: it may know the tag
            obs = replace(obs, cached_sha=await self.git.resolve(req.tag))
            p = plan_stage(obs)
        if p.action is StageAction.INVALID and reading.error is not None and self._logged_invalid != reading.digest:
            self._logged_invalid = reading.digest
            log.error("stage_request_invalid", **reading.error.as_dict())
        attempt: Attempt | None = None
        if p.action is StageAction.CURRENT:
            assert reading.digest is not None
            await self._done(StageDone(reading.digest, StageState.CURRENT))
            log.info("stage_not_needed", **present(tag=p.target, reason=p.reason))
        elif p.action in (StageAction.FETCH, StageAction.STAGE):
            assert req is not None
            attempt = await self._attempt(obs, p, reading, req, deploy_digest)
        self.reporter.stage = self._record(reading, p)
        await self.reporter.publish_stage()
        return attempt

    def _record(self, reading: MarkerReading, p: StagePlan) -> StageRecord | None:
        """The status file's ``stage`` after this reconcile."""
        if reading.digest is None:
            return None
        req, done, last = reading.request, self.state.stage_done, self.last_attempt
        state, error = p.state, reading.error.as_dict() if reading.error is not None else None
        ours = req is not None and last is not None and last.request_id == req.request_id and last.tag == req.tag
        if done is not None and done.digest == reading.digest:
            state, error = done.state, done.error
        elif ours and last is not None and last.result.failed:
            state, error = StageState.FAILED, last.error  # a retryable failure: tried again next reconcile
        elif state is StageState.STAGING:  # cancelled by a deploy (or a newer stage request): again later
            state = StageState.PENDING
        return {
            "desired": {"tag": req.tag, "sha": req.sha, "id": req.request_id} if req is not None else None,
            "digest": reading.digest,
            "state": (state or StageState.PENDING).value,
            "attempt": last.record() if ours and last is not None else None,
            "phase": None,
            "error": error,
        }

    async def _done(self, done: StageDone) -> None:
        self.state.stage_done = done
        await self._save_state()

    async def _attempt(
        self, obs: StageObservation, p: StagePlan, reading: MarkerReading, req: DeployRequest, deploy_digest: str | None
    ) -> Attempt:
        """One stage attempt for ``req``: journaled however it ends."""
        assert reading.digest is not None
        attempt = self.reporter.start(Attempt(tag=req.tag, request_id=req.request_id, action=AttemptAction.STAGE))
        self.last_attempt = attempt
        record = self._record(reading, p)
        assert record is not None
        self.reporter.stage = {**record, "state": StageState.STAGING.value, "attempt": attempt.record()}
        log.info("stage_started", **present(tag=req.tag, sha=req.sha, request_id=req.request_id, current=obs.current))
        try:
            with self._cancellable(req, reading.digest, deploy_digest) as scope:
                if p.action is StageAction.FETCH:
                    async with self.reporter.phase(attempt, Step.FETCH):
                        sha = await self.git.fetch_tag(req.tag)
                    p = plan_stage(replace(obs, cached_sha=sha, fetched=True))
                if p.action is StageAction.ERROR:
                    raise MarkerError(p.reason, fix="fix the sha in the stage request, or the tag", tag=req.tag)
                attempt.sha, attempt.release = p.sha, p.target
                if Step.PREPARE in p.steps:
                    assert p.target is not None and p.sha is not None
                    await self._build_release(attempt, req.tag, p.target, p.sha, obs.current)
            if scope.cancelled_caught:
                attempt.result = AttemptResult.CANCELLED
            else:
                await self._succeeded(attempt, p, reading.digest, req)
        except CoordinatorError as e:
            await self._failed(attempt, e.as_dict(), reading.digest, permanent=not e.retryable)
        except OSError as e:
            await self._failed(attempt, describe_os_error(e), reading.digest, permanent=False)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.reporter.finish(attempt)
                finally:
                    if self._notify is not None:
                        self._notify(attempt, obs.current)
        attempt.log_end("stage_succeeded", "stage_cancelled")
        return attempt

    async def _succeeded(self, attempt: Attempt, p: StagePlan, digest: str, req: DeployRequest) -> None:
        """Record the outcome: the release staged (replacing the one staged before), or nothing to
        stage because it is current; then prune (the one staged before is an ordinary release now)."""
        if p.action is StageAction.CURRENT:
            await self._done(StageDone(digest, StageState.CURRENT))
            attempt.result = AttemptResult.SUCCESS
            return
        assert p.target is not None and p.sha is not None
        self.state.staged = StagedRelease(req.tag, p.target, p.sha, req.request_id, iso())
        await self._done(StageDone(digest, StageState.STAGED))
        attempt.result = AttemptResult.SUCCESS
        await self._prune(attempt)

    async def _failed(self, attempt: Attempt, error: ErrorInfo, digest: str, *, permanent: bool) -> None:
        """Record a failed stage attempt; a permanent failure is not retried until the request changes."""
        attempt.result = AttemptResult.FAILED
        attempt.error = error
        if permanent:
            await self._done(StageDone(digest, StageState.FAILED, error))
        log.error(
            "stage_failed",
            **present(**{**error, "tag": attempt.tag, "request_id": attempt.request_id, "retryable": not permanent}),
        )

    # ------------------------------------------------------------------ cancelling

    @contextlib.contextmanager
    def _cancellable(
        self, req: DeployRequest, digest: str | None, deploy_digest: str | None
    ) -> Iterator[anyio.CancelScope]:
        scope = anyio.CancelScope()
        self._scope, self._inflight = scope, (req, digest, deploy_digest)
        try:
            with scope:
                yield scope
        finally:
            self._scope = self._inflight = None

    async def check_superseded(self, deploy_digest: str | None) -> None:
        """Called on every watch event: cancel the stage in flight when the marker changed (deploys
        come first; the stage resumes on the next reconcile), or when the stage request now asks for
        another release (or was removed)."""
        scope, inflight = self._scope, self._inflight
        if scope is None or inflight is None:
            return
        req, digest, marker_digest = inflight
        if deploy_digest != marker_digest:
            log.info("stage_interrupted", tag=req.tag, reason="the marker changed: deploys come first")
            scope.cancel()
            return
        reading = await self.read_request()
        new = reading.request
        changed = reading.digest != digest and (new is None or (new.tag, new.sha) != (req.tag, req.sha))
        if changed and scope is self._scope:
            log.info("stage_interrupted", tag=req.tag, reason="the stage request changed")
            scope.cancel()
