"""coordinator.spare with a build command against real git and real builds: a release built in the
build sandbox (a tracked file appended to in place, an untracked output directory) is retired into the
spare; readying puts the tag's tree back (the build's changes removed and written anew, its outputs
cleaned); the next deploy with a build is prepared from the spare exactly, every other release
untouched inode for inode; a collapsed change and a directory chmod are restored too; a release built
in place is never retired; a spare whose recorded changes are in doubt is discarded."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator import sandbox as sandbox_module
from coordinator.deployer import Deployer
from coordinator.recycle import reusable
from coordinator.spare import RETIRED, TREE, read_ready
from coordinator.state import read_release_meta
from coordinator.statefile import ReleaseMeta
from tests.helpers import GitRepo, contents, snapshot
from tests.recycling import chain, deploy, full_tree, name

pytestmark = pytest.mark.anyio

#: appends to a tracked file in place (the proof the issue asks for) and writes an untracked output
#: directory, as collectstatic writes STATIC_ROOT
BUILD = "echo built >> app.py && mkdir -p static_root/css && echo out > static_root/css/site.css"


async def built_tree(d: Deployer, repo: GitRepo, tag: str, where: Path) -> dict[str, tuple[Any, ...]]:
    """What :data:`BUILD` makes of a full checkout of ``tag``."""
    want = await full_tree(d, repo, tag, where)
    want["app.py"] = ("file", 0o644, f"VERSION = '{tag}'\nbuilt\n".encode())
    want["static_root"] = ("dir", 0o755)
    want["static_root/css"] = ("dir", 0o755)
    want["static_root/css/site.css"] = ("file", 0o644, b"out\n")
    return want


async def ready(d: Deployer) -> list[MutableMapping[str, Any]]:
    """The idle pass, with its spare events."""
    with capture_logs() as logs:
        await d.ready_spare()
    return [e for e in logs if str(e["event"]).startswith("spare_")]


def retired_meta(d: Deployer) -> ReleaseMeta | None:
    return ReleaseMeta.from_json(json.loads((d.layout.spare_dir / RETIRED).read_text()))


def test_only_pristine_and_sandbox_built_releases_are_reusable() -> None:
    """Reusable: no build, or a build in the sandbox (even one that changed nothing); not a build in
    place, nor metadata that does not say."""
    meta = ReleaseMeta("r", "v1", "a" * 40, 1.0)
    assert [reusable(meta), reusable(ReleaseMeta("r", "v1", "a" * 40, 1.0, built=False))] == [False, True]
    assert reusable(ReleaseMeta("r", "v1", "a" * 40, 1.0, built=True, build_changes=()))
    assert not reusable(ReleaseMeta("r", "v1", "a" * 40, 1.0, built=True, build_changes=None))


@pytest.mark.usefixtures("sandbox_works")
async def test_a_sandbox_built_release_is_retired_with_its_manifest_and_readied_to_the_tag(
    root: Path, repo6: GitRepo
) -> None:
    """v1 (built in the sandbox: app.py appended to, static_root written) is retired into the spare
    with its build's changes; readied, the spare is exactly current's tag: the build's write undone,
    its outputs gone."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"), build_command=BUILD)
    meta = await anyio.to_thread.run_sync(retired_meta, d)
    assert meta is not None and meta.name == name(repo6, "v1") and meta.build_changes == ("app.py",)
    tree = d.layout.spare_dir / TREE
    assert (tree / "static_root" / "css" / "site.css").read_text() == "out\n"
    events = await ready(d)
    assert [(e["event"], e["release"], e["sha"]) for e in events] == [
        ("spare_ready", name(repo6, "v1"), repo6.tag_sha("v4"))
    ]
    got = await anyio.to_thread.run_sync(contents, tree)
    assert got == await full_tree(d, repo6, "v4", root.parent / "full-v4")


