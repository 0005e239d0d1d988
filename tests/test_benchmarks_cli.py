"""The benchmarks' one entry point, `python -m benchmarks`, lists its sub-commands (no benchmark runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def test_benchmarks_help_lists_the_subcommands() -> None:
    """`python -m benchmarks --help` exits 0 and names `run` (the default) and `strategies`."""
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
    for command in ("run", "strategies"):
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
