"""The on-disk contracts: one typed definition of every record coordinator writes and something else
reads, and the enums of its results and states.

* :class:`StatusRecord`: the status file (``ROOT/deploy.status.json``), written by the daemon
  (:mod:`coordinator.report`), read by ``coordinator status``/``deploy --wait`` (:mod:`coordinator.commands`,
  :mod:`coordinator.display`), by ``/readyz`` (:mod:`coordinator.probes`) and by people and scripts.
* :class:`AttemptRecord` / :class:`JournalEntry`: one deploy attempt, as shown in the status file's
  ``last_attempt``/``last_success`` and appended to ``.coordinator/journal.jsonl`` (``coordinator history``).
* :class:`ReleaseMeta`: ``.coordinator/releases/<name>.json`` (and its app-facing copy
  ``releases/<name>.json``).
* :class:`State`: ``.coordinator/state.json``, read only by the daemon itself (after a restart).
* :class:`PauseRecord`: ``ROOT/deploy.pause``, written by ``coordinator pause`` (:mod:`coordinator.pause`),
  read by the daemon and shown in the status file's ``paused``.

The enums are :class:`~enum.StrEnum`: they are written to JSON as their plain values, and a value read
back is parsed with ``parse`` (None for anything unknown: a file written by a newer version, or by hand).
Readers never trust a file: every reader goes through ``.get`` and checks types, and the TypedDicts
tell mypy which keys exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal, Required, TypedDict, cast

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
    "PendingReload",
    "PendingVerify",
    "PhaseInfo",
    "ReleaseMeta",
    "ReleaseRef",
    "StageDone",
    "StageRecord",
    "StageState",
    "StagedRecord",
    "StagedRelease",
    "State",
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


class ReleaseRef(TypedDict):
    """A release named in the status file: its directory name and what its metadata says."""

    release: str
    tag: str | None
    sha: str | None


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


def _paths(raw: Any) -> tuple[str, ...] | None:
    """A list of path strings as a tuple; None for anything else (an unreadable list is unknown)."""
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        return None
    return tuple(raw)


@dataclass(frozen=True, slots=True)
class ReleaseMeta:
    """What coordinator knows about a published release.

    ``built``: a build command ran in it (None: unknown, written by a version before 0.2).
    ``build_changes``: when the build ran in the build sandbox (:mod:`coordinator.sandbox`), the paths
    of the release it replaced or removed (None: not built, or built in place). Incremental
    preparation shares files only with a release that was not built or was built in the sandbox, and
    then none at or under those paths (see :mod:`coordinator.prepare`).
    ``ok`` is False once it failed its health check (it is then pruned first and never kept).
    ``shared``: the shared paths linked into it (``--shared-dir``/``--shared-file``; empty in metadata
    written before they existed, when no release had any).
    """

    name: str
    tag: str
    sha: str
    created: float
    ok: bool = True
    built: bool | None = None
    shared: tuple[str, ...] = ()
    build_changes: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ReleaseMeta | None:
        try:
            built, shared, changes = raw.get("built"), raw.get("shared"), raw.get("build_changes")
            return cls(
                name=str(raw["name"]),
                tag=str(raw["tag"]),
                sha=str(raw["sha"]),
                created=float(raw["created"]),
                ok=bool(raw.get("ok", True)),
                built=built if isinstance(built, bool) else None,
                shared=tuple(p for p in shared if isinstance(p, str)) if isinstance(shared, list) else (),
                build_changes=_paths(changes),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(slots=True)
class PendingReload:
    """A reload that was started but not yet recorded as done: ``token`` identifies it (for the
    touch strategy, the whole-second mtime written to the reload file)."""

    release: str
    token: int | None = None


@dataclass(frozen=True, slots=True)
class PendingVerify:
    """``release`` was swapped in and reloaded but has not passed its health check yet. A daemon
    killed meanwhile checks it again at start and, if it fails, goes back to ``back_to``;
    ``previous_before`` is what ``previous`` was before the swap (restored by a rollback)."""

    release: str
    back_to: str | None = None
    previous_before: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"release": self.release, "back_to": self.back_to, "previous_before": self.previous_before}

    @classmethod
    def from_json(cls, raw: object) -> PendingVerify | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("release"), str):
            return None
        back_to, before = raw.get("back_to"), raw.get("previous_before")
        return cls(
            raw["release"],
            back_to if isinstance(back_to, str) else None,
            before if isinstance(before, str) else None,
        )


@dataclass(frozen=True, slots=True)
class StagedRelease:
    """The release kept staged (retention keeps it until it is current or another one is staged)."""

    tag: str
    release: str
    sha: str
    request_id: str | None
    at: str

    def to_json(self) -> StagedRecord:
        return {"tag": self.tag, "release": self.release, "sha": self.sha, "request_id": self.request_id, "at": self.at}

    @classmethod
    def from_json(cls, raw: object) -> StagedRelease | None:
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in ("tag", "release", "sha", "at")):
            return None
        rid = raw.get("request_id")
        return cls(raw["tag"], raw["release"], raw["sha"], rid if isinstance(rid, str) else None, raw["at"])


@dataclass(frozen=True, slots=True)
class StageDone:
    """The stage request whose bytes (``digest``) were handled for good: staged, already current, or
    failed permanently (``error``). It is not handled again until its bytes change."""

    digest: str
    state: StageState
    error: ErrorInfo | None = None

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "state": self.state.value, "error": self.error}

    @classmethod
    def from_json(cls, raw: object) -> StageDone | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
            return None
        state = StageState.parse(raw.get("state"))
        if state not in (StageState.STAGED, StageState.CURRENT, StageState.FAILED):
            return None
        error = raw.get("error")
        return cls(raw["digest"], state, cast(ErrorInfo, error) if isinstance(error, dict) else None)


@dataclass(slots=True)
class State:
    """``state.json``: what the daemon must remember across restarts.

    On disk, ``verify`` is ``extra["verify"]`` (where earlier versions kept it); other keys of
    ``extra`` are kept as they were read.
    """

    reloaded: str | None = None  # the release whose reload is recorded as done
    previous: str | None = None  # the release before it (kept by pruning; where `rollback` goes)
    pending: PendingReload | None = None
    failed_marker: str | None = None  # sha256 of the marker bytes whose request failed for good
    failed_error: ErrorInfo | None = None
    last_reload_mtime: int | None = None
    verify: PendingVerify | None = None
    staged: StagedRelease | None = None  # the release kept staged
    stage_done: StageDone | None = None  # the stage request handled for good
    extra: dict[str, Any] = field(default_factory=dict)

    def assign(self, other: State) -> None:
        """Take every field of ``other`` (the object is shared: replacing it would not be seen)."""
        for f in fields(State):
            setattr(self, f.name, getattr(other, f.name))

    def to_json(self) -> dict[str, Any]:
        extra = {k: v for k, v in self.extra.items() if k != "verify"}
        if self.verify is not None:
            extra["verify"] = self.verify.to_json()
        return {
            "reloaded": self.reloaded,
            "previous": self.previous,
            "pending": None if self.pending is None else {"release": self.pending.release, "token": self.pending.token},
            "failed_marker": self.failed_marker,
            "failed_error": self.failed_error,
            "last_reload_mtime": self.last_reload_mtime,
            "staged": None if self.staged is None else self.staged.to_json(),
            "stage_done": None if self.stage_done is None else self.stage_done.to_json(),
            "extra": extra,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> State:
        pending = raw.get("pending")
        extra = dict(raw["extra"]) if isinstance(raw.get("extra"), dict) else {}
        failed_error = raw.get("failed_error")
        mtime = raw.get("last_reload_mtime")
        token = pending.get("token") if isinstance(pending, dict) else None
        return cls(
            reloaded=_str_or_none(raw.get("reloaded")),
            previous=_str_or_none(raw.get("previous")),
            pending=PendingReload(pending["release"], token if isinstance(token, int) else None)
            if isinstance(pending, dict) and isinstance(pending.get("release"), str)
            else None,
            failed_marker=_str_or_none(raw.get("failed_marker")),
            failed_error=cast(ErrorInfo, failed_error) if isinstance(failed_error, dict) else None,
            last_reload_mtime=mtime if isinstance(mtime, int) and not isinstance(mtime, bool) else None,
            verify=PendingVerify.from_json(extra.pop("verify", None)),
            staged=StagedRelease.from_json(raw.get("staged")),
            stage_done=StageDone.from_json(raw.get("stage_done")),
            extra=extra,
        )


def _str_or_none(v: object) -> str | None:
    return v if isinstance(v, str) else None
