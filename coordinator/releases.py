"""The release store: the release directories under ``ROOT/releases/`` and their metadata.

It creates the layout at start-up (and removes what a killed daemon left half-done), builds a new
release under a hidden temporary name, publishes it (fsync the tree, write its metadata, rename it
to its final name, fsync ``releases/``), and prunes old ones. A release that has its final name is
complete and never modified again, except that a release which failed its health check is marked so
in its (coordinator-side) metadata.

Preparation uses the spare or recycles the release retention would delete next when it can
(:mod:`coordinator.spare`, :mod:`coordinator.recycle`; never with a build in place), else is
incremental when it is safe (hard links from the release ``current`` names, see
:mod:`coordinator.prepare`), else a full checkout. A build command runs in the build sandbox
(:mod:`coordinator.sandbox`), where it cannot write an inode shared with a published release; where
the sandbox is unavailable (or ``--build-sandbox off``) it runs in place and the release is always a
full checkout, whose manifest is not kept (it is never reused).
The shared paths are linked in after preparation (:mod:`coordinator.shared`) and recorded in the
release's metadata; the release's manifest (the git index preparation leaves, with the stat data of
its files) is kept next to its metadata as ``<name>.index``, for a later recycling to check against.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

import anyio
import structlog

from coordinator.build import run_build
from coordinator.changeset import manifest_path, owed_path, remove_owed
from coordinator.config import Config
from coordinator.exceptions import BuildError, LayoutError, SandboxError
from coordinator.failpoints import failpoint
from coordinator.fsutil import fsync_dir, is_real_dir, remove_tree, sync_tree, temp_name
from coordinator.git import GitCache
from coordinator.hooks import HookContext
from coordinator.inuse import releases_in_use
from coordinator.layout import Layout, list_releases, read_current
from coordinator.plan import ReleaseInfo, plan_prune
from coordinator.prepare import PrepareStats, PreviousRelease, prepare_release
from coordinator.recycle import Retired, pick_retired
from coordinator.sandbox import BuildSandbox
from coordinator.shared import SharedPaths
from coordinator.spare import ReadySpare, read_ready, retire, unready, vacate
from coordinator.state import read_release_meta, write_release_meta
from coordinator.statefile import ReleaseMeta

__all__ = ["ReleaseStore", "load_previous"]

log = structlog.get_logger("coordinator")


class ReleaseStore:
    """Creates, publishes, lists and prunes release directories. Its blocking parts run in threads."""

    def __init__(self, config: Config, git: GitCache) -> None:
        self.config = config
        self.layout = config.layout
        self.git = git
        self.shared = SharedPaths(self.layout, config.shared_paths)
        self._manifests: dict[Path, Path] = {}  # workspace -> the manifest its preparation left
        self.sandbox = BuildSandbox(self.layout.releases, self.layout.tmp_dir, config.build_sandbox)
        #: workspace -> how its build runs: in the sandbox (True) or in place (False), decided at prepare
        self._sandboxed: dict[Path, bool] = {}
        #: workspace -> the paths its sandboxed build replaced or removed, recorded at publish
        self._build_changes: dict[Path, tuple[str, ...]] = {}
        #: workspace -> the commit its manifest still describes (owed: :mod:`coordinator.changeset`)
        self._manifests_owed: dict[Path, str] = {}
        #: prune retires a pristine release into the spare slot (:mod:`coordinator.spare`) instead of
        #: deleting it; off for ``run --once``, which never readies a spare
        self.retire_to_spare = True
        #: counts preparations, publications and prunes: what can change the spare's slot or owe a
        #: manifest (the idle pass has nothing to do while this and ``current`` stay the same)
        self.generation = 0

    # ------------------------------------------------------------------ start-up

    def prepare_layout(self) -> None:
        """Create the layout, refuse planted links and a real ``current`` directory, and remove the
        temporary leftovers of a killed daemon (blocking)."""
        lay = self.layout
        root = lay.root
        if not root.is_dir():
            raise LayoutError(f"root {root} is not a directory", fix="create it or fix --root")
        for d in (lay.releases, lay.state_dir, lay.meta_dir, lay.tmp_dir, lay.git_dir):
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                os.mkdir(d, 0o755)
                fsync_dir(d.parent)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise LayoutError(
                    f"{d} is not a directory (a symlink or file was planted there)",
                    fix=f"remove {d}; coordinator recreates it",
                )
        read_current(root)  # refuse a real `current` directory up front
        removed: list[str] = []
        for d in (lay.releases, root, lay.state_dir, lay.meta_dir, lay.tmp_dir, lay.status_file.parent):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for entry in entries:
                if ".tmp-" in entry.name and entry.name.startswith("."):
                    remove_tree(Path(entry.path))
                    removed.append(
                        str(Path(entry.path).relative_to(root)) if d != lay.status_file.parent else entry.path
                    )
        removed += _remove_orphaned_metadata(lay)
        if removed:
            log.info("leftovers_removed", paths=sorted(removed))
        if self.config.build_command:
            self.sandbox.unavailable()  # probed once, at start (logged)

    # ------------------------------------------------------------------ reading

    async def observe(self) -> tuple[str | None, list[ReleaseInfo]]:
        """``current`` and the releases on disk, in one trip to a worker thread."""
        return await anyio.to_thread.run_sync(self.observe_blocking)

    def observe_blocking(self) -> tuple[str | None, list[ReleaseInfo]]:
        """:meth:`observe`, blocking (for a worker thread that reads more of the volume)."""
        return read_current(self.layout.root), list_releases(self.layout)

    async def current(self) -> str | None:
        return await anyio.to_thread.run_sync(read_current, self.layout.root)

    def current_meta_blocking(self) -> tuple[str | None, ReleaseMeta | None]:
        """``current`` and its metadata, blocking (for a worker thread that reads more of the volume)."""
        current = read_current(self.layout.root)
        return current, read_release_meta(self.layout.meta_dir, current) if current is not None else None

    async def meta(self, name: str) -> ReleaseMeta | None:
        return await anyio.to_thread.run_sync(read_release_meta, self.layout.meta_dir, name)

    # ------------------------------------------------------------------ building

    async def new_workspace(self, name: str) -> Path:
        """An empty, hidden directory in ``releases/`` to build release ``name`` in."""
        tmp = self.layout.releases / temp_name(name)
        await anyio.to_thread.run_sync(os.mkdir, tmp, 0o755)
        return tmp

    async def discard(self, tmp: Path) -> None:
        """Remove an unpublished workspace (shielded: also when the deploy was cancelled)."""
        self._sandboxed.pop(tmp, None)
        self._build_changes.pop(tmp, None)
        with anyio.CancelScope(shield=True):
            manifest = self._manifests.pop(tmp, None)
            if manifest is not None:
                await anyio.Path(manifest).unlink(missing_ok=True)
            await anyio.to_thread.run_sync(remove_tree, tmp)

    async def prepare(
        self,
        tmp: Path,
        sha: str,
        previous_current: str | None,
        *,
        name: str | None = None,
        previous: str | None = None,
        protected: Collection[str] = (),
    ) -> PrepareStats:
        """Fill ``tmp`` with the tracked files of ``sha``: by recycling the release retention would
        delete next once release ``name`` is published (never ``previous_current``, ``previous``, a
        release in use or one in ``protected``), else incrementally from ``previous_current`` when that
        is safe, else by a full checkout (see :mod:`coordinator.prepare`). Without ``name``, or with a
        build command that runs in place, nothing is recycled. With a build command, whether it runs in
        the build sandbox is decided here: in place, the release is a full checkout; in the sandbox, it
        is prepared (from the spare, recycled...) as without a build."""
        self.generation += 1
        in_place = None
        if self.config.build_command:
            in_place = await anyio.to_thread.run_sync(self.sandbox.unavailable)
            self._sandboxed[tmp] = in_place is None
        reuse = name is not None and in_place is None  # the spare or a retired release may be used

        def gather() -> tuple[PreviousRelease | None, ReadySpare | None]:
            prev = load_previous(self.layout, previous_current)
            return prev, read_ready(self.layout) if reuse else None

        def pick() -> Retired | None:
            """No ready spare: the spare not yet readied, checked now; without a spare, the release
            retention deletes next, unless it is to fill the empty spare slot (at this deploy's prune)."""
            assert name is not None
            if self.retire_to_spare:
                fresh = unready(self.layout)
                if fresh is not None or not os.path.lexists(self.layout.spare_dir):
                    return fresh
            return pick_retired(self.layout, previous_current, previous, self.config.keep, name, protected)

        prev, spare = await anyio.to_thread.run_sync(gather)
        try:
            stats = await prepare_release(
                self.git,
                sha,
                tmp,
                self.layout.tmp_dir / temp_name("index"),
                prev,
                build_command=in_place is not None,
                build_fallback=in_place or ("build_command", None),
                retired=pick if reuse else None,
                spare=spare,
            )
        finally:
            if self.retire_to_spare and reuse:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(vacate, self.layout)
        if stats.manifest is not None:
            self._manifests[tmp] = stats.manifest
            if stats.manifest_from is not None:
                self._manifests_owed[tmp] = stats.manifest_from
        return stats

    async def build(
        self, tmp: Path, name: str, tag: str, sha: str, previous_current: str | None, request_id: str | None = None
    ) -> None:
        """Run ``--build-command`` in the workspace (BuildError when it fails): in the build sandbox
        when :meth:`prepare` found it available, else in place."""
        cfg = self.config
        assert cfg.build_command
        ctx = self.hook_context(tag, sha, name, previous_current, request_id, release_dir=tmp)
        if not self._sandboxed.get(tmp, False):
            await run_build(cfg.build_command, ctx, cfg.build_timeout, cfg.extra_env)
            return
        sb = await anyio.to_thread.run_sync(self.sandbox.new_dir, tmp)
        try:
            try:
                await run_build(cfg.build_command, ctx, cfg.build_timeout, cfg.extra_env, self.sandbox.argv(sb))
            except BuildError as e:
                if await anyio.to_thread.run_sync(lambda: sb.ready):
                    raise
                detail = e.fields.get("output") or e.message
                # the next release is a full checkout, built in place
                await anyio.to_thread.run_sync(self.sandbox.disable, str(detail))
                raise SandboxError(
                    f"the build sandbox could not be set up: {detail}",
                    fix="nothing to do: the next try (on resync) builds in place, in a full checkout; "
                    "--build-sandbox off makes that the rule",
                    output=e.fields.get("output"),
                ) from e
            self._build_changes[tmp] = await anyio.to_thread.run_sync(self.sandbox.apply, sb)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(sb.remove)

    def hook_context(
        self,
        tag: str,
        sha: str,
        name: str | None,
        previous_current: str | None,
        request_id: str | None,
        *,
        release_dir: Path | None = None,
    ) -> HookContext:
        """The environment of a command run for release ``name`` (in ``release_dir``, by default
        ``releases/<name>``) while ``previous_current`` was current."""
        lay = self.layout
        if release_dir is None and name:
            release_dir = lay.releases / name
        previous = lay.releases / previous_current if previous_current else None
        return HookContext(lay.root, tag, sha, name or "", release_dir, previous, request_id)

    async def publish(self, tmp: Path, name: str, tag: str, sha: str, signer: str | None = None) -> None:
        """Make the workspace release ``name``: flushed to disk, then renamed to its final name
        (``signer``: who signed the tag, recorded in its metadata)."""
        self.generation += 1
        await anyio.to_thread.run_sync(self._publish, tmp, name, tag, sha, signer)

    def _publish(self, tmp: Path, name: str, tag: str, sha: str, signer: str | None) -> None:
        lay = self.layout
        os.chmod(tmp, 0o755)
        failpoint("before-publish")
        sync_tree(tmp)  # syncfs: the manifest (on the same volume) too
        failpoint("after-release-fsync")
        manifest, owed = self._manifests.pop(tmp, None), self._manifests_owed.pop(tmp, None)
        build_changes = self._build_changes.pop(tmp, None)  # None: not built, or built in place
        if manifest is not None:
            if self.config.build_command and build_changes is None:  # built in place: never reused
                manifest.unlink(missing_ok=True)
            else:  # owed: completed when the daemon is next idle (coordinator.changeset)
                os.replace(manifest, owed_path(lay, name, owed) if owed else manifest_path(lay, name))
        # created after the flush: no file of the release is newer (incremental preparation relies on it)
        meta = ReleaseMeta(
            name,
            tag,
            sha,
            time.time(),
            built=bool(self.config.build_command),
            shared=self.shared.names,
            build_changes=build_changes,
            signer=signer,
        )
        self._sandboxed.pop(tmp, None)
        write_release_meta(lay.meta_dir, meta)
        # the app-facing metadata, next to the release directory (never modified once published)
        write_release_meta(lay.releases, meta, app_facing=True)
        os.rename(tmp, lay.releases / meta.name)
        failpoint("after-release-rename")
        fsync_dir(lay.releases)

    async def record_signer(self, name: str, signer: str) -> None:
        """Record in release ``name``'s (coordinator-side) metadata who signed its tag: a release built
        before ``--verify-signatures`` was turned on, verified when it is swapped in."""

        def record() -> None:
            meta = read_release_meta(self.layout.meta_dir, name)
            if meta is not None:
                write_release_meta(self.layout.meta_dir, replace(meta, signer=signer))

        await anyio.to_thread.run_sync(record)

    async def mark_failed(self, name: str) -> None:
        """Record that release ``name`` failed its health check (pruned first, never kept)."""

        def mark() -> None:
            meta = read_release_meta(self.layout.meta_dir, name)
            if meta is not None:
                write_release_meta(self.layout.meta_dir, replace(meta, ok=False))

        await anyio.to_thread.run_sync(mark)

    # ------------------------------------------------------------------ pruning

    async def prune(self, previous: str | None, staged: str | None = None) -> list[str]:
        """Delete the releases :func:`coordinator.plan.plan_prune` picks (the newest pristine one moves
        into an empty spare slot instead, :func:`coordinator.spare.retire`); return their names."""
        self.generation += 1
        lay, keep = self.layout, self.config.keep

        def prune() -> list[str]:
            releases = list_releases(lay)
            current = read_current(lay.root)
            in_use = sorted(releases_in_use(lay.releases))
            doomed = plan_prune(releases, current, previous, keep, in_use, staged=staged)
            created = {r.name: r.created for r in releases}
            spare = None  # the newest pristine one fills an empty spare slot (the smallest change from current)
            for name in sorted(doomed, key=lambda n: created.get(n, 0.0), reverse=True):
                if self.retire_to_spare and spare is None and retire(lay, name):
                    spare = name
            for name in doomed:
                if name != spare:
                    remove_tree(lay.releases / name)
                (lay.meta_dir / f"{name}.json").unlink(missing_ok=True)
                manifest_path(lay, name).unlink(missing_ok=True)
                remove_owed(lay, name)
                (lay.releases / f"{name}.json").unlink(missing_ok=True)
            return doomed

        doomed = await anyio.to_thread.run_sync(prune)
        if doomed:
            log.debug("pruned", releases=doomed)
        return doomed


def load_previous(layout: Layout, name: str | None) -> PreviousRelease | None:
    """The release ``name`` (the one ``current`` points to) as a :class:`PreviousRelease` (blocking):
    its directory and what its metadata says (commit, publication time, whether it was built, the
    shared paths linked into it)."""
    if name is None:
        return None
    meta = read_release_meta(layout.meta_dir, name)
    if meta is not None and meta.name != name:
        meta = None
    return PreviousRelease(
        path=layout.releases / name,
        sha=meta.sha if meta else None,
        created=meta.created if meta else None,
        built=meta.built if meta else None,
        shared=frozenset(meta.shared) if meta else frozenset(),
        manifest=manifest if meta and os.path.isfile(manifest := manifest_path(layout, name)) else None,
        build_changes=frozenset(meta.build_changes) if meta and meta.build_changes is not None else None,
    )


def _remove_orphaned_metadata(lay: Layout) -> list[str]:
    """Remove the metadata and manifests of releases whose directory is gone (a crash between
    recycling or pruning a release and removing its metadata); their paths, relative (blocking)."""
    removed: list[str] = []
    for d, suffixes in ((lay.meta_dir, (".json", ".index")), (lay.releases, (".json",))):
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            if entry.name.startswith(".") or not dot or f".{suffix}" not in suffixes:
                continue
            if not entry.is_file(follow_symlinks=False) or is_real_dir(lay.releases / stem):
                continue
            Path(entry.path).unlink(missing_ok=True)
            removed.append(str(Path(entry.path).relative_to(lay.root)))
    return removed
