"""What the command line shows a person: the progress of ``deploy --wait`` (a live display on a
terminal, plain lines otherwise) and the tables of ``status``, ``releases`` and ``history``.

Everything here is pure formatting except :class:`DeployProgress`, which writes to the stream it is
given; the clock is always passed in. Standard library only: the live display needs a handful of
ANSI sequences (cursor up, erase line, colours), which every terminal emulator in use understands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from coordinator.state import parse_iso

if TYPE_CHECKING:
    from coordinator.commands import HistoryEntry, ReleaseRow

__all__ = [
    "PHASES",
    "DeployProgress",
    "Progress",
    "Style",
    "fmt_ms",
    "format_history",
    "format_releases",
    "format_status",
    "frame",
    "plain_line",
    "render_live",
    "style_for",
    "table",
]

#: the phases a deploy shows, in the order they run (``prune`` is housekeeping, not shown live)
PHASES = ("fetch", "prepare", "build", "publish", "swap", "reload", "verify", "rollback")
#: every phase the daemon records, in order (``phases_ms`` in the status file is sorted by name)
ALL_PHASES = (*PHASES, "prune")

_STATES = {
    "waiting": "no marker yet",
    "deploying": "a deploy is in progress",
    "idle": "converged",
    "failed": "the last attempt for this marker failed",
    "rolled_back": "the release failed its health check; the previous one was restored",
    "invalid": "the marker was refused",
    "stopped": "the daemon exited",
}


# ---------------------------------------------------------------------------------------------- basics


def fmt_ms(ms: float | None) -> str:
    """A duration for a person: ``0.4 ms``, ``12 ms``, ``2.31 s``, ``1 min 05 s``; ``-`` if unknown."""
    if ms is None or not math.isfinite(ms) or ms < 0:
        return "-"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds:02d} s"


def fmt_ago(seconds: float) -> str:
    """How long ago, roughly: ``just now``, ``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago``."""
    if seconds < 1:
        return "just now"
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} d ago"


def fmt_time(ts: float | None) -> str:
    """``2026-11-28 07:30:01`` (UTC), or ``-``."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def short_sha(sha: object, n: int = 12) -> str:
    return sha[:n] if isinstance(sha, str) and sha else "-"


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _str(v: object) -> str | None:
    return v if isinstance(v, str) else None


def phases_in_order(phases: Mapping[str, Any]) -> list[tuple[str, float]]:
    """``phases_ms`` in the order the phases run (unknown names last, by name); non-numbers dropped."""
    known = [(p, phases[p]) for p in ALL_PHASES if p in phases]
    extra = sorted((p, v) for p, v in phases.items() if p not in ALL_PHASES)
    return [(p, float(v)) for p, v in [*known, *extra] if _num(v) is not None]


def fmt_phases(phases: Mapping[str, Any]) -> str:
    return ", ".join(f"{p} {fmt_ms(ms)}" for p, ms in phases_in_order(phases)) or "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """Rows aligned under ``headers``, two spaces between columns; columns in ``right`` right-aligned.
    The last column is not padded (no trailing spaces)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    out = []
    for row in [list(headers), *rows]:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        out.append("  ".join(cells).rstrip())
    return out


# ---------------------------------------------------------------------------------------------- style


@dataclass(frozen=True, slots=True)
class Style:
    """How to draw: ``live`` in-place updates, ``color`` ANSI colours, ``unicode`` marks and spinner."""

    live: bool = False
    color: bool = False
    unicode: bool = True
    width: int = 100

    @property
    def ok(self) -> str:
        return self.paint("✓" if self.unicode else "ok", "32")

    @property
    def bad(self) -> str:
        return self.paint("✗" if self.unicode else "x", "31")

    def spinner(self, tick: int) -> str:
        frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" if self.unicode else "-\\|/"
        return self.paint(frames[tick % len(frames)], "36")

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text


def style_for(env: Mapping[str, str], isatty: bool, encoding: str | None, width: int = 100) -> Style:
    """Live display on a terminal unless ``TERM=dumb``; colours unless ``NO_COLOR`` is set (to
    anything non-empty, per no-color.org) or the display is not live; Unicode marks on UTF-8."""
    term = env.get("TERM", "")
    live = isatty and term != "dumb"
    color = live and not env.get("NO_COLOR")
    uni = (encoding or "").lower().replace("-", "") in ("utf8", "utf8mb4")
    return Style(live=live, color=color, unicode=uni, width=max(width, 20))


# ---------------------------------------------------------------------------------------------- progress


