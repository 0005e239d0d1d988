"""The checks of ``coordinator check`` (run by :mod:`coordinator.check`) of the volume and the
repository: ROOT, the layout, the repository and its tags, ssh files, signing keys, shared paths,
the build sandbox; and :func:`checks_for`, the list of those a configuration calls for, each with its
time limit, the app-facing ones of :mod:`coordinator.appchecks` included.

Each check is a small ``async def`` returning a :class:`~coordinator.checkresult.CheckResult`. A
check that cannot verify what it checks (the tag pattern when the repository cannot be listed) fails
too. Nothing is written: no lock, no marker, no status file, no git cache. The only files created
are the write probes of the ``root`` check (a temporary file in ROOT and in ``ROOT/.coordinator``,
removed at once) and the build sandbox's probe (:func:`coordinator.sandbox.probe`: hidden temporary
directories in ``releases/`` and ``.coordinator/tmp``, removed at once).
"""

from __future__ import annotations

import fnmatch
import os
import stat
import tempfile
from functools import partial
from pathlib import Path

import anyio

from coordinator.appchecks import HEALTH_TIMEOUT_CAP, check_canary, check_command, check_health, check_reload
from coordinator.canary import STOP_GRACE
from coordinator.checkresult import FS_LIMIT_S, Check, CheckResult, failed, in_thread, mode_kind, passed
from coordinator.config import Config
from coordinator.exceptions import GitError, LayoutError
from coordinator.fsutil import describe_os_error, file_kind, is_real_dir
from coordinator.git import GitCache, redact
from coordinator.gitssh import ssh_files_check
from coordinator.layout import Layout, read_current
from coordinator.sandbox import probe as sandbox_probe
from coordinator.signing import describe_keys

__all__ = ["checks_for", "same_filesystem"]


# ---------------------------------------------------------------------------------------------- ROOT


def _probe_write(directory: Path) -> None:
    """Create and remove a temporary file in ``directory`` (blocking); OSError when it cannot."""
    fd, name = tempfile.mkstemp(prefix=".coordinator-check-", dir=directory)
    os.close(fd)
    os.unlink(name)


def _root(name: str, layout: Layout) -> CheckResult:
    root = layout.root
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return failed(name, f"{root} does not exist", f"create it (mkdir -p {root}) or fix --root")
    except OSError as e:
        return failed(name, f"cannot stat {root}: {e.strerror}", describe_os_error(e, retried=False).get("fix"))
    if not stat.S_ISDIR(st.st_mode):
        return failed(
            name, f"{root} is {file_kind(st.st_mode)}, not a directory", "point --root at the volume's directory"
        )
    for directory in (root, layout.state_dir):
        if directory != root and not is_real_dir(directory):
            continue
        try:
            _probe_write(directory)
        except OSError as e:
            fix = describe_os_error(e, retried=False).get("fix")
            return failed(name, f"cannot create a file in {directory}: {e.strerror}", fix)
    return passed(name, f"{root} is a writable directory")


def same_filesystem(root: os.stat_result, releases: os.stat_result) -> bool:
    """Whether ``releases/`` is on ROOT's filesystem: ``current`` is swapped by a rename within ROOT
    to a release directory, and releases are published by rename from a workspace on ROOT."""
    return root.st_dev == releases.st_dev


def _layout(name: str, layout: Layout) -> CheckResult:
    if not os.path.isdir(layout.root):
        return failed(name, f"not checked: {layout.root} is not a directory", "fix the root check first")
    try:
        current = read_current(layout.root)
    except LayoutError as e:
        return failed(name, e.message, e.fix)
    try:
        releases = os.lstat(layout.releases)
    except FileNotFoundError:
        return passed(name, "no releases/ yet: created at the first deploy")
    if not stat.S_ISDIR(releases.st_mode):
        return failed(
            name, f"{layout.releases} is {file_kind(releases.st_mode)}, not a directory", "move it out of ROOT"
        )
    if not same_filesystem(os.stat(layout.root), releases):
        return failed(
            name,
            f"{layout.releases} is on another filesystem than {layout.root}",
            "unmount it: releases/ must be a plain directory of ROOT (current is swapped by a rename within ROOT)",
        )
    return passed(name, f"releases/ on ROOT's filesystem, current {current or 'not set yet'}")


