"""The pure formatting of the command line (coordinator/display.py), without a filesystem."""

from __future__ import annotations

from coordinator.commands import HistoryEntry, ReleaseRow
from coordinator.display import Style, fmt_ms, format_history, format_releases, format_status, style_for, table
from coordinator.records import as_status
from tests.helpers import DISPLAY_ID as ID
from tests.helpers import DISPLAY_NOW as NOW
from tests.helpers import DISPLAY_NOW_ISO as NOW_ISO
from tests.helpers import deploying_status as status


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
    lines = format_status(as_status(st), NOW + 30).splitlines()
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
    text = format_status(as_status(st), NOW)
    assert "error     build: build command failed\n  fix     see the log\n  output  | a\n          | b" in text


def test_status_table_shows_the_running_phase() -> None:
    """While deploying, status names the running phase and how long it has run."""
    text = format_status(status({}, "build"), NOW + 4.0)
    assert "phase         build of v2, running for 4.0 s" in text


def test_status_table_tolerates_an_empty_or_odd_status() -> None:
    """Missing or mistyped fields show as '-' or '?' instead of failing."""
    odd = as_status({"state": "weird", "current": "nope", "last_attempt": {"duration_ms": "x"}})
    text = format_status(odd, NOW)
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


def test_status_table_shows_who_paused_when_and_why() -> None:
    """While paused, status shows "paused  by X at T (ago): reason" under the state."""
    st = {
        "state": "paused",
        "paused": {"reason": "incident 42", "by": "alice@web1", "pid": 7, "at": NOW_ISO},
        "desired": {"tag": "v3", "sha": None, "id": ID},
    }
    lines = format_status(as_status(st), NOW + 300).splitlines()
    assert lines[:3] == [
        "state     paused (deploys are paused until coordinator resume)",
        "paused    by alice@web1 at 2026-11-18 08:26:40 UTC (5 min ago): incident 42",
        f"desired   v3  (id {ID})",
    ]


def test_an_unreadable_pause_file_is_shown_with_why() -> None:
    """A pause file that could not be read shows the fixed reason and what was wrong with it."""
    paused = {"reason": "unreadable pause file", "by": None, "pid": None, "at": None, "unreadable": "not valid JSON"}
    text = format_status(as_status({"state": "paused", "paused": paused}), NOW)
    assert "\npaused    unreadable pause file (not valid JSON)\n" in text


def test_releases_table_marks_the_staged_release() -> None:
    """releases: the staged release is marked `s`, and the legend names it."""
    rows = [
        ReleaseRow("v3-aaaaaaaaaaaa", "v3", "a" * 40, NOW - 60, current=False, previous=False, staged=True),
        ReleaseRow("v2-3f9c2a1b7d4e", "v2", "3f9c2a1b7d4e" + "0" * 28, NOW - 120, current=True, previous=False),
    ]
    lines = format_releases(rows, NOW).splitlines()
    assert lines[1].startswith("s  v3-aaaaaaaaaaaa") and lines[2].startswith("*  v2-3f9c2a1b7d4e")
    assert lines[-1] == "(* current, - previous, s staged)"


def test_history_table_says_which_attempts_were_stages() -> None:
    """history: a stage attempt's result reads `stage success`; a line without action is a deploy."""
    staged = HistoryEntry.from_journal(
        {"action": "stage", "tag": "v3", "id": "s1", "result": "success", "started_at": NOW_ISO}
    )
    old = HistoryEntry.from_journal({"tag": "v1", "id": "r1", "result": "success", "started_at": NOW_ISO})
    rows = format_history([staged, old]).splitlines()
    assert "  stage success  " in rows[1] and "  success  " in rows[2] and "stage" not in rows[2]


def test_status_table_shows_the_staged_release_and_the_stage_request() -> None:
    """status: a `staged` row (tag, release, sha, when) and a `stage` row (tag, id, state) with its error."""
    st = {
        "state": "idle",
        "desired": {"tag": "v2", "sha": None, "id": ID},
        "staged": {"tag": "v3", "release": "v3-aaaaaaaaaaaa", "sha": "a" * 40, "request_id": "s1", "at": NOW_ISO},
        "stage": {
            "desired": {"tag": "v4", "sha": None, "id": "s2"},
            "digest": "d",
            "state": "failed",
            "attempt": None,
            "phase": None,
            "error": {"kind": "build", "message": "build command failed with exit code 3"},
        },
    }
    lines = format_status(as_status(st), NOW + 60).splitlines()
    assert "staged    v3  v3-aaaaaaaaaaaa  sha aaaaaaaaaaaa  (staged 1 min ago)" in lines
    assert "stage     v4 (id s2): failed" in lines
    assert "  error   build: build command failed with exit code 3" in lines


def test_releases_table_has_a_signed_by_column_only_when_a_release_was_verified() -> None:
    """releases: with a verified release, a SIGNED BY column (`-` for one built without verification)."""
    rows = [
        ReleaseRow("v2-3f9c2a1b7d4e", "v2", "3f9c2a1b7d4e" + "0" * 28, NOW - 120, True, False, signer="alice (ssh)"),
        ReleaseRow("v1-91aa03c55e10", "v1", "91aa03c55e10" + "0" * 28, NOW - 7200, current=False, previous=True),
    ]
    lines = format_releases(rows, NOW).splitlines()
    assert lines[0].endswith("  SIGNED BY") and lines[0].index("SIGNED BY") == lines[1].index("alice (ssh)")
    assert lines[2].endswith("  -") and len(lines[2]) == lines[0].index("SIGNED BY") + 1


def test_status_and_history_show_the_signer() -> None:
    """status: a `signed by` row under current; history: `signed by` under a verified attempt."""
    st = {"state": "idle", "current": {"release": "v2-3f9c2a1b7d4e", "tag": "v2", "sha": "3f9c", "signer": "alice"}}
    assert "\n  signed by  alice\n" in format_status(as_status(st), NOW)
    entry = HistoryEntry.from_journal({"tag": "v2", "result": "success", "started_at": NOW_ISO, "signer": "alice"})
    assert format_history([entry]).splitlines()[2] == "    signed by alice"


def test_status_shows_the_canary_phase_in_run_order_and_a_canary_error_with_its_output() -> None:
    """The canary's duration sits between pre_swap and swap; its error shows the canary's output."""
    error = {"kind": "canary", "message": "the canary of v2 did not pass", "output": "Traceback\nRuntimeError"}
    st = status({"canary": 1840.0, "fetch": 12.0, "pre_swap": 300.0, "publish": 5.0}, result="failed", error=error)
    text = format_status(as_status({**st, "state": "failed", "error": error}), NOW)
    assert "  phases      fetch 12 ms, publish 5.0 ms, pre_swap 300 ms, canary 1.84 s" in text
    assert "error         canary: the canary of v2 did not pass" in text
    assert "| RuntimeError" in text