@dataclass(slots=True)
class Progress:
    """What the status file says about one request (``request_id``), accumulated over status reads."""

    tag: str
    request_id: str
    done: dict[str, float] = field(default_factory=dict)  # phase -> ms, in the order seen
    running: str | None = None
    running_since: float | None = None  # epoch seconds (the daemon's clock)
    result: str | None = None  # success, failed, rolled_back, cancelled, once the attempt is over
    release: str | None = None
    sha: str | None = None
    error: str | None = None

    def update(self, status: Mapping[str, Any]) -> list[tuple[str, float | None]]:
        """Take in a status; return what changed, in order: ``(phase, None)`` when a phase starts
        and ``(phase, ms)`` when it is done."""
        events: list[tuple[str, float | None]] = []
        attempt = status.get("last_attempt")
        attempt = attempt if isinstance(attempt, Mapping) else {}
        ours = attempt.get("id") == self.request_id
        if ours:
            phases = attempt.get("phases_ms")
            for name, ms in phases_in_order(phases if isinstance(phases, Mapping) else {}):
                if name not in self.done and name in PHASES:
                    self.done[name] = ms
                    events.append((name, ms))
            result = _str(attempt.get("result"))
            self.result = result if result != "running" else None
            self.release = _str(attempt.get("release")) or self.release
            self.sha = _str(attempt.get("sha")) or self.sha
            err = attempt.get("error")
            if isinstance(err, Mapping):
                self.error = _str(err.get("message"))
        phase = status.get("phase")
        phase = phase if isinstance(phase, Mapping) else {}
        running = _str(phase.get("name"))
        if phase.get("id") == self.request_id and running and running not in self.done and self.result is None:
            if running != self.running:
                self.running, self.running_since = running, parse_iso(phase.get("started_at"))
                events.append((running, None))
        else:
            self.running = self.running_since = None
        return events

    def failed_phase(self) -> str | None:
        """The phase to mark as failed: ``verify`` once a rollback runs, else the last one that ran."""
        if self.result == "rolled_back" or self.running == "rollback" or "rollback" in self.done:
            return "verify"
        if self.result == "failed" and self.done:
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
    lines = [f"deploying {progress.tag} (id {progress.request_id})"]
    bad = progress.failed_phase()
    for name in sorted(progress.done, key=PHASES.index):
        mark = style.bad if name == bad else style.ok
        lines.append(f"  {mark} {name:<9} {fmt_ms(progress.done[name]):>9}")
    if progress.result is None:
        label = progress.running or ("waiting" if not progress.done else "working")
        ms: float | None = waited_s * 1000
        if progress.running is not None:
            since = progress.running_since
            ms = max(0.0, now - since) * 1000 if since is not None else None
        lines.append(f"  {style.spinner(tick)} {label:<9} {_elapsed(ms):>9}")
    return lines


def _elapsed(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms / 1000:.1f} s" if ms < 60_000 else fmt_ms(ms)


def summary_line(progress: Progress, status: Mapping[str, Any], waited_s: float) -> str:
    """``v2 is current and reloaded: release v2-3f9c2a1b7d4e, sha 3f9c2a1b7d4e, 2.45 s`` (the time
    waited since the request was written)."""
    cur = status.get("current")
    cur = cur if isinstance(cur, Mapping) else {}
    release = _str(cur.get("release")) or progress.release or "?"
    sha = short_sha(cur.get("sha") or progress.sha)
    note = "" if progress.done else " (no deploy needed)"
    return f"{progress.tag} is current and reloaded: release {release}, sha {sha}, {fmt_ms(waited_s * 1000)}{note}"


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

    def update(self, status: Mapping[str, Any], now: float) -> None:
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

    def finish(self, status: Mapping[str, Any] | None, now: float) -> None:
        """Draw the final state; with the status of a successful deploy, the summary line too (an
        error is printed by the caller, after this)."""
        if self.closed:
            return
        if self.style.live:
            self.progress.running = None
            if self.progress.result is None and status is None:
                self.progress.result = "interrupted"
            self._draw(now)
        self.closed = True
        if status is not None:
            line = summary_line(self.progress, status, now - self.started)
            self._write((f"{self.style.ok} " if self.style.live else "") + line + "\n")


# ---------------------------------------------------------------------------------------------- status


