"""Shared paths (--shared-dir/--shared-file): the links into ROOT/shared, the checks of ROOT/shared, and
how they meet deploys, builds, rollbacks and incremental preparation. Real git repositories, real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator.commands import request_rollback
from coordinator.deployer import Deployer
from coordinator.exceptions import BuildError, SharedPathError
from coordinator.layout import Layout
from coordinator.shared import SharedPaths, link_target
from coordinator.state import read_release_meta
from tests.helpers import GitRepo, contents, read_status, snapshot, started_deployer, write_marker

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------------------------------ set-up


async def deploy(d: Deployer, root: Path, tag: str) -> str:
    """Ask for ``tag`` and reconcile once; the deploy must succeed. Returns the release name."""
    write_marker(root, tag)
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success", attempt and attempt.error
    assert attempt.release is not None
    return attempt.release


def release_of(root: Path, repo: GitRepo, tag: str) -> Path:
    return root / "releases" / f"{tag}-{repo.tag_sha(tag)[:12]}"


async def workspace(root: Path, shared: SharedPaths) -> Path:
    """A layout with an empty hidden workspace in releases/, and ROOT/shared checked."""
    tmp = root / "releases" / ".r.tmp-1-0"
    tmp.mkdir(parents=True)
    await shared.ensure()
    return tmp


def shared_paths(root: Path, *paths: tuple[str, bool]) -> SharedPaths:
    return SharedPaths(Layout.for_root(root), paths)


@pytest.fixture
def media_repo(tmp_path: Path) -> GitRepo:
    """Tags v1..v3 of an app tracking media/README (a placeholder the shared media/ replaces)."""
    repo = GitRepo(tmp_path / "media-repo")
    for i in (1, 2, 3):
        repo.commit({"app.py": f"VERSION = 'v{i}'\n", "media/README": f"uploads go here ({i})\n"}, tag=f"v{i}")
    return repo


# ------------------------------------------------------------------------------------------ the links


def test_link_target_climbs_from_the_links_directory_to_root() -> None:
    """The link at RELEASE/PATH climbs to ROOT (two levels above the release) and names shared/PATH."""
    assert link_target("media") == "../../shared/media"
    assert link_target("config/.env") == "../../../shared/config/.env"
    assert link_target("a/b/c") == "../../../../shared/a/b/c"


async def test_link_is_relative_and_resolves_to_root_shared_after_the_rename(root: Path) -> None:
    """The link in a workspace is relative and, once the workspace is renamed, resolves to ROOT/shared/PATH."""
    shared = shared_paths(root, ("media", True), ("config/.env", False))
    (root / "shared" / "config").mkdir(parents=True)
    (root / "shared" / "config" / ".env").write_text("SECRET=1\n")
    tmp = await workspace(root, shared)
    await shared.link(tmp, "r")
    final = root / "releases" / "r"
    tmp.rename(final)
    assert os.readlink(final / "media") == "../../shared/media"
    assert os.readlink(final / "config" / ".env") == "../../../shared/config/.env"
    assert (final / "media").resolve() == root / "shared" / "media"
    assert (final / "config" / ".env").read_text() == "SECRET=1\n"


async def test_nested_path_creates_its_parents_in_the_release_with_mode_0755(root: Path) -> None:
    """A nested shared path gets its missing parent directories in the release, 0755 whatever the umask."""
    shared = shared_paths(root, ("var/app/uploads", True))
    tmp = await workspace(root, shared)
    old = os.umask(0o077)
    try:
        await shared.link(tmp, "r")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp / "var").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp / "var" / "app").stat().st_mode) == 0o755
    assert (tmp / "var" / "app" / "uploads").is_symlink()


async def test_missing_shared_dir_is_created_empty_with_its_parents(root: Path) -> None:
    """A shared directory missing from ROOT/shared is created empty, with its parents, mode 0755."""
    shared = shared_paths(root, ("var/uploads", True))
    with capture_logs() as logs:
        await shared.ensure()
    created = root / "shared" / "var" / "uploads"
    assert created.is_dir() and not created.is_symlink() and list(created.iterdir()) == []
    for d in (root / "shared", root / "shared" / "var", created):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert [e["path"] for e in logs if e["event"] == "shared_dir_created"] == ["var/uploads"]


async def test_existing_shared_dir_and_its_content_are_left_alone(root: Path) -> None:
    """A shared directory that exists is neither recreated nor touched."""
    (root / "shared" / "media").mkdir(parents=True)
    (root / "shared" / "media" / "photo.jpg").write_bytes(b"jpg")
    before = snapshot(root / "shared")
    with capture_logs() as logs:
        await shared_paths(root, ("media", True)).ensure()
    assert snapshot(root / "shared") == before
    assert not [e for e in logs if e["event"] == "shared_dir_created"]


async def test_missing_shared_file_is_an_error_naming_the_file_to_create(root: Path) -> None:
    """A missing shared file is a retryable SharedPathError (kind shared) whose fix names the file."""
    with pytest.raises(SharedPathError) as info:
        await shared_paths(root, ("config/.env", False)).ensure()
    err = info.value
    assert (err.kind, err.retryable, err.fields["path"]) == ("shared", True, "config/.env")
    assert err.fix is not None and f"create {root / 'shared' / 'config' / '.env'}" in err.fix


@pytest.mark.parametrize(("declared_dir", "make"), [(True, "file"), (False, "dir")])
async def test_shared_path_of_the_wrong_type_is_refused(root: Path, declared_dir: bool, make: str) -> None:
    """A file in ROOT/shared where a directory is declared (or a directory where a file is) is refused."""
    path = root / "shared" / "thing"
    path.parent.mkdir()
    if make == "file":
        path.write_text("x")
    else:
        path.mkdir()
    with pytest.raises(SharedPathError, match="declares a"):
        await shared_paths(root, ("thing", declared_dir)).ensure()


async def test_symlink_in_shared_pointing_outside_root_is_refused(root: Path, tmp_path: Path) -> None:
    """A symlink planted in ROOT/shared that points outside it is refused, and nothing is created there."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "shared").mkdir()
    (root / "shared" / "media").symlink_to(outside)
    (root / "shared" / "config").symlink_to(outside)
    with pytest.raises(SharedPathError, match="outside"):
        await shared_paths(root, ("media", True)).ensure()
    with pytest.raises(SharedPathError, match="outside"):
        await shared_paths(root, ("config/uploads", True)).ensure()
    assert list(outside.iterdir()) == []


