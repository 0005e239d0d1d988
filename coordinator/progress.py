"""The progress of ``deploy --wait`` (and of ``stage --wait``: :class:`StageProgress`), drawn from the
status file as the daemon rewrites it: a live display on a terminal (phases done with their
durations, the running one with a spinner), plain lines otherwise (a pipe, CI). Pure formatting
except :class:`DeployProgress`, which writes to the stream it is given; the clock is always passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from coordinator.display import PHASES, Style, fmt_elapsed, fmt_ms, phases_in_order, short_sha
from coordinator.plan import Step
from coordinator.records import AttemptResult, StageState, StatusRecord, as_status
from coordinator.state import parse_iso

__all__ = [
    "DeployProgress",
    "Progress",
    "StageProgress",
    "frame",
    "plain_line",
    "render_live",
    "stage_summary_line",
    "stage_view",
    "summary_line",
]


@dataclass(slots=True)
class Progress:
    """What the status file says about one request (``request_id``), accumulated over status reads."""

    tag: str
    request_id: str
    done: dict[str, float] = field(default_factory=dict)  # phase -> ms, in the order seen
    running: str | None = None
    running_since: float | None = None  # epoch seconds (the daemon's clock)
    result: AttemptResult | None = None  # once the attempt is over
    interrupted: bool = False  # the wait ended before the attempt did (Ctrl-C, timeout)
    release: str | None = None
    sha: str | None = None
    error: str | None = None
    verb: str = "deploying"  # the live display's heading

    def update(self, status: StatusRecord) -> list[tuple[str, float | None]]:
        """Take in a status; return what changed, in order: ``(phase, None)`` when a phase starts
        and ``(phase, ms)`` when it is done."""
        events: list[tuple[str, float | None]] = []
        attempt = status.get("last_attempt")
        if isinstance(attempt, Mapping) and attempt.get("id") == self.request_id:
            phases = attempt.get("phases_ms")
            for name, ms in phases_in_order(phases if isinstance(phases, Mapping) else {}):
                if name not in self.done and name in PHASES:
                    self.done[name] = ms
                    events.append((name, ms))
            result = AttemptResult.parse(attempt.get("result"))
            self.result = result if result is not None and result.final else None
            self.release = _str(attempt.get("release")) or self.release
            self.sha = _str(attempt.get("sha")) or self.sha
            err = attempt.get("error")
            if isinstance(err, Mapping):
                self.error = _str(err.get("message"))
        phase = status.get("phase")
        running = _str(phase.get("name")) if isinstance(phase, Mapping) else None
        if (
            isinstance(phase, Mapping)
            and phase.get("id") == self.request_id
            and running
            and running not in self.done
            and self.result is None
        ):
            if running != self.running:
                self.running, self.running_since = running, parse_iso(phase.get("started_at"))
                events.append((running, None))
        else:
            self.running = self.running_since = None
        return events

    def failed_phase(self) -> str | None:
        """The phase to mark as failed: ``verify`` once a rollback runs, else the last one that ran."""
        if self.result is AttemptResult.ROLLED_BACK or self.running == Step.ROLLBACK or Step.ROLLBACK in self.done:
            return "verify"
        if self.result is AttemptResult.FAILED and self.done:
            return max(self.done, key=PHASES.index)
        return None


def plain_line(phase: str, ms: float | None, failed: bool = False) -> str:
    """One line of the plain (pipe, CI) progress: ``  build     running`` or ``  build     ok   2.31 s``."""
    if ms is None:
        return f"  {phase:<9} running"
    return f"  {phase:<9} {'FAILED' if failed else 'ok':<6} {fmt_ms(ms):>9}"


def render_live(progress: Progress, style: Style, now: float, waited_s: float, tick: int) -> list[str]:
    """The live display's lines: a heading, one line per phase done, the running phase (or what the
    display is waiting for) with its elapsed time."""
    lines = [f"{progress.verb} {progress.tag} (id {progress.request_id})"]
    bad = progress.failed_phase()
    for name in sorted(progress.done, key=PHASES.index):
        mark = style.bad if name == bad else style.ok
        lines.append(f"  {mark} {name:<9} {fmt_ms(progress.done[name]):>9}")
    if progress.result is None and not progress.interrupted:
        label = progress.running or ("waiting" if not progress.done else "working")
        ms: float | None = waited_s * 1000
        if progress.running is not None:
            since = progress.running_since
            ms = max(0.0, now - since) * 1000 if since is not None else None
        lines.append(f"  {style.spinner(tick)} {label:<9} {fmt_elapsed(ms):>9}")
    return lines


def summary_line(progress: Progress, status: StatusRecord, waited_s: float) -> str:
    """What ``--wait`` knows, and no more: ``v2 is current; serving, verified: release
    v2-3f9c2a1b7d4e, sha 3f9c2a1b7d4e, 2.45 s`` (the time waited since the request was written) when
    the daemon checks a health URL (status ``verify``), else ``v2 is current; reload requested (no
    health check configured: not verified as served): ...``."""
    cur = status.get("current")
    release = (_str(cur.get("release")) if isinstance(cur, Mapping) else None) or progress.release or "?"
    sha = short_sha((cur.get("sha") if isinstance(cur, Mapping) else None) or progress.sha)
    note = "" if progress.done else " (no deploy needed)"
    verify = status.get("verify")
    if verify is True:
        known = "serving, verified"
    elif verify is False:
        known = "reload requested (no health check configured: not verified as served)"
    else:  # a daemon of a version that does not say
        known = "reload requested (not verified as served)"
    return f"{progress.tag} is current; {known}: release {release}, sha {sha}, {fmt_ms(waited_s * 1000)}{note}"


def stage_view(status: StatusRecord) -> StatusRecord:
    """The status as :meth:`Progress.update` reads it, for a stage: the stage's attempt and phase."""
    stage = status.get("stage")
    if not isinstance(stage, Mapping):
        return as_status({})
    return as_status({"last_attempt": stage.get("attempt"), "phase": stage.get("phase")})


