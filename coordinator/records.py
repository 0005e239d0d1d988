"""The on-disk contracts: one typed definition of every record coordinator writes and something else
reads, and the enums of its results and states.

* :class:`StatusRecord`: the status file (``ROOT/deploy.status.json``), written by the daemon
  (:mod:`coordinator.report`), read by ``coordinator status``/``deploy --wait`` (:mod:`coordinator.commands`,
  :mod:`coordinator.display`), by ``/readyz`` (:mod:`coordinator.probes`) and by people and scripts.
* :class:`AttemptRecord` / :class:`JournalEntry`: one deploy attempt, as shown in the status file's
  ``last_attempt``/``last_success`` and appended to ``.coordinator/journal.jsonl`` (``coordinator history``).
* :class:`~coordinator.statefile.ReleaseMeta` and :class:`~coordinator.statefile.State` (release
  metadata, ``.coordinator/state.json``): in :mod:`coordinator.statefile`.
* :class:`PauseRecord`: ``ROOT/deploy.pause``, written by ``coordinator pause`` (:mod:`coordinator.pause`),
  read by the daemon and shown in the status file's ``paused``.

The enums are :class:`~enum.StrEnum`: they are written to JSON as their plain values, and a value read
back is parsed with ``parse`` (None for anything unknown: a file written by a newer version, or by hand).
Readers never trust a file: every reader goes through ``.get`` and checks types, and the TypedDicts
tell mypy which keys exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal, NotRequired, Required, TypedDict, cast

__all__ = [
    "STATUS_VERSION",
    "AttemptAction",
    "AttemptRecord",
    "AttemptResult",
    "DesiredRef",
    "ErrorInfo",
    "FollowingRecord",
    "JournalEntry",
    "PauseRecord",
    "PhaseInfo",
    "ReleaseRef",
    "StageRecord",
    "StageState",
    "StagedRecord",
    "StatusRecord",
    "StatusState",
    "as_status",
]

#: the status file's format version (a reader refuses nothing, but may tell a user which it read)
STATUS_VERSION = 1


class AttemptResult(StrEnum):
    """How a deploy attempt ended (``running`` while it runs)."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"  # failed its health check after the swap; the previous release restored
    CANCELLED = "cancelled"  # superseded by a newer marker before the swap, or the daemon stopped

    @property
    def final(self) -> bool:
        return self is not AttemptResult.RUNNING

    @property
    def failed(self) -> bool:
        """The attempt did not deliver its release (``run --once`` exits 1, ``deploy --wait`` fails)."""
        return self in (AttemptResult.FAILED, AttemptResult.ROLLED_BACK)

    @property
    def status_state(self) -> StatusState:
        """The daemon's state once an attempt with this result is over (cancelled: the next one runs)."""
        return _STATE_AFTER[self]

    @classmethod
    def parse(cls, value: object) -> AttemptResult | None:
        return cls(value) if isinstance(value, str) and value in cls._value2member_map_ else None


class AttemptAction(StrEnum):
    """What an attempt did: a deploy (the marker), or a stage (``ROOT/stage.request``: built and
    published, never swapped). Journal lines written before stages existed have none: a deploy."""

    DEPLOY = "deploy"
    STAGE = "stage"

    @classmethod
    def parse(cls, value: object) -> AttemptAction | None:
        return cls(value) if isinstance(value, str) and value in cls._value2member_map_ else None


class StageState(StrEnum):
    """Where the stage request (``ROOT/stage.request``) stands, as the status file's ``stage.state``."""

    PENDING = "pending"  # deploys come first: waits until the marker's request is converged
    STAGING = "staging"  # being fetched, prepared, built and published
    STAGED = "staged"  # its release was staged (and may have been deployed since)
    CURRENT = "current"  # its release was already current: nothing to stage
    FAILED = "failed"  # the last attempt for this request failed
    INVALID = "invalid"  # the stage request was refused

    @classmethod
    def parse(cls, value: object) -> StageState | None:
        return cls(value) if isinstance(value, str) and value in cls._value2member_map_ else None


class StatusState(StrEnum):
    """The daemon's state, as the status file's ``state``."""

    WAITING = "waiting"
    DEPLOYING = "deploying"
    IDLE = "idle"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    INVALID = "invalid"
    STOPPED = "stopped"
    PAUSED = "paused"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @property
    def failed(self) -> bool:
        """The marker's request failed and waits for the marker to change."""
        return self in (StatusState.FAILED, StatusState.ROLLED_BACK)

    @classmethod
    def parse(cls, value: object) -> StatusState | None:
        return cls(value) if isinstance(value, str) and value in cls._value2member_map_ else None


_STATE_AFTER = {
    AttemptResult.RUNNING: StatusState.DEPLOYING,
    AttemptResult.SUCCESS: StatusState.IDLE,
    AttemptResult.FAILED: StatusState.FAILED,
    AttemptResult.ROLLED_BACK: StatusState.ROLLED_BACK,
    AttemptResult.CANCELLED: StatusState.DEPLOYING,
}

