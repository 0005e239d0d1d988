"""The checks of ``coordinator check`` that face the app server and the commands coordinator runs:
the reload target (touch file, uWSGI FIFO, pid to signal, reload command), the programs of the
build, pre-swap and notify commands, the health URL and the canary. :func:`coordinator.checks.checks_for`
lists them with the others.

The reload FIFO is never opened (a byte written would reload the app), the signal sent to the pid
is 0 (existence only), and the health URL gets plain GETs. The canary (``--canary-command``) of the
current release is started once, probed and stopped, as a deploy would.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from functools import partial
from pathlib import Path

import anyio

from coordinator.canary import Canary
from coordinator.checkresult import CheckResult, failed, in_thread, mode_kind, passed
from coordinator.config import Config
from coordinator.exceptions import CoordinatorError, LayoutError
from coordinator.health import expected_text, probe
from coordinator.hooks import HookContext, needs_shell
from coordinator.layout import Layout, read_current
from coordinator.pidsignal import SignalReloader
from coordinator.state import read_release_meta
from coordinator.statefile import ReleaseMeta

__all__ = ["HEALTH_TIMEOUT_CAP", "check_canary", "check_command", "check_health", "check_reload"]

#: seconds one health GET may take at most (``--health-timeout`` is for a release starting up)
HEALTH_TIMEOUT_CAP = 10.0


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
            f"touch: {path} is {mode_kind(st.st_mode)}, not a regular file",
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
            f"fifo: {path} is {mode_kind(st.st_mode)}, not a FIFO",
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
        return await in_thread(partial(_fifo, config.reload_fifo))
    if strategy == "signal" and config.reload_pidfile is not None and config.reload_signal is not None:
        return await in_thread(partial(_signal, SignalReloader(config.reload_pidfile, config.reload_signal)))
    if strategy == "command" and config.reload_command is not None:
        found = await in_thread(partial(_program, name, "reload-command", config.reload_command, hook=False))
        return CheckResult(found.name, found.ok, f"command: {found.detail}", found.fix)
    return await in_thread(partial(_touch, config.layout.reload_file))


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
    return await in_thread(partial(_program, name, option, command, hook=True, in_release=in_release))


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
    meta = await in_thread(partial(_current_meta, config.layout))
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
    meta = await in_thread(partial(_current_meta, layout))
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
