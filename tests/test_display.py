"""The pure formatting of the command line (coordinator/display.py), without a filesystem."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from typing import Any

from coordinator.commands import HistoryEntry, ReleaseRow
from coordinator.display import (
    DeployProgress,
    Progress,
    Style,
    fmt_ms,
    format_history,
    format_releases,
    format_status,
    frame,
    plain_line,
    render_live,
    style_for,
    table,
)

ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NOW = datetime(2026, 11, 18, 8, 26, 40, tzinfo=UTC).timestamp()
NOW_ISO = "2026-11-18T08:26:40.000+00:00"
ID = "a1b2c3d4e5f60718"


def status(phases: dict[str, float], phase: str | None = None, result: str = "running", **kw: Any) -> dict[str, Any]:
    """A status file as the daemon writes it (phases_ms sorted by name, as json.dumps(sort_keys) does)."""
    return {
        "state": "deploying",
        "last_attempt": {
            "id": kw.get("id", ID),
            "tag": "v2",
            "sha": "3f9c2a1b7d4e" + "0" * 28,
            "release": "v2-3f9c2a1b7d4e",
            "result": result,
            "phases_ms": dict(sorted(phases.items())),
            "error": kw.get("error"),
        },
        "phase": {"name": phase, "id": kw.get("id", ID), "tag": "v2", "started_at": NOW_ISO} if phase else None,
        "current": {"release": "v2-3f9c2a1b7d4e", "tag": "v2", "sha": "3f9c2a1b7d4e" + "0" * 28},
    }


def test_durations_read_naturally() -> None:
    """Durations use ms below a second, seconds with two decimals below a minute, then minutes."""
    assert [fmt_ms(v) for v in (0.42, 12.4, 999.0, 2310.0, 65_000.0, None)] == [
        "0.4 ms",
        "12 ms",
        "999 ms",
        "2.31 s",
        "1 min 05 s",
        "-",
    ]


def test_table_aligns_columns_without_trailing_spaces() -> None:
    """Columns are as wide as their widest cell; right-aligned columns line up on the right."""
    lines = table(["A", "NUM", "LAST"], [["xx", "1", ""], ["y", "100", "z"]], right=(1,))
    assert lines == ["A   NUM  LAST", "xx    1", "y   100  z"]


def test_a_terminal_gets_the_live_display_in_colour() -> None:
    """On a terminal the display is live and coloured, with Unicode marks on UTF-8."""
    assert style_for({"TERM": "xterm"}, True, "utf-8") == Style(live=True, color=True, unicode=True, width=100)


def test_no_color_keeps_the_live_display_without_colours() -> None:
    """NO_COLOR turns colours off but keeps the in-place updates."""
    style = style_for({"TERM": "xterm", "NO_COLOR": "1"}, True, "utf-8")
    assert style.live and not style.color


def test_a_dumb_terminal_or_a_pipe_gets_plain_lines() -> None:
    """TERM=dumb and a non-terminal get no live display and no colours."""
    assert not style_for({"TERM": "dumb"}, True, "utf-8").live
    assert style_for({"TERM": "xterm"}, False, "utf-8") == Style(live=False, color=False, unicode=True, width=100)


def test_a_non_utf8_terminal_gets_ascii_marks() -> None:
    """Without UTF-8 the marks and spinner are ASCII."""
    style = style_for({"TERM": "xterm", "NO_COLOR": "1"}, True, "ascii")
    assert (style.ok, style.bad, style.spinner(1)) == ("ok", "x", "\\")


def test_progress_ignores_other_requests() -> None:
    """Phases of an attempt with another request id are not ours."""
    p = Progress("v2", ID)
    assert p.update(status({"fetch": 5.0}, "prepare", id="someoneelse")) == []
    assert p.done == {} and p.running is None


def test_progress_reports_starts_and_ends_in_phase_order() -> None:
    """A running phase is reported when it starts; done phases in the order they run, not by name."""
    p = Progress("v2", ID)
    assert p.update(status({}, "build")) == [("build", None)]
    assert p.update(status({"build": 900.0, "publish": 8.0, "swap": 1.0, "reload": 0.3}, result="success")) == [
        ("build", 900.0),
        ("publish", 8.0),
        ("swap", 1.0),
        ("reload", 0.3),
    ]
    assert p.running is None and p.result == "success"


def test_progress_does_not_show_prune() -> None:
    """prune is housekeeping: recorded by the daemon, not shown as a phase."""
    p = Progress("v2", ID)
    p.update(status({"swap": 1.0, "prune": 2.0}, result="success"))
    assert list(p.done) == ["swap"]


def test_a_rollback_marks_verify_as_the_failed_phase() -> None:
    """After a rollback verify is the failed phase; after a failure, the last phase that ran."""
    rolled = Progress("v2", ID)
    rolled.update(status({"swap": 1.0, "reload": 1.0, "verify": 2000.0, "rollback": 5.0}, result="rolled_back"))
    failed = Progress("v2", ID)
    failed.update(status({"fetch": 10.0, "prepare": 5.0, "build": 50.0}, result="failed"))
    assert (rolled.failed_phase(), failed.failed_phase()) == ("verify", "build")


def test_a_running_rollback_marks_verify_as_failed_before_the_attempt_ends() -> None:
    """verify is known to have failed as soon as the rollback starts, so plain output never says it passed."""
    out = io.StringIO()
    dp = DeployProgress(out, Style(live=False), "v2", ID, NOW)
    dp.update(status({"swap": 1.0, "reload": 1.0, "verify": 1000.0}, "rollback"), NOW + 1)
    assert out.getvalue().splitlines()[-2:] == [plain_line("verify", 1000.0, failed=True), plain_line("rollback", None)]


def test_live_lines_show_done_phases_and_the_running_one_with_its_elapsed_time() -> None:
    """Done phases get a check mark and duration; the running one a spinner and seconds since it started."""
    p = Progress("v2", ID)
    p.update(status({"fetch": 12.0, "prepare": 41.0}, "build"))
    lines = render_live(p, Style(live=True), NOW + 2.34, 3.0, 0)
    assert lines == [
        f"deploying v2 (id {ID})",
        "  ✓ fetch         12 ms",
        "  ✓ prepare       41 ms",
        "  ⠋ build         2.3 s",
    ]


def test_live_lines_wait_for_the_daemon_before_any_phase() -> None:
    """Before the daemon shows anything, the display says it is waiting, with the time waited."""
    lines = render_live(Progress("v2", ID), Style(live=True, unicode=False), NOW, 1.25, 2)
    assert lines[-1] == "  | waiting       1.2 s"


def test_a_frame_redraws_over_the_previous_lines() -> None:
    """A frame moves up over the lines drawn before, erases and rewrites each, and clears leftovers."""
    assert frame(["a", "b"], 0, 80) == "\x1b[2Ka\n\x1b[2Kb\n"
    assert frame(["a"], 3, 80) == "\x1b[3A\r\x1b[2Ka\n\x1b[J"


def test_a_frame_cuts_long_lines_to_the_terminal_width_keeping_colours() -> None:
    """Lines are cut to width - 1 visible characters so they never wrap; colour codes are kept whole."""
    out = frame(["\x1b[32m✓\x1b[0m " + "x" * 50], 0, 11)
    assert out == "\x1b[2K\x1b[32m✓\x1b[0m xxxxxxxx\n"


def test_plain_progress_writes_one_line_per_change_without_escape_codes() -> None:
    """Off a terminal each phase start and end is one plain line, and the summary ends it."""
    out = io.StringIO()
    dp = DeployProgress(out, Style(live=False), "v2", ID, NOW)
    dp.update(status({"fetch": 12.0}, "build"), NOW + 1)
    dp.tick(NOW + 2)
    final = status({"fetch": 12.0, "build": 900.0, "swap": 1.0}, result="success")
    dp.update(final, NOW + 3)
    dp.finish(final, NOW + 3)
    assert out.getvalue().splitlines() == [
        plain_line("fetch", 12.0),
        plain_line("build", None),
        plain_line("build", 900.0),
        plain_line("swap", 1.0),
        "v2 is current and reloaded: release v2-3f9c2a1b7d4e, sha 3f9c2a1b7d4e, 3.00 s",
    ]
    assert "\x1b" not in out.getvalue()


def test_plain_progress_marks_the_failed_phase() -> None:
    """The phase a failed attempt ended in is written as FAILED."""
    out = io.StringIO()
    dp = DeployProgress(out, Style(live=False), "v2", ID, NOW)
    dp.update(status({"fetch": 12.0, "build": 50.0}, result="failed"), NOW + 1)
    assert out.getvalue().splitlines()[-1] == "  build     FAILED     50 ms"


def test_live_progress_ends_with_the_summary_line() -> None:
    """The live display's last frame has every phase done, then a one-line summary below it."""
    out = io.StringIO()
    dp = DeployProgress(out, Style(live=True, color=True), "v2", ID, NOW)
    dp.update(status({}, "build"), NOW + 0.5)
    final = status({"build": 900.0, "swap": 1.0}, result="success")
    dp.update(final, NOW + 1)
    dp.finish(final, NOW + 1)
    text = ESC.sub("", out.getvalue())
    assert text.splitlines()[-1] == "✓ v2 is current and reloaded: release v2-3f9c2a1b7d4e, sha 3f9c2a1b7d4e, 1.00 s"
    assert "\x1b[32m✓\x1b[0m" in out.getvalue()