async def test_symlink_in_shared_resolving_inside_it_is_accepted(root: Path) -> None:
    """A relative symlink inside ROOT/shared that stays inside it (.env -> env/prod.env) is fine."""
    (root / "shared" / "env").mkdir(parents=True)
    (root / "shared" / "env" / "prod.env").write_text("A=1\n")
    (root / "shared" / ".env").symlink_to("env/prod.env")
    await shared_paths(root, (".env", False)).ensure()


async def test_shared_directory_that_is_a_symlink_is_refused(root: Path, tmp_path: Path) -> None:
    """ROOT/shared itself must be a directory, not a symlink to one elsewhere."""
    (tmp_path / "elsewhere").mkdir()
    (root / "shared").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SharedPathError, match="not a directory"):
        await shared_paths(root, ("media", True)).ensure()


async def test_tracked_file_where_a_parent_directory_is_needed_is_a_build_error(root: Path) -> None:
    """A file of the tag at a parent of a shared path is a (non-retryable) BuildError, not a write through it."""
    shared = shared_paths(root, ("config/.env", False))
    (root / "shared" / "config").mkdir(parents=True)
    (root / "shared" / "config" / ".env").write_text("A=1\n")
    tmp = await workspace(root, shared)
    (tmp / "config").symlink_to("/etc")
    with pytest.raises(BuildError, match="needs a directory"):
        await shared.link(tmp, "r")
    assert os.readlink(tmp / "config") == "/etc"


# ------------------------------------------------------------------------------------------ deploys


async def test_deploy_links_shared_paths_and_records_them_in_the_metadata(root: Path, media_repo: GitRepo) -> None:
    """A deployed release links each shared path into ROOT/shared, seen through current; its metadata lists them."""
    (root / "shared").mkdir()
    (root / "shared" / ".env").write_text("DEBUG=0\n")
    d = await started_deployer(root, media_repo, shared_dirs=("media",), shared_files=(".env",))
    name = await deploy(d, root, "v1")
    assert os.readlink(root / "current" / "media") == "../../shared/media"
    assert (root / "current" / ".env").read_text() == "DEBUG=0\n"
    meta = read_release_meta(root / ".coordinator" / "releases", name)
    assert meta is not None and meta.shared == (".env", "media")
    assert "shared" not in (root / "releases" / f"{name}.json").read_text()  # not in the app-facing copy


