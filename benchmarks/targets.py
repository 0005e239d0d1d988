"""The issue's targets, each checked against the results of the same run (met, not met, or not measured)."""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "FIRST_DEPLOY_MAX_RATIO",
    "GROWTH_MAX_RATIO",
    "IDLE_CPU_MAX_PCT",
    "IDLE_WAKEUPS_MAX",
    "ON_DISK_P50_MS",
    "ON_DISK_P99_MS",
    "PREPARE_LARGE_MAX_RATIO",
    "PREPARE_MAX_RATIO",
    "RECOMMENDED_UWSGI",
    "RELOADS_MIN",
    "STAGED_MAX_RATIO",
    "build_targets",
    "evaluate",
    "reload_target",
]

ON_DISK_P50_MS = 3.0
ON_DISK_P99_MS = 6.0
IDLE_CPU_MAX_PCT = 0.05
IDLE_WAKEUPS_MAX = 2.0  # per second, idle
PREPARE_MAX_RATIO = 0.5  # prepare / in-place checkout -f, 2k-10k files, 100 changed
PREPARE_RANGE = (2000, 10000)
PREPARE_LARGE_MAX_RATIO = 1.0  # prepare / in-place checkout -f, 50k files, 10 changed
FIRST_DEPLOY_MAX_RATIO = 1.0  # first deploy's prepare / git worktree add
GROWTH_MAX_RATIO = 2.0  # prepare(10k files, 10 changed) / prepare(1k files, 10 changed)
STAGED_MAX_RATIO = 2.0  # marker -> reload p50: release staged just before / release already on disk
RELOADS_MIN = 200  # reloads under load of the recommended uWSGI set-up, with 0 failed requests
RECOMMENDED_UWSGI = "uwsgi-touch"  # the strategy key of docker/uwsgi.ini's set-up (benchmarks.strategies)


