"""Linux inotify through ctypes: a non-blocking descriptor the event loop waits on.

No dependency and no thread: ``inotify_init1(IN_NONBLOCK | IN_CLOEXEC)`` gives a descriptor that
``anyio.wait_readable`` waits on; :meth:`Inotify.read` then reads it until ``EAGAIN``. libc is
found with ``ctypes.CDLL(None)`` (the symbols already loaded into the interpreter), which touches no
file: ``ctypes.util.find_library`` would run ``/sbin/ldconfig`` in a subprocess.

``inotify_add_watch`` resolves a path (it may wait on the filesystem): call it from a worker thread.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from pathlib import Path
from typing import NamedTuple

__all__ = ["AVAILABLE", "Event", "Inotify", "parse_events"]

IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

_HEADER = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name
_READ_SIZE = 64 * 1024  # whole events only; one is at most 16 + NAME_MAX + 1 bytes
_MAX_READS = 64  # per call: a writer that never stops must not keep the loop here


class Event(NamedTuple):
    """One inotify event: ``name`` is empty for an event on the watched directory itself."""

    wd: int
    mask: int
    cookie: int
    name: str


def parse_events(data: bytes) -> list[Event]:
    """The events packed in ``data`` (what a read of the descriptor returned)."""
    out: list[Event] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, pos)
        pos += _HEADER.size
        name = data[pos : pos + length].split(b"\0", 1)[0]
        pos += length
        out.append(Event(wd, mask, cookie, os.fsdecode(name)))
    return out


def _load() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for name in ("inotify_init1", "inotify_add_watch"):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_init1.restype = ctypes.c_int
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_add_watch.restype = ctypes.c_int
    return libc


_LIBC = _load()
#: inotify can be used here (Linux, libc has the calls)
AVAILABLE = _LIBC is not None


def _error(what: str, path: Path | None = None) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{what}: {os.strerror(errno)}", None if path is None else str(path))


class Inotify:
    """One inotify instance: a non-blocking, close-on-exec descriptor."""

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError("inotify is not available on this system")
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _error("inotify_init1")
        self.fd: int = fd

    def add_watch(self, path: Path, mask: int) -> int:
        """Watch ``path`` for ``mask``; returns the watch descriptor (blocking: resolves a path)."""
        assert _LIBC is not None
        wd: int = _LIBC.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise _error("inotify_add_watch", path)
        return wd

    def read(self) -> list[Event]:
        """The events queued now, read without blocking (until ``EAGAIN``)."""
        out: list[Event] = []
        for _ in range(_MAX_READS):
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                break
            out += parse_events(data)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
