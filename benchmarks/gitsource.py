"""Shallow fetches (issue 13): the git cache with ``--depth 1`` (the default) against the whole history
(``--depth 0``), ``python -m benchmarks gitsource`` (also a section of ``python -m benchmarks run``).

Source: a generated repository with a long history (:mod:`benchmarks.history`: by default 300 commits,
3,000 text files, 30 release tags, two 2 MiB binary files rewritten at every release), packed, read
through a ``file://`` URL so that every fetch goes through git's pack protocol (``upload-pack`` packs
the objects, ``index-pack`` receives them) as from a real server; a plain path would let git take
local shortcuts.

It drives the real daemon (``python -m coordinator run --depth N`` as a subprocess, markers written
as an operator would), not :class:`coordinator.git.GitCache` alone: a deploy's fetch, the cache's
``tidy`` after it (which drops the tags no release on disk needs and runs ``git gc`` once the cache
has doubled since its last gc) and the release's checkout are then exactly what a server does. It
keeps one daemon running for a series rather than ``run --once`` per tag: each ``--once`` process
would start without the size of the last gc and collect at every deploy, which the daemon does not do.

Measured in the same run, depth 1 and depth 0 alternating (which one goes first rotates):

1. **first deploy** of the newest tag on a fresh ROOT (``reps`` times each): marker -> reload file
   touched (the new version is live), marker -> status ``idle`` (the deploy done, tidy included), the
   daemon's ``fetch`` phase, and the cache's size on disk afterwards (``du`` of ``ROOT/.coordinator/git``);
2. **a series**: one daemon per depth, both running, deploy the tag ``series`` releases before the
   newest, then the ``series`` newer tags one after another; the cache's size after each deploy (the
   last and the largest are reported);
3. **a new tag into a cache holding the previous one**: the ``fetch`` phase of each deploy of the
   series (its median).

Ratios are depth 1 / full, of medians taken in this run. Everything generated lives in the work
directory, removed at the end (kept with ``--keep-tmp`` or on a failure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_common_args,
    begin,
    cmd_out,
    cpu_model,
    dumps,
    finish_common_args,
    json_safe,
    loadavg,
    progress,
)
from benchmarks.deploys import Deployer, DeployRecord
from benchmarks.harness import stop_all
from benchmarks.history import HistoryRepo, build_history_repo, disk_bytes
from benchmarks.report import _f, _table
from benchmarks.session import Session
from benchmarks.stats import summarize

__all__ = ["GitSourceOptions", "main", "measure", "render_section", "run_for_report"]

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
DEPTHS = (1, 0)  # 0: the whole history
OBSERVER_SLEEP_S = 0.0005  # deploys take seconds: a spinning observer would steal a core
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GitSourceOptions:
    files: int = 3000
    commits: int = 300
    tags: int = 30
    touched: int = 20  # text files changed per commit
    binaries: int = 2
    binary_kib: int = 2048
    series: int = 20  # new tags deployed in a row after the series' first deploy
    reps: int = 3  # first deploys per depth
    seed: int = 20240101
    timeout_s: float = 600.0

    @classmethod
    def quick(cls, seed: int = 20240101) -> GitSourceOptions:
        """A smoke run: a small repository, a short series, one first deploy per depth."""
        return cls(files=200, commits=30, tags=6, touched=5, binaries=1, binary_kib=64, series=3, reps=1, seed=seed)


def _label(depth: int) -> str:
    return "full" if depth == 0 else f"depth {depth}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b


def _row(rec: DeployRecord, depth: int, cache: int) -> dict[str, Any]:
    return {
        "depth": depth,
        "tag": rec.tag,
        "e2e_ms": rec.ext_touch_seen,
        "idle_ms": rec.ext_status_idle,
        "fetch_ms": rec.phase_ms.get("fetch"),
        "prepare_ms": rec.phase_ms.get("prepare"),
        "prune_ms": rec.phase_ms.get("prune"),
        "cache_bytes": cache,
    }


def _med(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]
    p50 = summarize(vals).p50
    return p50 if math.isfinite(p50) else None


def _gc_runs(log: Path) -> int:
    """``git gc`` runs of the cache a daemon logged (its debug event ``git_cache_collected``)."""
    count = 0
    with open(log, "rb") as f:
        for line in f:
            with contextlib.suppress(ValueError):
                if json.loads(line).get("event") == "git_cache_collected":
                    count += 1
    return count


class _Run:
    """One measurement run: the repository, the release names, fresh ROOTs and daemons."""

    def __init__(self, work: Path, repo: HistoryRepo, opt: GitSourceOptions) -> None:
        from coordinator.marker import release_name

        self.work = work
        self.repo = repo
        self.opt = opt
        self.releases = {tag: release_name(tag, sha) for tag, sha in repo.shas.items()}
        self.anomalies: list[str] = []

    def session(self, name: str, depth: int) -> Session:
        root = self.work / name
        root.mkdir()
        return Session(
            root,
            self.repo.url,
            self.work / f"{name}.log",
            self.releases,
            step_ms=None,
            log_level="debug",  # the cache's gc runs are logged at debug
            seed=self.opt.seed + depth,
            observer_sleep_s=OBSERVER_SLEEP_S,
            extra_args=["--depth", str(depth)],
        )

    def deploy(self, drv: Deployer, depth: int, tag: str) -> dict[str, Any]:
        from coordinator.layout import Layout

        drv.pause(3)
        _settle()
        rec = drv.deploy(tag, timeout_s=self.opt.timeout_s)
        git_dir = Layout.for_root(drv.root).git_dir
        self._check(drv.root, git_dir, depth, tag)
        return _row(rec, depth, disk_bytes(git_dir))

    def _check(self, root: Path, git_dir: Path, depth: int, tag: str) -> None:
        """The release holds the tag's files, and the cache is shallow exactly with depth >= 1."""
        current = root / "current"
        bundle = current / "assets" / "bundle-0.bin"
        if not (current / "src").is_dir() or (self.repo.binaries and bundle.stat().st_size != self.repo.binary_bytes):
            raise RuntimeError(f"{root}: the release of {tag} lacks the repository's files")
        if (git_dir / "shallow").exists() != (depth > 0):
            raise RuntimeError(f"{git_dir}: shallow file {'missing' if depth else 'present'} with --depth {depth}")

    def first_deploys(self) -> list[dict[str, Any]]:
        newest = self.repo.tags[-1]
        rows: list[dict[str, Any]] = []
        for r in range(self.opt.reps):
            for depth in DEPTHS[r % 2 :] + DEPTHS[: r % 2]:
                progress(f"first deploy {r + 1}/{self.opt.reps} of {newest}, {_label(depth)} (fresh ROOT and daemon)")
                with self.session(f"first-d{depth}-{r}", depth) as drv:
                    rows.append({"rep": r, **self.deploy(drv, depth, newest)})
                    self._note(drv)
        return rows

    def series(self) -> tuple[list[dict[str, Any]], dict[int, int]]:
        tags = self.repo.tags[-(self.opt.series + 1) :]
        rows: list[dict[str, Any]] = []
        gc: dict[int, int] = {}
        with contextlib.ExitStack() as stack:
            drivers = {d: stack.enter_context(self.session(f"series-d{d}", d)) for d in DEPTHS}
            for k, tag in enumerate(tags):
                if k == 0 or k % 5 == 0:
                    progress(f"series: tag {k + 1}/{len(tags)} ({tag}), both depths")
                for depth in DEPTHS[k % 2 :] + DEPTHS[: k % 2]:
                    rows.append({"step": k, **self.deploy(drivers[depth], depth, tag)})
            for depth, drv in drivers.items():
                self._note(drv)
                gc[depth] = _gc_runs(drv.daemon.log_path)
        return rows, gc

    def _note(self, drv: Deployer) -> None:
        self.anomalies += sorted({str(a.get("event")) for a in drv.anomalies} - set(self.anomalies))


