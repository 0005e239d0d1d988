"""Preparing a release directory: from the ready spare, by recycling a retired release, incrementally
from the previous release, or by a full checkout.

A ready spare (:mod:`coordinator.spare`: a retired release checked and advanced to current's commit
in the background) is tried first: git applies the difference from current's commit to the new one,
and nothing else is read or written. When it cannot be used (``spare_fallback`` in the stats), the
release is prepared as below.

When retention is about to delete a release anyway, :func:`prepare_release` first recycles it
(:mod:`coordinator.recycle`): it is renamed to the workspace's hidden name, checked against the
manifest recorded when it was published (the git index with the stat data of its files), and git
applies only the difference between its commit and the new one, writing each changed file as a new
inode. That costs one ``lstat`` per file (in git, on both cores) plus the change: no file is linked or
written for an unchanged path. When it cannot be recycled (see that module for the reasons, logged as
``prepare_fallback`` with ``retired``), the workspace is emptied and the release prepared as below.

A full checkout (:meth:`coordinator.git.GitCache.checkout`) writes every file of the tag, so its cost
follows the size of the repository. :func:`prepare_release` instead builds the new release from the
release ``current`` points to, so that the files written follow the size of the change: unchanged
files are hard-linked from the previous release, the others written as new inodes
(:mod:`coordinator.incremental`, which says how the result stays exactly the new tree and never
writes an inode a published release shares). This module decides which path to take.

The full checkout stays the fallback whenever the incremental path cannot promise that, with the
reason in :attr:`PrepareStats.fallback`:

* ``no_previous_release``: nothing is current;
* ``build_command`` / ``build_sandbox_unavailable``: a build command will run in the new release
  in place, not in the build sandbox (:mod:`coordinator.sandbox`): ``--build-sandbox off``, or the
  sandbox's probe failed here (the detail says why: user namespaces refused, no overlay with
  ``userxattr`` on this volume...). Such a build could modify a file in place (``>>``, an editor, a
  tool that rewrites its output) and so write through a hard link into the previous, published
  release. Every release is a full checkout then. A build in the sandbox cannot: the release is
  prepared as without a build (from the spare, recycled or incrementally);
* ``previous_sha_unknown``: the previous release's metadata is missing or unreadable;
* ``previous_not_published``: the previous release is not a complete published release directory;
* ``previous_provenance_unknown`` / ``previous_was_built``: the previous release's metadata does not
  say whether a build command ran in it (metadata written before coordinator 0.2: the first deploy
  after an upgrade is a full checkout), or says that one ran in place (it may have changed tracked
  files, so that release is not a pristine checkout of its commit). A build that ran in the sandbox
  recorded the paths it replaced or removed (:attr:`PreviousRelease.build_changes`): everything
  else is pristine, and those paths are written fresh instead of linked;
* ``previous_commit_missing``: the git cache no longer has the previous release's commit;
* ``gitattributes_changed``: a ``.gitattributes`` file changed, which can change how unchanged blobs
  are checked out (line endings, ``ident``, filters), so unchanged files cannot be shared;
* ``link_failed_<ERRNO>``: the filesystem refused a hard link (``EXDEV``, ``EPERM``, ``EMLINK``,
  ``EOPNOTSUPP``); whatever was linked is removed first (unlinking a name never touches the inode);
* ``unknown_object_format`` / ``unexpected_git_output``: defensive, not expected to happen.

Other errors (a git failure for the new commit, ``ENOSPC``, ``EIO``) are raised as with a full checkout.
git reports a full volume only as "unable to write file X": a git failure while the volume holding the
release has less than 1 MiB (or no inode) free is raised as ``OSError(ENOSPC)`` naming ``releases/``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from coordinator.exceptions import GitError
from coordinator.fsutil import is_real_dir, remove_tree
from coordinator.git import GitCache
from coordinator.incremental import SHA_RE, Incremental, prepare_incremental
from coordinator.recycle import Recycled, Retired, recycle
from coordinator.spare import ReadySpare, use_spare

__all__ = ["PrepareStats", "PreviousRelease", "prepare_release"]

log = structlog.get_logger("coordinator.prepare")


@dataclass(frozen=True, slots=True)
class PreviousRelease:
    """The published release to build from: its directory, its commit and how it was made."""

    path: Path
    sha: str | None  # None: its metadata is missing or unreadable
    created: float | None = None  # when it was published (its files are not newer)
    built: bool | None = None  # a build command ran in it; None: unknown (metadata of coordinator < 0.2)
    shared: frozenset[str] = frozenset()  # its shared paths: links into ROOT/shared, never the tag's files
    manifest: Path | None = None  # its git index with the stat data of its files as published, if kept
    #: built in the sandbox: the paths its build replaced or removed (None: not built, or built in place)
    build_changes: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class PrepareStats:
    """How a release was prepared. ``written``/``deleted`` are None for a full checkout (not counted)."""

    mode: str  # "spare" | "recycled" | "incremental" | "full"
    linked: int = 0  # files and symlinks hard-linked from the previous release
    written: int | None = None  # files and symlinks written as new inodes
    deleted: int | None = None  # paths of the previous (or recycled) commit that the new one no longer has
    rewritten: int = 0  # of ``written``: unchanged paths whose previous copy failed the check
    fallback: str | None = None  # why a full checkout was done
    detail: str | None = field(default=None, compare=False)  # e.g. the OSError text of a failed link
    recycled: str | None = None  # the retired release recycled (mode "recycled" or "spare") or tried (then abandoned)
    spare_fallback: str | None = None  # why the ready spare was not used
    recycle_fallback: str | None = None  # why that retired release was not recycled
    restored: int | None = None  # recycled: tag files its shared links had replaced, written back
    #: the commit ``manifest`` still describes, when it is owed (:mod:`coordinator.changeset`); None: the new one
    manifest_from: str | None = field(default=None, compare=False)
    #: the release's manifest (its git index with stat data), to keep at publication; None: none
    manifest: Path | None = field(default=None, compare=False, repr=False)

    def as_log(self) -> dict[str, Any]:
        """The stats as log fields (None values dropped; not the manifest's path)."""
        return {k: v for k, v in asdict(self).items() if v is not None and k not in ("manifest", "manifest_from")}


def _refusal(previous: PreviousRelease | None, build_command: bool) -> str | None:
    """Why the incremental path must not be taken (None: it may be). Blocking (one lstat)."""
    if previous is None:
        return "no_previous_release"
    if build_command:
        return "build_command"
    if previous.sha is None or not SHA_RE.fullmatch(previous.sha) or previous.created is None:
        return "previous_sha_unknown"
    if previous.path.name.startswith(".") or not is_real_dir(previous.path):
        return "previous_not_published"
    if previous.built is None:
        return "previous_provenance_unknown"
    if previous.built and previous.build_changes is None:
        return "previous_was_built"
    return None


async def prepare_release(
    git: GitCache,
    sha: str,
    dest: Path,
    index_file: Path,
    previous: PreviousRelease | None,
    *,
    build_command: bool = False,
    retired: Retired | Callable[[], Retired | None] | None = None,
    spare: ReadySpare | None = None,
    build_fallback: tuple[str, str | None] = ("build_command", None),
) -> PrepareStats:
    """Fill the empty directory ``dest`` with exactly the tracked files of commit ``sha``.

    From the ready ``spare`` (:mod:`coordinator.spare`), else by recycling ``retired`` (a release
    retention would delete next, see :mod:`coordinator.recycle`; or a blocking function that picks
    it, called in a worker thread only when no spare was used),
    else incrementally from ``previous`` (sharing unchanged files by hard links) when that is safe,
    else by a full checkout; the returned stats say which, and why. Files named after ``index_file``
    are temporary and removed; ``index_file`` itself is left behind as the release's manifest when
    :attr:`PrepareStats.manifest` names it (the caller keeps it at publication, or removes it). Pass
    ``build_command=True`` when a build will run in ``dest`` in place (not in the build sandbox), with
    ``build_fallback`` the reason and detail to report: such a build may modify files in place, which
    must never reach an inode shared with a published release, so the release is then always a full
    checkout (and nothing is recycled).
    """
    try:
        recycled: str | None = None
        recycle_reason: str | None = None
        spare_reason: str | None = None
        if spare is not None and not build_command:
            outcome_s = await use_spare(git, spare, sha, dest, index_file)
            if isinstance(outcome_s, Recycled):
                return PrepareStats(
                    mode="spare",
                    written=outcome_s.written,
                    deleted=outcome_s.deleted,
                    recycled=spare.name,
                    manifest=index_file,
                    manifest_from=outcome_s.owed,
                )
            spare_reason = outcome_s.reason
            log.warning("prepare_fallback", reason=spare_reason, detail=outcome_s.detail, spare=spare.name)
        if callable(retired):
            retired = None if build_command else await anyio.to_thread.run_sync(retired)
        if retired is not None and not build_command:
            outcome_r = await recycle(git, retired, sha, dest, index_file)
            if isinstance(outcome_r, Recycled):
                return PrepareStats(
                    mode="recycled",
                    written=outcome_r.written,
                    deleted=outcome_r.deleted,
                    recycled=retired.name,
                    restored=outcome_r.restored,
                    spare_fallback=spare_reason,
                    manifest=index_file,
                )
            recycled, recycle_reason = retired.name, outcome_r.reason
            log.warning("prepare_fallback", reason=recycle_reason, detail=outcome_r.detail, retired=retired.name)
        reason = await anyio.to_thread.run_sync(_refusal, previous, build_command)
        detail: str | None = None
        if reason == "build_command":
            reason, detail = build_fallback
            log.info("prepare_fallback", reason=reason, detail=detail)
        if reason is None:
            assert previous is not None and previous.sha is not None and previous.created is not None
            outcome = await prepare_incremental(git, sha, dest, index_file, previous)
            if isinstance(outcome, Incremental):
                return PrepareStats(
                    mode="incremental",
                    linked=outcome.linked,
                    written=outcome.written,
                    deleted=outcome.deleted,
                    rewritten=outcome.rewritten,
                    recycled=recycled,
                    recycle_fallback=recycle_reason,
                    spare_fallback=spare_reason,
                    manifest=index_file if outcome.manifest else None,
                )
            reason, detail = outcome.reason, outcome.detail
            log.warning("prepare_fallback", reason=reason, detail=detail, previous=previous.path.name)
            await anyio.to_thread.run_sync(_empty_dir, dest)
        await git.checkout(sha, dest, index_file, keep_index=not build_command)
        return PrepareStats(
            mode="full",
            fallback=reason,
            detail=detail,
            recycled=recycled,
            recycle_fallback=recycle_reason,
            spare_fallback=spare_reason,
            manifest=None if build_command else index_file,
        )
    except GitError as e:
        # git says only "unable to write file X" when the volume is full: tell the user what happened
        full = await anyio.to_thread.run_sync(_volume_full, dest)
        if full is None:
            raise
        log.warning("prepare_no_space", git_error=e.message, **full)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest.parent)) from e


#: a volume with less free space than this (or no free inode) is full, for all a release needs
_FULL_BYTES = 1 << 20


def _volume_full(path: Path) -> dict[str, int] | None:
    """Free bytes and inodes of the volume holding ``path`` when it is full, else None (blocking)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free < _FULL_BYTES or (st.f_files > 0 and st.f_favail == 0):
        return {"free_bytes": free, "free_inodes": st.f_favail}
    return None


def _empty_dir(path: Path) -> None:
    """Remove everything inside ``path`` (never following symlinks, never writing shared inodes)."""
    for entry in os.scandir(path):
        remove_tree(Path(entry.path))