def format_status(status: Mapping[str, Any], now: float) -> str:
    """The status file as a table for a person."""
    rows: list[tuple[str, str]] = []
    state = _str(status.get("state")) or "?"
    rows.append(("state", f"{state} ({_STATES[state]})" if state in _STATES else state))
    desired = status.get("desired")
    if isinstance(desired, Mapping):
        text = _str(desired.get("tag")) or "?"
        if desired.get("sha"):
            text += f" @ {desired['sha']}"
        if desired.get("id"):
            text += f"  (id {desired['id']})"
        rows.append(("desired", text))
    else:
        rows.append(("desired", "-"))
    refs = []
    for label in ("current", "previous"):
        ref = status.get(label)
        if isinstance(ref, Mapping) and ref.get("release"):
            refs.append((label, _str(ref.get("tag")) or "?", str(ref["release"]), short_sha(ref.get("sha"))))
        else:
            refs.append((label, "-", "", ""))
    tag_w = max(len(r[1]) for r in refs)
    rel_w = max(len(r[2]) for r in refs)
    reloaded = status.get("reloaded")
    for label, tag, release, sha in refs:
        text = f"{tag:<{tag_w}}  {release:<{rel_w}}  {'sha ' + sha if sha else ''}".rstrip()
        if label == "current" and release:
            text += "  (reloaded)" if reloaded == release else "  (reload pending)"
        rows.append((label, text))
    phase = status.get("phase")
    if isinstance(phase, Mapping) and phase.get("name"):
        since = parse_iso(phase.get("started_at"))
        running = f", running for {_elapsed(max(0.0, now - since) * 1000)}" if since is not None else ""
        rows.append(("phase", f"{phase['name']} of {phase.get('tag', '?')}{running}"))
    attempt = status.get("last_attempt")
    if isinstance(attempt, Mapping):
        rows.append(("last attempt", _attempt_text(attempt)))
        phases = attempt.get("phases_ms")
        if isinstance(phases, Mapping) and phases:
            rows.append(("  phases", fmt_phases(phases)))
    success = status.get("last_success")
    if isinstance(success, Mapping) and (
        not isinstance(attempt, Mapping) or success.get("started_at") != attempt.get("started_at")
    ):
        rows.append(("last success", _attempt_text(success)))
    err = status.get("error")
    if isinstance(err, Mapping):
        kind = _str(err.get("kind"))
        rows.append(("error", (f"{kind}: " if kind else "") + (_str(err.get("message")) or "?")))
        if err.get("fix"):
            rows.append(("  fix", str(err["fix"])))
        output = _str(err.get("output"))
        if output:
            for i, ln in enumerate(output.splitlines()[-5:]):
                rows.append(("  output" if i == 0 else "", f"| {ln}"))
    updated = parse_iso(status.get("updated_at"))
    daemon = f"pid {status.get('pid', '?')}"
    if updated is not None:
        daemon += f", status written {fmt_time(updated)} UTC ({fmt_ago(max(0.0, now - updated))})"
    rows.append(("daemon", daemon))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows)


def _attempt_text(attempt: Mapping[str, Any]) -> str:
    parts = [_str(attempt.get("tag")) or "?", _str(attempt.get("result")) or "?"]
    if _num(attempt.get("duration_ms")) is not None:
        parts.append(fmt_ms(_num(attempt.get("duration_ms"))))
    when = parse_iso(attempt.get("finished_at")) or parse_iso(attempt.get("started_at"))
    if when is not None:
        parts.append(f"at {fmt_time(when)} UTC")
    if attempt.get("sha"):
        parts.append(f"sha {short_sha(attempt['sha'])}")
    if attempt.get("id"):
        parts.append(f"id {attempt['id']}")
    return "  ".join(parts)


# ---------------------------------------------------------------------------------------------- releases


def format_releases(rows: Sequence[ReleaseRow], now: float) -> str:
    """Releases newest first (as given), ``*`` current and ``-`` previous."""
    if not rows:
        return "no releases yet"
    body = []
    for r in rows:
        mark = "*" if r.current else ("-" if r.previous else "")
        created = f"{fmt_time(r.created)} ({fmt_ago(max(0.0, now - r.created))})" if r.created else "?"
        body.append([mark, r.name, r.tag or "?", short_sha(r.sha), created])
    lines = table(["", "RELEASE", "TAG", "SHA", "CREATED (UTC)"], body)
    return "\n".join([*lines, "(* current, - previous)"])


# ---------------------------------------------------------------------------------------------- history


def format_history(entries: Sequence[HistoryEntry]) -> str:
    """Past deploys, as given (newest first): one row each, an error on an indented line below."""
    if not entries:
        return "no deploys recorded yet"
    body: list[list[str]] = []
    errors: dict[int, str] = {}
    for i, e in enumerate(entries):
        body.append(
            [
                fmt_time(e.started),
                e.tag or "?",
                short_sha(e.sha, 8),
                e.result or "?",
                fmt_ms(e.duration_ms),
                e.request_id or "-",
                fmt_phases(e.phases_ms),
            ]
        )
        if e.error:
            errors[i] = e.error
    lines = table(["STARTED (UTC)", "TAG", "SHA", "RESULT", "TOTAL", "ID", "PHASES"], body, right=(4,))
    out = [lines[0]]
    for i, ln in enumerate(lines[1:]):
        out.append(ln)
        if i in errors:
            out.append(f"    error: {errors[i]}")
    return "\n".join(out)