# ---------------------------------------------------------------------------------------------- git


class RemoteTags:
    """The repository's tags, listed once (``git ls-remote``) for the checks that need them."""

    def __init__(self, config: Config) -> None:
        # the daemon's own cache directory for --git-dir (its config applies); it need not exist yet
        self._git = GitCache.from_config(config, writes_state=False)
        self._lock = anyio.Lock()
        self._result: dict[str, str] | GitError | None = None

    @property
    def repo(self) -> str:
        return redact(self._git.repo)

    async def get(self) -> dict[str, str] | GitError:
        async with self._lock:
            if self._result is None:
                try:
                    self._result = await self._git.remote_tags()
                except GitError as e:
                    self._result = e
            return self._result


async def check_repository(name: str, remote: RemoteTags) -> CheckResult:
    tags = await remote.get()
    if isinstance(tags, GitError):
        return failed(name, f"{remote.repo}: {tags.message}", tags.fix)
    if not tags:
        return passed(name, f"{remote.repo} is reachable; it has no tags yet (push one to deploy it)")
    return passed(name, f"{remote.repo} is reachable, {_tags(len(tags))}")


async def check_tag_pattern(name: str, remote: RemoteTags, pattern: str) -> CheckResult:
    tags = await remote.get()
    if isinstance(tags, GitError):
        return failed(name, "not checked: the repository cannot be listed", "fix the repository check first")
    matching = sorted(t for t in tags if fnmatch.fnmatchcase(t, pattern))
    if not matching:
        some = ", ".join(sorted(tags)[:3]) or "none"
        return failed(
            name,
            f"{pattern!r} matches none of the {len(tags)} tags of the repository (e.g. {some})",
            "fix --tag-pattern (a glob on the whole tag name, e.g. 'v*'), or push a matching tag",
        )
    return passed(name, f"{pattern!r} matches {len(matching)} of {_tags(len(tags))}, e.g. {matching[-1]}")


async def check_ssh_files(name: str, config: Config) -> CheckResult:
    """--ssh-key-file and --ssh-known-hosts-file: ssh installed, the key usable, the server known."""
    check = partial(ssh_files_check, config.repo, config.ssh_key_file, config.ssh_known_hosts_file)
    return CheckResult(name, *await in_thread(check))


async def check_signing_keys(name: str, config: Config) -> CheckResult:
    """--verify-signatures: the keys files readable and parsed, the keyring imported by gpg (into a
    temporary GNUPGHOME, removed at once), ssh-keygen installed for ssh keys."""
    return CheckResult(name, *await describe_keys(config, FS_LIMIT_S))


def _tags(n: int) -> str:
    return f"{n} tag" if n == 1 else f"{n} tags"


# ---------------------------------------------------------------------------------------------- shared


def _inside(path: Path, directory: Path) -> bool:
    """Whether ``path``, symlinks resolved, is inside ``directory`` (symlinks resolved)."""
    return os.path.realpath(path).startswith(os.path.realpath(directory) + os.sep)


