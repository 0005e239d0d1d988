"""What the client commands do (deploy, stage, status, releases, rollback, history, pause, resume), as
plain functions that return data; :mod:`coordinator.cli` only parses arguments and prints. Waiting
for a request (``--wait``) is :mod:`coordinator.waiting`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from coordinator.exceptions import (
    ConfigError,
    CoordinatorError,
    LayoutError,
    PausedError,
)
from coordinator.fsutil import atomic_write, describe_os_error
from coordinator.layout import Layout, read_current
from coordinator.layout import list_releases as list_releases_on_disk
from coordinator.lock import lock_holder
from coordinator.marker import DeployRequest, new_request_id, validate_sha, validate_tag
from coordinator.pause import new_pause, remove_pause, write_pause
from coordinator.pause import read_pause as read_pause_file
from coordinator.records import (
    AttemptAction,
    AttemptResult,
    PauseRecord,
    StatusRecord,
    as_status,
)
from coordinator.state import iso, load_state, parse_iso, read_journal, read_json

__all__ = [
    "HistoryEntry",
    "ReleaseRow",
    "daemon_running",
    "list_releases",
    "pause",
    "paused_error",
    "read_history",
    "read_pause",
    "read_status",
    "request_deploy",
    "request_rollback",
    "request_stage",
    "require_known_root",
    "resume",
]


async def request_deploy(layout: Layout, tag: str, sha: str | None = None) -> DeployRequest:
    """Write the marker atomically (temp + rename) for ``tag`` with a fresh request id."""
    return await _write_request(layout.marker, "the marker", "check --root / --marker", tag, sha)


async def request_stage(layout: Layout, tag: str, sha: str | None = None) -> DeployRequest:
    """Write the stage request ``ROOT/stage.request`` as :func:`request_deploy` writes the marker."""
    return await _write_request(layout.stage_marker, "the stage request", "check --root", tag, sha)


async def _write_request(path: Path, what: str, fix: str, tag: str, sha: str | None) -> DeployRequest:
    req = DeployRequest(
        tag=validate_tag(tag),
        sha=validate_sha(sha) if sha else None,
        request_id=new_request_id(),
    )
    if not await anyio.Path(path.parent).is_dir():
        raise CoordinatorError(f"the directory of {what}, {path.parent}, does not exist", fix=fix)
    try:
        await anyio.to_thread.run_sync(atomic_write, path, req.to_json().encode())
    except OSError as e:  # a read-only or unwritable ROOT: one line with the fix, exit 2
        err = describe_os_error(e, retried=False)
        raise LayoutError(f"cannot write {what}: {err['message']}", fix=err.get("fix")) from e
    return req


async def read_pause(layout: Layout) -> PauseRecord | None:
    """The pause in effect on ROOT (None: not paused; an unreadable pause file still pauses)."""
    return await anyio.to_thread.run_sync(read_pause_file, layout.pause_file)


async def pause(layout: Layout, reason: str | None) -> tuple[PauseRecord, PauseRecord | None]:
    """Pause deploys: write the pause file atomically (a pause already in effect is replaced).
    Returns the pause written and the one it replaced (None: there was none)."""
    if not await anyio.Path(layout.root).is_dir():
        raise CoordinatorError(f"{layout.root} is not a directory", fix="check --root")
    record = new_pause(reason)

    def write() -> PauseRecord | None:
        before = read_pause_file(layout.pause_file)
        write_pause(layout.pause_file, record)
        return before

    try:
        before = await anyio.to_thread.run_sync(write)
    except OSError as e:  # a directory planted there, a read-only ROOT: one line with the fix, exit 2
        err = describe_os_error(e, retried=False)
        raise LayoutError(f"cannot write the pause file: {err['message']}", fix=err.get("fix")) from e
    return record, before


async def resume(layout: Layout) -> PauseRecord | None:
    """Resume deploys: remove the pause file. Returns the pause removed (None: deploys were not paused)."""
    try:
        return await anyio.to_thread.run_sync(remove_pause, layout.pause_file)
    except IsADirectoryError as e:
        raise LayoutError(
            f"{layout.pause_file} is a directory, not a pause file; deploys stay paused",
            fix=f"look inside, then remove it by hand (rm -r {layout.pause_file})",
        ) from e
    except OSError as e:
        err = describe_os_error(e, retried=False)
        raise LayoutError(f"cannot remove the pause file: {err['message']}", fix=err.get("fix")) from e


def paused_error(layout: Layout, req: DeployRequest, record: PauseRecord) -> PausedError:
    """Exit 6 of ``deploy --wait``/``rollback --wait``: who paused, when, why, and how to resume."""
    from coordinator.display import describe_pause

    return PausedError(
        f"deploys are paused on {layout.root} ({describe_pause(record)}); the request for {req.tag} "
        f"(id {req.request_id}) is saved and deploys after resume",
        fix=f"resume with `coordinator resume --root {layout.root}`; follow it with "
        f"`coordinator status --root {layout.root}`",
    )


async def require_known_root(layout: Layout) -> None:
    """Raise (exit 1) when ROOT has never seen a coordinator (no ``.coordinator/`` directory): a
    wrong ``--root`` must not read as "no releases yet"."""
    if await anyio.Path(layout.state_dir).is_dir():
        return
    what = "does not exist" if not await anyio.Path(layout.root).exists() else "has never been used by coordinator"
    raise CoordinatorError(
        f"{layout.root} {what} (no {layout.state_dir.name}/ directory)",
        fix=f"check --root, or start `coordinator run --root {layout.root}` on it first",
    )


async def daemon_running(layout: Layout) -> bool:
    """Whether a coordinator holds ROOT's lock now (tested without taking it from anyone)."""
    running, _pid = await anyio.to_thread.run_sync(lock_holder, layout.lock_file)
    return running