_DESCRIPTIONS = {
    StatusState.WAITING: "no marker yet",
    StatusState.DEPLOYING: "a deploy is in progress",
    StatusState.IDLE: "converged",
    StatusState.FAILED: "the last attempt for this marker failed",
    StatusState.ROLLED_BACK: "the release failed its health check; the previous one was restored",
    StatusState.INVALID: "the marker was refused",
    StatusState.STOPPED: "the daemon exited",
    StatusState.PAUSED: "deploys are paused until coordinator resume",
}


class ErrorInfo(TypedDict, total=False):
    """An error as logged and shown in the status file (:meth:`CoordinatorError.as_dict`). Errors may
    carry more structured fields than the ones named here."""

    kind: Required[str]
    message: Required[str]
    fix: str
    output: str  # the last lines of a build command's output
    rc: int
    tag: str
    repo: str
    release: str
    rolled_back_to: str
    rollback_verified: bool | None
    path: str
    option: str
    next_retry_at: str  # a fetch or ls-remote that failed is tried again at this time (back-off)
    signer: str  # a `signature` error: what signed the refused tag ("not signed", "lightweight tag", a key)


class ReleaseRef(TypedDict):
    """A release named in the status file: its directory name and what its metadata says (``signer``:
    who signed its tag, when it was verified; absent otherwise)."""

    release: str
    tag: str | None
    sha: str | None
    signer: NotRequired[str]


class DesiredRef(TypedDict):
    """What the marker asks for."""

    tag: str
    sha: str | None
    id: str | None


class PhaseInfo(TypedDict):
    """The phase of a deploy running now (status ``deploying``)."""

    name: str
    tag: str
    id: str | None
    started_at: str


class AttemptRecord(TypedDict):
    """One deploy attempt (status ``last_attempt``/``last_success``; a journal line adds ``event``),
    or one stage attempt (status ``stage.attempt``; ``action`` says which)."""

    action: str  # an AttemptAction value (absent from lines written before stages: a deploy)
    tag: str
    id: str | None
    sha: str | None
    release: str | None
    result: str  # an AttemptResult value
    error: ErrorInfo | None
    started_at: str
    finished_at: str | None
    duration_ms: float | None
    phases_ms: dict[str, float]
    signer: NotRequired[str]  # --verify-signatures: who signed the tag (absent when not verified)


class JournalEntry(AttemptRecord):
    """One line of ``journal.jsonl``."""

    event: Literal["attempt"]


class PauseRecord(TypedDict, total=False):
    """``ROOT/deploy.pause``: who paused deploys, when and why (``by`` is user@host, best effort).
    The status file's ``paused`` shows it; ``unreadable`` says why a pause file could not be read
    (it still pauses: see :mod:`coordinator.pause`)."""

    reason: Required[str]
    by: Required[str | None]
    pid: Required[int | None]
    at: Required[str | None]
    unreadable: str


class FollowingRecord(TypedDict):
    """The status file's ``following`` (``--follow``): the glob, the tag it chose (None: no tag matches,
    or the tags could not be listed yet) and why, when the daemon last asked for the tags (whether
    or not that listing succeeded), and the error of the last listing (with ``next_retry_at``) when
    the repository could not be reached: the tag is then the one the last good listing chose."""

    glob: str
    tag: str | None
    sha: str | None
    reason: str
    checked_at: str | None
    error: ErrorInfo | None


class StagedRecord(TypedDict):
    """The status file's ``staged``: the release kept staged (built and published, not current)."""

    tag: str
    release: str
    sha: str
    request_id: str | None
    at: str  # when it was staged


class StageRecord(TypedDict):
    """The status file's ``stage``: what ``ROOT/stage.request`` asks for and where it stands."""

    desired: DesiredRef | None  # None: the stage request was refused
    digest: str  # sha256 of its bytes (lets `stage --wait` match a refused request of its own)
    state: str  # a StageState value
    attempt: AttemptRecord | None  # the last stage attempt (running while staging)
    phase: PhaseInfo | None  # the phase running while staging
    error: ErrorInfo | None


class StatusRecord(TypedDict, total=False):
    """The status file. Every key is written each time (``updated_at`` by the writer, last)."""

    version: int
    state: str  # a StatusState value
    pid: int
    desired: DesiredRef | None
    marker_error: ErrorInfo | None
    marker_digest: str | None  # sha256 of the marker bytes last read (None: no marker)
    current: ReleaseRef | None
    previous: ReleaseRef | None
    reloaded: str | None  # the release whose reload is recorded as done
    last_attempt: AttemptRecord | None
    last_success: AttemptRecord | None
    phase: PhaseInfo | None
    error: ErrorInfo | None
    verify: bool  # the daemon checks a health URL after each reload (``deploy --wait`` then means served)
    paused: PauseRecord | None  # deploys are paused (ROOT/deploy.pause): by whom, when, why
    following: FollowingRecord | None  # --follow: the glob and the tag it chose (None: not following)
    stage: StageRecord | None  # ROOT/stage.request and where it stands (None: no stage request)
    staged: StagedRecord | None  # the release kept staged (None: none)
    updated_at: str


def as_status(raw: Mapping[str, Any]) -> StatusRecord:
    """A status file as read from disk (or built by hand in a test), typed for its keys. Nothing is
    checked: a reader still checks each value's type, as the file may hold anything."""
    return cast(StatusRecord, raw)
