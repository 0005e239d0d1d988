"""The benchmarks' one entry point, `python -m benchmarks`: its sub-commands, and the shallow-fetch
benchmark at a tiny scale (real daemons and git, a few seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def test_benchmarks_help_lists_the_subcommands() -> None:
    """`python -m benchmarks --help` exits 0 and names `run` (the default), `strategies`, `gitsource`, `staged`."""
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
    for command in ("run", "strategies", "gitsource", "staged"):
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


def test_run_quick_reports_staged_against_on_disk_deploys(tmp_path: Path) -> None:
    """`run --quick` with only the staged section appended reports both distributions, their ratio and the target."""
    results = tmp_path / "results"
    skip = "configmap,idle,steps,newtag,torn,plots,gitsource,strategies,buildsandbox"
    dirs = ["--tmp-dir", str(tmp_path), "--results-dir", str(results)]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--staged-deploys", "2", "--skip", skip, *dirs],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (md,) = results.glob("*.md")
    data = json.loads(md.with_suffix(".json").read_text())
    staged = data["staged"]
    for kind in ("on_disk", "staged"):
        assert staged[kind]["n"] == 2 and 0 < staged[kind]["p50"] <= staged[kind]["p99"], (kind, staged[kind])
    assert staged["ratio_p50"] == round(staged["staged"]["p50"] / staged["on_disk"]["p50"], 3)
    assert staged["staged_rebuilt"] == 0  # each staged deploy was a swap and a reload only
    (target,) = [t for t in data["targets"] if t["id"] == "staged_vs_on_disk"]
    assert target["met"] is (staged["ratio_p50"] <= 2.0)
    assert f"**{staged['ratio_p50']:.3f}**" in md.read_text()
