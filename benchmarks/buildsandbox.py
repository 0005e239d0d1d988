"""Preparing and building a new release with a build command: sandboxed incremental vs full checkout.

``python -m benchmarks.buildsandbox [--files 10000] [--changed 100] [--rounds 7]`` makes a synthetic
repository (v1 -> v2 changing ``--changed`` files), and for each mode deploys v1 then v2 through an
in-process Deployer with a build command, ``rounds`` times (v2's release removed between rounds);
it prints the median prepare and build phases of v2 and the ratio sandboxed/full. The modes:
``--build-sandbox auto`` (hard-linked incremental, the build on an overlay) and ``off`` (a full
checkout, the build in place). The build appends to a tracked file and writes one new file.

**Steady state, from the spare** (``--steady``; also in the section of ``make bench``): for each cell
(files, changed) of :data:`STEADY_CELLS`, a :mod:`benchmarks.repos` chain repository (each tag changes
exactly N files of the one before) is deployed tag after tag by an in-process Deployer with the trivial
build :data:`TRIVIAL_BUILD` (``--keep 3``, the build in the sandbox); before each deploy the idle pass
readies the spare (untimed), as the daemon does. The first :data:`WARMUP` tags of each cell are not
timed (they fill the spare); each timed deploy's ``prepare`` phase is compared, in the same run and
in alternating order, with an in-place ``git checkout -f`` of the same tag in a clone walking the same
chain. The issue's targets for it are :func:`benchmarks.targets.build_targets`.

Also a section of ``python -m benchmarks run`` (``--skip buildsandbox``): :func:`run_for_report` and
:func:`render_section`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from structlog.testing import capture_logs

from benchmarks.common import json_safe
from benchmarks.repos import build_chain_repo, chain_tags
from benchmarks.synth import GIT_ENV, build_repo, git
from benchmarks.targets import build_targets
from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.layout import Layout

BUILD = "echo '# built' >> VERSION && echo built > BUILT"


#: the git commands a preparation runs (which of them, depends on how the release is prepared)
_PREPARE_GIT = ("diff-tree", "read-tree", "update-index", "checkout-index")


async def _deploy(d: Deployer, root: Path, tag: str) -> dict[str, float]:
    await anyio.to_thread.run_sync((root / "deploy.request").write_text, tag)
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success", attempt
    return dict(attempt.phases)


async def run_mode(repo: Path, work: Path, mode: str, rounds: int) -> dict[str, Any]:
    root = work / f"volume-{mode}"
    root.mkdir()
    cfg = Config(layout=Layout.for_root(root), repo=str(repo), build_command=BUILD, build_sandbox=mode, keep=10)
    d = Deployer(cfg)
    await d.startup()
    why_not = await anyio.to_thread.run_sync(d.store.sandbox.unavailable)  # probed at start-up: cached
    await _deploy(d, root, "v1")
    prepare, build = [], []
    for _ in range(rounds):
        phases = await _deploy(d, root, "v2")
        prepare.append(phases["prepare"])
        build.append(phases["build"])
        await _deploy(d, root, "v1")  # on disk: a swap only
        for p in (root / "releases").iterdir():  # v2 built again next round
            if p.name.startswith("v2-") and p.is_dir():
                await anyio.to_thread.run_sync(shutil.rmtree, p)
                (root / "releases" / f"{p.name}.json").unlink()
                (root / ".coordinator" / "releases" / f"{p.name}.json").unlink()
    return {
        "sandboxed": why_not is None,
        "not_sandboxed_because": None if why_not is None else " ".join(w for w in why_not if w),
        "prepare_ms": statistics.median(prepare),
        "build_ms": statistics.median(build),
        "total_ms": statistics.median(p + b for p, b in zip(prepare, build, strict=True)),
    }


#: (files, changed, rounds) of the section of ``python -m benchmarks run``, and with ``--quick``
REPORT = (10_000, 100, 5)
QUICK = (300, 10, 2)

#: the steady state's build: one small untracked file, so that the build's own cost is tiny
TRIVIAL_BUILD = "echo built > BUILT"
#: untimed deploys at the start of each cell: with --keep 3 the fourth retires a release into the spare
WARMUP = 4
#: (files, changed) of the steady state: the issue's targets (and 1k/10 for growth); timed deploys each
STEADY_CELLS = ((1000, 10), (10_000, 10), (10_000, 100), (50_000, 10))
STEADY_REPS = 5
QUICK_STEADY_CELLS, QUICK_STEADY_REPS = ((300, 10), (1000, 10)), 2
_CHECKOUT = ("git", "-c", "advice.detachedHead=false", "checkout", "-q", "-f")


def _settle() -> None:
    """Write back everything dirty before a timed operation (it must not pay for its predecessors)."""
    os.sync()


def _checkout_f(clone: Path, tag: str) -> float:
    """Wall time (ms) of an in-place ``git checkout -f`` of ``tag`` in ``clone``, process start included."""
    t = time.perf_counter_ns()
    subprocess.run([*_CHECKOUT, f"tags/{tag}"], cwd=clone, env={**os.environ, **GIT_ENV}, check=True)
    return (time.perf_counter_ns() - t) / 1e6


async def _deploy_stats(d: Deployer, root: Path, tag: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Deploy ``tag``; its phases and its ``prepare_stats`` event."""
    await anyio.to_thread.run_sync((root / "deploy.request").write_text, tag)
    with capture_logs() as logs:
        attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success", attempt
    stats = next((dict(e) for e in logs if e["event"] == "prepare_stats"), {})
    # the git processes of preparation (from the spare: diff-tree, then update-index and checkout-index
    # of the changed entries through a temporary index), summed by command
    git_ms: dict[str, float] = {}
    for e in logs:
        if e["event"] == "git" and e.get("cmd") in _PREPARE_GIT:
            git_ms[str(e["cmd"])] = git_ms.get(str(e["cmd"]), 0.0) + float(e["duration_ms"])
    stats["git_ms"] = git_ms
    return dict(attempt.phases), stats


