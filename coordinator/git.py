"""The git cache: a bare repository in the state directory, driven through the ``git`` command.

Every call has a timeout and runs with ``GIT_TERMINAL_PROMPT=0`` (a git server asking for a password
fails instead of hanging). A tag reaches git only as ``refs/tags/<tag>`` after ``--end-of-options`` or
in a refspec after ``--``, and only once :func:`coordinator.marker.validate_tag` accepted it, so marker
text can never become a git option. Credentials in repository URLs are redacted from every message.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from coordinator.exceptions import GitError, TagNotFoundError
from coordinator.gitenv import GitEnv
from coordinator.gittree import TreeCommands, last_line, redact
from coordinator.proc import GroupResult, run_in_group

if TYPE_CHECKING:
    from coordinator.config import Config

__all__ = ["GitCache", "redact", "remove_git_temporaries", "remove_stale_locks"]

log = structlog.get_logger("coordinator.git")

_SHA40_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class GitCache(TreeCommands):
    """A bare repository that caches the tags we deploy, plus checkouts from it."""

    #: :meth:`tidy` runs ``git gc`` only when the cache grew past twice its size after the last gc
    #: and past this many KiB (a gc of a small cache is not worth a deploy's time)
    gc_min_kib = 1024

    def __init__(
        self,
        git_dir: Path,
        repo: str,
        timeout: float = 300.0,
        *,
        depth: int = 1,
        username: str | None = None,
        password_file: Path | None = None,
        env_dir: Path | None = None,
        ssh_key_file: Path | None = None,
        ssh_known_hosts_file: Path | None = None,
    ) -> None:
        self.git_dir = git_dir
        self.repo = repo
        self.timeout = timeout
        self.depth = depth
        self.remote_env = GitEnv(
            repo,
            username,
            password_file,
            env_dir,
            ssh_key_file=ssh_key_file,
            ssh_known_hosts_file=ssh_known_hosts_file,
        )
        self._gc_baseline_kib: int | None = None  # the cache's size after the last gc (None: none yet)
        # tag -> commit, as last resolved or fetched. The cache only changes through fetch_tag, so
        # remembering it is exact, and saves a git process on every deploy of a release on disk.
        self._known: dict[str, str] = {}

    @classmethod
    def from_config(cls, config: Config, *, writes_state: bool = True) -> GitCache:
        """The cache of ``config``'s repository in its state directory, with its git options.
        ``writes_state=False`` (``coordinator check``): the files git needs to read the repository
        (askpass script, config) go to a private temporary directory instead of ``.coordinator/gitenv``."""
        return cls(
            config.layout.git_dir,
            config.repo,
            config.git_timeout,
            depth=config.depth,
            username=config.username,
            password_file=config.password_file,
            env_dir=config.layout.state_dir / "gitenv" if writes_state else None,
            ssh_key_file=config.ssh_key_file,
            ssh_known_hosts_file=config.ssh_known_hosts_file,
        )

    async def _git(
        self,
        args: Sequence[str],
        *,
        limit_s: float | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        max_output: int = 64 * 1024,
        stdin: bytes | None = None,
    ) -> GroupResult:
        cmd = ["git", f"--git-dir={self.git_dir}", *args]
        name = _subcommand(args)
        full_env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "false",
            "LC_ALL": "C",
            **(env or {}),
        }
        limit = limit_s or self.timeout
        started = time.monotonic()
        try:
            result = await run_in_group(cmd, limit_s=limit, env=full_env, max_output=max_output, stdin=stdin)
        except OSError as e:
            raise GitError(f"cannot run git: {e}", fix="install git and make sure it is on PATH") from e
        except BaseException:  # cancelled (a newer marker, SIGTERM): its process group was killed
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_stale_locks, self.git_dir)
            raise
        if result.timed_out:
            await anyio.to_thread.run_sync(remove_stale_locks, self.git_dir)
            raise GitError(
                f"git {name} timed out after {limit:g} s",
                fix="check that the repository is reachable, or raise --git-timeout",
                repo=redact(self.repo),
            )
        rc = result.returncode if result.returncode is not None else -1
        log.debug("git", cmd=name, rc=rc, duration_ms=round((time.monotonic() - started) * 1000, 1))
        if check and rc != 0:
            message, fix = self._failure(name, result.stderr)
            raise GitError(message, fix=fix, repo=redact(self.repo), rc=rc)
        return result

    def _failure(self, name: str, stderr: bytes) -> tuple[str, str]:
        """The message and fix for git ``name`` that failed with ``stderr``: ssh's cause when ssh
        failed, else git's most useful line."""
        ssh = self.remote_env.ssh_failure(stderr)
        if ssh is not None:
            return f"git {name} failed: {redact(ssh[0])}", ssh[1]
        err = redact(last_line(stderr))
        fix = _volume_fix(stderr, self.git_dir) or "check --repo and that the repository is reachable"
        return f"git {name} failed: {err}", fix

    async def ensure(self) -> None:
        """Create the bare cache repository if it does not exist yet; remove the temporary files and
        lock files of a git that was killed (a crash, kill -9, a power loss)."""
        if await anyio.Path(self.git_dir / "HEAD").exists():
            removed = await anyio.to_thread.run_sync(remove_git_temporaries, self.git_dir)
            await anyio.to_thread.run_sync(remove_stale_locks, self.git_dir)
            if removed:
                log.info("git_leftovers_removed", paths=removed)
            return
        await anyio.Path(self.git_dir.parent).mkdir(parents=True, exist_ok=True)
        try:
            with anyio.fail_after(self.timeout):
                await anyio.run_process(["git", "init", "--bare", "-q", str(self.git_dir)], umask=0o022)
        except (subprocess.CalledProcessError, OSError, TimeoutError) as e:
            raise GitError(f"cannot create the git cache in {self.git_dir}: {e}", fix="check ROOT is writable") from e

    async def resolve(self, tag: str) -> str | None:
        """The commit the cached tag points to (annotated tags peeled), or None if not cached."""
        if tag in self._known:
            return self._known[tag]
        result = await self._git(
            ["rev-parse", "-q", "--verify", "--end-of-options", f"refs/tags/{tag}^{{commit}}"], check=False
        )
        sha = result.stdout.decode("ascii", "replace").strip()
        if result.returncode != 0 or not _SHA40_RE.fullmatch(sha):
            return None
        self._known[tag] = sha
        return sha

    async def fetch_tag(self, tag: str) -> str:
        """Fetch one tag from the repository (force-updating a moved tag); return its commit."""
        ref = f"refs/tags/{tag}"
        before = await self.resolve(tag)
        self._known.pop(tag, None)
        opts, env = await self.remote_env.remote()
        depth = [f"--depth={self.depth}"] if self.depth else await self._unshallow()
        try:
            result = await self._git(
                [*opts, "fetch", "--no-tags", "--no-write-fetch-head", "-q", *depth, "--", self.repo, f"+{ref}:{ref}"],
                env=env,
                check=False,
            )
        except BaseException:  # timed out or cancelled: git was killed mid-write
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_git_temporaries, self.git_dir)
            raise
        if result.returncode != 0:
            # a failed fetch leaves its partly written objects behind (on a full volume: all the space)
            await anyio.to_thread.run_sync(remove_git_temporaries, self.git_dir)
            err = redact(last_line(result.stderr))
            if "couldn't find remote ref" in err:
                raise TagNotFoundError(
                    f"tag {tag!r} not found in the repository",
                    fix="push the tag, or fix the marker",
                    tag=tag,
                    repo=redact(self.repo),
                )
            message, fix = self._failure("fetch", result.stderr)
            raise GitError(message, fix=fix, repo=redact(self.repo), tag=tag)
        after = await self.resolve(tag)
        if after is None:
            raise GitError(f"tag {tag!r} was fetched but does not point to a commit", fix="tag a commit", tag=tag)
        if before is not None and before != after:
            log.warning("tag_moved", tag=tag, old_sha=before, new_sha=after)
        return after

    async def read_tag(self, tag: str) -> tuple[str, str, bytes] | None:
        """The object ``refs/tags/<tag>`` names in the cache: (object id, type, content), None if the
        tag is not cached. The name goes to git on stdin (``cat-file --batch``), never as an argument."""
        result = await self._git(["cat-file", "--batch"], stdin=f"refs/tags/{tag}\n".encode(), max_output=1024 * 1024)
        head, _, rest = result.stdout.partition(b"\n")
        fields = head.decode("ascii", "replace").split()
        if len(fields) != 3 or not _SHA40_RE.fullmatch(fields[0]) or not fields[2].isdigit():
            return None
        return fields[0], fields[1], rest[: int(fields[2])]

    async def verify_tag(self, oid: str, config: Sequence[str], env: Mapping[str, str]) -> str:
        """The output of ``git verify-tag --raw`` of tag object ``oid`` (a hex id, never a name), run
        with the ``-c`` options ``config`` and ``env`` (the signature's verdict is in the text)."""
        if not _SHA40_RE.fullmatch(oid):
            raise GitError(f"not an object id: {oid[:80]!r}", fix="report this bug")
        result = await self._git([*config, "verify-tag", "--raw", oid], env=env, check=False)
        return (result.stderr + result.stdout).decode("utf-8", "replace")

    async def remote_tags(self) -> dict[str, str]:
        """Every tag of the repository with its commit (annotated tags peeled), by ``git ls-remote``:
        nothing is fetched or written. Raises GitError (with the fix) when the repository cannot be read."""
        opts, env = await self.remote_env.remote()
        result = await self._git([*opts, "ls-remote", "--tags", "--", self.repo], env=env, max_output=_LS_REMOTE_MAX)
        tags: dict[str, str] = {}
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            sha, _, ref = line.partition("\t")
            name = ref.removeprefix("refs/tags/")
            if name == ref or not _SHA40_RE.fullmatch(sha):
                continue
            if name.endswith("^{}"):  # the commit an annotated tag points to
                tags[name[:-3]] = sha
            else:
                tags.setdefault(name, sha)
        return tags

    async def _unshallow(self) -> list[str]:
        """``--unshallow`` when the cache is shallow (a full-history fetch after shallow ones), else nothing."""
        return ["--unshallow"] if await anyio.Path(self.git_dir / "shallow").exists() else []

    # ------------------------------------------------------------------ keeping the cache small

    async def tidy(self, needed: Collection[str]) -> list[str]:
        """Delete the cached tags not in ``needed`` (the tags of the releases on disk) and, when the
        cache grew to more than twice its size after the last gc, drop what no tag reaches any more
        (``git reflog expire`` and ``git gc --prune=now``). Returns the deleted tags.

        Only call it while no other git command writes the cache (the deployer, between deploys)."""
        listed = await self._git(["for-each-ref", "--format=%(refname)", "refs/tags/"], max_output=_LS_REMOTE_MAX)
        refs = listed.stdout.decode("utf-8", "replace").splitlines()
        doomed = [r for r in refs if r.removeprefix("refs/tags/") not in needed]
        if doomed:
            script = "".join(f"delete {r}\n" for r in doomed).encode()
            await self._git(["update-ref", "--stdin"], stdin=script)
            for r in doomed:
                self._known.pop(r.removeprefix("refs/tags/"), None)
        size = await self._size_kib()
        if self._gc_baseline_kib is None or size > max(2 * self._gc_baseline_kib, self.gc_min_kib):
            started = time.monotonic()
            await self._git(["reflog", "expire", "--expire=now", "--all"])
            await self._git(["-c", "gc.auto=0", "gc", "--prune=now", "--quiet"])
            self._gc_baseline_kib = await self._size_kib()
            log.debug(  # not info: a deploy logs one info line per phase
                "git_cache_collected",
                before_kib=size,
                after_kib=self._gc_baseline_kib,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
        return [r.removeprefix("refs/tags/") for r in doomed]

    async def _size_kib(self) -> int:
        """The cache's objects in KiB (loose and packed), from ``git count-objects -v``."""
        result = await self._git(["count-objects", "-v"])
        fields = dict(ln.partition(": ")[::2] for ln in result.stdout.decode("ascii", "replace").splitlines())
        try:
            return int(fields.get("size", "0")) + int(fields.get("size-pack", "0"))
        except ValueError:
            return 0


#: the most ``git ls-remote --tags`` output kept (about 100,000 tags)
_LS_REMOTE_MAX = 8 * 1024 * 1024


def _subcommand(args: Sequence[str]) -> str:
    """The git subcommand in ``args``, skipping global options (``-c k=v``, ``--work-tree=...``)."""
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "-c":
            skip = True
        elif not a.startswith("-"):
            return a
    return "?"


def _volume_fix(stderr: bytes, git_dir: Path) -> str | None:
    """The fix for a git failure caused by the volume (full, over quota, read-only), or None."""
    text = stderr.decode("utf-8", "replace")
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return f"free space on the volume holding {git_dir} (df -h); coordinator retries on the next event or resync"
    if "Read-only file system" in text:
        return f"the volume holding {git_dir} is mounted read-only: mount it read-write"
    return None


#: temporary files git writes while fetching, relative to the objects directory: loose objects being
#: written, packs and indexes being received, quarantine directories
_GIT_TEMPORARIES = ("??/tmp_obj_*", "pack/tmp_*", "incoming-*")


def remove_git_temporaries(git_dir: Path) -> list[str]:
    """Remove what a failed or killed git fetch left in the cache's ``objects/`` (blocking); only call
    it while no git command runs on the cache. Returns the removed paths, relative to ``git_dir``."""
    objects = git_dir / "objects"
    removed = []
    for pattern in _GIT_TEMPORARIES:
        for p in objects.glob(pattern):
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except FileNotFoundError:
                continue
            removed.append(str(p.relative_to(git_dir)))
    return sorted(removed)


def remove_stale_locks(git_dir: Path) -> list[str]:
    """Remove the lock files a killed git left in the cache (blocking); their names, relative.

    git takes ``shallow.lock``, ``packed-refs.lock``, ``refs/.../NAME.lock`` and others while it
    updates the repository, and removes them when it ends; a git killed by its process group (a fetch
    superseded by a newer marker, or over ``--git-timeout``) leaves them, and every later fetch then
    fails with "Unable to create '...lock': File exists". Only called once the git that ran is gone:
    coordinator runs one git at a time on its cache, under ROOT's lock.
    """
    removed: list[str] = []
    candidates = list(git_dir.glob("*.lock"))
    refs = git_dir / "refs"
    if refs.is_dir():
        candidates += list(refs.rglob("*.lock"))
    for lock in candidates:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
            removed.append(str(lock.relative_to(git_dir)))
    if removed:
        log.info("git_locks_removed", locks=sorted(removed))
    return removed
