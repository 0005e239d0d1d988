"""coordinator.pin: a process imports only from the release `current` pointed to when it loaded.

The loader mutates sys.path and the working directory at import, so each case runs it in a fresh
interpreter (`python -c`) with the environment set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator.pin import pin_sys_path

PROJECT = Path(__file__).resolve().parents[1]


def make_release(root: Path, name: str, version: str, meta: dict[str, Any] | None = None) -> Path:
    """releases/<name>/ with an app (eager import) and a module the app imports lazily."""
    rel = root / "releases" / name
    rel.mkdir(parents=True)
    (rel / "eager.py").write_text(f"VERSION = {version!r}\n")
    (rel / "late.py").write_text(f"VERSION = {version!r}\n")
    (rel / "wsgi.py").write_text(
        "import eager\n"
        "def application(environ, start_response):\n"
        "    import late\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [f'app={eager.VERSION} late={late.VERSION}'.encode()]\n"
    )
    if meta is not None:
        (root / "releases" / f"{name}.json").write_text(json.dumps(meta))
    return rel


def point_current(root: Path, name: str) -> None:
    """Swap ROOT/current to releases/<name> the way coordinator does (temp link + rename)."""
    tmp = root / ".current.tmp"
    os.symlink(f"releases/{name}", tmp)
    os.replace(tmp, root / "current")


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    root = tmp_path / "volume"
    make_release(root, "v1-aaaa", "v1", {"name": "v1-aaaa", "tag": "v1", "sha": "a" * 40})
    make_release(root, "v2-bbbb", "v2", {"name": "v2-bbbb", "tag": "v2", "sha": "b" * 40})
    point_current(root, "v1-aaaa")
    return root


def run_pinned(
    code: str,
    current: Path | str | None,
    app: str | None = "wsgi:application",
    cwd: Path | None = None,
    pythonpath: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Import coordinator.pin in a fresh interpreter, run ``code``, return what it printed as JSON."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_PIN_")}
    full.update(env or {})
    full["PYTHONPATH"] = os.pathsep.join([str(PROJECT), *(pythonpath or [])])
    if current is not None:
        full["COORDINATOR_PIN_CURRENT"] = str(current)
    if app is not None:
        full["COORDINATOR_PIN_APP"] = app
    prog = "import json, os, sys\nimport coordinator.pin as pin\n" + code
    out = subprocess.run(
        [sys.executable, "-c", prog], env=full, cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if out.returncode != 0:
        return {"rc": out.returncode, "stderr": out.stderr}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def test_pin_puts_the_real_release_first_on_sys_path(volume: Path) -> None:
    """The resolved release, not the symlink, is sys.path[0]."""
    got = run_pinned("print(json.dumps({'first': sys.path[0], 'path': sys.path}))", volume / "current")
    assert got["first"] == str((volume / "releases" / "v1-aaaa").resolve())
    assert str(volume / "current") not in got["path"]


def test_pin_changes_directory_into_the_real_release(volume: Path, tmp_path: Path) -> None:
    """The working directory becomes the resolved release."""
    got = run_pinned("print(json.dumps({'cwd': os.getcwd()}))", volume / "current", cwd=tmp_path)
    assert got["cwd"] == str((volume / "releases" / "v1-aaaa").resolve())


def test_lazy_import_after_a_swap_comes_from_the_pinned_release(volume: Path) -> None:
    """A module first imported after `current` moved on still comes from the pinned release."""
    code = (
        "import wsgi\n"
        f"tmp = {str(volume / '.swap')!r}\n"
        "os.symlink('releases/v2-bbbb', tmp)\n"
        f"os.replace(tmp, {str(volume / 'current')!r})\n"
        "import late\n"
        "print(json.dumps({'eager': wsgi.eager.VERSION, 'late': late.VERSION, 'file': late.__file__}))\n"
    )
    got = run_pinned(code, volume / "current")
    assert (got["eager"], got["late"]) == ("v1", "v1")
    assert got["file"] == str((volume / "releases" / "v1-aaaa" / "late.py").resolve())
    assert os.readlink(volume / "current") == "releases/v2-bbbb"  # the swap really happened


def test_without_pin_a_lazy_import_after_a_swap_mixes_releases(volume: Path) -> None:
    """Control: with the symlink on sys.path (no pin) the same sequence mixes v1 and v2."""
    code = (
        "import importlib\n"
        f"sys.path.insert(0, {str(volume / 'current')!r})\n"
        "import wsgi\n"
        f"tmp = {str(volume / '.swap')!r}\n"
        "os.symlink('releases/v2-bbbb', tmp)\n"
        f"os.replace(tmp, {str(volume / 'current')!r})\n"
        "import late\n"
        "print(json.dumps({'eager': wsgi.eager.VERSION, 'late': late.VERSION}))\n"
    )
    got = run_pinned(code, None, app=None)
    assert (got["eager"], got["late"]) == ("v1", "v2")


def test_application_delegates_to_the_target(volume: Path) -> None:
    """pin.application answers what the target app answers."""
    code = (
        "seen = []\n"
        "body = b''.join(pin.application({}, lambda status, headers: seen.append(status)))\n"
        "print(json.dumps({'status': seen[0], 'body': body.decode()}))\n"
    )
    got = run_pinned(code, volume / "current")
    assert got == {"status": "200 OK", "body": "app=v1 late=v1"}


def test_application_spec_without_callable_defaults_to_application(volume: Path) -> None:
    """COORDINATOR_PIN_APP=module means module:application."""
    got = run_pinned(
        "print(json.dumps({'ok': pin._target is sys.modules['wsgi'].application}))", volume / "current", "wsgi"
    )
    assert got == {"ok": True}


def test_release_dir_is_the_resolved_release(volume: Path) -> None:
    """release_dir() names the pinned release's real path."""
    got = run_pinned("print(json.dumps({'dir': pin.release_dir()}))", volume / "current")
    assert got["dir"] == str((volume / "releases" / "v1-aaaa").resolve())


