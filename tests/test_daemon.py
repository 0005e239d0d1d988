"""The daemon as a real subprocess: watching, coalescing, locking, signals, crashes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from coordinator.daemon import run_argv
from tests.helpers import Daemon, GitRepo, current_release, deployed, read_status, run_once, wait_until, write_marker


def test_daemon_deploys_when_the_marker_is_written_in_place(root: Path, repo: GitRepo) -> None:
    """`echo v1 > deploy.request` (an in-place write) is picked up."""
    with Daemon(root, repo.path):
        (root / "deploy.request").write_text("v1\n")
        wait_until(lambda: deployed(root, "v1"))


def test_daemon_deploys_when_the_marker_is_replaced_by_rename(root: Path, repo: GitRepo) -> None:
    """A marker replaced atomically by rename is picked up, again and again."""
    with Daemon(root, repo.path):
        for tag in ("v1", "v2", "v3"):
            write_marker(root, tag)
            wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]


def test_daemon_follows_a_configmap_style_data_symlink_swap(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """A Kubernetes ConfigMap update (new ..timestamp dir, ..data renamed over) is seen."""
    cfg = tmp_path / "configmap"
    cfg.mkdir()

    def publish(tag: str, stamp: str) -> None:
        d = cfg / f"..{stamp}"
        d.mkdir()
        (d / "deploy.request").write_text(tag)
        os.symlink(f"..{stamp}", cfg / "..data_tmp")
        os.replace(cfg / "..data_tmp", cfg / "..data")

    publish("v1", "2026_01")
    os.symlink("..data/deploy.request", cfg / "deploy.request")
    with Daemon(root, repo.path, "--marker", str(cfg / "deploy.request")):
        wait_until(lambda: deployed(root, "v1"))
        publish("v2", "2026_02")
        wait_until(lambda: deployed(root, "v2"), timeout=10)
        publish("v3", "2026_03")
        wait_until(lambda: deployed(root, "v3"), timeout=10)


def test_marker_directory_deleted_and_recreated_is_still_watched(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """Deleting and recreating the marker's directory does not silence the watch."""
    mdir = tmp_path / "markers"
    mdir.mkdir()
    marker = mdir / "deploy.request"
    with Daemon(root, repo.path, "--marker", str(marker), "--resync-interval", "600"):
        marker.write_text("v1")
        wait_until(lambda: deployed(root, "v1"))
        marker.unlink()
        mdir.rmdir()
        time.sleep(0.3)
        mdir.mkdir()
        marker.write_text("v2")
        wait_until(lambda: deployed(root, "v2"), timeout=10)


def test_polling_mode_decides_by_content_not_mtime(root: Path, repo: GitRepo) -> None:
    """In polling mode several rewrites within one second still converge to the last one."""
    with Daemon(root, repo.path, "--poll", "--resync-interval", "2"):
        for tag in ("v1", "v2", "v3"):
            write_marker(root, tag)
        wait_until(lambda: deployed(root, "v3"), timeout=15)


