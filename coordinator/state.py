"""What coordinator remembers on disk, in ``ROOT/.coordinator/``, and the status file it publishes.

* ``state.json`` (replaced atomically): which release was last reloaded, the pending reload being
  done (so a restart after a crash reloads exactly once), the previous release (for rollback) and
  the last permanent failure (so a broken marker is not retried until it changes, even across
  restarts).
* ``journal.jsonl`` (append-only, one JSON object per line): every attempt with its result, phases
  and request id: the deploy history.
* ``releases/<name>.json``: metadata of each published release (tag, sha, time, result).
* the status file (default ``ROOT/deploy.status.json``), replaced atomically on every change; its
  fields are documented in the README.

All functions block; async callers run them in a worker thread.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coordinator.fsutil import atomic_write

__all__ = [
    "PendingReload",
    "ReleaseMeta",
    "State",
    "append_journal",
    "iso",
    "load_state",
    "read_journal",
    "read_json",
    "read_release_meta",
    "save_state",
    "write_json",
    "write_release_meta",
]

STATUS_VERSION = 1
_JSON_MAX_BYTES = 1 << 20


def iso(ts: float | None = None) -> str:
    """An RFC 3339 UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat(timespec="milliseconds")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path`` (not following a final symlink), or None if missing or invalid."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return None
    try:
        data = os.read(fd, _JSON_MAX_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def write_json(path: Path, obj: dict[str, Any], *, durable: bool = True) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), durable=durable)


@dataclass(slots=True)
class PendingReload:
    """A reload that was started but not yet recorded as done: ``token`` identifies it (for the
    touch strategy, the whole-second mtime written to the reload file)."""

    release: str
    token: int | None = None


@dataclass(slots=True)
class State:
    reloaded: str | None = None
    previous: str | None = None
    pending: PendingReload | None = None
    failed_marker: str | None = None  # sha256 of the marker bytes whose request failed for good
    failed_error: dict[str, Any] | None = None
    last_reload_mtime: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_state(path: Path) -> State:
    raw = read_json(path) or {}
    pending = raw.get("pending")
    return State(
        reloaded=_str_or_none(raw.get("reloaded")),
        previous=_str_or_none(raw.get("previous")),
        pending=PendingReload(str(pending["release"]), pending.get("token"))
        if isinstance(pending, dict) and isinstance(pending.get("release"), str)
        else None,
        failed_marker=_str_or_none(raw.get("failed_marker")),
        failed_error=raw.get("failed_error") if isinstance(raw.get("failed_error"), dict) else None,
        last_reload_mtime=raw.get("last_reload_mtime") if isinstance(raw.get("last_reload_mtime"), int) else None,
        extra=dict(raw["extra"]) if isinstance(raw.get("extra"), dict) else {},
    )


def save_state(path: Path, state: State, *, durable: bool = True) -> None:
    write_json(path, state.to_dict(), durable=durable)


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def append_journal(path: Path, entry: dict[str, Any]) -> None:
    """Append one line to the journal and fsync it. A torn last line (a crash mid-append) is ended
    first, so the new entry stays readable."""
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_journal(path: Path, limit: int = 1000) -> list[dict[str, Any]]:
    """The last ``limit`` journal entries, oldest first; unreadable lines (a torn last line) skipped."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()[-limit:]
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for ln in lines:
        try:
            obj = json.loads(ln)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


@dataclass(frozen=True, slots=True)
class ReleaseMeta:
    name: str
    tag: str
    sha: str
    created: float
    ok: bool = True


def write_release_meta(meta_dir: Path, meta: ReleaseMeta, *, app_facing: bool = False) -> None:
    """Write ``<meta_dir>/<name>.json``. The app-facing copy next to the release directory has only
    ``name``, ``tag``, ``sha``, ``created`` and ``created_at`` (no bookkeeping such as ``ok``)."""
    body = {**asdict(meta), "created_at": iso(meta.created)}
    if app_facing:
        body.pop("ok")
    write_json(meta_dir / f"{meta.name}.json", body)


def read_release_meta(meta_dir: Path, name: str) -> ReleaseMeta | None:
    raw = read_json(meta_dir / f"{name}.json")
    if not raw:
        return None
    try:
        return ReleaseMeta(
            name=str(raw["name"]),
            tag=str(raw["tag"]),
            sha=str(raw["sha"]),
            created=float(raw["created"]),
            ok=bool(raw.get("ok", True)),
        )
    except (KeyError, TypeError, ValueError):
        return None
