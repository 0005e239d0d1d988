"""Deterministic synthetic repositories for new-tag deploys, written in one ``git fast-import`` stream.

A repository of ``files`` Python-like modules has a chain of tags::

    base -> c10-1 -> ... -> c10-R -> c100-1 -> ... -> c100-R -> c1000-1 -> ... -> c1000-R

where each ``c<N>-<r>`` commit changes ``N`` files of its parent (spread evenly through the tree, a
different set for every tag). Deploying the tags in this order makes every deploy a new tag whose
difference from the release before it is exactly ``N`` files.

Every file's first line names the version that last wrote it (``# version: c100-3``), so a reader
can tell which version of the tree it read, and whether it read a mix (see :mod:`benchmarks.torn`).
Identities, dates and contents are fixed: the commit ids are the same on every run.

Writing through ``fast-import`` (no work tree, no index) builds a 50,000-file repository in a few
seconds. Repositories are cached in a :class:`RepoCache` for the length of one benchmark run.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.synth import GIT_ENV, git

__all__ = ["WARMUP_PREFIX", "ChainRepo", "RepoCache", "build_chain_repo", "chain_tags", "is_warmup"]

_FILES_PER_DIR = 50
_DIRS_PER_PKG = 50
_EPOCH = 1704067200  # 2024-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class ChainRepo:
    path: Path  # a bare repository
    files: int
    paths: list[str]  # every tracked path, in git's (byte) order
    chain: list[tuple[str, int]]  # (tag, files changed from the previous tag), in order; first ("base", files)
    changed: dict[str, list[int]]  # tag -> indices (into ``paths``) of the files it changed
    tags: dict[str, str]  # tag -> commit sha
    bytes_total: int  # of the base tree
    build_s: float

    def labels_at(self, tag: str) -> list[str]:
        """The version label of every file (same order as ``paths``) in the tree of ``tag``."""
        labels = ["base"] * self.files
        if tag == "base":
            return labels
        for t, _n in self.chain[1:]:
            for i in self.changed[t]:
                labels[i] = t
            if t == tag:
                return labels
        raise KeyError(tag)


#: warm-up tags (``w-1`` ...) come first in the chain: deployed untimed, they bring a daemon to the state
#: it is in after a while in production (``--keep`` releases on disk, a retired one in the spare)
WARMUP_PREFIX = "w-"
WARMUP_CHANGED = 10


def chain_tags(changes: Sequence[int], reps: int, files: int, warmup: int = 0) -> list[tuple[str, int]]:
    """The chain (after ``base``): ``warmup`` tags changing ``WARMUP_CHANGED`` files, then ``reps``
    tags per change size, sizes larger than ``files`` dropped."""
    warm = [(f"{WARMUP_PREFIX}{r}", min(WARMUP_CHANGED, files)) for r in range(1, warmup + 1)]
    return [*warm, *((f"c{c}-{r}", c) for c in changes if c <= files for r in range(1, reps + 1))]


def is_warmup(tag: str) -> bool:
    """A warm-up tag (:data:`WARMUP_PREFIX`): deployed, never timed."""
    return tag.startswith(WARMUP_PREFIX)


def _path(i: int) -> str:
    pkg = i // (_FILES_PER_DIR * _DIRS_PER_PKG)
    sub = (i // _FILES_PER_DIR) % _DIRS_PER_PKG
    return f"src/pkg{pkg:02d}/sub{sub:02d}/mod{i:05d}.py"


def _content(i: int, label: str) -> bytes:
    """About 1.3 KB of deterministic text (10 to 59 lines), the label on the first line."""
    x = (i * 2654435761 + 12345) & 0xFFFFFFFF
    lines = [f"# version: {label}\n", f'"""Synthetic module {i}."""\n', "\n"]
    for j in range(10 + x % 50):
        v = (x * (j + 1) * 40503) % 1_000_000_007
        lines.append(f"VALUE_{j} = {v}  # {'x' * ((x >> (j % 24)) % 16)}\n")
    return "".join(lines).encode()


def _pick(files: int, count: int, salt: int) -> list[int]:
    """``count`` distinct indices spread evenly through ``range(files)``, offset by ``salt``."""
    if count >= files:
        return list(range(files))
    stride = files / count
    offset = (salt * 7919) % max(1, int(stride))
    return sorted({(offset + int(k * stride)) % files for k in range(count)})


def build_chain_repo(path: Path, files: int, chain: Sequence[tuple[str, int]]) -> ChainRepo:
    """Create the bare repository ``path`` (must not exist) with tag ``base`` and the ``chain`` tags."""
    if files < 1:
        raise ValueError("files must be >= 1")
    started = time.monotonic()
    git(path.parent, "init", "-q", "--bare", str(path))
    paths = [_path(i) for i in range(files)]
    if paths != sorted(paths, key=os.fsencode):
        raise AssertionError("synthetic paths must be generated in git's order")
    changed: dict[str, list[int]] = {}
    total = 0
    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet"],
        cwd=path,
        stdin=subprocess.PIPE,
        env={**os.environ, **GIT_ENV},
    )
    assert proc.stdin is not None
    out = proc.stdin

    def commit(mark: int, tag: str, indices: Sequence[int]) -> int:
        ts = _EPOCH + mark * 60
        msg = f"version {tag}\n".encode()
        head = [
            b"commit refs/heads/main\n",
            f"mark :{mark}\n".encode(),
            f"author bench <bench@example.invalid> {ts} +0000\n".encode(),
            f"committer bench <bench@example.invalid> {ts} +0000\n".encode(),
            f"data {len(msg)}\n".encode() + msg,
        ]
        if mark > 1:
            head.append(f"from :{mark - 1}\n".encode())
        out.write(b"".join(head))
        size = 0
        buf: list[bytes] = []
        for i in indices:
            data = _content(i, tag)
            size += len(data)
            buf.append(f"M 100644 inline {paths[i]}\ndata {len(data)}\n".encode() + data + b"\n")
            if len(buf) >= 1024:
                out.write(b"".join(buf))
                buf.clear()
        out.write(b"".join(buf) + b"\n" + f"reset refs/tags/{tag}\nfrom :{mark}\n\n".encode())
        return size

    try:
        total = commit(1, "base", range(files))
        for k, (tag, count) in enumerate(chain, start=1):
            if tag in changed or tag == "base":
                raise ValueError(f"duplicate tag {tag}")
            changed[tag] = _pick(files, count, k)
            commit(k + 1, tag, changed[tag])
        out.close()
    finally:
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"git fast-import failed with {rc}")
    git(path, "symbolic-ref", "HEAD", "refs/heads/main")
    tags: dict[str, str] = {}
    for line in git(path, "for-each-ref", "--format=%(refname:strip=2) %(objectname)", "refs/tags").splitlines():
        name, sha = line.split()
        tags[name] = sha
    full = [("base", files), *chain]
    if set(tags) != {t for t, _ in full}:
        raise RuntimeError(f"synthetic repo: tags {sorted(tags)} != {[t for t, _ in full]}")
    prev = "base"
    for tag, count in chain:  # check the claim every figure depends on
        n = len(git(path, "diff", "--name-only", prev, tag).splitlines())
        if n != count:
            raise RuntimeError(f"synthetic repo: {prev}..{tag} changes {n} files, expected {count}")
        prev = tag
    return ChainRepo(
        path=path,
        files=files,
        paths=paths,
        chain=full,
        changed=changed,
        tags={t: tags[t] for t, _ in full},
        bytes_total=total,
        build_s=time.monotonic() - started,
    )


class RepoCache:
    """Repositories built once per run, keyed by file count (all with the same chain of tags)."""

    def __init__(self, directory: Path, changes: Sequence[int], reps: int, warmup: int = 0) -> None:
        self.dir = directory
        self.changes = list(changes)
        self.reps = reps
        self.warmup = warmup
        self._repos: dict[int, ChainRepo] = {}

    def get(self, files: int) -> ChainRepo:
        repo = self._repos.get(files)
        if repo is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            repo = build_chain_repo(
                self.dir / f"repo-{files}", files, chain_tags(self.changes, self.reps, files, self.warmup)
            )
            self._repos[files] = repo
        return repo
