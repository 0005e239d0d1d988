"""Hooks: how a command is run (shell or not), --pre-swap-command around the swap, and the
notifications (--notify-command, --webhook-url) against real git repositories, real processes and a
real HTTP server on loopback."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator import notify
from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.hooks import OUTPUT_CHARS, HookContext, command_argv, run_command, tail
from coordinator.layout import Layout
from coordinator.notify import Notification, Notifier, post_json, redact_url, split_credentials
from coordinator.records import AttemptResult
from coordinator.report import Attempt
from coordinator.state import load_state
from tests.helpers import GitRepo, read_status, run_once, started_deployer, write_marker

pytestmark = pytest.mark.anyio

SH = ["/bin/sh", "-c"]

# ---------------------------------------------------------------------- command_argv

NO_SHELL = [
    ("python manage.py migrate --noinput", ["python", "manage.py", "migrate", "--noinput"]),
    ("  spaced   out\targs ", ["spaced", "out", "args"]),
    ("echo 'a | b; c > d $HOME *'", ["echo", "a | b; c > d $HOME *"]),
    ('echo "a b" "c"d', ["echo", "a b", "cd"]),
    ("echo 'it''s'", ["echo", "its"]),
    (r"echo a\|b \$x", ["echo", "a|b", "$x"]),
    (r'echo "quote \" and backslash \\ and \n"', ["echo", 'quote " and backslash \\ and \\n']),
    ("bin/migrate --database=default", ["bin/migrate", "--database=default"]),
    ("./manage.py check", ["./manage.py", "check"]),
    ("echo a=b", ["echo", "a=b"]),
    ("exit-hook now", ["exit-hook", "now"]),
]

NEEDS_SHELL = [
    "a | b",
    "a && b",
    "a; b",
    "a > out",
    "a < in",
    "a &",
    "(a)",
    "echo $HOME",
    'echo "$HOME"',
    "echo `date`",
    'echo "`date`"',
    r'echo "a\$b"',
    "ls *.py",
    "ls file?",
    "ls [ab]",
    "echo ~",
    "echo a # comment",
    "echo {a,b}",
    "! false",
    "a\nb",
    "echo 'line\nbreak'",
    "a\r",
    "echo trailing\\",
    "echo 'unterminated",
    'echo "unterminated',
    "exit 3",
    "cd sub",
    "set -e",
    ". ./env.sh",
    "export A=1",
    "FOO=bar prog",
    "if",
    "",
    "   ",
]


@pytest.mark.parametrize(("cmd", "argv"), NO_SHELL)
def test_a_command_that_needs_no_shell_is_split_and_run_without_one(cmd: str, argv: list[str]) -> None:
    """Words, quotes and backslash escapes are split by shlex; no /bin/sh."""
    assert command_argv(cmd) == argv


@pytest.mark.parametrize("cmd", NEEDS_SHELL)
def test_a_command_that_needs_a_shell_runs_through_sh(cmd: str) -> None:
    """Operators, expansions, globs, line breaks, builtins and assignments go to /bin/sh -c unchanged."""
    assert command_argv(cmd) == [*SH, cmd]


@pytest.mark.parametrize(("cmd", "argv"), NO_SHELL)
def test_the_shell_would_have_split_it_the_same(cmd: str, argv: list[str]) -> None:
    """For every command run without a shell, /bin/sh yields the same words (so nothing changes meaning)."""
    out = subprocess.run([*SH, "printf '%s\\0' " + cmd], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == argv


def ctx(root: Path, release_dir: Path | None = None) -> HookContext:
    return HookContext(root, "v1", "a" * 40, "v1-aaaaaaaaaaaa", release_dir, None, "req-1")


def test_every_hook_gets_the_same_environment(tmp_path: Path) -> None:
    """The context names the release, tag, commit, paths and request id; absent ones are empty."""
    env = HookContext(tmp_path, "v2", "b" * 40, "v2-b", tmp_path / "releases/v2-b", tmp_path / "releases/v1-a").env()
    assert env == {
        "RELEASE_DIR": str(tmp_path / "releases/v2-b"),
        "RELEASE": "v2-b",
        "RELEASE_NAME": "v2-b",
        "TAG": "v2",
        "SHA": "b" * 40,
        "PREVIOUS_RELEASE": str(tmp_path / "releases/v1-a"),
        "ROOT": str(tmp_path),
        "REQUEST_ID": "",
    }


def test_output_tail_keeps_the_last_lines_and_at_most_a_few_thousand_characters() -> None:
    """20 lines at most, and a single huge line is cut to its end."""
    assert tail(b"".join(b"line %d\n" % i for i in range(100))).splitlines()[0] == "line 80"
    cut = tail(b"x" * 1_000_000 + b"END")
    assert len(cut) <= OUTPUT_CHARS + 3 and cut.endswith("END") and cut.startswith("...")


async def test_a_command_that_cannot_start_is_a_failure_not_an_exception(tmp_path: Path) -> None:
    """A missing program (run without a shell) is reported like a failed command."""
    result = await run_command("no-such-program-xyz --flag", ctx(tmp_path), cwd=tmp_path, limit_s=5, extra_env={})
    assert not result.ok and result.start_error is not None and "no-such-program-xyz" in result.start_error
    assert "could not start" in result.describe("notify command", 5)


# ---------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pa%40ss@hooks.example.com/x?y=1", "https://***@hooks.example.com/x?y=1"),
        ("http://token@127.0.0.1:8080/", "http://***@127.0.0.1:8080/"),
        ("https://hooks.example.com/deploys", "https://hooks.example.com/deploys"),
    ],
)
def test_redact_url_hides_user_and_password(url: str, shown: str) -> None:
    """User info is replaced by ***; a URL without any is shown as it is."""
    assert redact_url(url) == shown


def test_credentials_in_the_url_become_basic_auth() -> None:
    """user:pass@ is taken out of the URL and percent-decoded into a Basic Authorization header."""
    bare, auth = split_credentials("https://user:pa%40ss@hooks.example.com:8443/x")
    assert bare == "https://hooks.example.com:8443/x"
    assert auth == "Basic " + base64.b64encode(b"user:pa@ss").decode()
    assert split_credentials("https://hooks.example.com/x") == ("https://hooks.example.com/x", None)


# ---------------------------------------------------------------------- the deployer's hooks

RECORD = """\
import json, os, sys
keys = ("RELEASE_DIR", "RELEASE", "RELEASE_NAME", "TAG", "SHA", "PREVIOUS_RELEASE", "ROOT", "REQUEST_ID",
        "ACTION", "RESULT", "ERROR")
