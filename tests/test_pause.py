"""Pausing deploys: the pause file (coordinator/pause.py), the client commands, the deployer and the
real daemon (coordinator pause / resume, deploy --wait exit 6, status, /readyz, coordinator_paused)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator import commands
from coordinator.layout import Layout
from coordinator.pause import (
    MAX_PAUSE_BYTES,
    MAX_REASON_CHARS,
    UNREADABLE_REASON,
    clean_reason,
    new_pause,
    read_pause,
)
from coordinator.records import AttemptResult
from coordinator.state import parse_iso
from tests.helpers import (
    Daemon,
    GitRepo,
    cli,
    current_release,
    deployed,
    http_port,
    read_status,
    readyz,
    run_once,
    sample,
    scrape,
    started_deployer,
    wait_for_workspace,
    wait_until,
    write_marker,
)


def pause_file(root: Path) -> Path:
    return root / "deploy.pause"


# --------------------------------------------------------------------------------------------------
# the pause file and the client commands


def test_pause_writes_the_typed_record_atomically(root: Path, tmp_path: Path) -> None:
    """`pause` replaces the name by rename (a symlink planted there is replaced, never written
    through) with exactly reason, by, pid and at; no temporary file is left."""
    outside = tmp_path / "outside"
    outside.write_text("keep")
    os.symlink(outside, pause_file(root))
    out = cli("pause", "--root", str(root), "--reason", "db migration")
    assert out.returncode == 0, out.stderr
    assert outside.read_text() == "keep" and not pause_file(root).is_symlink()
    record = json.loads(pause_file(root).read_text())
    assert set(record) == {"reason", "by", "pid", "at"}
    assert record["reason"] == "db migration" and "@" in record["by"] and isinstance(record["pid"], int)
    assert abs(parse_iso(record["at"]) - time.time()) < 60  # type: ignore[operator]
    assert sorted(os.listdir(root)) == ["deploy.pause"]
    assert "paused by" in out.stdout and "db migration" in out.stdout and "coordinator resume" in out.stdout


def test_resume_removes_the_pause_file(root: Path) -> None:
    """`resume` removes the pause file and says who had paused and why."""
    assert cli("pause", "--root", str(root), "--reason", "incident 42").returncode == 0
    out = cli("resume", "--root", str(root))
    assert out.returncode == 0, out.stderr
    assert not pause_file(root).exists()
    assert "resumed" in out.stdout and "incident 42" in out.stdout


def test_resume_when_not_paused_says_so_and_succeeds(root: Path) -> None:
    """`resume` twice: the second says deploys were not paused, exit 0."""
    out = cli("resume", "--root", str(root))
    assert out.returncode == 0 and "were not paused" in out.stdout


def test_pausing_again_replaces_the_reason_and_names_the_pause_it_replaced(root: Path) -> None:
    """A second `pause` writes the new reason and shows the old one."""
    cli("pause", "--root", str(root), "--reason", "first")
    out = cli("pause", "--root", str(root), "--reason", "second")
    assert out.returncode == 0
    assert json.loads(pause_file(root).read_text())["reason"] == "second"
    assert "replaces the pause" in out.stdout and "first" in out.stdout


def test_pause_on_a_root_that_does_not_exist_fails(tmp_path: Path) -> None:
    """A wrong --root is an error (exit 1), not a pause file in a new directory."""
    out = cli("pause", "--root", str(tmp_path / "nope"))
    assert out.returncode == 1 and "is not a directory" in out.stderr
    assert not (tmp_path / "nope").exists()


def test_resume_refuses_a_directory_planted_as_the_pause_file(root: Path) -> None:
    """A directory at ROOT/deploy.pause is not removed (it may hold anything): exit 2, still paused."""
    pause_file(root).mkdir()
    (pause_file(root) / "x").write_text("x")
    out = cli("resume", "--root", str(root))
    assert out.returncode == 2 and "is a directory" in out.stderr and "Traceback" not in out.stderr
    assert (pause_file(root) / "x").exists()


def test_a_reason_with_control_characters_is_made_one_clean_line(root: Path) -> None:
    """Newlines, escape sequences, NUL-free control characters and bidi overrides become spaces."""
    out = cli("pause", "--root", str(root), "--reason", "db\nmigration\x1b[31m red\t\u202eevil\x7f")
    assert out.returncode == 0
    reason = json.loads(pause_file(root).read_text())["reason"]
    assert reason == "db migration [31m red  evil"
    assert "\x1b" not in out.stdout


def test_a_reason_of_a_megabyte_is_cut(root: Path) -> None:
    """A 1 MB reason is cut to MAX_REASON_CHARS characters, ending with an ellipsis."""
    record, _ = anyio.run(commands.pause, Layout.for_root(root), "x" * (1 << 20))
    on_disk = json.loads(pause_file(root).read_text())
    assert on_disk == record
    assert len(record["reason"]) == MAX_REASON_CHARS and record["reason"].endswith("…")
    assert pause_file(root).stat().st_size < 2 * MAX_REASON_CHARS


def test_an_empty_reason_reads_as_no_reason_given() -> None:
    """A blank reason is recorded as "no reason given"."""
    assert clean_reason(" \n ") == ""
    assert new_pause(None)["reason"] == "no reason given"


@pytest.mark.parametrize(
    ("plant", "why"),
    [
        (lambda p: p.write_text("{not json"), "not valid JSON"),
        (lambda p: p.write_text(""), "empty"),
        (lambda p: p.write_text("[1, 2]"), "not a JSON object"),
        (lambda p: p.write_bytes(b" " * (MAX_PAUSE_BYTES + 1)), "larger than 64 KiB"),
        (lambda p: p.mkdir(), "it is a directory"),
        (lambda p: os.symlink("/etc/hostname", p), "it is a symlink"),
        (lambda p: os.mkfifo(p), "it is not a regular file"),
    ],
    ids=["not-json", "empty", "array", "too-large", "directory", "symlink", "fifo"],
)
def test_a_pause_file_that_cannot_be_read_still_pauses(root: Path, plant: object, why: str) -> None:
    """Fail safe: anything at ROOT/deploy.pause pauses; unreadable ones say so and why."""
    plant(pause_file(root))  # type: ignore[operator]
    record = read_pause(pause_file(root))
    assert record == {"reason": UNREADABLE_REASON, "by": None, "pid": None, "at": None, "unreadable": why}


def test_a_hand_written_pause_file_is_read_field_by_field(root: Path) -> None:
    """A JSON object with wrong types keeps what is usable; its reason is cleaned; no file: not paused."""
    assert read_pause(pause_file(root)) is None
    pause_file(root).write_text(json.dumps({"reason": "a\nb", "by": 7, "pid": True, "at": "yesterday"}))
    assert read_pause(pause_file(root)) == {"reason": "a b", "by": None, "pid": None, "at": None}


# --------------------------------------------------------------------------------------------------
# the deployer (in-process, real git)

pytest_anyio = pytest.mark.anyio


@pytest_anyio
async def test_while_paused_a_new_marker_is_reported_not_deployed_and_deploys_after_resume(
    root: Path, repo: GitRepo
) -> None:
    """Paused: v2 is desired, state paused with the reason, v1 stays current; resumed: v2 deploys."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    v1 = current_release(root)
    await commands.pause(Layout.for_root(root), "incident 42")
    write_marker(root, "v2")
    with capture_logs() as logs:
        assert await d.reconcile() is None
    assert current_release(root) == v1
    st = read_status(root) or {}
    assert st["state"] == "paused" and st["desired"]["tag"] == "v2"
    assert st["paused"]["reason"] == "incident 42" and st["paused"]["by"]
    assert [e["reason"] for e in logs if e["event"] == "deploys_paused"] == ["incident 42"]
    await commands.resume(Layout.for_root(root))
    with capture_logs() as logs:
        attempt = await d.reconcile()
    assert attempt is not None and attempt.result is AttemptResult.SUCCESS and attempt.tag == "v2"
    assert (read_status(root) or {})["paused"] is None
    assert [e["event"] for e in logs if e["event"].startswith("deploys_")] == ["deploys_resumed"]