def test_status_table_shows_state_current_previous_and_the_last_attempt() -> None:
    """status shows the state explained, current and previous with tag, release and sha, and the last attempt."""
    st = {
        "state": "idle",
        "desired": {"tag": "v2", "sha": None, "id": ID},
        "current": {"release": "v2-3f9c2a1b7d4e", "tag": "v2", "sha": "3f9c2a1b7d4e" + "0" * 28},
        "previous": {"release": "v1-91aa03c55e10", "tag": "v1", "sha": "91aa03c55e10" + "0" * 28},
        "reloaded": "v2-3f9c2a1b7d4e",
        "last_attempt": {
            "tag": "v2",
            "id": ID,
            "result": "success",
            "duration_ms": 2450.0,
            "finished_at": NOW_ISO,
            "phases_ms": {"fetch": 12.0, "swap": 1.0},
        },
        "pid": 42,
        "updated_at": NOW_ISO,
    }
    lines = format_status(st, NOW + 30).splitlines()
    assert lines == [
        "state         idle (converged)",
        f"desired       v2  (id {ID})",
        "current       v2  v2-3f9c2a1b7d4e  sha 3f9c2a1b7d4e  (reloaded)",
        "previous      v1  v1-91aa03c55e10  sha 91aa03c55e10",
        f"last attempt  v2  success  2.45 s  at 2026-11-18 08:26:40 UTC  id {ID}",
        "  phases      fetch 12 ms, swap 1.0 ms",
        "daemon        pid 42, status written 2026-11-18 08:26:40 UTC (30 s ago)",
    ]


def test_status_table_shows_the_error_its_fix_and_the_output_tail() -> None:
    """An error is shown with its kind, its fix, and the last lines of a build's output."""
    st = {
        "state": "failed",
        "error": {"kind": "build", "message": "build command failed", "fix": "see the log", "output": "a\nb"},
    }
    text = format_status(st, NOW)
    assert "error     build: build command failed\n  fix     see the log\n  output  | a\n          | b" in text


def test_status_table_shows_the_running_phase() -> None:
    """While deploying, status names the running phase and how long it has run."""
    text = format_status(status({}, "build"), NOW + 4.0)
    assert "phase         build of v2, running for 4.0 s" in text


def test_status_table_tolerates_an_empty_or_odd_status() -> None:
    """Missing or mistyped fields show as '-' or '?' instead of failing."""
    text = format_status({"state": "weird", "current": "nope", "last_attempt": {"duration_ms": "x"}}, NOW)
    assert text.splitlines()[:3] == ["state         weird", "desired       -", "current       -"]


def test_releases_table_marks_current_and_previous_and_shows_age() -> None:
    """releases: one aligned row per release with its mark, tag, sha and creation time."""
    rows = [
        ReleaseRow("v2-3f9c2a1b7d4e", "v2", "3f9c2a1b7d4e" + "0" * 28, NOW - 120, current=True, previous=False),
        ReleaseRow("v10-91aa03c55e10", "v10", "91aa03c55e10" + "0" * 28, NOW - 7200, current=False, previous=True),
        ReleaseRow("odd", None, None, None, current=False, previous=False),
    ]
    assert format_releases(rows, NOW).splitlines() == [
        "   RELEASE           TAG  SHA           CREATED (UTC)",
        "*  v2-3f9c2a1b7d4e   v2   3f9c2a1b7d4e  2026-11-18 08:24:40 (2 min ago)",
        "-  v10-91aa03c55e10  v10  91aa03c55e10  2026-11-18 06:26:40 (2 h ago)",
        "   odd               ?    -             ?",
        "(* current, - previous)",
    ]


def test_history_table_puts_the_error_under_its_row() -> None:
    """history: one row per deploy, the error summary on an indented line below a failed one."""
    failed = HistoryEntry.from_journal(
        {"tag": "v9", "id": "r2", "result": "failed", "started_at": NOW_ISO, "duration_ms": 20.0,
         "phases_ms": {"fetch": 19.0}, "error": {"kind": "tag_not_found", "message": "tag v9 not found"}}
    )  # fmt: skip
    ok = HistoryEntry.from_journal(
        {"tag": "v1", "id": "r1", "sha": "12f34eda5079aa", "result": "success", "started_at": NOW_ISO,
         "duration_ms": 1050.0, "phases_ms": {"swap": 0.3, "fetch": 15.0}}
    )  # fmt: skip
    assert format_history([failed, ok]).splitlines() == [
        "STARTED (UTC)        TAG  SHA       RESULT    TOTAL  ID  PHASES",
        "2026-11-18 08:26:40  v9   -         failed    20 ms  r2  fetch 19 ms",
        "    error: tag_not_found: tag v9 not found",
        "2026-11-18 08:26:40  v1   12f34eda  success  1.05 s  r1  fetch 15 ms, swap 0.3 ms",
    ]
