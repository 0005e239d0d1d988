"""`coordinator demo`, run as a user would: the story it tells (the commands, a deploy, a refused
hostile marker, a rollback) and that it leaves nothing behind (no process, no temporary directory).

The CLI's own wording changes over time, so only stable words of its output are checked (tag names,
"refused", "rolled back"); the rest is the demo's own transcript (``$ command`` lines, ``curl``'s answer,
``(exit code N)``, ``stopped NAME (pid N)``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HAS_GUNICORN = (Path(sys.executable).parent / "gunicorn").exists()


def _run_demo(tmp_path: Path, prelude: str = "", returncode: int = 0) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the demo, after the Python code ``prelude``, with its temporary directory under ``tmp_path``;
    the result and that directory's parent."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    code = f"import sys\n{prelude}\nfrom coordinator.cli import main\nsys.exit(main(['demo']))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "TMPDIR": str(tmpdir)},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert out.returncode == returncode, out.stdout + out.stderr
    return out, tmpdir


def _section(text: str, command: str) -> str:
    """The output of the first ``$ command...`` line: up to the next command or comment."""
    match = re.search(rf"^\$ {re.escape(command)}.*\n", text, re.MULTILINE)
    assert match, f"no `$ {command}` in:\n{text}"
    return re.split(r"^[$#] ", text[match.end() :], maxsplit=1, flags=re.MULTILINE)[0]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone, only not reaped yet


def _processes_under(path: Path) -> list[str]:
    """Live processes whose working directory or command line is inside ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (cwd.startswith(str(path)) or str(path) in cmdline) and _alive(int(proc.name)):
            found.append(f"{proc.name}: {cmdline} (in {cwd})")
    return found


def _check_left_nothing(text: str, tmpdir: Path) -> None:
    stopped = [int(pid) for pid in re.findall(r"^stopped .* \(pid (\d+)\)", text, re.MULTILINE)]
    assert stopped, text
    assert [pid for pid in stopped if _alive(pid)] == []
    assert _processes_under(tmpdir) == []
    assert list(tmpdir.iterdir()) == [], "the demo's temporary directory is still there"
    assert re.search(r"^removed .*coordinator-demo-", text, re.MULTILINE), text


@pytest.mark.skipif(not HAS_GUNICORN, reason="gunicorn is not installed (pip install -e '.[e2e]')")
def test_demo_tells_the_story_with_a_real_app_server(tmp_path: Path) -> None:
    out, tmpdir = _run_demo(tmp_path)
    text = re.sub(r" \\\n +", " ", out.stdout)  # long commands are continued with a backslash
    assert re.search(r"^\$ coordinator run .*--once", text, re.MULTILINE), text
    assert re.search(r"^\$ .*\bgunicorn .*--bind 127\.0\.0\.1:", text, re.MULTILINE), text
    assert re.search(r"^\$ coordinator run .*--health-url http://127\.0\.0\.1:", text, re.MULTILINE), text
    assert re.search(r"--reload-signal HUP --reload-pidfile", text), text
    for command in ("deploy v2", "deploy ../../etc/passwd", "status", "releases", "rollback", "deploy v3", "history"):
        assert f"\n$ coordinator {command} --root " in text, command

    deploy = _section(text, "coordinator deploy v2 --root volume --wait")
    assert "v2" in deploy and len(deploy.strip().splitlines()) >= 4, deploy  # the phases, one per line
    assert "hello from v2" in _section(text.split(deploy, 1)[1], "curl "), text

    hostile = _section(text, "coordinator deploy ../../etc/passwd")
    assert re.search(r"\(exit code [1-9]\d*\)", hostile), hostile
    status = _section(text, "coordinator status ")
    assert "refused" in status and "v2" in status, status

    broken = _section(text, "coordinator deploy v3 ")
    assert "rolled back" in broken and "v1" in broken, broken
    assert re.search(r"\(exit code [1-9]\d*\)", broken), broken
    after = text.split("$ coordinator deploy v3 ", 1)[1]
    assert "hello from v1" in _section(after, "curl "), after
    assert "v3" in _section(text, "coordinator history ")

    assert "stopped gunicorn" in text and "stopped the daemon" in text
    assert "Traceback" not in out.stdout + out.stderr
    assert "True" not in text and "['" not in text, "a Python repr in the output"
    _check_left_nothing(text, tmpdir)


def test_demo_without_gunicorn_says_what_it_skipped(tmp_path: Path) -> None:
    out, tmpdir = _run_demo(tmp_path, "sys.modules['gunicorn'] = None")  # find_spec() then finds none
    text = out.stdout
    assert "Skipped" in text and "gunicorn" in text
    assert "\n$ gunicorn" not in text and "\n$ coordinator deploy v3" not in text
    assert "v2" in _section(text, "coordinator deploy v2 ")
    assert "refused" in _section(text, "coordinator status ")
    assert "v1" in _section(text, "coordinator rollback ")
    _check_left_nothing(text, tmpdir)


def test_ctrl_c_stops_everything_and_removes_the_directory(tmp_path: Path) -> None:
    """Ctrl-C in the middle (the daemon and the app server running): exit 130, nothing left behind."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "demo"],
        env={**os.environ, "TMPDIR": str(tmpdir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's `&` may have ignored it
    )
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("$ coordinator deploy v2 "):
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(seen) + rest
    assert proc.returncode == 130, text
    assert "interrupted" in text
    _check_left_nothing(text, tmpdir)


FAIL_AFTER_THE_DAEMON_STARTED = """
import coordinator.demo as demo
started = demo.start_daemon
def start_daemon(d):
    started(d)
    raise demo.DemoError("a step went wrong")
demo.start_daemon = start_daemon
"""


def test_a_failed_step_stops_everything_and_removes_the_directory(tmp_path: Path) -> None:
    out, tmpdir = _run_demo(tmp_path, FAIL_AFTER_THE_DAEMON_STARTED, returncode=1)
    assert "demo failed: a step went wrong" in out.stderr
    assert "stopped the daemon" in out.stdout
    _check_left_nothing(out.stdout, tmpdir)