async def test_tracked_content_at_a_shared_path_is_replaced_and_logged(root: Path, media_repo: GitRepo) -> None:
    """The tag's media/ directory is replaced by the link, with a shared_path_replaced warning."""
    d = await started_deployer(root, media_repo, shared_dirs=("media",))
    with capture_logs() as logs:
        name = await deploy(d, root, "v1")
    assert (root / "releases" / name / "media").is_symlink()
    assert not (root / "shared" / "media" / "README").exists()
    replaced = [e for e in logs if e["event"] == "shared_path_replaced"]
    assert [(e["path"], e["release"], e["tracked"], e["log_level"]) for e in replaced] == [
        ("media", name, "a directory", "warning")
    ]


async def test_missing_shared_file_fails_before_the_swap_and_is_retried(root: Path, repo: GitRepo) -> None:
    """A missing shared file fails the deploy (kind shared in the status), current and releases/ untouched;
    once the file is created the same marker deploys on the next reconcile."""
    plain = await started_deployer(root, repo)
    first = await deploy(plain, root, "v1")
    d = await started_deployer(root, repo, shared_files=(".env",))
    write_marker(root, "v2")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "failed"
    assert os.readlink(root / "current") == f"releases/{first}"
    assert sorted(p.name for p in (root / "releases").iterdir()) == [first, f"{first}.json"]
    st = read_status(root)
    assert st is not None and st["state"] == "failed" and st["error"]["kind"] == "shared"
    assert str(root / "shared" / ".env") in st["error"]["fix"]
    (root / "shared" / ".env").write_text("A=1\n")
    again = await d.reconcile()
    assert again is not None and again.result == "success"


async def test_build_command_reads_the_shared_env_through_the_link(root: Path, repo: GitRepo) -> None:
    """The build command runs after the links are made: it reads ROOT/shared/.env as .env."""
    (root / "shared").mkdir()
    (root / "shared" / ".env").write_text("SECRET_KEY=abc\n")
    d = await started_deployer(root, repo, shared_files=(".env",), build_command="cat .env > built.txt")
    name = await deploy(d, root, "v1")
    assert (root / "releases" / name / "built.txt").read_text() == "SECRET_KEY=abc\n"


async def test_shared_media_survives_three_deploys_and_a_rollback(root: Path, media_repo: GitRepo) -> None:
    """What the app writes into media/ through current is seen through current after every deploy and a rollback."""
    d = await started_deployer(root, media_repo, shared_dirs=("media",))
    written: list[str] = []
    for tag in ("v1", "v2", "v3"):
        await deploy(d, root, tag)
        for name in written:
            assert (root / "current" / "media" / name).read_text() == name
        (root / "current" / "media" / f"upload-{tag}").write_text(f"upload-{tag}")
        written.append(f"upload-{tag}")
    await request_rollback(d.layout)
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success" and attempt.tag == "v2"
    assert sorted(p.name for p in (root / "current" / "media").iterdir()) == written
    assert (root / "current" / "media").resolve() == root / "shared" / "media"


# ------------------------------------------------------------------------------------------ incremental preparation


@pytest.fixture
def shared_repo(tmp_path: Path) -> GitRepo:
    """v1, v2: settings.env and media/ tracked (changed in v2), .env a tracked symlink (unchanged)."""
    repo = GitRepo(tmp_path / "shared-repo")
    for i in (1, 2):
        repo.commit(
            {
                "app.py": "APP = 1\n",
                "settings.env": f"TRACKED={i}\n",
                "media/README": f"r{i}\n",
                ".env.example": "A=\n",
            },
            tag=f"v{i}",
            symlinks={".env": ".env.example"},
        )
    return repo


