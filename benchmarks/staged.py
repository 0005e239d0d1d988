"""Staged releases: ``deploy`` of a freshly staged release against a release already on disk.

``python -m benchmarks staged`` (also a section of ``python -m benchmarks run``; ``--skip staged``)
builds a chain repository (:mod:`benchmarks.repos`: tag ``base`` and ``deploys + 1`` new tags, each
changing ``changed`` files), starts the real daemon on a fresh ROOT, deploys ``base`` and the first
chain tag (the two releases on disk), then, ``deploys`` times, interleaved in the same daemon:

(a) a deploy of one of those two releases (alternating; marker written -> reload file touched, as the
    on-disk section of :mod:`benchmarks.run` measures it);
(b) a stage request for the next new tag (``ROOT/stage.request``, JSON ``{"tag", "id"}``, written by
    rename), a wait until the status file says it is staged (``stage.state`` ``staged`` for that id and
    ``staged.release`` its release, the daemon ``idle``), then the deploy of that tag, measured as (a).

Before every measured deploy the file systems are synced (so a deploy does not pay for the writeback
of the stage before it) and the driver pauses 20-70 ms (seeded jitter). The daemon runs with
``--keep`` larger than the number of releases, so the two on-disk releases are never pruned or
recycled. Reported: p50/p99 of (a) and (b) and the ratio of their p50s (the issue's target: <= 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import add_common_args, begin, dumps, finish_common_args, json_safe, loadavg, progress
from benchmarks.deploys import Deployer, DeployRecord
from benchmarks.harness import DaemonError, stop_all
from benchmarks.newtag import release_names
from benchmarks.repos import build_chain_repo, chain_tags
from benchmarks.session import Session, wait_status
from benchmarks.stats import summarize

__all__ = ["StagedOptions", "main", "measure", "render_section", "write_stage_request"]

HERE = Path(__file__).resolve().parent
#: the two kinds of measured deploy: (key, label)
#: phases a deploy of a release on disk does not run
_BUILD_PHASES = frozenset({"fetch", "prepare", "build", "publish"})
_KINDS = (("on_disk", "release already on disk"), ("staged", "release staged just before"))


@dataclass(frozen=True, slots=True)
class StagedOptions:
    deploys: int = 50  # deploys of each kind
    files: int = 2000
    changed: int = 100  # files each new tag changes
    seed: int = 20240101
    log_level: str = "info"
    timeout_s: float = 300.0

    @classmethod
    def quick(cls, seed: int = 20240101) -> StagedOptions:
        return cls(deploys=3, files=300, changed=10, seed=seed)


def write_stage_request(root: Path, text: str) -> None:
    """Write ROOT/stage.request atomically (temp file in ROOT, fsync, rename), as the marker is."""
    tmp = root / ".stage.request.bench-writing"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, root / "stage.request")


def _is_staged(st: dict[str, Any], rid: str, release: str) -> bool:
    stage, staged = st.get("stage"), st.get("staged")
    if not isinstance(stage, dict) or not isinstance(staged, dict):
        return False
    desired = stage.get("desired")
    return (
        st.get("state") == "idle"
        and stage.get("state") == "staged"
        and isinstance(desired, dict)
        and desired.get("id") == rid
        and staged.get("release") == release
    )


def _stage_failed(st: dict[str, Any], rid: str) -> bool:
    stage = st.get("stage")
    if not isinstance(stage, dict) or not isinstance(stage.get("desired"), dict):
        return False
    return stage["desired"].get("id") == rid and stage.get("state") in ("failed", "invalid")


def stage(root: Path, tag: str, release: str, rid: str, timeout_s: float) -> float:
    """Request ``tag`` staged and wait until the status file says so; returns the wait in ms."""
    t = time.monotonic()
    write_stage_request(root, json.dumps({"tag": tag, "id": rid}) + "\n")
    st = wait_status(root, lambda s: _is_staged(s, rid, release) or _stage_failed(s, rid), timeout_s)
    if not _is_staged(st, rid, release):
        raise DaemonError(f"stage {rid} of {tag} failed: {st.get('stage')}")
    return (time.monotonic() - t) * 1000


def _settle(drv: Deployer) -> None:
    os.sync()
    drv.pause(0)


def _row(rec: DeployRecord, kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "tag": rec.tag,
        "touch_ms": rec.ext_touch_seen,
        "swap_ms": rec.ext_swap,
        "status_idle_ms": rec.ext_status_idle,
        "detect_ms": rec.log_started,
        "phases_ms": rec.phase_ms,
    }


def _run(drv: Deployer, root: Path, tags: Sequence[str], opt: StagedOptions, prog: Callable[[str], None]) -> Any:
    pair, new = tags[:2], tags[2:]
    rows: list[dict[str, Any]] = []
    stage_ms: list[float] = []
    for i, tag in enumerate(new):
        if i % 10 == 0:
            prog(f"staged: deploys {i + 1}-{min(i + 10, len(new))} of {len(new)} of each kind")
        _settle(drv)
        rows.append(_row(drv.deploy(pair[i % 2], timeout_s=opt.timeout_s), "on_disk"))
        rid = f"bench-stage-{drv.daemon.pid}-{i:05d}"
        stage_ms.append(stage(root, tag, drv.releases[tag], rid, opt.timeout_s))
        _settle(drv)
        rows.append(_row(drv.deploy(tag, timeout_s=opt.timeout_s), "staged"))
    return rows, stage_ms


def measure(work: Path, opt: StagedOptions, prog: Callable[[str], None] = progress) -> dict[str, Any]:
    """Run the section in ``work`` (an existing, empty directory); returns its results."""
    started = time.monotonic()
    prog(f"staged: generating a {opt.files}-file repository with {opt.deploys + 2} tags")
    repo = build_chain_repo(work / "repo.git", opt.files, chain_tags([opt.changed], opt.deploys + 1, opt.files))
    releases = release_names(repo)
    tags = [t for t, _ in repo.chain]
    root = work / "root"
    root.mkdir()
    keep = ["--keep", str(len(tags) + 2)]  # nothing pruned or recycled: the on-disk pair stays
    session = Session(
        root,
        repo.path,
        work / "daemon-staged.log",
        releases,
        step_ms=None,
        log_level=opt.log_level,
        seed=opt.seed,
        observer_sleep_s=0.0,
        extra_args=keep,
    )
    load_start = loadavg()
    with session as drv:
        prog("staged: first deploys of the two on-disk releases")
        for tag in tags[:2]:
            drv.deploy(tag, timeout_s=opt.timeout_s)
        rows, stage_ms = _run(drv, root, tags, opt, prog)
        anomalies = drv.anomalies
    return summarize_rows(
        rows,
        stage_ms,
        config={**asdict(opt), "keep": len(tags) + 2},
        repo={"files": repo.files, "changed": opt.changed, "tags": len(tags)},
        extra={
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "duration_s": time.monotonic() - started,
            "anomalies": sorted({str(a.get("event")) for a in anomalies}),
        },
    )


def summarize_rows(
    rows: Sequence[dict[str, Any]],
    stage_ms: Sequence[float],
    *,
    config: dict[str, Any],
    repo: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The section's results from its per-deploy rows: both distributions and the ratio of p50s."""
    dist = {
        kind: summarize([float(r["touch_ms"]) for r in rows if r["kind"] == kind and r["touch_ms"] is not None])
        for kind, _ in _KINDS
    }
    detect = {
        kind: summarize([float(r["detect_ms"]) for r in rows if r["kind"] == kind and r["detect_ms"] is not None])
        for kind, _ in _KINDS
    }
    on_disk, staged = dist["on_disk"], dist["staged"]
    return {
        "config": config,
        "repo": repo,
        "on_disk": on_disk.to_dict(),
        "staged": staged.to_dict(),
        "detect": {k: v.to_dict() for k, v in detect.items()},
        "stage_wait_ms": summarize(stage_ms).to_dict(),
        # deploys of a staged release that ran a build phase: the release was not found on disk
        "staged_rebuilt": sum(1 for r in rows if r["kind"] == "staged" and _BUILD_PHASES & set(r["phases_ms"])),
        "ratio_p50": staged.p50 / on_disk.p50 if on_disk.n and staged.n and on_disk.p50 > 0 else None,
        "ratio_p99": staged.p99 / on_disk.p99 if on_disk.n and staged.n and on_disk.p99 > 0 else None,
        **extra,
        "samples": list(rows),
    }


