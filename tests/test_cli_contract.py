"""The command line's contract with a user: usage errors, user errors in one line with their fix,
warnings for typos, a ROOT coordinator never ran on, liveness from the ROOT lock, what `--wait`
knows, and what the daemon logs."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from coordinator import commands
from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.exceptions import LayoutError
from coordinator.layout import Layout
from coordinator.lock import hold_lock, lock_holder
from coordinator.plan import Step
from tests.helpers import Daemon, GitRepo, cli, current_release, deployed, read_status, wait_until, write_marker

NO_DAEMON = "no coordinator is running on {root}; the request is saved and will be deployed when one starts"


def one_line(text: str) -> str:
    """The only line of ``text`` (a user error is one line, never a traceback)."""
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------------------------------------- usage errors


def test_an_unknown_option_shows_the_subcommands_usage_and_the_fix(root: Path) -> None:
    """`deploy v1 --wiat` exits 2 with `deploy`'s own usage line, the error and the option meant."""
    out = cli("deploy", "v1", "--wiat", "--root", str(root))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[0].startswith("usage: coordinator deploy ")
    assert "coordinator deploy: error: unrecognized arguments: --wiat" in lines
    assert lines[-1] == "coordinator deploy: fix: did you mean --wait? see `coordinator deploy --help`"
    assert not (root / "deploy.request").exists()


def test_a_missing_argument_shows_the_subcommands_usage_and_the_fix() -> None:
    """`deploy` without a tag exits 2 with `deploy`'s usage line, what is missing and where to look."""
    out = cli("deploy")
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[0].startswith("usage: coordinator deploy ")
    assert "coordinator deploy: error: the following arguments are required: tag" in lines
    assert lines[-1] == "coordinator deploy: fix: see `coordinator deploy --help`"


def test_an_unknown_command_names_the_closest_one() -> None:
    """`deplyo` exits 2 and suggests `deploy`."""
    out = cli("deplyo", "v1")
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == "coordinator: fix: did you mean deploy? see `coordinator --help`"


@pytest.mark.parametrize("command", [["deploy", "v1"], ["rollback"], ["stage", "v1"]])
def test_timeout_without_wait_is_a_usage_error(root: Path, command: list[str]) -> None:
    """`--timeout` does nothing without `--wait`: exit 2, and nothing is requested."""
    out = cli(*command, "--root", str(root), "--timeout", "5")
    assert out.returncode == 2
    assert f"usage: coordinator {command[0]} " in out.stderr
    assert "--timeout needs --wait" in out.stderr
    assert out.stderr.splitlines()[-1] == f"coordinator {command[0]}: fix: add --wait, or drop --timeout"
    assert not (root / "deploy.request").exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["deploy", "v1", "--wait", "--timeout", "soon"],
            'argument --timeout: must be a number of seconds > 0, got "soon"',
        ),
        (["history", "--limit", "three"], 'argument --limit: must be a whole number >= 1, got "three"'),
    ],
)
def test_bad_command_line_values_are_usage_errors_in_plain_words(root: Path, args: list[str], said: str) -> None:
    """A value argparse checks says what it must be and what it got, with exit 2."""
    out = cli(*args, "--root", str(root))
    assert out.returncode == 2
    assert f"coordinator {args[0]}: error: {said}" in out.stderr.splitlines()


def test_help_lists_exit_code_five() -> None:
    """`coordinator --help` lists the exit codes, 5 (no coordinator running) among them."""
    out = cli("--help")
    assert out.returncode == 0
    assert "exit codes:" in out.stdout
    assert "  5    deploy --wait / rollback --wait / stage --wait: no coordinator is running on ROOT" in out.stdout


# ---------------------------------------------------------------------------------------------- user errors


