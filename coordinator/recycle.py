"""Recycling a retired release: a new release made from the one retention would delete next, so that
preparing it costs the change, not the tree (:func:`coordinator.prepare.prepare_release` tries this
first).

**Which release** (:func:`pick_retired`): one that the prune after this deploy would delete anyway
(:func:`coordinator.plan.plan_prune` with the new release counted as kept): never ``current``, the
previous release, a release a live process uses (:mod:`coordinator.inuse`) or one in ``protected``
(staged releases); only one that has a manifest and whose metadata says no build command ran in it,
or that its build ran in the build sandbox (:func:`reusable`: the build recorded every path it replaced
or removed, and nothing else of the tree was written; as the incremental path requires). Of several,
the newest (the smallest change, usually).

**The manifest** is the git index of the release's tree with the stat data of every file as it was
published (``ROOT/.coordinator/releases/<name>.index``, next to ``<name>.json``): a full checkout
writes it with ``checkout-index -u``, the incremental path merges it from the previous release's
(:mod:`coordinator.incremental`), recycling with ``read-tree -m -u``. A git index rather than a
manifest of our own, because git compares it with the tree in C on both cores (``update-index
--refresh``: one ``lstat`` per file, no read unless the stat data differs, then the content decides),
and because ``read-tree -m -u`` needs exactly that index to apply the change. The comparison ignores
ctime (hard links from newer releases change it: ``core.trustctime=false``) and checks everything else
git records: mtime to the nanosecond, size, inode, uid, gid, mode (``core.checkStat=default``). A change
that keeps all of those (a rewrite of the same size with its mtime restored, in place) is not seen;
directory permission bits are not checked.

**How** (:func:`recycle`), in the order a crash leaves safe:

1. ``git diff-tree OLD NEW``: a retired commit missing from the cache, or a changed ``.gitattributes``
   (which can change how unchanged files are checked out), gives up before anything is touched;
2. the release directory is renamed over the empty workspace (the hidden temporary name
   :meth:`coordinator.releases.ReleaseStore.new_workspace` made: a crash from here on leaves a
   leftover that start-up removes), ``releases/`` fsynced, then its metadata and manifest taken away
   (the manifest becomes the working index): it is no longer a published release;
3. its shared links (recorded in its metadata) are removed, each only if it is still the symlink
   :mod:`coordinator.shared` made, with the parent directories they leave empty; so is whatever is at
   the paths its sandboxed build replaced or removed (``build_changes``; a collapsed entry is a whole
   top-level directory): unlinked or removed as a tree, never followed through a symlink, never
   written; the tag's files at or under all those paths are written back (``checkout-index -u``, new
   inodes); what the build added elsewhere is untracked and goes at step 4;
4. the check: ``update-index --refresh`` (every tracked file as published; any mismatch gives up),
   while ``git clean -ffdx`` removes what the manifest does not list (the ``__pycache__`` an app
   server wrote into the release while it served, logs, empty directories: names only, never an
   inode another release holds); a path it cannot remove, or a ``.git``, gives up;
5. ``git read-tree -m -u OLD NEW`` applies the difference: removed files unlinked and the directories
   they empty removed, changed and added files (content, mode, type, file <-> directory) unlinked and
   written anew, so a file another release hard-links is never written: every written file is a new
   inode. The index is then the new release's manifest.

Giving up (:class:`~coordinator.incremental.Abandoned`) after step 2 empties the workspace; the caller
then prepares incrementally from ``current`` (or by a full checkout), as without a retired release.
The reasons: ``retired_commit_missing``, ``gitattributes_changed``, ``retired_shared_link_changed``,
``retired_changed`` (a tracked file modified, missing or of another type; or an unreadable manifest),
``retired_untracked`` (a path the manifest does not list could not be removed, or a ``.git``),
``recycle_failed`` (git refused the merge).
"""

from __future__ import annotations

import errno
import math
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog

from coordinator.changeset import apply_change, manifest_path, read_change_file
from coordinator.exceptions import GitError
from coordinator.failpoints import failpoint
from coordinator.fsutil import DIR_NOFOLLOW, fsync_dir, is_real_dir, remove_tree, temp_name
from coordinator.git import GitCache
from coordinator.incremental import SHA_RE, Abandoned, _chunks, _concurrently
from coordinator.inuse import releases_in_use
from coordinator.layout import Layout, list_releases
from coordinator.plan import ReleaseInfo, plan_prune
from coordinator.shared import link_target
from coordinator.state import read_release_meta
from coordinator.statefile import ReleaseMeta

__all__ = [
    "GiveUp",
    "Recycled",
    "Retired",
    "check_tree",
    "manifest_path",
    "pick_retired",
    "recycle",
    "retired_from",
    "reusable",
    "unshare",
]

log = structlog.get_logger("coordinator.recycle")


@dataclass(frozen=True, slots=True)
class Retired:
    """A published release retention would delete next, to recycle."""

    name: str
    path: Path  # releases/<name>
    sha: str
    manifest: Path  # its git index, with the stat data of its files as published
    metadata: tuple[Path, ...]  # its metadata files (coordinator's and the app-facing copy)
    shared: frozenset[str] = frozenset()  # the shared links coordinator put into it
    #: the paths its build replaced or removed, in the build sandbox (empty: not built)
    build_changes: frozenset[str] = frozenset()


def reusable(meta: ReleaseMeta) -> bool:
    """Whether a release's tree can be turned back into its tag's tree: it is pristine (no build
    command ran in it) or its build ran in the build sandbox, which recorded every path it replaced
    or removed (``build_changes``). A build in place may have written any tracked file: never."""
    return meta.built is False or (meta.built is True and meta.build_changes is not None)


@dataclass(frozen=True, slots=True)
class Recycled:
    """What recycling did (the counts of :class:`~coordinator.prepare.PrepareStats`)."""

    written: int  # files, symlinks and submodule directories added or changed
    deleted: int  # paths of the retired commit that the new one no longer has
    restored: int  # tag files its shared links had replaced, written back before the check
    #: the commit the manifest left in the index file still describes (a ready spare's change was
    #: applied without it: :mod:`coordinator.changeset`); None: it describes the new tree
    owed: str | None = None


def pick_retired(
    layout: Layout,
    current: str | None,
    previous: str | None,
    keep: int,
    new_name: str,
    protected: Collection[str] = (),
) -> Retired | None:
    """The release to recycle for the new release ``new_name``, or None (blocking; see the module)."""
    releases = [r for r in list_releases(layout) if r.name != new_name]
    in_use = releases_in_use(layout.releases)
    future = [*releases, ReleaseInfo(new_name, created=math.inf)]
    doomed = set(plan_prune(future, current, previous, keep, [*protected, *in_use, new_name]))
    for info in sorted(releases, key=lambda r: (r.created, r.name), reverse=True):
        if info.name not in doomed:
            continue
        meta = read_release_meta(layout.meta_dir, info.name)
        manifest = manifest_path(layout, info.name)
        if meta is None or meta.name != info.name or not reusable(meta) or not SHA_RE.fullmatch(meta.sha):
            continue
        if not os.path.isfile(manifest) or not is_real_dir(layout.releases / info.name):
            continue
        metadata = (layout.meta_dir / f"{info.name}.json", layout.releases / f"{info.name}.json")
        return retired_from(meta, layout.releases / info.name, manifest, metadata)
    return None


def retired_from(meta: ReleaseMeta, path: Path, manifest: Path, metadata: tuple[Path, ...]) -> Retired:
    """The retired release ``meta`` describes, its tree at ``path``."""
    changes = frozenset(meta.build_changes or ())
    return Retired(meta.name, path, meta.sha, manifest, metadata, frozenset(meta.shared), changes)


