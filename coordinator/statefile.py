"""The daemon's own records, written by it and read back by it (and shown by the client commands):

* :class:`ReleaseMeta`: ``.coordinator/releases/<name>.json`` (and its app-facing copy
  ``releases/<name>.json``);
* :class:`State`: ``.coordinator/state.json``, read only by the daemon itself (after a restart), with
  :class:`PendingReload`, :class:`PendingVerify`, :class:`StagedRelease` and :class:`StageDone`;
* :class:`CanaryRecord`: ``.coordinator/canary.json``, the canary running now (:mod:`coordinator.canary`);
* :class:`SpareRecord`: ``.coordinator/spare/spare.json``, the spare is ready (:mod:`coordinator.spare`).

The records other programs read (the status file, the journal, the pause file) and the enums are in
:mod:`coordinator.records`. A record read back is never trusted: ``from_json`` checks every type.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, cast

from coordinator.records import ErrorInfo, StagedRecord, StageState

__all__ = [
    "CanaryRecord",
    "PendingReload",
    "PendingVerify",
    "ReleaseMeta",
    "SpareRecord",
    "StageDone",
    "StagedRelease",
    "State",
]


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
    ``signer``: who signed its tag, as verified when it was built (``--verify-signatures``; None:
    not verified, and then absent from the file).
    """

    name: str
    tag: str
    sha: str
    created: float
    ok: bool = True
    built: bool | None = None
    shared: tuple[str, ...] = ()
    build_changes: tuple[str, ...] | None = None
    signer: str | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ReleaseMeta | None:
        try:
            built, shared, changes = raw.get("built"), raw.get("shared"), raw.get("build_changes")
            signer = raw.get("signer")
            return cls(
                name=str(raw["name"]),
                tag=str(raw["tag"]),
                sha=str(raw["sha"]),
                created=float(raw["created"]),
                ok=bool(raw.get("ok", True)),
                built=built if isinstance(built, bool) else None,
                shared=tuple(p for p in shared if isinstance(p, str)) if isinstance(shared, list) else (),
                build_changes=_paths(changes),
                signer=signer if isinstance(signer, str) else None,
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


@dataclass(frozen=True, slots=True)
class CanaryRecord:
    """The canary running now (``.coordinator/canary.json``, removed once it is stopped): ``token`` is
    the value of ``COORDINATOR_CANARY`` in its environment, which tells its processes from any other
    (a pid, or a process group id, may be reused, or belong to another host's processes); ``pgid`` is
    its process group (None until it started)."""

    token: str
    release: str
    started_at: str
    pgid: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "release": self.release, "started_at": self.started_at, "pgid": self.pgid}

    @classmethod
    def from_json(cls, raw: object) -> CanaryRecord | None:
        if not isinstance(raw, dict) or not all(
            isinstance(raw.get(k), str) for k in ("token", "release", "started_at")
        ):
            return None
        if not raw["token"]:
            return None
        pgid = raw.get("pgid")
        ok_pgid = isinstance(pgid, int) and not isinstance(pgid, bool) and pgid > 1
        return cls(raw["token"], raw["release"], raw["started_at"], pgid if ok_pgid else None)


@dataclass(frozen=True, slots=True)
class SpareRecord:
    """The spare is ready (``.coordinator/spare/spare.json``, written last, atomically): the release
    it was (``name``), the commit its tree and manifest now hold (``sha``, of ``tag``: the git cache
    keeps it), and what it was readied on, checked again before it is used: the tree directory's
    inode, the manifest's size and mtime."""

    name: str
    tag: str
    sha: str
    tree_ino: int
    manifest_size: int
    manifest_mtime_ns: int

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, raw: object) -> SpareRecord | None:
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in ("name", "tag", "sha")):
            return None
        ints = [raw.get(k) for k in ("tree_ino", "manifest_size", "manifest_mtime_ns")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            return None
        return cls(raw["name"], raw["tag"], raw["sha"], *cast(list[int], ints))


def _str_or_none(v: object) -> str | None:
    return v if isinstance(v, str) else None
