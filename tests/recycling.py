"""Helpers of the recycling and spare tests: a Deployer as the tests drive it, one deploy through it,
a release's name, a chain of deploys, a full checkout to compare with, and the build sandbox probe."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
from structlog.testing import capture_logs

from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.layout import Layout
from coordinator.sandbox import probe
from tests.helpers import GitRepo, contents


def deployer(root: Path, repo: GitRepo, *, spare: bool = False, **kw: object) -> Deployer:
    """A Deployer; without ``spare``, as ``run --once`` makes it: prune deletes, never fills the spare."""
    cfg = Config(layout=Layout.for_root(root), repo=str(repo.path), **kw)  # type: ignore[arg-type]
    d = Deployer(cfg)
    d.store.retire_to_spare = spare
    return d


async def deploy(d: Deployer, root: Path, tag: str) -> MutableMapping[str, Any]:
    """Write the marker, reconcile once; return the prepare_stats event."""
    await anyio.to_thread.run_sync((root / "deploy.request").write_text, tag)
    with capture_logs() as logs:
        attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success", attempt
    [event] = [e for e in logs if e["event"] == "prepare_stats"]
    return event


def name(repo: GitRepo, tag: str) -> str:
    """The release directory's name of ``tag``."""
    return f"{tag}-{repo.tag_sha(tag)[:12]}"


async def chain(root: Path, repo: GitRepo, tags: tuple[str, ...], keep: int = 3, **kw: object) -> Deployer:
    """A started Deployer that fills the spare (``--keep keep``), after deploying ``tags`` in order."""
    d = deployer(root, repo, keep=keep, spare=True, **kw)
    await d.startup()
    for tag in tags:
        await deploy(d, root, tag)
    return d


async def full_tree(d: Deployer, repo: GitRepo, tag: str, where: Path) -> dict[str, tuple[Any, ...]]:
    """The contents of a full checkout of ``tag`` into ``where``."""
    await anyio.to_thread.run_sync(where.mkdir)
    await d.git.checkout(repo.tag_sha(tag), where, where.parent / f"{where.name}.index")
    return await anyio.to_thread.run_sync(contents, where)


def sandbox_unavailable(tmp: Path) -> str | None:
    """Why the build sandbox cannot run here (None: it can), probed in ``tmp`` (blocking)."""
    (tmp / "releases").mkdir(parents=True)
    (tmp / "tmp").mkdir()
    return probe(tmp / "releases", tmp / "tmp")
