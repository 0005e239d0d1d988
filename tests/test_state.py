"""coordinator.state: the state file, the journal and release metadata on the real filesystem."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import pytest

from coordinator.state import (
    append_journal,
    iso,
    load_state,
    parse_iso,
    read_journal,
    read_json,
    read_release_meta,
    save_state,
    write_json,
    write_release_meta,
)
from coordinator.statefile import PendingReload, PendingVerify, ReleaseMeta, State

# ---------------------------------------------------------------------------------------- state file


def test_load_state_missing_file_gives_defaults(tmp_path: Path) -> None:
    """A state file that does not exist loads as the default State."""
    assert load_state(tmp_path / "state.json") == State()


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"not json at all", b"\x00\x00\x00\x00", b"\xff\xfe{}", b"[1, 2, 3]", b'"a string"', b"null", b"42"],
    ids=["empty", "truncated", "text", "zeros", "bad-utf8", "list", "string", "null", "number"],
)
def test_load_state_garbage_gives_defaults(tmp_path: Path, content: bytes) -> None:
    """A state file that is not a JSON object loads as the default State."""
    path = tmp_path / "state.json"
    path.write_bytes(content)
    assert load_state(path) == State()


def test_load_state_wrong_field_types_give_defaults(tmp_path: Path) -> None:
    """Fields of the wrong type are ignored one by one, each falling back to its default."""
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(
            {
                "reloaded": 5,
                "previous": ["r1"],
                "pending": {"token": 3},
                "failed_marker": None,
                "failed_error": "boom",
                "last_reload_mtime": "12",
                "extra": [1],
            }
        )
    )
    assert load_state(path) == State()


def test_load_state_partial_file_keeps_known_fields(tmp_path: Path) -> None:
    """A file with only some fields (and unknown ones) gives those fields and defaults for the rest."""
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"reloaded": "r7", "pending": {"release": "r8"}, "unknown": 1}))
    assert load_state(path) == State(reloaded="r7", pending=PendingReload("r8", None))


def test_save_load_round_trip(tmp_path: Path) -> None:
    """Every field of a saved State comes back equal on load."""
    path = tmp_path / "state.json"
    state = State(
        reloaded="20240101-000000-v2",
        previous="20231231-000000-v1",
        pending=PendingReload("20240101-000000-v2", 1_700_000_123),
        failed_marker="ab" * 32,
        failed_error={"kind": "build", "message": "failed", "rc": 2},
        last_reload_mtime=1_700_000_122,
        extra={"note": "x", "n": [1, 2]},
    )
    save_state(path, state)
    assert load_state(path) == state


def test_save_load_round_trip_not_durable(tmp_path: Path) -> None:
    """A State saved with durable=False loads back equal."""
    path = tmp_path / "state.json"
    state = State(reloaded="r2", pending=PendingReload("r3", 1_700_000_000))
    save_state(path, state, durable=False)
    assert load_state(path) == state


def test_save_state_replaces_file_atomically(tmp_path: Path) -> None:
    """save_state over an existing state leaves only the new content and no temporary file."""
    path = tmp_path / "state.json"
    save_state(path, State(reloaded="a"))
    save_state(path, State(reloaded="b"))
    assert load_state(path).reloaded == "b"
    assert os.listdir(tmp_path) == ["state.json"]


# ---------------------------------------------------------------------------------------- read_json


def test_read_json_returns_object(tmp_path: Path) -> None:
    """read_json returns the JSON object written by write_json."""
    path = tmp_path / "x.json"
    write_json(path, {"a": 1, "b": [True, None]})
    assert read_json(path) == {"a": 1, "b": [True, None]}


def test_read_json_does_not_follow_symlink(tmp_path: Path) -> None:
    """read_json of a symlink to a valid JSON file returns None."""
    target = tmp_path / "real.json"
    target.write_text('{"a": 1}')
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert read_json(target) == {"a": 1}
    assert read_json(link) is None


def test_read_json_missing_or_below_file_is_none(tmp_path: Path) -> None:
    """read_json of a missing path, or of a path below a regular file, returns None."""
    (tmp_path / "f").write_text("{}")
    assert read_json(tmp_path / "missing.json") is None
    assert read_json(tmp_path / "f" / "x.json") is None


def test_read_json_of_fifo_returns_without_blocking(tmp_path: Path) -> None:
    """read_json of a FIFO with no writer returns None instead of hanging."""
    path = tmp_path / "fifo.json"
    os.mkfifo(path)

    def unblock() -> None:  # if open() blocked waiting for a writer, feed it JSON so the test fails, not hangs
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b'{"blocked": true}')
            os.close(fd)

    watchdog = threading.Timer(5, unblock)
    watchdog.start()
    try:
        assert read_json(path) is None
    finally:
        watchdog.cancel()


# ---------------------------------------------------------------------------------------- journal


def test_journal_round_trip_in_order(tmp_path: Path) -> None:
    """Appended entries are read back in order, oldest first."""
    path = tmp_path / "journal.jsonl"
    entries = [{"n": i, "result": "success" if i % 2 else "failed"} for i in range(5)]
    for e in entries:
        append_journal(path, e)
    assert read_journal(path) == entries
    assert path.read_text().count("\n") == 5


def test_read_journal_missing_file_is_empty(tmp_path: Path) -> None:
    """A journal that does not exist reads as no entries."""
    assert read_journal(tmp_path / "journal.jsonl") == []


def test_read_journal_skips_torn_last_line(tmp_path: Path) -> None:
    """A torn (half-written) last line is skipped and the complete lines are kept."""
    path = tmp_path / "journal.jsonl"
    append_journal(path, {"n": 1})
    append_journal(path, {"n": 2})
    with open(path, "ab") as f:
        f.write(b'{"n": 3, "resu')
    assert read_journal(path) == [{"n": 1}, {"n": 2}]


def test_read_journal_skips_non_object_lines(tmp_path: Path) -> None:
    """Lines that are valid JSON but not objects, and blank lines, are skipped."""
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"n": 1}\n[1]\n\n"s"\n\x00\x00\n{"n": 2}\n')
    assert read_journal(path) == [{"n": 1}, {"n": 2}]


def test_read_journal_limit_gives_last_entries(tmp_path: Path) -> None:
    """limit returns only the last `limit` entries, oldest first."""
    path = tmp_path / "journal.jsonl"
    for i in range(10):
        append_journal(path, {"n": i})
    assert read_journal(path, limit=3) == [{"n": 7}, {"n": 8}, {"n": 9}]
    assert read_journal(path, limit=1) == [{"n": 9}]
    assert len(read_journal(path, limit=100)) == 10


def test_append_after_torn_line_keeps_new_entry(tmp_path: Path) -> None:
    """An entry appended after a crash left a torn last line is still readable."""
    path = tmp_path / "journal.jsonl"
    append_journal(path, {"n": 1})
    with open(path, "ab") as f:
        f.write(b'{"n": 2, "resu')  # crash mid-append: no newline
    append_journal(path, {"n": 3})
    assert read_journal(path) == [{"n": 1}, {"n": 3}]


def test_append_journal_refuses_symlink(tmp_path: Path) -> None:
    """append_journal does not write through a symlink planted at the journal path: it replaces it."""
    target = tmp_path / "victim"
    target.write_text("untouched\n")
    link = tmp_path / "journal.jsonl"
    link.symlink_to(target)
    append_journal(link, {"n": 1})
    assert target.read_text() == "untouched\n"
    assert not link.is_symlink() and read_journal(link) == [{"n": 1}]


# ---------------------------------------------------------------------------------------- release meta


def test_release_meta_round_trip(tmp_path: Path) -> None:
    """A written ReleaseMeta is read back equal, with an ISO creation time alongside."""
    meta = ReleaseMeta(name="20240101-120000-v1", tag="v1", sha="c" * 40, created=1_704_110_400.25, ok=False)
    write_release_meta(tmp_path, meta)
    assert read_release_meta(tmp_path, meta.name) == meta
    raw = read_json(tmp_path / f"{meta.name}.json")
    assert raw is not None
    assert raw["created_at"] == "2024-01-01T12:00:00.250+00:00"


def test_read_release_meta_missing_is_none(tmp_path: Path) -> None:
    """Metadata of a release that has none reads as None."""
    assert read_release_meta(tmp_path, "nope") is None


@pytest.mark.parametrize(
    "raw",
    [{"name": "r"}, {"name": "r", "tag": "v1", "sha": "s", "created": "yesterday"}, {}],
    ids=["missing-fields", "bad-created", "empty"],
)
def test_read_release_meta_incomplete_is_none(tmp_path: Path, raw: dict[str, object]) -> None:
    """Metadata with missing or invalid fields reads as None."""
    (tmp_path / "r.json").write_text(json.dumps(raw))
    assert read_release_meta(tmp_path, "r") is None


def test_iso_is_utc_with_milliseconds() -> None:
    """iso() formats a timestamp as RFC 3339 UTC with milliseconds."""
    assert iso(0) == "1970-01-01T00:00:00.000+00:00"
    assert iso(1.5) == "1970-01-01T00:00:01.500+00:00"


def test_parse_iso_reads_back_what_iso_writes() -> None:
    """parse_iso(iso(t)) is t to the millisecond; a naive time is UTC; anything else is None."""
    t = 1_795_000_000.123
    parsed = parse_iso(iso(t))
    assert parsed is not None and abs(parsed - t) < 0.001
    assert (
        parse_iso("2026-11-28T07:30:01") == parse_iso("2026-11-28T07:30:01+00:00") == parse_iso("2026-11-28T07:30:01Z")
    )
    assert parse_iso("yesterday") is None and parse_iso(None) is None and parse_iso(12) is None


def test_a_pending_verification_is_kept_where_version_0_1_wrote_it(tmp_path: Path) -> None:
    """`extra.verify` of a 0.1 state file loads as State.verify, unknown extra keys survive, and it is
    written back in the same place."""
    path = tmp_path / "state.json"
    old = {
        "reloaded": "v2-b",
        "extra": {"verify": {"release": "v2-b", "back_to": "v1-a", "previous_before": None}, "x": 1},
    }
    path.write_text(json.dumps(old))
    state = load_state(path)
    assert state.verify == PendingVerify("v2-b", back_to="v1-a") and state.extra == {"x": 1}
    save_state(path, state)
    assert json.loads(path.read_text())["extra"] == old["extra"]
    state.verify = None
    save_state(path, state)
    assert json.loads(path.read_text())["extra"] == {"x": 1}


def test_release_metadata_without_built_reads_as_unknown(tmp_path: Path) -> None:
    """Metadata written before `built` existed reads with built=None; new metadata round-trips it."""
    (tmp_path / "v1-a.json").write_text(json.dumps({"name": "v1-a", "tag": "v1", "sha": "a" * 40, "created": 1.0}))
    old = read_release_meta(tmp_path, "v1-a")
    assert old is not None and old.built is None and old.ok
    write_release_meta(tmp_path, ReleaseMeta("v2-b", "v2", "b" * 40, 2.0, built=True))
    assert read_release_meta(tmp_path, "v2-b") == ReleaseMeta("v2-b", "v2", "b" * 40, 2.0, built=True)


def test_release_metadata_without_shared_reads_as_none_linked(tmp_path: Path) -> None:
    """Metadata written before shared paths existed reads with shared=(); new metadata round-trips them,
    and the app-facing copy leaves them out."""
    (tmp_path / "v1-a.json").write_text(json.dumps({"name": "v1-a", "tag": "v1", "sha": "a" * 40, "created": 1.0}))
    old = read_release_meta(tmp_path, "v1-a")
    assert old is not None and old.shared == ()
    meta = ReleaseMeta("v2-b", "v2", "b" * 40, 2.0, built=False, shared=(".env", "media"))
    write_release_meta(tmp_path, meta)
    assert read_release_meta(tmp_path, "v2-b") == meta
    (tmp_path / "app").mkdir()
    write_release_meta(tmp_path / "app", meta, app_facing=True)
    assert "shared" not in json.loads((tmp_path / "app" / "v2-b.json").read_text())


def test_the_journal_directory_is_fsynced_when_the_journal_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating the journal (first entry, or after a rotation) fsyncs its directory; appending does not."""
    from coordinator import state as state_module

    synced: list[Path] = []
    monkeypatch.setattr(state_module, "fsync_dir", synced.append)
    path = tmp_path / "journal.jsonl"
    append_journal(path, {"event": "attempt", "n": 1})
    append_journal(path, {"event": "attempt", "n": 2})
    assert synced == [tmp_path]
    monkeypatch.setattr(state_module, "JOURNAL_MAX_BYTES", 1)
    append_journal(path, {"event": "attempt", "n": 3})
    assert synced == [tmp_path, tmp_path]
    assert [e["n"] for e in read_journal(path)] == [1, 2, 3]
