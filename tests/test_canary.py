"""The canary (coordinator.canary) with real processes: tiny servers written by each test, started in a
release directory, probed and stopped; after every test nothing the canary started is left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator.canary import Canary, CanaryOutcome, canary_url, check_canary_options, expand_words
from coordinator.canaryproc import CANARY_ENV, stop_leftover
from coordinator.exceptions import CanaryError, ConfigError
from coordinator.hooks import OUTPUT_CHARS, HookContext
from coordinator.statefile import CanaryRecord
from tests.helpers import live_pids_with_env

SHA = "3f9c2a1b7d4e" + "0" * 28

#: a server answering /health with $SHA (or what $ANSWER says) on the port given as its first argument
SERVER = """\
import http.server, os, sys

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = int(os.environ.get("STATUS", "200"))
        body = (os.environ["SHA"] + " " + os.environ["RELEASE"] + " " + os.getcwd()).encode()
        self.send_response(status if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

#: starts a child that ignores SIGTERM (in the canary's group, or out of it with setsid), then sleeps
STUBBORN = """\
import os, signal, sys, time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    if sys.argv[1] == "setsid":
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)
if sys.argv[2] == "exit":
    time.sleep(0.3)
    sys.exit(0)
while True:
    time.sleep(1)
"""

#: 100,000 lines of 1 KiB (100 MB), numbered, then silence
LOUD = """\
import sys, time

for i in range(100_000):
    sys.stdout.write(f"{i:07d}" + "x" * 1016 + "\\n")
sys.stdout.flush()
time.sleep(60)
"""

pytestmark = pytest.mark.anyio


@pytest.fixture
def mark() -> str:
    """A value put in every canary's environment, to find its processes afterwards."""
    return uuid.uuid4().hex


@pytest.fixture
def release(tmp_path: Path) -> Path:
    d = tmp_path / "releases" / "v1-3f9c2a1b7d4e"
    d.mkdir(parents=True)
    (d / "server.py").write_text(SERVER)
    (d / "stubborn.py").write_text(STUBBORN)
    return d


@pytest.fixture(autouse=True)
def nothing_left(mark: str) -> Iterator[None]:
    """After each test: no process carrying the test's mark runs (killed at the end if one did)."""
    yield
    left = running(mark)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"processes left running: {left}"


def running(mark: str) -> list[int]:
    """Live (not zombie) processes whose environment holds TEST_MARK=mark."""
    return live_pids_with_env(f"TEST_MARK={mark}".encode())


def ctx(release: Path) -> HookContext:
    return HookContext(release.parent.parent, "v1", SHA, release.name, release, None)


def canary(command: str, mark: str, *, timeout: float = 10.0, record: Path | None = None, **env: str) -> Canary:
    return Canary(
        command,
        url="/health",
        health_url=None,
        expect="{sha}",
        timeout=timeout,
        extra_env={"TEST_MARK": mark, **env},
        record=record,
        grace=1.0,
    )


PY = sys.executable


def sleeper(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process sleeping a minute in a session of its own, with ``env``."""
    return subprocess.Popen([PY, "-c", "import time; time.sleep(60)"], env=env, start_new_session=True)


# ---------------------------------------------------------------------- passing


async def test_a_canary_that_serves_the_release_passes(release: Path, mark: str) -> None:
    """The release started on $PORT answers /health with its sha: passed, within seconds."""
    outcome = await canary(f"{PY} server.py $PORT", mark).run(ctx(release))
    assert outcome.ok, outcome
    assert outcome.seconds < 8
    assert outcome.url.startswith("http://127.0.0.1:") and outcome.url.endswith("/health")
    assert "serving" in outcome.output


async def test_the_canary_runs_in_the_release_with_its_environment(release: Path, mark: str) -> None:
    """cwd is the release directory; RELEASE and SHA are set (the server echoes them)."""
    c = Canary(
        f"{PY} server.py ${{PORT}}",
        url="/health",
        health_url=None,
        expect=f"{release.name} {release}",
        timeout=10,
        extra_env={"TEST_MARK": mark},
        grace=1.0,
    )
    outcome = await c.run(ctx(release))
    assert outcome.ok, outcome


async def test_a_passing_canary_leaves_nothing_running_and_no_record(release: Path, mark: str, tmp_path: Path) -> None:
    """Stopped once it passed: its processes gone, its record removed."""
    record = tmp_path / "canary.json"
    outcome = await canary(f"{PY} server.py $PORT", mark, record=record).run(ctx(release))
    assert outcome.ok
    assert running(mark) == []
    assert not record.exists()


# ---------------------------------------------------------------------- bad input


async def test_a_canary_that_never_listens_fails_at_its_timeout(release: Path, mark: str) -> None:
    """Never listening: fails once --canary-timeout ran out, saying it could not reach the URL."""
    started = time.monotonic()
    outcome = await canary(f"{PY} -c 'import time; time.sleep(60)'", mark, timeout=2).run(ctx(release))
    assert not outcome.ok
    assert 2 <= time.monotonic() - started < 6
    assert "no pass within 2 s" in outcome.reason and "cannot reach" in outcome.reason


async def test_a_canary_on_another_port_fails_at_its_timeout(release: Path, mark: str) -> None:
    """Listening on a port of its own choosing, not $PORT: nothing answers on $PORT."""
    outcome = await canary(f"{PY} server.py 0", mark, timeout=2).run(ctx(release))
    assert not outcome.ok
    assert "cannot reach" in outcome.reason


async def test_a_canary_that_exits_at_once_fails_at_once(release: Path, mark: str) -> None:
    """Exit 0 at once: failed as soon as it exited, with its exit code, long before the timeout."""
    started = time.monotonic()
    outcome = await canary(f"{PY} -c 'print(\"bye\")'", mark, timeout=20).run(ctx(release))
    assert not outcome.ok
    assert time.monotonic() - started < 5
    assert outcome.returncode == 0
    assert "exited with code 0" in outcome.reason
    assert outcome.output == "bye"


async def test_a_canary_whose_import_fails_shows_the_traceback(release: Path, mark: str) -> None:
    """A release that cannot be imported: its traceback is the output kept."""
    (release / "app.py").write_text("raise RuntimeError('cannot import this release')\n")
    outcome = await canary(f"{PY} app.py", mark).run(ctx(release))
    assert not outcome.ok and outcome.returncode == 1
    assert "RuntimeError: cannot import this release" in outcome.output


async def test_a_canary_answering_500_fails_with_the_status(release: Path, mark: str) -> None:
    """/health answers 500: failed at the timeout, the reason names the HTTP status."""
    outcome = await canary(f"{PY} server.py $PORT", mark, timeout=2, STATUS="500").run(ctx(release))
    assert not outcome.ok
    assert "HTTP 500" in outcome.reason


async def test_a_canary_without_the_expected_text_fails(release: Path, mark: str) -> None:
    """2xx without the release's sha (e.g. the old release answering): not passed."""
    c = Canary(
        f"{PY} server.py $PORT",
        url="/health",
        health_url=None,
        expect="{sha}-other",
        timeout=1.5,
        extra_env={"TEST_MARK": mark},
        grace=1.0,
    )
    outcome = await c.run(ctx(release))
    assert not outcome.ok
    assert "answered without" in outcome.reason


@pytest.mark.parametrize("how", ["group", "setsid"])
async def test_a_child_ignoring_sigterm_is_killed(release: Path, mark: str, how: str) -> None:
    """A child that ignores SIGTERM, in the group or escaped with setsid: killed after the grace."""
    started = time.monotonic()
    outcome = await canary(f"{PY} stubborn.py {how} stay", mark, timeout=1).run(ctx(release))
    assert not outcome.ok
    assert time.monotonic() - started < 6
    assert running(mark) == []


async def test_a_daemon_left_behind_by_a_canary_that_exited_is_killed(release: Path, mark: str) -> None:
    """The canary forks a setsid daemon ignoring SIGTERM and exits 0: failed, and the daemon is killed."""
    outcome = await canary(f"{PY} stubborn.py setsid exit", mark, timeout=10).run(ctx(release))
    assert not outcome.ok and outcome.returncode == 0
    assert running(mark) == []


async def test_a_canary_printing_100_mb_is_capped(release: Path, mark: str) -> None:
    """100 MB of output: read as it comes, only the last lines kept (capped), then the timeout."""
    (release / "loud.py").write_text(LOUD)
    outcome = await canary(f"{PY} loud.py", mark, timeout=4).run(ctx(release))
    assert not outcome.ok
    assert len(outcome.output) <= OUTPUT_CHARS + 3
    assert outcome.output.rstrip().endswith("x")
    assert "0099999" in outcome.output  # the very last line, so every byte was read


async def test_a_missing_program_fails_with_why(release: Path, mark: str) -> None:
    """A program that does not exist: failed at once, saying it could not start."""
    outcome = await canary("no-such-canary-program $PORT", mark).run(ctx(release))
    assert not outcome.ok
    assert "could not start" in outcome.reason and "no-such-canary-program" in outcome.reason


async def test_a_cancelled_canary_is_stopped(release: Path, mark: str, tmp_path: Path) -> None:
    """Cancelled while it runs (a newer marker): its processes are stopped, its record removed."""
    record = tmp_path / "canary.json"
    c = canary(f"{PY} stubborn.py group stay", mark, timeout=30, record=record)
    with anyio.move_on_after(1.0):
        await c.run(ctx(release))
    assert running(mark) == []
    assert not record.exists()


async def test_check_raises_canary_error_with_the_output(release: Path, mark: str) -> None:
    """check(): a failure is a CanaryError (kind canary) with the output, logged as canary_failed."""
    with capture_logs() as logs, pytest.raises(CanaryError) as err:
        await canary(f"{PY} -c 'print(\"oops\"); raise SystemExit(3)'", mark).check(ctx(release))
    info = err.value.as_dict()
    assert info["kind"] == "canary" and info.get("output") == "oops" and info.get("rc") == 3
    assert not err.value.retryable
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["canary_failed"]


# ---------------------------------------------------------------------- the record and a restart


async def test_the_record_names_the_running_canary(release: Path, mark: str, tmp_path: Path) -> None:
    """While it runs, canary.json holds its token and process group; the group's processes hold the token."""
    record = tmp_path / "canary.json"
    seen: list[CanaryRecord | None] = []

    async def look() -> None:
        while not seen or seen[-1] is None or seen[-1].pgid is None:
            await anyio.sleep(0.05)
            text = await anyio.Path(record).read_text() if await anyio.Path(record).exists() else "null"
            seen.append(CanaryRecord.from_json(json.loads(text)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(look)
        await canary(f"{PY} -c 'import time; time.sleep(60)'", mark, timeout=1.5, record=record).run(ctx(release))
    rec = seen[-1]
    assert rec is not None and rec.pgid is not None and rec.release == release.name and len(rec.token) == 32


async def test_a_leftover_canary_is_killed_at_start(tmp_path: Path, mark: str) -> None:
    """A canary a crashed daemon left running (recorded): killed by its token, the record removed."""
    token = uuid.uuid4().hex
    env = {**os.environ, "TEST_MARK": mark, CANARY_ENV: token}
    proc = sleeper(env)
    record = tmp_path / "canary.json"
    record.write_text(json.dumps(CanaryRecord(token, "v1-x", "2025-01-01T00:00:00Z", proc.pid).to_json()))
    with capture_logs() as logs:
        killed = await stop_leftover(record)
    assert killed == [proc.pid]
    assert proc.wait(5) == -signal.SIGKILL
    assert not record.exists()
    assert [e["event"] for e in logs] == ["canary_leftover_killed"]


async def test_a_recorded_group_that_is_not_the_canarys_is_left_alone(tmp_path: Path, mark: str) -> None:
    """The recorded process group now belongs to another process (no token): it is not killed."""
    proc = sleeper({**os.environ, "TEST_MARK": mark})
    try:
        record = tmp_path / "canary.json"
        record.write_text(json.dumps(CanaryRecord("f" * 32, "v1-x", "2025-01-01T00:00:00Z", proc.pid).to_json()))
        assert await stop_leftover(record) == []
        assert proc.poll() is None
        assert not record.exists()
    finally:
        proc.kill()
        proc.wait()


async def test_an_unreadable_record_is_removed(tmp_path: Path) -> None:
    """A record that is not one (garbage): removed, nothing killed."""
    record = tmp_path / "canary.json"
    record.write_text("{not json")
    assert await stop_leftover(record) == []
    assert not record.exists()


# ---------------------------------------------------------------------- pure parts


def test_the_canary_url_defaults_to_the_health_urls_path_on_the_port() -> None:
    """No --canary-url: the path and query of --health-url, on 127.0.0.1:PORT."""
    assert canary_url(None, "https://app.example.com/health?full=1", 4321) == "http://127.0.0.1:4321/health?full=1"
    assert canary_url(None, "http://10.0.0.1:8000", 4321) == "http://127.0.0.1:4321/"


def test_a_canary_url_is_a_path_or_a_url_with_port() -> None:
    """--canary-url /ready is on 127.0.0.1:PORT; a URL has its {port} filled in."""
    assert canary_url("/ready", None, 80) == "http://127.0.0.1:80/ready"
    assert canary_url("http://localhost:{port}/up", None, 81) == "http://localhost:81/up"


def test_only_port_and_release_dir_are_expanded_in_the_command() -> None:
    """$PORT, ${PORT}, $RELEASE_DIR are replaced; $TAG, $PORTS and anything else stay as written."""
    words = ["-b", "127.0.0.1:$PORT", "--chdir=${RELEASE_DIR}", "$TAG", "$PORTS"]
    assert expand_words(words, {"PORT": "9", "RELEASE_DIR": "/r"}) == [
        "-b",
        "127.0.0.1:9",
        "--chdir=/r",
        "$TAG",
        "$PORTS",
    ]


@pytest.mark.parametrize(
    ("command", "url", "health", "message"),
    [
        (None, "/health", None, "--canary-url is used only with --canary-command"),
        ("gunicorn 'unterminated", None, "http://h/health", "cannot split --canary-command"),
        ("  ", None, "http://h/health", "--canary-command is empty"),
        ("gunicorn app", None, None, "needs a URL to probe"),
        ("gunicorn app", "health", None, "must be a path or an http(s) URL with {port}"),
        ("gunicorn app", "http://127.0.0.1:8000/health", None, "must be a path or an http(s) URL with {port}"),
    ],
)
def test_bad_canary_options_are_refused(command: str | None, url: str | None, health: str | None, message: str) -> None:
    """Each bad combination is a ConfigError (exit 2) with a fix."""
    with pytest.raises(ConfigError) as err:
        check_canary_options(command, url, health)
    assert message in err.value.message
    assert err.value.fix and err.value.exit_code == 2


def test_an_outcome_describes_its_checks() -> None:
    """The one line of a failure says how many checks were made in how long."""
    o = CanaryOutcome(False, "no pass within 3 s", "", 3.04, 12, "http://127.0.0.1:1/")
    assert o.describe() == "no pass within 3 s (after 12 checks in 3.0 s)"
