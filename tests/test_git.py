"""coordinator.git against real git: the bare cache, tag resolution and fetching, checkouts, redaction."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator.exceptions import GitError, TagNotFoundError
from coordinator.git import GitCache, redact
from tests.helpers import GitRepo

pytestmark = pytest.mark.anyio


@pytest.fixture
def cache(tmp_path: Path, repo: GitRepo) -> GitCache:
    """A (not yet created) cache of the v1..v3 app repository."""
    return GitCache(tmp_path / "state" / "git", str(repo.path), timeout=30)


@pytest.fixture
def rich_repo(tmp_path: Path) -> GitRepo:
    """A repository whose tag `rich` holds an executable, nested dirs, symlinks and a deleted file."""
    r = GitRepo(tmp_path / "rich")
    r.commit({"gone.txt": "deleted later\n", "README": "old\n"}, tag="old")
    r.commit(
        {
            "gone.txt": None,
            "README": "readme\n",
            "bin/run.sh": "#!/bin/sh\necho run\n",
            "pkg/sub/deep/mod.py": "X = 1\n",
            "data/blob.bin": bytes(range(256)),
        },
        tag="rich",
        executable=("bin/run.sh",),
        symlinks={"link-to-readme": "README", "pkg/escape": "../../../../etc/passwd"},
    )
    return r


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A loopback TCP port that accepts connections (kernel backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


async def _run_git(*args: str) -> str:
    result = await anyio.run_process(["git", *args], check=True)
    return result.stdout.decode()


def _tree_entries(root: Path) -> dict[str, tuple[str, str | None]]:
    """Everything under ``root`` (not following symlinks) as path -> (kind, symlink target)."""
    out: dict[str, tuple[str, str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("120000", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None)
            else:
                out[rel] = ("100755" if st.st_mode & 0o100 else "100644", None)
    return out


# ---------------------------------------------------------------------------------------- ensure


async def test_ensure_creates_bare_repository(cache: GitCache) -> None:
    """ensure creates a bare repository (with missing parent directories) at git_dir."""
    await cache.ensure()
    assert (cache.git_dir / "HEAD").is_file()
    out = await _run_git(f"--git-dir={cache.git_dir}", "rev-parse", "--is-bare-repository")
    assert out.strip() == "true"


async def test_ensure_is_idempotent(cache: GitCache, repo: GitRepo) -> None:
    """A second ensure keeps the existing cache and its fetched tags."""
    await cache.ensure()
    sha = await cache.fetch_tag("v1")
    await cache.ensure()
    fresh = GitCache(cache.git_dir, cache.repo)
    assert await fresh.resolve("v1") == sha == await anyio.to_thread.run_sync(repo.tag_sha, "v1")


# ---------------------------------------------------------------------------------------- resolve


async def test_resolve_unknown_tag_is_none(cache: GitCache) -> None:
    """A tag that was never fetched resolves to None."""
    await cache.ensure()
    assert await cache.resolve("v1") is None


async def test_resolve_lightweight_tag_gives_commit(cache: GitCache, repo: GitRepo) -> None:
    """A fetched lightweight tag resolves to its commit sha."""
    await cache.ensure()
    await cache.fetch_tag("v2")
    assert await GitCache(cache.git_dir, cache.repo).resolve("v2") == await anyio.to_thread.run_sync(repo.tag_sha, "v2")


async def test_resolve_annotated_tag_is_peeled_to_commit(tmp_path: Path) -> None:
    """An annotated tag resolves to the commit it tags, not to the tag object."""
    src = await anyio.to_thread.run_sync(GitRepo, tmp_path / "ann")
    sha = await anyio.to_thread.run_sync(lambda: src.commit({"f": "x"}, tag="a1", annotated=True))
    tag_object = await anyio.to_thread.run_sync(src.git, "rev-parse", "refs/tags/a1")
    assert tag_object != sha  # really annotated
    cache = GitCache(tmp_path / "cache.git", str(src.path))
    await cache.ensure()
    assert await cache.fetch_tag("a1") == sha
    assert await GitCache(cache.git_dir, cache.repo).resolve("a1") == sha


# ---------------------------------------------------------------------------------------- remote_tags


async def test_remote_tags_lists_every_tag_peeled_without_creating_the_cache(tmp_path: Path) -> None:
    """remote_tags: each tag once with its commit (an annotated one peeled); the cache stays absent."""
    src = await anyio.to_thread.run_sync(GitRepo, tmp_path / "src")
    light = await anyio.to_thread.run_sync(lambda: src.commit({"f": "1"}, tag="v1"))
    annotated = await anyio.to_thread.run_sync(lambda: src.commit({"f": "2"}, tag="v2", annotated=True))
    cache = GitCache(tmp_path / "state" / "git", str(src.path), timeout=30)
    assert await cache.remote_tags() == {"v1": light, "v2": annotated}
    assert not await anyio.Path(tmp_path / "state").exists()


async def test_remote_tags_of_a_path_that_is_no_repository_raises_git_error(tmp_path: Path) -> None:
    """remote_tags on a directory that is not a repository: GitError with git's reason and the fix."""
    cache = GitCache(tmp_path / "git", str(tmp_path), timeout=30)
    with pytest.raises(GitError, match="does not appear to be a git repository") as info:
        await cache.remote_tags()
    assert info.value.fix == "check --repo and that the repository is reachable"


