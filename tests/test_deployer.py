"""The executor against real git repositories and a real volume, in-process."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator import follow
from coordinator.config import Config
from coordinator.daemon import run_argv
from coordinator.deployer import Deployer
from coordinator.exceptions import LayoutError
from coordinator.layout import Layout
from coordinator.records import AttemptResult
from coordinator.state import load_state, read_journal, save_state
from tests.helpers import (
    GitRepo,
    current_release,
    read_status,
    started_deployer,
    wait_for_workspace,
    write_marker,
)

pytestmark = pytest.mark.anyio


def make(root: Path, repo: GitRepo, **kw: object) -> Deployer:
    cfg = Config(layout=Layout.for_root(root), repo=str(repo.path), **kw)  # type: ignore[arg-type]
    return Deployer(cfg)


def release_dirs(root: Path) -> list[str]:
    """Published release directories (not their metadata files, not temporary names), sorted."""
    return sorted(p.name for p in (root / "releases").iterdir() if p.is_dir() and not p.name.startswith("."))


def tracked(repo: GitRepo, tag: str) -> set[str]:
    return set(repo.git("ls-tree", "-r", "--name-only", tag).splitlines())


def files_in(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir() or p.is_symlink()}


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def outside_snapshot(base: Path, root: Path) -> dict[str, float]:
    """mtimes of everything under base except the volume, the repo (read by git) and logs."""
    out = {}
    for p in base.rglob("*"):
        if root in p.parents or p == root:
            continue
        out[str(p)] = p.lstat().st_mtime
    return out


async def test_first_deploy_publishes_exactly_the_tags_tracked_files(root: Path, repo: GitRepo) -> None:
    """A first deploy builds releases/<name> holding exactly the tag's tracked files and no .git."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1\n")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success"
    release = root / "releases" / str(attempt.release)
    assert files_in(release) == tracked(repo, "v1")
    assert not (release / ".git").exists()
    assert (release / "app.py").read_text() == "VERSION = 'v1'\n"


async def test_current_is_a_relative_symlink_into_releases(root: Path, repo: GitRepo) -> None:
    """`current` is the relative link releases/<name>, so the volume can be mounted anywhere."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    attempt = await d.reconcile()
    assert attempt is not None
    assert os.readlink(root / "current") == f"releases/{attempt.release}"


async def test_release_name_combines_tag_and_short_sha(root: Path, repo: GitRepo) -> None:
    """The release directory is named <tag>-<12 hex of the commit>."""
    d = await started_deployer(root, repo)
    write_marker(root, "v2")
    attempt = await d.reconcile()
    assert attempt is not None
    assert attempt.release == f"v2-{repo.tag_sha('v2')[:12]}"


async def test_annotated_tag_deploys_its_commit(root: Path, tmp_path: Path) -> None:
    """An annotated tag is peeled to the commit it points to."""
    repo = await anyio.to_thread.run_sync(GitRepo, tmp_path / "annotated")
    sha = await anyio.to_thread.run_sync(lambda: repo.commit({"a.txt": "a"}, tag="r1", annotated=True))
    d = await started_deployer(root, repo)
    write_marker(root, "r1")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.sha == sha


async def test_release_preserves_modes_and_symlinks(root: Path, tmp_path: Path) -> None:
    """Executable bits and symlinks of the tag's tree are reproduced in the release."""
    repo = await anyio.to_thread.run_sync(GitRepo, tmp_path / "modes")
    await anyio.to_thread.run_sync(
        lambda: repo.commit(
            {"run.sh": "#!/bin/sh\n", "data.txt": "x"}, tag="m1", executable=("run.sh",), symlinks={"link": "data.txt"}
        )
    )
    d = await started_deployer(root, repo)
    write_marker(root, "m1")
    attempt = await d.reconcile()
    assert attempt is not None
    rel = root / "releases" / str(attempt.release)
    assert os.stat(rel / "run.sh").st_mode & 0o111
    assert not os.stat(rel / "data.txt").st_mode & 0o111
    assert os.readlink(rel / "link") == "data.txt"


