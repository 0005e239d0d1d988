"""Telling the world what the daemon does: the status file, the journal, the phase log lines and the
metrics hooks. One :class:`Reporter` per daemon, used from the event loop only.

The status file is rewritten only when something in it changed. While a long deploy runs, each phase
is announced in it (``state: deploying`` with ``phase``) for ``deploy --wait``; those writes are hints,
not fsynced, and a failure to write one is ignored (the final status write reports errors). The swap,
reload and prune phases are not announced: they are short, and swap and reload are on the marker ->
reload path (a status write there costs about 2 ms of it).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import anyio
import structlog

from coordinator.exceptions import CoordinatorError
from coordinator.failpoints import failpoint
from coordinator.layout import Layout, read_current
from coordinator.logs import present
from coordinator.marker import MarkerReading
from coordinator.plan import Step, status_error
from coordinator.records import (
    STATUS_VERSION,
    AttemptAction,
    AttemptRecord,
    AttemptResult,
    DesiredRef,
    ErrorInfo,
    FollowingRecord,
    JournalEntry,
    PauseRecord,
    PhaseInfo,
    ReleaseRef,
    StageRecord,
    StatusRecord,
    StatusState,
)
from coordinator.state import append_journal, iso, read_journal, read_release_meta, write_json
from coordinator.statefile import State

__all__ = ["Attempt", "Reporter"]

log = structlog.get_logger("coordinator")

#: phases not announced in the status file while they run (see the module docstring)
_UNANNOUNCED_PHASES = frozenset({Step.SWAP, Step.RELOAD, Step.PRUNE})


@dataclass(slots=True)
class Attempt:
    """One deploy (or stage) attempt, as journaled and shown in the status file."""

    tag: str
    request_id: str | None
    sha: str | None = None
    release: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: AttemptResult = AttemptResult.RUNNING
    error: ErrorInfo | None = None
    phases: dict[str, float] = field(default_factory=dict)
    action: AttemptAction = AttemptAction.DEPLOY
    signer: str | None = None  # --verify-signatures: who signed the tag (verified, or recorded at build)

    @property
    def duration_ms(self) -> float | None:
        return round((self.finished - self.started) * 1000, 1) if self.finished else None

    def record(self) -> AttemptRecord:
        record: AttemptRecord = {
            "action": self.action.value,
            "tag": self.tag,
            "id": self.request_id,
            "sha": self.sha,
            "release": self.release,
            "result": self.result.value,
            "error": self.error,
            "started_at": iso(self.started),
            "finished_at": iso(self.finished) if self.finished else None,
            "duration_ms": self.duration_ms,
            "phases_ms": dict(self.phases),
        }
        if self.signer is not None:
            record["signer"] = self.signer
        return record

    def journal_entry(self) -> JournalEntry:
        """The attempt as a journal line (and as the ``--webhook-url`` payload)."""
        return {"event": "attempt", **self.record()}

    def log_end(self, succeeded: str, cancelled: str) -> None:
        """Log how the attempt ended, as event ``succeeded`` or ``cancelled`` (a failure is logged
        where it is caught, with its error)."""
        if self.result is AttemptResult.SUCCESS:
            log.info(
                succeeded,
                **present(
                    tag=self.tag,
                    sha=self.sha,
                    release=self.release,
                    request_id=self.request_id,
                    duration_ms=self.duration_ms,
                ),
            )
        elif self.result is AttemptResult.CANCELLED:
            log.info(cancelled, **present(tag=self.tag, release=self.release))


class Reporter:
    """Writes the status file and the journal, logs phases, and calls the metrics hooks."""

    def __init__(self, layout: Layout, state: State, *, verify: bool = False) -> None:
        self.layout = layout
        self.verify = verify  # a health URL is configured: written to the status file for `deploy --wait`
        self.state = state  # shared with the deployer: read here for `reloaded`, `previous`, `failed_error`
        self.last_attempt: Attempt | None = None
        self.last_success: AttemptRecord | None = None
        self.on_phase: Callable[[str, float], None] | None = None
        # called when an attempt starts (result "running") and again once it is finished and journaled
        self.on_attempt: Callable[[Attempt], None] | None = None
        self.paused: PauseRecord | None = None  # the pause in effect, as last read (the status's `paused`)
        self.following: FollowingRecord | None = None  # --follow: the status's `following`
        self.stage: StageRecord | None = None  # the stage request and where it stands: the status's `stage`
        self._status: StatusRecord = {}

    async def load(self) -> None:
        """Remember the last successful attempt in the journal (shown as ``last_success``)."""
        self.last_success = await anyio.to_thread.run_sync(self._last_journal_success)

    def _last_journal_success(self) -> AttemptRecord | None:
        for entry in reversed(read_journal(self.layout.journal, 200)):
            if entry.get("result") == AttemptResult.SUCCESS and entry.get("action", "deploy") == AttemptAction.DEPLOY:
                return cast(AttemptRecord, entry)  # as record() wrote it; shown as read
        return None

    # ------------------------------------------------------------------ attempts

    def start(self, attempt: Attempt) -> Attempt:
        if attempt.action is AttemptAction.DEPLOY:  # a stage attempt is shown in the status's `stage`
            self.last_attempt = attempt
        if self.on_attempt is not None:
            self.on_attempt(attempt)
        return attempt

    async def finish(self, attempt: Attempt) -> None:
        """Journal a finished attempt and tell the metrics (the caller publishes the status)."""
        if attempt.result is AttemptResult.RUNNING:
            attempt.result = AttemptResult.CANCELLED
        attempt.finished = time.time()
        entry = attempt.journal_entry()
        try:
            failpoint("before-journal")
            await anyio.to_thread.run_sync(append_journal, self.layout.journal, entry)
        finally:  # a journal that cannot be written (a full volume) must not leave the gauge stuck
            if self.on_attempt is not None:
                self.on_attempt(attempt)
        failpoint("after-journal")
        if attempt.result is AttemptResult.SUCCESS and attempt.action is AttemptAction.DEPLOY:
            self.last_success = attempt.record()

    # ------------------------------------------------------------------ phases

    @contextlib.asynccontextmanager
    async def phase(self, attempt: Attempt, step: Step) -> AsyncIterator[None]:
        """Time ``step`` of ``attempt``: announce it (see the module docstring), log and record its duration."""
        started = time.monotonic()
        try:
            if self._status and step not in _UNANNOUNCED_PHASES:
                if attempt.action is AttemptAction.STAGE:
                    await self._announce_stage_phase(attempt, step)
                else:
                    await self._announce_phase(attempt, step)
                started = time.monotonic()
            yield
        finally:
            self.phase_done(attempt, step, _ms(started))

    def phase_done(self, attempt: Attempt, step: Step, ms: float) -> None:
        """Record that ``step`` of ``attempt`` took ``ms`` (log, metrics, status) without announcing
        it: for the swap and reload phases, timed in the worker thread that does both."""
        attempt.phases[step.value] = ms
        if self._status.get("phase") is not None:
            self._status = {**self._status, "phase": None}
        if self.stage is not None and self.stage["phase"] is not None:
            self.stage = {**self.stage, "phase": None}
            self._status = {**self._status, "stage": self.stage}
        log.info(step.value, **present(duration_ms=ms, tag=attempt.tag, release=attempt.release))
        if self.on_phase is not None:
            self.on_phase(step.value, ms)

    async def _announce_phase(self, attempt: Attempt, step: Step) -> None:
        """Show the running phase (for `deploy --wait`): a copy of the last status with `phase` and the
        attempt in flight (its `phases_ms` are the phases done), written without fsync and without
        reading the volume (except after the swap, for `current`)."""
        live: StatusRecord = {
            **self._status,
            "state": StatusState.DEPLOYING.value,
            "marker_error": None,
            "error": None,
            "reloaded": self.state.reloaded,
            "last_attempt": attempt.record(),
            "phase": {"name": step.value, "tag": attempt.tag, "id": attempt.request_id, "started_at": iso()},
        }
        desired = live.get("desired")
        if desired is None or desired.get("id") != attempt.request_id or desired.get("tag") != attempt.tag:
            # a swap to a release on disk publishes nothing before it: the last status is older
            live["desired"] = {"tag": attempt.tag, "sha": None, "id": attempt.request_id}
        self._status = live
        after_swap = step in (Step.VERIFY, Step.ROLLBACK)
        previous = self.state.previous

        def write() -> StatusRecord:
            if after_swap:
                with contextlib.suppress(CoordinatorError):
                    live["current"] = self._release_ref(read_current(self.layout.root))
                live["previous"] = self._release_ref(previous)
            with contextlib.suppress(OSError):  # a hint only: the final status write reports errors
                write_json(self.layout.status_file, {**live, "updated_at": iso()}, durable=False)
            return live

        self._status = await anyio.to_thread.run_sync(write)

    async def _announce_stage_phase(self, attempt: Attempt, step: Step) -> None:
        """Show the running phase of a stage attempt in the status's ``stage`` (for `stage --wait`),
        written without fsync, like a deploy's."""
        if self.stage is None:
            return
        phase: PhaseInfo = {"name": step.value, "tag": attempt.tag, "id": attempt.request_id, "started_at": iso()}
        self.stage = {**self.stage, "attempt": attempt.record(), "phase": phase}
        live: StatusRecord = {**self._status, "stage": self.stage}
        self._status = live

        def write() -> None:
            with contextlib.suppress(OSError):  # a hint only: the final status write reports errors
                write_json(self.layout.status_file, {**live, "updated_at": iso()}, durable=False)

        await anyio.to_thread.run_sync(write)

    # ------------------------------------------------------------------ the status file

    def log_marker_error(self, reading: MarkerReading) -> None:
        """Log a refused marker once (not again on every resync while it stays the same)."""
        assert reading.error is not None
        if self._status.get("marker_digest") != reading.digest:
            log.error("marker_invalid", **reading.error.as_dict())

    def _release_ref(self, name: str | None) -> ReleaseRef | None:
        if not name:
            return None
        meta = read_release_meta(self.layout.meta_dir, name)
        ref: ReleaseRef = {"release": name, "tag": meta.tag if meta else None, "sha": meta.sha if meta else None}
        if meta is not None and meta.signer is not None:
            ref["signer"] = meta.signer
        return ref

    @property
    def published_state(self) -> StatusState | None:
        """The state last written to the status file (None before the first write)."""
        return StatusState.parse(self._status.get("state"))

    @property
    def published_error(self) -> ErrorInfo | None:
        """The error last written to the status file."""
        return self._status.get("error")

    async def publish(
        self,
        state: StatusState,
        reading: MarkerReading,
        current: str | None,
        error: ErrorInfo | None = None,
    ) -> None:
        """Write the status file if anything in it changed."""
        req = reading.request
        desired: DesiredRef | None = {"tag": req.tag, "sha": req.sha, "id": req.request_id} if req else None
        marker_error = reading.error.as_dict() if reading.error else None
        last = self.last_attempt
        previous = self.state.previous
        current_ref, previous_ref = await anyio.to_thread.run_sync(
            lambda: (self._release_ref(current), self._release_ref(previous))
        )
        status: StatusRecord = {
            "version": STATUS_VERSION,
            "state": state.value,
            "pid": os.getpid(),
            "desired": desired,
            "marker_error": marker_error,
            "marker_digest": reading.digest,
            "current": current_ref,
            "previous": previous_ref,
            "reloaded": self.state.reloaded,
            "last_attempt": last.record() if last else None,
            "last_success": self.last_success,
            "phase": None,
            "error": status_error(
                state,
                explicit=error,
                marker_error=marker_error,
                attempt_error=last.error if last else None,
                failed_error=self.state.failed_error,
            ),
            "verify": self.verify,
            "paused": self.paused,
            "following": self.following,
            "stage": self.stage,
            "staged": self.state.staged.to_json() if self.state.staged is not None else None,
        }
        if status == self._status:
            return
        self._status = status
        failpoint("before-status")
        await anyio.to_thread.run_sync(write_json, self.layout.status_file, {**status, "updated_at": iso()})
        failpoint("after-status")

    async def publish_stage(self, *, durable: bool = True) -> None:
        """Rewrite the last status with the stage request's progress (``stage``) and the staged release
        (``staged``), if they changed; nothing before the first status write."""
        if not self._status:
            return
        staged = self.state.staged.to_json() if self.state.staged is not None else None
        status: StatusRecord = {**self._status, "stage": self.stage, "staged": staged}
        if status == self._status:
            return
        self._status = status
        await anyio.to_thread.run_sync(
            lambda: write_json(self.layout.status_file, {**status, "updated_at": iso()}, durable=durable)
        )

    async def publish_stopped(self) -> None:
        if self._status:
            self._status = {**self._status, "state": StatusState.STOPPED.value}
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    write_json, self.layout.status_file, {**self._status, "updated_at": iso()}
                )


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
