"""A deterministic synthetic git repository: many small files, two tags that differ in a few of them.

Identities, dates and contents are fixed, so the tags' commit ids are the same on every run (for a
given git object format); only git's version could change them.
"""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GIT_ENV", "SynthRepo", "build_repo", "git"]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}

_FILES_PER_DIR = 50


@dataclass(frozen=True, slots=True)
class SynthRepo:
    path: Path
    files: int
    changed: int
    tags: dict[str, str]  # tag -> commit sha
    bytes_total: int


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git in ``cwd`` with a fixed, isolated environment; return its stripped stdout."""
    out = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV, **(env or {})},
        check=True,
        capture_output=True,
    )
    return out.stdout.decode().strip()


def _rel(i: int) -> str:
    return f"app/pkg{i // _FILES_PER_DIR:02d}/mod{i:04d}.py"


def _content(i: int, version: int) -> bytes:
    rng = random.Random(i)  # same seed for both versions: a changed file differs by its last lines only
    lines = [f'"""Synthetic module {i}."""\n', "\n"]
    for j in range(rng.randint(8, 24)):
        lines.append(f"VALUE_{j} = {rng.randint(0, 10**9)}  # {'x' * rng.randint(0, 20)}\n")
    if version > 1:
        lines.append(f"\nPATCHED_IN = 'v{version}'\n")
    return "".join(lines).encode()


def build_repo(path: Path, files: int = 2000, changed: int = 100) -> SynthRepo:
    """Create the repository at ``path`` (which must not exist) with tags v1 and v2.

    ``files`` tracked files in total (one is ``VERSION``); v2 changes ``changed`` of them (the
    ``VERSION`` file and ``changed - 1`` modules spread evenly through the tree).
    """
    if files < 2 or not 1 <= changed <= files:
        raise ValueError("need files >= 2 and 1 <= changed <= files")
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    modules = files - 1
    stride = max(1, modules // max(1, changed - 1))
    patched = set(range(0, modules, stride)[: changed - 1])
    total = 0
    tags: dict[str, str] = {}
    for version in (1, 2):
        for i in range(modules):
            if version == 1 or i in patched:
                p = path / _rel(i)
                p.parent.mkdir(parents=True, exist_ok=True)
                data = _content(i, version)
                p.write_bytes(data)
                if version == 1:
                    total += len(data)
        (path / "VERSION").write_bytes(f"v{version}\n".encode())
        date = f"2024-01-0{version}T00:00:00+0000"
        env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        git(path, "add", "-A", env=env)
        git(path, "commit", "-q", "-m", f"version {version}", env=env)
        git(path, "tag", f"v{version}", env=env)
        tags[f"v{version}"] = git(path, "rev-parse", "HEAD")
    diff = git(path, "diff", "--name-only", "v1", "v2").splitlines()
    if len(diff) != changed:
        raise RuntimeError(f"synthetic repo: v1..v2 changes {len(diff)} files, expected {changed}")
    listed = git(path, "ls-files").splitlines()
    if len(listed) != files:
        raise RuntimeError(f"synthetic repo: {len(listed)} tracked files, expected {files}")
    return SynthRepo(path=path, files=files, changed=changed, tags=tags, bytes_total=total)