def test_release_info_reads_the_sibling_metadata_file(volume: Path) -> None:
    """release_info() is the content of releases/<name>.json."""
    got = run_pinned("print(json.dumps(pin.release_info()))", volume / "current")
    assert got == {"name": "v1-aaaa", "tag": "v1", "sha": "a" * 40}


def test_release_info_is_empty_without_metadata(volume: Path) -> None:
    """A release published without a metadata file gives {}."""
    make_release(volume, "v0-cccc", "v0")
    point_current(volume, "v0-cccc")
    got = run_pinned("print(json.dumps({'info': pin.release_info()}))", volume / "current")
    assert got == {"info": {}}


def test_release_info_is_empty_for_unreadable_metadata(volume: Path) -> None:
    """A metadata file that is not a JSON object gives {}."""
    (volume / "releases" / "v1-aaaa.json").write_text("[1, 2")
    got = run_pinned("print(json.dumps({'info': pin.release_info()}))", volume / "current")
    assert got == {"info": {}}


def test_release_info_is_empty_when_not_pinned(tmp_path: Path) -> None:
    """Imported without configuration (an app run without the loader), release_info() gives {}."""
    got = run_pinned("print(json.dumps({'info': pin.release_info()}))", None, app=None, cwd=tmp_path)
    assert got == {"info": {}}


def test_pin_drops_entries_of_other_releases(volume: Path) -> None:
    """sys.path entries inside another release (and the symlink itself) are removed."""
    other = str(volume / "releases" / "v2-bbbb")
    got = run_pinned(
        "print(json.dumps({'path': sys.path}))", volume / "current", pythonpath=[other, str(volume / "current")]
    )
    assert other not in got["path"]
    assert str(volume / "current") not in got["path"]
    assert got["path"].count(str((volume / "releases" / "v1-aaaa").resolve())) == 1


def test_pin_from_inside_an_old_release_does_not_import_from_it(volume: Path) -> None:
    """Started with its cwd in the old release (sys.path ''), the process imports from current's release."""
    point_current(volume, "v2-bbbb")
    got = run_pinned(
        "import late\nprint(json.dumps({'late': late.VERSION}))",
        volume / "current",
        cwd=volume / "releases" / "v1-aaaa",
    )
    assert got == {"late": "v2"}


