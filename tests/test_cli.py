"""The command line, run for real as `python -m coordinator`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import Daemon, GitRepo, current_release, read_status, wait_until


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


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


def test_deploy_wait_times_out_with_exit_four(root: Path) -> None:
    """Without a daemon, `deploy --wait --timeout` exits 4 and says what to check."""
    out = cli("deploy", "v1", "--root", str(root), "--wait", "--timeout", "0.5")
    assert out.returncode == 4
    assert "coordinator run" in out.stderr


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
    assert table.returncode == 0 and "current   v1" in table.stdout
    assert json.loads(raw.stdout) == read_status(root)


def test_status_without_a_daemon_says_how_to_start_one(root: Path) -> None:
    """`status` on a root no daemon ever ran on exits 1 with the fix."""
    out = cli("status", "--root", str(root))
    assert out.returncode == 1 and "coordinator run" in out.stderr


def test_releases_marks_current_and_previous(root: Path, repo: GitRepo) -> None:
    """`releases` lists releases newest first with * for current and - for previous."""
    for tag in ("v1", "v2"):
        (root / "deploy.request").write_text(tag)
        cli("run", "--once", "--root", str(root), "--repo", str(repo.path))
    out = cli("releases", "--root", str(root))
    lines = [ln for ln in out.stdout.splitlines() if ln[:2].strip() in ("*", "-")]
    assert [ln.split()[0:2] for ln in lines] == [
        ["*", f"v2-{repo.tag_sha('v2')[:12]}"],
        ["-", f"v1-{repo.tag_sha('v1')[:12]}"],
    ]


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
    out = cli("rollback", "--root", str(root))
    assert out.returncode == 1 and "no previous release" in out.stderr


def test_version_flag(tmp_path: Path) -> None:
    """`--version` prints the version."""
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("coordinator ")