def _settle() -> None:
    """Write back everything dirty, so a timed deploy does not pay for its predecessors."""
    os.sync()


def measure(work: Path, opt: GitSourceOptions) -> dict[str, Any]:
    """Build the repository in ``work``, measure both depths; the results (see :func:`render_section`)."""
    if opt.tags < opt.series + 1:
        raise ValueError("the repository needs at least series + 1 tags")
    started = time.time()
    progress(f"shallow fetches: generating the repository ({opt.commits} commits, {opt.files} files, {opt.tags} tags)")
    repo = build_history_repo(
        work / "mirror.git",
        files=opt.files,
        commits=opt.commits,
        tags=opt.tags,
        touched=opt.touched,
        binaries=opt.binaries,
        binary_bytes=opt.binary_kib * 1024,
    )
    run = _Run(work, repo, opt)
    first = run.first_deploys()
    series, gc = run.series()
    return {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "config": asdict(opt),
        "repo": {
            "files": repo.files,
            "commits": repo.commits,
            "touched": repo.touched,
            "tags": len(repo.tags),
            "newest": repo.tags[-1],
            "series_tags": [repo.tags[-(opt.series + 1)], repo.tags[-1]],
            "binaries": repo.binaries,
            "binary_bytes": repo.binary_bytes,
            "tree_bytes": repo.tree_bytes,
            "disk_bytes": repo.disk_bytes,
            "build_s": repo.build_s,
        },
        "first": _first_summary(first),
        "series": _series_summary(series, gc),
        "anomalies": run.anomalies,
        "duration_s": time.time() - started,
        "loadavg_end": loadavg(),
    }