async def full_checkout(d: Deployer, repo: GitRepo, tag: str, dest: Path) -> dict[str, tuple[Any, ...]]:
    """The contents of a full checkout of ``tag`` into ``dest``."""
    dest.mkdir()
    await d.git.checkout(repo.tag_sha(tag), dest, dest.parent / f"index-{tag}")
    return await anyio.to_thread.run_sync(contents, dest)


async def test_incremental_prepare_never_writes_through_the_links(root: Path, shared_repo: GitRepo) -> None:
    """Preparing v2 incrementally from v1, whose shared paths are links, leaves ROOT/shared exactly as it was."""
    (root / "shared" / "media").mkdir(parents=True)
    (root / "shared" / "media" / "README").write_text("the app's own\n")
    (root / "shared" / "settings.env").write_text("REAL=1\n")
    (root / "shared" / ".env").write_text("SECRET=1\n")
    d = await started_deployer(root, shared_repo, shared_dirs=("media",), shared_files=("settings.env", ".env"))
    await deploy(d, root, "v1")
    before = snapshot(root / "shared")
    with capture_logs() as logs:
        await deploy(d, root, "v2")
    assert [e["mode"] for e in logs if e["event"] == "prepare_stats"] == ["incremental"]
    assert snapshot(root / "shared") == before


async def test_incremental_release_equals_a_full_checkout_plus_the_links(
    root: Path, shared_repo: GitRepo, tmp_path: Path
) -> None:
    """v2 prepared from v1 is a full checkout of v2 with each shared path replaced by its link."""
    (root / "shared").mkdir()
    (root / "shared" / ".env").write_text("SECRET=1\n")
    (root / "shared" / "settings.env").write_text("REAL=1\n")
    d = await started_deployer(root, shared_repo, shared_dirs=("media",), shared_files=("settings.env", ".env"))
    await deploy(d, root, "v1")
    name = await deploy(d, root, "v2")
    want = await full_checkout(d, shared_repo, "v2", tmp_path / "full")
    want = {p: v for p, v in want.items() if p != "media" and not p.startswith("media/")}
    want.update({p: ("link", link_target(p)) for p in ("media", "settings.env", ".env")})
    assert contents(root / "releases" / name) == want


async def test_dropping_a_shared_path_gives_a_release_with_the_tags_content(
    root: Path, shared_repo: GitRepo, tmp_path: Path
) -> None:
    """Once a shared path is no longer configured, the next release (incremental) holds the tag's own
    content there: no link, not even the previous release's link at a path the tag tracks as a symlink."""
    (root / "shared").mkdir()
    (root / "shared" / ".env").write_text("SECRET=1\n")
    (root / "shared" / "settings.env").write_text("REAL=1\n")
    linked = await started_deployer(root, shared_repo, shared_dirs=("media",), shared_files=("settings.env", ".env"))
    await deploy(linked, root, "v1")
    d = await started_deployer(root, shared_repo)
    with capture_logs() as logs:
        name = await deploy(d, root, "v2")
    assert [e["mode"] for e in logs if e["event"] == "prepare_stats"] == ["incremental"]
    assert contents(root / "releases" / name) == await full_checkout(d, shared_repo, "v2", tmp_path / "full")
    assert os.readlink(root / "releases" / name / ".env") == ".env.example"


# ------------------------------------------------------------------------------------------ releases on disk


async def test_a_release_on_disk_keeps_the_links_it_was_published_with(root: Path, media_repo: GitRepo) -> None:
    """Going back to a release on disk never adds or removes links: v1 (linked) and v2 (not) stay as published."""
    linked = await started_deployer(root, media_repo, shared_dirs=("media",))
    v1 = await deploy(linked, root, "v1")
    plain = await started_deployer(root, media_repo)
    v2 = await deploy(plain, root, "v2")
    v1_before, v2_before = snapshot(root / "releases" / v1), snapshot(root / "releases" / v2)
    await deploy(plain, root, "v1")  # a daemon without shared paths swaps back to v1
    relinked = await started_deployer(root, media_repo, shared_dirs=("media",))
    await deploy(relinked, root, "v2")  # and one with them swaps back to v2
    assert snapshot(root / "releases" / v1) == v1_before and (root / "releases" / v1 / "media").is_symlink()
    assert snapshot(root / "releases" / v2) == v2_before and (root / "releases" / v2 / "media" / "README").is_file()