def stage_summary_line(progress: Progress, status: StatusRecord, waited_s: float) -> str:
    """What ``stage --wait`` knows: ``v2 is staged (not served): release v2-3f9c2a1b7d4e, sha
    3f9c2a1b7d4e, 2.45 s``; or ``v2 is already current: nothing to stage, 0.12 s``."""
    stage = status.get("stage")
    state = StageState.parse(stage.get("state")) if isinstance(stage, Mapping) else None
    waited = fmt_ms(waited_s * 1000)
    if state is StageState.CURRENT:
        return f"{progress.tag} is already current: nothing to stage, {waited}"
    staged = status.get("staged")
    release = (_str(staged.get("release")) if isinstance(staged, Mapping) else None) or progress.release or "?"
    sha = short_sha((staged.get("sha") if isinstance(staged, Mapping) else None) or progress.sha)
    note = "" if progress.done else " (already on disk)"
    return f"{progress.tag} is staged (not served): release {release}, sha {sha}, {waited}{note}"


def frame(lines: Sequence[str], previous: int, width: int) -> str:
    """Escape codes that redraw ``lines`` over the ``previous`` lines drawn last time: cursor up,
    then each line erased and rewritten, cut to ``width - 1`` visible characters (a wrapped line
    would break the count)."""
    out = [f"\x1b[{previous}A\r"] if previous else []
    for ln in lines:
        out.append(f"\x1b[2K{_cut(ln, width - 1)}\n")
    if len(lines) < previous:
        out.append("\x1b[J")
    return "".join(out)


def _cut(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` visible characters, keeping escape sequences whole."""
    out, seen, i = [], 0, 0
    while i < len(text):
        if text[i] == "\x1b":
            end = text.find("m", i)
            end = len(text) - 1 if end < 0 else end
            out.append(text[i : end + 1])
            i = end + 1
            continue
        if seen < limit:
            out.append(text[i])
            seen += 1
        i += 1
    return "".join(out)


def _str(v: object) -> str | None:
    return v if isinstance(v, str) else None


class _Stream(Protocol):
    def write(self, s: str, /) -> int: ...
    def flush(self) -> None: ...


class DeployProgress:
    """The progress of ``deploy --wait`` written to ``stream``: redrawn in place when ``style.live``
    (call :meth:`tick` about ten times a second), else one plain line per phase change."""

    def __init__(self, stream: _Stream, style: Style, tag: str, request_id: str, started: float) -> None:
        self.stream = stream
        self.style = style
        self.progress = Progress(tag, request_id)
        self.started = started  # epoch seconds, when the request was written
        self.drawn = 0
        self.ticks = 0
        self.last_tick = started
        self.closed = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def update(self, status: StatusRecord, now: float) -> None:
        events = self.progress.update(status)
        if self.style.live:
            self._draw(now)
            return
        bad = self.progress.failed_phase()
        for name, ms in events:
            self._write(plain_line(name, ms, failed=name == bad) + "\n")

    def tick(self, now: float) -> None:
        """Redraw the elapsed times and the spinner, at most ten times a second."""
        if self.style.live and not self.closed and now - self.last_tick >= 0.1:
            self.ticks += 1
            self.last_tick = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        lines = render_live(self.progress, self.style, now, now - self.started, self.ticks)
        self._write(frame(lines, self.drawn, self.style.width))
        self.drawn = len(lines)

    def finish(self, status: StatusRecord | None, now: float) -> None:
        """Draw the final state; with the status of a successful deploy, the summary line too (an
        error is printed by the caller, after this)."""
        if self.closed:
            return
        if self.style.live:
            self.progress.running = None
            if self.progress.result is None and status is None:
                self.progress.interrupted = True
            self._draw(now)
        self.closed = True
        if status is not None:
            line = self.summary(status, now - self.started)
            self._write((f"{self.style.ok} " if self.style.live else "") + line + "\n")

    def summary(self, status: StatusRecord, waited_s: float) -> str:
        return summary_line(self.progress, status, waited_s)


class StageProgress(DeployProgress):
    """The progress of ``stage --wait``: the status's ``stage`` drawn as a deploy's progress is."""

    def __init__(self, stream: _Stream, style: Style, tag: str, request_id: str, started: float) -> None:
        super().__init__(stream, style, tag, request_id, started)
        self.progress.verb = "staging"

    def update(self, status: StatusRecord, now: float) -> None:
        super().update(stage_view(status), now)

    def summary(self, status: StatusRecord, waited_s: float) -> str:
        return stage_summary_line(self.progress, status, waited_s)
