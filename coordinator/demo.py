"""``coordinator demo``: the main job on an embedded default, with no arguments.

It builds a temporary git repository of a tiny WSGI app with tags v1, v2 and v3, starts the real
daemon (``coordinator run``) as a subprocess on a temporary volume, then, as an operator would:
deploys v1 and v2 with ``deploy --wait``, deploys v2 again (already current, so no reload), writes
hostile markers (an option-like tag, a path traversal, an unknown tag), rolls back, and finally
switches between two releases already on disk to measure marker -> reload latency. It prints what
happened with measured latencies, stops the daemon and removes everything it created.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from coordinator.commands import read_status, request_deploy, request_rollback, wait_for
from coordinator.daemon import run_argv
from coordinator.exceptions import CoordinatorError
from coordinator.fsutil import atomic_write
from coordinator.layout import Layout
from coordinator.records import StatusRecord

__all__ = ["main"]

_APP = '''"""A tiny WSGI app: answers with the release it was loaded from."""
from pkg.version import VERSION


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"hello from {VERSION}\\n".encode()]
'''


def _git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "demo",
        "GIT_AUTHOR_EMAIL": "demo@example.invalid",
        "GIT_COMMITTER_NAME": "demo",
        "GIT_COMMITTER_EMAIL": "demo@example.invalid",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _make_repo(path: Path) -> None:
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    (path / "pkg").mkdir()
    (path / "wsgi.py").write_text(_APP)
    (path / "pkg" / "__init__.py").write_text("")
    for i in (1, 2, 3):
        (path / "pkg" / "version.py").write_text(f"VERSION = 'v{i}'\n")
        _git(path, "add", "-A")
        _git(path, "commit", "-q", "-m", f"release v{i}")
        _git(path, "tag", "-a", f"v{i}", "-m", f"v{i}")


def _served(root: Path) -> str:
    """What the app would serve now: read through `current`, as the app server does."""
    try:
        text = (root / "current" / "pkg" / "version.py").read_text()
    except FileNotFoundError:
        return "(nothing)"
    return text.split("=")[1].strip().strip("'")


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _wait_status(root: Path, pred: Any, timeout: float = 20.0) -> StatusRecord:
    layout = Layout.for_root(root)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = anyio.run(read_status, layout)
        if status and pred(status):
            return status
        time.sleep(0.02)
    raise CoordinatorError("the daemon did not update the status in time", fix="see the daemon log above")


def _deploy(root: Path, tag: str) -> float:
    layout = Layout.for_root(root)

    async def go() -> float:
        started = time.monotonic()
        req = await request_deploy(layout, tag)
        await wait_for(layout, req, 60)
        return (time.monotonic() - started) * 1000

    return anyio.run(go)


def _hostile(root: Path, text: str) -> StatusRecord:
    atomic_write(root / "deploy.request", text.encode())
    digest = __import__("hashlib").sha256(text.encode()).hexdigest()
    return _wait_status(root, lambda s: s.get("marker_digest") == digest and s.get("state") in ("invalid", "failed"))


def _run(base: Path) -> int:
    repo = base / "repo"
    root = base / "volume"
    root.mkdir()
    _make_repo(repo)
    _say(f"coordinator demo in {base}")
    _say(f"  repository {repo} with tags v1, v2, v3; volume {root}\n")
    log_path = base / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            run_argv(root, repo, "--log-format", "json"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_status(root, lambda s: s.get("state") == "waiting")
            _say("1. deploys (marker written -> tag current and reloaded, measured by the client):")
            for tag in ("v1", "v2"):
                ms = _deploy(root, tag)
                link = os.readlink(root / "current")
                _say(f"   deploy {tag}: {ms:7.1f} ms   current -> {link}, serves {_served(root)}")
            touch_before = os.stat(root / "reload.touch").st_mtime_ns
            ms = _deploy(root, "v2")
            same = os.stat(root / "reload.touch").st_mtime_ns == touch_before
            _say(f"   deploy v2 again: {ms:5.1f} ms   already current, reload skipped: {same}")

            _say("\n2. hostile or wrong markers (current must stay untouched):")
            for text in ("--upload-pack=touch /tmp/pwned", "../../etc/passwd", '{"tag": "v1", "sha": "zz"}', "v9"):
                status = _hostile(root, text)
                error = status.get("error")
                _say(f"   {text!r:40} -> {status.get('state')}: {error['message'] if error else '?'}")
                _say(f"   {'':40}    current still {os.readlink(root / 'current')}, serves {_served(root)}")

            _say("\n3. rollback to the previous release:")
            ms = _deploy(root, "v3")
            _say(f"   deploy v3: {ms:7.1f} ms   serves {_served(root)}")

            async def rollback() -> float:
                started = time.monotonic()
                req = await request_rollback(Layout.for_root(root))
                await wait_for(Layout.for_root(root), req, 60)
                return (time.monotonic() - started) * 1000

            ms = anyio.run(rollback)
            _say(f"   rollback:  {ms:7.1f} ms   serves {_served(root)} (release already on disk: swap + reload only)")

            _say("\n4. switching between releases already on disk (20 deploys):")
            samples, touched = [], []
            for tag in ["v3", "v2"] * 10:
                written = time.time_ns()
                samples.append(_deploy(root, tag))
                touched.append((os.stat(root / "reload.touch").st_ctime_ns - written) / 1e6)
            _say(
                f"   marker written -> reload file touched (daemon side): "
                f"p50 {statistics.median(touched):.1f} ms, max {max(touched):.1f} ms"
            )
            _say(
                f"   marker written -> client sees it done (deploy --wait): "
                f"p50 {statistics.median(samples):.1f} ms, max {max(samples):.1f} ms"
            )
            _say(f"   releases on disk: {sorted(p.name for p in (root / 'releases').iterdir())}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    _say(f"\ndaemon stopped cleanly (exit {rc}); its JSON log had {len(log_path.read_bytes().splitlines())} events")
    return 0 if rc == 0 else 1


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="coordinator-demo-"))
    try:
        return _run(base)
    except CoordinatorError as e:
        sys.stderr.write(f"demo failed: {e}\n")
        log = base / "daemon.log"
        if log.exists():
            sys.stderr.write(log.read_text()[-4000:])
        return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
        print(f"cleaned up {base}")