async def steady_cell(work: Path, files: int, changed: int, reps: int) -> dict[str, Any]:
    """One cell of the steady state (see the module)."""
    here = work / f"steady-{files}-{changed}"
    here.mkdir()
    chain = chain_tags([changed], WARMUP + reps, files)
    repo = await anyio.to_thread.run_sync(build_chain_repo, here / "repo", files, chain)
    clone = here / "clone"
    await anyio.to_thread.run_sync(lambda: git(here, "clone", "-q", "--no-checkout", str(repo.path), str(clone)))
    await anyio.to_thread.run_sync(_checkout_f, clone, "base")
    root = here / "volume"
    root.mkdir()
    cfg = Config(layout=Layout.for_root(root), repo=str(repo.path), build_command=TRIVIAL_BUILD, keep=3)
    d = Deployer(cfg)
    await d.startup()
    why_not = await anyio.to_thread.run_sync(d.store.sandbox.unavailable)
    await _deploy_stats(d, root, "base")
    rows: list[dict[str, Any]] = []
    for k, (tag, _count) in enumerate(chain):
        t = time.perf_counter_ns()
        with capture_logs():  # quiet
            await d.ready_spare()  # the daemon's idle pass
        row: dict[str, Any] = {"tag": tag, "ready_ms": (time.perf_counter_ns() - t) / 1e6}

        async def ours(tag: str = tag, row: dict[str, Any] = row) -> None:
            await anyio.to_thread.run_sync(_settle)
            phases, stats = await _deploy_stats(d, root, tag)
            row.update(prepare_ms=phases["prepare"], build_ms=phases.get("build"), mode=stats.get("mode"))
            row["prepare_git_ms"] = sum(stats["git_ms"].values())

        async def theirs(tag: str = tag, row: dict[str, Any] = row) -> None:
            await anyio.to_thread.run_sync(_settle)
            row["checkout_f_ms"] = await anyio.to_thread.run_sync(_checkout_f, clone, tag)

        for step in (ours, theirs) if k % 2 else (theirs, ours):
            await step()
        if k >= WARMUP:
            rows.append(row)
    prep, co = [r["prepare_ms"] for r in rows], [r["checkout_f_ms"] for r in rows]
    return {
        "files": files,
        "changed": changed,
        "n": len(rows),
        "sandboxed": why_not is None,
        "not_sandboxed_because": None if why_not is None else " ".join(w for w in why_not if w),
        "prepare_ms": statistics.median(prep),
        "checkout_f_ms": statistics.median(co),
        "ratio_prepare_to_checkout": statistics.median(prep) / statistics.median(co),
        "ready_ms": statistics.median(r["ready_ms"] for r in rows),
        "prepare_git_ms": statistics.median(r["prepare_git_ms"] for r in rows),
        "modes": sorted({str(r["mode"]) for r in rows}),
        "samples": rows,
    }


async def measure_steady(work: Path, cells: tuple[tuple[int, int], ...], reps: int) -> dict[str, Any]:
    """Every cell of the steady state in ``work`` (an existing, empty directory)."""
    out = [await steady_cell(work, files, changed, reps) for files, changed in cells]
    return {"build": TRIVIAL_BUILD, "warmup": WARMUP, "reps": reps, "cells": out}


async def measure(work: Path, files: int, changed: int, rounds: int) -> dict[str, Any]:
    """Both modes in ``work`` (an existing, empty directory)."""
    repo = await anyio.to_thread.run_sync(build_repo, work / "repo", files, changed)
    out: dict[str, Any] = {"files": files, "changed": changed, "rounds": rounds}
    for mode in ("auto", "off"):
        out[mode] = await run_mode(repo.path, work, mode, rounds)
    out["ratio_total"] = out["auto"]["total_ms"] / out["off"]["total_ms"]
    return out


