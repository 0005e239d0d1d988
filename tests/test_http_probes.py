"""`--http-bind`: /metrics, /healthz and /readyz over real HTTP.

The first part serves a ProbeServer in the test's event loop (real sockets on loopback, a real
Deployer for reading the marker, no git); the second runs the real daemon as a subprocess against
a real repository and scrapes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from coordinator import probes
from coordinator.config import Config
from coordinator.daemon import run_argv
from coordinator.deployer import Deployer
from coordinator.exceptions import ConfigError
from coordinator.layout import Layout
from coordinator.metrics import Metrics
from coordinator.probes import Liveness, ProbeServer
from coordinator.state import write_json
from tests.helpers import (
    Daemon,
    GitRepo,
    deployed,
    fetch,
    http_port,
    read_status,
    readyz,
    sample,
    scrape,
    wait_until,
    write_marker,
)

# ---------------------------------------------------------------------- in-process server


@contextlib.asynccontextmanager
async def serving(root: Path, bind: str = "127.0.0.1:0", watcher: bool = True) -> AsyncIterator[ProbeServer]:
    """A ProbeServer for ROOT on the current loop, served until the block ends."""
    config = Config(Layout.for_root(root), repo="unused", http_bind=bind)
    live = Liveness()
    server = await ProbeServer.open(config, Deployer(config), Metrics(), live)
    with live.running("watcher") if watcher else contextlib.nullcontext():
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            yield server
            tg.cancel_scope.cancel()


async def exchange(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send raw bytes, then read the answer until the server closes the connection."""
    async with await anyio.connect_tcp(host, port) as stream:
        if data:
            await stream.send(data)
        out = bytearray()
        with anyio.fail_after(15):
            while True:
                try:
                    out += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return bytes(out)


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


async def get(port: int, path: str, method: str = "GET", extra: str = "") -> tuple[int, dict[str, str], bytes]:
    return split(await exchange(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()))


@pytest.mark.anyio
async def test_port_zero_binds_a_free_port_and_logs_it(root: Path) -> None:
    """With port 0 the kernel picks a port; `http_listening` gives host and port."""
    with capture_logs() as logs:
        async with serving(root) as server:
            assert server.port > 0
            assert (await get(server.port, "/healthz"))[0] == 200
    event = next(e for e in logs if e["event"] == "http_listening")
    assert event["host"] == "127.0.0.1" and event["port"] == server.port
    assert event["addresses"] == [f"127.0.0.1:{server.port}"]


@pytest.mark.anyio
async def test_unknown_path_is_404(root: Path) -> None:
    """Only /metrics, /healthz and /readyz exist."""
    async with serving(root) as server:
        code, headers, body = await get(server.port, "/")
        assert code == 404 and headers["content-type"] == "application/json"
        assert json.loads(body)["paths"] == ["/metrics", "/healthz", "/readyz"]
        assert (await get(server.port, "/metrics/../etc/passwd"))[0] == 404


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "TRACE"])
async def test_other_methods_are_405_with_allow(root: Path, method: str) -> None:
    """Anything but GET and HEAD is 405 with an Allow header."""
    async with serving(root) as server:
        code, headers, _ = await get(server.port, "/metrics", method, "Content-Length: 0\r\n")
        assert code == 405 and headers["allow"] == "GET, HEAD"


@pytest.mark.anyio
async def test_head_answers_headers_without_a_body(root: Path) -> None:
    """HEAD gives the status and Content-Length of the GET, and no body."""
    async with serving(root) as server:
        g_code, _, g_body = await get(server.port, "/metrics")
        h_code, h_headers, h_body = await get(server.port, "/metrics", "HEAD")
    assert g_code == h_code == 200
    assert h_body == b"" and int(h_headers["content-length"]) == len(g_body) > 0


@pytest.mark.anyio
async def test_metrics_are_served_in_the_prometheus_text_format(root: Path) -> None:
    """/metrics has the Prometheus content type and parses as the text format."""
    async with serving(root) as server:
        code, headers, body = await get(server.port, "/metrics?x=1")
    assert code == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert headers["connection"] == "close"
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"coordinator_deploys", "coordinator_phase_duration_seconds", "coordinator_ready"} <= names