data = {k: os.environ.get(k) for k in keys}
data["cwd"] = os.getcwd()
current = os.path.join(os.environ["ROOT"], "current")
data["current"] = os.readlink(current) if os.path.islink(current) else None
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(data) + "\\n")
sys.exit(int(open(sys.argv[2]).read()) if os.path.exists(sys.argv[2]) else 0)
"""


@dataclass
class Recorder:
    """A command (run without a shell) that appends its environment, cwd and `current` to a file,
    and exits with the code :meth:`exit_with` set (0 by default)."""

    path: Path
    script: Path

    @property
    def command(self) -> str:
        return f"{shlex.quote(sys.executable)} {self.script} {self.path} {self.path}.rc"

    def exit_with(self, code: int) -> None:
        Path(f"{self.path}.rc").write_text(str(code))

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    return Recorder(tmp_path / "calls.jsonl", script)


async def deploy(d: Deployer, root: Path, marker: str) -> Attempt:
    write_marker(root, marker)
    attempt = await d.reconcile()
    assert attempt is not None
    return attempt


async def test_pre_swap_runs_in_the_release_before_the_swap_with_its_environment(
    root: Path, repo: GitRepo, recorder: Recorder
) -> None:
    """The command runs in releases/<name> while the previous release is still current."""
    d = await started_deployer(root, repo, pre_swap_command=recorder.command)
    old = await deploy(d, root, "v1")
    new = await deploy(d, root, json.dumps({"tag": "v2", "id": "req-42"}))
    assert new.result == "success" and "pre_swap" in new.phases
    call = recorder.calls()[-1]
    assert call == {
        "RELEASE_DIR": str(root / "releases" / str(new.release)),
        "RELEASE": new.release,
        "RELEASE_NAME": new.release,
        "TAG": "v2",
        "SHA": repo.tag_sha("v2"),
        "PREVIOUS_RELEASE": str(root / "releases" / str(old.release)),
        "ROOT": str(root),
        "REQUEST_ID": "req-42",
        "ACTION": None,
        "RESULT": None,
        "ERROR": None,
        "cwd": str(root / "releases" / str(new.release)),
        "current": f"releases/{old.release}",
    }


async def test_failed_pre_swap_leaves_current_unreloaded_and_is_not_retried(
    root: Path, repo: GitRepo, recorder: Recorder
) -> None:
    """A non-zero exit fails the attempt (kind pre_swap); no swap, no reload; the same marker waits."""
    d = await started_deployer(root, repo)
    old = await deploy(d, root, "v1")
    reload_mtime = (root / "reload.touch").stat().st_mtime
    recorder.exit_with(3)
    d = await started_deployer(root, repo, pre_swap_command=recorder.command)
    attempt = await deploy(d, root, "v2")
    assert attempt.result == "failed" and attempt.error is not None
    assert (attempt.error["kind"], attempt.error["rc"]) == ("pre_swap", 3)
    assert os.readlink(root / "current") == f"releases/{old.release}"
    assert (root / "reload.touch").stat().st_mtime == reload_mtime
    assert load_state(root / ".coordinator" / "state.json").reloaded == old.release
    assert (root / "releases" / str(attempt.release)).is_dir()  # published, complete, not current
    st = read_status(root)
    assert st is not None and st["state"] == "failed" and st["error"]["kind"] == "pre_swap"
    assert await d.reconcile() is None and len(recorder.calls()) == 1


async def test_failed_pre_swap_runs_again_once_the_marker_changes(
    root: Path, repo: GitRepo, recorder: Recorder
) -> None:
    """A new request for the same tag swaps to the release on disk, after running the command again."""
    recorder.exit_with(3)
    d = await started_deployer(root, repo, pre_swap_command=recorder.command)
    await deploy(d, root, "v1")
    recorder.exit_with(0)
    assert await d.reconcile() is None
    attempt = await deploy(d, root, json.dumps({"tag": "v1", "id": "again"}))
    assert attempt.result == "success" and "prepare" not in attempt.phases and "pre_swap" in attempt.phases
    assert [c["REQUEST_ID"] for c in recorder.calls()] == ["", "again"]


async def test_pre_swap_runs_before_a_swap_to_a_release_on_disk(root: Path, repo: GitRepo, recorder: Recorder) -> None:
    """Going back to a release still on disk (a rollback request) runs the command too."""
    d = await started_deployer(root, repo, pre_swap_command=recorder.command)
    first = await deploy(d, root, "v1")
    await deploy(d, root, "v2")
    back = await deploy(d, root, "v1")
    assert back.result == "success" and back.release == first.release and "prepare" not in back.phases
    assert [c["TAG"] for c in recorder.calls()] == ["v1", "v2", "v1"]


async def test_pre_swap_does_not_run_before_an_automatic_rollback(
    root: Path, repo: GitRepo, recorder: Recorder, app_url: str
) -> None:
    """A release failing its health check is swapped back without the command."""
    d = await started_deployer(root, repo, pre_swap_command=recorder.command, health_url=app_url, health_timeout=2.0)
    await deploy(d, root, "v1")
    await anyio.to_thread.run_sync(lambda: repo.commit({"BROKEN": "yes\n"}, tag="broken"))
    attempt = await deploy(d, root, "broken")
    assert attempt.result == "rolled_back"
    assert [c["TAG"] for c in recorder.calls()] == ["v1", "broken"]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_pre_swap_timeout_kills_a_grandchild_that_ignores_sigterm(
    root: Path, repo: GitRepo, tmp_path: Path
) -> None:
    """After --pre-swap-timeout the whole process group gets SIGKILL; the attempt fails, nothing swapped."""
    pidfile = tmp_path / "grandchild.pid"
    cmd = f"trap '' TERM; sleep 300 & echo $! > {pidfile}; wait"
    d = await started_deployer(root, repo, pre_swap_command=cmd, pre_swap_timeout=1.0)
    attempt = await deploy(d, root, "v1")
    assert attempt.result == "failed" and attempt.error is not None
    assert attempt.error["kind"] == "pre_swap" and "timed out after 1 s" in attempt.error["message"]
    assert not (root / "current").is_symlink()
    grandchild = int(pidfile.read_text())
    with anyio.fail_after(5):
        while alive(grandchild):
            await anyio.sleep(0.05)


async def test_100_mb_of_pre_swap_output_leaves_a_small_status(root: Path, repo: GitRepo) -> None:
    """Output is capped while it streams; the status error keeps only its end."""
    cmd = "head -c 100000000 /dev/zero | tr '\\0' x; echo; echo the-last-line; exit 1"
    d = await started_deployer(root, repo, pre_swap_command=cmd)
    attempt = await deploy(d, root, "v1")
    assert attempt.error is not None and attempt.error["output"].endswith("the-last-line")
    assert len(attempt.error["output"]) <= OUTPUT_CHARS + 3
    assert (root / "deploy.status.json").stat().st_size < 20_000


# ---------------------------------------------------------------------- notifications


async def test_notify_is_told_each_attempts_result(root: Path, repo: GitRepo, recorder: Recorder, app_url: str) -> None:
    """RESULT is success, rolled_back or failed, ERROR the error message; it runs in ROOT."""
    d = await started_deployer(root, repo, notify_command=recorder.command, health_url=app_url, health_timeout=2.0)
    await anyio.to_thread.run_sync(lambda: repo.commit({"BROKEN": "yes\n"}, tag="broken"))
    async with d.notifier.running():
        for marker in ("v1", "broken", "v9"):
            await deploy(d, root, marker)
    calls = recorder.calls()
    assert [(c["TAG"], c["RESULT"]) for c in calls] == [("v1", "success"), ("broken", "rolled_back"), ("v9", "failed")]
    assert calls[0]["ERROR"] == "" and "rolled back to v1" in calls[1]["ERROR"] and "v9" in calls[2]["ERROR"]
    assert {c["cwd"] for c in calls} == {str(root)}


async def test_notify_is_told_of_a_stage_as_a_stage(root: Path, repo: GitRepo, recorder: Recorder) -> None:
    """A stage attempt is notified too, with ACTION=stage; a deploy has ACTION=deploy."""
    d = await started_deployer(root, repo, notify_command=recorder.command)
    async with d.notifier.running():
        await deploy(d, root, "v1")
        write_marker(root, json.dumps({"tag": "v2", "id": "s1"}), name="stage.request")
        assert await d.reconcile() is None  # a stage is no deploy attempt
    calls = recorder.calls()
    assert [(c["ACTION"], c["TAG"], c["RESULT"]) for c in calls] == [
        ("deploy", "v1", "success"),
        ("stage", "v2", "success"),
    ]
    assert calls[1]["REQUEST_ID"] == "s1" and calls[1]["RELEASE"]


async def test_a_failing_notify_changes_nothing_and_is_counted(root: Path, repo: GitRepo, recorder: Recorder) -> None:
    """A non-zero exit is logged as hook_failed and counted; the attempt still succeeded."""
    recorder.exit_with(5)
    d = await started_deployer(root, repo, notify_command=recorder.command)
    failures: list[str] = []
    d.notifier.on_failure = failures.append
    with capture_logs() as logs:
        async with d.notifier.running():
            attempt = await deploy(d, root, "v1")
    assert attempt.result == "success" and failures == ["notify"]
    [event] = [e for e in logs if e["event"] == "hook_failed"]
    assert event["hook"] == "notify" and "exit code 5" in event["reason"]


async def test_a_hanging_notify_delays_no_deploy_and_is_bounded_by_its_timeout(root: Path, repo: GitRepo) -> None:
    """Deploys go on while the command hangs; it is killed after --hook-timeout and counted."""
    d = await started_deployer(root, repo, notify_command="sleep 300", hook_timeout=2.0)
    failures: list[str] = []
    d.notifier.on_failure = failures.append
    started_at = time.monotonic()
    with capture_logs() as logs:
        async with d.notifier.running():
            results = [(await deploy(d, root, tag)).result for tag in ("v1", "v2")]
            assert time.monotonic() - started_at < 2.0 and not failures
    assert results == ["success", "success"]
    assert failures == ["notify", "notify"]  # the first timed out, the second was still queued at the end
    reasons = [e["reason"] for e in logs if e["event"] == "hook_failed"]
    assert "timed out after 2 s" in reasons[0] and "daemon stopped" in reasons[1]
    assert time.monotonic() - started_at < 8


def test_run_once_delivers_its_notification_before_exiting(root: Path, repo: GitRepo, recorder: Recorder) -> None:
    """`run --once` waits for the notify command of its attempt."""
    write_marker(root, "v1")
    done = run_once(root, repo, "--notify-command", recorder.command)
    assert done.returncode == 0, done.stderr
    assert [c["RESULT"] for c in recorder.calls()] == ["success"]


# ---------------------------------------------------------------------- webhook


@dataclass
class Hook:
    """What the test webhook receiver got, and how it answers."""

    url: str
    status: int = 200
    hang: threading.Event | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def webhook() -> Iterator[Hook]:
    """A threaded HTTP server on 127.0.0.1 recording each POST; it answers ``status`` (or, with
    ``hang`` set, not at all until the test ends)."""
    hook = Hook("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hook.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if hook.hang is not None:
                hook.hang.wait(10)
                return
            self.send_response(hook.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/deploys"
    try:
        yield hook
    finally:
        if hook.hang is not None:
            hook.hang.set()
        server.shutdown()
        server.server_close()


async def test_webhook_receives_the_journal_entry_as_json(root: Path, repo: GitRepo, webhook: Hook) -> None:
    """One POST per attempt, Content-Type application/json, the journal entry as body."""
    d = await started_deployer(root, repo, webhook_url=webhook.url)
    async with d.notifier.running():
        attempt = await deploy(d, root, json.dumps({"tag": "v1", "id": "req-7"}))
    [req] = webhook.requests
    assert req["path"] == "/deploys" and req["headers"]["Content-Type"] == "application/json"
    body = json.loads(req["body"])
    assert body == attempt.journal_entry()
    assert (body["event"], body["tag"], body["id"], body["result"]) == ("attempt", "v1", "req-7", "success")
    assert set(body) == {
        "event", "action", "tag", "id", "sha", "release", "result", "error", "started_at", "finished_at",
        "duration_ms", "phases_ms",
    }  # fmt: skip


def notifier(root: Path, url: str, timeout: float = 5.0) -> tuple[Notifier, list[str]]:
    n = Notifier(Config(layout=Layout.for_root(root), repo="x", webhook_url=url, hook_timeout=timeout), (0.01, 0.01))
    failures: list[str] = []
    n.on_failure = failures.append
    return n, failures


def notification(root: Path) -> Notification:
    a = Attempt(tag="v1", request_id=None, result=AttemptResult.FAILED, finished=time.time())
    return Notification(a.journal_entry(), ctx(root))


async def test_webhook_answering_500_is_tried_three_times_then_counted(root: Path, webhook: Hook) -> None:
    """A 5xx is retried with backoff; after the last try the failure is logged and counted once."""
    webhook.status = 500
    n, failures = notifier(root, webhook.url)
    with capture_logs() as logs:
        await n.deliver(notification(root))
    assert len(webhook.requests) == 3 and failures == ["webhook"]
    [event] = [e for e in logs if e["event"] == "hook_failed"]
    assert event["tries"] == 3 and "HTTP 500" in event["reason"]


async def test_webhook_answering_4xx_is_not_retried(root: Path, webhook: Hook) -> None:
    """A client error will not change by trying again."""
    webhook.status = 404
    n, failures = notifier(root, webhook.url)
    await n.deliver(notification(root))
    assert len(webhook.requests) == 1 and failures == ["webhook"]


async def test_a_hanging_webhook_is_bounded_by_the_hook_timeout(root: Path, webhook: Hook) -> None:
    """Each try gives up after --hook-timeout; the whole delivery takes about three of them."""
    webhook.hang = threading.Event()
    n, failures = notifier(root, webhook.url, timeout=0.5)
    started_at = time.monotonic()
    with capture_logs() as logs, anyio.fail_after(60):  # bounded: a hang is not waited out (generous on load)
        await n.deliver(notification(root))
    elapsed = time.monotonic() - started_at
    assert len(webhook.requests) == 3 and failures == ["webhook"] and elapsed > 1.4  # three tries of 0.5 s
    assert any("did not answer within 0.5 s" in e.get("reason", "") for e in logs)


def test_post_json_to_a_hanging_server_raises_timeout_error(webhook: Hook) -> None:
    """A server that accepts but never answers: the socket's timeout, as TimeoutError."""
    webhook.hang = threading.Event()
    with pytest.raises(TimeoutError):
        post_json(webhook.url, b"{}", 0.3)


