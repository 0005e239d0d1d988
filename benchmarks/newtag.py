"""New-tag deploys: preparation time against repository size and change size, with baselines.

For every repository size (a :mod:`benchmarks.repos` chain repository):

1. **First deploys** (no previous release), ``first_reps`` times, each on a fresh ROOT with a fresh
   daemon: marker -> reloaded end to end, and the daemon's ``prepare`` phase (a full checkout).
   Interleaved, in the same run: ``git worktree add --detach`` of the same tag, ``git archive | tar -x``
   into an empty directory, and ``cp -al`` of the release just built (the floor of any approach that
   links every file).
2. **New-tag deploys** through the last of those daemons, walking the chain ``c10-1 .. c1000-R``: each
   deploy is a tag not yet fetched, differing from the current release in exactly N files.
   Interleaved, in the same run: in-place ``git checkout -f`` of the same tag in a plain clone that
   walks the same chain (the old way).

Every figure is the median over the repetitions; every ratio compares medians taken in the same run.

Nothing is deleted while measuring (the work directory is removed at the end of the whole run), and the
file system is synced before each timed operation: on ext4 without a journal (this machine's root file
system) every inode freed within the last 60 s (360 s while its inode-table block is dirty) is skipped by
inode allocation, one buffer look-up each, so creating files right after a large ``rm -rf`` is several
times slower; timing anything after a deletion would measure the deletion, not the method.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.deploys import Deployer, DeployRecord
from benchmarks.repos import ChainRepo, RepoCache, is_warmup
from benchmarks.session import Session
from benchmarks.stats import summarize
from benchmarks.synth import GIT_ENV, git

__all__ = ["NewTagOptions", "release_names", "run_newtag", "timed"]

#: observer poll interval for deploys that take seconds (a spinning observer would steal a core)
OBSERVER_SLEEP_S = 0.0005
_CHECKOUT = ["git", "-c", "advice.detachedHead=false", "checkout", "-q", "-f"]
#: repositories larger than this get ``first_reps_large`` first deploys (each one takes seconds)
LARGE = 10_000


@dataclass(frozen=True, slots=True)
class NewTagOptions:
    sizes: list[int]
    changes: list[int]
    reps: int
    first_reps: int  # first deploys per size up to LARGE files
    first_reps_large: int  # first deploys per larger size
    seed: int
    log_level: str = "debug"  # the `git` events (durations of the git processes) are logged at debug
    timeout_s: float = 600.0


def release_names(repo: ChainRepo) -> dict[str, str]:
    from coordinator.marker import release_name

    return {tag: release_name(tag, sha) for tag, sha in repo.tags.items()}


def _env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


def timed(args: Sequence[str], cwd: Path) -> float:
    """Wall time (ms) of one command, process start included."""
    t = time.perf_counter_ns()
    subprocess.run(list(args), cwd=cwd, env=_env(), check=True, capture_output=True)
    return (time.perf_counter_ns() - t) / 1e6


def timed_archive(clone: Path, tag: str, dest: Path) -> float:
    """Wall time (ms) of ``git archive tags/<tag> | tar -x -C dest`` (both processes, no shell)."""
    t = time.perf_counter_ns()
    archive = subprocess.Popen(
        ["git", "archive", "--format=tar", f"tags/{tag}"], cwd=clone, env=_env(), stdout=subprocess.PIPE
    )
    try:
        tar = subprocess.run(["tar", "-x", "-f", "-", "-C", str(dest)], stdin=archive.stdout, capture_output=True)
    finally:
        if archive.stdout is not None:
            archive.stdout.close()
        rc = archive.wait()
    ms = (time.perf_counter_ns() - t) / 1e6
    if rc != 0 or tar.returncode != 0:
        raise RuntimeError(f"git archive | tar failed ({rc}, {tar.returncode}): {tar.stderr.decode()[-300:]}")
    return ms


def settle() -> None:
    """Write back everything dirty before a timed operation, so it does not pay for its predecessors."""
    os.sync()


def _med(values: Sequence[float]) -> float:
    return summarize(values).p50


def _sd(values: Sequence[float]) -> dict[str, Any]:
    return summarize(values).to_dict()


def _check_tree(tree: Path, repo: ChainRepo, tag: str) -> None:
    """Spot-check that ``tree`` holds ``tag`` (the first and the last file of the tree, and one it changed)."""
    labels = repo.labels_at(tag)
    idx = {0, repo.files - 1, *repo.changed.get(tag, [])[:1]}
    for i in sorted(idx):
        with open(tree / repo.paths[i], "rb") as f:
            first = f.readline().decode().strip()
        if first != f"# version: {labels[i]}":
            raise RuntimeError(f"{tree}: {repo.paths[i]} says {first!r}, expected version {labels[i]} of {tag}")


def _record(rec: DeployRecord) -> dict[str, Any]:
    return {
        "tag": rec.tag,
        "e2e_ms": rec.ext_touch_seen,
        "swap_ms": rec.ext_swap,
        "status_idle_ms": rec.ext_status_idle,
        "detect_ms": rec.log_started,
        "fetch_ms": rec.phase_ms.get("fetch"),
        "prepare_ms": rec.phase_ms.get("prepare"),
        "publish_ms": rec.phase_ms.get("publish"),
        "swap_phase_ms": rec.phase_ms.get("swap"),
        "reload_phase_ms": rec.phase_ms.get("reload"),
        "prune_ms": rec.phase_ms.get("prune"),
        "prepare": rec.prepare_stats,
        "prepare_git_ms": rec.prepare_git_ms,
        "prepare_git_total_ms": sum(rec.prepare_git_ms.values()) if rec.prepare_git_ms else None,
    }


def _vals(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]


def _first_round(drv: Deployer, clone: Path, wt: Path, ar: Path, r: int, timeout_s: float) -> dict[str, Any]:
    """Tag ``base`` by the daemon (first deploy), ``git worktree add`` and ``git archive | tar``, in an
    order rotated on every repetition ``r`` (so that caches and writeback favour no method)."""
    row: dict[str, Any] = {}
    ar.mkdir(parents=True)

    def ours() -> None:
        settle()
        row.update(_record(drv.deploy("base", timeout_s=timeout_s)))

    def worktree() -> None:
        settle()
        row["worktree_add_ms"] = timed(["git", "worktree", "add", "-q", "--detach", str(wt), "tags/base"], clone)

    def archive() -> None:
        settle()
        row["archive_tar_ms"] = timed_archive(clone, "base", ar)

    steps = [ours, worktree, archive]
    for step in steps[r % 3 :] + steps[: r % 3]:
        step()
    return row


def _chain_step(drv: Deployer, clone: Path, tag: str, count: int, k: int, timeout_s: float) -> dict[str, Any]:
    """New tag ``tag`` by the daemon and by in-place ``git checkout -f``, in alternating order."""
    row: dict[str, Any] = {"changed": count}

    def ours() -> None:
        row["spare_ready_ms"] = drv.wait_spare()  # the background readying, before the timed marker
        settle()
        drv.pause(3)
        row.update(_record(drv.deploy(tag, timeout_s=timeout_s)))

    def checkout_f() -> None:
        settle()
        row["checkout_f_ms"] = timed([*_CHECKOUT, f"tags/{tag}"], clone)

    for step in (ours, checkout_f) if k % 2 else (checkout_f, ours):
        step()
    return row


def run_size(
    work: Path, repo: ChainRepo, opt: NewTagOptions, progress: Callable[[str], None]
) -> tuple[dict[str, Any], list[str]]:
    """Measure one repository size; returns its results and notes."""
    releases = release_names(repo)
    notes: list[str] = []
    size = repo.files
    base_dir = work / f"newtag-{size}"
    base_dir.mkdir()
    clone = base_dir / "clone"
    git(base_dir, "clone", "-q", "--no-checkout", str(repo.path), str(clone))
    subprocess.run([*_CHECKOUT, "tags/base"], cwd=clone, env=_env(), check=True, capture_output=True)
    scratch = base_dir / "scratch"
    first: list[dict[str, Any]] = []
    chain: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        drv = None
        session: Session | None = None
        first_reps = opt.first_reps if size <= LARGE else opt.first_reps_large
        for r in range(first_reps):
            if session is not None:  # only the last daemon goes on to the new-tag deploys
                stack.close()  # its ROOT stays until the end of the run (see the module's docstring)
            root = base_dir / f"root{r}"
            root.mkdir()
            session = Session(
                root,
                repo.path,
                base_dir / f"daemon{r}.log",
                releases,
                step_ms=None,
                log_level=opt.log_level,
                seed=opt.seed + r,
                observer_sleep_s=OBSERVER_SLEEP_S,
            )
            drv = stack.enter_context(session)
            progress(f"{size} files: first deploy {r + 1}/{first_reps} (fresh ROOT and daemon)")
            wt, ar = scratch / f"wt{r}", scratch / f"ar{r}"
            row = _first_round(drv, clone, wt, ar, r, opt.timeout_s)
            if row["prepare"].get("mode") != "full":
                notes.append(f"{size} files: first deploy prepared as {row['prepare']}")
            release = root / "releases" / releases["base"]
            for tree in (release, wt, ar):
                _check_tree(tree, repo, "base")
            cp = scratch / f"cp{r}"
            settle()
            row["cp_al_ms"] = timed(["cp", "-al", str(release), str(cp)], base_dir)
            first.append(row)
        assert drv is not None
        warm = [tag for tag, _ in repo.chain[1:] if is_warmup(tag)]
        if warm:
            progress(f"{size} files: {len(warm)} warm-up deploys (untimed: --keep releases and a spare)")
        for tag in warm:
            drv.deploy(tag, timeout_s=opt.timeout_s)
        for k, (tag, count) in enumerate(repo.chain[1:], start=1):
            if is_warmup(tag):
                continue
            if is_warmup(repo.chain[k - 1][0]) or count != repo.chain[k - 1][1]:
                progress(f"{size} files: new tags changing {count} files ({opt.reps} deploys)")
            link = _chain_step(drv, clone, tag, count, k, opt.timeout_s)
            if link["prepare"].get("mode") not in ("spare", "recycled", "incremental"):
                expected = "expected spare, recycled or incremental"
                notes.append(f"{size} files, {tag}: prepared as {link['prepare']} ({expected})")
            chain.append(link)
        assert session is not None
        current = session.root / "current"
        _check_tree(current, repo, repo.chain[-1][0])
        _check_tree(clone, repo, repo.chain[-1][0])
        anomalies = drv.anomalies
    if anomalies:
        kinds = sorted({str(a.get("event")) for a in anomalies})
        notes.append(f"{size} files: {len(anomalies)} warning/error events in the daemon log: {', '.join(kinds)}")
    return _summarize_size(repo, first, chain), notes


def _git_breakdown(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the git processes' durations inside the prepare phase (total, and by command)."""
    cmds = sorted({c for r in rows for c in r.get("prepare_git_ms") or {}})
    return {
        "total_ms": _sd(_vals(rows, "prepare_git_total_ms")),
        "by_cmd_p50_ms": {c: _med([r["prepare_git_ms"].get(c, 0.0) for r in rows]) for c in cmds},
    }


