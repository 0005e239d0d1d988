"""`coordinator demo`, run as a user would."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end_and_cleans_up() -> None:
    """The demo deploys, refuses hostile markers, rolls back, reports latencies and removes its files."""
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "deploy v2:" in text and "serves v2" in text
    assert "reload skipped: True" in text
    assert text.count("current still") == 4
    assert "rollback:" in text and "p50" in text
    tmp = text.split("cleaned up ")[1].strip()
    assert not __import__("os").path.exists(tmp)
