"""The README stays true: its option table, command synopsis, comparison column and metric names
match the code. Pure text checks, no I/O beyond reading README.md."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from coordinator.cli import build_parser
from coordinator.config import OPTIONS
from coordinator.metrics import Metrics

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_option_table_lists_every_option_and_nothing_else() -> None:
    """The Command line option table has one row per option in coordinator.config.OPTIONS (plus --config)."""
    rows = _table_rows(_section("Command line"))
    documented = {m.group(1) for r in rows if (m := re.fullmatch(r"`--([a-z-]+)`", r[0]))}
    assert documented == set(OPTIONS) | {"config"}


def test_option_table_defaults_match_the_code() -> None:
    """Each documented default that is a number equals the option's default in the code."""
    for row in _table_rows(_section("Command line")):
        m = re.fullmatch(r"`--([a-z-]+)`", row[0])
        if m is None or m.group(1) not in OPTIONS or not re.fullmatch(r"[0-9.]+", row[1]):
            continue
        default = OPTIONS[m.group(1)].default
        assert isinstance(default, int | float), m.group(1)
        assert float(row[1]) == float(default), m.group(1)


def test_synopsis_names_every_subcommand() -> None:
    """Every subcommand of the CLI appears in the README's synopsis, and no other."""
    section = _section("Command line")
    synopsis = section[section.index("```\n") : section.index("```", section.index("```\n") + 4)]
    named = set(re.findall(r"^coordinator ([a-z]+)", synopsis, flags=re.M))
    assert named == set(_subcommands())


@pytest.mark.parametrize("word", ["rollback", "status", "releases", "history", "deploy"])
def test_comparison_column_commands_exist(word: str) -> None:
    """Commands coordinator's column of the comparison table names are real subcommands."""
    column = "\n".join(r[1] for r in _table_rows(_section("Compared with")) if len(r) > 1)
    assert f"`{word}" in column or f"`coordinator {word}`" in column
    assert word in _subcommands()


def test_comparison_column_options_exist() -> None:
    """Every `--option` in coordinator's column of the comparison table is a real option or flag."""
    column = "\n".join(r[1] for r in _table_rows(_section("Compared with")) if len(r) > 1)
    flags = set(re.findall(r"--([a-z-]+)", column))
    assert flags, "the comparison names no option: the test would check nothing"
    deploy_flags = {a.lstrip("-") for act in _subcommands()["deploy"]._actions for a in act.option_strings}
    assert flags <= set(OPTIONS) | deploy_flags


def test_every_metric_the_readme_documents_is_exported() -> None:
    """The metrics table names exactly the metrics the registry exports."""
    rows = _table_rows(_section("Metrics and probes"))
    documented = {m.group(1) for r in rows if (m := re.fullmatch(r"`(coordinator_[a-z_]+)`", r[0]))}
    exported = {metric.name for metric in Metrics().registry.collect()}
    # prometheus-client reports counters without their `_total` suffix
    exported = {n if n in documented else f"{n}_total" for n in exported}
    assert documented == exported


def test_paths_the_readme_names_exist() -> None:
    """The README points at files and helpers that exist (docker/, tests/ paths it names)."""
    root = Path(__file__).resolve().parent.parent
    for rel in set(re.findall(r"`((?:docker|tests|coordinator|benchmarks)/[A-Za-z0-9_./-]+)`", README)):
        assert (root / rel.rstrip("/")).exists(), rel


def test_the_architecture_doc_names_every_module() -> None:
    """docs/architecture.md's module table lists every module of the package, and no module that is gone."""
    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "architecture.md").read_text()
    table = doc[doc.index("## Modules") : doc.index("## Contracts on disk")]
    named = set(re.findall(r"`(\w+)\.py`", table))
    modules = {p.stem for p in (root / "coordinator").glob("*.py")} - {"__init__", "__main__"}
    assert named == modules
