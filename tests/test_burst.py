"""Bursts of markers against the real daemon: 1,000 renames as fast as possible converge to the last
one, with bounded memory, and superseded or skipped markers leave no build, release or temporary
file behind. The figures (time to converge, RSS) are printed (run with ``-s``) and kept in the
README's Reliability section."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator import state
from coordinator.state import append_journal, read_journal
from tests.helpers import Daemon, GitRepo, app_repo, deployed, read_status, wait_until, write_marker

MIB = 1024 * 1024


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes, from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def burst(root: Path, tags: list[str], prefix: str) -> tuple[str, str]:
    """Write one marker per tag as fast as possible (temp + rename); return the last (tag, id)."""
    for i, tag in enumerate(tags):
        write_marker(root, json.dumps({"tag": tag, "id": f"{prefix}{i}"}))
    return tags[-1], f"{prefix}{len(tags) - 1}"


def converged(root: Path, tag: str, request_id: str) -> bool:
    st = read_status(root)
    return bool(st and (st.get("desired") or {}).get("id") == request_id and deployed(root, tag))


def attempts(d: Daemon) -> int:
    return sum(1 for e in d.events() if e.get("event") == "deploy_started")


def check_nothing_left_behind(root: Path, max_releases: int) -> dict[str, Any]:
    """Only published releases (each with its metadata), no temporary names, a bounded journal."""
    rel = root / "releases"
    dirs = sorted(p.name for p in rel.iterdir() if p.is_dir())
    assert all(not n.startswith(".") for n in dirs), dirs
    assert 1 <= len(dirs) <= max_releases, dirs
    assert sorted(p.stem for p in rel.glob("*.json")) == dirs
    assert sorted(p.stem for p in (root / ".coordinator" / "releases").glob("*.json")) == dirs
    assert os.listdir(root / ".coordinator" / "tmp") == []
    assert [n for n in os.listdir(root) if ".tmp-" in n] == []
    journal = (root / ".coordinator" / "journal.jsonl").read_bytes().splitlines()
    return {
        "releases": len(dirs),
        "journal_lines": len(journal),
        "status_bytes": (root / "deploy.status.json").stat().st_size,
    }


def test_thousand_markers_converge_to_the_last_with_bounded_memory(root: Path, tmp_path: Path) -> None:
    """1,000 markers renamed back to back converge to the last; RSS after them stays near RSS after 10."""
    repo = app_repo(tmp_path / "repo", 5)
    tags = [f"v{i}" for i in range(1, 6)]
    with Daemon(root, repo.path) as d:
        assert d.proc is not None
        for tag in tags:  # every release on disk: the burst measures the daemon, not git
            write_marker(root, tag)
            wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]
        idle = memory(d.proc.pid)
        small = burst(root, [tags[i % 5] for i in range(9)] + ["v2"], "s")
        wait_until(lambda: converged(root, *small))
        after_small, attempts_small = memory(d.proc.pid), attempts(d)
        started = time.monotonic()
        big = burst(root, [tags[i % 5] for i in range(999)] + ["v4"], "b")
        written = time.monotonic() - started
        wait_until(lambda: converged(root, *big), timeout=60)
        took = time.monotonic() - started
        after_big, attempts_big = memory(d.proc.pid), attempts(d) - attempts_small
        again = burst(root, [tags[i % 5] for i in range(999)] + ["v3"], "c")
        wait_until(lambda: converged(root, *again), timeout=60)
        after_again = memory(d.proc.pid)
        assert not [e for e in d.events() if e.get("level") == "error"]
    files = check_nothing_left_behind(root, 5)
    figures = {
        "write_1000_s": round(written, 3),
        "converge_1000_s": round(took, 3),
        "converge_after_last_write_ms": round((took - written) * 1000, 1),
        "attempts_1000": attempts_big,
        "rss_idle_mib": round(idle["VmRSS"] / MIB, 1),
        "rss_after_10_mib": round(after_small["VmRSS"] / MIB, 1),
        "rss_after_1000_mib": round(after_big["VmRSS"] / MIB, 1),
        "rss_after_2x1000_mib": round(after_again["VmRSS"] / MIB, 1),
        "hwm_after_10_mib": round(after_small["VmHWM"] / MIB, 1),
        "hwm_after_2x1000_mib": round(after_again["VmHWM"] / MIB, 1),
        **files,
    }
    print("burst figures:", json.dumps(figures))
    assert after_big["VmRSS"] - after_small["VmRSS"] < 8 * MIB, figures
    assert after_again["VmRSS"] - after_big["VmRSS"] < 4 * MIB, figures  # a second burst: no leak
    assert after_again["VmHWM"] - after_small["VmHWM"] < 8 * MIB, figures
    assert attempts_big <= 1000
    assert files["journal_lines"] == attempts(d)  # one line per attempt, none per skipped marker
    assert files["status_bytes"] < 16 * 1024


@pytest.fixture
def many_tags(tmp_path: Path) -> GitRepo:
    """A repository with tags t1..t30, each a new commit (every marker needs a fetch and a build)."""
    repo = GitRepo(tmp_path / "many")
    for i in range(1, 31):
        repo.commit({"app.py": f"VERSION = 't{i}'\n", "VERSION": f"t{i}\n"}, tag=f"t{i}")
    return repo


def test_burst_of_new_tags_cancels_superseded_builds_and_leaves_nothing(root: Path, many_tags: GitRepo) -> None:
    """1,000 markers naming 30 tags not yet built: superseded fetches and builds leave nothing behind."""
    with Daemon(root, many_tags.path, "--build-command", "sleep 0.2") as d:
        last = burst(root, [f"t{1 + i % 30}" for i in range(999)] + ["t17"], "n")
        wait_until(lambda: converged(root, *last), timeout=60)
        superseded = sum(1 for e in d.events() if e.get("event") == "deploy_superseded")
        assert not [e for e in d.events() if e.get("level") == "error"]
    files = check_nothing_left_behind(root, 5)
    print("new-tag burst:", json.dumps({"attempts": attempts(d), "superseded": superseded, **files}))
    assert files["journal_lines"] == attempts(d)


def test_journal_is_rotated_and_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal rotates at JOURNAL_MAX_BYTES, keeps one older generation and still reads across both."""
    monkeypatch.setattr(state, "JOURNAL_MAX_BYTES", 64 * 1024)
    path = tmp_path / "journal.jsonl"
    pad = "x" * 1000
    n = 300
    for i in range(n):
        append_journal(path, {"n": i, "pad": pad})
    assert path.stat().st_size <= 64 * 1024 + 1100
    assert path.with_name("journal.jsonl.1").stat().st_size <= 64 * 1024 + 1100
    assert sorted(os.listdir(tmp_path)) == ["journal.jsonl", "journal.jsonl.1"]
    last = read_journal(path, 100)
    assert [e["n"] for e in last] == list(range(n - 100, n))
    assert len(read_journal(path, 10_000)) < 140  # what is left: two generations


def test_read_journal_returns_exactly_the_tail_across_block_boundaries(tmp_path: Path) -> None:
    """read_journal reads backwards in blocks: lines of any length, any limit, give exactly the last ones."""
    rng = random.Random(5)
    path = tmp_path / "journal.jsonl"
    lines = [json.dumps({"n": i, "pad": "x" * rng.randint(0, 150_000)}) for i in range(120)]
    path.write_text("\n".join(lines) + "\n")
    for limit in (1, 2, 7, 64, 119, 120, 121, 10**9):
        assert [e["n"] for e in read_journal(path, limit)] == list(range(120))[-limit:], limit
    exact = [json.dumps({"n": i, "pad": "x" * (1005 - len(str(i)))}) + "\n" for i in range(200)]
    assert {len(ln) for ln in exact} == {1024}  # 64 lines per 64 KiB block: boundaries right after a newline
    path.write_text("".join(exact))
    for limit in (1, 63, 64, 65, 128, 199, 200):
        assert [e["n"] for e in read_journal(path, limit)] == list(range(200))[-limit:], limit
