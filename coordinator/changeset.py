"""A commit-to-commit change applied to a checked tree, touching only the paths that change; and the
tree's manifest brought up to date afterwards, off the deploy's path.

The ready spare (:mod:`coordinator.spare`) is the tree of one commit, checked against its manifest.
Turning it into the tree of the next commit with ``git read-tree -m -u`` costs a read of the whole
index, a walk of both trees and a write of the whole index: O(files), about 45 ms at 10,000 files and
180 ms at 50,000 here, however few files change. So a deploy does only what the change needs
(:func:`apply_change`):

1. ``diff-tree OLD NEW`` (:func:`read_change`) names every path that is added, changed, retyped or
   deleted;
2. the deleted and retyped paths are unlinked (directories opened one component at a time, never
   through a symlink) and the directories that leaves empty removed;
3. the added and changed entries are written by ``checkout-index -a -f`` through a temporary index
   of those entries alone: each file a new inode (git unlinks before it creates), never a write into
   an inode another release holds.

The manifest it was checked with still describes OLD. It is kept, owed, next to the release's
metadata (:func:`owed_path`: ``<name>.index.from-<OLD>``) and completed when the daemon is next idle
(:func:`complete_owed`): ``read-tree -m -i OLD NEW`` on a copy (the index alone: unchanged entries
keep their stat data, which still describes the same inodes), then ``update-index --refresh`` against
the published release, which records the stat data of the written files only after comparing their
content with the new commit's objects: a file modified after publication is never taken into a
manifest (the manifest is dropped instead, and the release is simply never recycled). Until it is
complete, the release has no manifest: whatever needs one (recycling, the spare, incremental
preparation from it) does without, as for a release published before manifests existed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog

from coordinator.exceptions import GitError
from coordinator.fsutil import DIR_NOFOLLOW, is_real_dir, temp_name
from coordinator.git import GitCache
from coordinator.layout import Layout
from coordinator.state import read_release_meta

__all__ = [
    "Change",
    "apply_change",
    "complete_owed",
    "manifest_path",
    "owed_path",
    "read_change",
    "read_change_file",
    "remove_owed",
]

log = structlog.get_logger("coordinator.changeset")

_GITLINK = b"160000"
_OWED = re.compile(r"^(?P<name>.+)\.index\.from-(?P<old>[0-9a-f]{40}|[0-9a-f]{64})$")


@dataclass(frozen=True, slots=True)
class Change:
    """``diff-tree -r -z --raw OLD NEW``, read for applying."""

    removed: list[tuple[bytes, bool]]  # (path, a directory) to remove first: deleted or retyped
    writes: list[bytes]  # ``update-index -z --index-info`` records (mode, object id, path) to write
    deleted: int  # paths OLD has and NEW does not
    attributes: bool  # a .gitattributes changed (it can change how unchanged files check out)

    @property
    def written(self) -> int:
        return len(self.writes)


def read_change(data: bytes) -> Change:
    """The change in ``diff-tree -r -z --raw --no-renames`` output (ValueError: unexpected output)."""
    tokens = data.split(b"\0")
    removed: list[tuple[bytes, bool]] = []
    writes: list[bytes] = []
    deleted = 0
    attributes = False
    if len(tokens) % 2 != 1 or tokens[-1]:
        raise ValueError("truncated diff-tree output")
    for i in range(0, len(tokens) - 1, 2):
        meta, path = tokens[i], tokens[i + 1]
        fields = meta.split(b" ")
        if not meta.startswith(b":") or len(fields) != 5 or fields[4] not in (b"A", b"D", b"M", b"T"):
            raise ValueError(repr(meta[:80]))
        old_mode, new_mode, new_oid, status = fields[0][1:], fields[1], fields[3], fields[4]
        attributes = attributes or path.rsplit(b"/", 1)[-1] == b".gitattributes"
        if status == b"D" or (status == b"T" and (old_mode == _GITLINK) != (new_mode == _GITLINK)):
            removed.append((path, old_mode == _GITLINK))
        if status == b"D":
            deleted += 1
        else:
            writes.append(b"%s %s\t%s\0" % (new_mode, new_oid, path))
    return Change(removed, writes, deleted, attributes)


def read_change_file(diff_file: Path) -> Change:
    """:func:`read_change` of the file ``diff-tree --output`` wrote (blocking)."""
    return read_change(diff_file.read_bytes())


def manifest_path(layout: Layout, name: str) -> Path:
    """Where release ``name``'s manifest (its git index with stat data) is kept."""
    return layout.meta_dir / f"{name}.index"


