"""The benchmarks' one entry point, `python -m benchmarks`: its sub-commands, and the shallow-fetch
benchmark at a tiny scale (real daemons and git, a few seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def test_benchmarks_help_lists_the_subcommands() -> None:
    """`python -m benchmarks --help` exits 0 and names `run` (the default), `strategies` and `gitsource`."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "python -m benchmarks" in out.stdout
    for command in ("run", "strategies", "gitsource"):
        assert f"    {command} " in out.stdout, out.stdout


def test_benchmarks_rejects_an_unknown_subcommand() -> None:
    """An unknown sub-command exits 2 with a usage error, running nothing."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "nonsense"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2 and "unknown sub-command" in out.stderr, out.stderr


def test_gitsource_quick_run_reports_the_depth_ratios(tmp_path: Path) -> None:
    """`gitsource --quick` deploys at depth 1 and 0 through real daemons and reports each depth 1 / full ratio."""
    results = tmp_path / "results"
    dirs = ["--tmp-dir", str(tmp_path), "--results-dir", str(results)]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "gitsource", "--quick", *dirs],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (md,) = results.glob("*-gitsource.md")
    data = json.loads(md.with_suffix(".json").read_text())
    ratios = {**data["first"]["ratios"], **{f"series.{k}": v for k, v in data["series"]["ratios"].items()}}
    assert set(ratios) >= {"e2e_ms", "fetch_ms", "cache_bytes", "series.cache_last_bytes", "series.fetch_new_ms"}
    for name, ratio in ratios.items():
        assert isinstance(ratio, float) and ratio > 0, (name, ratio)
        assert f"**{ratio:.3f}**" in md.read_text(), name
    assert ratios["cache_bytes"] < 1  # a shallow first fetch leaves a smaller cache than the whole history
    assert out.stdout == md.read_text()
    assert not list(tmp_path.glob("coordinator-bench-gitsource-*"))  # the work directory is removed