@pytest.mark.anyio
async def test_metrics_speak_openmetrics_when_asked(root: Path) -> None:
    """An OpenMetrics Accept header (what Prometheus sends first) gets OpenMetrics."""
    async with serving(root) as server:
        accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n"
        code, headers, body = await get(server.port, "/metrics", extra=accept)
    assert code == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


@pytest.mark.anyio
async def test_healthz_is_503_when_the_watcher_is_not_running(root: Path) -> None:
    """Liveness fails when the watcher task is gone, saying so."""
    async with serving(root, watcher=False) as server:
        code, _, body = await get(server.port, "/healthz")
    assert code == 503 and "watcher" in json.loads(body)["reason"]


@pytest.mark.anyio
async def test_readyz_is_503_with_a_reason_when_nothing_is_deployed(root: Path) -> None:
    """No marker, no status: 503 and a JSON reason."""
    async with serving(root) as server:
        code, headers, body = await get(server.port, "/readyz")
    assert code == 503 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"ready": False, "reason": "no marker: no release is desired yet"}


@pytest.mark.anyio
async def test_readyz_ignores_a_status_file_from_before_this_daemon(root: Path) -> None:
    """A status file left by a previous daemon (even with our pid: PID 1 in a container) is not ours."""
    (root / "releases" / "v1-abc").mkdir(parents=True)
    os.symlink("releases/v1-abc", root / "current")
    (root / "deploy.request").write_text("v1\n")
    status = {
        "pid": os.getpid(),
        "state": "idle",
        "marker_digest": hashlib.sha256(b"v1\n").hexdigest(),
        "current": {"release": "v1-abc", "tag": "v1", "sha": "a" * 40},
        "reloaded": "v1-abc",
    }
    await anyio.to_thread.run_sync(write_json, root / "deploy.status.json", status)
    async with serving(root) as server:
        code, _, body = await get(server.port, "/readyz")
        assert code == 503 and json.loads(body)["reason"] == "this daemon has not reconciled yet"
        await anyio.to_thread.run_sync(write_json, root / "deploy.status.json", status)  # our first write
        code, _, body = await get(server.port, "/readyz")
        assert code == 200 and json.loads(body)["release"] == "v1-abc"


@pytest.mark.anyio
async def test_an_oversized_request_is_refused_with_431(root: Path) -> None:
    """A request head over the cap gets 431, and the server reads no further."""
    async with serving(root) as server:
        big = b"GET /metrics HTTP/1.1\r\n" + b"X-Filler: " + b"a" * (probes.MAX_REQUEST_BYTES * 2) + b"\r\n\r\n"
        code, _, body = split(await exchange(server.port, big))
        assert code == 431 and b"larger than" in body
        endless = b"GET /" + b"a" * (probes.MAX_REQUEST_BYTES + 10)  # no line end at all
        assert split(await exchange(server.port, endless))[0] == 431


