"""Unit tests for benchmarks.targets: each issue target is judged from the run's own figures."""

from __future__ import annotations

from typing import Any

from benchmarks.targets import RECOMMENDED_UWSGI, build_targets, evaluate, reload_target


def _result(p50: float, p99: float, cpu: float, wakeups: float, large_ratio: float | None) -> dict[str, Any]:
    """The least of a run's results that evaluate() reads."""
    cells = [{"changed": 10, "prepare_ms": {"p50": 60.0}, "checkout_f_ms": {"p50": 60.0 / (large_ratio or 1)}}]
    if large_ratio is not None:
        cells[0]["ratio_prepare_to_checkout"] = large_ratio
    return {
        "warm": {"metrics": {"ext_touch_seen": {"p50": p50, "p99": p99, "n": 40}}, "phases": {}},
        "idle_long": {
            "idle_cpu_pct": cpu,
            "idle_cpu_pct_threads": cpu,
            "rss_mib": 40.0,
            "wall_s": 60.0,
            "wakeups_per_s": wakeups,
        },
        "newtag": {"sizes": [{"files": 50000, "first": {}, "cells": cells}]},
    }


def _met(rows: list[dict[str, Any]]) -> dict[str, bool | None]:
    return {row["id"]: row["met"] for row in rows}


def test_the_issue_14_targets_are_met_within_bounds() -> None:
    """p50 3 ms, p99 6 ms, 0.05 % CPU, 2 wake-ups/s and 1 x at 50k files are met."""
    met = _met(evaluate(_result(3.0, 6.0, 0.05, 2.0, 1.0)))
    assert met["ondisk_p50_rename"] and met["ondisk_p99_rename"]
    assert met["idle_cpu"] and met["idle_wakeups"] and met["prepare_vs_checkout_large"]


def test_the_issue_14_targets_are_missed_beyond_bounds() -> None:
    """Just above each bound, the target is reported not met."""
    met = _met(evaluate(_result(3.1, 6.1, 0.06, 2.1, 1.01)))
    assert met["ondisk_p50_rename"] is False and met["ondisk_p99_rename"] is False
    assert met["idle_cpu"] is False and met["idle_wakeups"] is False
    assert met["prepare_vs_checkout_large"] is False


def test_a_size_not_measured_is_reported_as_such() -> None:
    """Without the 50k-file ratio the large-tree target is 'not measured', neither met nor missed."""
    rows = {row["id"]: row for row in evaluate(_result(1.0, 2.0, 0.01, 0.5, None))}
    assert rows["prepare_vs_checkout_large"]["met"] is None
    assert rows["prepare_vs_checkout_large"]["figure"] == "not measured"


def _staged(ratio: float) -> dict[str, Any]:
    """The staged section's figures evaluate() reads, with on-disk p50 10 ms and the given ratio."""
    detect = {"p50": 4.0}
    return {
        "on_disk": {"p50": 10.0, "n": 20},
        "staged": {"p50": 10.0 * ratio, "n": 20},
        "detect": {"on_disk": detect, "staged": detect},
        "ratio_p50": ratio,
    }


def test_a_staged_deploy_within_twice_the_on_disk_one_is_met() -> None:
    """A staged/on-disk p50 ratio of exactly 2 meets the staged-release target."""
    rows = {row["id"]: row for row in evaluate({**_result(1.0, 2.0, 0.01, 0.5, 1.0), "staged": _staged(2.0)})}
    assert rows["staged_vs_on_disk"]["met"] is True
    assert rows["staged_vs_on_disk"]["value"] == 2.0


def test_a_staged_deploy_beyond_twice_the_on_disk_one_is_missed() -> None:
    """A ratio just above 2 is reported not met, with the ratio in the figure."""
    rows = {row["id"]: row for row in evaluate({**_result(1.0, 2.0, 0.01, 0.5, 1.0), "staged": _staged(2.01)})}
    assert rows["staged_vs_on_disk"]["met"] is False
    assert "2.01 x" in rows["staged_vs_on_disk"]["figure"]


def test_the_staged_target_without_its_section_is_not_measured() -> None:
    """Without the staged section (`--skip staged`) the target is 'not measured', neither met nor missed."""
    rows = {row["id"]: row for row in evaluate({**_result(1.0, 2.0, 0.01, 0.5, 1.0), "staged": None})}
    assert rows["staged_vs_on_disk"]["met"] is None
    assert rows["staged_vs_on_disk"]["figure"] == "not measured"


def _strategies(deploys: int, failures: int, key: str = RECOMMENDED_UWSGI) -> dict[str, Any]:
    """The least of a strategies run that reload_target() reads."""
    row = {
        "key": key,
        "deploys": deploys,
        "failures": failures,
        "mixed": 0,
        "late_deploys": [],
        "requests": 300_000,
        "latency_deploys_ms": {"max": 1338.0},
        "latency_steady_ms": {"max": 167.0},
        "gap_ms": {"deploys": {"max": 1343.0}},
    }
    return {"strategies": [row]}


def test_the_recommended_uwsgi_set_up_without_a_failure_over_200_reloads_is_met() -> None:
    """0 failed over 200 reloads meets the reload target, and the figure states the worst latency."""
    row = reload_target(_strategies(200, 0))
    assert row["met"] is True
    assert "max latency during a reload 1338 ms" in row["figure"]


def test_one_failed_request_misses_the_reload_target() -> None:
    """A single failed request over 200 reloads is not met."""
    assert reload_target(_strategies(200, 1))["met"] is False


