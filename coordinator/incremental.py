"""The incremental path of :func:`coordinator.prepare.prepare_release`: a new release built from the
previous one, so that the files written follow the size of the change, not of the repository.

* the new tree is listed (``git diff-tree`` from the empty tree) and compared with the previous
  release's commit (``git diff-tree <old> <new>``);
* every directory of the new tree is created fresh (never linked, never reused);
* every file or symlink whose mode and blob are the same in both commits is hard-linked from the
  previous release, after checking that the previous copy is still what was published: the same
  type and permission bits as a checkout writes them (0644, 0755, symlink) and not modified since the
  previous release was published (mtime <= its creation time). A copy that fails the check is
  written fresh instead. So is every path at or under one of the previous release's shared paths
  (:attr:`~coordinator.prepare.PreviousRelease.shared`): there the previous release has a symlink
  into ``ROOT/shared`` (:mod:`coordinator.shared`), not the tag's content, even where the tag tracks
  a symlink too; and every path at or under one its build replaced or removed
  (:attr:`~coordinator.prepare.PreviousRelease.build_changes`);
* every other file (added, modified, mode or type changed) is written by ``git checkout-index`` from
  an index of the new tree, into a path where nothing exists yet, so it is always a new inode;
* submodules (gitlinks) become empty directories, as ``checkout-index -a`` makes them;
* the index used to write is left behind as the new release's manifest (the stat data of every file,
  which :mod:`coordinator.recycle` checks a retired release against): built from the previous
  release's manifest by ``git read-tree -i -m OLD NEW`` (a linked file is the same inode, so its stat
  data carries over; ctime aside, which the check ignores), the written files' stat data recorded by
  ``checkout-index -u``. Without a previous manifest (a release published before coordinator
  recorded them) the index is refreshed once instead, which reads every file.

The result holds exactly the new tree: nothing is copied from the previous release that the new
tree does not list (deleted paths, and files an app wrote into its release such as ``__pycache__``,
are simply never created), no symlink of either release is ever followed (directories are opened
with ``O_NOFOLLOW``), and no shared inode is ever written, truncated or chmodded: a published release
shares inodes with the new one and must stay immutable.

When it cannot promise that, :func:`prepare_incremental` gives up with the reason (:class:`Abandoned`:
``previous_commit_missing``, ``gitattributes_changed``, ``link_failed_<ERRNO>``,
``unknown_object_format``, ``unexpected_git_output``; see :mod:`coordinator.prepare`) and the caller
does a full checkout instead.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from coordinator.exceptions import GitError
from coordinator.fsutil import DIR_NOFOLLOW
from coordinator.git import GitCache
from coordinator.gittree import EMPTY_TREE

if TYPE_CHECKING:
    from coordinator.prepare import PreviousRelease

__all__ = ["SHA_RE", "Abandoned", "Incremental", "parse_raw", "prepare_incremental"]

#: a full commit id (SHA-1 or SHA-256)
SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
#: os.link errors that mean "this filesystem (or this file) cannot be shared": fall back to a full checkout
_LINK_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP})
#: bytes of path arguments per checkout-index call (far below ARG_MAX)
_ARGS_CHUNK = 128 * 1024
_GITLINK = b"160000"
#: what checkout-index writes under the umask 022 every git call runs with
_PERMS = {b"100644": 0o644, b"100755": 0o755}


@dataclass(frozen=True, slots=True)
class Incremental:
    """What the incremental path did (the counts of :class:`~coordinator.prepare.PrepareStats`)."""

    linked: int  # files and symlinks hard-linked from the previous release
    written: int  # files and symlinks written as new inodes
    deleted: int  # paths of the previous commit that the new one no longer has
    rewritten: int  # of ``written``: unchanged paths whose previous copy failed the check
    manifest: bool = False  # ``index_file`` was left behind with the stat data of every file


@dataclass(frozen=True, slots=True)
class Abandoned:
    """The incremental path gave up partway: ``dest`` may hold part of the tree (hard links included)."""

    reason: str
    detail: str | None = None  # e.g. the OSError text of a failed link


class _Fallback(Exception):
    """The incremental path cannot guarantee an exact result: do a full checkout instead."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


async def prepare_incremental(
    git: GitCache, sha: str, dest: Path, index_file: Path, previous: PreviousRelease
) -> Incremental | Abandoned:
    """Fill the empty directory ``dest`` with the tree of ``sha``, sharing the unchanged files of
    ``previous`` (whose ``sha`` and ``created`` are known); :class:`Abandoned` when it cannot be
    exact. Files named after ``index_file`` are temporary and removed; ``index_file`` itself is left
    behind as the release's manifest when :attr:`Incremental.manifest` says so."""
    try:
        return await _incremental(git, sha, dest, index_file, previous)
    except _Fallback as fb:
        return Abandoned(fb.reason, fb.detail)


