"""The command line, run for real as `python -m coordinator`."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import Daemon, GitRepo, cli, current_release, read_status, wait_until

ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_deploy_wait_exits_zero_once_the_tag_is_current(root: Path, repo: GitRepo) -> None:
    """`deploy TAG --wait` returns 0 when TAG is current and reloaded, showing phases."""
    with Daemon(root, repo.path):
        out = cli("deploy", "v2", "--root", str(root), "--wait", "--timeout", "30")
    assert out.returncode == 0, out.stderr
    assert "v2 is current" in out.stdout and "swap" in out.stdout
    assert "v2-" in str(current_release(root))


def test_deploy_writes_a_json_marker_with_a_fresh_request_id(root: Path) -> None:
    """`deploy` writes the marker atomically as JSON with a new id each time."""
    first = cli("deploy", "v1", "--root", str(root))
    one = json.loads((root / "deploy.request").read_text())
    cli("deploy", "v1", "--root", str(root))
    two = json.loads((root / "deploy.request").read_text())
    assert first.returncode == 0
    assert one["tag"] == two["tag"] == "v1" and one["id"] != two["id"]
    assert [n for n in os.listdir(root) if n.startswith(".")] == []


def test_deploy_wait_exits_one_with_the_reason_on_failure(root: Path, repo: GitRepo) -> None:
    """A failed attempt makes `deploy --wait` exit 1 with the reason on one line."""
    with Daemon(root, repo.path):
        out = cli("deploy", "v9", "--root", str(root), "--wait", "--timeout", "30")
    assert out.returncode == 1
    assert "not found" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_deploy_wait_times_out_with_exit_four(root: Path, repo: GitRepo) -> None:
    """A deploy still running when `--timeout` runs out exits 4 and says how to follow it."""
    with Daemon(root, repo.path, "--build-command", "sleep 5"):
        out = cli("deploy", "v1", "--root", str(root), "--wait", "--timeout", "1")
    assert out.returncode == 4, out.stderr
    assert "not deployed within 1 s" in out.stderr and f"coordinator status --root {root}" in out.stderr


def test_deploy_refuses_an_invalid_tag_without_writing(root: Path) -> None:
    """An invalid tag is refused by the client itself and no marker is written."""
    out = cli("deploy", "--root", str(root), "--", "--upload-pack=x")
    assert out.returncode == 1
    assert "invalid tag" in out.stderr
    assert not (root / "deploy.request").exists()


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    """A command without --root exits 2 with a one-line fix, no traceback."""
    out = cli("status")
    assert out.returncode == 2
    assert "--root" in out.stderr and "Traceback" not in out.stderr


def test_root_can_come_from_the_environment(root: Path, repo: GitRepo) -> None:
    """COORDINATOR_ROOT and COORDINATOR_REPO configure `run --once`."""
    (root / "deploy.request").write_text("v1")
    out = cli("run", "--once", env={"COORDINATOR_ROOT": str(root), "COORDINATOR_REPO": str(repo.path)})
    assert out.returncode == 0, out.stderr
    assert "v1-" in str(current_release(root))


def test_options_can_come_from_a_toml_config_file(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """A TOML --config file supplies options; relative paths are relative to the file."""
    cfg = tmp_path / "coordinator.toml"
    cfg.write_text(f'root = "{root.name}"\nrepo = "{repo.path}"\nkeep = 3\ntag-pattern = "v*"\n')
    (root / "deploy.request").write_text("v1")
    out = cli("run", "--once", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "v1-" in str(current_release(root))


def test_invalid_option_value_is_a_usage_error(root: Path, repo: GitRepo) -> None:
    """A non-numeric --keep exits 2 naming the option."""
    out = cli("run", "--once", "--root", str(root), "--repo", str(repo.path), "--keep", "many")
    assert out.returncode == 2
    assert "keep" in out.stderr


def test_status_prints_a_table_and_json(root: Path, repo: GitRepo) -> None:
    """`status` prints the state and current tag; `status --json` the raw file."""
    (root / "deploy.request").write_text("v1")
    cli("run", "--once", "--root", str(root), "--repo", str(repo.path))
    table = cli("status", "--root", str(root))
    raw = cli("status", "--root", str(root), "--json")
    sha = repo.tag_sha("v1")[:12]
    assert table.returncode == 0
    assert f"current       v1  v1-{sha}  sha {sha}  (reloaded)" in table.stdout.splitlines()
    assert json.loads(raw.stdout) == {**(read_status(root) or {}), "daemon_running": False}


def test_status_without_a_daemon_says_how_to_start_one(root: Path) -> None:
    """`status` on a root no daemon ever ran on exits 1 with the fix."""
    out = cli("status", "--root", str(root))
    assert out.returncode == 1 and "coordinator run" in out.stderr
    (root / ".coordinator").mkdir()  # a coordinator ran here, but wrote no status file
    out = cli("status", "--root", str(root))
    assert out.returncode == 1 and "no status file" in out.stderr and "coordinator run" in out.stderr


def test_releases_marks_current_and_previous(root: Path, repo: GitRepo) -> None:
    """`releases` lists releases newest first with * for current and - for previous."""
    for tag in ("v1", "v2"):
        (root / "deploy.request").write_text(tag)
        cli("run", "--once", "--root", str(root), "--repo", str(repo.path))
    out = cli("releases", "--root", str(root))
    lines = [ln for ln in out.stdout.splitlines() if ln[:2].strip() in ("*", "-")]
    v1, v2 = repo.tag_sha("v1")[:12], repo.tag_sha("v2")[:12]
    assert [ln.split()[0:4] for ln in lines] == [["*", f"v2-{v2}", "v2", v2], ["-", f"v1-{v1}", "v1", v1]]
    assert out.stdout.splitlines()[0].split() == ["RELEASE", "TAG", "SHA", "CREATED", "(UTC)"]


def test_rollback_wait_restores_the_previous_release(root: Path, repo: GitRepo) -> None:
    """`rollback --wait` makes the previous release current again."""
    with Daemon(root, repo.path):
        for tag in ("v1", "v2"):
            assert cli("deploy", tag, "--root", str(root), "--wait", "--timeout", "30").returncode == 0
        out = cli("rollback", "--root", str(root), "--wait", "--timeout", "30")
        assert out.returncode == 0, out.stderr
        wait_until(lambda: "v1-" in str(current_release(root)))


def test_rollback_without_previous_release_explains(root: Path) -> None:
    """`rollback` with nothing to roll back to exits 1 and says what to do instead."""
    (root / ".coordinator").mkdir()
    out = cli("rollback", "--root", str(root))
    assert out.returncode == 1 and "no previous release" in out.stderr


def test_version_flag(tmp_path: Path) -> None:
    """`--version` prints the version."""
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("coordinator ")


# ---------------------------------------------------------------------------------------------- deploy --wait


def on_terminal(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Run the command with a pseudo-terminal as stdout; return its exit code, terminal output, stderr."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "100", "PYTHONIOENCODING": "utf-8", **(env or {})},
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    rc = proc.wait(10)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return rc, b"".join(chunks).decode().replace("\r\n", "\n"), err


def phase_lines(stdout: str) -> list[tuple[str, str]]:
    """(phase, 'running' | 'ok' | 'FAILED') of the plain progress lines, in order."""
    return [(w[0], w[1]) for w in (ln.split() for ln in stdout.splitlines() if ln.startswith("  ")) if len(w) >= 2]


def test_deploy_wait_in_a_pipe_prints_plain_phase_lines_in_order(root: Path, repo: GitRepo) -> None:
    """Piped, `deploy --wait` prints one plain line per phase change, in order, then the summary."""
    with Daemon(root, repo.path, "--build-command", "sleep 0.4"):
        out = cli("deploy", "v1", "--root", str(root), "--wait", "--timeout", "30")
    assert out.returncode == 0, out.stderr
    done = [name for name, word in phase_lines(out.stdout) if word == "ok"]
    assert done == ["fetch", "prepare", "build", "publish", "swap", "reload"]
    assert phase_lines(out.stdout).index(("build", "running")) < phase_lines(out.stdout).index(("build", "ok"))
    sha = repo.tag_sha("v1")[:12]
    assert out.stdout.splitlines()[-1].startswith(
        f"v1 is current; reload requested (no health check configured: not verified as served): "
        f"release v1-{sha}, sha {sha}, "
    )
    assert "\x1b" not in out.stdout


def test_deploy_wait_on_a_terminal_shows_the_live_display(root: Path, repo: GitRepo) -> None:
    """On a terminal the phases are redrawn in place, the running one with its elapsed time, then a summary."""
    with Daemon(root, repo.path, "--build-command", "sleep 0.6"):
        rc, screen, err = on_terminal("deploy", "v1", "--root", str(root), "--wait", "--timeout", "30")
    assert rc == 0, err
    assert "\x1b[2K" in screen and re.search(r"\x1b\[\d+A", screen)  # erase line, cursor up
    assert "\x1b[32m✓\x1b[0m" in screen  # a green check mark
    plain = ESC.sub("", screen)
    running = set(re.findall(r"^  [⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] build +(\d\.\d) s$", plain, re.M))
    assert len(running) >= 2  # the running phase's elapsed time, updated in place
    assert re.search(r"^  ✓ build +(\d+ ms|\d\.\d\d s)$", plain, re.M)  # done, with its duration
    sha = repo.tag_sha("v1")[:12]
    assert plain.splitlines()[-1].startswith("✓ v1 is current; reload requested (no health check configured: ")
    assert f"release v1-{sha}, sha {sha}, " in plain.splitlines()[-1]


def test_deploy_wait_on_a_dumb_terminal_prints_plain_lines(root: Path, repo: GitRepo) -> None:
    """TERM=dumb gets the plain lines even on a terminal: no escape codes."""
    with Daemon(root, repo.path):
        rc, screen, err = on_terminal(
            "deploy", "v1", "--root", str(root), "--wait", "--timeout", "30", env={"TERM": "dumb"}
        )
    assert rc == 0, err
    assert "\x1b" not in screen and ("swap", "ok") in phase_lines(screen)


def test_deploy_wait_with_no_color_has_no_colours(root: Path, repo: GitRepo) -> None:
    """NO_COLOR keeps the live display (cursor movement) but drops every colour code."""
    with Daemon(root, repo.path):
        rc, screen, err = on_terminal(
            "deploy", "v1", "--root", str(root), "--wait", "--timeout", "30", env={"NO_COLOR": "1"}
        )
    assert rc == 0, err
    assert "\x1b[2K" in screen and not re.search(r"\x1b\[[\d;]*m", screen)


def test_deploy_wait_shows_a_failed_verify_and_the_rollback(root: Path, repo: GitRepo, app_url: str) -> None:
    """A release failing its health check shows verify FAILED, then rollback, and exits 1 saying so."""
    repo.commit({"BROKEN": "yes\n"}, tag="broken")
    with Daemon(root, repo.path, "--health-url", app_url, "--health-timeout", "1"):
        assert cli("deploy", "v1", "--root", str(root), "--wait", "--timeout", "30").returncode == 0
        out = cli("deploy", "broken", "--root", str(root), "--wait", "--timeout", "30")
    assert out.returncode == 1 and "rolled back" in out.stderr
    lines = phase_lines(out.stdout)
    assert lines.index(("verify", "running")) < lines.index(("verify", "FAILED")) < lines.index(("rollback", "ok"))


def test_status_file_shows_the_running_phase_and_the_phases_done(root: Path, repo: GitRepo) -> None:
    """While a build runs, the status file names it (with the request id) and lists the phases done."""
    with Daemon(root, repo.path, "--build-command", "sleep 1"):
        out = cli("deploy", "v1", "--root", str(root))
        rid = out.stdout.split("(id ")[1].split(")")[0]
        st = wait_until(lambda: (s := read_status(root)) and (s.get("phase") or {}).get("name") == "build" and s)
        assert (st["state"], st["phase"]["id"], st["phase"]["tag"]) == ("deploying", rid, "v1")
        assert st["last_attempt"]["result"] == "running"
        assert sorted(st["last_attempt"]["phases_ms"]) == ["fetch", "prepare"]
        done = wait_until(lambda: (s := read_status(root)) and s["state"] == "idle" and s)
    assert done["phase"] is None and "build" in done["last_attempt"]["phases_ms"]


def test_status_after_a_failure_shows_the_error_and_its_fix(root: Path, repo: GitRepo) -> None:
    """`status` after a failed attempt shows the error's kind, message and fix."""
    (root / "deploy.request").write_text("v9")
    cli("run", "--once", "--root", str(root), "--repo", str(repo.path))
    out = cli("status", "--root", str(root))
    lines = out.stdout.splitlines()
    assert lines[0].startswith("state         failed")
    assert any(ln.startswith("error         tag_not_found: ") for ln in lines)
    assert any(ln.startswith("  fix         ") for ln in lines)
