"""Blocking filesystem primitives: atomic writes, atomic symlink swaps, fsync, safe removal.

Everything here blocks; async code calls it through ``anyio.to_thread.run_sync``. The rules:

* a file is replaced by writing a temporary file next to it (``O_EXCL | O_NOFOLLOW``), fsyncing it,
  renaming it over the old name and fsyncing the directory that holds the new name;
* a symlink is replaced by creating a temporary symlink and renaming it over the old one: a reader
  never finds the name missing (unlike ``unlink`` + ``symlink``, which is what BusyBox ``ln -sfn``
  does);
* a tree is removed by first renaming it to a hidden name, so a half-deleted directory never shows
  under its real name, and ``shutil.rmtree`` never follows symlinks planted inside it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path

from coordinator.failpoints import failpoint
from coordinator.records import ErrorInfo

__all__ = [
    "DIR_NOFOLLOW",
    "atomic_write",
    "describe_os_error",
    "fsync_dir",
    "is_real_dir",
    "remove_tree",
    "swap_symlink",
    "sync_tree",
    "temp_name",
]

#: open(2) flags for a directory of a release tree, walked one component at a time: never through a symlink
DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_libc: ctypes.CDLL | None
try:
    # the process's own symbols (libc included): ctypes.util.find_library("c") would run /sbin/ldconfig
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not on glibc/musl
    _libc = None


def temp_name(prefix: str) -> str:
    """A hidden, unique name for a temporary sibling: ``.<prefix>.tmp-<pid>-<random>``."""
    return f".{prefix}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and creations inside it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, dir fsync).

    With ``durable=False`` the fsyncs are skipped: readers still see the old or the new content,
    never a mix, and a kill -9 loses nothing (the page cache survives the process); only a power
    loss may bring back the old content.
    """
    tmp = path.parent / temp_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed write or fsync: say which file (the status error shows it)
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def swap_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` by renaming a new temporary symlink over it, then fsync its dir."""
    tmp = link.parent / temp_name(link.name)
    os.symlink(target, tmp)
    failpoint("after-temp-link")
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    failpoint("after-swap")
    fsync_dir(link.parent)
    failpoint("after-swap-fsync")


def sync_tree(path: Path) -> None:
    """Flush a freshly written tree to disk.

    Uses Linux ``syncfs(2)`` on the tree's filesystem: one call flushes every file and directory of
    the release, which is far cheaper than one ``fsync`` per file for thousands of files. Falls back to
    fsyncing every file and directory where ``syncfs`` is missing.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc is not None and hasattr(_libc, "syncfs") and _libc.syncfs(fd) == 0:
            return
    finally:
        os.close(fd)
    for dirpath, _dirnames, filenames in os.walk(path):  # pragma: no cover - non-Linux fallback
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                continue
            ffd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(ffd)
            finally:
                os.close(ffd)
        fsync_dir(Path(dirpath))


def is_real_dir(path: Path) -> bool:
    """True when ``path`` is a directory and not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def remove_tree(path: Path) -> None:
    """Remove a directory tree without following symlinks and without exposing a half-deleted tree.

    A symlink or file at ``path`` is unlinked (its target is never touched). A directory is first
    renamed to a hidden ``.trash`` name in the same parent, then removed.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink(missing_ok=True)
        return
    trash = path
    if not path.name.startswith("."):
        trash = path.parent / temp_name(f"trash-{path.name}")
        os.rename(path, trash)
    try:
        shutil.rmtree(trash)
    except PermissionError:
        # A build may leave read-only directories behind; make them writable and try once more.
        for dirpath, dirnames, _files in os.walk(trash):
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if not os.path.islink(full):
                    os.chmod(full, 0o700)
        os.chmod(trash, 0o700)
        shutil.rmtree(trash)


#: what to do about an OSError the volume gave us, by errno. The daemon retries every such failure on
#: the next event or periodic resync, so the fix only has to remove the cause.
_OS_FIXES = {
    errno.ENOSPC: "free space on the volume (df -h {dir}; df -i {dir} for inodes)",
    errno.EDQUOT: "raise the disk quota or free space on the volume of {dir}",
    errno.EACCES: "make {path} (or the directory holding it) writable by the user coordinator runs as (uid {uid})",
    errno.EPERM: "make {path} writable by (and, for the reload file, owned by) uid {uid}",
    errno.EROFS: "the volume holding {path} is mounted read-only: mount it read-write",
    errno.ENOTDIR: "something that is not a directory is in the way at {path}: remove it",
    errno.EISDIR: "a directory is in the way at {path}: remove it",
    errno.EIO: "the volume reports I/O errors: check the disk (dmesg)",
}
_RETRY = "; coordinator retries on the next event or resync"


def describe_os_error(e: OSError, *, retried: bool = True) -> ErrorInfo:
    """An OSError from the volume as a status-file error: kind ``io``, the system's message with the
    path, and a fix naming what to do (free space, permissions, read-only mount...). ``retried``
    says whether the fix also tells that coordinator retries by itself."""
    path = ""
    for name in (e.filename2, e.filename) if e.errno in (errno.ENOTDIR, errno.EISDIR) else (e.filename,):
        if isinstance(name, (str, bytes, os.PathLike)):
            path = os.fsdecode(name)
            break
    reason = e.strerror or str(e)
    message = f"{reason}: {path}" if path else reason
    template = _OS_FIXES.get(e.errno or 0, "check the volume (df -h, dmesg, permissions)")
    where = path or "ROOT"
    fix = template.format(path=where, dir=os.path.dirname(path) or where, uid=os.geteuid())
    return {"kind": "io", "message": message, "fix": fix + (_RETRY if retried else "")}


_FILE_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_kind(mode: int) -> str:
    """What a file of this mode is, for an error message: `a regular file`, `a symlink`..."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a FIFO")