async def test_a_socket_timeout_before_ours_still_says_did_not_answer(
    root: Path, webhook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded machine the socket may time out just before the hook timeout: same reason."""

    def timed_out(url: str, body: bytes, timeout: float) -> int:
        raise TimeoutError("timed out")

    monkeypatch.setattr(notify, "post_json", timed_out)
    n, failures = notifier(root, webhook.url, timeout=0.5)
    with capture_logs() as logs:
        await n.deliver(notification(root))
    assert failures == ["webhook"]
    assert [e["reason"] for e in logs if e["event"] == "hook_failed"] == [
        f"{redact_url(webhook.url)} did not answer within 0.5 s"
    ]


async def test_webhook_credentials_are_sent_as_basic_auth_and_never_logged(root: Path, webhook: Hook) -> None:
    """user:password from the URL arrive in the Authorization header and appear in no log event."""
    webhook.status = 503
    n, _ = notifier(root, webhook.url.replace("http://", "http://deployer:s3cr%2Ft@"))
    with capture_logs() as logs:
        await n.deliver(notification(root))
    assert webhook.requests[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"deployer:s3cr/t").decode()
    text = json.dumps(logs, default=str)
    assert "s3cr" not in text and "deployer" not in text and "***@127.0.0.1" in text


async def test_an_unreachable_webhook_is_counted(root: Path) -> None:
    """A refused connection is retried, then counted, with the reason logged."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n, failures = notifier(root, f"http://127.0.0.1:{port}/")
    with capture_logs() as logs:
        await n.deliver(notification(root))
    assert failures == ["webhook"]
    assert any("cannot reach" in e.get("reason", "") for e in logs)
