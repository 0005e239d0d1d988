"""The Markdown report, rendered from the results dictionary (the same data as the JSON file)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["render"]


def _f(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float | int):
        return f"{v:.{nd}f}"
    return str(v)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    spec = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in spec]
    return [_row(header), _row(sep), *(_row(r) for r in rows), ""]


def _summary_cells(s: dict[str, Any]) -> list[str]:
    return [_f(s.get("p50")), _f(s.get("p90")), _f(s.get("p99")), _f(s.get("max")), str(s.get("n", 0))]


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    cfg = r["config"]
    warm = r["warm"]
    target = r["target"]
    out: list[str] = [f"# coordinator benchmark, {r['date']}", ""]
    verdict = "**met**" if target["met"] else "**not met**"
    out += [
        f"**Target** (issue): marker -> reload p50 <= {_f(target['threshold_ms'], 0)} ms on a release already on "
        f"disk: {verdict}, p50 = {_f(target['p50_ms'])} ms "
        f"(default `--watch-step-ms {cfg['default_step_ms']}`, {target['n']} deploys; "
        f"p99 {_f(target['p99_ms'])} ms).",
        "",
        f"**Baseline**: in-place `git checkout -f` p50 {_f(r['baseline']['summary']['p50'])} ms; "
        f"our marker -> reload p50 is {_f(r['baseline']['ratio_p50'], 3)} x that "
        f"({_f(r['baseline']['speedup_p50'], 1)} times faster).",
        "",
        f"**Recommended `--watch-step-ms`**: {r['recommendation']['step_ms']} ({r['recommendation']['why']}).",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} CPUs (`nproc`), {m['cpu_model']}; Linux {m['kernel']}; {m['fs_type']} at the work dir",
        f"- Python {m['python']}; {m['git']}; watchfiles {m['watchfiles']}; coordinator at {m['coordinator_rev']}"
        + (f" plus uncommitted changes in {', '.join(m['coordinator_dirty'])}" if m["coordinator_dirty"] else ""),
        f"- load average at start {m['loadavg_start']}, at end {m['loadavg_end']}; whole-machine CPU busy "
        f"during the idle windows {_f(r['system']['busy_pct_during_idle'], 1)} % of all cores, of which the daemon "
        f"{_f(r['system']['daemon_pct_during_idle'], 2)} %",
        f"- CPU use of all cores during the {r['warm']['n']} measured deploys: "
        f"{_f(r['system']['during_main']['busy_pct'], 1)} % busy = daemon "
        f"{_f(r['system']['during_main']['daemon_pct'], 1)} % + benchmark (observer) "
        f"{_f(r['system']['during_main']['benchmark_pct'], 1)} % + other processes "
        f"{_f(r['system']['during_main']['others_pct'], 1)} %",
        f"- kernel coarse clock (file timestamps) resolution {_f(m['coarse_clock_res_ms'], 1)} ms",
        f"- synthetic repo: {r['repo']['files']} files ({_f(r['repo']['bytes'] / 1e6, 1)} MB), tags v1 and v2 "
        f"differing in {r['repo']['changed']} files; total run time {_f(r['duration_s'], 0)} s",
        "",
        f"## Release already on disk: {warm['n']} deploys alternating v1/v2",
        "",
        f"Default watcher step ({cfg['default_step_ms']} ms), log level `{cfg['main_log_level']}`. t0 = wall clock "
        "just before the marker's rename. *Outside* = seen by a thread polling `readlink(current)`, the reload "
        f"file's ctime and the status file (one poll every {_f(warm['observer_period_us']['p50'], 1)} us median). "
        "*Log* = timestamps of the daemon's own JSON events.",
        "",
    ]
    labels = [
        ("ext_swap", "marker -> `current` swapped (outside)"),
        ("ext_touch_seen", "**marker -> reload file touched (outside)**"),
        ("ext_touch_ctime", "marker -> reload file ctime (kernel, coarse clock)"),
        ("ext_status_idle", "marker -> status `idle` with the release (outside)"),
        ("log_swap", "marker -> `swap` event (log)"),
        ("log_reloaded", "marker -> `reloaded` event (log)"),
    ]
    rows = [[label, *_summary_cells(warm["metrics"][key])] for key, label in labels if key in warm["metrics"]]
    out += _table(["ms", "p50", "p90", "p99", "max", "n"], rows)
    out += ["Per-phase breakdown from the daemon's log timestamps:", ""]
    rows = []
    total_p50 = warm["phases"].get("total", {}).get("p50") or math.nan
    for key, label, what in [*r["phase_labels"], ["total", "total", "marker rename -> `deploy_succeeded`"]]:
        s = warm["phases"].get(key)
        if not s or not s.get("n"):
            continue
        share = 100.0 * s["p50"] / total_p50 if math.isfinite(total_p50) and total_p50 > 0 else math.nan
        rows.append([label, what, *_summary_cells(s)[:4], _f(share, 0) + " %"])
    out += _table(["phase", "span", "p50", "p90", "p99", "max", "share of p50 total"], rows, "llrrrrr")
    inner = warm.get("phase_durations", {})
    if inner:
        out += [
            "Inside the daemon (the phase events' own `duration_ms`, monotonic clock): "
            + ", ".join(f"{k} p50 {_f(v['p50'])} ms / p99 {_f(v['p99'])} ms" for k, v in inner.items())
            + ".",
            "",
        ]
    b = r["baseline"]
    out += [
        "## Baseline: in-place `git checkout -f tags/vX` in a plain clone",
        "",
        *_table(
            ["ms", "p50", "p90", "p99", "max", "n"],
            [
                ["`git checkout -f` (old way; wall time incl. process start)", *_summary_cells(b["summary"])],
                ["coordinator marker -> reload file touched", *_summary_cells(warm["metrics"]["ext_touch_seen"])],
            ],
        ),
        f"Ratio of p50s (ours / checkout): {_f(b['ratio_p50'], 3)}; p99s: {_f(b['ratio_p99'], 3)}.",
        "",
        "## Watcher step trade-off",
        "",
        f"Each row: a fresh daemon with `--watch-step-ms N` on the same ROOT, {cfg['table_deploys']} deploys of a "
        f"release on disk, then {_f(cfg['idle_seconds'], 0)} s of idleness measured from `/proc/<pid>/stat` "
        "(utime+stime, 10 ms ticks; in brackets the sum of the threads' schedstat run times). `after detect` = "
        "`deploy_started` event -> reload file touched: the part the watcher step does not influence.",
        "",
    ]
    rows = []
    for row in r["watch_steps"]:
        mark = " (default)" if row["step_ms"] == cfg["default_step_ms"] else ""
        rec = " **recommended**" if row["step_ms"] == r["recommendation"]["step_ms"] else ""
        rl = row["marker_to_reload"]
        rows.append(
            [
                f"{row['step_ms']}{mark}{rec}",
                _f(rl["p50"]),
                _f(rl["p90"]),
                _f(rl["p99"]),
                _f(row["detect"]["p50"]),
                _f(row["after_detect"]["p50"]),
                "yes" if rl["p50"] <= target["threshold_ms"] else "no",
                f"{_f(row['idle_cpu_pct'], 2)} ({_f(row['idle_cpu_pct_threads'], 2)})",
                _f(row["rss_mib"], 1),
                str(row["threads"]),
            ]
        )
    out += _table(
        [
            "step ms",
            "marker->reload p50",
            "p90",
            "p99",
            "detect p50",
            "after detect p50",
            f"p50 <= {_f(target['threshold_ms'], 0)} ms",
            "idle CPU % of a core",
            "RSS MiB",
            "threads",
        ],
        rows,
    )
    out += [f"Recommendation rule: {r['recommendation']['rule']}", "", "## Notes", ""]
    out += [f"- {n}" for n in r["notes"]]
    out.append("")
    return "\n".join(out)
