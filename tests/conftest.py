"""Shared fixtures: real git repositories, an asyncio loop in debug mode that fails any test whose
code blocks the event loop for more than 100 ms."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.helpers import GitRepo, app_repo, release_health_server

pytest_plugins = ["pytester"]

#: asyncio (debug mode) reports every callback that holds the loop longer than this.
BLOCKING_LIMIT_S = 0.1


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz",
        action="store_true",
        default=False,
        help="also run the long fuzz tests (hundreds of thousands of examples)",
    )


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", {"debug": True})


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Executing") and " took " in msg:
            self.records.append(msg)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Move everything imported so far out of the garbage collector's view (see below)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def no_blocking_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail an async test if any callback blocked the event loop longer than BLOCKING_LIMIT_S.

    Automatic garbage collection is paused during each test: late in a long session a full
    collection takes 100-160 ms, which asyncio would report as the test's callback blocking the
    loop. It runs between tests instead, outside any event loop.
    """
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        logger.removeHandler(handler)
    if handler.records and not request.node.get_closest_marker("allow_blocking"):
        pytest.fail("event loop blocked:\n" + "\n".join(handler.records[:5]), pytrace=False)


@pytest.fixture(autouse=True)
def _quiet_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    """A real repository of a tiny app tagged v1, v2, v3."""
    return app_repo(tmp_path / "repo", 3)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty volume root."""
    r = tmp_path / "volume"
    r.mkdir()
    return r


@pytest.fixture
def app_url(root: Path) -> Iterator[str]:
    """The health URL of a fake app serving the sha of the release `current` points to (500 if BROKEN)."""
    with release_health_server(root) as url:
        yield url


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is private to root), removed afterwards.

    Skips when the daemon cannot be run as another user (not root: the suite already runs as non-root).
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to run the daemon as another user (as non-root the suite already is non-root)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    base = Path(tempfile.mkdtemp(prefix="coordinator-users-"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base)
