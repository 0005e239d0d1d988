"""What the command line shows a person: the tables of ``status``, ``releases`` and ``history``, and
the formatting both they and the live progress of ``deploy --wait`` (:mod:`coordinator.progress`) use.

Pure formatting; the clock is always passed in. Standard library only: the live display needs a
handful of ANSI sequences (cursor up, erase line, colours), which every terminal emulator in use
understands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from coordinator.plan import Step
from coordinator.records import AttemptAction, AttemptRecord, PauseRecord, StatusRecord, StatusState
from coordinator.state import parse_iso

if TYPE_CHECKING:
    from coordinator.commands import HistoryEntry, ReleaseRow

__all__ = [
    "PHASES",
    "Style",
    "describe_following",
    "describe_pause",
    "fmt_elapsed",
    "fmt_ms",
    "format_history",
    "format_releases",
    "format_status",
    "phases_in_order",
    "short_sha",
    "style_for",
    "table",
]

#: every phase the daemon records, in the order they run (``phases_ms`` in the status file is sorted by name)
ALL_PHASES = tuple(s.value for s in Step)
#: the phases a deploy shows (``prune`` is housekeeping, not shown live)
PHASES = tuple(p for p in ALL_PHASES if p != Step.PRUNE)


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


def describe_pause(record: Mapping[str, Any] | PauseRecord, now: float | None = None) -> str:
    """``paused by alice@web1 at 2026-11-18 08:26:40 UTC (5 min ago): the reason`` (from a pause
    record as read: parts not known are left out; ``now`` None: no "ago")."""
    text = "paused"
    by = _str(record.get("by"))
    if by:
        text += f" by {by}"
    at = parse_iso(record.get("at"))
    if at is not None:
        text += f" at {fmt_time(at)} UTC" + (f" ({fmt_ago(max(0.0, now - at))})" if now is not None else "")
    text += f": {_str(record.get('reason')) or 'no reason given'}"
    why = _str(record.get("unreadable"))
    return text + (f" ({why})" if why else "")


def describe_following(record: Mapping[str, Any]) -> str:
    """``v*: v1.10.0 (newest version of 3 tag(s) matching 'v*')``, with the last listing's error."""
    text = f"{_str(record.get('glob')) or '?'}: {_str(record.get('tag')) or '-'} ({_str(record.get('reason')) or '?'})"
    err = record.get("error")
    if isinstance(err, Mapping):
        text += f"; listing failed: {_str(err.get('message')) or '?'}"
        if err.get("next_retry_at"):
            text += f", next try {err['next_retry_at']}"
    return text


def phases_in_order(phases: Mapping[str, Any]) -> list[tuple[str, float]]:
    """``phases_ms`` in the order the phases run (unknown names last, by name); non-numbers dropped."""
    known = [(p, phases[p]) for p in ALL_PHASES if p in phases]
    extra = sorted((p, v) for p, v in phases.items() if p not in ALL_PHASES)
    return [(p, float(v)) for p, v in [*known, *extra] if _num(v) is not None]


def fmt_elapsed(ms: float | None) -> str:
    """An elapsed time on the live display: `4.0 s`, then as fmt_ms past a minute; empty if unknown."""
    if ms is None:
        return ""
    return f"{ms / 1000:.1f} s" if ms < 60_000 else fmt_ms(ms)


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


# ---------------------------------------------------------------------------------------------- status


def format_status(status: StatusRecord, now: float, *, daemon_running: bool | None = None) -> str:
    """The status file as a table for a person; ``daemon_running`` (from ROOT's lock, None: not
    known) says whether the pid that wrote it still runs as the coordinator."""
    rows: list[tuple[str, str]] = []
    state = StatusState.parse(status.get("state"))
    rows.append(("state", f"{state} ({state.description})" if state else _str(status.get("state")) or "?"))
    paused = status.get("paused")
    if isinstance(paused, Mapping):
        rows.append(("paused", describe_pause(paused, now).removeprefix("paused").removeprefix(":").strip()))
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
    following = status.get("following")
    if isinstance(following, Mapping):
        rows.append(("following", describe_following(following)))
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
        ref = status.get(label)
        signer = _str(ref.get("signer")) if label == "current" and isinstance(ref, Mapping) else None
        if signer:
            rows.append(("  signed by", signer))
    rows.extend(_stage_rows(status, now))
    phase = status.get("phase")
    if isinstance(phase, Mapping) and phase.get("name"):
        since = parse_iso(phase.get("started_at"))
        running = f", running for {fmt_elapsed(max(0.0, now - since) * 1000)}" if since is not None else ""
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
    if daemon_running is not None:
        daemon = (
            f"running, {daemon}" if daemon_running else f"NOT running (no coordinator holds ROOT's lock), last {daemon}"
        )
    if updated is not None:
        daemon += f", status written {fmt_time(updated)} UTC ({fmt_ago(max(0.0, now - updated))})"
    rows.append(("daemon", daemon))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows)