def test_periodic_resync_converges_without_events(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """A change no event reports (marker behind a symlink that is retargeted) is caught by the resync."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "m").write_text("v1")
    (b / "m").write_text("v2")
    link = tmp_path / "link"
    os.symlink(a, link)
    with Daemon(root, repo.path, "--marker", str(link / "m"), "--resync-interval", "1"):
        wait_until(lambda: deployed(root, "v1"))
        tmp = tmp_path / "link.tmp"
        os.symlink(b, tmp)
        os.replace(tmp, link)  # retargets the directory symlink: no event in any watched directory
        wait_until(lambda: deployed(root, "v2"), timeout=10)


def test_burst_of_markers_converges_to_the_last(root: Path, repo: GitRepo) -> None:
    """200 markers written back to back end with the last one deployed."""
    with Daemon(root, repo.path) as d:
        tags = [random.Random(1).choice(["v1", "v2", "v3"]) for _ in range(199)] + ["v2"]
        for i, tag in enumerate(tags):
            write_marker(root, json.dumps({"tag": tag, "id": f"r{i}"}))
        wait_until(lambda: (read_status(root) or {}).get("desired", {}).get("id") == "r199" and deployed(root, "v2"))
        attempts = [e for e in d.events() if e.get("event") == "deploy_started"]
        assert len(attempts) < 100


def test_second_daemon_on_the_same_root_refuses(root: Path, repo: GitRepo) -> None:
    """A second coordinator on the same ROOT exits 3 with a clear message."""
    with Daemon(root, repo.path):
        out = subprocess.run(
            run_argv(root, repo.path),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert out.returncode == 3
    assert "already running" in out.stderr and "Traceback" not in out.stderr


def test_sigterm_stops_cleanly(root: Path, repo: GitRepo) -> None:
    """SIGTERM stops the daemon with exit 0 and the status says stopped."""
    d = Daemon(root, repo.path).start()
    write_marker(root, "v1")
    wait_until(lambda: deployed(root, "v1"))
    assert d.stop(signal.SIGTERM) == 0
    st = read_status(root)
    assert st is not None and st["state"] == "stopped"


def test_sigterm_during_a_build_leaves_nothing_behind(root: Path, repo: GitRepo) -> None:
    """SIGTERM while a build runs cancels it: no temp dir remains and current is unchanged."""
    d = Daemon(root, repo.path, "--build-command", "sleep 60").start()
    write_marker(root, "v1")
    wait_until(lambda: any(n.startswith(".") for n in os.listdir(root / "releases")))
    assert d.stop(signal.SIGTERM, timeout=20) == 0
    assert os.listdir(root / "releases") == []
    assert current_release(root) is None


def test_daemon_survives_hostile_markers(root: Path, repo: GitRepo) -> None:
    """The daemon stays up through hostile markers and still deploys a good one afterwards."""
    with Daemon(root, repo.path) as d:
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
        for bad in [b"--help", b"../../x", b"\x00\x01", b"{", b"x" * 100_000, b'{"tag": 1}']:
            write_marker(root, bad)
            wait_until(lambda: (read_status(root) or {}).get("state") == "invalid")
        assert not d.proc_exited()
        write_marker(root, "v2")
        wait_until(lambda: deployed(root, "v2"))


def test_readers_never_see_two_versions_during_deploys(root: Path, repo: GitRepo) -> None:
    """Readers that resolve current once and read the whole tree always see one version."""
    stop = threading.Event()
    mixed: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                real = os.path.realpath(root / "current")
                versions = {
                    (Path(real) / "app.py").read_text().split("'")[1],
                    (Path(real) / "pkg" / "late.py").read_text().split("'")[1],
                    (Path(real) / "VERSION").read_text().strip(),
                }
            except (FileNotFoundError, IndexError, NotADirectoryError):
                continue
            reads[0] += 1
            if len(versions) != 1:
                mixed.append(repr(versions))

    with Daemon(root, repo.path):
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for tag in ["v2", "v3", "v1"] * 5:
                write_marker(root, tag)
                wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert reads[0] > 100
    assert mixed == []


def _complete(root: Path, repo: GitRepo) -> None:
    """`current` (if any) names a published release holding exactly its tag's files."""
    target = current_release(root)
    if target is None:
        return
    rel = root / target
    assert rel.is_dir() and not rel.name.startswith(".")
    version = (rel / "VERSION").read_text().strip()
    tracked = set(repo.git("ls-tree", "-r", "--name-only", version).splitlines())
    assert {str(p.relative_to(rel)) for p in rel.rglob("*") if p.is_file()} == tracked


@pytest.mark.slow
def test_kill9_during_deploys_always_leaves_a_complete_current(root: Path, repo: GitRepo) -> None:
    """kill -9 at random instants of 50 deploys: current is always complete, and a restart converges."""
    rng = random.Random(2026)
    tags = ["v1", "v2", "v3"]
    interrupted = 0
    kills = 50
    for i in range(kills):
        d = Daemon(root, repo.path, "--build-command", "sleep 0.05").start()
        tag = tags[i % 3]
        write_marker(root, json.dumps({"tag": tag, "id": f"k{i}"}))
        time.sleep(rng.uniform(0.0, 0.25))
        d.kill9()
        interrupted += not deployed(root, tag)
        _complete(root, repo)
    assert interrupted >= 10, "the kills should interrupt deploys, or this test proves nothing"
    d = Daemon(root, repo.path).start()
    try:
        wait_until(lambda: deployed(root, tags[(kills - 1) % 3]), timeout=30)
        _complete(root, repo)
        leftovers = [n for n in os.listdir(root / "releases") if n.startswith(".")]
        leftovers += [n for n in os.listdir(root) if ".tmp-" in n]
        assert leftovers == []
    finally:
        d.stop()


def test_run_once_exits_zero_on_success_and_one_on_failure(root: Path, repo: GitRepo) -> None:
    """`run --once` is the safe one-shot: exit 0 when deployed, 1 with the reason when not."""
    base = run_argv(root, repo.path, "--once")
    write_marker(root, "v1")
    ok = subprocess.run(base, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert current_release(root) is not None and "v1" in str(current_release(root))
    write_marker(root, "v9")
    bad = subprocess.run(base, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert "v9" in bad.stderr and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_run_once_with_nothing_to_do_exits_zero(root: Path, repo: GitRepo) -> None:
    """No marker, or the marker's release already current and reloaded: exit 0."""
    assert run_once(root, repo).returncode == 0
    write_marker(root, "v1")
    assert run_once(root, repo).returncode == 0
    again = run_once(root, repo)
    assert again.returncode == 0 and again.stderr.count("deploy_started") == 0, again.stderr


def test_run_once_exits_two_for_an_invalid_marker(root: Path, repo: GitRepo) -> None:
    """A refused marker is a usage error: exit 2, one line naming the problem, nothing deployed."""
    write_marker(root, "--upload-pack=touch /tmp/x")
    out = run_once(root, repo)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("coordinator: the marker was refused")
    assert current_release(root) is None and "Traceback" not in out.stderr


def test_run_once_exits_one_when_the_release_was_rolled_back(root: Path, repo: GitRepo, app_url: str) -> None:
    """A release that fails its health check is rolled back, and `run --once` says so with exit 1."""
    health = ("--health-url", app_url, "--health-timeout", "2")
    write_marker(root, "v1")
    assert run_once(root, repo, *health).returncode == 0
    repo.commit({"BROKEN": "yes\n"}, tag="broken")
    write_marker(root, "broken")
    out = run_once(root, repo, *health)
    assert out.returncode == 1, out.stderr
    assert "deploy of broken was rolled back" in out.stderr.strip().splitlines()[-1]
    assert "v1" in str(current_release(root))


def test_run_once_exits_one_while_the_marker_waits_after_a_permanent_failure(root: Path, repo: GitRepo) -> None:
    """A marker whose request failed for good is not retried, and `run --once` still exits 1."""
    write_marker(root, "v1")
    assert run_once(root, repo, "--build-command", "exit 3").returncode == 1
    out = run_once(root, repo, "--build-command", "exit 3")
    assert out.returncode == 1, out.stderr
    assert "the marker's request failed: build command failed" in out.stderr
    assert out.stderr.count("deploy_started") == 0