def _f(v: Any, nd: int = 2) -> str:
    return f"{v:,.{nd}f}" if isinstance(v, int | float) else "-"


def render_section(r: dict[str, Any], level: int = 2) -> str:
    """The Markdown section of a :func:`measure` result."""
    h = "#" * level
    cfg, repo = r["config"], r["repo"]
    out = [
        f"{h} Staged releases: deploy of a release staged just before against one already on disk",
        "",
        f"One daemon, one ROOT, a chain repository of {repo['files']:,} files ({repo['tags']} tags, each new tag "
        f"changing {repo['changed']}); {cfg['deploys']} deploys of each kind, interleaved: a deploy of one of two "
        "releases on disk (alternating), then a stage request for a new tag (`ROOT/stage.request`), a wait until "
        "the status file says `staged`, and the deploy of that tag. Before each measured deploy: `sync` and a "
        f"20-70 ms pause. `--keep {cfg['keep']}` (nothing pruned or recycled). Load average "
        f"{r['loadavg_start']} at the start, {r['loadavg_end']} at the end.",
        "",
        "| marker -> reload file touched (outside), ms | p50 | p90 | p99 | max | n |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, label in _KINDS:
        s = r[kind]
        out.append(f"| {label} | {_f(s['p50'])} | {_f(s['p90'])} | {_f(s['p99'])} | {_f(s['max'])} | {s['n']} |")
    out += [
        "",
        f"Ratio staged / on disk: p50 **{_f(r['ratio_p50'], 3)}**, p99 {_f(r['ratio_p99'], 3)}. Detection "
        f"(marker -> `deploy_started`) p50: on disk {_f(r['detect']['on_disk']['p50'])} ms, staged "
        f"{_f(r['detect']['staged']['p50'])} ms. Stage request -> status `staged` (polled every 10 ms): p50 "
        f"{_f(r['stage_wait_ms']['p50'], 0)} ms.",
    ]
    if r.get("staged_rebuilt"):
        out.append(f"{r['staged_rebuilt']} deploys of a staged release fetched or prepared it again (not on disk).")
    if r.get("anomalies"):
        out.append(f"Warning or error events in the daemon log: {', '.join(r['anomalies'])}.")
    out.append("")
    return "\n".join(out)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = StagedOptions()
    p = argparse.ArgumentParser(prog="python -m benchmarks staged", description=__doc__.split("\n\n")[0])
    p.add_argument("--deploys", type=int, default=None, help=f"deploys of each kind (default {d.deploys})")
    p.add_argument("--files", type=int, default=None, help=f"files in the repository (default {d.files})")
    p.add_argument("--changed", type=int, default=None, help=f"files each new tag changes (default {d.changed})")
    p.add_argument("--log-level", default=d.log_level, help=f"the daemon's log level (default {d.log_level})")
    add_common_args(p, keep_what="repository, ROOT, daemon log", quick_what="a smoke run on a tiny repository")
    args = p.parse_args(argv)
    finish_common_args(args, HERE / "results")
    base = StagedOptions.quick(args.seed) if args.quick else StagedOptions(seed=args.seed)
    given = {k: getattr(args, k) for k in ("deploys", "files", "changed") if getattr(args, k) is not None}
    args.options = StagedOptions(**(asdict(base) | given | {"log_level": args.log_level}))
    o = args.options
    if o.deploys < 1 or o.files < 2 or not 1 <= o.changed <= o.files:
        p.error("need --deploys >= 1, --files >= 2 and 1 <= --changed <= --files")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    work = begin("coordinator-bench-staged-", args.tmp_dir, stop_all)
    if work is None:
        return 2
    try:
        results: dict[str, Any] = json_safe(measure(work, args.options))
    except KeyboardInterrupt:
        print(f"interrupted; work directory {work}", file=sys.stderr)
        return 130
    except Exception:
        args.keep_tmp = True
        print(f"benchmark failed; repository, ROOT and daemon log kept in {work}", file=sys.stderr)
        raise
    finally:
        stop_all()
        if not args.keep_tmp:
            shutil.rmtree(work, ignore_errors=True)
    results["date"] = datetime.now().strftime("%Y-%m-%d")
    report = f"# coordinator benchmark: staged releases, {results['date']}\n\n" + render_section(results)
    if args.write:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        base = args.results_dir / f"{results['date']}-staged"
        base.with_name(base.name + ".json").write_text(dumps(results) + "\n")
        base.with_name(base.name + ".md").write_text(report)
        progress(f"wrote {base}.json and {base}.md")
    sys.stdout.write(report)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