class GiveUp(Exception):
    """A retired release (or the spare being readied) is not what its manifest says: why, and git's words."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


async def recycle(
    git: GitCache, retired: Retired, sha: str, dest: Path, index_file: Path, *, checked: bool = False
) -> Recycled | Abandoned:
    """Turn ``retired`` into the tree of ``sha`` in the empty workspace ``dest`` (see the module).
    On success ``index_file`` holds the new tree's manifest; on :class:`Abandoned` ``dest`` is empty.
    ``checked``: ``retired`` is the ready spare (:mod:`coordinator.spare`), already checked against its
    manifest and without shared links: steps 3 and 4 are skipped, and step 5 writes the changed paths
    alone (:func:`coordinator.changeset.apply_change`), leaving in ``index_file`` the old commit's
    manifest, owed (:attr:`Recycled.owed`)."""
    diff_file = index_file.with_name(index_file.name + ".diff")
    taken = False
    try:
        error = await git.diff_tree(retired.sha, sha, diff_file)
        if error is not None:
            return Abandoned("retired_commit_missing", error)
        try:
            change = await anyio.to_thread.run_sync(read_change_file, diff_file)
        except ValueError as e:
            return Abandoned("unexpected_git_output", str(e))
        if change.attributes:
            return Abandoned("gitattributes_changed")
        taken = True
        await anyio.to_thread.run_sync(_take, retired, dest, index_file)
        failpoint("during-recycle")
        if checked:  # the paths that change, nothing else; the manifest is completed later (owed)
            try:
                await apply_change(git, change, dest, index_file.with_name(index_file.name + ".entries"))
            except GitError as e:
                raise GiveUp("recycle_failed", e.message) from e
            except OSError as e:
                raise GiveUp("recycle_failed", f"{e.strerror}: {e.filename}") from e
            return Recycled(change.written, change.deleted, 0, owed=retired.sha)
        restored = await unshare(git, retired, dest, index_file)
        await check_tree(git, dest, index_file)
        try:
            await git.merge_trees(retired.sha, sha, dest, index_file, update=True)
        except GitError as e:
            raise GiveUp("recycle_failed", e.message) from e
        return Recycled(change.written, change.deleted, restored)
    except GiveUp as e:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_empty_workspace, dest)
            await anyio.Path(index_file).unlink(missing_ok=True)
        return Abandoned(e.reason, e.detail)
    except BaseException:
        if taken:  # cancelled, or a git failure: the caller discards the workspace, not its index
            with anyio.CancelScope(shield=True):
                await anyio.Path(index_file).unlink(missing_ok=True)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            for f in (diff_file, index_file.with_name(index_file.name + ".lock")):
                await anyio.Path(f).unlink(missing_ok=True)


def _take(retired: Retired, dest: Path, index_file: Path) -> None:
    """Rename the retired release over the empty workspace ``dest``, then remove its metadata and
    move its manifest to ``index_file`` (blocking). Its mtime moves with it (git's racy-entry check
    compares file mtimes with the index's)."""
    try:
        os.rename(retired.path, dest)  # over an empty directory: atomic
        fsync_dir(retired.path.parent)  # gone under its name before its metadata goes
        os.replace(retired.manifest, index_file)
        for f in retired.metadata:
            f.unlink(missing_ok=True)
    except OSError as e:  # gone meanwhile, or a volume error: nothing published is left half-taken
        raise GiveUp("recycle_failed", f"{e.strerror}: {e.filename}") from e


async def unshare(git: GitCache, retired: Retired, dest: Path, index_file: Path) -> int:
    """Remove the retired release's shared links and what its sandboxed build replaced or made at the
    paths it recorded, then write back the tag files they replaced; their count."""
    if not retired.shared and not retired.build_changes:
        return 0
    paths = sorted(retired.shared | retired.build_changes)
    await anyio.to_thread.run_sync(_remove_links, dest, sorted(retired.shared))
    await anyio.to_thread.run_sync(_remove_build_changes, dest, sorted(retired.build_changes))
    try:
        tracked = await git.tracked_under(dest, index_file, paths)
        for chunk in _chunks([os.fsencode(p) for p in tracked]):
            await git.checkout_paths(dest, index_file, chunk, update_stat=True)
    except GitError as e:
        raise GiveUp("retired_changed", e.message) from e
    return len(tracked)


def _remove_links(dest: Path, paths: list[str]) -> None:
    """Unlink each shared link coordinator made at ``paths`` in ``dest``, then the parent directories
    that leaves empty; never following a symlink (blocking). Anything else there: give up."""
    for path in paths:
        parts = path.split("/")
        fds = [os.open(dest, DIR_NOFOLLOW)]
        try:
            for part in parts[:-1]:
                fds.append(os.open(part, DIR_NOFOLLOW, dir_fd=fds[-1]))
            try:
                st = os.stat(parts[-1], dir_fd=fds[-1], follow_symlinks=False)
                target = os.readlink(parts[-1], dir_fd=fds[-1]) if stat.S_ISLNK(st.st_mode) else None
            except OSError:
                target = None
            if target != link_target(path):
                raise GiveUp("retired_shared_link_changed", path)
            os.unlink(parts[-1], dir_fd=fds[-1])
            for depth in range(len(parts) - 1, 0, -1):  # parents it leaves empty, deepest first
                try:
                    os.rmdir(parts[depth - 1], dir_fd=fds[depth - 1])
                except OSError as e:
                    if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        break
                    raise
        except OSError as e:
            raise GiveUp("retired_shared_link_changed", f"{path}: {e.strerror}") from e
        finally:
            for fd in fds:
                os.close(fd)


def _remove_build_changes(dest: Path, paths: list[str]) -> None:
    """Remove whatever is at each of ``paths`` in ``dest`` (a file, symlink or whole directory: names
    only, never a write into an inode), never following a symlink (blocking). A path that is not plain
    and relative, or under something that is not a real directory: give up. A path already gone
    (under one removed before) is skipped."""
    for path in paths:
        parts = path.split("/")
        if any(part in ("", ".", "..") for part in parts) or "\0" in path:
            raise GiveUp("retired_changed", f"build change {path!r}")
        fds = [os.open(dest, DIR_NOFOLLOW)]
        try:
            for part in parts[:-1]:
                fds.append(os.open(part, DIR_NOFOLLOW, dir_fd=fds[-1]))  # ELOOP/ENOTDIR: not a real directory
            remove_tree(dest.joinpath(*parts))  # lstat first: a symlink is unlinked, never followed
        except FileNotFoundError:
            continue
        except OSError as e:
            raise GiveUp("retired_changed", f"{path}: {e.strerror}") from e
        finally:
            for fd in fds:
                os.close(fd)


async def check_tree(git: GitCache, dest: Path, index_file: Path) -> None:
    """Give up unless ``dest`` holds the files the manifest lists, as published; what it does not
    list (``__pycache__`` an app server wrote into the release, logs) is removed."""
    if await anyio.to_thread.run_sync(os.path.lexists, dest / ".git"):  # git never lists its own name
        raise GiveUp("retired_untracked", ".git")
    changed: list[str | None] = []
    extra: list[tuple[int, str | None]] = []

    async def refresh() -> None:
        changed.append(await git.refresh(dest, index_file))

    async def others() -> None:
        extra.append(await git.remove_untracked(dest, index_file))

    try:
        await _concurrently(refresh, others)
    except GitError as e:
        raise GiveUp("retired_changed", e.message) from e
    if changed[0] is not None:
        raise GiveUp("retired_changed", changed[0])
    removed, problem = extra[0]
    if problem is not None:
        raise GiveUp("retired_untracked", problem)
    if removed:
        log.debug("retired_untracked_removed", paths=removed)


def _empty_workspace(dest: Path) -> None:
    """Replace the workspace ``dest`` by an empty directory of the same name (blocking)."""
    trash = dest.parent / temp_name(f"trash-{dest.name.lstrip('.')}")
    os.rename(dest, trash)
    os.mkdir(dest, 0o755)
    remove_tree(trash)
