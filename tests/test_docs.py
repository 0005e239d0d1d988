"""The documentation stays true to the code: the reference pages' option table and defaults, the
command synopsis (also the README's), the exit codes, the status file's fields, the metric table,
the volume layout, the comparison column, the architecture's module table and every repository path
the pages name. Pure text checks, no I/O beyond reading README.md, mkdocs.yml and docs/."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest
import yaml

from coordinator.cli import build_parser
from coordinator.exceptions import CoordinatorError
from coordinator.layout import Layout
from coordinator.metrics import Metrics
from coordinator.options import OPTIONS
from coordinator.records import StatusRecord

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()


def _page(rel: str) -> str:
    return (DOCS / rel).read_text()


def _section(text: str, title: str) -> str:
    """The text of the `## title` section (up to the next `## ` heading)."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _first_code_block(text: str) -> str:
    start = text.index("```\n") + 4
    return text[start : text.index("```", start)]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {a.lstrip("-") for act in parser._actions for a in act.option_strings}


# --------------------------------------------------------------------------------------------------
# reference/configuration.md


_BY_FLAG = {o.cli_flag: o for o in OPTIONS.values()}


def test_option_table_lists_every_option_and_nothing_else() -> None:
    """The Options table has one row per option in coordinator.options.OPTIONS (plus --config), named by
    its command-line flag."""
    rows = _table_rows(_section(_page("reference/configuration.md"), "Options"))
    documented = {m.group(1) for r in rows if (m := re.fullmatch(r"`(--[a-z-]+)`", r[0]))}
    assert documented == set(_BY_FLAG) | {"--config"}


def test_option_table_defaults_match_the_code() -> None:
    """Each documented default equals the option's default in the code: numbers, words and `none`."""
    checked = 0
    for row in _table_rows(_section(_page("reference/configuration.md"), "Options")):
        m = re.fullmatch(r"`(--[a-z-]+)`", row[0])
        if m is None or m.group(1) not in _BY_FLAG:
            continue
        default = _BY_FLAG[m.group(1)].default
        cell = row[1].strip("`")
        if cell == "none" and default == ():  # a list option, empty by default
            pass
        elif re.fullmatch(r"[0-9.]+", cell):
            assert isinstance(default, int | float), m.group(1)
            assert float(cell) == float(default), m.group(1)
        elif cell in ("none", "off"):
            assert default in (None, False), m.group(1)
        elif not cell.startswith("(") and "/" not in cell:  # "(required)", "ROOT/deploy.request"
            assert cell == default, m.group(1)
        checked += 1
    assert checked == len(OPTIONS)


# --------------------------------------------------------------------------------------------------
# reference/cli.md and the README's synopsis


@pytest.mark.parametrize("where", ["reference/cli.md", "README.md"])
def test_synopsis_names_every_subcommand_and_only_real_options(where: str) -> None:
    """Every subcommand appears in the synopsis, and no other; every `--option` a line names is one of
    that subcommand's."""
    text = README if where == "README.md" else _page(where)
    if where == "README.md":
        text = _section(text, "Commands")
    synopsis = _first_code_block(text)
    lines = re.findall(r"^coordinator ([a-z]+)(.*)$", synopsis, flags=re.M)
    subcommands = _subcommands()
    assert {name for name, _ in lines} == set(subcommands)
    for name, rest in lines:
        assert set(re.findall(r"--([a-z-]+)", rest)) <= _flags(subcommands[name]), name


def test_cli_page_has_a_section_per_subcommand() -> None:
    """reference/cli.md describes each subcommand under its own heading."""
    headings = set(re.findall(r"^## ([a-z]+)$", _page("reference/cli.md"), flags=re.M))
    assert headings == set(_subcommands())


# --------------------------------------------------------------------------------------------------
# reference/exit-codes.md


def _error_classes(cls: type[CoordinatorError] = CoordinatorError) -> set[type[CoordinatorError]]:
    """``cls`` and every subclass of it, at any depth."""
    out = {cls}
    for sub in cls.__subclasses__():
        out |= _error_classes(sub)
    return out


def test_exit_code_table_lists_exactly_the_codes_of_the_code() -> None:
    """Every exit code an error class defines (plus 0 and 130 for Ctrl-C) has a row, and no other.
    A row whose first cell is not a plain number (a placeholder) does not count."""
    for module in ("coordinator.cli", "coordinator.commands", "coordinator.daemon"):
        importlib.import_module(module)
    codes = {0, 130} | {cls.exit_code for cls in _error_classes()}
    rows = _table_rows(_page("reference/exit-codes.md"))
    documented = {int(r[0]) for r in rows if re.fullmatch(r"[0-9]+", r[0])}
    assert documented == codes


# --------------------------------------------------------------------------------------------------
# reference/status-file.md