async def test_release_is_not_world_writable(root: Path, repo: GitRepo) -> None:
    """Release directories and files are not writable by others."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    attempt = await d.reconcile()
    assert attempt is not None
    rel = root / "releases" / str(attempt.release)
    for p in [rel, *rel.rglob("*")]:
        if not p.is_symlink():
            assert not p.stat().st_mode & 0o002, p


async def test_deploy_touches_the_reload_file(root: Path, repo: GitRepo) -> None:
    """After the swap the reload file exists with a whole-second mtime."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    st = os.stat(root / "reload.touch")
    assert st.st_mtime_ns % 1_000_000_000 == 0


async def test_same_tag_again_does_not_reload(root: Path, repo: GitRepo) -> None:
    """Reconciling an unchanged marker is a no-op: no attempt, no touch."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    before = os.stat(root / "reload.touch").st_mtime_ns
    assert await d.reconcile() is None
    assert os.stat(root / "reload.touch").st_mtime_ns == before


async def test_successive_reloads_have_strictly_increasing_whole_seconds(root: Path, repo: GitRepo) -> None:
    """Quick successive deploys still move the reload mtime forward by >= 1 s each (uWSGI rule)."""
    d = await started_deployer(root, repo)
    seen = []
    for tag in ("v1", "v2", "v1", "v2"):
        write_marker(root, tag)
        await d.reconcile()
        seen.append(os.stat(root / "reload.touch").st_mtime_ns // 1_000_000_000)
    assert all(b >= a + 1 for a, b in itertools.pairwise(seen))


async def test_release_on_disk_is_swapped_without_fetch_or_prepare(root: Path, repo: GitRepo) -> None:
    """Going back to a release already on disk only swaps, reloads and prunes."""
    d = await started_deployer(root, repo)
    for tag in ("v1", "v2"):
        write_marker(root, tag)
        await d.reconcile()
    write_marker(root, "v1")
    attempt = await d.reconcile()
    assert attempt is not None and set(attempt.phases) == {"swap", "reload", "prune"}


async def test_status_file_describes_a_success(root: Path, repo: GitRepo) -> None:
    """The status file says idle, with desired, current and the last attempt's phases."""
    d = await started_deployer(root, repo)
    write_marker(root, '{"tag": "v1", "id": "req-1"}')
    await d.reconcile()
    st = read_status(root)
    assert st is not None
    assert st["state"] == "idle"
    assert st["desired"] == {"tag": "v1", "sha": None, "id": "req-1"}
    assert st["current"]["tag"] == "v1" and st["current"]["sha"] == repo.tag_sha("v1")
    assert st["last_attempt"]["result"] == "success" and st["last_attempt"]["id"] == "req-1"
    assert {"fetch", "prepare", "publish", "swap", "reload"} <= set(st["last_attempt"]["phases_ms"])


async def test_matching_sha_in_marker_deploys(root: Path, repo: GitRepo) -> None:
    """A JSON marker whose abbreviated sha matches the tag deploys it."""
    d = await started_deployer(root, repo)
    write_marker(root, json.dumps({"tag": "v2", "sha": repo.tag_sha("v2")[:8]}))
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success"


