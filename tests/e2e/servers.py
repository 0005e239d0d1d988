"""App-server command lines that serve coordinator's releases with 0 failed requests and 0 mixed
versions across deploys, as proven by the end-to-end tests next to this module; and a process wrapper
that always stops what it started.

Every set-up loads the app through :mod:`coordinator.pin` (``coordinator.pin:application``, configured
by ``COORDINATOR_PIN_APP`` and ``COORDINATOR_PIN_CURRENT``), which resolves ``ROOT/current`` once per app
load and puts the real release directory, not the symlink, on ``sys.path`` and as the working
directory. None of them uses ``--chdir ROOT/current`` or ``--pythonpath ROOT/current``: with the
symlink's path on ``sys.path`` a worker that imports a module lazily after a swap mixes two releases
(``test_pinning.py`` shows it with uWSGI ``--pythonpath`` and gunicorn ``--chdir``), and a
``--lazy-apps`` master that changed into ``current`` keeps forking workers in the old release.

Which coordinator reload strategy goes with which server:

=========================  ====================================================  ===========================
server set-up              what a reload does                                    coordinator options
=========================  ====================================================  ===========================
:func:`uwsgi_touch`        graceful full reload: old workers finish, the master  (default: touch
                           re-execs and loads the app again; the listening       ``ROOT/reload.touch``)
                           socket stays open, requests queue meanwhile (~1 s)
:func:`uwsgi_fifo`         the same graceful full reload, triggered at once      ``--reload-fifo F
                           through the master FIFO (no 1 s touch polling)        --reload-fifo-command r``
:func:`uwsgi_lazy_chain`   chain reload: one worker at a time is replaced by a   ``--reload-fifo F
                           worker that loads the app itself (``--lazy-apps``);   --reload-fifo-command c``
                           the others keep serving; no request stalls
:func:`gunicorn_hup`       HUP: new workers load the app, old ones stop          ``--reload-signal HUP
                           gracefully (no ``--preload``); no request stalls      --reload-pidfile F``
=========================  ====================================================  ===========================
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The virtualenv's bin directory: uwsgi, gunicorn, supervisord and coordinator live next to python.
BIN = Path(sys.executable).parent

#: The target app inside each release, for coordinator.pin.
APP = "wsgi:application"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pin_env(root: Path, app: str = APP) -> dict[str, str]:
    """The environment that configures :mod:`coordinator.pin` for the volume ``root``."""
    return {"COORDINATOR_PIN_APP": app, "COORDINATOR_PIN_CURRENT": str(root / "current")}


def _uwsgi_common(port: int, processes: int = 2) -> list[str]:
    return [
        str(BIN / "uwsgi"),
        "--master",
        "--processes",
        str(processes),
        "--http-socket",
        f"127.0.0.1:{port}",
        "--module",
        "coordinator.pin:application",
        "--die-on-term",  # SIGTERM (docker stop, supervisord) stops instead of reloading
        "--disable-logging",  # no line per request
    ]


def uwsgi_touch(port: int, root: Path, processes: int = 2) -> list[str]:
    """uWSGI prefork, apps loaded in the master, graceful full reload when coordinator touches
    ``ROOT/reload.touch`` (coordinator's default strategy).

    ``--touch-reload`` is polled about once a second and compares whole-second mtimes; a reload makes the
    old workers finish their request, then the master re-execs itself and imports
    ``coordinator.pin:application`` again, which pins the new release. The listening socket is kept
    across the re-exec, so requests that arrive meanwhile wait in the backlog (``--listen``, default
    100) instead of failing. No ``--chdir``: pin sets the working directory; uWSGI returns to the
    directory it was started in before each re-exec. Without ``--need-app``: a release that fails to
    import leaves uWSGI up (answering 500) so that coordinator's rollback can reload it again.
    """
    return [*_uwsgi_common(port, processes), "--touch-reload", str(root / "reload.touch")]


def uwsgi_fifo(port: int, root: Path, fifo: Path) -> list[str]:
    """uWSGI prefork as in :func:`uwsgi_touch`, reloaded through the master FIFO (coordinator
    ``--reload-fifo FIFO --reload-fifo-command r``): the same graceful full reload, without waiting for
    the touch file's once-a-second check."""
    return [*_uwsgi_common(port), "--master-fifo", str(fifo)]


def uwsgi_lazy_chain(port: int, root: Path, fifo: Path) -> list[str]:
    """uWSGI ``--lazy-apps``: each worker imports ``coordinator.pin:application`` itself, so each pins
    the release ``current`` names when that worker starts. Reloaded by a chain reload through the master
    FIFO (coordinator ``--reload-fifo FIFO --reload-fifo-command c``): one worker at a time is replaced,
    the next only once the new one is accepting, so at least one worker always serves. The master never
    imports the app, so its own working directory and import caches do not matter.

    Caveat (seen in these tests): uWSGI ignores a chain reload asked for while one is running (it logs
    "chain reload already running"). A deploy that lands during a chain reload leaves the workers that
    were already replaced on the previous deploy's release until the next reload; the tests wait for
    "chain reloading complete" before the next deploy.
    """
    return [*_uwsgi_common(port), "--lazy-apps", "--master-fifo", str(fifo)]


def gunicorn_hup(port: int, root: Path, pidfile: Path, workers: int = 2) -> list[str]:
    """gunicorn, sync workers, app loaded in each worker (no ``--preload``), reloaded by ``HUP`` to the
    master (coordinator ``--reload-signal HUP --reload-pidfile PIDFILE``): new workers import
    ``coordinator.pin:application`` and pin the new release, old workers finish their requests
    (``--graceful-timeout``) and exit. The listening socket belongs to the master and never closes.
    Needs a shared PID namespace between coordinator and gunicorn (the pid file names a pid).

    Recent gunicorn (27 here) also opens a control socket, by default ``~/.gunicorn/gunicorn.ctl``, shared by
    every gunicorn of that user: it is put next to the pid file instead.
    """
    control = ["--control-socket", str(pidfile.with_suffix(".ctl"))] if _gunicorn_has_control_socket() else []
    return [
        str(BIN / "gunicorn"),
        *control,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--pid",
        str(pidfile),
        "--graceful-timeout",
        "30",
        "coordinator.pin:application",
    ]


def _gunicorn_has_control_socket() -> bool:
    try:
        config = importlib.import_module("gunicorn.config")
    except ImportError:
        return False
    return any(getattr(setting, "name", None) == "control_socket" for setting in config.KNOWN_SETTINGS)


#: The repository's docker/ directory: the uWSGI and supervisord configuration the images ship.
DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"

#: The single-container topology's supervisord configuration, used as it is by the tests.
SUPERVISORD_CONF = DOCKER_DIR / "supervisord.conf"

#: The recommended uWSGI configuration (touch reload, release pinning), used as it is by the tests.
UWSGI_INI = DOCKER_DIR / "uwsgi.ini"


def uwsgi_ini_env(port: int, root: Path, app: str = APP) -> dict[str, str]:
    """The environment that points :data:`UWSGI_INI` at ``127.0.0.1:port``, the volume ``root`` and the
    app ``app`` inside each release."""
    return {"APP_HTTP": f"127.0.0.1:{port}", "COORDINATOR_ROOT": str(root), "COORDINATOR_PIN_APP": app}


def supervisord_env(
    tmp: Path, port: int, root: Path, repo: Path | str, app: str = APP, **options: str
) -> dict[str, str]:
    """The environment under which :data:`SUPERVISORD_CONF` runs uWSGI (:data:`UWSGI_INI`, touch reload)
    and ``coordinator run`` as two autorestarted programs, with the control socket, pid file and logs in
    ``tmp`` and this virtualenv's ``uwsgi`` and ``coordinator`` first on ``PATH``. ``options`` are more
    coordinator options by name (``build_command="sleep 1"`` sets ``COORDINATOR_BUILD_COMMAND``)."""
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "SUPERVISOR_RUN_DIR": str(tmp),
        "SUPERVISOR_LOG_DIR": str(tmp),
        **uwsgi_ini_env(port, root, app),
        "COORDINATOR_REPO": str(repo),
        "COORDINATOR_LOG_FORMAT": "json",
    }
    env.update({"COORDINATOR_" + name.upper(): value for name, value in options.items()})
    return env


class Process:
    """A server started in its own process group, logging to a file; :meth:`stop` ends the whole group."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """Signal the leader (the server's master), wait, then SIGKILL whatever of the group is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        kill_group(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` (nothing if it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
    """One GET on a new connection to 127.0.0.1:port; (0, error) when it fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def wait_http(port: int, expect: str, timeout: float = 30.0, path: str = "/", server: Process | None = None) -> str:
    """Poll until ``GET path`` answers 200 with ``expect`` in the body; the body."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status, body = get(port, path)
        if status == 200 and expect in body:
            return body
        last = f"{status} {body[:200]}"
        if server is not None and not server.alive():
            raise AssertionError(f"server exited:\n{server.log()[-3000:]}")
        time.sleep(0.05)
    tail = server.log()[-3000:] if server is not None else ""
    raise AssertionError(f"no 200 with {expect!r} on :{port}{path} within {timeout} s (last: {last})\n{tail}")