# ---------------------------------------------------------------------------------------- fetch_tag


async def test_fetch_tag_returns_commit_and_caches_tag(cache: GitCache, repo: GitRepo) -> None:
    """fetch_tag fetches exactly the tag into the cache and returns its commit."""
    await cache.ensure()
    assert await cache.fetch_tag("v3") == await anyio.to_thread.run_sync(repo.tag_sha, "v3")
    tags = await _run_git(f"--git-dir={cache.git_dir}", "tag", "--list")
    assert tags.split() == ["v3"]


async def test_fetch_unknown_tag_raises_tag_not_found(cache: GitCache) -> None:
    """Fetching a tag the repository does not have raises a retryable TagNotFoundError."""
    await cache.ensure()
    with pytest.raises(TagNotFoundError) as info:
        await cache.fetch_tag("v99")
    assert info.value.retryable
    assert info.value.fields["tag"] == "v99"
    assert "v99" in info.value.message


async def test_fetch_moved_tag_is_force_updated_and_logged(cache: GitCache, repo: GitRepo) -> None:
    """A tag re-pointed in the source with `git tag -f` is force-updated and logged as tag_moved."""
    await cache.ensure()
    old = await cache.fetch_tag("v1")
    new = await anyio.to_thread.run_sync(repo.tag_sha, "v3")
    await anyio.to_thread.run_sync(repo.git, "tag", "-f", "v1", new)
    with capture_logs() as logs:
        assert await cache.fetch_tag("v1") == new
    assert await cache.resolve("v1") == new
    assert await GitCache(cache.git_dir, cache.repo).resolve("v1") == new
    moved = [e for e in logs if e["event"] == "tag_moved"]
    assert len(moved) == 1
    assert moved[0]["tag"] == "v1"
    assert moved[0]["old_sha"] == old
    assert moved[0]["new_sha"] == new
    assert moved[0]["log_level"] == "warning"


async def test_fetch_unchanged_tag_logs_no_move(cache: GitCache) -> None:
    """Fetching a tag again that did not move logs no tag_moved event."""
    await cache.ensure()
    await cache.fetch_tag("v2")
    with capture_logs() as logs:
        await cache.fetch_tag("v2")
    assert not [e for e in logs if e["event"] == "tag_moved"]


async def test_fetch_from_unreachable_repo_raises_git_error(tmp_path: Path) -> None:
    """A repository path that does not exist gives a retryable GitError that says why."""
    cache = GitCache(tmp_path / "cache.git", str(tmp_path / "no-such-repo"))
    await cache.ensure()
    with pytest.raises(GitError) as info:
        await cache.fetch_tag("v1")
    err = info.value
    assert type(err) is GitError
    assert err.retryable
    assert err.message.startswith("git fetch failed: ")
    assert "does not appear to be a git repository" in err.message
    assert err.fix


async def test_fetch_error_never_shows_credentials(tmp_path: Path) -> None:
    """A refused https URL with user:password never shows the password in the message or fields."""
    cache = GitCache(tmp_path / "cache.git", "https://user:secret@127.0.0.1:9/x.git")
    await cache.ensure()
    with pytest.raises(GitError) as info:
        await cache.fetch_tag("v1")
    err = info.value
    assert "127.0.0.1" in err.message
    assert err.fields["repo"] == "https://***@127.0.0.1:9/x.git"
    for text in (str(err), err.message, repr(err.fields), repr(err.as_dict())):
        assert "secret" not in text


async def test_git_timeout_raises_git_error(tmp_path: Path, hanging_port: int) -> None:
    """A remote that never answers makes the git call time out with a retryable GitError."""
    cache = GitCache(tmp_path / "cache.git", f"git://127.0.0.1:{hanging_port}/x.git", timeout=0.5)
    await cache.ensure()
    started = time.monotonic()
    with pytest.raises(GitError) as info:
        await cache.fetch_tag("v1")
    assert time.monotonic() - started < 5
    assert "timed out" in info.value.message
    assert "0.5 s" in info.value.message
    assert info.value.retryable