async def test_mismatched_sha_fails_and_leaves_current(root: Path, repo: GitRepo) -> None:
    """A sha the tag does not point to fails the attempt; current stays where it was."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    before = os.readlink(root / "current")
    write_marker(root, json.dumps({"tag": "v2", "sha": repo.tag_sha("v1")}))
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "failed"
    assert os.readlink(root / "current") == before
    st = read_status(root)
    assert st is not None and st["state"] == "failed" and "points to" in st["error"]["message"]


async def test_permanent_failure_is_not_retried_until_the_marker_changes(root: Path, repo: GitRepo) -> None:
    """After a permanent failure the same marker is not tried again; a changed marker is."""
    d = await started_deployer(root, repo, build_command="exit 3")
    write_marker(root, "v1")
    first = await d.reconcile()
    assert first is not None and first.result == "failed"
    assert await d.reconcile() is None
    write_marker(root, '{"tag": "v1", "id": "again"}')
    again = await d.reconcile()
    assert again is not None and again.result == "failed"


async def test_permanent_failure_survives_a_restart(root: Path, repo: GitRepo) -> None:
    """A restarted daemon does not retry a marker that already failed for good."""
    d = await started_deployer(root, repo, build_command="exit 3")
    write_marker(root, "v1")
    await d.reconcile()
    d2 = await started_deployer(root, repo, build_command="exit 3")
    assert await d2.reconcile() is None


async def test_unknown_tag_fails_retryably(root: Path, repo: GitRepo) -> None:
    """An unknown tag fails but is tried again once its fetch back-off ends (it may be pushed later)."""
    d = await started_deployer(root, repo)
    write_marker(root, "v9")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "failed"
    assert attempt.error is not None and attempt.error["kind"] == "tag_not_found"
    await anyio.to_thread.run_sync(lambda: repo.commit({"app.py": "VERSION = 'v9'\n"}, tag="v9"))
    await anyio.sleep(d.retry_in() or 0)  # the first back-off: about a second
    later = await d.reconcile()
    assert later is not None and later.result == "success"


async def test_moved_tag_with_new_sha_is_fetched_again(root: Path, repo: GitRepo) -> None:
    """When a tag moves and the marker names the new sha, coordinator fetches and deploys it."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    first = await d.reconcile()
    new_sha = await anyio.to_thread.run_sync(lambda: repo.commit({"app.py": "VERSION = 'v1-fixed'\n"}, tag="v1"))
    write_marker(root, json.dumps({"tag": "v1", "sha": new_sha}))
    with capture_logs() as logs:
        second = await d.reconcile()
    assert second is not None and second.release != (first.release if first else None)
    assert any(e["event"] == "tag_moved" for e in logs)


HOSTILE = [
    b"--upload-pack=touch /tmp/coordinator-pwned",
    b"-c core.sshCommand=evil",
    b"../../../../etc/passwd",
    b"v1; rm -rf /",
    b"$(touch /tmp/coordinator-pwned)",
    b"`id`",
    b"v1\x00v2",
    b"\xff\xfe\xfa",
    b"",
    b"   \n\n",
    b"x" * (20 * 1024 * 1024),
    b'{"tag": "v1"',
    b'{"tag": ["v1"]}',
    b'{"tag": "v1", "cmd": "id"}',
    b'["v1"]',
    b"refs/heads/main@{0}",
    "v1\u202e".encode(),
]


