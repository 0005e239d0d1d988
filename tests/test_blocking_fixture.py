"""The blocking-call detector (tests/blockcheck): in the test process and in the daemons tests start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.blockcheck.detector import ENV
from tests.blockcheck.sitecustomize import _runs_coordinator

PROJECT = Path(__file__).resolve().parent.parent

INNER = """
import os
import time

import anyio
import pytest

# functions as if they were coordinator's and the suite's: their frames are attributed to
# coordinator/ and tests/ (this file lives outside the project)
_COORDINATOR = '''
import os

async def stat_on_the_loop(path):
    try:
        os.stat(path)
        os.lstat(path)
    except Exception:  # as the daemon's loop does: a raised BlockingError would vanish here
        pass
'''
_TESTS = '''
import os

def quick_checks(path):
    (path / "f").write_text("x")
    return os.stat(path / "f").st_size == 1 and (path / "f").read_text() == "x"
'''
_CODE = {}
exec(compile(_COORDINATOR, os.path.join(PROJECT, "coordinator", "fake_for_test.py"), "exec"), _CODE)
exec(compile(_TESTS, os.path.join(PROJECT, "tests", "fake_for_test.py"), "exec"), _CODE)


@pytest.mark.anyio
async def test_sleeps() -> None:
    time.sleep(0.01)


@pytest.mark.anyio
async def test_coordinator_stats(tmp_path) -> None:
    await _CODE["stat_on_the_loop"](tmp_path)


@pytest.mark.anyio
async def test_own_quick_checks(tmp_path) -> None:
    assert _CODE["quick_checks"](tmp_path)


@pytest.mark.anyio
async def test_awaits_a_thread(tmp_path) -> None:
    await anyio.to_thread.run_sync(time.sleep, 0.01)
    await anyio.to_thread.run_sync(os.stat, tmp_path)


@pytest.mark.anyio
@pytest.mark.allow_blocking
async def test_allowed_to_block() -> None:
    time.sleep(0.01)


def test_sync_test_blocks_freely(tmp_path) -> None:
    time.sleep(0.01)
    os.stat(tmp_path)
"""


def test_blocking_calls_on_the_loop_fail_the_test(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sleeping on the loop and coordinator code stat-ing on it (even inside ``except Exception``) fail
    at teardown; a test's own quick checks, calls in worker threads, ``allow_blocking`` and sync tests pass."""
    monkeypatch.setenv("PYTHONPATH", str(PROJECT))
    pytester.makeconftest("from tests.conftest import *  # noqa: F403\n")
    pytester.makeini("[pytest]\nmarkers =\n    allow_blocking: the test deliberately blocks the event loop\n")
    pytester.makepyfile(test_inner=f"PROJECT = {str(PROJECT)!r}\n" + INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "anyio")
    result.assert_outcomes(passed=6, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*blocking call on the event loop (1):",
            "blocking call to time.sleep on the event loop",
            "*test_inner.py:* in test_sleeps",
        ],
        consecutive=False,
    )
    result.stdout.fnmatch_lines(
        [
            "*blocking call on the event loop (2):",
            "blocking call to os.stat on the event loop",
            "*coordinator/fake_for_test.py:* in stat_on_the_loop",
            "*test_inner.py:* in test_coordinator_stats",
            "blocking call to os.lstat on the event loop",
        ],
        consecutive=False,
    )


SUBPROCESS = """
import os, sys
import anyio
from tests.blockcheck.detector import record_to_file

record_to_file(sys.argv[1])

async def main() -> None:
    try:
        os.stat(".")  # on the loop
    except Exception:
        pass
    await anyio.to_thread.run_sync(os.stat, ".")  # in a worker thread: fine

os.stat(".")  # no loop running: fine
anyio.run(main)
"""


def test_a_subprocess_records_its_blocking_calls(tmp_path: Path) -> None:
    """In a daemon (sitecustomize.py activates it there), every blocking call on the loop is appended
    to the log with its stack, and nothing else."""
    log = tmp_path / "blocking.log"
    env = {"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", SUBPROCESS, str(log)], env=env, check=True, timeout=60)
    text = log.read_text()
    assert text.count("blocking call to") == 1, text
    assert "blocking call to os.stat on the event loop" in text and "<string>:10 in main" in text


@pytest.mark.parametrize(
    ("argv", "runs"),
    [
        (["/venv/bin/python", "-m", "coordinator", "run", "--root", "/r"], True),
        (["/venv/bin/python", "/venv/bin/coordinator", "status"], True),
        (["/venv/bin/python", "/work/tests/audited_daemon.py", "log", "run"], True),
        (["/venv/bin/python", "-m", "pytest", "-p", "anyio"], False),
        (["/venv/bin/python", "-c", "import coordinator"], False),
        (["/usr/bin/python3", "-m", "venv", "/x"], False),
    ],
)
def test_only_coordinator_processes_are_checked(argv: list[str], runs: bool) -> None:
    """sitecustomize.py activates the detector in coordinator's processes only."""
    assert _runs_coordinator(argv) is runs


def test_the_daemons_of_a_test_get_the_detector() -> None:
    """Every test's subprocesses find sitecustomize.py and the log to record in."""
    assert os.environ[ENV].endswith(".log")
    assert str(PROJECT / "tests" / "blockcheck") in os.environ["PYTHONPATH"].split(os.pathsep)