@pytest.mark.usefixtures("sandbox_works")
async def test_a_build_deploy_is_prepared_from_the_spare_exactly_and_leaves_other_releases_alone(
    root: Path, repo6: GitRepo
) -> None:
    """v5 with the build is prepared from the ready spare (mode spare): the release is the tag's tree
    plus exactly the build's result (app.py appended to once), and v2..v4 keep every inode and byte."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"), build_command=BUILD)
    await ready(d)
    releases = root / "releases"

    def others() -> dict[str, dict[str, tuple[Any, ...]]]:
        return {t: snapshot(releases / name(repo6, t)) for t in ("v2", "v3", "v4")}

    kept = await anyio.to_thread.run_sync(others)
    event = await deploy(d, root, "v5")
    assert (event["mode"], event["recycled"]) == ("spare", name(repo6, "v1"))
    got = await anyio.to_thread.run_sync(contents, releases / name(repo6, "v5"))
    assert got == await built_tree(d, repo6, "v5", root.parent / "full-v5")
    after = {t: await anyio.to_thread.run_sync(snapshot, releases / name(repo6, t)) for t in ("v3", "v4")}
    assert after == {t: kept[t] for t in ("v3", "v4")}
    assert await anyio.to_thread.run_sync(snapshot, d.layout.spare_dir / TREE) == kept["v2"]  # pruned into the slot
    v5 = await anyio.to_thread.run_sync(read_release_meta, d.layout.meta_dir, name(repo6, "v5"))
    assert v5 is not None and v5.build_changes == ("app.py",)


@pytest.mark.usefixtures("sandbox_works")
async def test_the_spare_is_refilled_and_used_again_with_the_build(root: Path, repo6: GitRepo) -> None:
    """Steady state: after v5 (from the spare) the prune refills the slot with v2, readied and used by
    v6, which is exact."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"), build_command=BUILD)
    await ready(d)
    await deploy(d, root, "v5")
    assert [(e["event"], e["release"]) for e in await ready(d)] == [("spare_ready", name(repo6, "v2"))]
    event = await deploy(d, root, "v6")
    assert (event["mode"], event["recycled"]) == ("spare", name(repo6, "v2"))
    got = await anyio.to_thread.run_sync(contents, root / "releases" / name(repo6, "v6"))
    assert got == await built_tree(d, repo6, "v6", root.parent / "full-v6")


@pytest.mark.usefixtures("sandbox_works")
async def test_a_build_deploy_before_readying_recycles_the_spare_inline_exactly(root: Path, repo6: GitRepo) -> None:
    """A deploy that comes before the idle pass recycles the sandbox-built spare inline (restoring and
    checking it at deploy time): exactly the tag plus the build's result, v3 and v4 untouched."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"), build_command=BUILD)
    releases = root / "releases"
    kept = await anyio.to_thread.run_sync(lambda: {t: snapshot(releases / name(repo6, t)) for t in ("v3", "v4")})
    event = await deploy(d, root, "v5")
    assert (event["mode"], event["recycled"], event["restored"]) == ("recycled", name(repo6, "v1"), 1)
    got = await anyio.to_thread.run_sync(contents, releases / name(repo6, "v5"))
    assert got == await built_tree(d, repo6, "v5", root.parent / "full-v5")
    assert (
        await anyio.to_thread.run_sync(lambda: {t: snapshot(releases / name(repo6, t)) for t in ("v3", "v4")}) == kept
    )


@pytest.mark.usefixtures("sandbox_works")
async def test_a_collapsed_build_change_is_restored_whole(
    root: Path, repo6: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More changed paths than recorded one by one: the build's changes collapse to their top-level
    directory (pkg), which readying removes whole and writes back; v5 from the spare is exact."""
    monkeypatch.setattr(sandbox_module, "MAX_CHANGES", 2)
    build = "echo x >> pkg/late.py && echo y >> pkg/__init__.py && echo n > pkg/new.py && echo z >> app.py"
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"), build_command=build)
    meta = await anyio.to_thread.run_sync(retired_meta, d)
    assert meta is not None and meta.build_changes == ("app.py", "pkg")
    assert [e["event"] for e in await ready(d)] == ["spare_ready"]
    tree = await anyio.to_thread.run_sync(contents, d.layout.spare_dir / TREE)
    assert tree == await full_tree(d, repo6, "v4", root.parent / "full-v4")
    event = await deploy(d, root, "v5")
    assert event["mode"] == "spare"
    assert (root / "releases" / name(repo6, "v5") / "pkg" / "late.py").read_text() == "VERSION = 'v5'\nx\n"


