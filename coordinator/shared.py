"""Shared paths (``--shared-dir``, ``--shared-file``): content outside git that outlives releases.

The content lives in ``ROOT/shared/PATH``; each new release gets a relative symlink at ``PATH``
pointing there (``media -> ../../shared/media``, ``config/.env -> ../../../shared/config/.env``),
made after preparation and before the build command, so a build sees ``.env``. The link is relative
to its own directory: it stays valid when the release is renamed from its temporary name to its final
one, and resolves the same in every container that mounts the volume, wherever.

:meth:`SharedPaths.ensure` checks ``ROOT/shared`` before anything is checked out: it must be a real
directory (created when missing), every shared path in it must resolve inside it (a symlink planted
there pointing elsewhere is refused) and have the declared type; a missing shared directory is
created empty, a missing shared file is a :class:`~coordinator.exceptions.SharedPathError` (retried
on the next resync: the fix is to create the file, not to change the marker).

:meth:`SharedPaths.link` then puts the links into the workspace. What the tag tracks at a shared
path (a file, a symlink, a whole directory) is removed first and logged (``shared_path_replaced``);
missing parent directories are created (0755). A tracked file or symlink where a shared path needs a
parent directory is a :class:`~coordinator.exceptions.BuildError` (the tag and the configuration
disagree: not retried until the marker changes).

A published release is never modified: a rollback or a redeploy of a release on disk keeps the links
it was published with, whatever the configuration says now. Which paths a release links is recorded
in its metadata (:attr:`coordinator.statefile.ReleaseMeta.shared`), so that incremental preparation
never takes one of those links for a file of the tag (see :mod:`coordinator.prepare`).

:func:`shared_path` and :func:`check_shared_paths` validate the configured paths at start (exit 2).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import anyio
import structlog

from coordinator.exceptions import BuildError, ConfigError, SharedPathError
from coordinator.fsutil import file_kind, fsync_dir, remove_tree
from coordinator.layout import Layout

__all__ = ["SharedPaths", "check_shared_paths", "link_target", "shared_path"]

log = structlog.get_logger("coordinator")


def link_target(path: str) -> str:
    """The target of the link at ``RELEASE/path``: up to ROOT (the release is ``ROOT/releases/<name>``),
    then ``shared/path``."""
    return "../" * (path.count("/") + 2) + "shared/" + path


class SharedPaths:
    """The configured shared paths of one ROOT: checks ``ROOT/shared`` and links releases to it."""

    def __init__(self, layout: Layout, paths: Sequence[tuple[str, bool]]) -> None:
        self.layout = layout
        self.paths = tuple(paths)  # (path, is_dir)

    @property
    def names(self) -> tuple[str, ...]:
        """The shared paths, sorted (as recorded in a release's metadata)."""
        return tuple(sorted(p for p, _ in self.paths))

    async def ensure(self) -> None:
        """Check ``ROOT/shared`` and create missing shared directories (SharedPathError if not usable)."""
        if self.paths:
            await anyio.to_thread.run_sync(self._ensure)

    async def link(self, release: Path, name: str) -> None:
        """Link every shared path into the workspace ``release`` (of release ``name``)."""
        if self.paths:
            await anyio.to_thread.run_sync(self._link, release, name)

    # ------------------------------------------------------------------ blocking parts

    def _ensure(self) -> None:
        shared = self.layout.shared
        try:
            st = os.lstat(shared)
        except FileNotFoundError:
            _make_dir(shared)
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise SharedPathError(
                    f"{shared} is {file_kind(st.st_mode)}, not a directory",
                    fix=f"make {shared} a directory (not a symlink: releases link into it relatively)",
                    path=str(shared),
                )
        base = os.path.realpath(shared)
        for path, is_dir in self.paths:
            self._ensure_one(path, is_dir, base)

    def _ensure_one(self, path: str, is_dir: bool, base: str) -> None:
        full = self.layout.shared / path
        what = "directory" if is_dir else "file"
        real = os.path.realpath(full)
        if not real.startswith(base + os.sep):
            raise SharedPathError(
                f"shared {what} {full} resolves to {real}, outside {self.layout.shared}",
                fix=f"replace the symlink by the {what} itself, or by a relative symlink inside {self.layout.shared}",
                path=path,
            )
        try:
            st = os.stat(full)
        except NotADirectoryError:
            raise SharedPathError(
                f"a parent of shared {what} {full} is not a directory",
                fix=f"remove what is in the way inside {self.layout.shared}",
                path=path,
            ) from None
        except FileNotFoundError:
            if os.path.lexists(full):
                raise SharedPathError(
                    f"shared {what} {full} is a symlink to a missing target",
                    fix=f"create its target, or replace the symlink by the {what} itself",
                    path=path,
                ) from None
            if not is_dir:
                raise SharedPathError(
                    f"shared file {full} is missing",
                    fix=f"create {full} (it is linked into every release); coordinator retries on the next resync",
                    path=path,
                ) from None
            self._create_dir(path)
            return
        if stat.S_ISDIR(st.st_mode) != is_dir or not (is_dir or stat.S_ISREG(st.st_mode)):
            flag = "--shared-dir" if is_dir else "--shared-file"
            raise SharedPathError(
                f"{full} is {file_kind(st.st_mode)}, but {flag} {path} declares a {what}",
                fix=f"replace it by a {what}, or declare it with {'--shared-file' if is_dir else '--shared-dir'}",
                path=path,
            )

    def _create_dir(self, path: str) -> None:
        """Create ``ROOT/shared/path`` empty, with its missing parents (0755, each parent fsynced)."""
        d = self.layout.shared
        for part in path.split("/"):
            d = d / part
            if not os.path.isdir(d):
                _make_dir(d)
        log.info("shared_dir_created", path=path)

    def _link(self, release: Path, name: str) -> None:
        for path, _is_dir in self.paths:
            parts = path.split("/")
            parent = release
            for part in parts[:-1]:
                parent = parent / part
                try:
                    st = os.lstat(parent)
                except FileNotFoundError:
                    os.mkdir(parent, 0o755)
                    os.chmod(parent, 0o755)  # whatever our umask
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise BuildError(
                        f"the tag has {file_kind(st.st_mode)} at {parent.relative_to(release)}, where shared "
                        f"path {path} needs a directory",
                        fix=f"make it a directory in the tag, or stop sharing {path}",
                        path=path,
                    )
            link = release / path
            try:
                st = os.lstat(link)
            except FileNotFoundError:
                pass
            else:
                remove_tree(link)  # never follows a symlink: what the tag had there goes, nothing else
                log.warning("shared_path_replaced", path=path, release=name, tracked=file_kind(st.st_mode))
            os.symlink(link_target(path), link)


def _make_dir(path: Path) -> None:
    """Create directory ``path`` with mode 0755 (whatever the umask) and fsync its parent."""
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)
    fsync_dir(path.parent)