def _read_only_mount() -> list[str] | None:
    """A command prefix that runs its command with a private mount namespace (None: not possible here)."""
    for prefix in (["unshare", "-m"], ["unshare", "-Urm"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


def test_deploy_on_a_read_only_root_is_one_line_with_the_fix(root: Path) -> None:
    """`deploy` on a ROOT mounted read-only: exit 2, one line naming the cause and the fix, no traceback."""
    prefix = _read_only_mount()
    if prefix is None:
        pytest.skip("cannot create a mount namespace here (unshare -m) to mount ROOT read-only")
    script = 'mount --bind -o ro "$1" "$1" && exec "$2" -m coordinator deploy v1 --root "$1"'
    out = subprocess.run(
        [*prefix, "sh", "-c", script, "sh", str(root), sys.executable],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    line = one_line(out.stderr)
    assert line.startswith("coordinator: cannot write the marker: Read-only file system: ")
    assert line.endswith("is mounted read-only: mount it read-write")


@pytest.mark.anyio
async def test_a_marker_that_cannot_be_written_is_a_layout_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any OSError writing the marker (read-only, permission denied) becomes one error with a fix (exit 2)."""

    def refuse(path: Path, data: bytes) -> None:
        raise OSError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(commands, "atomic_write", refuse)
    with pytest.raises(LayoutError) as info:
        await commands.request_deploy(Layout.for_root(root), "v1")
    assert info.value.exit_code == 2
    assert info.value.message == f"cannot write the marker: Permission denied: {root / 'deploy.request'}"
    assert info.value.fix and "writable" in info.value.fix


def test_a_bad_toml_value_is_one_line_in_plain_words(root: Path, tmp_path: Path) -> None:
    """`keep = "three"` in the config file: exit 2, one line saying what keep must be, and the fix."""
    conf = tmp_path / "coordinator.toml"
    conf.write_text(f'root = "{root}"\nrepo = "/nowhere"\nkeep = "three"\n')
    out = cli("run", "--once", "--config", str(conf))
    assert out.returncode == 2
    assert one_line(out.stderr) == (
        f'coordinator: keep must be a whole number >= 1, got "three" (in {conf}) -- use e.g. `keep = 5`'
    )


def test_a_bad_environment_value_is_one_line_in_plain_words(root: Path) -> None:
    """A bad COORDINATOR_POLL says what it must be, naming the variable."""
    out = cli("run", "--once", "--root", str(root), "--repo", "/nowhere", env={"COORDINATOR_POLL": "maybe"})
    assert out.returncode == 2
    assert one_line(out.stderr) == (
        'coordinator: COORDINATOR_POLL must be true or false, got "maybe" -- use e.g. `COORDINATOR_POLL=false`'
    )


def test_a_missing_config_file_is_one_line(root: Path, tmp_path: Path) -> None:
    """`--config` naming no file: exit 2, one line."""
    out = cli("status", "--root", str(root), "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2
    assert one_line(out.stderr).startswith(f"coordinator: config file {tmp_path / 'nope.toml'} not found -- ")


def test_an_unknown_coordinator_variable_is_a_warning_naming_the_closest_option(root: Path) -> None:
    """COORDINATOR_ROT (a typo of COORDINATOR_ROOT) is not silently ignored; the command still runs."""
    out = cli("deploy", "v1", "--root", str(root), env={"COORDINATOR_ROT": "/srv/app"})
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "coordinator: warning: unknown environment variable COORDINATOR_ROT is ignored; did you mean COORDINATOR_ROOT?"
    ]


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["releases"], ["history"], ["rollback"]])
def test_a_root_coordinator_never_ran_on_says_so(root: Path, command: list[str]) -> None:
    """A wrong --root (no .coordinator/) exits 1 saying so, instead of "no releases yet"."""
    out = cli(*command, "--root", str(root))
    assert out.returncode == 1
    assert one_line(out.stderr) == (
        f"coordinator: {root} has never been used by coordinator (no .coordinator/ directory) -- "
        f"check --root, or start `coordinator run --root {root}` on it first"
    )
    assert out.stdout == ""


def test_a_root_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """A --root that does not exist says that."""
    out = cli("releases", "--root", str(tmp_path / "nope"))
    assert out.returncode == 1 and f"{tmp_path / 'nope'} does not exist" in one_line(out.stderr)


# ---------------------------------------------------------------------------------------------- liveness


def test_status_says_whether_a_coordinator_holds_the_lock(root: Path, repo: GitRepo) -> None:
    """`status` and `status --json` (daemon_running) follow the ROOT lock: after kill -9, not running."""
    daemon = Daemon(root, repo.path).start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        out = cli("status", "--root", str(root))
        assert out.returncode == 0, out.stderr
        assert re.search(rf"^daemon +running, pid {pid}, status written ", out.stdout, re.M)
        assert cli("status", "--root", str(root), "--json").stdout.count('"daemon_running": true') == 1
        assert daemon.proc.poll() is None  # probing did not disturb it
        daemon.kill9()
        out = cli("status", "--root", str(root))
        assert out.returncode == 0, out.stderr
        assert re.search(
            rf"^daemon +NOT running \(no coordinator holds ROOT's lock\), last pid {pid}, ", out.stdout, re.M
        )
        assert '"daemon_running": false' in cli("status", "--root", str(root), "--json").stdout
    finally:
        daemon.__exit__()


def test_probing_the_lock_never_takes_it_from_a_daemon(root: Path, repo: GitRepo) -> None:
    """Probing liveness in a tight loop while a daemon starts and deploys: it starts, deploys, keeps the lock."""
    lock = Layout.for_root(root).lock_file
    lock.parent.mkdir()
    lock.touch()
    stop = threading.Event()
    seen: list[bool] = []

    def probe() -> None:
        while not stop.is_set():
            seen.append(lock_holder(lock)[0])

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with Daemon(root, repo.path) as daemon:
            out = cli("deploy", "v1", "--root", str(root), "--wait", "--timeout", "30")
            assert out.returncode == 0, out.stderr + daemon.log()
            assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        stop.set()
        prober.join()
    assert True in seen and False in seen


def test_a_starting_daemon_waits_out_a_probe_holding_the_lock_shared(tmp_path: Path) -> None:
    """A probe's shared lock (held for microseconds in real life) makes a starting daemon retry, not refuse."""
    lock = tmp_path / ".coordinator" / "lock"
    lock.parent.mkdir()
    lock.touch()
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    threading.Timer(0.3, os.close, (fd,)).start()
    started = time.monotonic()
    with hold_lock(lock):
        assert time.monotonic() - started >= 0.25
        assert lock_holder(lock)[0] is True
    assert lock_holder(lock) == (False, None)
    assert lock_holder(tmp_path / "missing") == (False, None)


def test_deploy_wait_without_a_daemon_exits_5_and_the_request_is_deployed_later(root: Path, repo: GitRepo) -> None:
    """No coordinator holds the lock: `deploy --wait` fails within 15 s with exit 5; the marker stays,
    and a coordinator started later deploys it."""
    started = time.monotonic()
    out = cli("deploy", "v1", "--root", str(root), "--wait")
    assert time.monotonic() - started < 15
    assert out.returncode == 5
    assert one_line(out.stderr).startswith(f"coordinator: {NO_DAEMON.format(root=root)} -- ")
    assert '"tag": "v1"' in (root / "deploy.request").read_text()
    with Daemon(root, repo.path):
        wait_until(lambda: deployed(root, "v1"))


def test_rollback_wait_without_a_daemon_exits_5_and_the_rollback_happens_later(root: Path, repo: GitRepo) -> None:
    """`rollback --wait` with no coordinator running: exit 5 within 15 s; a coordinator started later rolls back."""
    for tag in ("v1", "v2"):
        write_marker(root, tag)
        assert cli("run", "--once", "--root", str(root), "--repo", str(repo.path)).returncode == 0
    started = time.monotonic()
    out = cli("rollback", "--root", str(root), "--wait")
    assert time.monotonic() - started < 15
    assert out.returncode == 5, out.stderr
    assert NO_DAEMON.format(root=root) in one_line(out.stderr)
    with Daemon(root, repo.path):
        wait_until(lambda: deployed(root, "v1"))
    assert "v1-" in str(current_release(root))


def test_ctrl_c_during_deploy_wait_says_the_request_stays_pending(root: Path) -> None:
    """SIGINT during `deploy --wait`: exit 130, saying the request stays pending and how to follow it."""
    (root / ".coordinator").mkdir(exist_ok=True)
    # the test holds ROOT's lock as a daemon would (one that never deploys), so the wait cannot end
    # with exit 5 however slowly this machine runs: only the SIGINT ends it
    with hold_lock(root / ".coordinator" / "lock"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "deploy", "v1", "--root", str(root), "--wait"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's `&` may have ignored it
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("requested v1 (id ")
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    line = one_line(err)
    assert line.startswith("coordinator: interrupted; the request for v1 (id ")
    assert "stays pending" in line and line.endswith(f"follow it with `coordinator status --root {root}`")
    assert (root / "deploy.request").exists()


# ---------------------------------------------------------------------------------------------- --wait wording


def test_wait_without_a_health_url_says_only_that_the_reload_was_requested(root: Path, repo: GitRepo) -> None:
    """Without --health-url the daemon cannot know the release is served, and `--wait` does not claim it."""
    with Daemon(root, repo.path):
        out = cli("deploy", "v1", "--root", str(root), "--wait", "--timeout", "30")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith(
        "v1 is current; reload requested (no health check configured: not verified as served): release v1-"
    )
    assert (read_status(root) or {})["verify"] is False


def test_wait_with_a_health_url_says_serving_verified(root: Path, repo: GitRepo, app_url: str) -> None:
    """With --health-url the daemon verifies, the status file says so (verify), and `--wait` says served."""
    with Daemon(root, repo.path, "--health-url", app_url):
        out = cli("deploy", "v1", "--root", str(root), "--wait", "--timeout", "30")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith("v1 is current; serving, verified: release v1-")
    assert (read_status(root) or {})["verify"] is True


# ---------------------------------------------------------------------------------------------- logs


@pytest.mark.anyio
async def test_a_deploy_logs_one_info_line_per_phase_and_no_none(root: Path, repo: GitRepo, app_url: str) -> None:
    """A real deploy (every phase: fetch, prepare, build, publish, swap, reload, verify, prune) logs at
    info `deploy_started`, at most one line per phase and how it ended; no field is None at any level."""
    deployer = Deployer(
        Config(layout=Layout.for_root(root), repo=str(repo.path), build_command="true", health_url=app_url)
    )
    await deployer.startup()
    events = []
    for tag in ("v1", "v2"):  # a text marker: no request id, no sha; v2 has a previous release
        write_marker(root, f"{tag}\n")
        with capture_logs() as logs:
            attempt = await deployer.reconcile()
        assert attempt is not None and attempt.result == "success"
        info = [e["event"] for e in logs if e["log_level"] == "info"]
        phases = [name for name in info if name in {s.value for s in Step}]
        assert len(phases) == len(set(phases)), info
        assert set(phases) >= {"fetch", "prepare", "build", "publish", "swap", "reload", "verify", "prune"}
        assert [name for name in info if name not in phases] == ["deploy_started", "deploy_succeeded"]
        events += logs
    nones = [e for e in events if any(v is None for v in e.values())]
    assert nones == []
    assert any(e["event"] == "reloaded" and e["log_level"] == "debug" for e in events)


# ---------------------------------------------------------------------------------------------- stage


def test_stage_wait_stages_without_serving_and_a_deploy_then_only_swaps(root: Path, repo: GitRepo) -> None:
    """`stage v2 --wait` against a running daemon: exit 0 once staged, v1 still served; `deploy v2`
    then swaps to that very release without preparing it; `history` shows the stage. No resync in
    the test's time: the daemon sees the stage request through its watch."""
    with Daemon(root, repo.path, "--resync-interval", "3600"):
        assert cli("deploy", "v1", "--root", str(root), "--wait", "--timeout", "30").returncode == 0
        out = cli("stage", "v2", "--root", str(root), "--wait", "--timeout", "30")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0].startswith("requested stage of v2 (id ")
        assert re.match(r"v2 is staged \(not served\): release v2-[0-9a-f]{12}, sha ", out.stdout.splitlines()[-1])
        st = read_status(root) or {}
        staged = st["staged"]["release"]
        assert st["current"]["tag"] == "v1" and str(current_release(root)).startswith("releases/v1-")
        out = cli("deploy", "v2", "--root", str(root), "--wait", "--timeout", "30")
        assert out.returncode == 0, out.stderr
        st = read_status(root) or {}
        assert st["current"]["release"] == staged and st["staged"] is None
        assert set(st["last_attempt"]["phases_ms"]) == {"swap", "reload", "prune"}
    history = cli("history", "--root", str(root))
    assert history.returncode == 0
    assert "stage success" in history.stdout and "v2" in history.stdout


def test_stage_wait_of_a_missing_tag_exits_1_with_the_error(root: Path, repo: GitRepo) -> None:
    """`stage --wait` of a tag the repository lacks: exit 1 naming the stage and the missing tag."""
    with Daemon(root, repo.path):
        out = cli("stage", "v9", "--root", str(root), "--wait", "--timeout", "30")
    assert out.returncode == 1, out.stderr
    assert one_line(out.stderr).startswith("coordinator: stage of v9 failed: ")
    assert "v9" in (read_status(root) or {})["stage"]["error"]["message"]


def test_stage_wait_without_a_daemon_exits_5_and_the_stage_happens_later(root: Path, repo: GitRepo) -> None:
    """No coordinator holds the lock: `stage --wait` exits 5 within 15 s, the stage request stays, and a
    coordinator started later stages it."""
    started = time.monotonic()
    out = cli("stage", "v2", "--root", str(root), "--wait")
    assert time.monotonic() - started < 15
    assert out.returncode == 5
    no_daemon = NO_DAEMON.format(root=root).replace("will be deployed", "will be staged")
    assert one_line(out.stderr).startswith(f"coordinator: {no_daemon} -- ")
    assert '"tag": "v2"' in (root / "stage.request").read_text()
    with Daemon(root, repo.path):
        wait_until(lambda: ((read_status(root) or {}).get("stage") or {}).get("state") == "staged")
    assert current_release(root) is None
