"""Where everything lives on the volume, and the two reads every part of coordinator needs: which
release ``current`` names, and which releases are on disk. Clients (``coordinator status``,
``releases``, the probes) import this module without the executor.

The layout is a contract (see the README)::

    ROOT/
      current -> releases/<name>        relative symlink, replaced only by rename
      releases/<name>/                  one immutable directory per release
      releases/<name>.json              its app-facing metadata
      deploy.request                    the marker (default; --marker)
      stage.request                     the stage request (coordinator stage): built, not swapped in
      deploy.status.json                the status file (default; --status-file)
      reload.touch                      the touch-reload file (default; --reload-file)
      deploy.pause                      present while deploys are paused (coordinator pause)
      shared/                           --shared-dir/--shared-file content, linked from each release
      .coordinator/                     state.json, journal.jsonl, lock, git/, releases/ (metadata), tmp/

All functions here block; async callers run them in a worker thread.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog

from coordinator.exceptions import LayoutError
from coordinator.fsutil import is_real_dir
from coordinator.plan import ReleaseInfo
from coordinator.state import read_release_meta

__all__ = ["Layout", "list_releases", "read_current"]

log = structlog.get_logger("coordinator")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything lives on the volume. This layout is a contract (see the README)."""

    root: Path
    marker: Path
    status_file: Path
    reload_file: Path

    @classmethod
    def for_root(
        cls,
        root: Path,
        marker: Path | None = None,
        status_file: Path | None = None,
        reload_file: Path | None = None,
    ) -> Layout:
        root = Path(os.path.abspath(root))
        return cls(
            root=root,
            marker=marker or root / "deploy.request",
            status_file=status_file or root / "deploy.status.json",
            reload_file=reload_file or root / "reload.touch",
        )

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def shared(self) -> Path:
        """Content every release shares (``--shared-dir``/``--shared-file``), linked from each release."""
        return self.root / "shared"

    @property
    def pause_file(self) -> Path:
        """Written by ``coordinator pause``, removed by ``resume``: while it exists nothing deploys."""
        return self.root / "deploy.pause"

    @property
    def stage_marker(self) -> Path:
        """Written by ``coordinator stage``: a release to build and publish without swapping it in."""
        return self.root / "stage.request"

    @property
    def state_dir(self) -> Path:
        return self.root / ".coordinator"

    @property
    def git_dir(self) -> Path:
        return self.state_dir / "git"

    @property
    def meta_dir(self) -> Path:
        return self.state_dir / "releases"

    @property
    def spare_dir(self) -> Path:
        """The spare (:mod:`coordinator.spare`): a retired release readied for the next deploy."""
        return self.state_dir / "spare"

    @property
    def tmp_dir(self) -> Path:
        return self.state_dir / "tmp"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def journal(self) -> Path:
        return self.state_dir / "journal.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"


def read_current(layout_root: Path) -> str | None:
    """The release name ``ROOT/current`` points to, or None when it is missing or not ours.

    Raises LayoutError when ``current`` is a real directory (the old in-place layout), which
    coordinator refuses to replace.
    """
    current = layout_root / "current"
    try:
        st = os.lstat(current)
    except FileNotFoundError:
        return None
    if not stat.S_ISLNK(st.st_mode):
        raise LayoutError(
            f"{current} is not a symlink",
            fix="move the old tree away; coordinator manages current as a symlink to releases/<name>",
        )
    target = os.readlink(current)
    prefix = "releases/"
    name = target[len(prefix) :] if target.startswith(prefix) else ""
    if not name or "/" in name or name.startswith(".") or not is_real_dir(layout_root / "releases" / name):
        log.warning("current_not_ours", target=target)
        return None
    return name


def list_releases(layout: Layout) -> list[ReleaseInfo]:
    """The published release directories (hidden temporary ones skipped), with their metadata."""
    out = []
    try:
        entries = list(os.scandir(layout.releases))
    except FileNotFoundError:
        return []
    for e in entries:
        if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
            continue
        meta = read_release_meta(layout.meta_dir, e.name)
        if meta is None:
            out.append(ReleaseInfo(e.name, known=False))
        else:
            out.append(ReleaseInfo(e.name, meta.created, meta.ok, meta.tag, meta.sha, signer=meta.signer))
    return out
