"""A deterministic repository with a long history, written in one ``git fast-import`` stream: the
source of the shallow-fetch benchmark (:mod:`benchmarks.gitsource`).

NetBox-sized in spirit: ``commits`` commits on ``main``, each changing ``touched`` of ``files`` small
Python-like modules (``src/...``), and ``tags`` annotated release tags spread evenly along the history
(the last one on the last commit). Each release commit also rewrites ``binaries`` incompressible
files of ``binary_bytes`` each (``assets/bundle-N.bin``: built assets, images, fixtures), so the
whole history is much larger than any one tree, as in a real project whose releases carry generated
or binary files.

Identities, dates and contents are fixed: the commit ids are the same on every run. The repository is
bare, packed by ``git repack -a -d`` (as a hosted repository would be) and read through a ``file://``
URL, so a fetch goes through git's pack protocol (``upload-pack`` on the other side) rather than a
local clone's hard links.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.synth import GIT_ENV, git

__all__ = ["HistoryRepo", "build_history_repo", "disk_bytes"]

_EPOCH = 1577836800  # 2020-01-01T00:00:00Z
_FILES_PER_DIR = 40


@dataclass(frozen=True, slots=True)
class HistoryRepo:
    path: Path  # a bare repository
    url: str  # its file:// URL
    files: int  # text files in every tree
    commits: int
    touched: int  # text files each commit after the first changes
    binaries: int
    binary_bytes: int  # size of each binary file
    tags: list[str]  # release tags, oldest first
    shas: dict[str, str]  # tag -> commit
    tree_bytes: int  # the files of one tree (the newest tag), uncompressed
    disk_bytes: int  # the packed repository on disk (objects and refs)
    build_s: float


def disk_bytes(path: Path) -> int:
    """Space ``path``'s files take on disk (``du``: allocated blocks), symlinks not followed."""
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def _path(i: int) -> str:
    return f"src/app{i // (_FILES_PER_DIR * 25):02d}/mod{(i // _FILES_PER_DIR) % 25:02d}/f{i:05d}.py"


def _text(i: int, rev: int) -> bytes:
    """About 1.3 KB of deterministic text; revision ``rev`` changes its header and two of its lines."""
    x = (i * 2654435761 + 12345) & 0xFFFFFFFF
    lines = [f"# revision {rev}\n", f'"""Module {i}."""\n', "\n"]
    for j in range(10 + x % 50):
        v = (x * (j + 1) * 40503 + (rev if j % 7 == rev % 7 else 0)) % 1_000_000_007
        lines.append(f"VALUE_{j} = {v}  # {'x' * ((x >> (j % 24)) % 16)}\n")
    return "".join(lines).encode()


def _blob(path: str, data: bytes) -> bytes:
    return f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n"


def build_history_repo(
    path: Path,
    *,
    files: int = 3000,
    commits: int = 300,
    tags: int = 30,
    touched: int = 20,
    binaries: int = 2,
    binary_bytes: int = 2 * 1024 * 1024,
) -> HistoryRepo:
    """Create the bare repository ``path`` (must not exist); see the module's docstring."""
    if files < 1 or commits < 1 or not 1 <= tags <= commits or touched < 1 or binaries < 0 or binary_bytes < 1:
        raise ValueError("need files, commits, touched, binary_bytes >= 1, 1 <= tags <= commits, binaries >= 0")
    started = time.monotonic()
    git(path.parent, "init", "-q", "--bare", "-b", "main", str(path))
    paths = [_path(i) for i in range(files)]
    # release k (1..tags) is on commit round(k * commits / tags): the last one on the last commit
    release_at = {round(k * commits / tags): k for k in range(1, tags + 1)}
    rev = [0] * files
    rng = random.Random(20201)
    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet"], cwd=path, stdin=subprocess.PIPE, env={**os.environ, **GIT_ENV}
    )
    assert proc.stdin is not None
    out = proc.stdin
    names: list[str] = []
    try:
        for c in range(1, commits + 1):
            ts = _EPOCH + c * 3600
            release = release_at.get(c)
            msg = (f"release {release}\n" if release else f"change {c}\n").encode()
            out.write(
                f"commit refs/heads/main\nmark :{c}\n"
                f"author dev <dev@example.invalid> {ts} +0000\ncommitter dev <dev@example.invalid> {ts} +0000\n"
                f"data {len(msg)}\n".encode()
                + msg
                + (f"from :{c - 1}\n".encode() if c > 1 else b"")
            )
            changed = range(files) if c == 1 else sorted(rng.sample(range(files), min(touched, files)))
            buf = []
            for i in changed:
                rev[i] = c
                buf.append(_blob(paths[i], _text(i, c)))
                if len(buf) >= 512:
                    out.write(b"".join(buf))
                    buf.clear()
            out.write(b"".join(buf))
            if c == 1 or release:  # binaries: new incompressible contents at every release
                for b in range(binaries):
                    out.write(_blob(f"assets/bundle-{b}.bin", random.Random(c * 1000 + b).randbytes(binary_bytes)))
            out.write(b"\n")
            if release:
                name = f"v1.{release}.0"
                names.append(name)
                tmsg = f"Release {name}\n".encode()
                out.write(
                    f"tag {name}\nfrom :{c}\ntagger dev <dev@example.invalid> {ts} +0000\ndata {len(tmsg)}\n".encode()
                    + tmsg
                    + b"\n"
                )
        out.close()
    finally:
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"git fast-import failed with {rc}")
    # pack it as a server would hold it (one pack, deltas found); binaries are random: no delta search
    (path / "info").mkdir(exist_ok=True)
    (path / "info" / "attributes").write_text("*.bin -delta\n")
    git(path, "repack", "-a", "-d", "-q")
    git(path, "prune-packed")
    shas: dict[str, str] = {}
    fmt = "%(refname:strip=2) %(*objectname)"
    for line in git(path, "for-each-ref", f"--format={fmt}", "refs/tags").splitlines():
        name, sha = line.split()
        shas[name] = sha
    if set(shas) != set(names):
        raise RuntimeError(f"history repo: tags {sorted(shas)} != {names}")
    tree_bytes = sum(len(_text(i, rev[i])) for i in range(files)) + binaries * binary_bytes
    return HistoryRepo(
        path=path,
        url=path.resolve().as_uri(),
        files=files,
        commits=commits,
        touched=touched,
        binaries=binaries,
        binary_bytes=binary_bytes,
        tags=names,
        shas={t: shas[t] for t in names},
        tree_bytes=tree_bytes,
        disk_bytes=disk_bytes(path),
        build_s=time.monotonic() - started,
    )
