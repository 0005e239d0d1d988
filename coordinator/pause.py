"""Pausing deploys: the pause file ``ROOT/deploy.pause`` (:attr:`Layout.pause_file`).

``coordinator pause`` writes it atomically (temp + rename + directory fsync) as a
:class:`~coordinator.records.PauseRecord`; ``coordinator resume`` removes it. While it exists the
daemon deploys nothing new (see :func:`coordinator.plan.plan`); being a file, a pause survives daemon
restarts.

Fail safe: only a missing file means "not paused". A pause file that cannot be read as a record (not
JSON, larger than :data:`MAX_PAUSE_BYTES`, a symlink, a directory, a FIFO, unreadable) still pauses,
with the reason :data:`UNREADABLE_REASON` and ``unreadable`` saying why: an operator who paused is
never surprised by a deploy.

A reason is cleaned, never refused (an incident is no time to argue with a pasted log line): control
and formatting characters become spaces and it is cut to :data:`MAX_REASON_CHARS` characters. A
reason read back from a file written by hand is cleaned the same way.

All functions here block; async callers run them in a worker thread.
"""

from __future__ import annotations

import errno
import getpass
import json
import os
import socket
import stat
import unicodedata
from pathlib import Path

from coordinator.fsutil import atomic_write, fsync_dir
from coordinator.records import PauseRecord
from coordinator.state import iso, parse_iso

__all__ = [
    "MAX_PAUSE_BYTES",
    "MAX_REASON_CHARS",
    "UNREADABLE_REASON",
    "clean_reason",
    "new_pause",
    "operator",
    "read_pause",
    "remove_pause",
    "write_pause",
]

#: a reason longer than this is cut (with an ellipsis)
MAX_REASON_CHARS = 500
#: a pause file larger than this is not read (it still pauses: "unreadable pause file")
MAX_PAUSE_BYTES = 64 * 1024
#: the reason shown for a pause file that cannot be read as a record
UNREADABLE_REASON = "unreadable pause file"
#: the reason shown when the record gives none
NO_REASON = "no reason given"


def clean_reason(text: str) -> str:
    """``text`` fit to show on one line: every control or formatting character (newlines, escape
    sequences, bidirectional overrides, NUL) a space, surrounding blanks stripped, at most
    :data:`MAX_REASON_CHARS` characters."""
    cleaned = "".join(
        " " if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") else c
        for c in text[: MAX_REASON_CHARS * 4]
    ).strip()
    if len(cleaned) > MAX_REASON_CHARS:
        cleaned = cleaned[: MAX_REASON_CHARS - 1].rstrip() + "…"
    return cleaned


def operator() -> str | None:
    """``user@host`` of whoever runs this process, best effort (None when neither is known)."""
    try:
        user: str | None = getpass.getuser()
    except (OSError, KeyError):  # no login name, no passwd entry (a container with a random uid)
        user = None
    try:
        host: str | None = socket.gethostname() or None
    except OSError:
        host = None
    if user is None and host is None:
        return None
    return f"{user or f'uid {os.getuid()}'}@{host or '?'}"


def new_pause(reason: str | None, now: float | None = None) -> PauseRecord:
    """The record ``coordinator pause`` writes, by this process now."""
    return {
        "reason": clean_reason(reason or "") or NO_REASON,
        "by": operator(),
        "pid": os.getpid(),
        "at": iso(now),
    }


def write_pause(path: Path, record: PauseRecord) -> None:
    """Write the pause file atomically and durably."""
    atomic_write(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def read_pause(path: Path) -> PauseRecord | None:
    """The pause in effect: None only when there is no pause file. Never raises."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        why = "it is a symlink" if e.errno == errno.ELOOP else (e.strerror or str(e))
        return _unreadable(why)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _unreadable("it is a directory" if stat.S_ISDIR(st.st_mode) else "it is not a regular file")
        data = os.read(fd, MAX_PAUSE_BYTES + 1)
    except OSError as e:
        return _unreadable(e.strerror or str(e))
    finally:
        os.close(fd)
    if len(data) > MAX_PAUSE_BYTES:
        return _unreadable(f"larger than {MAX_PAUSE_BYTES // 1024} KiB")
    try:
        raw = json.loads(data)
    except ValueError:
        return _unreadable("not valid JSON" if data.strip() else "empty")
    if not isinstance(raw, dict):
        return _unreadable("not a JSON object")
    reason, by, pid, at = raw.get("reason"), raw.get("by"), raw.get("pid"), raw.get("at")
    return {
        "reason": (clean_reason(reason) if isinstance(reason, str) else "") or NO_REASON,
        "by": clean_reason(by) or None if isinstance(by, str) else None,
        "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        "at": at if parse_iso(at) is not None else None,
    }


def _unreadable(why: str) -> PauseRecord:
    return {"reason": UNREADABLE_REASON, "by": None, "pid": None, "at": None, "unreadable": why}


def remove_pause(path: Path) -> PauseRecord | None:
    """Remove the pause file (a symlink planted there: the link only) and return the pause it held;
    None when there was none. Raises IsADirectoryError for a directory planted there (removed by
    hand: it may hold anything)."""
    record = read_pause(path)
    if record is None:
        return None
    try:
        path.unlink()  # a directory: IsADirectoryError (Linux)
    except FileNotFoundError:  # removed meanwhile (another resume): not paused any more either way
        return record
    fsync_dir(path.parent)
    return record