async def test_git_timeout_error_never_shows_credentials(tmp_path: Path, hanging_port: int) -> None:
    """A timed-out fetch from an http URL with credentials redacts them in the error fields."""
    cache = GitCache(tmp_path / "cache.git", f"http://user:secret@127.0.0.1:{hanging_port}/x.git", timeout=0.5)
    await cache.ensure()
    with pytest.raises(GitError) as info:
        await cache.fetch_tag("v1")
    assert "timed out" in info.value.message
    assert info.value.fields["repo"] == f"http://***@127.0.0.1:{hanging_port}/x.git"
    assert "secret" not in repr(info.value.as_dict())


def _processes_mentioning(needle: str) -> list[str]:
    """Command lines of live processes that contain ``needle``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path("/proc", pid, "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(cmdline)
    return found


async def test_git_timeout_leaves_no_process_behind(tmp_path: Path, hanging_port: int) -> None:
    """After a timed-out fetch neither git nor its transport helper (a grandchild) is still running."""
    cache = GitCache(tmp_path / "cache.git", f"http://127.0.0.1:{hanging_port}/x.git", timeout=0.5)
    await cache.ensure()
    with pytest.raises(GitError):
        await cache.fetch_tag("v1")
    needle = f"127.0.0.1:{hanging_port}/x.git"
    deadline = time.monotonic() + 3
    left = await anyio.to_thread.run_sync(_processes_mentioning, needle)
    while left and time.monotonic() < deadline:
        await anyio.sleep(0.05)
        left = await anyio.to_thread.run_sync(_processes_mentioning, needle)
    assert left == []


# ---------------------------------------------------------------------------------------- checkout


async def test_checkout_writes_exactly_the_tracked_files(tmp_path: Path, rich_repo: GitRepo) -> None:
    """checkout writes the tag's tracked paths with their modes and symlink targets, and nothing else."""
    cache = GitCache(tmp_path / "cache.git", str(rich_repo.path))
    await cache.ensure()
    sha = await cache.fetch_tag("rich")
    dest = tmp_path / "dest"
    dest.mkdir()
    index = tmp_path / "index.tmp"
    await cache.checkout(sha, dest, index)

    listing = await _run_git(f"--git-dir={cache.git_dir}", "ls-tree", "-r", "-z", sha)
    expected: dict[str, tuple[str, str | None]] = {}
    for record in filter(None, listing.split("\0")):
        meta, path = record.split("\t", 1)
        mode, _kind, blob = meta.split()
        target = None
        if mode == "120000":
            target = (await _run_git(f"--git-dir={cache.git_dir}", "cat-file", "blob", blob)).strip("\n")
        expected[path] = (mode, target)
        for parent in Path(path).parents:
            if str(parent) != ".":
                expected[str(parent)] = ("dir", None)

    assert await anyio.to_thread.run_sync(_tree_entries, dest) == expected
    assert expected["bin/run.sh"] == ("100755", None)
    assert expected["README"] == ("100644", None)
    assert expected["pkg/escape"] == ("120000", "../../../../etc/passwd")
    assert (dest / "data" / "blob.bin").read_bytes() == bytes(range(256))
    assert not (dest / ".git").exists()
    assert not os.path.lexists(index)


async def test_checkout_of_older_tag_omits_later_files(tmp_path: Path, rich_repo: GitRepo) -> None:
    """Checking out an older tag gives that tag's files only (a file deleted later is present)."""
    cache = GitCache(tmp_path / "cache.git", str(rich_repo.path))
    await cache.ensure()
    sha = await cache.fetch_tag("old")
    dest = tmp_path / "dest"
    dest.mkdir()
    await cache.checkout(sha, dest, tmp_path / "index.tmp")
    assert sorted(os.listdir(dest)) == ["README", "gone.txt"]
    assert (dest / "README").read_text() == "old\n"


async def test_checkout_of_unknown_commit_raises(cache: GitCache, tmp_path: Path) -> None:
    """Checking out a commit the cache does not have raises GitError and writes nothing."""
    await cache.ensure()
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(GitError):
        await cache.checkout("0" * 40, dest, tmp_path / "index.tmp")
    assert os.listdir(dest) == []


def _commit_with_unwritable_name(src: GitRepo) -> str:
    """Tag `long` in ``src``: a commit holding a file whose 300-byte name no Linux filesystem accepts."""

    def plumbing(*args: str, stdin: bytes) -> str:
        out = subprocess.run(["git", *args], cwd=src.path, input=stdin, capture_output=True, check=True)
        return out.stdout.decode().strip()

    blob = plumbing("hash-object", "-w", "--stdin", stdin=b"hi\n")
    tree = plumbing("mktree", stdin=f"100644 blob {blob}\tok.txt\n100644 blob {blob}\t{'a' * 300}\n".encode())
    commit = src.git("commit-tree", "-m", "long name", tree)
    src.git("tag", "long", commit)
    return commit