def owed_path(layout: Layout, name: str, old: str) -> Path:
    """Where release ``name``'s manifest waits, still describing commit ``old``, to be completed."""
    return layout.meta_dir / f"{name}.index.from-{old}"


def remove_owed(layout: Layout, name: str) -> None:
    """Remove release ``name``'s owed manifest, if any (blocking: the prune of the release)."""
    for _name, _old, path in _owed(layout):
        if _name == name:
            path.unlink(missing_ok=True)


async def apply_change(git: GitCache, change: Change, dest: Path, scratch_index: Path) -> None:
    """Turn the tree ``dest`` (the old commit's, checked) into the new commit's (see the module);
    ``scratch_index`` is a temporary file name (removed). OSError or GitError: ``dest`` is half-changed
    and must be discarded."""
    if change.removed:
        await anyio.to_thread.run_sync(_remove, dest, change.removed)
    if change.writes:
        await git.write_entries(dest, scratch_index, b"".join(change.writes))


def _remove(dest: Path, removed: list[tuple[bytes, bool]]) -> None:
    """Unlink (rmdir, for a submodule) each path, then the directories that leaves empty (blocking)."""
    fds: dict[tuple[bytes, ...], int] = {(): os.open(dest, DIR_NOFOLLOW)}

    def opened(parts: tuple[bytes, ...]) -> int:
        fd = fds.get(parts)
        if fd is None:
            fd = os.open(parts[-1], DIR_NOFOLLOW, dir_fd=opened(parts[:-1]))
            fds[parts] = fd
        return fd

    try:
        parents: set[tuple[bytes, ...]] = set()
        for path, is_dir in removed:
            parts = tuple(path.split(b"/"))
            (os.rmdir if is_dir else os.unlink)(parts[-1], dir_fd=opened(parts[:-1]))
            parents.update(parts[:k] for k in range(1, len(parts)))
        for parts in sorted(parents, key=len, reverse=True):  # deepest first
            try:
                os.rmdir(parts[-1], dir_fd=opened(parts[:-1]))
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
    finally:
        for fd in fds.values():
            os.close(fd)


async def complete_owed(git: GitCache, layout: Layout) -> int:
    """Complete every owed manifest (see the module); how many were completed. Cancellable: an owed
    manifest stays owed until it is complete."""
    owed = await anyio.to_thread.run_sync(_owed, layout)
    done = 0
    for name, old, path in owed:
        if await _complete(git, layout, name, old, path):
            done += 1
    return done


def _owed(layout: Layout) -> list[tuple[str, str, Path]]:
    out = []
    with os.scandir(layout.meta_dir) as it:
        for entry in it:
            m = _OWED.match(entry.name)
            if m is not None:
                out.append((m["name"], m["old"], Path(entry.path)))
    return sorted(out)


async def _complete(git: GitCache, layout: Layout, name: str, old: str, owed: Path) -> bool:
    release = layout.releases / name
    meta = await anyio.to_thread.run_sync(read_release_meta, layout.meta_dir, name)
    if meta is None or meta.name != name or not await anyio.to_thread.run_sync(is_real_dir, release):
        await anyio.Path(owed).unlink(missing_ok=True)  # pruned meanwhile
        return False
    work = layout.tmp_dir / temp_name(f"index-{name}")
    try:
        await anyio.to_thread.run_sync(shutil.copyfile, owed, work)
        try:
            await git.merge_trees(old, meta.sha, release, work, update=False)
            complaint = await git.refresh(release, work)
        except GitError as e:
            complaint = e.message
        if complaint is not None:
            log.warning("manifest_dropped", release=name, reason=complaint)
            await anyio.Path(owed).unlink(missing_ok=True)
            return False
        await anyio.to_thread.run_sync(_install, work, owed, manifest_path(layout, name))
        log.debug("manifest_completed", release=name)
        return True
    finally:
        with anyio.CancelScope(shield=True):
            for f in (work, work.with_name(work.name + ".lock")):
                await anyio.Path(f).unlink(missing_ok=True)


def _install(work: Path, owed: Path, final: Path) -> None:
    """The completed manifest takes its place, then the owed one goes (blocking)."""
    os.replace(work, final)
    owed.unlink(missing_ok=True)