@pytest.mark.parametrize("data", HOSTILE, ids=lambda d: repr(d[:30]))
async def test_hostile_marker_is_refused_and_nothing_changes(root: Path, repo: GitRepo, data: bytes) -> None:
    """A hostile marker gives an invalid status; current, the reload file and the outside are untouched."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    before = (os.readlink(root / "current"), os.stat(root / "reload.touch").st_mtime_ns)
    outside = outside_snapshot(root.parent, root)
    (root / "deploy.request").write_bytes(data)
    with capture_logs() as logs:
        assert await d.reconcile() is None
    assert (os.readlink(root / "current"), os.stat(root / "reload.touch").st_mtime_ns) == before
    st = read_status(root)
    assert st is not None and st["state"] == "invalid" and st["error"]["message"]
    assert any(e["event"] == "marker_invalid" for e in logs)
    assert outside_snapshot(root.parent, root) == outside
    assert not Path("/tmp/coordinator-pwned").exists()


async def test_tag_outside_pattern_is_refused(root: Path, repo: GitRepo) -> None:
    """With --tag-pattern, a tag that does not match never reaches git."""
    d = await started_deployer(root, repo, tag_pattern="release-*")
    write_marker(root, "v1")
    assert await d.reconcile() is None
    st = read_status(root)
    assert st is not None and st["state"] == "invalid" and "tag-pattern" in st["error"]["message"]


async def test_missing_marker_means_waiting(root: Path, repo: GitRepo) -> None:
    """Without a marker the daemon waits and says so."""
    d = await started_deployer(root, repo)
    assert await d.reconcile() is None
    st = read_status(root)
    assert st is not None and st["state"] == "waiting"


async def test_marker_that_is_a_fifo_does_not_block(root: Path, repo: GitRepo) -> None:
    """A FIFO planted as the marker is refused without blocking on it."""
    d = await started_deployer(root, repo)
    os.mkfifo(root / "deploy.request")
    with anyio.fail_after(5):
        assert await d.reconcile() is None
    st = read_status(root)
    assert st is not None and st["state"] == "invalid"


async def test_build_command_runs_in_the_new_release_with_its_env(root: Path, repo: GitRepo) -> None:
    """The build command runs inside the new release with TAG, SHA and RELEASE_DIR set."""
    d = await started_deployer(root, repo, build_command='echo "$TAG $SHA $RELEASE_NAME" > built.txt; pwd > where.txt')
    write_marker(root, "v1")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success"
    rel = root / "releases" / str(attempt.release)
    assert (rel / "built.txt").read_text().split() == ["v1", repo.tag_sha("v1"), str(attempt.release)]
    assert Path((rel / "where.txt").read_text().strip()).parent == root / "releases"


async def test_failed_build_discards_the_release(root: Path, repo: GitRepo) -> None:
    """A failing build leaves no release behind, current untouched, and its output in the status."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    before = sorted(os.listdir(root / "releases"))
    d2 = await started_deployer(root, repo, build_command="echo compile error >&2; exit 7")
    write_marker(root, "v2")
    attempt = await d2.reconcile()
    assert attempt is not None and attempt.result == "failed"
    assert sorted(os.listdir(root / "releases")) == before
    st = read_status(root)
    assert st is not None and st["state"] == "failed"
    assert "exit code 7" in st["error"]["message"] and "compile error" in st["error"]["output"]