def _shared_file(name: str, layout: Layout, rel: str) -> CheckResult:
    path = layout.shared / rel
    fix = f"put the file at {path} (every release links {rel} to it)"
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return failed(name, f"{path} does not exist", fix)
    if not _inside(path, layout.shared):
        return failed(name, f"{path} leads out of {layout.shared} (a symlink)", f"replace it by the file itself; {fix}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return failed(name, f"{path} is a dangling symlink", fix)
    if not stat.S_ISREG(st.st_mode):
        return failed(name, f"{path} is {mode_kind(st.st_mode)}, not a regular file", fix)
    return passed(name, f"{path} is a regular file")


def _shared_dir(name: str, layout: Layout, rel: str) -> CheckResult:
    path = layout.shared / rel
    try:
        os.lstat(path)
    except FileNotFoundError:
        return passed(name, f"{path} does not exist yet (note: created empty at the first deploy)")
    except NotADirectoryError:
        return failed(name, f"a parent of {path} is not a directory", f"make {path.parent} a directory")
    if not _inside(path, layout.shared):
        return failed(name, f"{path} leads out of {layout.shared} (a symlink)", "replace it by a directory")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return failed(name, f"{path} is a dangling symlink", "remove it (it is created empty) or fix its target")
    if not stat.S_ISDIR(st.st_mode):
        return failed(
            name, f"{path} is {mode_kind(st.st_mode)}, not a directory", "move it away, or make it a directory"
        )
    return passed(name, f"{path} is a directory")


def _build_sandbox(name: str, layout: Layout) -> CheckResult:
    """Whether the build runs in the build sandbox here (blocking). Never a failure: without it the
    build runs in place, in a full checkout."""
    if not (is_real_dir(layout.releases) and is_real_dir(layout.tmp_dir)):
        return passed(name, "not probed: ROOT/releases does not exist yet (the daemon probes it at start)")
    why = sandbox_probe(layout.releases, layout.tmp_dir)
    if why is None:
        return passed(name, "available: the build runs in an overlay, releases are prepared incrementally")
    return passed(name, f"note: unavailable ({why}): releases are full checkouts, built in place")


# ---------------------------------------------------------------------------------------------- the list


def checks_for(config: Config) -> list[Check]:
    """The checks ``config`` calls for, in the order they are shown."""
    layout = config.layout
    remote = RemoteTags(config)
    git_limit = config.git_timeout + 5
    checks = [
        Check("root", partial(in_thread, partial(_root, "root", layout))),
        Check("layout", partial(in_thread, partial(_layout, "layout", layout))),
        Check("repository", partial(check_repository, "repository", remote), git_limit),
    ]
    if config.ssh_key_file is not None or config.ssh_known_hosts_file is not None:
        checks.append(Check("ssh files", partial(check_ssh_files, "ssh files", config)))
    if config.verify_signatures:
        checks.append(Check("signing keys", partial(check_signing_keys, "signing keys", config), 2 * FS_LIMIT_S + 5))
    if config.tag_pattern is not None:
        checks.append(
            Check("tag pattern", partial(check_tag_pattern, "tag pattern", remote, config.tag_pattern), git_limit)
        )
    for rel in config.shared_files:
        name = f"shared file {rel}"
        checks.append(Check(name, partial(in_thread, partial(_shared_file, name, layout, rel))))
    for rel in config.shared_dirs:
        name = f"shared dir {rel}"
        checks.append(Check(name, partial(in_thread, partial(_shared_dir, name, layout, rel))))
    checks.append(Check("reload", partial(check_reload, "reload", config)))
    if config.health_url is not None:
        checks.append(Check("health", partial(check_health, "health", config), 2 * HEALTH_TIMEOUT_CAP + 5))
    if config.canary_command is not None:
        limit = config.canary_timeout + STOP_GRACE + 10
        checks.append(Check("canary", partial(check_canary, "canary", config), limit))
    for label, option, command in (
        ("build command", "build-command", config.build_command),
        ("pre-swap command", "pre-swap-command", config.pre_swap_command),
        ("notify command", "notify-command", config.notify_command),
    ):
        if command is not None:
            run = partial(check_command, label, option, command, in_release=option != "notify-command")
            checks.append(Check(label, run))
        if option == "build-command" and command is not None and config.build_sandbox == "auto":
            run = partial(in_thread, partial(_build_sandbox, "build sandbox", layout))
            checks.append(Check("build sandbox", run))
    return checks
