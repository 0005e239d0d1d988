"""The build sandbox: a build command that cannot write a file of another release.

An incremental release shares the inodes of its unchanged files with the previous, published release
(hard links, :mod:`coordinator.incremental`). A build that wrote one of them in place (``>>``, an
editor, a tool rewriting its output) would change the published release too. So the build runs on
an overlay of its workspace instead (:mod:`coordinator.sandbox_exec`, in a user and mount namespace
of its own): the workspace is the overlay's read-only lower layer, mounted over at its own path, so
the build sees the same ``RELEASE_DIR`` with the same content, and every write lands in an upper
directory (``.coordinator/tmp/.sandbox.tmp-*``, same volume); ``ROOT/releases`` is read-only in the
namespace. The kernel copies a file up before its first write: the shared inode is never opened for
writing.

After a successful build, :meth:`BuildSandbox.apply` moves the upper directory's content into the
workspace, by rename only (a rename replaces this release's name for a path, never an inode another
release holds): new and changed files, symlinks and directories renamed in; a whiteout (character
device 0:0: the build deleted the path) unlinks the path; an opaque directory (the build removed a
directory and made it again) replaces the workspace's one. Anything else (an overlay redirect or
metacopy) fails the build. The paths of the workspace the build replaced or removed (and the
directories whose mode it changed) are returned: they are recorded in the release's metadata
(``build_changes``), and the next incremental release writes those paths fresh instead of linking
them, so a sandboxed build leaves a release that is still a sound base; once retired, the spare
removes them and writes the tag's files back (:mod:`coordinator.spare`). A release built in place
(no sandbox) is neither.

:meth:`BuildSandbox.unavailable` probes once whether this works here (unprivileged user namespaces
allowed, overlay with ``userxattr`` on this volume); where it does not, a release with a build
command is a full checkout and the build runs in place, as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import structlog

from coordinator.exceptions import BuildError
from coordinator.fsutil import remove_tree, temp_name

__all__ = ["EXEC", "MAX_CHANGES", "BuildSandbox", "SandboxDir", "apply_upper", "collapse"]

log = structlog.get_logger("coordinator.sandbox")

#: the script that sets the sandbox up and executes the build (standard library only)
EXEC = Path(__file__).with_name("sandbox_exec.py")
#: seconds the probe may take
PROBE_TIMEOUT_S = 30.0
#: at most this many changed paths are recorded; more are collapsed to their first component
MAX_CHANGES = 1000
_XATTR_PREFIX = "user.overlay."
_OPAQUE = "user.overlay.opaque"
#: overlay attributes that would mean the upper directory is not plain copies (never made with userxattr)
_UNEXPECTED = ("user.overlay.redirect", "user.overlay.metacopy")


class SandboxDir:
    """One build's sandbox directory: ``upper``, ``work``, ``lower`` (a symlink to the workspace),
    and ``ready`` once the sandbox was set up."""

    def __init__(self, tmp_dir: Path, workspace: Path) -> None:
        self.path = tmp_dir / temp_name("sandbox")
        self.workspace = workspace

    @property
    def upper(self) -> Path:
        return self.path / "upper"

    @property
    def ready(self) -> bool:
        return os.path.lexists(self.path / "ready")

    def create(self) -> None:
        """Make the directory (blocking)."""
        os.mkdir(self.path, 0o700)
        os.mkdir(self.upper, 0o755)
        os.mkdir(self.path / "work", 0o700)
        os.symlink(self.workspace, self.path / "lower")

    def remove(self) -> None:
        """Remove it, whatever the overlay left in ``work`` (mode 000 directories; blocking)."""
        with contextlib.suppress(FileNotFoundError):
            os.chmod(self.path / "work" / "work", 0o700)
        remove_tree(self.path)


def exec_argv(sb: SandboxDir, releases: Path) -> list[str]:
    """The argv prefix that runs a command (appended) in the sandbox ``sb``."""
    return [sys.executable, "-I", "-S", str(EXEC), str(sb.path), str(releases), str(sb.workspace), "--"]


class BuildSandbox:
    """Whether builds run in the sandbox here (probed once), and the sandbox of one build."""

    def __init__(self, releases: Path, tmp_dir: Path, mode: str = "auto") -> None:
        self.releases = releases
        self.tmp_dir = tmp_dir
        self.mode = mode
        self._lock = threading.Lock()
        self._probed = False
        self._unavailable: str | None = None

    def unavailable(self) -> tuple[str, str | None] | None:
        """None when builds run in the sandbox, else why not: ``("build_command", None)`` with
        ``--build-sandbox off``, ``("build_sandbox_unavailable", detail)`` when the probe failed
        (blocking: the first call probes, and logs the outcome)."""
        if self.mode == "off":
            return ("build_command", None)
        with self._lock:
            if not self._probed:
                self._unavailable = probe(self.releases, self.tmp_dir)
                self._probed = True
                if self._unavailable is None:
                    log.info("build_sandbox_ready")
                else:
                    log.warning("build_sandbox_unavailable", detail=self._unavailable)
        return None if self._unavailable is None else ("build_sandbox_unavailable", self._unavailable)

    def disable(self, detail: str) -> None:
        """The sandbox failed to set up for a build although the probe worked: no more sandboxed builds
        (blocking: takes the lock)."""
        with self._lock:
            self._probed, self._unavailable = True, detail

    def argv(self, sb: SandboxDir) -> list[str]:
        return exec_argv(sb, self.releases)

    def new_dir(self, workspace: Path) -> SandboxDir:
        """A fresh sandbox directory for a build in ``workspace`` (blocking)."""
        sb = SandboxDir(self.tmp_dir, workspace)
        sb.create()
        return sb

    def apply(self, sb: SandboxDir) -> tuple[str, ...]:
        """Move what the build wrote into the workspace; return the paths it replaced or removed
        (:func:`collapse`d). BuildError when the upper directory holds anything unexpected (blocking)."""
        changes: list[str] = []
        apply_upper(sb.upper, sb.workspace, "", changes)
        return collapse(changes)


def collapse(changes: list[str]) -> tuple[str, ...]:
    """``changes`` sorted, or, past :data:`MAX_CHANGES`, their first components (every path under
    one is then written fresh by the next incremental release)."""
    if len(changes) > MAX_CHANGES:
        return tuple(sorted({c.split("/", 1)[0] for c in changes}))
    return tuple(sorted(changes))


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def _strip_overlay_xattrs(path: Path) -> None:
    """Remove the overlay's own attributes from ``path`` (a directory renamed in keeps none)."""
    with contextlib.suppress(OSError):
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith(_XATTR_PREFIX):
                os.removexattr(path, name, follow_symlinks=False)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def apply_upper(upper: Path, workspace: Path, prefix: str, changes: list[str]) -> None:
    """Apply the overlay upper directory ``upper`` to the lower directory ``workspace`` by renames
    and unlinks only; append to ``changes`` every path of ``workspace`` replaced or removed (blocking).

    Never follows a symlink: a workspace entry is descended into only when it is a real directory.
    """
    for entry in sorted(os.scandir(upper), key=lambda e: e.name):
        src, dst, rel = upper / entry.name, workspace / entry.name, prefix + entry.name
        st = os.lstat(src)
        try:
            old: os.stat_result | None = os.lstat(dst)
        except FileNotFoundError:
            old = None
        if _is_whiteout(st):
            if old is not None:
                remove_tree(dst)
                changes.append(rel)
            continue
        if stat.S_ISDIR(st.st_mode):
            for name in _UNEXPECTED:
                if _xattr(src, name) is not None:
                    raise BuildError(
                        f"the build sandbox left {name} on {rel}: its result cannot be applied",
                        fix="report this; set --build-sandbox off meanwhile",
                    )
            opaque = _xattr(src, _OPAQUE)
            if opaque not in (None, b"y"):
                raise BuildError(
                    f"the build sandbox left an unknown opaque marker {opaque!r} on {rel}",
                    fix="report this; set --build-sandbox off meanwhile",
                )
            if old is not None and stat.S_ISDIR(old.st_mode) and opaque is None:
                apply_upper(src, dst, rel + "/", changes)  # a directory of the workspace, changed inside
                if stat.S_IMODE(st.st_mode) != stat.S_IMODE(old.st_mode):
                    os.chmod(dst, stat.S_IMODE(st.st_mode))  # the workspace's own, never shared
                    changes.append(rel)  # the spare puts the tag's directory back (git keeps no mode)
                continue
            _strip_overlay_xattrs(src)
        if old is not None:
            if stat.S_ISDIR(old.st_mode) or stat.S_ISDIR(st.st_mode):
                remove_tree(dst)  # a rename replaces a file by a file, a directory only when empty
            changes.append(rel)
        os.rename(src, dst)  # replaces the name; the inode it named (maybe shared) is untouched


