"""The Markdown report, rendered from the results dictionary (the same data as the JSON file)."""

from __future__ import annotations

import math
import re
from typing import Any

from benchmarks.staged import render_section as render_staged

__all__ = ["render"]


def _f(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float | int):
        return f"{v:.{nd}f}"
    return str(v)


def _row(cells: list[str]) -> str:
    # a bare "|" inside a cell (even in a code span) would end the cell: escape it
    return "| " + " | ".join(re.sub(r"(?<!\\)\|", r"\\|", c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    spec = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in spec]
    return [_row(header), _row(sep), *(_row(r) for r in rows), ""]


def _summary_cells(s: dict[str, Any]) -> list[str]:
    return [_f(s.get("p50")), _f(s.get("p90")), _f(s.get("p99")), _f(s.get("max")), str(s.get("n", 0))]


def _met(v: bool | None) -> str:
    return "-" if v is None else "**met**" if v else "**not met**"


def _targets(r: dict[str, Any]) -> list[str]:
    out = ["## Targets", ""]
    rows = [[t["target"], t["figure"], _met(t["met"])] for t in r.get("targets", [])]
    out += _table(["target (issue)", "this run", "verdict"], rows, "lll")
    why = [t for t in r.get("targets", []) if t.get("met") is False and t.get("why")]
    if why:
        out += ["Why the targets not met are missed (figures from this run):", ""]
        out += [f"- *{t['target']}*: {t['why']}" for t in why]
        out.append("")
    figs = r.get("figures") or []
    if figs:
        out += ["Figures: " + ", ".join(f"[{f['title']}]({f['file']})" for f in figs) + ".", ""]
    return out


def _on_disk_kinds(r: dict[str, Any]) -> list[str]:
    cm = r.get("configmap")
    if not cm:
        return []
    warm = r["warm"]
    out = [
        "### Marker replaced by rename vs ConfigMap-style `..data` swap (same run, same ROOT)",
        "",
        f"The ConfigMap rows: a fresh daemon with `--marker ROOT/configmap/deploy.request`, where "
        "`deploy.request -> ..data/deploy.request` and `..data -> ..<timestamp>/`; each update writes a new "
        "`..<timestamp>/` directory, renames a `..data_tmp` symlink over `..data` (t0 = just before that rename) "
        f"and deletes the old directory, as kubelet does. {cm['n']} deploys alternating v1/v2.",
        "",
    ]
    rows = []
    for label, src in (("marker renamed", warm), ("ConfigMap `..data` swap", cm)):
        for key, what in (("ext_swap", "-> `current` swapped"), ("ext_touch_seen", "-> **reload file touched**")):
            s = src["metrics"].get(key)
            if s:
                rows.append([f"{label} {what}", *_summary_cells(s)])
    out += _table(["ms (seen from outside)", "p50", "p90", "p99", "max", "n"], rows)
    rows = []
    for key, label, _what in r["phase_labels"]:
        a, b = warm["phases"].get(key) or {}, cm["phases"].get(key) or {}
        rows.append([label, _f(a.get("p50")), _f(a.get("p99")), _f(b.get("p50")), _f(b.get("p99"))])
    out += ["Per-phase breakdown (daemon log timestamps, ms):", ""]
    out += _table(["phase", "rename p50", "rename p99", "ConfigMap p50", "ConfigMap p99"], rows)
    return out


def _idle(r: dict[str, Any]) -> list[str]:
    idle = r.get("idle_long")
    if not idle:
        return []
    return [
        f"## Idle cost of the daemon ({_f(idle['wall_s'], 0)} s, default step {r['config']['default_step_ms']} ms)",
        "",
        "Right after the deploys above, the same daemon with nothing to do: CPU time from `/proc/<pid>/stat` "
        "(utime+stime, 10 ms ticks) and, in brackets, the sum of its threads' schedstat run times.",
        "",
        *_table(
            [
                "idle CPU (% of one core)",
                "wake-ups/s",
                "CPU us per wake-up",
                "RSS MiB (start -> end)",
                "threads",
                "whole machine busy (% of all cores)",
            ],
            [
                [
                    f"{_f(idle['idle_cpu_pct'], 2)} ({_f(idle['idle_cpu_pct_threads'], 2)})",
                    _f(idle.get("wakeups_per_s"), 0),
                    _f(idle.get("cpu_us_per_wakeup"), 1),
                    f"{_f(idle['rss_mib_start'], 1)} -> {_f(idle['rss_mib'], 1)}",
                    str(idle["threads"]),
                    _f(idle["system_busy_pct"], 1),
                ]
            ],
            "rrrrrr",
        ),
        "Wake-ups are the context switches of all the daemon's threads. The CPU each one costs depends on the "
        "host and varies from run to run on a VM; the wake-up rate, set by the watcher step, does not.",
        "",
    ]


def _range(s: dict[str, Any], nd: int = 1) -> str:
    return f"{_f(s.get('p50'), nd)} ({_f(s.get('min'), nd)}-{_f(s.get('max'), nd)})"


def _newtag(r: dict[str, Any]) -> list[str]:
    nt = r.get("newtag")
    if not nt:
        return []
    cfg = nt["config"]
    sizes = ", ".join(f"{s['files']:,}" for s in nt["sizes"])
    out = [
        "## New-tag deploys",
        "",
        f"Synthetic repositories (generated by `git fast-import`, deterministic) of {sizes} files of about "
        f"1.2 KB. Each tag changes "
        f"{', '.join(str(c) for c in cfg['changes'])} files of the previous one, {cfg['reps']} tags per change "
        "size, deployed in a chain through the real daemon (default watcher step), each a tag not yet "
        "fetched. *marker -> reloaded*: marker rename -> reload file touched, seen from outside (includes "
        "the fetch from a local repository, preparation, `syncfs`, swap and touch). *prepare*: the daemon's "
        "`prepare` phase (`duration_ms` of its log event, = status `phases_ms.prepare`). Interleaved with each "
        "deploy (in alternating order), in the same run: in-place `git checkout -f` of the same tag in a plain "
        "clone walking the same chain. The file system is synced before each timed operation and nothing is "
        "deleted until the run ends. Medians, with min-max in brackets; ratios are of the medians. "
        "*git in prepare*: the summed durations of the git processes that ended within the prepare phase "
        "(the daemons of this section log at debug level, which reports each git call; calls that run "
        "concurrently are both counted).",
        "",
    ]
    rows = []
    for s in nt["sizes"]:
        for c in s["cells"]:
            rows.append(
                [
                    f"{s['files']:,}",
                    str(c["changed"]),
                    str(c["n"]),
                    _range(c["e2e_ms"], 0),
                    _f(c["fetch_ms"]["p50"], 1),
                    _range(c["prepare_ms"]),
                    _f(c["prepare_git"]["total_ms"]["p50"], 1),
                    _f(c["publish_ms"]["p50"], 1),
                    _range(c["checkout_f_ms"]),
                    _f(c["ratio_prepare_to_checkout"]),
                    _f(c["ratio_e2e_to_checkout"]),
                    f"{_f(c['linked'], 0)} / {_f(c['written'], 0)}",
                ]
            )
    out += _table(
        [
            "files",
            "changed",
            "n",
            "marker -> reloaded ms",
            "fetch ms",
            "**prepare** ms",
            "git in prepare ms",
            "publish ms",
            "`checkout -f` ms",
            "prepare / checkout",
            "end-to-end / checkout",
            "linked / written",
        ],
        rows,
    )
    git_lines = []
    for s in nt["sizes"]:
        for c in s["cells"]:
            by = c["prepare_git"]["by_cmd_p50_ms"]
            if by:
                git_lines.append(
                    f"{s['files']:,}/{c['changed']}: " + ", ".join(f"{k} {_f(v, 1)}" for k, v in by.items())
                )
    if git_lines:
        out += ["git processes inside prepare, p50 ms by command (files/changed): " + "; ".join(git_lines) + ".", ""]
    out += [
        "First deploys (no previous release: a fresh ROOT and daemon each time, so `prepare` is a full "
        "checkout), interleaved (in an order rotated on every repetition) with `git worktree add --detach` and "
        "`git archive | tar -x` into an empty directory, then `cp -al` of the release just built (the floor of "
        "any approach that hard-links every file), all of the same tag:",
        "",
    ]
    rows = []
    for s in nt["sizes"]:
        f = s["first"]
        rows.append(
            [
                f"{s['files']:,}",
                str(f["n"]),
                _range(f["e2e_ms"], 0),
                _f(f["fetch_ms"]["p50"], 0),
                _range(f["prepare_ms"], 0),
                _f(f["prepare_git"]["total_ms"]["p50"], 0),
                _f(f["publish_ms"]["p50"], 0),
                _range(f["worktree_add_ms"], 0),
                _range(f["archive_tar_ms"], 0),
                _range(f["cp_al_ms"], 0),
                _f(f["ratio_prepare_to_worktree"]),
            ]
        )
    out += _table(
        [
            "files",
            "n",
            "marker -> reloaded ms",
            "fetch ms",
            "**prepare** ms",
            "git in prepare ms",
            "publish ms",
            "`worktree add` ms",
            "`archive | tar` ms",
            "`cp -al` ms",
            "prepare / worktree",
        ],
        rows,
    )
    figs = {f["name"]: f for f in r.get("figures") or []}
    for name in ("prepare-vs-size", "prepare-vs-changes"):
        if name in figs:
            out += [f"![{figs[name]['title']}]({figs[name]['file']})", ""]
    return out


def _torn(r: dict[str, Any]) -> list[str]:
    t = r.get("torn")
    if not t:
        return []
    out = [
        "## Unsafe window: torn reads while deploying",
        "",
        f"A reader process reads every file of the live tree ({t['files']:,} files) over and over; each file's "
        "first line names the version that last wrote it, so each pass is classified as one version's tree, "
        "*torn* (files of two versions), *missing* (a file unlinked and not yet recreated) or *partial* (a file "
        f"empty or cut short). Each method walks the same chain of {t['deploys_per_method']} new tags "
        f"({', '.join(str(c) for c in t['changes'])} files changed per tag). *window*: for in-place methods, how "
        "long the live tree was being rewritten (the command's duration); *observed*: from the start of the "
        "first to the end of the last unsafe pass of a deploy.",
        "",
    ]
    rows = []
    for key, m in t["methods"].items():
        inplace = key in ("checkout", "archive")
        rows.append(
            [
                m["label"],
                str(m["deploys"]),
                str(m["passes_during_deploys"]),
                f"**{m['unsafe_passes']}** ({m['torn']} / {m['missing']} / {m['partial']})",
                f"{m['affected_deploys']} of {m['deploys']}",
                _f(m["pass_ms"]["p50"], 1),
                f"{_f(m['deploy_ms']['p50'], 0)} ({_f(m['deploy_ms']['max'], 0)})" if inplace else "0 (rename)",
                f"{_f(m['observed_span_ms']['p50'], 0)} ({_f(m['observed_span_ms']['max'], 0)})",
            ]
        )
    out += _table(
        [
            "method",
            "deploys",
            "passes during deploys",
            "unsafe passes (torn / missing / partial)",
            "deploys affected",
            "pass ms",
            "window ms p50 (max)",
            "observed ms p50 (max)",
        ],
        rows,
        "lrrrrrrr",
    )
    rows = []
    for key, m in t["methods"].items():
        for c, b in m["by_changed"].items():
            rows.append(
                [
                    key,
                    c,
                    f"{b['affected']} of {b['deploys']}",
                    str(b["unsafe_passes"]),
                    str(b["passes_during"]),
                    _f(b["duration_ms"]["p50"], 0),
                ]
            )
    out += ["By change size:", ""]
    out += _table(["method", "changed", "deploys affected", "unsafe passes", "passes during", "deploy ms p50"], rows)
    return out


def _journal(m: dict[str, Any]) -> str:
    opts = f" (`{m['fs_options']}`)" if m.get("fs_options") else ""
    if m.get("ext4_journal") is False:
        return (
            f"{opts}, **without a journal**: ext4 then skips inodes freed in the last 60 s (360 s while their "
            "inode-table block is dirty) when it allocates new ones, so creating files right after a large "
            "deletion is several times slower (nothing is deleted while measuring; see the new-tag section)"
        )
    return opts


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    cfg = r["config"]
    warm = r["warm"]
    out: list[str] = [f"# coordinator benchmark, {r['date']}", ""]
    out += _targets(r)
    reco = r.get("recommendation")
    out += [
        f"**Baseline**: in-place `git checkout -f` between the two on-disk tags p50 "
        f"{_f(r['baseline']['summary']['p50'])} ms; our marker -> reload p50 is {_f(r['baseline']['ratio_p50'], 3)} x "
        f"that ({_f(r['baseline']['speedup_p50'], 1)} times faster).",
        "",
    ]
    if reco:
        out += [f"**Recommended `--watch-step-ms`**: {reco['step_ms']} ({reco['why']}).", ""]
    sections = ", ".join(f"{k} {_f(v, 0)} s" for k, v in (r.get("sections_s") or {}).items())
    out += [
        "## Machine",
        "",
        f"- {m['nproc']} CPUs (`nproc`), {m['cpu_model']}; Linux {m['kernel']}; {m['fs_type']} at the work dir"
        + _journal(m),
        f"- Python {m['python']}; {m['git']}; watchfiles {m['watchfiles']}; watcher {m.get('watcher', '?')}; "
        f"coordinator at {m['coordinator_rev']}"
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
        f"- synthetic repo of the on-disk deploys: {r['repo']['files']} files ({_f(r['repo']['bytes'] / 1e6, 1)} MB), "
        f"tags v1 and v2 differing in {r['repo']['changed']} files",
        f"- total run time {_f(r['duration_s'], 0)} s" + (f" ({sections})" if sections else ""),
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
    out += _on_disk_kinds(r)
    figs = {f["name"]: f for f in r.get("figures") or []}
    if "latency" in figs:
        out += [f"![{figs['latency']['title']}]({figs['latency']['file']})", ""]
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
    ]
    out += _idle(r)
    if r["watch_steps"]:
        threshold = r["target"]["threshold_ms"]
        out += [
            "## Watcher step trade-off",
            "",
            f"Each row: a fresh daemon with `--watch-step-ms N` on the same ROOT, {cfg['table_deploys']} deploys "
            f"of a release on disk, then {_f(cfg['idle_seconds'], 0)} s of idleness measured from "
            "`/proc/<pid>/stat` (utime+stime, 10 ms ticks; in brackets the sum of the threads' schedstat run "
            "times). `after detect` = `deploy_started` event -> reload file touched: the part the watcher step "
            "does not influence.",
            "",
        ]
        rows = []
        for row in r["watch_steps"]:
            mark = " (default)" if row["step_ms"] == cfg["default_step_ms"] else ""
            rec = " **recommended**" if reco and row["step_ms"] == reco["step_ms"] else ""
            rl = row["marker_to_reload"]
            rows.append(
                [
                    f"{row['step_ms']}{mark}{rec}",
                    _f(rl["p50"]),
                    _f(rl["p90"]),
                    _f(rl["p99"]),
                    _f(row["detect"]["p50"]),
                    _f(row["after_detect"]["p50"]),
                    "yes" if rl["p50"] <= threshold else "no",
                    f"{_f(row['idle_cpu_pct'], 2)} ({_f(row['idle_cpu_pct_threads'], 2)})",
                    _f(row.get("wakeups_per_s"), 0),
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
                f"p50 <= {_f(threshold, 0)} ms",
                "idle CPU % of a core",
                "wake-ups/s",
                "RSS MiB",
                "threads",
            ],
            rows,
        )
        if reco:
            out += [f"Recommendation rule: {reco['rule']}", ""]
    out += _newtag(r)
    out += _torn(r)
    if r.get("staged"):
        out.append(render_staged(r["staged"]))
    out += ["## Notes", ""]
    out += [f"- {n}" for n in r["notes"]]
    out.append("")
    return "\n".join(out)
