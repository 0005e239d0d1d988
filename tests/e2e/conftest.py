"""Fixtures for the end-to-end tests: the test app's repository, a volume, and a rig that runs a real
app server, the real coordinator daemon and the load generator, and always stops all of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.app import make_app_repo
from tests.e2e.rig import Rig
from tests.helpers import GitRepo


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path).replace("\\", "/") and not item.get_closest_marker("e2e"):
            raise pytest.UsageError(f"{item.nodeid}: end-to-end tests must be marked @pytest.mark.e2e")


@pytest.fixture
def app_repo(tmp_path: Path) -> GitRepo:
    """The test app: tags v1, v2, v3, broken-import, broken-health."""
    return make_app_repo(tmp_path / "app-repo", 3)


@pytest.fixture
def rig(tmp_path: Path, app_repo: GitRepo) -> Iterator[Rig]:
    """A rig whose load generator, daemon and server are stopped whatever the test does."""
    r = Rig(tmp_path, app_repo)
    try:
        yield r
    finally:
        r.stop()