@pytest.mark.usefixtures("sandbox_works")
async def test_a_directory_the_build_chmods_is_recorded_and_restored(root: Path, repo6: GitRepo) -> None:
    """A build that chmods a tracked directory: the directory is in build_changes, and the readied
    spare has the tag's directory back (git keeps no directory mode: a full checkout's)."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"), build_command="chmod 700 pkg")
    meta = await anyio.to_thread.run_sync(retired_meta, d)
    assert meta is not None and meta.build_changes == ("pkg",)
    assert [e["event"] for e in await ready(d)] == ["spare_ready"]
    tree = await anyio.to_thread.run_sync(contents, d.layout.spare_dir / TREE)
    assert tree == await full_tree(d, repo6, "v4", root.parent / "full-v4")


async def test_a_release_built_in_place_is_never_retired_into_the_spare(root: Path, repo6: GitRepo) -> None:
    """--build-sandbox off: built releases keep no manifest, the prune deletes them (no spare), and
    every release is a full checkout."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"), build_command=BUILD, build_sandbox="off")
    assert not await anyio.Path(d.layout.spare_dir).exists()
    assert not await anyio.Path(root / "releases" / name(repo6, "v1")).exists()
    assert [p.name for p in d.layout.meta_dir.iterdir() if p.suffix == ".index"] == []
    await ready(d)
    event = await deploy(d, root, "v5")
    assert (event["mode"], event["fallback"]) == ("full", "build_command")


def _tamper(d: Deployer, changes: list[str], outside: Path, link_pkg: bool) -> None:
    """Rewrite the retired spare's recorded build changes; optionally make its pkg a symlink to
    ``outside`` (blocking)."""
    slot = d.layout.spare_dir
    raw = json.loads((slot / RETIRED).read_text())
    raw["build_changes"] = changes
    (slot / RETIRED).write_text(json.dumps(raw))
    if link_pkg:
        tree_pkg = slot / TREE / "pkg"
        for f in tree_pkg.iterdir():
            f.unlink()
        tree_pkg.rmdir()
        tree_pkg.symlink_to(outside)


DOUBTS = {
    "a path leaving the tree": (["../../outside/late.py"], False),
    "a path under a symlink": (["pkg/late.py"], True),
    "an empty component": (["pkg//late.py"], False),
}


@pytest.mark.usefixtures("sandbox_works")
@pytest.mark.parametrize("doubt", DOUBTS.values(), ids=DOUBTS.keys())
async def test_a_spare_whose_build_changes_are_in_doubt_is_discarded_touching_nothing_outside(
    root: Path, repo6: GitRepo, tmp_path: Path, doubt: tuple[list[str], bool]
) -> None:
    """A recorded change that is not a plain path inside the tree, or lies under a symlink: the spare
    is discarded (retired_changed), the file outside is untouched, and the next deploy is exact."""
    changes, link_pkg = doubt
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"), build_command=BUILD)
    outside = d.layout.state_dir / "outside"  # ../../outside from the spare's tree
    await anyio.to_thread.run_sync(lambda: outside.mkdir())
    await anyio.to_thread.run_sync((outside / "late.py").write_text, "keep\n")
    await anyio.to_thread.run_sync(_tamper, d, changes, outside, link_pkg)
    events = await ready(d)
    assert [(e["event"], e["reason"]) for e in events] == [("spare_discarded", "retired_changed")]
    assert (outside / "late.py").read_text() == "keep\n"
    assert await anyio.to_thread.run_sync(read_ready, d.layout) is None
    event = await deploy(d, root, "v5")
    assert event["mode"] != "spare"
    got = await anyio.to_thread.run_sync(contents, root / "releases" / name(repo6, "v5"))
    assert got == await built_tree(d, repo6, "v5", tmp_path / "full-v5")
