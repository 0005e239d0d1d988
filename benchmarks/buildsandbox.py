"""Preparing and building a new release with a build command: sandboxed incremental vs full checkout.

``python -m benchmarks.buildsandbox [--files 10000] [--changed 100] [--rounds 7]`` makes a synthetic
repository (v1 -> v2 changing ``--changed`` files), and for each mode deploys v1 then v2 through an
in-process Deployer with a build command, ``rounds`` times (v2's release removed between rounds);
it prints the median prepare and build phases of v2 and the ratio sandboxed/full. The modes:
``--build-sandbox auto`` (hard-linked incremental, the build on an overlay) and ``off`` (a full
checkout, the build in place). The build appends to a tracked file and writes one new file.

Also a section of ``python -m benchmarks run`` (``--skip buildsandbox``): :func:`run_for_report` and
:func:`render_section`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import json_safe
from benchmarks.synth import build_repo
from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.layout import Layout

BUILD = "echo '# built' >> VERSION && echo built > BUILT"


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


async def measure(work: Path, files: int, changed: int, rounds: int) -> dict[str, Any]:
    """Both modes in ``work`` (an existing, empty directory)."""
    repo = await anyio.to_thread.run_sync(build_repo, work / "repo", files, changed)
    out: dict[str, Any] = {"files": files, "changed": changed, "rounds": rounds}
    for mode in ("auto", "off"):
        out[mode] = await run_mode(repo.path, work, mode, rounds)
    out["ratio_total"] = out["auto"]["total_ms"] / out["off"]["total_ms"]
    return out


async def main(files: int, changed: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-buildsandbox-") as tmp:
        return await measure(Path(tmp), files, changed, rounds)


def run_for_report(quick: bool, tmp_dir: Path | None = None, keep_tmp: bool = False) -> dict[str, Any]:
    """What ``benchmarks.run`` calls: measure in a fresh work directory (removed unless ``keep_tmp``)."""
    work = Path(tempfile.mkdtemp(prefix="coordinator-bench-buildsandbox-", dir=tmp_dir))
    try:
        result: dict[str, Any] = json_safe(anyio.run(measure, work, *(QUICK if quick else REPORT)))
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
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--changed", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(json.dumps(anyio.run(main, args.files, args.changed, args.rounds), indent=2))