@pytest_anyio
async def test_a_garbage_pause_file_pauses_and_is_reported(root: Path, repo: GitRepo) -> None:
    """A pause file that is not JSON: nothing deploys, status says "unreadable pause file", a warning is logged."""
    d = await started_deployer(root, repo)
    pause_file(root).write_bytes(b"\x00\xff garbage")
    write_marker(root, "v1")
    with capture_logs() as logs:
        await d.reconcile()
    assert current_release(root) is None
    st = read_status(root) or {}
    assert st["state"] == "paused"
    assert st["paused"]["reason"] == UNREADABLE_REASON and st["paused"]["unreadable"] == "not valid JSON"
    assert [(e["event"], e["log_level"]) for e in logs if e["event"] == "deploys_paused"] == [
        ("deploys_paused", "warning")
    ]


@pytest_anyio
async def test_a_pause_cancels_a_deploy_still_building(root: Path, repo: GitRepo) -> None:
    """A pause that appears during the build cancels the deploy before its swap; nothing is left behind."""
    d = await started_deployer(root, repo, build_command="sleep 30")
    write_marker(root, "v1")
    async with anyio.create_task_group() as tg:

        async def pause_it() -> None:
            await wait_for_workspace(root)
            await anyio.sleep(0.2)
            await commands.pause(Layout.for_root(root), "stop")
            await d.check_superseded()

        tg.start_soon(pause_it)
        with anyio.fail_after(20):
            attempt = await d.reconcile()
    assert attempt is not None and attempt.result is AttemptResult.CANCELLED
    assert os.listdir(root / "releases") == [] and current_release(root) is None
    await d.reconcile()
    assert (read_status(root) or {})["state"] == "paused"