async def main(files: int, changed: int, rounds: int, steady: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-buildsandbox-") as tmp:
        if steady:
            return await measure_steady(Path(tmp), STEADY_CELLS, STEADY_REPS)
        return await measure(Path(tmp), files, changed, rounds)


async def _report(work: Path, quick: bool) -> dict[str, Any]:
    out = await measure(work, *(QUICK if quick else REPORT))
    steady = work / "steady"
    steady.mkdir()
    out["steady"] = await measure_steady(
        steady, *((QUICK_STEADY_CELLS, QUICK_STEADY_REPS) if quick else (STEADY_CELLS, STEADY_REPS))
    )
    return out


def run_for_report(quick: bool, tmp_dir: Path | None = None, keep_tmp: bool = False) -> dict[str, Any]:
    """What ``benchmarks.run`` calls: measure in a fresh work directory (removed unless ``keep_tmp``)."""
    work = Path(tempfile.mkdtemp(prefix="coordinator-bench-buildsandbox-", dir=tmp_dir))
    try:
        result: dict[str, Any] = json_safe(anyio.run(_report, work, quick))
        return result
    except Exception:
        keep_tmp = True
        print(f"build sandbox benchmark failed; work directory kept in {work}", file=sys.stderr)
        raise
    finally:
        if not keep_tmp:
            shutil.rmtree(work, ignore_errors=True)


def render_section(r: dict[str, Any], level: int = 2) -> str:
    """The Markdown section of a :func:`measure` result."""
    rows = [
        ("sandboxed incremental (`--build-sandbox auto`)", r["auto"]),
        ("full checkout, build in place (`--build-sandbox off`)", r["off"]),
    ]
    out = [
        f"{'#' * level} Build command: sandboxed incremental preparation against a full checkout",
        "",
        f"A synthetic repository of {r['files']:,} files, v1 -> v2 changing {r['changed']}; an in-process "
        f"Deployer with the build command `{BUILD}` deploys v2 (v2's release removed between rounds) and v1 "
        f"again, {r['rounds']} rounds per mode; medians of v2's phases.",
        "",
        "| mode | prepare ms | build ms | prepare + build ms |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {label} | {m['prepare_ms']:,.1f} | {m['build_ms']:,.1f} | {m['total_ms']:,.1f} |" for label, m in rows),
        "",
        f"Ratio sandboxed / full (prepare + build): **{r['ratio_total']:.3f}**.",
        "",
    ]
    if not r["auto"].get("sandboxed", True):
        out += [
            "The build sandbox was **not available** on this machine "
            f"({r['auto'].get('not_sandboxed_because')}): both modes were full checkouts built in place, "
            "so the ratio says nothing about the sandbox.",
            "",
        ]
    if r.get("steady"):
        out += _render_steady(r["steady"], level + 1)
    return "\n".join(out)


def _render_steady(st: dict[str, Any], level: int) -> list[str]:
    """The steady state's part of the section, with the issue's targets for it."""
    out = [
        f"{'#' * level} Steady state with a build command: preparation from the spare against `git checkout -f`",
        "",
        f"Each cell a chain repository (every tag changes exactly N files of the one before), deployed tag after "
        f"tag with the build `{st['build']}` in the sandbox and `--keep 3`, the spare readied before each deploy "
        f"(untimed, as the idle daemon does); {st['warmup']} warm-up deploys, then {st['reps']} timed, each "
        "against an in-place `git checkout -f` of the same tag in a clone walking the same chain (alternating "
        "order); medians.",
        "",
        "| files | changed | prepare ms | checkout -f ms | ratio | readying ms | modes |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *(
            f"| {c['files']:,} | {c['changed']} | {c['prepare_ms']:,.1f} | {c['checkout_f_ms']:,.1f} | "
            f"{c['ratio_prepare_to_checkout']:.2f} | {c['ready_ms']:,.1f} | {', '.join(c['modes'])} |"
            for c in st["cells"]
        ),
        "",
    ]
    verdicts = {True: "met", False: "**not met**", None: "not measured"}
    for t in build_targets(st):
        why = f" ({t['why']})" if t.get("why") else ""
        figure = f": {t['figure']}" if t["met"] is not None else ""
        out.append(f"- Target: {t['target']}: {verdicts[t['met']]}{figure}.{why}")
    return [*out, ""]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--changed", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steady", action="store_true", help="the steady state from the spare instead (its cells)")
    args = ap.parse_args()
    print(json.dumps(json_safe(anyio.run(main, args.files, args.changed, args.rounds, args.steady)), indent=2))
