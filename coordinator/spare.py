"""The spare: a retired release readied in the background, so that preparing the next release costs
the change only (what an in-place ``git checkout -f`` of the new tag would write), with no pass over
every file on the deploy's path. :func:`coordinator.prepare.prepare_release` tries it first.

**Retire into the spare, don't delete** (:func:`retire`, called by the prune): of the releases
retention deletes (:func:`coordinator.plan.plan_prune`: never ``current``, the previous release, a
release in use or a staged one), the newest one that has a manifest and is pristine (no build command
ran in it) or was built in the build sandbox (:func:`coordinator.recycle.reusable`) is moved, when
the slot is empty, to ``ROOT/.coordinator/spare/`` instead of being deleted: ``tree/`` (the release
directory, renamed: same file system), ``manifest.index`` (its manifest, see :mod:`coordinator.recycle`)
and ``release.json`` (its metadata). Retention of published
releases is unchanged (``--keep`` counts published releases); the spare is one tree more, mostly hard
links shared with the releases kept. A file system that refuses the rename (``EXDEV``): deleted as before.

**Readying, while the daemon is idle** (:meth:`SpareKeeper.ready`, after a reconcile left nothing to
do; never while a deploy or a stage runs; cancelled at once when the marker changes): exactly the
check recycling did at deploy time, done beforehand: the shared links removed, and so is every path
a sandboxed build replaced or removed (its ``build_changes``: unlinked or removed as a tree, never
followed through a symlink, never written), and the tag files at or under them written back as new
inodes (:func:`coordinator.recycle.unshare`); every tracked file checked against the manifest and
everything it does not list removed (:func:`coordinator.recycle.check_tree`: ``update-index
--refresh`` and ``git clean -ffdx``, which takes the build's untracked outputs, such as a
``STATIC_ROOT``); then the spare is **advanced to current's commit** (``read-tree
-m -u SPARE CURRENT``, every written file a new inode), so that the next deploy's difference is the
one from current. The tree is flushed (``syncfs``) and only then ``spare.json`` written atomically
(:class:`~coordinator.statefile.SpareRecord`: name, commit, the tree's inode, the manifest's size and
mtime): only a spare with that record, matching what is on disk, is ready. When current changes
without the spare being used (a rollback, a deploy of a release on disk), the next idle pass advances
it again. Any mismatch or failure removes the spare, logged as ``spare_discarded`` with the reason
(those of :mod:`coordinator.recycle`, ``gitattributes_changed``, ``commit_missing``, ``spare_failed``,
``incomplete``, ``no_record`` at start-up, ``cancelled``); the slot stays empty until the next prune.

**At deploy** (:func:`use_spare`): the ready spare's tree is renamed over the empty workspace and
only the paths ``diff-tree SPARE NEW`` names are removed or written (:mod:`coordinator.changeset`:
no read or write of the whole index, every written file a new inode); the spare's manifest is kept,
owed, and completed for the new release when the daemon is next idle. **No file is checked at
deploy time**, a decision: the spare has not been published since it was checked, and it lives in
``ROOT/.coordinator/``, the trust boundary of the git cache, which coordinator does not verify again
either; nothing but coordinator writes there. Its unchanged files are hard links shared with published
releases, which are immutable by contract: a file of a published release modified in place after the
spare was checked (which the contract forbids, and which would change that release and older ones too)
reaches the new release unseen, where the check at deploy time would have seen it. A spare that
cannot be used (a commit the cache lacks, a changed ``.gitattributes``, git refusing the merge) is
``spare_fallback`` in ``prepare_stats``; the release is then recycled inline, prepared incrementally
or checked out in full, as without a spare.

**With a build command**: when the build runs in the build sandbox (:mod:`coordinator.sandbox`) the
spare is used as without one (the release is the tag's pristine tree, and the build writes through
the overlay, never into a shared inode), and such a release keeps its manifest and can become the
spare. A build in place (no sandbox) may have written any tracked file in place: its release keeps
no manifest, is never retired into the spare, and never prepared from it (a full checkout).

**Crash safety**: the spare is never in ``releases/``, never published, never listed. A crash while
retiring, readying or using it leaves a slot without a valid record (or a record the disk does not
match); start-up moves it aside and the next idle pass removes it (in a worker thread, like every
removal here). A deploy that crashes after taking the spare leaves a hidden workspace, removed at
start-up as before. The failpoint ``during-spare`` (the spare checked, not yet advanced) kills there.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog

from coordinator.changeset import complete_owed, manifest_path, read_change_file
from coordinator.exceptions import GitError
from coordinator.failpoints import failpoint
from coordinator.fsutil import fsync_dir, is_real_dir, remove_tree, sync_tree, temp_name
from coordinator.git import GitCache
from coordinator.incremental import SHA_RE, Abandoned
from coordinator.layout import Layout
from coordinator.logs import present
from coordinator.recycle import (
    GiveUp,
    Recycled,
    Retired,
    check_tree,
    recycle,
    retired_from,
    reusable,
    unshare,
)
from coordinator.state import read_json, read_release_meta, write_json
from coordinator.statefile import ReleaseMeta, SpareRecord

__all__ = ["ReadySpare", "SpareKeeper", "read_ready", "retire", "spare_tag", "unready", "use_spare", "vacate"]

log = structlog.get_logger("coordinator.spare")

RECORD, TREE, MANIFEST, RETIRED = "spare.json", "tree", "manifest.index", "release.json"
_TRASH = "spare-trash"


@dataclass(frozen=True, slots=True)
class ReadySpare:
    """A ready spare: the tree of commit ``sha`` with its manifest, in the slot ``slot``."""

    name: str  # the release it was
    tag: str
    sha: str
    slot: Path

    def as_retired(self) -> Retired:
        """As the retired release :func:`coordinator.recycle.recycle` takes (its files its record and metadata)."""
        s = self.slot
        return Retired(self.name, s / TREE, self.sha, s / MANIFEST, (s / RECORD, s / RETIRED))


# ------------------------------------------------------------------------------------------ blocking


def retire(layout: Layout, name: str) -> bool:
    """Move release ``name`` (retention deletes it) into the empty slot, with its manifest and metadata,
    instead of deleting it; False when it is neither pristine nor built in the sandbox, or the slot is
    full (blocking)."""
    meta = read_release_meta(layout.meta_dir, name)
    manifest, release = manifest_path(layout, name), layout.releases / name
    if meta is None or meta.name != name or not reusable(meta) or not SHA_RE.fullmatch(meta.sha):
        return False
    if not os.path.isfile(manifest) or not is_real_dir(release):
        return False
    slot = layout.spare_dir
    try:
        os.mkdir(slot, 0o755)
    except FileExistsError:
        return False
    try:
        os.rename(release, slot / TREE)
    except OSError as e:  # EXDEV: .coordinator on another file system; the release is deleted as before
        os.rmdir(slot)
        log.debug("spare_not_filled", release=name, error=e.strerror)
        return False
    fsync_dir(layout.releases)  # out of releases/ before its metadata goes
    os.replace(manifest, slot / MANIFEST)
    os.replace(layout.meta_dir / f"{name}.json", slot / RETIRED)
    (layout.releases / f"{name}.json").unlink(missing_ok=True)
    log.debug("spare_retired", release=name)
    return True


def read_ready(layout: Layout) -> ReadySpare | None:
    """The ready spare, if the slot holds one whose record matches the disk (blocking)."""
    slot = layout.spare_dir
    rec = SpareRecord.from_json(read_json(slot / RECORD))
    if rec is None or not SHA_RE.fullmatch(rec.sha) or not _matches(slot, rec):
        return None
    return ReadySpare(rec.name, rec.tag, rec.sha, slot)


def _matches(slot: Path, rec: SpareRecord) -> bool:
    try:
        tree, manifest = os.lstat(slot / TREE), os.lstat(slot / MANIFEST)
    except OSError:
        return False
    on_disk = (tree.st_ino, manifest.st_size, manifest.st_mtime_ns)
    return on_disk == (rec.tree_ino, rec.manifest_size, rec.manifest_mtime_ns) and is_real_dir(slot / TREE)


def _look(layout: Layout) -> ReadySpare | ReleaseMeta | str | None:
    """The slot: empty (None), ready, freshly retired (its release's metadata) or invalid (why)."""
    slot = layout.spare_dir
    if not os.path.lexists(slot):
        return None
    ready = read_ready(layout)
    if ready is not None:
        return ready
    if os.path.lexists(slot / RECORD):
        return "record_mismatch"
    raw = read_json(slot / RETIRED)
    meta = ReleaseMeta.from_json(raw) if raw else None
    if meta is None or not reusable(meta) or not SHA_RE.fullmatch(meta.sha) or not is_real_dir(slot / TREE):
        return "incomplete"
    if not os.path.isfile(slot / MANIFEST):
        return "incomplete"
    return meta


def _move_aside(layout: Layout) -> Path | None:
    """Rename the slot to a hidden trash name in ``.coordinator/`` (empty at once); the trash (blocking)."""
    trash = layout.state_dir / temp_name(_TRASH)
    try:
        os.rename(layout.spare_dir, trash)
    except FileNotFoundError:
        return None
    return trash


def _remove_trash(layout: Layout) -> None:
    """Remove the spares moved aside before (blocking)."""
    for entry in os.scandir(layout.state_dir):
        if entry.name.startswith(f".{_TRASH}.tmp-"):
            remove_tree(Path(entry.path))


def spare_tag(layout: Layout) -> str | None:
    """The tag whose commit the spare holds (the git cache keeps it for the spare), or None (blocking)."""
    rec = SpareRecord.from_json(read_json(layout.spare_dir / RECORD))
    if rec is not None:
        return rec.tag
    raw = read_json(layout.spare_dir / RETIRED)
    meta = ReleaseMeta.from_json(raw) if raw else None
    return meta.tag if meta is not None else None


def _write_record(slot: Path, name: str, tag: str, sha: str) -> None:
    """Flush the tree, then write ``spare.json``: the spare is ready (blocking)."""
    sync_tree(slot / TREE)
    tree, manifest = os.lstat(slot / TREE), os.lstat(slot / MANIFEST)
    rec = SpareRecord(name, tag, sha, tree.st_ino, manifest.st_size, manifest.st_mtime_ns)
    write_json(slot / RECORD, rec.to_json())


def unready(layout: Layout) -> Retired | None:
    """The spare when it is retired but not yet readied (a deploy came before the idle pass), as a
    retired release to recycle inline, checked at deploy time (blocking)."""
    look = _look(layout)
    if not isinstance(look, ReleaseMeta):
        return None
    slot = layout.spare_dir
    return retired_from(look, slot / TREE, slot / MANIFEST, (slot / RETIRED,))


def vacate(layout: Layout) -> None:
    """Remove the slot's directory once a deploy took the spare out of it (blocking)."""
    with contextlib.suppress(OSError):  # not empty: the spare was not taken (left for the next idle pass)
        os.rmdir(layout.spare_dir)


# ------------------------------------------------------------------------------------------ async


async def use_spare(git: GitCache, spare: ReadySpare, sha: str, dest: Path, index_file: Path) -> Recycled | Abandoned:
    """Turn the ready spare into the tree of ``sha`` in the empty workspace ``dest`` (see the module);
    the caller then removes the empty slot (:func:`vacate`)."""
    return await recycle(git, spare.as_retired(), sha, dest, index_file, checked=True)


class SpareKeeper:
    """Keeps the spare: checks it at start-up, readies it when the daemon is idle."""

    def __init__(self, layout: Layout, git: GitCache) -> None:
        self.layout = layout
        self.git = git

    async def startup(self) -> None:
        """A spare without a valid record, or whose record the disk does not match, is moved aside
        (removed by the next idle pass, in a worker thread)."""
        look = await anyio.to_thread.run_sync(_look, self.layout)
        if look is None or isinstance(look, ReadySpare):
            return
        reason = look if isinstance(look, str) else "no_record"
        await self._discard(reason, None, remove=False)

    async def ready(self, current: tuple[str, str] | None) -> ReadySpare | None:
        """Ready the spare for a deploy from ``current`` (its tag and commit; see the module); None: no
        spare. Cancelled
        (a marker change), the spare is moved aside at once and removed by the next idle pass."""
        await anyio.to_thread.run_sync(_remove_trash, self.layout)
        await complete_owed(self.git, self.layout)  # the manifests deploys from the spare left owed
        look = await anyio.to_thread.run_sync(_look, self.layout)
        if look is None:
            return None
        if isinstance(look, str):
            await self._discard(look, None)
            return None
        slot = self.layout.spare_dir
        current_tag, current_sha = current if current is not None and SHA_RE.fullmatch(current[1]) else ("", None)
        if isinstance(look, ReadySpare):
            if current_sha is None or look.sha == current_sha:
                return look
            await anyio.Path(slot / RECORD).unlink()  # no longer ready while it is advanced
            name, tag, sha, fresh = look.name, look.tag, look.sha, False
            retired = look.as_retired()
        else:
            name, tag, sha, fresh = look.name, look.tag, look.sha, True
            retired = retired_from(look, slot / TREE, slot / MANIFEST, ())
        started = time.monotonic()
        try:
            if fresh:
                await unshare(self.git, retired, retired.path, retired.manifest)
                await check_tree(self.git, retired.path, retired.manifest)
            failpoint("during-spare")
            if current_sha is not None and current_sha != sha:
                await self._advance(retired, current_sha)
                tag, sha = current_tag, current_sha
            await anyio.to_thread.run_sync(_write_record, slot, name, tag, sha)
        except GiveUp as e:
            await self._discard(e.reason, e.detail, release=name)
            return None
        except GitError as e:
            await self._discard("spare_failed", e.message, release=name)
            return None
        except OSError as e:
            await self._discard("spare_failed", f"{e.strerror}: {e.filename}", release=name)
            return None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._discard("cancelled", None, release=name, remove=False)
            raise
        log.info("spare_ready", release=name, sha=sha, duration_ms=round((time.monotonic() - started) * 1000, 1))
        return ReadySpare(name, tag, sha, slot)

    async def _advance(self, retired: Retired, sha: str) -> None:
        """``read-tree -m -u`` the spare from its commit to ``sha`` (GiveUp: a commit missing, a
        changed ``.gitattributes``)."""
        diff_file = self.layout.tmp_dir / temp_name("spare-diff")
        try:
            error = await self.git.diff_tree(retired.sha, sha, diff_file)
            if error is not None:
                raise GiveUp("commit_missing", error)
            try:
                change = await anyio.to_thread.run_sync(read_change_file, diff_file)
            except ValueError as e:
                raise GiveUp("spare_failed", str(e)) from e
            if change.attributes:
                raise GiveUp("gitattributes_changed")
            await self.git.merge_trees(retired.sha, sha, retired.path, retired.manifest, update=True)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.Path(diff_file).unlink(missing_ok=True)

    async def _discard(
        self, reason: str, detail: str | None, *, release: str | None = None, remove: bool = True
    ) -> None:
        """Empty the slot (moved aside at once; removed now in a worker thread, or by the next idle pass)."""
        trash = await anyio.to_thread.run_sync(_move_aside, self.layout)
        log.info("spare_discarded", **present(reason=reason, detail=detail, release=release))
        if trash is not None and remove:
            await anyio.to_thread.run_sync(remove_tree, trash)
