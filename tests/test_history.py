"""`coordinator history`: past deploys from the journal, newest first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.commands import read_history
from coordinator.exceptions import ConfigError
from coordinator.layout import Layout
from coordinator.state import append_journal
from tests.helpers import Daemon, GitRepo, cli


def journal(root: Path, *entries: dict[str, Any]) -> Path:
    path = Layout.for_root(root).journal
    path.parent.mkdir(parents=True, exist_ok=True)
    for e in entries:
        append_journal(path, e)
    return path


def attempt(tag: str, result: str = "success", **kw: Any) -> dict[str, Any]:
    return {
        "event": "attempt",
        "tag": tag,
        "id": f"id-{tag}",
        "sha": "ab" * 20,
        "release": f"{tag}-abababababab",
        "result": result,
        "started_at": "2026-11-28T07:30:01.000+00:00",
        "finished_at": "2026-11-28T07:30:02.000+00:00",
        "duration_ms": 1000.0,
        "phases_ms": {"fetch": 10.0, "swap": 1.0},
        "error": None,
        **kw,
    }


@pytest.mark.anyio
async def test_history_is_newest_first_and_limited(root: Path) -> None:
    """read_history returns the last N attempts, newest first."""
    journal(root, attempt("v1"), attempt("v2"), attempt("v3"))
    entries = await read_history(Layout.for_root(root), limit=2)
    assert [e.tag for e in entries] == ["v3", "v2"]


@pytest.mark.anyio
async def test_history_skips_a_torn_last_line(root: Path) -> None:
    """A line cut short by a crash mid-append is skipped; the rest is read."""
    path = journal(root, attempt("v1"), attempt("v2"))
    with open(path, "ab") as f:
        f.write(b'{"event": "attempt", "tag": "v3", "res')
    entries = await read_history(Layout.for_root(root))
    assert [e.tag for e in entries] == ["v2", "v1"]


@pytest.mark.anyio
async def test_history_keeps_unknown_fields_and_tolerates_wrong_types(root: Path) -> None:
    """Unknown fields stay in raw; fields of the wrong type read as None instead of failing."""
    journal(root, attempt("v1", duration_ms="slow", phases_ms={"fetch": "x", "swap": 2}, new_field=[1, 2], sha=7))
    (entry,) = await read_history(Layout.for_root(root))
    assert (entry.duration_ms, entry.phases_ms, entry.sha) == (None, {"swap": 2.0}, None)
    assert entry.raw["new_field"] == [1, 2]


@pytest.mark.anyio
async def test_history_skips_other_events_and_non_objects(root: Path) -> None:
    """Journal lines that are not attempts (another event, a JSON list) are not deploys."""
    path = journal(root, attempt("v1"), {"event": "gc", "removed": 3})
    with open(path, "ab") as f:
        f.write(b"[1, 2]\n")
    entries = await read_history(Layout.for_root(root))
    assert [e.tag for e in entries] == ["v1"]


@pytest.mark.anyio
async def test_history_summarises_the_error(root: Path) -> None:
    """A failed attempt's error reads `kind: message`."""
    journal(root, attempt("v9", "failed", error={"kind": "tag_not_found", "message": "no tag v9", "fix": "push"}))
    (entry,) = await read_history(Layout.for_root(root))
    assert (entry.result, entry.error) == ("failed", "tag_not_found: no tag v9")


@pytest.mark.anyio
async def test_history_reads_on_into_the_rotated_journal(root: Path) -> None:
    """Past the start of journal.jsonl, history goes on with the generation before (journal.jsonl.1)."""
    path = journal(root, attempt("v3"))
    path.with_name("journal.jsonl.1").write_text(json.dumps(attempt("v1")) + "\n" + json.dumps(attempt("v2")) + "\n")
    entries = await read_history(Layout.for_root(root), limit=2)
    assert [e.tag for e in entries] == ["v3", "v2"]


@pytest.mark.anyio
async def test_history_limit_counts_attempts_not_other_lines(root: Path) -> None:
    """Lines of other events between attempts do not eat into --limit."""
    journal(root, attempt("v1"), attempt("v2"), *[{"event": "gc"}] * 5)
    entries = await read_history(Layout.for_root(root), limit=2)
    assert [e.tag for e in entries] == ["v2", "v1"]


@pytest.mark.anyio
async def test_history_without_a_journal_is_empty(root: Path) -> None:
    """A root that never deployed has no history (not an error)."""
    assert await read_history(Layout.for_root(root)) == []


@pytest.mark.anyio
async def test_history_refuses_a_limit_below_one(root: Path) -> None:
    """--limit 0 is a usage error."""
    with pytest.raises(ConfigError):
        await read_history(Layout.for_root(root), limit=0)


def test_history_command_lists_real_deploys_newest_first(root: Path, repo: GitRepo) -> None:
    """`history` after real deploys lists them newest first, with results, ids and the failed one's error."""
    with Daemon(root, repo.path):
        ids = []
        for tag in ("v1", "v2", "v9"):
            out = cli("deploy", tag, "--root", str(root), "--wait", "--timeout", "30")
            ids.append(out.stdout.split("(id ")[1].split(")")[0])
    table = cli("history", "--root", str(root))
    assert table.returncode == 0, table.stderr
    rows = [ln.split() for ln in table.stdout.splitlines()[1:] if not ln.startswith(" ")]
    assert [(r[2], r[4], r[7]) for r in rows] == [  # date, time, tag, sha, result, total (2 words), id
        ("v9", "failed", ids[2]),
        ("v2", "success", ids[1]),
        ("v1", "success", ids[0]),
    ]
    assert "    error: tag_not_found:" in table.stdout
    assert repo.tag_sha("v2")[:8] in table.stdout


def test_history_command_limit_and_json(root: Path) -> None:
    """`history --limit 1 --json` prints the newest journal line, raw, unknown fields included."""
    journal(root, attempt("v1"), attempt("v2", extra={"x": 1}))
    out = cli("history", "--root", str(root), "--limit", "1", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [attempt("v2", extra={"x": 1})]


def test_history_command_survives_a_torn_journal(root: Path) -> None:
    """`history` on a journal whose last line is torn exits 0 and shows the complete lines."""
    path = journal(root, attempt("v1"))
    with open(path, "ab") as f:
        f.write(b'{"tag": "v2", "phas')
    out = cli("history", "--root", str(root))
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2 and " v1 " in out.stdout


def test_history_command_with_a_bad_limit_is_a_usage_error(root: Path) -> None:
    """`history --limit 0` exits 2 with the fix."""
    out = cli("history", "--root", str(root), "--limit", "0")
    assert out.returncode == 2 and "--limit" in out.stderr