#: first components a shared path may not have: coordinator's own names in a release and the ROOT layout
_RESERVED = frozenset({".coordinator", ".git", "current", "releases", "shared"})


def shared_path(text: str, flag: str) -> str:
    """``--shared-dir``/``--shared-file`` PATH, checked: relative, inside the release, in normal form
    (``media/``, ``./media`` become ``media``); ConfigError (exit 2) otherwise."""

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"invalid --{flag} {text[:80]!r}: {why}",
            fix=f"give a path relative to the release, e.g. --{flag} media or --{flag} config/.env",
            option=flag + "s",
        )

    if not text or len(text) > 1024:
        raise bad("empty" if not text else "longer than 1024 characters")
    if text.startswith("/"):
        raise bad("absolute (it is a path inside each release)")
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise bad("control characters")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise bad("names the release itself")
    if ".." in parts:
        raise bad("'..' would leave the release")
    if any(p.startswith("-") for p in parts):
        raise bad("a component starts with '-'")
    if parts[0] in _RESERVED:
        raise bad(f"{parts[0]!r} is reserved")
    return "/".join(parts)


def check_shared_paths(dirs: tuple[str, ...], files: tuple[str, ...]) -> None:
    """No shared path twice, and none inside another (``media`` and ``media/x`` would link into a link)."""
    seen = sorted([*dirs, *files])
    for i, a in enumerate(seen):
        b = next((b for b in seen[i + 1 :] if b == a or b.startswith(a + "/")), None)
        if b is not None:
            raise ConfigError(
                f"shared paths {a!r} and {b!r} overlap" if a != b else f"shared path {a!r} is given twice",
                fix="give each shared path once, and none inside another",
                option="shared-dirs",
            )
