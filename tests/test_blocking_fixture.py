"""The autouse fixture that fails tests which block the event loop."""

from __future__ import annotations

from pathlib import Path

import pytest

INNER = """
import time
import pytest

@pytest.mark.anyio
async def test_blocks() -> None:
    time.sleep(0.3)

@pytest.mark.anyio
async def test_does_not_block() -> None:
    import anyio
    await anyio.sleep(0.3)
"""


def test_a_test_that_blocks_the_loop_fails(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """An async test calling time.sleep fails; one awaiting anyio.sleep passes."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    pytester.makeconftest("from tests.conftest import *  # noqa: F403\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "anyio")
    # the check runs at teardown: the blocking test reports an error, the other nothing
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["ERROR test_inner.py::test_blocks - Failed: event loop blocked*"])