def _first_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("e2e_ms", "idle_ms", "fetch_ms", "prepare_ms", "prune_ms", "cache_bytes")
    by = {d: {k: _med([r for r in rows if r["depth"] == d], k) for k in keys} for d in DEPTHS}
    return {
        "medians": {str(d): v for d, v in by.items()},
        "ratios": {k: _ratio(by[1][k], by[0][k]) for k in keys},
        "samples": rows,
    }


def _series_summary(rows: list[dict[str, Any]], gc: dict[int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {"medians": {}, "samples": rows, "gc_runs": {str(d): n for d, n in gc.items()}}
    figures: dict[int, dict[str, float | None]] = {}
    for d in DEPTHS:
        mine = sorted((r for r in rows if r["depth"] == d), key=lambda r: int(r["step"]))
        new = [r for r in mine if r["step"] > 0]  # a new tag into a cache holding the previous one
        sizes = [int(r["cache_bytes"]) for r in mine]
        figures[d] = {
            "cache_last_bytes": float(sizes[-1]) if sizes else None,
            "cache_max_bytes": float(max(sizes)) if sizes else None,
            "fetch_new_ms": _med(new, "fetch_ms"),
            "e2e_new_ms": _med(new, "e2e_ms"),
            "idle_new_ms": _med(new, "idle_ms"),
            "prune_new_total_ms": sum(float(r["prune_ms"] or 0.0) for r in new),
        }
        out["medians"][str(d)] = {
            **figures[d],
            "fetch_new": summarize([float(r["fetch_ms"]) for r in new if r["fetch_ms"] is not None]).to_dict(),
        }
    out["ratios"] = {k: _ratio(figures[1][k], figures[0][k]) for k in figures[1]}
    return out


# ---------------------------------------------------------------------------------------------- report


def _mib(v: Any) -> str:
    return _f(v / MIB, 1) if isinstance(v, int | float) else "-"


def _s(v: Any) -> str:
    return _f(v / 1000, 1) if isinstance(v, int | float) else "-"


def _x(v: Any) -> str:
    return f"**{_f(v, 3)}**" if isinstance(v, int | float) else "-"


def render_section(r: dict[str, Any], level: int = 2) -> str:
    """The Markdown section of a :func:`measure` result."""
    h, hh = "#" * level, "#" * (level + 1)
    repo, cfg = r["repo"], r["config"]
    f1, f0, fr = r["first"]["medians"]["1"], r["first"]["medians"]["0"], r["first"]["ratios"]
    s1, s0, sr = r["series"]["medians"]["1"], r["series"]["medians"]["0"], r["series"]["ratios"]
    gc = r["series"]["gc_runs"]
    n_series = cfg["series"]
    out = [
        f"{h} Shallow fetches: git cache `--depth 1` against the whole history",
        "",
        f"Generated repository: {repo['commits']} commits, {repo['files']} text files ({repo['touched']} changed "
        f"per commit), {repo['tags']} annotated release tags along the history, each release rewriting "
        f"{repo['binaries']} incompressible files of {_f(repo['binary_bytes'] / MIB, 2)} MiB; packed "
        f"{_mib(repo['disk_bytes'])} MiB on disk, one tree (the newest tag) {_mib(repo['tree_bytes'])} MiB "
        f"uncompressed. Read through a `file://` URL (git's pack protocol), by the real daemon "
        f"(`coordinator run --depth 1` and `--depth 0`), depth 1 and full alternating in the same run; "
        f"ratios are depth 1 / full, of medians.",
        "",
        f"{hh} First deploy of the newest tag ({repo['newest']}), fresh ROOT, {cfg['reps']} each",
        "",
    ]
    rows: list[tuple[str, str, Callable[[Any], str]]] = [
        ("marker -> reload file touched (ms)", "e2e_ms", _f),
        ("marker -> status idle, tidy included (ms)", "idle_ms", _f),
        ("`fetch` phase (ms)", "fetch_ms", _f),
        ("`prepare` phase: checkout of the tree (ms)", "prepare_ms", _f),
        ("`prune` phase: tidy, with the first `git gc` (ms)", "prune_ms", _f),
        ("git cache on disk afterwards (MiB)", "cache_bytes", _mib),
    ]
    table = [[label, fmt(f1[key]), fmt(f0[key]), _x(fr[key])] for label, key, fmt in rows]
    out += _table(["median", "depth 1", "full", "depth 1 / full"], table)
    out += [
        f"{hh} {n_series} new tags in a row ({r['repo']['series_tags'][0]} first, then the {n_series} newer ones)",
        "",
    ]
    srows: list[tuple[str, str, Callable[[Any], str]]] = [
        ("git cache on disk after the last new tag (MiB)", "cache_last_bytes", _mib),
        ("largest git cache during the series (MiB)", "cache_max_bytes", _mib),
        ("`fetch` of a new tag, the previous one cached (ms)", "fetch_new_ms", _f),
        ("marker -> reload file touched (ms)", "e2e_new_ms", _f),
        ("marker -> status idle, tidy included (ms)", "idle_new_ms", _f),
        ("`prune` phase (tidy: tags deleted, `git gc`), sum over the new tags (s)", "prune_new_total_ms", _s),
    ]
    table = [[label, fmt(s1[key]), fmt(s0[key]), _x(sr[key])] for label, key, fmt in srows]
    table.append(["`git gc` runs by tidy (whole series)", str(gc.get("1", "-")), str(gc.get("0", "-")), ""])
    out += _table(["median unless said", "depth 1", "full", "depth 1 / full"], table)
    fetch1, fetch0 = s1["fetch_new"], s0["fetch_new"]
    out += [
        f"Fetch of a new tag, p90 / max: depth 1 {_f(fetch1['p90'])} / {_f(fetch1['max'])} ms, full "
        f"{_f(fetch0['p90'])} / {_f(fetch0['max'])} ms. With `--keep 5` (the default) tidy keeps the tags of the "
        "releases on disk and runs `git gc` once the cache has doubled since its last gc: a depth-1 cache holds "
        "the trees of those releases, plus what the next gc will drop; a full cache holds every commit the "
        "newest kept tag reaches, i.e. the whole history up to it."
        + (f" Warning/error events in the daemon logs: {', '.join(r['anomalies'])}." if r["anomalies"] else ""),
        "",
    ]
    return "\n".join(out)


def machine_info() -> dict[str, Any]:
    return {
        "nproc": cmd_out(["nproc"]),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": cmd_out(["git", "--version"]),
        "coordinator_rev": cmd_out(["git", "rev-parse", "--short", "HEAD"], PROJECT),
        "loadavg_start": loadavg(),
    }


def render_standalone(r: dict[str, Any], machine: dict[str, Any]) -> str:
    head = [
        f"# coordinator benchmark, {r['date']}: shallow fetches",
        "",
        f"- {machine['nproc']} CPUs (`nproc`), {machine['cpu_model']}; Linux {machine['kernel']}; "
        f"Python {machine['python']}; {machine['git']}; coordinator at {machine['coordinator_rev']}",
        f"- load average at start {machine['loadavg_start']}, at end {r['loadavg_end']}; "
        f"total run time {_f(r['duration_s'], 0)} s (repository generated in {_f(r['repo']['build_s'], 1)} s)",
        "",
    ]
    return "\n".join(head) + "\n" + render_section(r)


# ---------------------------------------------------------------------------------------------- main


def run_for_report(quick: bool, tmp_dir: Path | None = None, keep_tmp: bool = False) -> dict[str, Any]:
    """What ``benchmarks.run`` calls: measure in a fresh work directory, always stop the daemons."""
    work = Path(tempfile.mkdtemp(prefix="coordinator-bench-gitsource-", dir=tmp_dir))
    try:
        result: dict[str, Any] = json_safe(measure(work, GitSourceOptions.quick() if quick else GitSourceOptions()))
        return result
    except Exception:
        keep_tmp = True
        print(f"shallow-fetch benchmark failed; daemon logs kept in {work}", file=sys.stderr)
        raise
    finally:
        stop_all()
        if not keep_tmp:
            shutil.rmtree(work, ignore_errors=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = GitSourceOptions()
    p = argparse.ArgumentParser(prog="python -m benchmarks gitsource", description=__doc__.split("\n\n")[0])
    ints: list[tuple[str, int, str]] = [
        ("files", d.files, "text files in every tree"),
        ("commits", d.commits, "commits of history"),
        ("tags", d.tags, "release tags along the history"),
        ("touched", d.touched, "text files each commit changes"),
        ("binaries", d.binaries, "binary files rewritten at each release"),
        ("binary-kib", d.binary_kib, "size of each binary file, KiB"),
        ("series", d.series, "new tags deployed in a row"),
        ("reps", d.reps, "first deploys per depth"),
    ]
    for name, default, what in ints:
        p.add_argument(f"--{name}", type=int, default=None, help=f"{what} (default {default})")
    add_common_args(p, keep_what="repository, ROOTs, daemon logs", quick_what="a smoke run on a tiny repository")
    args = p.parse_args(argv)
    finish_common_args(args, HERE / "results")
    base = GitSourceOptions.quick(args.seed) if args.quick else GitSourceOptions(seed=args.seed)
    given = {n.replace("-", "_"): getattr(args, n.replace("-", "_")) for n, _, _ in ints}
    fields = asdict(base) | {k: v for k, v in given.items() if v is not None}
    try:
        args.options = GitSourceOptions(**fields)
    except TypeError as e:
        p.error(str(e))
    o = args.options
    if min(o.files, o.commits, o.touched, o.binary_kib, o.series, o.reps) < 1 or o.binaries < 0:
        p.error("counts must be at least 1 (--binaries at least 0)")
    if not o.series + 1 <= o.tags <= o.commits:
        p.error("need --series + 1 <= --tags <= --commits")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    work = begin("coordinator-bench-gitsource-", args.tmp_dir, stop_all)
    if work is None:
        return 2
    machine = machine_info()
    try:
        results = json_safe(measure(work, args.options))
    except KeyboardInterrupt:
        print(f"interrupted; work directory {work}", file=sys.stderr)
        return 130
    except Exception:
        args.keep_tmp = True
        print(f"benchmark failed; repository, ROOTs and daemon logs kept in {work}", file=sys.stderr)
        raise
    finally:
        stop_all()
        if not args.keep_tmp:
            progress(f"removing the work directory {work}")
            shutil.rmtree(work, ignore_errors=True)
    results["machine"] = json_safe(machine)
    report = render_standalone(results, machine)
    if args.write:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        base = args.results_dir / f"{results['date']}-gitsource"
        base.with_name(base.name + ".json").write_text(dumps(results) + "\n")
        base.with_name(base.name + ".md").write_text(report)
        progress(f"wrote {base}.json and {base}.md")
    sys.stdout.write(report)
    sys.stdout.flush()
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
