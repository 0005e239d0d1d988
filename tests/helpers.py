"""Test helpers: real git repositories and the daemon as a real subprocess."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import http.server
import json
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from prometheus_client.parser import text_string_to_metric_families

from coordinator.config import Config
from coordinator.daemon import run_argv
from coordinator.deployer import Deployer
from coordinator.layout import Layout
from coordinator.records import StatusRecord, as_status

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class GitRepo:
    """A real git repository in a temporary directory, with helpers to commit and tag."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        out = subprocess.run(
            ["git", *args],
            cwd=self.path,
            env={**os.environ, **GIT_ENV},
            check=True,
            capture_output=True,
        )
        return out.stdout.decode().strip()

    def commit(
        self,
        files: Mapping[str, str | bytes | None],
        tag: str | None = None,
        *,
        annotated: bool = False,
        message: str = "commit",
        executable: tuple[str, ...] = (),
        symlinks: Mapping[str, str] | None = None,
    ) -> str:
        """Write (or delete, with None) files, commit, optionally tag; return the commit sha."""
        for rel, content in files.items():
            p = self.path / rel
            if content is None:
                if p.exists() or p.is_symlink():
                    p.unlink()
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.is_symlink():
                p.unlink()
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
        for rel in executable:
            (self.path / rel).chmod(0o755)
        for rel, target in (symlinks or {}).items():
            p = self.path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.is_symlink() or p.exists():
                p.unlink()
            p.symlink_to(target)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        sha = self.git("rev-parse", "HEAD")
        if tag:
            if annotated:
                self.git("tag", "-a", "-f", "-m", tag, tag)
            else:
                self.git("tag", "-f", tag)
        return sha

    def tag_sha(self, tag: str) -> str:
        return self.git("rev-parse", f"refs/tags/{tag}^{{commit}}")


def app_repo(path: Path, versions: int = 3) -> GitRepo:
    """A repository of a tiny WSGI app with tags v1..vN, each file naming its version."""
    repo = GitRepo(path)
    for i in range(1, versions + 1):
        repo.commit(
            {
                "app.py": f"VERSION = 'v{i}'\n",
                "pkg/__init__.py": "",
                "pkg/late.py": f"VERSION = 'v{i}'\n",
                "VERSION": f"v{i}\n",
            },
            tag=f"v{i}",
            message=f"version {i}",
        )
    return repo