def _ok(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _row(tid: str, target: str, figure: str, met: bool | None, **extra: Any) -> dict[str, Any]:
    return {"id": tid, "target": target, "figure": figure, "met": met, **extra}


def _cell(r: dict[str, Any], files: int, changed: int) -> dict[str, Any] | None:
    for s in (r.get("newtag") or {}).get("sizes", []):
        if s["files"] == files:
            return next((c for c in s["cells"] if c["changed"] == changed), None)
    return None


def _size(r: dict[str, Any], files: int) -> dict[str, Any] | None:
    return next((s for s in (r.get("newtag") or {}).get("sizes", []) if s["files"] == files), None)


def _why_on_disk(r: dict[str, Any], src: dict[str, Any], q: str) -> str:
    total = src["metrics"].get("ext_touch_seen", {}).get(q)
    detect = src["phases"].get("detect", {}).get(q)
    text = ""
    if _ok(total) and _ok(detect):
        text = (
            f"detection (marker rename -> `deploy_started`: the watcher's step timer, its debounce, the thread hop "
            f"into the event loop and the marker and volume reads) takes {q} {detect:.2f} ms of the {total:.2f} ms"
        )
    steps = [row for row in r.get("watch_steps") or [] if _ok(row["marker_to_reload"].get(q))]
    if steps:
        text += "; by `--watch-step-ms` (same run): " + ", ".join(
            f"{row['step_ms']} ms -> {q} {row['marker_to_reload'][q]:.1f} ms at {row['idle_cpu_pct']:.2f} % idle CPU"
            for row in steps
        )
    return text


def _from_spare(c: dict[str, Any]) -> bool:
    return bool(c.get("prepare_modes")) and set(c["prepare_modes"]) == {"spare"}


def _git_split(c: dict[str, Any]) -> str:
    """Where a cell's prepare time went: its git commands' p50s and the rest."""
    by_cmd = (c.get("prepare_git") or {}).get("by_cmd_p50_ms") or {}
    total = (c.get("prepare_git") or {}).get("total_ms", {}).get("p50")
    cmds = ", ".join(f"`{k}` {v:.1f} ms" for k, v in sorted(by_cmd.items()))
    rest = f"; outside git {c['prepare_ms']['p50'] - total:.1f} ms" if _ok(total) else ""
    return f"of p50 {c['prepare_ms']['p50']:.1f} ms: {cmds}{rest}"


def _why_growth(r: dict[str, Any], small: dict[str, Any], large: dict[str, Any]) -> str:
    if _from_spare(small) and _from_spare(large):
        return (
            f"both prepared from the spare, writing {large['written']:.0f} files: 1k files {_git_split(small)}; "
            f"10k files {_git_split(large)} (git reads more pack and tree data for the larger tree)"
        )
    text = (
        f"prepare links every unchanged file: {large['linked']:.0f} at 10k files against {small['linked']:.0f} at "
        f"1k, for the same {large['written']:.0f} written, so its cost follows the tree's size, not the change"
    )
    s_small, s_large = _size(r, 1000), _size(r, 10000)
    if s_small and s_large:
        a, b = s_small["first"]["cp_al_ms"]["p50"], s_large["first"]["cp_al_ms"]["p50"]
        if _ok(a) and _ok(b) and a > 0:
            text += f"; even `cp -al` grows {b / a:.1f} x ({a:.1f} -> {b:.1f} ms)"
    return text


def _staged(r: dict[str, Any]) -> dict[str, Any]:
    target = f"staged release: deploy -> reload p50 within {STAGED_MAX_RATIO:g} x of a release already on disk"
    st = r.get("staged")
    if not st or not _ok(st.get("ratio_p50")):
        return _row("staged_vs_on_disk", target, "not measured", None)
    ratio = float(st["ratio_p50"])
    on_disk, staged, detect = st["on_disk"], st["staged"], st["detect"]
    return _row(
        "staged_vs_on_disk",
        target,
        f"{staged['p50']:.2f} / {on_disk['p50']:.2f} ms = {ratio:.2f} x ({staged['n']} deploys each)",
        ratio <= STAGED_MAX_RATIO,
        value=ratio,
        why=f"detection (marker -> `deploy_started`) p50: staged {detect['staged']['p50']:.2f} ms, on disk "
        f"{detect['on_disk']['p50']:.2f} ms; {st.get('staged_rebuilt', 0)} staged deploys fetched or prepared again",
    )


def reload_target(strategies: dict[str, Any] | None) -> dict[str, Any]:
    """The recommended uWSGI set-up (docker/uwsgi.ini) served every request over >= RELOADS_MIN reloads
    under load (``python -m benchmarks strategies``, a section of its own); its worst latency stated."""
    target = (
        f"recommended uWSGI set-up ({RECOMMENDED_UWSGI}, docker/uwsgi.ini): 0 failed requests over "
        f">= {RELOADS_MIN} reloads under load; max latency during a reload stated"
    )
    rows = [s for s in (strategies or {}).get("strategies", []) if s.get("key") == RECOMMENDED_UWSGI]
    if not rows:
        return _row("reload_failures", target, "not measured", None)
    s = rows[0]
    during, steady = s["latency_deploys_ms"], s["latency_steady_ms"]
    late = len(s.get("late_deploys", []))
    figure = (
        f"{s['failures']} failed, {s['mixed']} mixed, {late} late of {s['requests']:,} requests over "
        f"{s['deploys']} reloads; max latency during a reload {during['max']:.0f} ms "
        f"(steady max {steady['max']:.0f} ms), longest stall {s['gap_ms']['deploys']['max']:.0f} ms"
    )
    met = s["deploys"] >= RELOADS_MIN and s["failures"] == 0 and s["mixed"] == 0 and late == 0
    why = "" if s["deploys"] >= RELOADS_MIN else f"only {s['deploys']} reloads measured"
    return _row("reload_failures", target, figure, met, why=why)


def evaluate(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    marker_kinds = [("rename", "marker replaced by rename", r["warm"])]
    cm = r.get("configmap")
    if cm:
        marker_kinds.append(("configmap", "ConfigMap `..data` swap", cm))
    for key, label, src in marker_kinds:
        s = src["metrics"].get("ext_touch_seen", {})
        p50, p99, n = s.get("p50"), s.get("p99"), s.get("n", 0)
        out.append(
            _row(
                f"ondisk_p50_{key}",
                f"release on disk, {label}: marker -> reload p50 <= {ON_DISK_P50_MS:g} ms",
                f"p50 {p50:.2f} ms ({n} deploys)" if _ok(p50) else "-",
                p50 <= ON_DISK_P50_MS if _ok(p50) else None,
                value=p50,
                why=_why_on_disk(r, src, "p50"),
            )
        )
        out.append(
            _row(
                f"ondisk_p99_{key}",
                f"release on disk, {label}: marker -> reload p99 <= {ON_DISK_P99_MS:g} ms",
                f"p99 {p99:.2f} ms ({n} deploys)" if _ok(p99) else "-",
                p99 <= ON_DISK_P99_MS if _ok(p99) else None,
                value=p99,
                why=_why_on_disk(r, src, "p99"),
            )
        )
    idle = r.get("idle_long")
    if idle:
        v = idle["idle_cpu_pct"]
        out.append(
            _row(
                "idle_cpu",
                f"idle CPU <= {IDLE_CPU_MAX_PCT:g} % of one core (default step, {idle['wall_s']:.0f} s)",
                f"{v:.2f} % (threads' run time {idle['idle_cpu_pct_threads']:.2f} %), RSS {idle['rss_mib']:.1f} MiB",
                v <= IDLE_CPU_MAX_PCT,
                value=v,
                why="on Linux the marker is watched by inotify on the event loop (no timer); with watchfiles "
                "(`--poll`, non-Linux) the watcher wakes every `--watch-step-ms`: "
                + ", ".join(
                    f"step {row['step_ms']} ms: {row['idle_cpu_pct']:.2f} %" for row in r.get("watch_steps") or []
                ),
            )
        )
        w = idle.get("wakeups_per_s")
        out.append(
            _row(
                "idle_wakeups",
                f"idle wake-ups <= {IDLE_WAKEUPS_MAX:g} per second ({idle['wall_s']:.0f} s)",
                f"{w:.2f} per second" if _ok(w) else "-",
                w <= IDLE_WAKEUPS_MAX if _ok(w) else None,
                value=w,
                why="context switches of the daemon's threads while nothing happens: the resync timer "
                "(`--resync-interval`) and anyio's worker threads going idle",
            )
        )
    else:
        out.append(_row("idle_cpu", f"idle CPU <= {IDLE_CPU_MAX_PCT:g} % of one core", "not measured", None))
    nt = r.get("newtag")
    if nt:
        sizes = [s["files"] for s in nt["sizes"]]
        in_range = [n for n in sizes if PREPARE_RANGE[0] <= n <= PREPARE_RANGE[1]]
        parts, mets, why = [], [], []
        for n in in_range:
            c = _cell(r, n, 100)
            if c is None or not _ok(c.get("ratio_prepare_to_checkout")):
                continue
            ratio = c["ratio_prepare_to_checkout"]
            parts.append(
                f"{n:,} files: {c['prepare_ms']['p50']:.1f} / {c['checkout_f_ms']['p50']:.1f} ms = {ratio:.2f} x"
            )
            mets.append(ratio <= PREPARE_MAX_RATIO)
            size = _size(r, n)
            cp_al = size["first"]["cp_al_ms"]["p50"] if size else None
            if _from_spare(c):
                why.append(f"at {n:,} files every deploy was prepared from the spare, {_git_split(c)}")
            elif _ok(cp_al):
                why.append(
                    f"at {n:,} files prepare links {c['linked']:.0f} unchanged files one by one and writes "
                    f"{c['written']:.0f}; `cp -al` of the whole release alone (the floor of linking every file, in C) "
                    f"takes {cp_al:.1f} ms = {cp_al / c['checkout_f_ms']['p50']:.2f} x the in-place checkout, which "
                    "rewrites only the changed files after an lstat of each file"
                )
        out.append(
            _row(
                "prepare_vs_checkout",
                f"2k-10k files, 100 changed: preparation <= {PREPARE_MAX_RATIO:g} x in-place `git checkout -f`",
                "; ".join(parts) or "not measured",
                all(mets) if mets else None,
                why="; ".join(why),
            )
        )
        parts, mets = [], []
        for s in nt["sizes"]:
            f = s["first"]
            ratio = f.get("ratio_prepare_to_worktree")
            if not _ok(ratio):
                continue
            parts.append(
                f"{s['files']:,}: {f['prepare_ms']['p50']:.0f} / {f['worktree_add_ms']['p50']:.0f} ms = {ratio:.2f} x"
            )
            mets.append(ratio <= FIRST_DEPLOY_MAX_RATIO)
        first_why = (
            "the first deploy's prepare is `git read-tree` + `git checkout-index -a` into an empty directory: the "
            "same files written as `git worktree add`, plus a second git process; the ratio per size is above"
        )
        out.append(
            _row(
                "first_deploy",
                f"first deploy (no previous release): preparation <= {FIRST_DEPLOY_MAX_RATIO:g} x "
                "`git worktree add` (every size)",
                "; ".join(parts) or "not measured",
                all(mets) if mets else None,
                why=first_why,
            )
        )
        big = _cell(r, 50000, 10)
        if big is not None and _ok(big.get("ratio_prepare_to_checkout")):
            ratio = big["ratio_prepare_to_checkout"]
            out.append(
                _row(
                    "prepare_vs_checkout_large",
                    f"50k files, 10 changed: preparation <= {PREPARE_LARGE_MAX_RATIO:g} x in-place `git checkout -f`",
                    f"{big['prepare_ms']['p50']:.1f} / {big['checkout_f_ms']['p50']:.1f} ms = {ratio:.2f} x",
                    ratio <= PREPARE_LARGE_MAX_RATIO,
                    value=ratio,
                )
            )
        else:
            out.append(
                _row("prepare_vs_checkout_large", "50k files, 10 changed: preparation <= 1 x", "not measured", None)
            )
        small, large = _cell(r, 1000, 10), _cell(r, 10000, 10)
        if small and large:
            g = large["prepare_ms"]["p50"] / small["prepare_ms"]["p50"]
            out.append(
                _row(
                    "growth",
                    f"preparation grows with changed files: 10k files/10 changed within {GROWTH_MAX_RATIO:g} x "
                    "of 1k files/10 changed",
                    f"{large['prepare_ms']['p50']:.1f} / {small['prepare_ms']['p50']:.1f} ms = {g:.2f} x",
                    g <= GROWTH_MAX_RATIO,
                    value=g,
                    why=_why_growth(r, small, large),
                )
            )
        else:
            out.append(_row("growth", "10k files/10 changed within 2 x of 1k files/10 changed", "not measured", None))
    torn = r.get("torn")
    if torn and "ours" in torn["methods"]:
        ours = torn["methods"]["ours"]
        inplace = torn["methods"].get("checkout")
        beside = (
            f"; in-place `git checkout -f`: {inplace['unsafe_passes']} unsafe passes ({inplace['torn']} torn, "
            f"{inplace['missing']} missing a file, {inplace['partial']} with a file cut short) in "
            f"{inplace['affected_deploys']} of {inplace['deploys']} deploys"
            if inplace
            else ""
        )
        out.append(
            _row(
                "torn",
                "0 torn reads for ours (reader pins `current` once per pass)",
                f"ours: {ours['unsafe_passes']} unsafe of {ours['passes_during_deploys']} passes during "
                f"{ours['deploys']} deploys{beside}",
                ours["unsafe_passes"] == 0,
                value=ours["unsafe_passes"],
            )
        )
    out.append(_staged(r))
    return out


def _steady_cell(st: dict[str, Any], files: int, changed: int) -> dict[str, Any] | None:
    return next((c for c in st.get("cells", []) if (c["files"], c["changed"]) == (files, changed)), None)


def _why_steady(c: dict[str, Any]) -> str:
    """Why a steady-state cell says what it says: how its releases were prepared."""
    if not c.get("sandboxed", True):
        return (
            f"the build sandbox is unavailable here ({c.get('not_sandboxed_because')}): every release a full checkout"
        )
    modes = c.get("modes") or []
    if modes != ["spare"]:
        return f"prepared as {', '.join(modes)}, not from the spare alone"
    text = f"every timed release prepared from the spare (readying, untimed, median {c['ready_ms']:.0f} ms)"
    if _ok(c.get("prepare_git_ms")):
        text += (
            f"; of the preparation, git (`diff-tree`, then the {c['changed']} changed files written as new inodes) "
            f"takes {c['prepare_git_ms']:.0f} ms"
        )
    return text


def build_targets(st: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's preparation targets with a build command (``benchmarks.buildsandbox``'s steady state:
    a trivial build in the sandbox, the spare readied between deploys)."""
    st = st or {}
    pre = "with a build command: "
    out: list[dict[str, Any]] = []
    for tid, files, changed, bound in (
        ("build_prepare_vs_checkout", 10_000, 100, PREPARE_MAX_RATIO),
        ("build_prepare_vs_checkout_large", 50_000, 10, PREPARE_LARGE_MAX_RATIO),
    ):
        target = (
            f"{pre}{files // 1000}k files, {changed} changed: preparation <= {bound:g} x in-place `git checkout -f`"
        )
        c = _steady_cell(st, files, changed)
        if c is None or not _ok(c.get("ratio_prepare_to_checkout")):
            out.append(_row(tid, target, "not measured", None))
            continue
        ratio = float(c["ratio_prepare_to_checkout"])
        figure = f"{c['prepare_ms']:.1f} / {c['checkout_f_ms']:.1f} ms = {ratio:.2f} x ({c['n']} deploys)"
        met = ratio <= bound and c.get("sandboxed", True)
        out.append(_row(tid, target, figure, met, value=ratio, why=_why_steady(c)))
    target = f"{pre}10k files/10 changed within {GROWTH_MAX_RATIO:g} x of 1k files/10 changed"
    small, large = _steady_cell(st, 1000, 10), _steady_cell(st, 10_000, 10)
    if small is None or large is None or not (_ok(small.get("prepare_ms")) and small["prepare_ms"] > 0):
        out.append(_row("build_growth", target, "not measured", None))
    else:
        g = float(large["prepare_ms"]) / float(small["prepare_ms"])
        figure = f"{large['prepare_ms']:.1f} / {small['prepare_ms']:.1f} ms = {g:.2f} x"
        met = g <= GROWTH_MAX_RATIO and bool(small.get("sandboxed", True) and large.get("sandboxed", True))
        out.append(_row("build_growth", target, figure, met, value=g, why=_why_steady(large)))
    return out