async def test_build_timeout_kills_the_whole_process_group(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """A hanging build is killed with every process it started, and the release discarded."""
    pidfile = tmp_path / "child.pid"
    d = await started_deployer(root, repo, build_command=f"sleep 300 & echo $! > {pidfile}; wait", build_timeout=1.0)
    write_marker(root, "v1")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "failed"
    assert attempt.error is not None and "timed out" in attempt.error["message"]
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not alive(child):
            break
        await anyio.sleep(0.05)
    else:
        pytest.fail("the build's child process survived")
    assert [n for n in os.listdir(root / "releases") if not n.startswith(".")] == []


async def test_build_leftover_background_processes_are_killed(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """A build that exits but leaves a daemonized child behind does not leak it."""
    pidfile = tmp_path / "bg.pid"
    d = await started_deployer(root, repo, build_command=f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}")
    write_marker(root, "v1")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success"
    child = int(pidfile.read_text())
    await anyio.sleep(0.2)
    assert not alive(child)


async def test_retention_keeps_n_and_never_current_or_previous(root: Path, tmp_path: Path) -> None:
    """With --keep 2, older releases are pruned but current and previous stay."""

    def build() -> GitRepo:
        r = GitRepo(tmp_path / "many")
        for i in range(1, 6):
            r.commit({"v": str(i)}, tag=f"t{i}")
        return r

    repo = await anyio.to_thread.run_sync(build)
    d = await started_deployer(root, repo, keep=2)
    for i in range(1, 6):
        write_marker(root, f"t{i}")
        await d.reconcile()
    names = release_dirs(root)
    assert [n.split("-")[0] for n in names] == ["t4", "t5"]


async def test_keep_one_still_keeps_previous(root: Path, repo: GitRepo) -> None:
    """Even --keep 1 never deletes the previous release (needed for rollback)."""
    d = await started_deployer(root, repo, keep=1)
    for tag in ("v1", "v2", "v3"):
        write_marker(root, tag)
        await d.reconcile()
    assert [n.split("-")[0] for n in release_dirs(root)] == ["v2", "v3"]


async def test_failed_attempts_do_not_count_toward_keep(root: Path, repo: GitRepo) -> None:
    """A failed build leaves nothing that could push a good release out of retention."""
    d = await started_deployer(root, repo, keep=2)
    for tag in ("v1", "v2"):
        write_marker(root, tag)
        await d.reconcile()
    bad = await started_deployer(root, repo, keep=2, build_command="exit 1")
    write_marker(root, "v3")
    await bad.reconcile()
    assert [n.split("-")[0] for n in release_dirs(root)] == ["v1", "v2"]


async def test_startup_removes_temporary_leftovers(root: Path, repo: GitRepo) -> None:
    """Half-built releases and temp links from a crash are removed at start."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    (root / "releases" / ".v2-abc.tmp-1-deadbeef").mkdir()
    (root / "releases" / ".v2-abc.tmp-1-deadbeef" / "half.py").write_text("x")
    os.symlink("releases/nothing", root / ".current.tmp-1-cafebabe")
    await started_deployer(root, repo)
    assert [n for n in os.listdir(root / "releases") if n.startswith(".")] == []
    assert not os.path.lexists(root / ".current.tmp-1-cafebabe")


async def test_swap_without_recorded_reload_is_reloaded_once_at_start(root: Path, repo: GitRepo) -> None:
    """If current changed but its reload was never recorded, start-up reloads exactly once."""
    d = await started_deployer(root, repo)
    for tag in ("v1", "v2"):
        write_marker(root, tag)
        await d.reconcile()
    state = load_state(root / ".coordinator" / "state.json")
    state.reloaded = "something-else"
    save_state(root / ".coordinator" / "state.json", state)
    before = os.stat(root / "reload.touch").st_mtime_ns
    d2 = await started_deployer(root, repo)
    await d2.reconcile()
    after = os.stat(root / "reload.touch").st_mtime_ns
    assert after > before
    d3 = await started_deployer(root, repo)
    await d3.reconcile()
    assert os.stat(root / "reload.touch").st_mtime_ns == after


async def test_pending_reload_that_already_happened_is_not_repeated(root: Path, repo: GitRepo) -> None:
    """A crash after the touch but before recording it does not touch again at restart."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    state = load_state(root / ".coordinator" / "state.json")
    touched = os.stat(root / "reload.touch").st_mtime_ns
    from coordinator.statefile import PendingReload

    current = os.readlink(root / "current").split("/")[1]
    state.pending = PendingReload(current, touched // 1_000_000_000)
    state.reloaded = None
    save_state(root / ".coordinator" / "state.json", state)
    d2 = await started_deployer(root, repo)
    await d2.reconcile()
    assert os.stat(root / "reload.touch").st_mtime_ns == touched
    assert load_state(root / ".coordinator" / "state.json").reloaded == current


async def test_current_as_real_directory_is_refused(root: Path, repo: GitRepo) -> None:
    """A real `current` directory (the old in-place layout) stops start-up with a clear error."""
    (root / "current").mkdir()
    with pytest.raises(LayoutError, match="not a symlink"):
        await started_deployer(root, repo)


async def test_planted_symlink_as_releases_dir_is_refused(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """A symlink planted as releases/ is refused and nothing is written through it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "releases")
    with pytest.raises(LayoutError, match="not a directory"):
        await started_deployer(root, repo)
    assert list(elsewhere.iterdir()) == []


async def test_newer_marker_cancels_a_deploy_before_the_swap(root: Path, repo: GitRepo) -> None:
    """A newer request supersedes a deploy still building; nothing of it is left behind."""
    d = await started_deployer(root, repo, build_command="sleep 30")
    write_marker(root, "v1")
    async with anyio.create_task_group() as tg:

        async def supersede() -> None:
            await wait_for_workspace(root)
            await anyio.sleep(0.2)
            write_marker(root, "v2")
            await d.check_superseded()

        tg.start_soon(supersede)
        with anyio.fail_after(20):
            attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "cancelled"
    assert os.listdir(root / "releases") == []
    assert not os.path.lexists(root / "current")


async def test_journal_records_every_attempt(root: Path, repo: GitRepo) -> None:
    """Each attempt is appended to the journal with its result and phases."""
    d = await started_deployer(root, repo)
    for text in ("v1", "v9"):
        write_marker(root, text)
        await d.reconcile()
    lines = (root / ".coordinator" / "journal.jsonl").read_text().splitlines()
    results = [(json.loads(ln)["tag"], json.loads(ln)["result"]) for ln in lines]
    assert results == [("v1", "success"), ("v9", "failed")]


async def test_credentials_in_repo_url_never_reach_status_or_logs(root: Path, repo: GitRepo) -> None:
    """A repository URL with a password never appears in the status file or log events."""
    cfg = Config(layout=Layout.for_root(root), repo="https://user:hunter2@127.0.0.1:9/app.git", git_timeout=10)
    d = Deployer(cfg)
    await d.startup()
    write_marker(root, "v1")
    with capture_logs() as logs:
        attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "failed"
    assert "hunter2" not in (root / "deploy.status.json").read_text()
    assert "hunter2" not in json.dumps(logs, default=str)


def test_git_is_never_given_marker_text_as_an_option(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """An option-like tag never reaches git: a git wrapper on PATH logs every argv it gets."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    argv_log = tmp_path / "argv.log"
    real_git = subprocess.run(["which", "git"], capture_output=True, text=True, check=True).stdout.strip()
    wrapper = bindir / "git"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\nexec {real_git} "$@"\n')
    wrapper.chmod(0o755)
    write_marker(root, "--upload-pack=touch /tmp/coordinator-pwned")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    subprocess.run(run_argv(root, repo.path, "--once"), env=env, capture_output=True, check=False)
    logged = argv_log.read_text() if argv_log.exists() else ""
    assert logged, "the daemon never ran git through the wrapper (the test would prove nothing)"
    assert "upload-pack" not in logged


async def test_newer_marker_cancels_a_hanging_fetch(
    root: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fetch stuck on a hanging remote is cancelled when the marker asks for a cached tag."""
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    primed = await started_deployer(root, repo)
    write_marker(root, "v1")
    await primed.reconcile()
    write_marker(root, "v2")
    await primed.reconcile()
    monkeypatch.setenv("GIT_SSH_COMMAND", str(hang))
    cfg = Config(layout=Layout.for_root(root), repo="ssh://127.0.0.1/app.git")
    d = Deployer(cfg)
    await d.startup()
    write_marker(root, "v3")
    async with anyio.create_task_group() as tg:

        async def supersede() -> None:
            await anyio.sleep(0.5)
            write_marker(root, "v1")
            await d.check_superseded()

        tg.start_soon(supersede)
        with anyio.fail_after(20):
            attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "cancelled" and attempt.tag == "v3"
    again = await d.reconcile()
    assert again is not None and again.result == "success" and again.tag == "v1"


async def test_release_used_by_a_live_process_is_not_pruned(root: Path, repo: GitRepo) -> None:
    """A release some process runs in (an old worker) survives retention until the process exits."""
    d = await started_deployer(root, repo, keep=1)
    write_marker(root, "v1")
    first = await d.reconcile()
    assert first is not None
    worker = await anyio.open_process(["sleep", "30"], cwd=root / "releases" / str(first.release))
    try:
        for tag in ("v2", "v3"):
            write_marker(root, tag)
            await d.reconcile()
        assert [n.split("-")[0] for n in release_dirs(root)] == ["v1", "v2", "v3"]
    finally:
        worker.kill()
        await worker.wait()
    write_marker(root, "v1")
    await d.reconcile()
    write_marker(root, "v2")
    await d.reconcile()
    assert [n.split("-")[0] for n in release_dirs(root)] == ["v1", "v2"]


async def test_failed_reload_is_reported_and_retried(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """A reload that fails (its directory is missing) shows in the status and is retried later."""
    reload_dir = tmp_path / "reload-dir"
    cfg = Config(layout=Layout.for_root(root, reload_file=reload_dir / "touch"), repo=str(repo.path))
    d = Deployer(cfg)
    await d.startup()
    write_marker(root, "v1")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "failed"
    assert attempt.error is not None and attempt.error["kind"] == "reload"
    assert os.path.lexists(root / "current")  # swapped: the reload is what is missing
    await d.reconcile()
    st = read_status(root)
    assert st is not None and st["state"] == "failed" and "does not exist" in st["error"]["message"]
    reload_dir.mkdir()
    await d.reconcile()
    assert (reload_dir / "touch").exists()
    st = read_status(root)
    assert st is not None and st["state"] == "idle" and st["reloaded"] == st["current"]["release"]


async def test_a_failed_deploying_status_write_fails_the_attempt_and_journals_it(
    root: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the `deploying` status write: the attempt is journaled as failed (retryable), the
    in-progress gauge is back at 0, and the next reconcile deploys."""
    from coordinator import failpoints
    from coordinator.metrics import Metrics
    from coordinator.state import read_journal

    d = await started_deployer(root, repo)
    metrics = Metrics()
    d.reporter.on_attempt = metrics.attempt_changed
    write_marker(root, "v1")
    monkeypatch.setattr(failpoints, "_hits", {})
    monkeypatch.setenv("COORDINATOR_FAILPOINTS", "before-deploying-status:ENOSPC@1")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result is AttemptResult.FAILED
    assert attempt.error is not None and attempt.error["kind"] == "io" and "No space" in attempt.error["message"]
    journal = read_journal(root / ".coordinator" / "journal.jsonl")
    assert [(e["tag"], e["result"]) for e in journal] == [("v1", "failed")]
    assert metrics.registry.get_sample_value("coordinator_deploy_in_progress") == 0
    assert metrics.registry.get_sample_value("coordinator_deploys_total", {"result": "failed"}) == 1
    assert not (root / "current").exists()
    again = await d.reconcile()  # the volume recovered: retried, not blocked
    assert again is not None and again.result is AttemptResult.SUCCESS


def _root_written_by_0_1(root: Path, repo: GitRepo) -> tuple[str, str]:
    """The volume as coordinator 0.1 left it after deploying v1 then v2 (files captured from a real
    run, in tests/data/root-0.1, with the commits of ``repo`` filled in); returns the two release names."""
    shas = {t: repo.git("rev-parse", f"{t}^{{commit}}") for t in ("v1", "v2")}
    fill = {
        "@V1_SHA@": shas["v1"],
        "@V2_SHA@": shas["v2"],
        "@V1_SHORT@": shas["v1"][:12],
        "@V2_SHORT@": shas["v2"][:12],
    }
    names = (f"v1-{shas['v1'][:12]}", f"v2-{shas['v2'][:12]}")
    data = Path(__file__).parent / "data" / "root-0.1"
    for src in data.rglob("*"):
        if src.is_dir():
            continue
        text = src.read_text()
        for key, value in fill.items():
            text = text.replace(key, value)
        rel = str(src.relative_to(data)).replace("v1-V1", names[0]).replace("v2-V2", names[1])
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for tag, name in zip(("v1", "v2"), names, strict=True):
        (root / "releases" / name).mkdir()
        repo.git(f"--work-tree={root / 'releases' / name}", "checkout", tag, "--", ".")
    (root / "current").symlink_to(f"releases/{names[1]}")
    cache = root / ".coordinator" / "git"  # 0.1's cache: a bare repository with the tags it fetched
    subprocess.run(["git", "init", "-q", "--bare", str(cache)], check=True)
    refs = [f"+refs/tags/{t}:refs/tags/{t}" for t in ("v1", "v2")]
    subprocess.run(["git", f"--git-dir={cache}", "fetch", "-q", "--no-tags", str(repo.path), *refs], check=True)
    return names


async def test_a_root_written_by_version_0_1_is_read_and_deployed_on(root: Path, repo: GitRepo) -> None:
    """The new daemon reads 0.1's state, journal, metadata and status: v2 stays current without a
    reload, v3 deploys (a full checkout: 0.1's metadata does not say whether a build ran), history
    and releases show both versions' work, and `previous` still points where 0.1 left it."""
    from coordinator import commands

    v1, v2 = await anyio.to_thread.run_sync(_root_written_by_0_1, root, repo)
    d = await started_deployer(root, repo)
    assert (d.state.reloaded, d.state.previous) == (v2, v1)
    with capture_logs() as logs:
        assert await d.reconcile() is None  # the 0.1 marker asks for v2: converged, nothing reloaded
    assert not [e for e in logs if e["event"] in ("reload", "reloaded")]
    write_marker(root, "v3")
    with capture_logs() as logs:
        attempt = await d.reconcile()
    assert attempt is not None and attempt.result is AttemptResult.SUCCESS
    stats = next(e for e in logs if e["event"] == "prepare_stats")
    assert (stats["mode"], stats["fallback"]) == ("full", "previous_provenance_unknown")
    history = await commands.read_history(d.layout)
    assert [(h.tag, h.result) for h in history] == [("v3", "success"), ("v2", "success"), ("v1", "success")]
    rows = await commands.list_releases(d.layout)
    assert {r.tag for r in rows} == {"v1", "v2", "v3"} and next(r for r in rows if r.previous).name == v2
    status = read_status(root)
    assert status is not None and status["state"] == "idle" and status["last_success"]["tag"] == "v3"


async def test_a_sigterm_during_prune_keeps_the_deploy_a_success(
    root: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy cancelled while it prunes (after the swap and reload) is journaled as a success."""
    d = await started_deployer(root, repo)
    pruning = anyio.Event()

    async def hanging_prune(previous: str | None, staged: str | None = None) -> list[str]:
        pruning.set()
        await anyio.sleep_forever()
        return []

    monkeypatch.setattr(d.store, "prune", hanging_prune)
    write_marker(root, "v1")
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.reconcile)
            await pruning.wait()
            scope.cancel()
    entries = read_journal(Layout.for_root(root).journal, 10)
    assert [(e["tag"], e["result"]) for e in entries] == [("v1", "success")]
    assert current_release(root) is not None


async def test_a_failed_prune_is_logged_and_the_deploy_stays_a_success(
    root: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error while pruning is a prune_failed warning, not a failed deploy."""
    d = await started_deployer(root, repo)

    async def broken_prune(previous: str | None, staged: str | None = None) -> list[str]:
        raise PermissionError(13, "Permission denied", str(root / "releases" / "old"))

    monkeypatch.setattr(d.store, "prune", broken_prune)
    write_marker(root, "v1")
    with capture_logs() as logs:
        attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success"
    assert [e["kind"] for e in logs if e["event"] == "prune_failed"] == ["io"]


async def test_a_request_backing_off_shows_its_fetch_error_after_other_deploys(
    root: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A marker whose fetch failed, written again during its back-off, shows that fetch's error even when
    another deploy succeeded in between."""
    monkeypatch.setattr(follow, "BACKOFF_BASE", 60.0)  # every reconcile below falls within the back-off
    d = await started_deployer(root, repo)
    for tag in ("v1", "v2"):
        write_marker(root, tag)
        await d.reconcile()
    write_marker(root, "v9")
    failed = await d.reconcile()
    assert failed is not None and failed.result == "failed"
    write_marker(root, "v1")  # on disk: a swap, no fetch, so the back-off of v9 still runs
    assert (await d.reconcile()).result == "success"  # type: ignore[union-attr]
    write_marker(root, "v9")
    assert await d.reconcile() is None  # backing off: not fetched again
    status = read_status(root)
    assert status is not None and status["state"] == "failed"
    assert status["error"] is not None and status["error"]["kind"] == failed.error["kind"]  # type: ignore[index]
    assert "next_retry_at" in status["error"]
