"""Shared fixtures: real git repositories, and a blocking-call detector (tests/blockcheck) that fails
any test whose code, or a daemon it started, made a blocking call on an event loop."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests import nobody_env
from tests.blockcheck.detector import ENV, PYTHONPATH_DIR, Detector
from tests.helpers import GitRepo, app_repo, release_health_server
from tests.nobody_env import NobodyPython
from tests.recycling import sandbox_unavailable

pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz",
        action="store_true",
        default=False,
        help="also run the long fuzz tests (hundreds of thousands of examples)",
    )


@pytest.fixture
def anyio_backend() -> str:
    # not asyncio's debug mode: its slow-callback warnings are timing-based (and written to a log file)
    return "asyncio"


#: what the detector in this process found during the current test
_found: list[str] = []
#: one detector for the session (blockbuster must wrap the original functions, not another's wrappers)
_detector = Detector(_found.append, allow_tests=True)


@pytest.fixture(scope="session")
def blocking_logs() -> Iterator[Path]:
    """Where the daemons started by tests record their blocking calls (one file per test)."""
    base = Path(tempfile.mkdtemp(prefix="coordinator-blockcheck-"))
    base.chmod(0o755)  # daemons run as nobody by some tests write there too
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_blocking_event_loop(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, blocking_logs: Path
) -> Iterator[None]:
    """Fail the test if a blocking call ran on an event loop: in this process (blockbuster, see
    tests/blockcheck/detector.py), or in a coordinator process the test started (sitecustomize.py in
    tests/blockcheck, put on PYTHONPATH here, records them in a file named by COORDINATOR_TEST_BLOCKING_LOG).

    The test's own quick filesystem checks are allowed (the nearest project frame of the call is in
    tests/); coordinator code never is. Tests marked ``allow_blocking`` are not checked.
    """
    if request.node.get_closest_marker("allow_blocking"):
        yield
        return
    fd, name = tempfile.mkstemp(dir=blocking_logs, suffix=".log")
    os.fchmod(fd, 0o666)
    os.close(fd)
    log = Path(name)
    monkeypatch.setenv(ENV, str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [PYTHONPATH_DIR, os.environ.get("PYTHONPATH")])))
    _found.clear()
    _detector.activate()
    try:
        yield
    finally:
        _detector.deactivate()
    found = [*_found, *filter(None, log.read_text(errors="replace").split("\n\n"))]
    _found.clear()
    log.unlink()
    if found:
        shown = "\n".join(found[:5]) + (f"\n... and {len(found) - 5} more" if len(found) > 5 else "")
        pytest.fail(f"blocking call on the event loop ({len(found)}):\n{shown}", pytrace=False)


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


def _skip_unless_other_users() -> None:
    """Skip when the daemon cannot be run as another user (not root: the suite already runs as non-root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the daemon as another user (as non-root the suite already is non-root)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")


@pytest.fixture(scope="session")
def nobody() -> Iterator[NobodyPython]:
    """coordinator installed where the nobody user can run it (tests/nobody_env.py), built once per
    session from the installed distributions (no network): the checkout may be closed to other users
    (a clone under /root, or in a ``mktemp -d`` directory)."""
    _skip_unless_other_users()
    base = Path(tempfile.mkdtemp(prefix="coordinator-nobody-env-"))
    try:
        yield nobody_env.build(base)
    finally:
        shutil.rmtree(base)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is private to root), removed afterwards.

    Skips when the daemon cannot be run as another user; run it with the ``nobody`` fixture.
    """
    _skip_unless_other_users()
    base = Path(tempfile.mkdtemp(prefix="coordinator-users-"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base)


@pytest.fixture
def repo6(tmp_path: Path) -> GitRepo:
    """The tiny app tagged v1..v6."""
    return app_repo(tmp_path / "repo6", 6)


@pytest.fixture(scope="module")
def sandbox_works(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip where this machine refuses the build sandbox (a container's seccomp profile, no user namespaces)."""
    why = sandbox_unavailable(tmp_path_factory.mktemp("probe"))
    if why is not None:
        pytest.skip(f"build sandbox unavailable here: {why}")