def _stage_rows(status: StatusRecord, now: float) -> list[tuple[str, str]]:
    """``staged`` (the release kept staged) and ``stage`` (the stage request and where it stands)."""
    rows: list[tuple[str, str]] = []
    staged = status.get("staged")
    if isinstance(staged, Mapping) and staged.get("release"):
        text = f"{_str(staged.get('tag')) or '?'}  {staged['release']}  sha {short_sha(staged.get('sha'))}"
        at = parse_iso(staged.get("at"))
        if at is not None:
            text += f"  (staged {fmt_ago(max(0.0, now - at))})"
        rows.append(("staged", text))
    stage = status.get("stage")
    if isinstance(stage, Mapping):
        desired = stage.get("desired")
        text = (_str(desired.get("tag")) or "?") if isinstance(desired, Mapping) else "(refused)"
        if isinstance(desired, Mapping) and desired.get("id"):
            text += f" (id {desired['id']})"
        rows.append(("stage", f"{text}: {_str(stage.get('state')) or '?'}"))
        phase = stage.get("phase")
        if isinstance(phase, Mapping) and phase.get("name"):
            rows.append(("  phase", str(phase["name"])))
        err = stage.get("error")
        if isinstance(err, Mapping):
            kind = _str(err.get("kind"))
            rows.append(("  error", (f"{kind}: " if kind else "") + (_str(err.get("message")) or "?")))
    return rows


def _attempt_text(attempt: AttemptRecord) -> str:
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
    """Releases newest first (as given), ``*`` current, ``-`` previous and ``s`` staged."""
    if not rows:
        return "no releases yet"
    body = []
    signed = any(r.signer for r in rows)  # the SIGNED BY column only where tags are verified
    for r in rows:
        mark = ("*" if r.current else "") + ("-" if r.previous and not r.current else "") + ("s" if r.staged else "")
        created = f"{fmt_time(r.created)} ({fmt_ago(max(0.0, now - r.created))})" if r.created else "?"
        body.append([mark, r.name, r.tag or "?", short_sha(r.sha), created, *([r.signer or "-"] if signed else [])])
    lines = table(["", "RELEASE", "TAG", "SHA", "CREATED (UTC)", *(["SIGNED BY"] if signed else [])], body)
    legend = "(* current, - previous, s staged)" if any(r.staged for r in rows) else "(* current, - previous)"
    return "\n".join([*lines, legend])


# ---------------------------------------------------------------------------------------------- history


def format_history(entries: Sequence[HistoryEntry]) -> str:
    """Past deploys and stages, as given (newest first): one row each (a stage's result reads
    ``stage success``, ``stage failed`` or ``stage cancelled``), the tag's signer (when verified) and
    an error on indented lines below."""
    if not entries:
        return "no deploys recorded yet"
    body: list[list[str]] = []
    errors: dict[int, str] = {}
    signers: dict[int, str] = {}
    for i, e in enumerate(entries):
        body.append(
            [
                fmt_time(e.started),
                e.tag or "?",
                short_sha(e.sha, 8),
                (f"stage {e.result or '?'}" if e.action is AttemptAction.STAGE else e.result or "?"),
                fmt_ms(e.duration_ms),
                e.request_id or "-",
                fmt_phases(e.phases_ms),
            ]
        )
        if e.error:
            errors[i] = e.error
        if e.signer:
            signers[i] = e.signer
    lines = table(["STARTED (UTC)", "TAG", "SHA", "RESULT", "TOTAL", "ID", "PHASES"], body, right=(4,))
    out = [lines[0]]
    for i, ln in enumerate(lines[1:]):
        out.append(ln)
        if i in signers:
            out.append(f"    signed by {signers[i]}")
        if i in errors:
            out.append(f"    error: {errors[i]}")
    return "\n".join(out)