async def test_failed_checkout_raises_and_removes_index(tmp_path: Path) -> None:
    """A checkout that fails after read-tree wrote the index raises GitError and still removes the index."""
    src = await anyio.to_thread.run_sync(GitRepo, tmp_path / "src")
    sha = await anyio.to_thread.run_sync(_commit_with_unwritable_name, src)
    cache = GitCache(tmp_path / "cache.git", str(src.path))
    await cache.ensure()
    assert await cache.fetch_tag("long") == sha
    dest = tmp_path / "dest"
    dest.mkdir()
    index = tmp_path / "index.tmp"
    with pytest.raises(GitError):
        await cache.checkout(sha, dest, index)
    assert not os.path.lexists(index)


async def test_failed_checkout_error_names_the_git_command(tmp_path: Path) -> None:
    """The error of a failed checkout names the git subcommand that failed, not a global option."""
    src = await anyio.to_thread.run_sync(GitRepo, tmp_path / "src")
    sha = await anyio.to_thread.run_sync(_commit_with_unwritable_name, src)
    cache = GitCache(tmp_path / "cache.git", str(src.path))
    await cache.ensure()
    await cache.fetch_tag("long")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(GitError) as info:
        await cache.checkout(sha, dest, tmp_path / "index.tmp")
    assert info.value.message.startswith("git checkout-index failed: ")
    assert "unable to create file" in info.value.message


# ---------------------------------------------------------------------------------------- redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:secret@example.com/x.git", "https://***@example.com/x.git"),
        ("https://token@example.com/x.git", "https://***@example.com/x.git"),
        ("ssh://git@example.com:2222/x.git", "ssh://***@example.com:2222/x.git"),
        (
            "fatal: unable to access 'http://a:b@h1/x' or git+ssh://c:d@h2/y",
            "fatal: unable to access 'http://***@h1/x' or git+ssh://***@h2/y",
        ),
        ("https://example.com/x.git", "https://example.com/x.git"),
        ("https://example.com/users/a@b", "https://example.com/users/a@b"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("/srv/repos/app.git", "/srv/repos/app.git"),
        ("", ""),
    ],
)
def test_redact(text: str, expected: str) -> None:
    """redact hides the userinfo of URLs and leaves everything else alone."""
    assert redact(text) == expected


def test_redact_password_containing_at_sign() -> None:
    """A password with a literal '@' is hidden completely."""
    assert redact("https://user:p@ss@example.com/x.git") == "https://***@example.com/x.git"


# ---------------------------------------------------------------------------------------- stale locks


def _plant_locks(git_dir: Path) -> list[Path]:
    """The lock files a git killed while updating the cache leaves: shallow, packed-refs, a tag ref."""
    locks = [git_dir / "shallow.lock", git_dir / "packed-refs.lock", git_dir / "refs" / "tags" / "v2.lock"]
    for lock in locks:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("")
    return locks


async def test_a_stale_lock_makes_git_fail_and_start_up_removes_it(cache: GitCache) -> None:
    """A lock a killed fetch left (seen: shallow.lock after a superseded fetch) fails every later
    fetch; a daemon's start-up removes it, and the fetch works."""
    await cache.ensure()
    await cache.fetch_tag("v1")
    locks = _plant_locks(cache.git_dir)
    with pytest.raises(GitError, match=r"shallow\.lock"):
        await cache.fetch_tag("v2")
    with capture_logs() as logs:
        await GitCache(cache.git_dir, cache.repo, timeout=30).ensure()
    assert not any(lock.exists() for lock in locks)
    assert [e["locks"] for e in logs if e["event"] == "git_locks_removed"] == [
        ["packed-refs.lock", "refs/tags/v2.lock", "shallow.lock"]
    ]
    assert await cache.fetch_tag("v2")


async def test_a_cancelled_git_leaves_no_lock_behind(tmp_path: Path, hanging_port: int) -> None:
    """A fetch cancelled by a newer marker (its process group killed) takes its locks with it."""
    cache = GitCache(tmp_path / "cache.git", f"git://127.0.0.1:{hanging_port}/x.git", timeout=30)
    await cache.ensure()
    locks = _plant_locks(cache.git_dir)
    with anyio.move_on_after(0.5) as scope:
        await cache.fetch_tag("v2")
    assert scope.cancelled_caught
    assert not any(lock.exists() for lock in locks)


async def test_a_timed_out_git_leaves_no_lock_behind(tmp_path: Path, hanging_port: int) -> None:
    """A fetch killed by --git-timeout takes its locks with it: the next fetch is not refused."""
    cache = GitCache(tmp_path / "cache.git", f"git://127.0.0.1:{hanging_port}/x.git", timeout=0.5)
    await cache.ensure()
    locks = _plant_locks(cache.git_dir)
    with pytest.raises(GitError, match="timed out"):
        await cache.fetch_tag("v2")
    assert not any(lock.exists() for lock in locks)