def probe(releases: Path, tmp_dir: Path) -> str | None:
    """Whether a build can run in the sandbox on this volume: None if so, else why not (blocking).

    In a hidden directory of ``releases`` holding a file that is also hard-linked from ``tmp_dir``
    (as a published release shares it), the probe appends to that file in place, deletes one and
    replaces a directory through the sandbox; then checks that the file and its other link are
    unchanged and that the upper directory holds what :func:`apply_upper` expects."""
    if sys.platform != "linux":
        return f"needs Linux (user and mount namespaces, overlayfs), not {sys.platform}"
    if not sys.executable:
        return "no Python interpreter path (sys.executable) to run the sandbox with"
    workspace = releases / temp_name("sandbox-probe")
    published = tmp_dir / temp_name("sandbox-probe-published")
    sb = SandboxDir(tmp_dir, workspace)
    try:
        os.mkdir(workspace, 0o755)
        (workspace / "file").write_text("original\n")
        (workspace / "gone").write_text("gone\n")
        os.mkdir(workspace / "dir", 0o755)
        (workspace / "dir" / "file").write_text("in dir\n")
        os.link(workspace / "file", published)
        sb.create()
        try:
            proc = subprocess.run(
                [*exec_argv(sb, releases), "--probe"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=PROBE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"the probe could not run: {e}"
        if proc.returncode != 0:
            out = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
            return (out[-1] if out else f"the probe exited with {proc.returncode}").removeprefix(
                "coordinator build sandbox: "
            )
        return _probe_result(workspace, published, sb.upper)
    except OSError as e:
        return f"the probe failed: {e}"
    finally:
        for p in (workspace, published):
            with contextlib.suppress(OSError):
                remove_tree(p)
        with contextlib.suppress(OSError):
            sb.remove()


def _probe_result(workspace: Path, published: Path, upper: Path) -> str | None:
    """What the probe found wrong, or None."""
    if (workspace / "file").read_text() != "original\n" or published.read_text() != "original\n":
        return "a write through the overlay reached the lower layer"
    if (upper / "file").read_text() != "original\nchanged\n":
        return "the overlay did not copy the written file up"
    if not _is_whiteout(os.lstat(upper / "gone")):
        return "the overlay did not record a deleted file as a whiteout (character device 0:0)"
    if _xattr(upper / "dir", _OPAQUE) != b"y":
        return f"the overlay did not mark a replaced directory with {_OPAQUE}"
    return None
