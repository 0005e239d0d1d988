"""What coordinator remembers on disk, in ``ROOT/.coordinator/``, and the status file it publishes.

* ``state.json`` (replaced atomically): which release was last reloaded, the pending reload being
  done (so a restart after a crash reloads exactly once), the previous release (for rollback) and
  the last permanent failure (so a broken marker is not retried until it changes, even across
  restarts).
* ``journal.jsonl`` (append-only, one JSON object per line): every attempt with its result, phases
  and request id: the deploy history. Bounded: rotated to ``journal.jsonl.1`` at 4 MiB.
* ``releases/<name>.json``: metadata of each published release (tag, sha, time, result).
* the status file (default ``ROOT/deploy.status.json``), replaced atomically on every change; its
  fields are documented in the README.

All functions block; async callers run them in a worker thread.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from coordinator.fsutil import atomic_write, fsync_dir
from coordinator.records import JournalEntry
from coordinator.statefile import ReleaseMeta, State

__all__ = [
    "append_journal",
    "iso",
    "load_state",
    "parse_iso",
    "read_journal",
    "read_json",
    "read_release_meta",
    "save_state",
    "write_json",
    "write_release_meta",
]

log = structlog.get_logger("coordinator")

_JSON_MAX_BYTES = 1 << 20
#: the journal is rotated (one older generation kept) once it reaches this size: about 8,000 attempts
JOURNAL_MAX_BYTES = 4 << 20


def iso(ts: float | None = None) -> str:
    """An RFC 3339 UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat(timespec="milliseconds")


def parse_iso(text: object) -> float | None:
    """Epoch seconds from a timestamp as :func:`iso` writes it (a naive one is taken as UTC), or None."""
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


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


def load_state(path: Path) -> State:
    """``state.json`` (an empty state when it is missing or unreadable)."""
    return State.from_json(read_json(path) or {})


def save_state(path: Path, state: State, *, durable: bool = True) -> None:
    write_json(path, state.to_json(), durable=durable)


def append_journal(path: Path, entry: JournalEntry | Mapping[str, object]) -> None:
    """Append one line to the journal and fsync it. A torn last line (a crash mid-append) is ended
    first, so the new entry stays readable.

    The journal is bounded: once it holds ``JOURNAL_MAX_BYTES`` it is renamed to ``<name>.1`` (replacing
    the generation before) and a new one is started, so at most two generations are ever on disk. A
    symlink planted at the journal's name is replaced by a new file, never written through. When the
    file was created (first entry, or after a rotation) its directory is fsynced too, so the new name
    survives a power loss with the entry.
    """
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd, created = _open_journal(path)
    try:
        size = os.fstat(fd).st_size
        if size >= JOURNAL_MAX_BYTES:
            os.replace(path, _rotated(path))
            os.close(fd)
            fd = -1
            fd, _ = _open_journal(path)
            created = True
            size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
        if created:
            fsync_dir(path.parent)
    except OSError as e:
        if e.filename is None:  # a failed write or fsync: say which file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def _open_journal(path: Path) -> tuple[int, bool]:
    """An fd of the journal opened for appending, and whether this call created the file."""
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    created = False
    try:
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        log.warning("journal_symlink_replaced", path=str(path), target=_readlink(path))
        path.unlink()  # the link only, never its target
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        created = True
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "the journal is not a regular file", str(path))
    return fd, created


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def read_journal(path: Path, limit: int = 1000) -> list[dict[str, Any]]:
    """The last ``limit`` journal entries, oldest first; unreadable lines (a torn last line) skipped.

    Reads from the end of the file (and of the generation before, if needed), so memory and time
    follow ``limit``, not the journal's size. A symlink or non-regular file is read as empty.
    """
    lines = _tail_lines(path, limit)
    if len(lines) < limit:
        lines = _tail_lines(_rotated(path), limit - len(lines)) + lines
    out: list[dict[str, Any]] = []
    for ln in lines:
        try:
            obj = json.loads(ln)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


_TAIL_BLOCK = 64 * 1024


def _tail_lines(path: Path, limit: int) -> list[bytes]:
    """The last ``limit`` non-empty lines of ``path``, read backwards in blocks (blocking)."""
    if limit <= 0:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return []
        end = st.st_size
        blocks: list[bytes] = []
        newlines = 0
        while end > 0 and newlines <= limit:
            start = max(0, end - _TAIL_BLOCK)
            block = os.pread(fd, end - start, start)
            blocks.append(block)
            newlines += block.count(b"\n")
            end = start
    except OSError:
        return []
    finally:
        os.close(fd)
    segments = b"".join(reversed(blocks)).split(b"\n")
    if end > 0:
        segments = segments[1:]  # what precedes the first newline read may be cut by the block boundary
    return [ln for ln in segments if ln.strip()][-limit:]


def write_release_meta(meta_dir: Path, meta: ReleaseMeta, *, app_facing: bool = False) -> None:
    """Write ``<meta_dir>/<name>.json``. The app-facing copy next to the release directory has only
    ``name``, ``tag``, ``sha``, ``created`` and ``created_at`` (no bookkeeping such as ``ok``, ``built``,
    ``shared``); ``signer`` is written only when the release was verified."""
    body = {**asdict(meta), "created_at": iso(meta.created)}
    if meta.signer is None:
        body.pop("signer")
    if app_facing:
        for key in ("ok", "built", "shared", "build_changes"):
            body.pop(key)
    write_json(meta_dir / f"{meta.name}.json", body)


def read_release_meta(meta_dir: Path, name: str) -> ReleaseMeta | None:
    raw = read_json(meta_dir / f"{name}.json")
    return ReleaseMeta.from_json(raw) if raw else None