def read_status(root: Path) -> dict[str, Any] | None:
    try:
        data = (root / "deploy.status.json").read_text()
        obj = json.loads(data)
    except (FileNotFoundError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def current_release(root: Path) -> str | None:
    try:
        return os.readlink(root / "current")
    except FileNotFoundError:
        return None


def wait_until(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class _ReleaseApp(http.server.BaseHTTPRequestHandler):
    root: Path

    def do_GET(self) -> None:
        real = Path(os.path.realpath(self.root / "current"))
        try:
            meta = json.loads(Path(f"{real}.json").read_text())
        except (FileNotFoundError, ValueError):
            meta = {}
        sha = meta.get("sha", "none") if isinstance(meta, dict) else "none"
        body = f"sha={sha}\n".encode()
        self.send_response(500 if (real / "BROKEN").exists() else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def release_health_server(root: Path) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 playing the app; yields its health URL.

    It answers `sha=<commit>` of the release `ROOT/current` points to (from its metadata file), or
    500 when that release holds a file named BROKEN.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_ReleaseApp,), {"root": root}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()


class Daemon:
    """`coordinator run` as a real subprocess."""

    def __init__(self, root: Path, repo: Path | str, *extra: str, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.log_path = root.parent / f"daemon-{root.name}.log"
        self.args = run_argv(root, repo, "--log-format", "json", *extra)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> Daemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        if wait_ready:
            wait_until(lambda: '"started"' in self.log_path.read_text() or self.proc_exited(), 20)
            assert not self.proc_exited(), self.log()
        return self

    def proc_exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._log.closed:
            self._log.close()


def write_marker(root: Path, text: str | bytes, name: str = "deploy.request") -> None:
    """Write a marker atomically (temp + rename), as a careful operator would."""
    tmp = root / f".{name}.writing"
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, root / name)


#: the unprivileged user the permission and non-root tests run the daemon as
NOBODY = 65534


def chown_to_nobody(path: Path) -> None:
    """Give ``path`` and everything below it to nobody:nogroup (symlinks themselves, not their targets)."""
    for p in [path, *path.rglob("*")]:
        os.chown(p, NOBODY, NOBODY, follow_symlinks=False)


def as_nobody(argv: list[str]) -> list[str]:
    """``argv`` run as nobody:nogroup without supplementary groups (needs root and setpriv)."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]


def deployed(root: Path, tag: str) -> bool:
    """The status file says the daemon is idle with ``tag`` current and that release reloaded."""
    st = read_status(root) or {}
    cur = st.get("current") or {}
    return bool(
        st.get("state") == "idle"
        and cur.get("tag") == tag
        and cur.get("release") is not None
        and st.get("reloaded") == cur.get("release")
    )


def leftovers(root: Path) -> list[str]:
    """Temporary names anywhere coordinator writes (releases/, ROOT, the state directory, its tmp/, the git cache)."""
    out = [f"releases/{n}" for n in os.listdir(root / "releases") if n.startswith(".")]
    out += [str(root / ".coordinator" / "tmp" / n) for n in os.listdir(root / ".coordinator" / "tmp")]
    for d in (root, root / ".coordinator", root / ".coordinator" / "releases"):
        if d.is_dir():
            out += [str(d / n) for n in os.listdir(d) if ".tmp-" in n or n.startswith("index")]
    objects = root / ".coordinator" / "git" / "objects"
    out += [str(p) for pattern in ("*/tmp_*", "incoming-*") for p in objects.glob(pattern)]  # git's own
    return out


def run_once(root: Path, repo: GitRepo, *extra: str, failpoints: str = "") -> subprocess.CompletedProcess[str]:
    """`coordinator run --once` as a subprocess (``run_argv``), with COORDINATOR_FAILPOINTS set to ``failpoints``."""
    env = {k: v for k, v in os.environ.items() if k != "COORDINATOR_FAILPOINTS"}
    if failpoints:
        env["COORDINATOR_FAILPOINTS"] = failpoints
    return subprocess.run(
        run_argv(root, repo.path, "--once", *extra),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m coordinator ARGS` as a subprocess; its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


IN_ATTRIB = 0x00000004


class TouchCounter:
    """Counts attribute changes (utime) of one file with a raw inotify watch on its directory."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        assert libc.inotify_add_watch(self.fd, str(path.parent).encode(), IN_ATTRIB) >= 0
        self.name = path.name.encode()
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            data = os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                offset += 16 + length
                if mask & IN_ATTRIB and name == self.name:
                    self.count += 1

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        os.close(self.fd)
        return self.count


#: a fixed clock for the pure display tests, and a request id
DISPLAY_NOW = datetime(2026, 11, 18, 8, 26, 40, tzinfo=UTC).timestamp()
DISPLAY_NOW_ISO = "2026-11-18T08:26:40.000+00:00"
DISPLAY_ID = "a1b2c3d4e5f60718"


def deploying_status(
    phases: dict[str, float], phase: str | None = None, result: str = "running", **kw: Any
) -> StatusRecord:
    """A status file of a deploy of v2 as the daemon writes it (phases_ms sorted by name, as
    json.dumps(sort_keys) does)."""
    return as_status(
        {
            "state": "deploying",
            "last_attempt": {
                "id": kw.get("id", DISPLAY_ID),
                "tag": "v2",
                "sha": "3f9c2a1b7d4e" + "0" * 28,
                "release": "v2-3f9c2a1b7d4e",
                "result": result,
                "phases_ms": dict(sorted(phases.items())),
                "error": kw.get("error"),
            },
            "phase": {"name": phase, "id": kw.get("id", DISPLAY_ID), "tag": "v2", "started_at": DISPLAY_NOW_ISO}
            if phase
            else None,
            "current": {"release": "v2-3f9c2a1b7d4e", "tag": "v2", "sha": "3f9c2a1b7d4e" + "0" * 28},
        }
    )


async def started_deployer(root: Path, repo: GitRepo, **kw: Any) -> Deployer:
    """A Deployer for ``root`` deploying from ``repo`` (more Config fields in ``kw``), started up."""
    d = Deployer(Config(layout=Layout.for_root(root), repo=str(repo.path), **kw))
    await d.startup()
    return d


async def wait_for_workspace(root: Path) -> None:
    """Until a release is being built: a hidden workspace appears in ``root/releases``."""
    while not any(n.startswith(".") for n in os.listdir(root / "releases")):
        await anyio.sleep(0.02)


# ---------------------------------------------------------------------- the daemon's HTTP endpoints


def http_port(d: Daemon) -> int:
    """The port a daemon started with ``--http-bind 127.0.0.1:0`` listens on (from its log)."""
    events = wait_until(lambda: [e for e in d.events() if e.get("event") == "http_listening"])
    return int(events[0]["port"])


def fetch(port: int, path: str) -> tuple[int, str, bytes]:
    """GET ``path`` on 127.0.0.1: the status code, the Content-Type and the body (error answers too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return int(r.status), str(r.headers["Content-Type"]), r.read()
    except urllib.error.HTTPError as e:
        return e.code, str(e.headers["Content-Type"]), e.read()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    """/readyz: the status code and the JSON body."""
    code, _, body = fetch(port, "/readyz")
    obj = json.loads(body)
    assert isinstance(obj, dict)
    return code, obj


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics, parsed: (sample name, labels) -> value."""
    code, content_type, body = fetch(port, "/metrics")
    assert code == 200 and content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` in a :func:`scrape`, or None."""
    return samples.get((name, frozenset(labels.items())))


# ---------------------------------------------------------------------- trees on disk


def contents(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root``, not following symlinks: path -> (type, permission bits, content)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st_ = os.lstat(full)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st_.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st_.st_mode), Path(full).read_bytes())
    return out


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """path -> (inode, mtime_ns, size, mode, content or link target) of everything under ``root``."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            full = os.path.normpath(os.path.join(dirpath, name))
            st_ = os.lstat(full)
            body: bytes | str | None = None
            if stat.S_ISLNK(st_.st_mode):
                body = os.readlink(full)
            elif stat.S_ISREG(st_.st_mode):
                body = Path(full).read_bytes()
            out[os.path.relpath(full, root)] = (st_.st_ino, st_.st_mtime_ns, st_.st_size, st_.st_mode, body)
    return out


#: the canary: serves /health with $SHA on $PORT from the release directory; a release holding BROKEN
#: exits 1 at once (like an import error), one holding SICK answers 500. Each start is logged to
#: the file named by its second argument.
CANARY_SERVER = """\
import http.server, json, os, sys

with open(sys.argv[2], "a") as log:
    log.write(json.dumps({"tag": os.environ["TAG"], "cwd": os.getcwd(), "port": sys.argv[1]}) + "\\n")
if os.path.exists("BROKEN"):
    print("Traceback (most recent call last):\\nRuntimeError: this release cannot be imported", flush=True)
    sys.exit(1)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["SHA"].encode()
        self.send_response(500 if os.path.exists("SICK") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def live_pids_with_env(*entries: bytes) -> list[int]:
    """Live (not zombie) processes whose environment holds every one of ``entries`` (``b"KEY=value"``,
    or ``b"KEY="`` for any value): a /proc scan, like ps."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if state != "Z" and all(
            any(e == want or (want.endswith(b"=") and e.startswith(want)) for e in env) for want in entries
        ):
            out.append(int(pid))
    return out


def process_texts() -> list[bytes]:
    """The command line and environment of every process that can be read."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for name in ("cmdline", "environ"):
            try:
                out.append(Path(f"/proc/{pid}/{name}").read_bytes())
            except OSError:
                continue
    return out


async def process_texts_during(work: Callable[[], Awaitable[object]]) -> list[bytes]:
    """Every process's command line and environment, read over and over while ``work`` runs."""
    seen: list[bytes] = []
    done = anyio.Event()

    def scan() -> None:
        while not done.is_set():
            seen.extend(process_texts())

    async def run() -> None:
        try:
            await work()
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        tg.start_soon(anyio.to_thread.run_sync, scan)
    return seen