def test_status_field_table_names_exactly_the_fields_written() -> None:
    """The field table names every key of records.StatusRecord, and no other."""
    rows = _table_rows(_page("reference/status-file.md"))
    documented = {m.group(1) for r in rows if (m := re.fullmatch(r"`([a-z_]+)`", r[0]))}
    assert documented == set(StatusRecord.__annotations__)


# --------------------------------------------------------------------------------------------------
# reference/metrics.md


def test_every_metric_the_reference_documents_is_exported() -> None:
    """The metrics table names exactly the metrics the registry exports."""
    rows = _table_rows(_section(_page("reference/metrics.md"), "Metrics"))
    documented = {m.group(1) for r in rows if (m := re.fullmatch(r"`(coordinator_[a-z_]+)`", r[0]))}
    exported = {metric.name for metric in Metrics().registry.collect()}
    # prometheus-client reports counters without their `_total` suffix
    exported = {n if n in documented else f"{n}_total" for n in exported}
    assert documented == exported


# --------------------------------------------------------------------------------------------------
# reference/volume-layout.md


def test_volume_layout_tree_names_every_path_of_the_layout() -> None:
    """The tree of reference/volume-layout.md names every path coordinator.layout.Layout defines,
    each under its parent directory."""
    tree = _first_code_block(_page("reference/volume-layout.md"))
    lay = Layout.for_root(Path("/ROOT"))
    names = [n for n in dir(Layout) if isinstance(getattr(Layout, n, None), property)]
    paths = {n: getattr(lay, n) for n in names} | {
        "marker": lay.marker,
        "status_file": lay.status_file,
        "reload_file": lay.reload_file,
    }
    entries: set[str] = set()  # every path the tree shows, relative to ROOT
    stack: list[str] = []
    for line in tree.splitlines()[1:]:
        depth = (len(line) - len(line.lstrip())) // 2 - 1  # two spaces per level below ROOT/
        stack = [*stack[:depth], line.split()[0].rstrip("/")]
        parts = "/".join(stack).split("/")
        entries |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
    for name, path in paths.items():
        rel = path.relative_to("/ROOT").as_posix()
        assert rel in entries, f"{name}: {rel} is not in the tree"


# --------------------------------------------------------------------------------------------------
# explanation/comparison.md


def _comparison_column() -> str:
    return "\n".join(r[1] for r in _table_rows(_page("explanation/comparison.md")) if len(r) > 1)


@pytest.mark.parametrize("word", ["rollback", "status", "releases", "history", "deploy"])
def test_comparison_column_commands_exist(word: str) -> None:
    """Commands coordinator's column of the comparison table names are real subcommands."""
    column = _comparison_column()
    assert f"`{word}" in column or f"`coordinator {word}`" in column
    assert word in _subcommands()


def test_comparison_column_options_exist() -> None:
    """Every `--option` in coordinator's column of the comparison table is a real option or flag."""
    flags = set(re.findall(r"--([a-z-]+)", _comparison_column()))
    assert flags, "the comparison names no option: the test would check nothing"
    assert flags <= set(OPTIONS) | _flags(_subcommands()["deploy"])


# --------------------------------------------------------------------------------------------------
# explanation/architecture.md


def test_the_architecture_doc_names_every_module() -> None:
    """The architecture page's module table lists every module of the package, and no module that is gone."""
    doc = _page("explanation/architecture.md")
    table = doc[doc.index("## Modules") : doc.index("## Contracts on disk")]
    named = set(re.findall(r"`(\w+)\.py`", table))
    modules = {p.stem for p in (ROOT / "coordinator").glob("*.py")} - {"__init__", "__main__"}
    assert named == modules


# --------------------------------------------------------------------------------------------------
# every page, the README and the site


def _all_texts() -> dict[str, str]:
    return {"README.md": README} | {p.relative_to(ROOT).as_posix(): p.read_text() for p in DOCS.rglob("*.md")}


@pytest.mark.parametrize("name", sorted(_all_texts()))
def test_paths_the_docs_name_exist(name: str) -> None:
    """The README and every page point only at repository files and directories that exist."""
    text = _all_texts()[name]
    for rel in set(re.findall(r"`((?:docker|tests|coordinator|benchmarks)/[A-Za-z0-9_./-]+)`", text)):
        assert (ROOT / rel.rstrip("/")).exists(), rel


def test_readme_is_a_front_page() -> None:
    """The README stays short, and its relative links reach files that exist (the site's own links
    are checked by `mkdocs build --strict`)."""
    assert len(README.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def _nav_files(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def test_mkdocs_nav_lists_every_page_once() -> None:
    """Every page of docs/ is in mkdocs.yml's nav exactly once, and the nav names no missing page."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_files(config["nav"])
    assert len(nav) == len(set(nav))
    assert set(nav) == {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