@pytest_anyio
async def test_a_pause_written_before_the_swap_stops_it_even_unannounced(root: Path, repo: GitRepo) -> None:
    """Without any watch hint, a pause written during the build is seen just before the swap: no swap."""
    d = await started_deployer(root, repo, build_command="sleep 1")
    write_marker(root, "v1")
    async with anyio.create_task_group() as tg:

        async def pause_it() -> None:
            await wait_for_workspace(root)
            await commands.pause(Layout.for_root(root), "stop")

        tg.start_soon(pause_it)
        with anyio.fail_after(20):
            attempt = await d.reconcile()
    assert attempt is not None and attempt.result is AttemptResult.CANCELLED
    assert current_release(root) is None


@pytest_anyio
async def test_the_reload_a_crash_left_undone_still_happens_while_paused(root: Path, repo: GitRepo) -> None:
    """A `current` swapped but never reloaded is reloaded while paused (it completes a deploy already made)."""
    from coordinator.state import load_state, save_state

    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    state = load_state(root / ".coordinator" / "state.json")
    state.reloaded = "something-else"
    save_state(root / ".coordinator" / "state.json", state)
    await commands.pause(Layout.for_root(root), "stop")
    before = os.stat(root / "reload.touch").st_mtime_ns
    d2 = await started_deployer(root, repo)
    await d2.reconcile()
    assert os.stat(root / "reload.touch").st_mtime_ns > before
    assert load_state(root / ".coordinator" / "state.json").reloaded == current_release(root).split("/")[1]  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------
# the real daemon and the real CLI


def paused_with(root: Path, tag: str) -> bool:
    st = read_status(root) or {}
    return st.get("state") == "paused" and (st.get("desired") or {}).get("tag") == tag


def test_daemon_holds_a_marker_while_paused_and_deploys_it_at_once_on_resume(root: Path, repo: GitRepo) -> None:
    """With no resync to help: pause, v2 is reported pending and not deployed; resume deploys it promptly."""
    with Daemon(root, repo.path, "--resync-interval", "600"):
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
        assert cli("pause", "--root", str(root), "--reason", "incident").returncode == 0
        write_marker(root, "v2")
        wait_until(lambda: paused_with(root, "v2"), timeout=10)
        status = cli("status", "--root", str(root))
        assert re.search(r"^paused +by .+@.+ at .+: incident$", status.stdout, flags=re.M), status.stdout
        time.sleep(0.5)
        assert (current_release(root) or "").startswith("releases/v1-")
        assert cli("resume", "--root", str(root)).returncode == 0
        wait_until(lambda: deployed(root, "v2"), timeout=10)


def test_a_pause_survives_a_daemon_restart(root: Path, repo: GitRepo) -> None:
    """The pause is a file: a restarted daemon stays paused until `resume`."""
    with Daemon(root, repo.path) as d:
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
        cli("pause", "--root", str(root), "--reason", "hold")
        d.stop()
    write_marker(root, "v2")
    with Daemon(root, repo.path):
        wait_until(lambda: paused_with(root, "v2"))
        assert (current_release(root) or "").startswith("releases/v1-")
        cli("resume", "--root", str(root))
        wait_until(lambda: deployed(root, "v2"), timeout=10)