@pytest.mark.anyio
async def test_a_slow_request_times_out_with_408(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that never finishes its request head is answered 408 after the read timeout."""
    monkeypatch.setattr(probes, "READ_TIMEOUT_S", 0.2)
    async with serving(root) as server:
        code, _, _ = split(await exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"))
    assert code == 408


@pytest.mark.anyio
@pytest.mark.parametrize(
    "request_head",
    [b"GARBAGE\r\n\r\n", b"GET /metrics HTTP/2.0\r\n\r\n", b"get /metrics HTTP/1.1\r\n\r\n", b"GET x HTTP/1.1\r\n\r\n"],
)
async def test_a_malformed_request_is_400(root: Path, request_head: bytes) -> None:
    """A request line that is not `METHOD /path HTTP/1.x` gets 400."""
    async with serving(root) as server:
        assert split(await exchange(server.port, request_head))[0] == 400


@pytest.mark.anyio
async def test_a_client_that_says_nothing_is_closed_quietly(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection closed without a request gets no answer and does not disturb the server."""
    async with serving(root) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send_eof()
            with anyio.fail_after(5), contextlib.suppress(anyio.EndOfStream):
                assert await stream.receive() == b""
        assert (await get(server.port, "/healthz"))[0] == 200


@pytest.mark.anyio
async def test_connections_over_the_cap_are_closed(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_CONNECTIONS at once, new connections are closed without an answer."""
    monkeypatch.setattr(probes, "MAX_CONNECTIONS", 1)
    async with serving(root) as server, await anyio.connect_tcp("127.0.0.1", server.port) as idle:
        await idle.send(b"GET /metrics")  # holds the only slot
        await wait_for(lambda: server.active == 1)
        assert await exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n") == b""


@pytest.mark.anyio
async def test_a_port_in_use_is_a_config_error(root: Path) -> None:
    """Binding an address already in use fails with ConfigError (exit 2), naming --http-bind."""
    async with serving(root) as server:
        with pytest.raises(ConfigError, match=r"cannot listen on --http-bind 127\.0\.0\.1:\d+") as info:
            async with serving(root, f"127.0.0.1:{server.port}"):
                pass
    assert info.value.exit_code == 2


@pytest.mark.anyio
async def test_ipv6_loopback_in_brackets(root: Path) -> None:
    """[::1]:0 listens on the IPv6 loopback."""
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    async with serving(root, "[::1]:0") as server:
        assert server.addresses == [f"[::1]:{server.port}"]
        assert (await get_v6(server.port, "/healthz")) == 200


async def get_v6(port: int, path: str) -> int:
    return split(await exchange(port, f"GET {path} HTTP/1.1\r\n\r\n".encode(), host="::1"))[0]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def wait_for(pred: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not pred():
            await anyio.sleep(0.01)


# ---------------------------------------------------------------------- the real daemon


def test_daemon_readyz_is_503_before_the_first_deploy_and_200_after(root: Path, repo: GitRepo) -> None:
    """/readyz: 503 with a reason until the marker's release is deployed, then 200 naming it."""
    with Daemon(root, repo.path, "--http-bind", "127.0.0.1:0") as d:
        port = http_port(d)
        code, body = readyz(port)
        assert code == 503 and body["reason"] == "no marker: no release is desired yet"
        write_marker(root, "v1")
        wait_until(lambda: readyz(port)[0] == 200)
        body = readyz(port)[1]
        assert body["tag"] == "v1" and body["release"].startswith("v1-") and body["sha"] == repo.tag_sha("v1")
        assert fetch(port, "/healthz")[0] == 200


def test_daemon_metrics_after_two_deploys(root: Path, repo: GitRepo) -> None:
    """After v1 then v2: two successes, phases observed, one release info series (v2), ready."""
    with Daemon(root, repo.path, "--http-bind", "127.0.0.1:0") as d:
        port = http_port(d)
        for tag in ("v1", "v2"):
            write_marker(root, tag)
            wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]
        m = scrape(port)
    assert sample(m, "coordinator_deploys_total", result="success") == 2
    assert sample(m, "coordinator_deploys_total", result="failed") == 0
    for phase in ("fetch", "prepare", "publish", "swap", "reload", "prune"):
        assert sample(m, "coordinator_phase_duration_seconds_count", phase=phase) == 2, phase
        assert sample(m, "coordinator_phase_duration_seconds_bucket", phase=phase, le="+Inf") == 2
    assert sample(m, "coordinator_phase_duration_seconds_count", phase="build") == 0
    assert sample(m, "coordinator_deploy_duration_seconds_count") == 2
    info = {k: v for k, v in m.items() if k[0] == "coordinator_current_release_info"}
    sha = repo.tag_sha("v2")
    assert info == {
        (
            "coordinator_current_release_info",
            frozenset({"release": f"v2-{sha[:12]}", "tag": "v2", "sha": sha}.items()),
        ): 1
    }
    last = sample(m, "coordinator_last_success_timestamp_seconds")
    assert last is not None and abs(last - os.path.getmtime(root / ".coordinator" / "journal.jsonl")) < 5
    assert sample(m, "coordinator_deploy_in_progress") == 0
    assert sample(m, "coordinator_ready") == 1
    assert sample(m, "coordinator_build_info", version="0.1.0") == 1


def test_daemon_readyz_is_503_for_a_failing_tag(root: Path, repo: GitRepo) -> None:
    """A marker naming a tag that does not exist: 503 saying why, counted as failed; v1 stays current."""
    with Daemon(root, repo.path, "--http-bind", "127.0.0.1:0") as d:
        port = http_port(d)
        write_marker(root, "v1")
        wait_until(lambda: readyz(port)[0] == 200)
        write_marker(root, "v9")
        wait_until(lambda: (read_status(root) or {}).get("state") == "failed")
        code, body = readyz(port)
        assert code == 503 and "v9" in body["reason"] and "not found" in body["reason"]
        m = scrape(port)
    assert (sample(m, "coordinator_deploys_total", result="failed") or 0) >= 1  # retryable: may run again
    assert sample(m, "coordinator_ready") == 0
    assert [dict(k[1])["tag"] for k in m if k[0] == "coordinator_current_release_info"] == ["v1"]


def test_daemon_counts_a_rollback(root: Path, repo: GitRepo, app_url: str) -> None:
    """A release failing its health check: rolled_back and rollbacks counted, v1 current again."""
    repo.commit({"BROKEN": "yes\n"}, tag="broken")
    args = ("--http-bind", "127.0.0.1:0", "--health-url", app_url, "--health-timeout", "0.6")
    with Daemon(root, repo.path, *args) as d:
        port = http_port(d)
        write_marker(root, "v1")
        wait_until(lambda: readyz(port)[0] == 200)
        write_marker(root, "broken")
        wait_until(lambda: (read_status(root) or {}).get("state") == "rolled_back")
        code, body = readyz(port)
        assert code == 503 and "rolled_back" in body["reason"]
        m = scrape(port)
    assert sample(m, "coordinator_deploys_total", result="rolled_back") == 1
    assert sample(m, "coordinator_rollbacks_total") == 1
    assert sample(m, "coordinator_phase_duration_seconds_count", phase="rollback") == 1
    assert sample(m, "coordinator_phase_duration_seconds_count", phase="verify") == 2
    assert [dict(k[1])["tag"] for k in m if k[0] == "coordinator_current_release_info"] == ["v1"]


def test_daemon_counts_a_failed_notification(root: Path, repo: GitRepo) -> None:
    """A --notify-command that exits non-zero shows in coordinator_hook_failures_total{hook="notify"}."""
    with Daemon(root, repo.path, "--http-bind", "127.0.0.1:0", "--notify-command", "false") as d:
        port = http_port(d)
        write_marker(root, "v1")
        wait_until(lambda: sample(scrape(port), "coordinator_hook_failures_total", hook="notify") == 1)
        m = scrape(port)
    assert sample(m, "coordinator_hook_failures_total", hook="webhook") == 0
    assert sample(m, "coordinator_deploys_total", result="success") == 1


def test_daemon_stops_serving_on_sigterm(root: Path, repo: GitRepo) -> None:
    """SIGTERM stops the daemon cleanly (exit 0) and closes the port."""
    d = Daemon(root, repo.path, "--http-bind", "127.0.0.1:0").start()
    port = http_port(d)
    assert fetch(port, "/healthz")[0] == 200
    assert d.stop(signal.SIGTERM) == 0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_daemon_without_http_bind_serves_nothing(root: Path, repo: GitRepo) -> None:
    """The server is opt-in: without --http-bind no http_listening event."""
    with Daemon(root, repo.path) as d:
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
        assert not [e for e in d.events() if e.get("event") == "http_listening"]


@pytest.mark.parametrize("bind", ["nonsense", "127.0.0.1:99999", "::1:80"])
def test_a_bad_http_bind_exits_2(root: Path, repo: GitRepo, bind: str) -> None:
    """`run --http-bind` with a malformed value exits 2 with one line naming the option."""
    out = subprocess.run(
        run_argv(root, repo.path, "--http-bind", bind),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert "--http-bind" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_port_in_use_exits_2(root: Path, repo: GitRepo) -> None:
    """`run --http-bind` on a port another process listens on exits 2, saying it cannot listen."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"COORDINATOR_HTTP_BIND": f"127.0.0.1:{port}"}
        out = subprocess.run(
            run_argv(root, repo.path),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, **env},
        )
    assert out.returncode == 2
    assert f"cannot listen on --http-bind 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr
