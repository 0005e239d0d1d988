"""The progress of `deploy --wait` (coordinator/progress.py), from status records, without a filesystem."""

from __future__ import annotations

import io
import re

import pytest

from coordinator.display import Style
from coordinator.progress import DeployProgress, Progress, StageProgress, frame, plain_line, render_live, summary_line
from coordinator.records import as_status
from tests.helpers import DISPLAY_ID as ID
from tests.helpers import DISPLAY_NOW as NOW
from tests.helpers import deploying_status as status

ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


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
        "v2 is current; reload requested (not verified as served): release v2-3f9c2a1b7d4e, sha 3f9c2a1b7d4e, 3.00 s",
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
    assert text.splitlines()[-1] == (
        "✓ v2 is current; reload requested (not verified as served): release v2-3f9c2a1b7d4e, sha 3f9c2a1b7d4e, 1.00 s"
    )
    assert "\x1b[32m✓\x1b[0m" in out.getvalue()


@pytest.mark.parametrize(
    ("verify", "said"),
    [
        (True, "v2 is current; serving, verified: "),
        (False, "v2 is current; reload requested (no health check configured: not verified as served): "),
    ],
)
def test_summary_says_what_the_wait_knows(verify: bool, said: str) -> None:
    """The summary says "serving, verified" only when the status file says the daemon checks a health
    URL (``verify``); else that the reload was requested, not that the release is served."""
    final = as_status({**status({"swap": 1.0, "reload": 1.0}, result="success"), "verify": verify})
    progress = Progress("v2", ID)
    progress.update(final)
    assert summary_line(progress, final, 0.024) == f"{said}release v2-3f9c2a1b7d4e, sha 3f9c2a1b7d4e, 24 ms"


def test_stage_progress_follows_the_stage_and_ends_with_the_staged_release() -> None:
    """stage --wait: the phases come from the status's `stage`; the summary names the staged release."""
    out = io.StringIO()
    progress = StageProgress(out, Style(live=False), "v3", "s1", NOW)
    attempt = {
        "action": "stage",
        "id": "s1",
        "tag": "v3",
        "result": "success",
        "phases_ms": {"fetch": 20.0, "prepare": 5.0, "publish": 3.0},
    }
    final = as_status(
        {
            "last_attempt": {"id": "other", "tag": "v1", "result": "success", "phases_ms": {"swap": 1.0}},
            "stage": {"desired": {"tag": "v3", "sha": None, "id": "s1"}, "digest": "d", "state": "staged",
                      "attempt": attempt, "phase": None, "error": None},
            "staged": {"tag": "v3", "release": "v3-aaaaaaaaaaaa", "sha": "a" * 40, "request_id": "s1", "at": "x"},
        }
    )  # fmt: skip
    progress.update(final, NOW + 1)
    progress.finish(final, NOW + 1.31)
    lines = out.getvalue().splitlines()
    assert [ln.split()[0] for ln in lines[:3]] == ["fetch", "prepare", "publish"]
    assert lines[-1] == "v3 is staged (not served): release v3-aaaaaaaaaaaa, sha aaaaaaaaaaaa, 1.31 s"