def _summarize_size(repo: ChainRepo, first: list[dict[str, Any]], chain: list[dict[str, Any]]) -> dict[str, Any]:
    f_prep = _vals(first, "prepare_ms")
    f_wt = _vals(first, "worktree_add_ms")
    out: dict[str, Any] = {
        "files": repo.files,
        "bytes": repo.bytes_total,
        "repo_build_s": repo.build_s,
        "first": {
            "n": len(first),
            "e2e_ms": _sd(_vals(first, "e2e_ms")),
            "fetch_ms": _sd(_vals(first, "fetch_ms")),
            "prepare_ms": _sd(f_prep),
            "prepare_git": _git_breakdown(first),
            "publish_ms": _sd(_vals(first, "publish_ms")),
            "worktree_add_ms": _sd(f_wt),
            "archive_tar_ms": _sd(_vals(first, "archive_tar_ms")),
            "cp_al_ms": _sd(_vals(first, "cp_al_ms")),
            "ratio_prepare_to_worktree": _med(f_prep) / _med(f_wt) if f_wt else None,
            "samples": first,
        },
        "cells": [],
    }
    for count in sorted({int(r["changed"]) for r in chain}):
        rows = [r for r in chain if r["changed"] == count]
        prep, co = _vals(rows, "prepare_ms"), _vals(rows, "checkout_f_ms")
        e2e = _vals(rows, "e2e_ms")
        modes = sorted({str(r["prepare"].get("mode")) for r in rows})
        out["cells"].append(
            {
                "files": repo.files,
                "changed": count,
                "n": len(rows),
                "e2e_ms": _sd(e2e),
                "fetch_ms": _sd(_vals(rows, "fetch_ms")),
                "prepare_ms": _sd(prep),
                "prepare_git": _git_breakdown(rows),
                "publish_ms": _sd(_vals(rows, "publish_ms")),
                "prune_ms": _sd(_vals(rows, "prune_ms")),
                "spare_ready_ms": _sd(_vals(rows, "spare_ready_ms")),
                "checkout_f_ms": _sd(co),
                "ratio_prepare_to_checkout": _med(prep) / _med(co) if prep and co else None,
                "ratio_e2e_to_checkout": _med(e2e) / _med(co) if e2e and co else None,
                "prepare_modes": modes,
                "linked": _sd([float(r["prepare"].get("linked", 0)) for r in rows]).get("p50"),
                "written": _sd([float(r["prepare"].get("written") or 0) for r in rows]).get("p50"),
                "samples": rows,
            }
        )
    return out


def run_newtag(work: Path, cache: RepoCache, opt: NewTagOptions, progress: Callable[[str], None]) -> dict[str, Any]:
    sizes: list[dict[str, Any]] = []
    notes: list[str] = []
    for size in opt.sizes:
        progress(f"new-tag deploys: generating the {size}-file repository (or reusing it)")
        repo = cache.get(size)
        res, n = run_size(work, repo, opt, progress)
        sizes.append(res)
        notes += n
    return {
        "config": {
            "sizes": opt.sizes,
            "changes": opt.changes,
            "reps": opt.reps,
            "first_reps": opt.first_reps,
            "first_reps_large": opt.first_reps_large,
        },
        "sizes": sizes,
        "notes": notes,
    }
