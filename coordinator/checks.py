"""The individual checks of ``coordinator check`` (run by :mod:`coordinator.check`).

Each check is a small ``async def`` returning a :class:`CheckResult`; :func:`checks_for` lists those a
configuration calls for, each with its time limit. A check that cannot verify what it checks (the tag
pattern when the repository cannot be listed) fails too.

Nothing is written: no lock, no marker, no status file, no git cache. The only files created are
the write probes of the ``root`` check (a temporary file in ROOT and in ``ROOT/.coordinator``,
removed at once) and the build sandbox's probe (:func:`coordinator.sandbox.probe`: hidden temporary
directories in ``releases/`` and ``.coordinator/tmp``, removed at once). The reload FIFO is never
opened (a byte written would reload the app), the signal sent to the pid is 0 (existence only), and
the health URL gets plain GETs. The canary (``--canary-command``) of the current release is started
once, probed and stopped, as a deploy would.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio

from coordinator.canary import STOP_GRACE, Canary
from coordinator.config import Config
from coordinator.exceptions import CoordinatorError, GitError, LayoutError
from coordinator.fsutil import describe_os_error, file_kind, is_real_dir
from coordinator.git import GitCache, redact
from coordinator.gitssh import ssh_files_check
from coordinator.health import expected_text, probe
from coordinator.hooks import HookContext, needs_shell
from coordinator.layout import Layout, read_current
from coordinator.pidsignal import SignalReloader
from coordinator.sandbox import probe as sandbox_probe
from coordinator.signing import describe_keys
from coordinator.state import read_release_meta
from coordinator.statefile import ReleaseMeta

__all__ = [
    "HEALTH_TIMEOUT_CAP",
    "Check",
    "CheckResult",
    "checks_for",
    "failed",
    "passed",
    "same_filesystem",
]

T = TypeVar("T")

#: seconds one health GET may take at most (``--health-timeout`` is for a release starting up)
HEALTH_TIMEOUT_CAP = 10.0
#: seconds a filesystem check may take (a hung network volume fails the check instead of hanging)
FS_LIMIT_S = 10.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of ``coordinator check``: ✓ name: detail, or ✗ name: detail -- fix."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name, True, detail)


def failed(name: str, detail: str, fix: str | None) -> CheckResult:
    return CheckResult(name, False, detail, fix)


@dataclass(frozen=True, slots=True)
class Check:
    """A named check and how long it may take."""

    name: str
    run: Callable[[], Awaitable[CheckResult]]
    limit_s: float = FS_LIMIT_S


async def _in_thread(fn: Callable[[], T]) -> T:
    """``fn`` in a worker thread, abandoned (not waited for) when the check runs out of time."""
    return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)


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
    return CheckResult(name, *await _in_thread(check))


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
        return failed(name, f"{path} is {_kind(st.st_mode)}, not a regular file", fix)
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
        return failed(name, f"{path} is {_kind(st.st_mode)}, not a directory", "move it away, or make it a directory")
    return passed(name, f"{path} is a directory")


def _kind(mode: int) -> str:
    return "a FIFO" if stat.S_ISFIFO(mode) else file_kind(mode)


# ---------------------------------------------------------------------------------------------- reload


def _touch(path: Path) -> CheckResult:
    name = "reload"
    if not os.path.isdir(path.parent):
        return failed(
            name,
            f"touch: the reload file's directory {path.parent} does not exist",
            "create it, or point --reload-file at a file in an existing directory",
        )
    uid = os.geteuid()
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return failed(name, f"touch: {path.parent} is not writable", f"make it writable by uid {uid}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return passed(name, f"touch: {path} is created at the first reload (its directory is writable)")
    if not stat.S_ISREG(st.st_mode):
        return failed(
            name,
            f"touch: {path} is {_kind(st.st_mode)}, not a regular file",
            "make the reload file a regular file that coordinator can write (or delete it)",
        )
    if uid != 0 and st.st_uid != uid:
        return failed(
            name,
            f"touch: {path} is owned by uid {st.st_uid}",
            f"setting its mtime needs the file to be owned by uid {uid}: chown it (or delete it)",
        )
    return passed(name, f"touch: {path} can be touched")


def _fifo(path: Path) -> CheckResult:
    name = "reload"
    start = f"start uWSGI with --master-fifo {path} (on a volume both containers mount)"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return failed(name, f"fifo: {path} does not exist: no uWSGI master created it", start)
    if not stat.S_ISFIFO(st.st_mode):
        return failed(
            name,
            f"fifo: {path} is {_kind(st.st_mode)}, not a FIFO",
            "remove it; uWSGI creates the FIFO itself at start",
        )
    if not os.access(path, os.W_OK):
        return failed(
            name,
            f"fifo: {path} is not writable by uid {os.geteuid()}",
            "uWSGI creates it with mode 0600: run coordinator as the same user as uWSGI",
        )
    return passed(name, f"fifo: {path} is a FIFO (not written to)")


def _signal(reloader: SignalReloader) -> CheckResult:
    name = "reload"
    try:
        pid = reloader.read_pid()
    except CoordinatorError as e:
        return failed(name, f"signal: {e.message}", e.fix)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return failed(
            name,
            f"signal: no process {pid} (from {reloader.pidfile}): the pid file is stale, or from another PID namespace",
            "start the app server; coordinator and the app server need a shared PID namespace "
            "(Kubernetes: shareProcessNamespace: true; Docker: --pid=container:<app>)",
        )
    except PermissionError:
        pass  # it exists; whether it may be signalled shows at the first reload
    return passed(name, f"signal: {reloader.signal_name} to process {pid} (from {reloader.pidfile}), which exists")


async def check_reload(name: str, config: Config) -> CheckResult:
    strategy = config.reload_strategy
    if strategy == "fifo" and config.reload_fifo is not None:
        return await _in_thread(partial(_fifo, config.reload_fifo))
    if strategy == "signal" and config.reload_pidfile is not None and config.reload_signal is not None:
        return await _in_thread(partial(_signal, SignalReloader(config.reload_pidfile, config.reload_signal)))
    if strategy == "command" and config.reload_command is not None:
        found = await _in_thread(partial(_program, name, "reload-command", config.reload_command, hook=False))
        return CheckResult(found.name, found.ok, f"command: {found.detail}", found.fix)
    return await _in_thread(partial(_touch, config.layout.reload_file))


# ---------------------------------------------------------------------------------------------- commands


def _program(name: str, option: str, command: str, *, hook: bool, in_release: bool = False) -> CheckResult:
    """The program of ``command`` is found (blocking). ``hook``: the command runs as the build and the
    hooks do (through ``/bin/sh -c`` when :func:`coordinator.hooks.needs_shell` says it needs a shell;
    ``--reload-command`` never does); ``in_release``: run in the release, so a relative path is not
    checkable."""
    if hook and needs_shell(command):
        if not os.access("/bin/sh", os.X_OK):
            return failed(name, f"--{option} needs /bin/sh, which is missing", "install a shell in this image")
        return passed(name, "runs through /bin/sh (shell syntax: its programs are not checked)")
    try:
        argv = shlex.split(command)
    except ValueError as e:
        return failed(name, f"cannot split --{option} {command[:80]!r}: {e}", "quote it as a POSIX shell would")
    if not argv:
        return failed(name, f"--{option} is empty", "give a program and its arguments")
    program = argv[0]
    if in_release and "/" in program and not os.path.isabs(program):
        return passed(name, f"{program} is relative to the release (note: not checked before a deploy)")
    found = shutil.which(program)
    if found is None:
        return failed(
            name,
            f"program {program!r} not found" + ("" if "/" in program else " on PATH"),
            f"install it, or give its absolute path in --{option}",
        )
    return passed(name, f"{program} is {found}")


async def check_command(name: str, option: str, command: str, *, in_release: bool) -> CheckResult:
    return await _in_thread(partial(_program, name, option, command, hook=True, in_release=in_release))


def _build_sandbox(name: str, layout: Layout) -> CheckResult:
    """Whether the build runs in the build sandbox here (blocking). Never a failure: without it the
    build runs in place, in a full checkout."""
    if not (is_real_dir(layout.releases) and is_real_dir(layout.tmp_dir)):
        return passed(name, "not probed: ROOT/releases does not exist yet (the daemon probes it at start)")
    why = sandbox_probe(layout.releases, layout.tmp_dir)
    if why is None:
        return passed(name, "available: the build runs in an overlay, releases are prepared incrementally")
    return passed(name, f"note: unavailable ({why}): releases are full checkouts, built in place")


# ---------------------------------------------------------------------------------------------- health


def _current_meta(layout: Layout) -> ReleaseMeta | None:
    try:
        current = read_current(layout.root)
    except (LayoutError, OSError):
        return None
    return None if current is None else read_release_meta(layout.meta_dir, current)


async def check_health(name: str, config: Config) -> CheckResult:
    """The URL answers 2xx (no deploy is in flight, so the expected text is not required). When a
    current release is known, whether the answer has its ``--health-expect`` text is a note."""
    url = config.health_url or ""
    limit = min(config.health_timeout, HEALTH_TIMEOUT_CAP)
    answer = await anyio.to_thread.run_sync(probe, url, "", limit, abandon_on_cancel=True)
    if not answer.ok:
        return failed(name, answer.reason, "start the app server, or fix --health-url (it must answer 2xx)")
    meta = await _in_thread(partial(_current_meta, config.layout))
    if meta is None:
        return passed(name, f"{url} answers 2xx")
    expect = expected_text(config.health_expect, meta.tag, meta.sha)
    with_text = await anyio.to_thread.run_sync(probe, url, expect, limit, abandon_on_cancel=True)
    if with_text.ok:
        return passed(name, f"{url} answers 2xx with {expect[:60]!r} of the current release {meta.name}")
    return passed(
        name,
        f"{url} answers 2xx (note: without {expect[:60]!r} of the current release {meta.name}; "
        "a deploy is verified by the new release's text)",
    )


# ---------------------------------------------------------------------------------------------- canary


async def check_canary(name: str, config: Config) -> CheckResult:
    """``--canary-command``: the canary of the current release started once, probed and stopped, as a
    deploy would (nothing recorded, nothing swapped): proves the command and the canary URL work."""
    canary = Canary.from_config(config, record=False)
    assert canary is not None
    layout = config.layout
    meta = await _in_thread(partial(_current_meta, layout))
    if meta is None:
        return passed(name, "not run: no current release yet (note: every deploy runs the canary)")
    ctx = HookContext(layout.root, meta.tag, meta.sha, meta.name, layout.releases / meta.name, None)
    outcome = await canary.run(ctx)
    if outcome.ok:
        return passed(name, f"the canary of {meta.name} passed in {outcome.seconds:.1f} s ({outcome.reason})")
    last = " | ".join(outcome.output.splitlines()[-3:])
    ends = f"; its output ends: {last}" if last else ""
    return failed(
        name,
        f"the canary of {meta.name} did not pass: {outcome.describe()}{ends}",
        "fix --canary-command (it must serve the release on 127.0.0.1:$PORT) or --canary-url",
    )


# ---------------------------------------------------------------------------------------------- the list


def checks_for(config: Config) -> list[Check]:
    """The checks ``config`` calls for, in the order they are shown."""
    layout = config.layout
    remote = RemoteTags(config)
    git_limit = config.git_timeout + 5
    checks = [
        Check("root", partial(_in_thread, partial(_root, "root", layout))),
        Check("layout", partial(_in_thread, partial(_layout, "layout", layout))),
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
        checks.append(Check(name, partial(_in_thread, partial(_shared_file, name, layout, rel))))
    for rel in config.shared_dirs:
        name = f"shared dir {rel}"
        checks.append(Check(name, partial(_in_thread, partial(_shared_dir, name, layout, rel))))
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
            run = partial(_in_thread, partial(_build_sandbox, "build sandbox", layout))
            checks.append(Check("build sandbox", run))
    return checks