def test_fewer_than_200_reloads_miss_the_reload_target_and_say_why() -> None:
    """0 failed over 10 reloads is too few to meet the target; the reason names the count."""
    row = reload_target(_strategies(10, 0))
    assert row["met"] is False and "only 10 reloads" in row["why"]


def test_the_reload_target_without_the_recommended_set_up_is_not_measured() -> None:
    """A run without the recommended strategy (`--only gunicorn-hup`) leaves the target not measured."""
    assert reload_target(_strategies(200, 0, key="gunicorn-hup"))["met"] is None
    assert reload_target(None)["figure"] == "not measured"


def _spare_cell(files: int, changed: int, prepare: float, checkout: float) -> dict[str, Any]:
    git = {"total_ms": {"p50": prepare - 2.0}, "by_cmd_p50_ms": {"checkout-index": prepare - 8.0, "diff-tree": 6.0}}
    return {
        "files": files,
        "changed": changed,
        "prepare_ms": {"p50": prepare},
        "checkout_f_ms": {"p50": checkout},
        "ratio_prepare_to_checkout": prepare / checkout,
        "prepare_modes": ["spare"],
        "prepare_git": git,
        "linked": 0.0,
        "written": float(changed),
    }


def test_cells_prepared_from_the_spare_explain_the_time_by_git_command() -> None:
    """A missed target whose cells all came from the spare says where the time went, not 'links'."""
    cells = {1000: [_spare_cell(1000, 10, 20.0, 30.0)], 10000: [_spare_cell(10000, 10, 50.0, 30.0)]}
    cells[10000].append(_spare_cell(10000, 100, 20.0, 30.0))
    sizes = [{"files": n, "first": {"cp_al_ms": {"p50": 30.0}}, "cells": c} for n, c in cells.items()]
    rows = {row["id"]: row for row in evaluate({**_result(1.0, 2.0, 0.01, 0.5, 1.0), "newtag": {"sizes": sizes}})}
    assert rows["growth"]["met"] is False and "prepared from the spare" in rows["growth"]["why"]
    assert "`diff-tree` 6.0 ms" in rows["growth"]["why"] and "links" not in rows["growth"]["why"]
    assert rows["prepare_vs_checkout"]["met"] is False
    assert "prepared from the spare" in rows["prepare_vs_checkout"]["why"]


def _steady(ratio_10k_100: float, ratio_50k_10: float, p_1k: float, p_10k: float, modes: list[str]) -> dict[str, Any]:
    """The least of a buildsandbox steady-state result that build_targets() reads."""

    def cell(files: int, changed: int, prepare: float, ratio: float) -> dict[str, Any]:
        return {
            "files": files,
            "changed": changed,
            "n": 5,
            "sandboxed": True,
            "prepare_ms": prepare,
            "checkout_f_ms": prepare / ratio,
            "ratio_prepare_to_checkout": ratio,
            "ready_ms": 80.0,
            "modes": modes,
        }

    return {
        "cells": [
            cell(1000, 10, p_1k, 1.0),
            cell(10_000, 10, p_10k, 0.5),
            cell(10_000, 100, 40.0, ratio_10k_100),
            cell(50_000, 10, 50.0, ratio_50k_10),
        ]
    }


def test_the_build_command_targets_are_met_within_bounds() -> None:
    """With a build command: 0.5 x at 10k/100, 1 x at 50k/10 and growth 2 x are met, saying the spare was used."""
    rows = {row["id"]: row for row in build_targets(_steady(0.5, 1.0, 20.0, 40.0, ["spare"]))}
    assert [
        rows[k]["met"] for k in ("build_prepare_vs_checkout", "build_prepare_vs_checkout_large", "build_growth")
    ] == [
        True,
        True,
        True,
    ]
    assert "from the spare" in rows["build_prepare_vs_checkout"]["why"]


def test_the_build_command_targets_are_missed_beyond_bounds_saying_how_releases_were_prepared() -> None:
    """Just above each bound the targets are not met; a cell not prepared from the spare alone says so."""
    rows = {row["id"]: row for row in build_targets(_steady(0.51, 1.01, 20.0, 40.2, ["incremental", "spare"]))}
    assert [
        rows[k]["met"] for k in ("build_prepare_vs_checkout", "build_prepare_vs_checkout_large", "build_growth")
    ] == [
        False,
        False,
        False,
    ]
    assert "prepared as incremental, spare" in rows["build_growth"]["why"]


def test_the_build_command_targets_without_the_sandbox_are_not_met_and_say_why() -> None:
    """A cell measured where the sandbox is unavailable (full checkouts) cannot meet a target, and says why."""
    st = _steady(0.4, 0.9, 20.0, 30.0, ["full"])
    for c in st["cells"]:
        c.update(sandboxed=False, not_sandboxed_because="build_sandbox_unavailable user namespaces refused")
    rows = {row["id"]: row for row in build_targets(st)}
    assert rows["build_prepare_vs_checkout"]["met"] is False
    assert "user namespaces refused" in rows["build_prepare_vs_checkout"]["why"]


def test_the_build_command_targets_without_their_cells_are_not_measured() -> None:
    """A quick run (no 10k or 50k cell) or no steady state at all: each target 'not measured'."""
    assert {row["met"] for row in build_targets(None)} == {None}
    assert {row["figure"] for row in build_targets({"cells": []})} == {"not measured"}