def test_pin_fails_clearly_when_current_is_missing(tmp_path: Path) -> None:
    """A missing `current` stops the import with a message naming the variable."""
    got = run_pinned("print('{}')", tmp_path / "nothing" / "current")
    assert got["rc"] != 0
    assert "COORDINATOR_PIN_CURRENT" in got["stderr"]
    assert "does not exist" in got["stderr"]


def test_pin_fails_clearly_when_the_app_variable_is_missing(volume: Path) -> None:
    """Only one of the two variables set is an error naming the other."""
    got = run_pinned("print('{}')", volume / "current", app=None)
    assert got["rc"] != 0
    assert "COORDINATOR_PIN_APP is not set" in got["stderr"]


def test_pin_fails_clearly_when_the_callable_is_missing(volume: Path) -> None:
    """An app spec naming a missing attribute is an error naming the spec."""
    got = run_pinned("print('{}')", volume / "current", app="wsgi:nope")
    assert got["rc"] != 0
    assert "has no attribute 'nope'" in got["stderr"]


def test_a_release_that_fails_to_import_fails_the_loader(volume: Path) -> None:
    """By default the target's import error propagates (the app server sees a broken app)."""
    (volume / "releases" / "v1-aaaa" / "wsgi.py").write_text("raise RuntimeError('broken release')\n")
    got = run_pinned("print('{}')", volume / "current")
    assert got["rc"] != 0
    assert "RuntimeError: broken release" in got["stderr"]


def test_on_error_500_serves_500_for_a_release_that_fails_to_import(volume: Path) -> None:
    """COORDINATOR_PIN_ON_ERROR=500: the loader imports, prints the error, and answers 500."""
    (volume / "releases" / "v1-aaaa" / "wsgi.py").write_text("raise RuntimeError('broken release')\n")
    code = (
        "seen = []\n"
        "body = b''.join(pin.application({}, lambda status, headers: seen.append(status)))\n"
        "print(json.dumps({'status': seen[0], 'body': body.decode(), 'sha': pin.release_info().get('sha')}))\n"
    )
    got = run_pinned(code, volume / "current", env={"COORDINATOR_PIN_ON_ERROR": "500"})
    assert got["status"] == "500 Internal Server Error"
    assert got["body"] == "the release v1-aaaa failed to load: RuntimeError\n"
    assert got["sha"] == "a" * 40


def test_on_error_rejects_unknown_values(volume: Path) -> None:
    """COORDINATOR_PIN_ON_ERROR accepts only 'raise' and '500'."""
    got = run_pinned("print('{}')", volume / "current", env={"COORDINATOR_PIN_ON_ERROR": "ignore"})
    assert got["rc"] != 0
    assert "expected 'raise' (default) or '500'" in got["stderr"]


def test_import_without_configuration_changes_nothing(tmp_path: Path) -> None:
    """With neither variable set, importing the module leaves sys.path and cwd alone."""
    code = "print(json.dumps({'cwd': os.getcwd(), 'pinned': pin._release}))"
    got = run_pinned(code, None, app=None, cwd=tmp_path)
    assert got == {"cwd": str(tmp_path.resolve()), "pinned": None}


def test_pin_is_a_single_stdlib_only_file() -> None:
    """coordinator/pin.py imports nothing outside the standard library (it can be copied alone)."""
    code = (
        "import sys, runpy\n"
        "before = set(sys.modules)\n"
        f"runpy.run_path({str(PROJECT / 'coordinator' / 'pin.py')!r})\n"
        "new = sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names)\n"
        "print(new)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "[]"


def test_sys_path_rewrites_entries_below_the_symlink() -> None:
    """An entry below `current` (e.g. current/src) is rewritten below the pinned release."""
    new = pin_sys_path(["/srv/app/current/src", "/usr/lib/python3.11"], "/srv/app/current", "/srv/app/releases/v1", "/")
    assert new == ["/srv/app/releases/v1", "/srv/app/releases/v1/src", "/usr/lib/python3.11"]


def test_sys_path_keeps_unrelated_entries_in_order() -> None:
    """Entries outside the volume keep their order, after the release."""
    entries = ["", "/usr/lib/python311.zip", "/usr/lib/python3.11", "/venv/site-packages"]
    new = pin_sys_path(entries, "/srv/app/current", "/srv/app/releases/v1", "/somewhere")
    assert new == ["/srv/app/releases/v1", *entries]
