"""``coordinator demo``: the whole job on a throwaway repository, told as a shell session.

Each step is printed as the command a user would type (``$ coordinator deploy v2 --root volume
--wait``) followed by its real output: the ``coordinator`` commands run through
:func:`coordinator.cli.main` in this process (so ``--wait`` shows its live view on a terminal and plain
lines otherwise), the daemon and the app server run as subprocesses. The story: the first release on
disk, gunicorn serving it through :mod:`coordinator.pin`, the daemon started with a health check and
HUP reloads, a deploy followed phase by phase, a hostile marker refused with ``current`` untouched,
``status``, ``releases``, a rollback, then a release whose health check answers 500, rolled back
automatically, and ``history``. Without gunicorn the daemon runs without an app server and the last
act is skipped (the output says so).

Everything lives in one temporary directory, removed at the end; everything started is stopped, also
on an error, Ctrl-C or SIGTERM. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from coordinator.cli import main as cli_main

__all__ = ["main"]

HEALTH_TIMEOUT_S = 5  # how long the daemon gives a new release to answer its health check

_APP = '''"""A tiny WSGI app: / says hello, /health answers the commit of the release serving it."""
from coordinator.pin import release_info

VERSION = "{version}"


def application(environ, start_response):
    {bug}if environ.get("PATH_INFO") == "/health":
        body = release_info().get("sha", "")
    else:
        body = f"hello from {{VERSION}}\\n"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
'''
_BUG = 'raise RuntimeError("v3 lost its database settings")  # every request answers 500\n    '


class DemoError(Exception):
    """A step did not do what the story says; the demo stops and shows the logs."""


# ------------------------------------------------------------------------------------ the transcript


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def step(text: str) -> None:
    say(f"\n# {text}")


def show_command(argv: Sequence[str], suffix: str = "", env: Mapping[str, str] | None = None) -> None:
    """``$ argv`` as a shell line, continued with ``\\`` when long (never between an option and its value)."""
    words = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    args = [shlex.quote(a) for a in argv]
    while args:
        pair = args[0].startswith("--") and len(args) > 1 and not args[1].startswith("-")
        words.append(" ".join(args[:2]) if pair else args[0])
        del args[: 2 if pair else 1]
    words += [suffix] if suffix else []
    lines, line = [], "$"
    for word in words:
        if len(line) + len(word) > 92 and line not in ("$", "   "):
            lines.append(line + " \\")
            line = "   "
        line += " " + word
    say("\n".join([*lines, line]))


def coordinator(*args: str, ok: bool = True) -> int:
    """Show ``coordinator ARGS`` and run it in this process (its stderr joins the transcript)."""
    show_command(["coordinator", *args])
    sys.stdout.flush()
    with contextlib.redirect_stderr(sys.stdout):
        try:
            code = cli_main(list(args))
        except SystemExit as e:  # argparse: a usage error
            code = e.code if isinstance(e.code, int) else 2
    sys.stdout.flush()
    if code == 130:
        raise KeyboardInterrupt
    if code:
        say(f"(exit code {code})")
    if (code == 0) != ok:
        raise DemoError(f"`coordinator {shlex.join(args)}` exited {code}, expected {'0' if ok else 'an error'}")
    return code


def curl(port: int, expect: str) -> None:
    """Show ``curl -s URL`` and GET ``/``: the body must say ``expect``."""
    url = f"http://127.0.0.1:{port}/"
    show_command(["curl", "-s", url])
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body: str = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
    say(body.rstrip("\n"))
    if expect not in body:
        raise DemoError(f"{url} answered {body.strip()!r}, not {expect!r}")


# ------------------------------------------------------------------------------------ the setting


def git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "demo",
        "GIT_AUTHOR_EMAIL": "demo@example.invalid",
        "GIT_COMMITTER_NAME": "demo",
        "GIT_COMMITTER_EMAIL": "demo@example.invalid",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def make_repo(path: Path) -> None:
    """Tags v1 and v2 of the app, and v3, whose every request raises (so its health check fails)."""
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for version in ("v1", "v2", "v3"):
        bug = _BUG if version == "v3" else ""
        (path / "wsgi.py").write_text(_APP.format(version=version, bug=bug))
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"release {version}")
        git(path, "tag", "-a", version, "-m", version)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def gunicorn_bin() -> Path | None:
    """The gunicorn next to this Python (the e2e extras install it), or None."""
    path = Path(sys.executable).parent / "gunicorn"
    return path if path.exists() and importlib.util.find_spec("gunicorn") else None


def read_status(root: Path) -> dict[str, Any]:
    try:
        raw = json.loads((root / "deploy.status.json").read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def wait_until(what: str, check: Callable[[], bool], procs: Mapping[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while not check():
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with code {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_ok(port: int, expect: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return expect in resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return False


class Processes:
    """What the demo starts in the background, each in its own session (Ctrl-C reaches only the
    demo, which then stops them in order); :meth:`stop_all` ends each whole process group."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, shown: Sequence[str], argv: Sequence[str], log: str, env: Mapping[str, str] | None = None
    ) -> None:
        """Show ``shown`` as a background shell command and run ``argv`` (the same, by full path)."""
        show_command(shown, f">{log} 2>&1 &", env)
        with open(self.base / log, "ab") as out:
            self.running[name] = subprocess.Popen(
                argv,
                cwd=self.base,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_all(self) -> list[str]:
        """Stop everything, the last started first; a sentence per process."""
        done = []
        for name, proc in reversed(self.running.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group (workers, git)
            code = proc.wait()
            how = "cleanly" if code == 0 else f"with exit code {code}"
            done.append(f"stopped {name} (pid {proc.pid}) {how}")
        self.running.clear()
        return done


# ------------------------------------------------------------------------------------ the story


@dataclass
class Demo:
    """The setting: the temporary directory (the shell's working directory), what runs in it, and
    where gunicorn listens (``gunicorn`` is None when it is not installed)."""

    base: Path
    procs: Processes
    gunicorn: Path | None
    port: int = field(default_factory=free_port)

    @property
    def root(self) -> Path:
        return self.base / "volume"

    def curl(self, expect: str) -> None:
        if self.gunicorn is not None:
            curl(self.port, expect)

    def wait_for_state(self, what: str, states: Sequence[str]) -> None:
        daemon = self.procs.running["the daemon"].pid

        def reached() -> bool:
            status = read_status(self.root)
            return status.get("pid") == daemon and status.get("state") in states

        wait_until(what, reached, self.procs.running)


def story(demo: Demo) -> None:
    make_repo(demo.base / "repo")
    server = "gunicorn serving the app from it" if demo.gunicorn else "no app server (gunicorn is not installed)"
    say("coordinator demo: a git repository with tags v1, v2 and v3 (v3 is broken), a volume and")
    say(f"{server}, all in {demo.base}")
    say(f"$ cd {demo.base}")
    os.chdir(demo.base)
    first_release(demo)
    start_app_server(demo)
    start_daemon(demo)

    step("Deploy v2 and follow it phase by phase.")
    coordinator("deploy", "v2", "--root", "volume", "--wait")
    demo.curl("hello from v2")
    say("# Again: v2 is already current, there is nothing to do.")
    coordinator("deploy", "v2", "--root", "volume", "--wait")

    step("Hostile markers are refused, by the command and by the daemon; current stays v2.")
    coordinator("deploy", "../../etc/passwd", "--root", "volume", ok=False)
    hostile = "--upload-pack=touch pwned"
    show_command(["echo", hostile], ">volume/deploy.request")
    (demo.root / "deploy.request").write_text(hostile + "\n")
    demo.wait_for_state("the daemon to refuse the marker", ["invalid"])
    coordinator("status", "--root", "volume")
    if (read_status(demo.root).get("current") or {}).get("tag") != "v2":
        raise DemoError("the hostile marker changed the current release")
    coordinator("releases", "--root", "volume")

    step("Roll back to the previous release (already on disk: a swap and a reload).")
    coordinator("rollback", "--root", "volume", "--wait")
    demo.curl("hello from v1")
    broken_release(demo)

    step("Every attempt, newest first.")
    coordinator("history", "--root", "volume")


def first_release(demo: Demo) -> None:
    """``coordinator run --once`` on a marker written by hand: v1 on disk (gunicorn starts from it)."""
    step("The first release goes on disk: write the marker (a tag name), reconcile once.")
    show_command(["mkdir", "volume"])
    demo.root.mkdir()
    show_command(["echo", "v1"], ">volume/deploy.request")
    (demo.root / "deploy.request").write_text("v1\n")
    argv = ["coordinator", "run", "--root", "volume", "--repo", "repo", "--once"]
    show_command(argv, "2>run.log")
    with open(demo.base / "run.log", "wb") as log:
        once = subprocess.run([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=log, text=True, check=False)
    say(once.stdout.rstrip("\n"))
    if once.returncode != 0:
        raise DemoError(f"`coordinator run --once` exited {once.returncode}:\n{_tail(demo.base / 'run.log')}")


def start_app_server(demo: Demo) -> None:
    if demo.gunicorn is None:
        step("Skipped: gunicorn serving the app (not installed: pip install -e '.[e2e]' installs it).")
        return
    step("gunicorn serves the app through coordinator.pin, which pins each worker to one release.")
    control = ["--no-control-socket"] if _has_setting("control_socket_disable") else []
    argv = ["--bind", f"127.0.0.1:{demo.port}", "--workers", "1", "--pid", "gunicorn.pid", *control]
    argv += ["coordinator.pin:application"]
    env = {"COORDINATOR_PIN_APP": "wsgi:application", "COORDINATOR_PIN_CURRENT": "volume/current"}
    demo.procs.start("gunicorn", ["gunicorn", *argv], [str(demo.gunicorn), *argv], "gunicorn.log", env)
    wait_until("gunicorn to serve v1", lambda: http_ok(demo.port, "hello from v1"), demo.procs.running)
    demo.curl("hello from v1")


def start_daemon(demo: Demo) -> None:
    argv = ["coordinator", "run", "--root", "volume", "--repo", "repo"]
    if demo.gunicorn is None:
        step("The daemon watches the marker and touches volume/reload.touch after each swap.")
    else:
        step("The daemon watches the marker; after each reload it checks that /health answers the new commit.")
        argv += ["--health-url", f"http://127.0.0.1:{demo.port}/health", "--health-timeout", str(HEALTH_TIMEOUT_S)]
        argv += ["--reload-signal", "HUP", "--reload-pidfile", "gunicorn.pid"]
    demo.procs.start("the daemon", argv, [sys.executable, "-m", *argv], "daemon.log")
    demo.wait_for_state("the daemon to start", ["idle", "waiting"])


def broken_release(demo: Demo) -> None:
    """v3 answers 500: its health check fails, the daemon restores v1 on its own; ``--wait`` exits non-zero."""
    if demo.gunicorn is None:
        step("Skipped: v3, rolled back automatically when its health check fails (needs gunicorn).")
        return
    step(f"v3 is broken: every request answers 500. Its health check fails for {HEALTH_TIMEOUT_S} s, then")
    say("# the daemon swaps back to v1 and reloads gunicorn, without anyone typing a command.")
    coordinator("deploy", "v3", "--root", "volume", "--wait", ok=False)
    status = read_status(demo.root)
    if status.get("state") != "rolled_back" or (status.get("current") or {}).get("tag") != "v1":
        raise DemoError(f"v3 was not rolled back to v1 (state {status.get('state')})")
    demo.curl("hello from v1")


def _has_setting(name: str) -> bool:
    try:
        config = importlib.import_module("gunicorn.config")
    except ImportError:
        return False
    return any(getattr(s, "name", None) == name for s in config.KNOWN_SETTINGS)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a test runner's timeout, `kill`) cleans up as Ctrl-C does."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _without_coordinator_environment() -> Iterator[None]:
    """The demo's commands take their options from their arguments only (an exported
    ``COORDINATOR_MARKER`` would send the demo's markers elsewhere)."""
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("COORDINATOR_")}
    try:
        yield
    finally:
        os.environ.update(saved)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def main() -> int:
    cwd = os.getcwd()
    base = Path(tempfile.mkdtemp(prefix="coordinator-demo-"))
    procs = Processes(base)
    demo = Demo(base, procs, gunicorn_bin())
    code = 0
    on_interrupt = signal.getsignal(signal.SIGINT)
    with _sigterm_as_interrupt(), _without_coordinator_environment():
        try:
            story(demo)
        except KeyboardInterrupt:
            say("\ninterrupted: stopping what the demo started")
            code = 130
        except (DemoError, OSError, subprocess.SubprocessError) as e:
            sys.stderr.write(f"\ndemo failed: {e}\n")
            for log in ("daemon.log", "gunicorn.log"):
                if tail := _tail(base / log):
                    sys.stderr.write(f"--- the last lines of {log} ---\n{tail}\n")
            code = 1
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not stop the clean-up
                signal.signal(signum, signal.SIG_IGN)
            step("Clean up.")
            for line in procs.stop_all():
                say(line)
            os.chdir(cwd)
            shutil.rmtree(base, ignore_errors=True)
            say(f"could not remove {base}" if base.exists() else f"removed {base}")
            signal.signal(signal.SIGINT, on_interrupt)
    return code