def test_resume_is_seen_at_once_with_the_marker_in_another_directory(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """--marker elsewhere: ROOT is watched too, so resume deploys without waiting for a resync."""
    marker = tmp_path / "markers" / "deploy.request"
    marker.parent.mkdir()
    cli("pause", "--root", str(root))
    with Daemon(root, repo.path, "--marker", str(marker), "--resync-interval", "600"):
        marker.write_text("v1")
        wait_until(lambda: paused_with(root, "v1"), timeout=10)
        cli("resume", "--root", str(root))
        wait_until(lambda: deployed(root, "v1"), timeout=10)


def test_deploy_wait_on_a_paused_root_exits_6_and_keeps_the_request(root: Path, repo: GitRepo) -> None:
    """`deploy --wait` while paused (daemon running): exit 6 naming who, why and how to resume; the
    request deploys after resume. Without --wait: exit 0 and a warning."""
    with Daemon(root, repo.path):
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
        cli("pause", "--root", str(root), "--reason", "incident 42")
        out = cli("deploy", "v2", "--root", str(root), "--wait", "--timeout", "30", timeout=30)
        assert out.returncode == 6, out.stderr
        assert "deploys are paused" in out.stderr and "paused by" in out.stderr and "incident 42" in out.stderr
        assert f"coordinator resume --root {root}" in out.stderr
        wait_until(lambda: paused_with(root, "v2"))
        out = cli("deploy", "v3", "--root", str(root))
        assert out.returncode == 0 and "warning: deploys are paused" in out.stderr
        cli("resume", "--root", str(root))
        wait_until(lambda: deployed(root, "v3"), timeout=10)


def test_deploy_wait_exits_6_when_a_pause_appears_while_waiting(root: Path, repo: GitRepo) -> None:
    """A pause while `deploy --wait` follows a build: the build is cancelled and the wait exits 6."""
    with Daemon(root, repo.path, "--build-command", "sleep 30"):
        waiter = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "deploy", "v1", "--root", str(root), "--wait"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: ((read_status(root) or {}).get("phase") or {}).get("name") == "build")
            cli("pause", "--root", str(root), "--reason", "stop now")
            _, err = waiter.communicate(timeout=30)
        finally:
            if waiter.poll() is None:
                waiter.send_signal(signal.SIGKILL)
                waiter.wait()
        assert waiter.returncode == 6, err
        assert "stop now" in err
        assert current_release(root) is None


def test_readyz_stays_ready_and_the_paused_gauge_follows_the_pause(root: Path, repo: GitRepo) -> None:
    """Converged then paused: /readyz still 200; coordinator_paused 0, then 1, then 0 after resume."""
    with Daemon(root, repo.path, "--http-bind", "127.0.0.1:0") as d:
        port = http_port(d)
        write_marker(root, "v1")
        wait_until(lambda: readyz(port)[0] == 200)
        assert sample(scrape(port), "coordinator_paused") == 0
        cli("pause", "--root", str(root))
        wait_until(lambda: (read_status(root) or {}).get("state") == "paused")
        assert readyz(port)[0] == 200
        assert sample(scrape(port), "coordinator_paused") == 1
        cli("resume", "--root", str(root))
        assert sample(scrape(port), "coordinator_paused") == 0


def test_run_once_on_a_paused_root_exits_6_and_deploys_nothing(root: Path, repo: GitRepo) -> None:
    """`run --once` while paused: nothing deployed, exit 6 with who paused and how to resume."""
    cli("pause", "--root", str(root), "--reason", "hold")
    write_marker(root, "v1")
    out = run_once(root, repo)
    assert out.returncode == 6, out.stderr
    assert "deploys are paused" in out.stderr and "hold" in out.stderr and "coordinator resume" in out.stderr
    assert current_release(root) is None
    cli("resume", "--root", str(root))
    assert run_once(root, repo).returncode == 0 and deployed(root, "v1")


def test_status_shows_a_pause_made_while_no_daemon_runs(root: Path, repo: GitRepo) -> None:
    """`coordinator status` reads the pause file itself: a pause shows even with the daemon stopped."""
    write_marker(root, "v1")
    assert run_once(root, repo).returncode == 0
    cli("pause", "--root", str(root), "--reason", "db maintenance")
    shown = cli("status", "--root", str(root))
    assert re.search(r"^paused +by .*: db maintenance$", shown.stdout, re.M), shown.stdout
    as_json = json.loads(cli("status", "--root", str(root), "--json").stdout)
    assert as_json["paused"]["reason"] == "db maintenance"
    cli("resume", "--root", str(root))
    assert json.loads(cli("status", "--root", str(root), "--json").stdout)["paused"] is None