async def _incremental(git: GitCache, sha: str, dest: Path, index_file: Path, previous: PreviousRelease) -> Incremental:
    assert previous.sha is not None and previous.created is not None
    if len(sha) not in EMPTY_TREE or not SHA_RE.fullmatch(sha):
        raise _Fallback("unknown_object_format")
    listing_file = index_file.with_name(index_file.name + ".tree")
    diff_file = index_file.with_name(index_file.name + ".diff")
    old_missing: list[str] = []
    manifest = False

    async def list_new_tree() -> None:
        await git.diff_tree(None, sha, listing_file)

    async def diff_with_previous() -> None:
        error = await git.diff_tree(str(previous.sha), sha, diff_file)
        if error is not None:
            old_missing.append(error)

    carried: list[bool] = []  # the index was merged from the previous release's manifest

    async def read_tree() -> None:
        if previous.manifest is not None:
            try:
                await anyio.to_thread.run_sync(shutil.copy2, previous.manifest, index_file)  # its mtime too
                await git.merge_trees(str(previous.sha), sha, dest, index_file, update=False)
                carried.append(True)
                return
            except (OSError, GitError):  # gone meanwhile, or unreadable: a fresh index, refreshed at the end
                pass
        await git.read_tree(sha, dest, index_file)

    created_ns = int(previous.created * 1_000_000_000)
    # never linked: its shared paths, and the paths its build (in the sandbox) replaced or removed
    shared = frozenset(os.fsencode(p) for p in previous.shared | (previous.build_changes or frozenset()))
    done: list[_Linked] = []

    async def link() -> None:
        done.append(await anyio.to_thread.run_sync(_link_unchanged, previous.path, dest, plan, created_ns, shared))

    try:
        await _concurrently(list_new_tree, diff_with_previous)
        if old_missing:
            raise _Fallback("previous_commit_missing", old_missing[0])
        plan = await anyio.to_thread.run_sync(_read_plan, listing_file, diff_file)
        if plan.attributes_changed:
            raise _Fallback("gitattributes_changed")
        await _concurrently(link, read_tree)  # the index (to write, and the manifest): built meanwhile
        linked = done[0]
        for chunk in _chunks(linked.to_write):
            await git.checkout_paths(dest, index_file, chunk, update_stat=True)
        manifest = bool(carried) or await git.refresh(dest, index_file) is None
    finally:
        with anyio.CancelScope(shield=True):
            # index.lock too: a read-tree cancelled because a sibling step failed was killed mid-write
            lock = index_file.with_name(index_file.name + ".lock")
            for f in (lock, listing_file, diff_file) if manifest else (index_file, lock, listing_file, diff_file):
                await anyio.Path(f).unlink(missing_ok=True)
    return Incremental(
        linked=linked.count,
        written=len(linked.to_write),
        deleted=plan.deleted,
        rewritten=linked.rewritten,
        manifest=manifest,
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    entries: list[tuple[bytes, bytes]]  # (path, mode) of every entry of the new tree, sorted by path
    changed: frozenset[bytes]  # paths whose mode or blob differ from the previous commit's
    deleted: int
    attributes_changed: bool


@dataclass(frozen=True, slots=True)
class _Linked:
    to_write: list[bytes]
    count: int
    rewritten: int


def parse_raw(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """``diff-tree -r -z --raw --no-renames`` output as (new mode, status, path) records."""
    out = []
    tokens = data.split(b"\0")
    i = 0
    while i + 1 < len(tokens):
        meta, path = tokens[i], tokens[i + 1]
        fields = meta.split(b" ")
        if not meta.startswith(b":") or len(fields) != 5 or fields[4][:1] in (b"R", b"C"):
            raise _Fallback("unexpected_git_output", repr(meta[:80]))
        out.append((fields[1], fields[4][:1], path))
        i += 2
    return out


def _read_plan(listing_file: Path, diff_file: Path) -> _Plan:
    """What to link and what to write, from the two diff-tree outputs (blocking)."""
    entries = sorted((path, mode) for mode, _status, path in parse_raw(listing_file.read_bytes()))
    changed: set[bytes] = set()
    gone: set[bytes] = set()
    attributes = False
    for _mode, status, path in parse_raw(diff_file.read_bytes()):
        (gone if status == b"D" else changed).add(path)
        attributes = attributes or path.rsplit(b"/", 1)[-1] == b".gitattributes"
    deleted = len(gone - changed) if gone else 0
    return _Plan(entries, frozenset(changed), deleted, attributes)


def _link_unchanged(
    previous: Path, dest: Path, plan: _Plan, created_ns: int, shared: frozenset[bytes] = frozenset()
) -> _Linked:
    """Create the directories of the new tree in ``dest`` and hard-link its unchanged files from
    ``previous`` (none at or under its ``shared`` paths); return the paths left to write (blocking)."""
    to_write: list[bytes] = []
    count = rewritten = 0
    dirs = _DirStack(previous, dest)
    try:
        for path, mode in plan.entries:
            parts = path.split(b"/")
            name = parts[-1]
            dest_fd, prev_fd = dirs.enter(parts[:-1])
            if mode == _GITLINK:
                os.close(_make_dir(name, dest_fd))  # checkout-index -a makes submodules empty dirs
                continue
            if path in plan.changed:
                to_write.append(path)
                continue
            if prev_fd is None or _in_shared(path, shared) or not _published_copy(name, prev_fd, mode, created_ns):
                to_write.append(path)
                rewritten += 1
                continue
            try:
                os.link(name, name, src_dir_fd=prev_fd, dst_dir_fd=dest_fd, follow_symlinks=False)
            except OSError as e:
                if e.errno in _LINK_ERRNOS:
                    raise _Fallback(f"link_failed_{errno.errorcode[e.errno]}", f"{e.strerror}: {path!r}") from e
                raise
            count += 1
    finally:
        dirs.close()
    return _Linked(to_write, count, rewritten)


def _in_shared(path: bytes, shared: frozenset[bytes]) -> bool:
    """True when ``path`` is one of the ``shared`` paths or inside one."""
    if not shared:
        return False
    end = len(path)
    while end > 0:
        if path[:end] in shared:
            return True
        end = path.rfind(b"/", 0, end)
    return False


def _published_copy(name: bytes, prev_fd: int, mode: bytes, created_ns: int) -> bool:
    """True when ``name`` in the previous release is still what a checkout of ``mode`` wrote there."""
    try:
        st = os.stat(name, dir_fd=prev_fd, follow_symlinks=False)
    except OSError:  # missing, or unreadable: write it instead
        return False
    if st.st_mtime_ns > created_ns:  # changed after the previous release was published
        return False
    if mode == b"120000":
        return stat.S_ISLNK(st.st_mode)
    return stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == _PERMS.get(mode)


class _DirStack:
    """The chain of open directories (new release, previous release) for the path being processed.

    Entries come sorted by path, so each directory's entries are contiguous and every directory is
    created and opened once. Directories of the previous release are opened with ``O_NOFOLLOW``: a
    path that is a symlink (or a file) there is treated as absent, never followed.
    """

    def __init__(self, previous: Path, dest: Path) -> None:
        self.names: list[bytes] = []
        self.dest_fds = [os.open(dest, DIR_NOFOLLOW)]
        self.prev_fds: list[int | None] = [_open_dir(os.fsencode(previous), None)]

    def enter(self, parts: Sequence[bytes]) -> tuple[int, int | None]:
        keep = 0
        for have, want in zip(self.names, parts, strict=False):
            if have != want:
                break
            keep += 1
        while len(self.names) > keep:
            self._pop()
        for name in parts[keep:]:
            self.dest_fds.append(_make_dir(name, self.dest_fds[-1]))
            parent = self.prev_fds[-1]
            self.prev_fds.append(None if parent is None else _open_dir(name, parent))
            self.names.append(name)
        return self.dest_fds[-1], self.prev_fds[-1]

    def _pop(self) -> None:
        self.names.pop()
        os.close(self.dest_fds.pop())
        fd = self.prev_fds.pop()
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        while self.names:
            self._pop()
        os.close(self.dest_fds[0])
        if self.prev_fds[0] is not None:
            os.close(self.prev_fds[0])


def _open_dir(name: bytes, dir_fd: int | None) -> int | None:
    """An fd of directory ``name`` of the previous release, or None when it is missing, a symlink, not
    a directory or unreadable (its files are then written, not linked)."""
    try:
        return os.open(name, DIR_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None


def _make_dir(name: bytes, dir_fd: int) -> int:
    """Create directory ``name`` with mode 0755 (as checkout-index does under umask 022); return its fd."""
    os.mkdir(name, 0o755, dir_fd=dir_fd)  # sorted entries: each directory is made once
    fd = os.open(name, DIR_NOFOLLOW, dir_fd=dir_fd)
    os.fchmod(fd, 0o755)  # whatever our own umask is
    return fd


def _chunks(paths: Sequence[bytes]) -> list[list[str]]:
    """Paths as git arguments, in chunks that keep each command line small."""
    out: list[list[str]] = []
    size = _ARGS_CHUNK
    for p in paths:
        if size + len(p) + 1 > _ARGS_CHUNK:
            out.append([])
            size = 0
        out[-1].append(os.fsdecode(p))
        size += len(p) + 1
    return out


async def _concurrently(*fns: Callable[[], Awaitable[None]]) -> None:
    """Run the calls concurrently; on the first error cancel the others and raise that error itself
    (not an exception group, so callers see the GitError or _Fallback)."""
    errors: list[Exception] = []

    async with anyio.create_task_group() as tg:

        async def run(fn: Callable[[], Awaitable[None]]) -> None:
            try:
                await fn()
            except Exception as e:
                errors.append(e)
                tg.cancel_scope.cancel()

        for fn in fns:
            tg.start_soon(run, fn)
    if errors:
        raise errors[0]