async def read_status(layout: Layout) -> StatusRecord | None:
    """The status file, or None when it is missing or not a JSON object."""
    raw = await anyio.to_thread.run_sync(read_json, layout.status_file)
    return None if raw is None else as_status(raw)


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    name: str
    tag: str | None
    sha: str | None
    created: float | None
    current: bool
    previous: bool
    staged: bool = False  # built and published by `coordinator stage`, not deployed yet
    signer: str | None = None  # who signed its tag, as verified when it was built (--verify-signatures)

    def as_json(self) -> dict[str, Any]:
        """``releases --json``: one release (``created_at`` UTC RFC 3339, null when unknown)."""
        return {
            "release": self.name,
            "tag": self.tag,
            "sha": self.sha,
            "created_at": iso(self.created) if self.created else None,
            "current": self.current,
            "previous": self.previous,
            "staged": self.staged,
            "signer": self.signer,
        }


def _list_releases(layout: Layout) -> list[ReleaseRow]:
    state = load_state(layout.state_file)
    try:
        current = read_current(layout.root)
    except CoordinatorError:
        current = None
    rows = [
        ReleaseRow(
            name=r.name,
            tag=r.tag,
            sha=r.sha,
            created=r.created if r.known else None,
            current=r.name == current,
            previous=r.name == state.previous,
            staged=state.staged is not None and r.name == state.staged.release,
            signer=r.signer,
        )
        for r in list_releases_on_disk(layout)
    ]
    rows.sort(key=lambda r: (r.created or 0.0, r.name), reverse=True)
    return rows


async def list_releases(layout: Layout) -> list[ReleaseRow]:
    """Releases on disk, newest first, with current, previous and staged marked."""
    return await anyio.to_thread.run_sync(_list_releases, layout)


async def request_rollback(layout: Layout) -> DeployRequest:
    """Make the previous release desired (by tag and sha) by writing the marker."""
    rows = await list_releases(layout)
    prev = next((r for r in rows if r.previous), None)
    if prev is None or prev.tag is None or prev.sha is None:
        raise CoordinatorError(
            "there is no previous release to roll back to",
            fix="deploy a tag explicitly with `coordinator deploy TAG`",
        )
    return await request_deploy(layout, prev.tag, prev.sha)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One past deploy attempt from the journal; fields the line lacks (or has with the wrong type)
    are None, and ``raw`` is the line as written (with any fields this version does not know)."""

    started: float | None  # epoch seconds
    finished: float | None
    tag: str | None
    sha: str | None
    release: str | None
    result: AttemptResult | None  # None: missing, or a result this version does not know
    duration_ms: float | None
    phases_ms: dict[str, float]
    request_id: str | None
    error: str | None  # "kind: message"
    raw: dict[str, Any]
    action: AttemptAction = AttemptAction.DEPLOY  # a line written before stages existed: a deploy
    signer: str | None = None  # --verify-signatures: who signed the tag

    @classmethod
    def from_journal(cls, raw: dict[str, Any]) -> HistoryEntry:
        def text(key: str) -> str | None:
            v = raw.get(key)
            return v if isinstance(v, str) and v else None

        def number(v: object) -> float | None:
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        phases = raw.get("phases_ms")
        phases_ms = (
            {str(k): float(v) for k, v in phases.items() if number(v) is not None} if isinstance(phases, dict) else {}
        )
        err = raw.get("error")
        error: str | None = None
        if isinstance(err, dict):
            kind, message = err.get("kind"), err.get("message")
            error = f"{kind}: {message}" if isinstance(kind, str) and kind else str(message or "unknown error")
        elif isinstance(err, str) and err:
            error = err
        return cls(
            started=parse_iso(raw.get("started_at")),
            finished=parse_iso(raw.get("finished_at")),
            tag=text("tag"),
            sha=text("sha"),
            release=text("release"),
            result=AttemptResult.parse(raw.get("result")),
            duration_ms=number(raw.get("duration_ms")),
            phases_ms=phases_ms,
            request_id=text("id"),
            error=error,
            raw=raw,
            action=AttemptAction.parse(raw.get("action")) or AttemptAction.DEPLOY,
            signer=text("signer"),
        )


def _read_history(layout: Layout, limit: int | None) -> list[HistoryEntry]:
    want = sys.maxsize if limit is None else limit
    while True:  # read the journal's tail, more of it while lines that are not attempts crowd it
        lines = read_journal(layout.journal, want)
        entries = [e for e in lines if e.get("event", "attempt") == "attempt"]
        if limit is None or len(entries) >= limit or len(lines) < want:
            break
        want *= 4
    newest = entries[::-1] if limit is None else entries[: -limit - 1 : -1]
    return [HistoryEntry.from_journal(e) for e in newest]


async def read_history(layout: Layout, limit: int | None = None) -> list[HistoryEntry]:
    """Past deploy attempts from the journal, newest first (at most ``limit``). A torn last line
    (a crash mid-append) and lines that are not JSON objects are skipped; unknown fields are kept
    in ``raw`` only."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {limit}", fix="pass --limit N with N >= 1")
    return await anyio.to_thread.run_sync(_read_history, layout, limit)
