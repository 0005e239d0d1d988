"""`coordinator check`: every check passes on a good setup, and each broken prerequisite fails its
own check with a fix (exit 1), on real things: git repositories, a volume, FIFOs, processes, HTTP
servers on 127.0.0.1. Nothing is written under ROOT."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from coordinator.check import (
    Check,
    CheckResult,
    format_results,
    raise_if_failed,
    run_all,
    run_checks,
)
from coordinator.checks import same_filesystem
from coordinator.config import Config
from coordinator.display import Style
from coordinator.exceptions import CheckFailed, ConfigError
from coordinator.layout import Layout
from coordinator.state import write_release_meta
from coordinator.statefile import ReleaseMeta
from tests.helpers import CANARY_SERVER, NOBODY, GitRepo, cli, release_health_server
from tests.nobody_env import NobodyPython

pytestmark = pytest.mark.anyio


def _config(root: Path, repo: GitRepo | Path | str, **kw: Any) -> Config:
    path = repo.path if isinstance(repo, GitRepo) else repo
    return Config(layout=Layout.for_root(root), repo=str(path), git_timeout=30.0, **kw)


async def _results(config: Config) -> dict[str, CheckResult]:
    return {r.name: r for r in await run_checks(config)}


async def _one(config: Config, name: str) -> CheckResult:
    return (await _results(config))[name]


def _snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under ``root`` (not following symlinks) with its kind and content (file hash, link target)."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                out[str(full.relative_to(root))] = ("link", os.readlink(full))
            elif stat.S_ISREG(mode):
                out[str(full.relative_to(root))] = ("file", hashlib.sha256(full.read_bytes()).hexdigest())
            else:
                out[str(full.relative_to(root))] = ("other", oct(stat.S_IFMT(mode)))
    return out


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b"ok\n"

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[int, bytes], str]]:
    """Starts HTTP servers on 127.0.0.1 answering every GET with a status and body; returns the URL.
    They are shut down after the test (outside its event loop)."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int, body: bytes = b"ok\n") -> str:
        handler = type("Handler", (_Answer,), {"status": status, "body": body})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/health"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(proc.stdout)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that a SIGHUP would kill."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/health"


def _good_root(root: Path) -> None:
    """A ROOT a daemon ran on, with shared content: .coordinator/tmp, shared/.env, shared/media."""
    (root / ".coordinator" / "tmp").mkdir(parents=True)
    (root / "shared" / "media").mkdir(parents=True)
    (root / "shared" / ".env").write_text("SECRET=1\n")


def _good_args(root: Path, repo: GitRepo, url: str) -> list[str]:
    return [
        "--root",
        str(root),
        "--repo",
        str(repo.path),
        "--tag-pattern",
        "v*",
        "--shared-file",
        ".env",
        "--shared-dir",
        "media",
        "--shared-dir",
        "uploads",
        "--health-url",
        url,
        "--build-command",
        f"{sys.executable} -c pass",
        "--pre-swap-command",
        "echo migrate | cat",
        "--notify-command",
        f"{sys.executable} -c pass",
    ]


# ---------------------------------------------------------------------------------------------- all good


async def test_a_good_setup_passes_every_check(root: Path, repo: GitRepo, app_url: str) -> None:
    """With every option set on a good setup, each check passes, in the documented order."""
    _good_root(root)
    config = _config(
        root,
        repo,
        tag_pattern="v*",
        shared_files=(".env",),
        shared_dirs=("media", "uploads"),
        health_url=app_url,
        build_command=f"{sys.executable} -c pass",
        pre_swap_command="echo migrate | cat",
        notify_command=f"{sys.executable} -c pass",
    )
    results = await run_checks(config)
    assert [r.name for r in results] == [
        "root",
        "layout",
        "repository",
        "tag pattern",
        "shared file .env",
        "shared dir media",
        "shared dir uploads",
        "reload",
        "health",
        "build command",
        "build sandbox",
        "pre-swap command",
        "notify command",
    ]
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    by_name = {r.name: r for r in results}
    assert by_name["repository"].detail.endswith("reachable, 3 tags")
    assert "note: created empty" in by_name["shared dir uploads"].detail
    raise_if_failed(results)


def test_the_cli_passes_a_good_setup_and_writes_nothing_under_root(root: Path, repo: GitRepo) -> None:
    """`coordinator check` exits 0 with a ✓ line per check and the summary; ROOT's tree is unchanged."""
    _good_root(root)
    before = _snapshot(root)
    with release_health_server(root) as url:
        out = cli("check", *_good_args(root, repo, url), env={"PYTHONIOENCODING": "utf-8"})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 14 and all(line.startswith("✓ ") for line in lines[:-1]), out.stdout
    assert lines[-1] == "all 13 checks passed"
    assert _snapshot(root) == before
    assert not (root / ".coordinator" / "lock").exists() and not (root / "deploy.status.json").exists()


def test_the_cli_reads_the_options_from_the_environment_and_a_config_file(
    root: Path, repo: GitRepo, tmp_path: Path
) -> None:
    """`check` takes `run`'s configuration: the repository from a TOML file, ROOT from the environment."""
    conf = tmp_path / "coordinator.toml"
    conf.write_text(f'repo = "{repo.path}"\ntag-pattern = "nothing-*"\n')
    out = cli("check", "--config", str(conf), env={"COORDINATOR_ROOT": str(root), "PYTHONIOENCODING": "utf-8"})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "✓ repository: " in out.stdout
    assert "✗ tag pattern: 'nothing-*' matches none of the 3 tags of the repository" in out.stdout


# ---------------------------------------------------------------------------------------------- the CLI


def test_a_failed_check_exits_1_with_its_fix_and_the_summary_on_stderr(root: Path, tmp_path: Path) -> None:
    """A repository that is not one: its ✗ line with the fix, the others still run, exit 1."""
    out = cli("check", "--root", str(root), "--repo", str(tmp_path), env={"PYTHONIOENCODING": "utf-8"})
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("✗ repository: "))
    assert "does not appear to be a git repository" in line
    assert line.endswith(" -- check --repo and that the repository is reachable")
    assert "✓ root: " in out.stdout and "✓ reload: " in out.stdout
    assert out.stdout.splitlines()[-1] == "1 of 4 checks failed: repository"
    assert out.stderr == (
        "coordinator: 1 of 4 checks failed: repository -- "
        "do what each failed check's fix says, then run coordinator check again\n"
    )


def test_json_prints_the_results_as_an_array(root: Path, tmp_path: Path) -> None:
    """`check --json`: a JSON array of name, ok, detail, fix; still exit 1 when one failed."""
    out = cli("check", "--json", "--root", str(root), "--repo", str(tmp_path))
    assert out.returncode == 1, out.stderr
    results = json.loads(out.stdout)
    assert [r["name"] for r in results] == ["root", "layout", "repository", "reload"]
    assert all(set(r) == {"name", "ok", "detail", "fix"} for r in results)
    repo_result = results[2]
    assert repo_result["ok"] is False and repo_result["fix"] == "check --repo and that the repository is reachable"
    assert results[0] == {"name": "root", "ok": True, "detail": f"{root} is a writable directory", "fix": None}


def test_without_utf8_the_marks_are_ok_and_x(root: Path, tmp_path: Path) -> None:
    """Off a UTF-8 stdout the lines start with `ok` and `x` (as deploy --wait's marks)."""
    out = cli("check", "--root", str(root), "--repo", str(tmp_path), env={"PYTHONIOENCODING": "ascii"})
    assert out.returncode == 1
    assert out.stdout.startswith("ok root: ")
    assert "\nx repository: " in out.stdout


@pytest.mark.parametrize(
    "bad",
    [
        ["--keep", "0"],
        ["--reload-signal", "NOPE", "--reload-pidfile", "/run/app.pid"],
        ["--reload-fifo-command", "q", "--reload-fifo", "/run/fifo"],
        ["--shared-file", "../etc/passwd"],
    ],
)
def test_a_bad_option_exits_2_as_for_run(root: Path, repo: GitRepo, bad: list[str]) -> None:
    """An option `run` refuses at start is refused by `check` the same way: exit 2, nothing checked."""
    out = cli("check", "--root", str(root), "--repo", str(repo.path), *bad)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == "" and out.stderr.startswith("coordinator: ") and " -- " in out.stderr


async def test_run_checks_raises_the_config_error_of_a_bad_reload_option(root: Path, repo: GitRepo) -> None:
    """The reload options are validated as the daemon validates them (ConfigError: exit 2)."""
    with pytest.raises(ConfigError, match="unknown signal"):
        await run_checks(_config(root, repo, reload_signal="NOPE", reload_pidfile=root / "pid"))


# ---------------------------------------------------------------------------------------------- ROOT


async def test_a_missing_root_fails_with_mkdir(tmp_path: Path, repo: GitRepo) -> None:
    """ROOT that does not exist: ✗ root with the mkdir to run; the others still answer."""
    results = await _results(_config(tmp_path / "nowhere", repo))
    assert results["root"] == CheckResult(
        "root", False, f"{tmp_path}/nowhere does not exist", f"create it (mkdir -p {tmp_path}/nowhere) or fix --root"
    )
    assert results["layout"].detail.startswith("not checked:")
    assert results["repository"].ok


async def test_a_root_that_is_a_file_fails(tmp_path: Path, repo: GitRepo) -> None:
    """ROOT that is a regular file: ✗ root, not a directory."""
    (tmp_path / "file").write_text("")
    result = await _one(_config(tmp_path / "file", repo), "root")
    assert not result.ok and result.detail == f"{tmp_path}/file is a regular file, not a directory"


def test_a_root_the_user_cannot_write_fails_naming_the_uid(world_dir: Path, nobody: NobodyPython) -> None:
    """As nobody on a ROOT owned by root (0755): ✗ root, Permission denied, the fix names uid 65534."""
    root = world_dir / "volume"
    root.mkdir()
    argv = [sys.executable, "-m", "coordinator", "check", "--root", str(root), "--repo", str(world_dir / "repo")]
    out = subprocess.run(
        nobody.argv(argv),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=nobody.env({**os.environ, "HOME": "/", "PYTHONIOENCODING": "utf-8"}),
    )
    assert out.returncode == 1, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("✗ root: "))
    assert f"cannot create a file in {root}: Permission denied" in line and f"uid {NOBODY}" in line, line
    assert os.listdir(root) == []


async def test_a_real_directory_at_current_fails_the_layout_check(root: Path, repo: GitRepo) -> None:
    """`current` as a real directory (the old in-place layout): ✗ layout with the daemon's own fix."""
    (root / "current").mkdir()
    result = await _one(_config(root, repo), "layout")
    assert not result.ok and result.detail == f"{root}/current is not a symlink"
    assert result.fix is not None and "move the old tree away" in result.fix


async def test_the_layout_check_names_current(root: Path, repo: GitRepo) -> None:
    """A ROOT with releases/ and current: ✓ layout naming the current release."""
    (root / "releases" / "v1-abc").mkdir(parents=True)
    (root / "current").symlink_to("releases/v1-abc")
    result = await _one(_config(root, repo), "layout")
    assert result == CheckResult("layout", True, "releases/ on ROOT's filesystem, current v1-abc")


def test_releases_on_another_filesystem_is_told_apart_by_st_dev(root: Path) -> None:
    """The filesystem comparison: the same st_dev passes, another fails. (A second filesystem
    cannot be mounted by the tests, so the check itself is only seen passing.)"""
    st = os.stat(root)
    other = os.stat_result((st.st_mode, st.st_ino, st.st_dev + 1, *tuple(st)[3:]))
    assert same_filesystem(st, os.stat(root))
    assert not same_filesystem(st, other)


# ---------------------------------------------------------------------------------------------- git


async def test_a_tag_pattern_matching_no_tag_fails(root: Path, repo: GitRepo) -> None:
    """--tag-pattern that matches none of the repository's tags: ✗ with examples of the tags."""
    result = await _one(_config(root, repo, tag_pattern="release-*"), "tag pattern")
    assert result == CheckResult(
        "tag pattern",
        False,
        "'release-*' matches none of the 3 tags of the repository (e.g. v1, v2, v3)",
        "fix --tag-pattern (a glob on the whole tag name, e.g. 'v*'), or push a matching tag",
    )


async def test_the_tag_pattern_matches_annotated_tags(root: Path, tmp_path: Path) -> None:
    """Annotated tags (listed with their peeled ^{} line) count once each."""
    repo = GitRepo(tmp_path / "annotated")
    repo.commit({"a": "1"}, tag="v1.0", annotated=True)
    repo.commit({"a": "2"}, tag="v2.0", annotated=True)
    results = await _results(_config(root, repo, tag_pattern="v2.*"))
    assert results["repository"].detail.endswith("reachable, 2 tags")
    assert results["tag pattern"].detail == "'v2.*' matches 1 of 2 tags, e.g. v2.0"


async def test_an_unreachable_repository_fails_and_the_pattern_is_not_checked(root: Path, tmp_path: Path) -> None:
    """A path that is not a repository: ✗ repository with git's reason; the pattern cannot be verified."""
    results = await _results(_config(root, tmp_path / "missing", tag_pattern="v*"))
    assert not results["repository"].ok and "does not appear to be a git repository" in results["repository"].detail
    assert results["tag pattern"] == CheckResult(
        "tag pattern", False, "not checked: the repository cannot be listed", "fix the repository check first"
    )


# ---------------------------------------------------------------------------------------------- shared


async def test_a_missing_shared_file_fails_saying_where_to_put_it(root: Path, repo: GitRepo) -> None:
    """--shared-file .env without ROOT/shared/.env: ✗ with the path to create."""
    result = await _one(_config(root, repo, shared_files=("config/.env",)), "shared file config/.env")
    assert result == CheckResult(
        "shared file config/.env",
        False,
        f"{root}/shared/config/.env does not exist",
        f"put the file at {root}/shared/config/.env (every release links config/.env to it)",
    )


async def test_a_shared_file_may_be_a_symlink_inside_shared_but_not_out_of_it(root: Path, repo: GitRepo) -> None:
    """A symlink to a file inside ROOT/shared passes; one leading out of ROOT/shared fails."""
    shared = root / "shared"
    shared.mkdir()
    (shared / "real.env").write_text("A=1\n")
    (shared / ".env").symlink_to("real.env")
    (root / "outside").write_text("B=2\n")
    (shared / "out.env").symlink_to("../outside")
    results = await _results(_config(root, repo, shared_files=(".env", "out.env")))
    assert results["shared file .env"].ok
    assert results["shared file out.env"].detail == f"{shared}/out.env leads out of {shared} (a symlink)"


async def test_a_shared_file_that_is_a_directory_fails(root: Path, repo: GitRepo) -> None:
    """A directory where a shared file should be: ✗ not a regular file."""
    (root / "shared" / ".env").mkdir(parents=True)
    result = await _one(_config(root, repo, shared_files=(".env",)), "shared file .env")
    assert not result.ok and result.detail == f"{root}/shared/.env is a directory, not a regular file"


async def test_a_shared_dir_that_is_a_file_fails(root: Path, repo: GitRepo) -> None:
    """A file where a shared directory should be: ✗ not a directory (absent would pass)."""
    (root / "shared").mkdir()
    (root / "shared" / "media").write_text("")
    result = await _one(_config(root, repo, shared_dirs=("media",)), "shared dir media")
    assert result == CheckResult(
        "shared dir media",
        False,
        f"{root}/shared/media is a regular file, not a directory",
        "move it away, or make it a directory",
    )


# ---------------------------------------------------------------------------------------------- reload


async def test_a_missing_fifo_fails(root: Path, repo: GitRepo) -> None:
    """--reload-fifo naming nothing: ✗ reload, start uWSGI with --master-fifo."""
    fifo = root / "master.fifo"
    result = await _one(_config(root, repo, reload_fifo=fifo), "reload")
    assert result == CheckResult(
        "reload",
        False,
        f"fifo: {fifo} does not exist: no uWSGI master created it",
        f"start uWSGI with --master-fifo {fifo} (on a volume both containers mount)",
    )


async def test_a_regular_file_at_the_fifo_path_fails(root: Path, repo: GitRepo) -> None:
    """A regular file at --reload-fifo: ✗ not a FIFO, and it is left as it was."""
    fifo = root / "master.fifo"
    fifo.write_text("")
    result = await _one(_config(root, repo, reload_fifo=fifo), "reload")
    assert not result.ok and result.detail == f"fifo: {fifo} is a regular file, not a FIFO"
    assert fifo.read_text() == ""


async def test_a_fifo_passes_and_is_never_written(root: Path, repo: GitRepo) -> None:
    """A FIFO with a reader: ✓ reload, and the reader gets nothing (a byte would reload the app)."""
    fifo = root / "master.fifo"
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        result = await _one(_config(root, repo, reload_fifo=fifo), "reload")
        assert os.read(reader, 16) == b""  # a byte written (even by a writer gone since) would be read here
    finally:
        os.close(reader)
    assert result == CheckResult("reload", True, f"fifo: {fifo} is a FIFO (not written to)")


async def test_a_pid_file_naming_a_dead_process_fails(root: Path, repo: GitRepo, dead_pid: int) -> None:
    """--reload-pidfile holding the pid of a process that exited: ✗ no process, with the PID-namespace fix."""
    pid = dead_pid
    pidfile = root / "app.pid"
    pidfile.write_text(f"{pid}\n")
    result = await _one(_config(root, repo, reload_signal="HUP", reload_pidfile=pidfile), "reload")
    assert not result.ok and result.detail.startswith(f"signal: no process {pid} (from {pidfile})")
    assert result.fix is not None and "shared PID namespace" in result.fix


async def test_a_pid_file_of_a_live_process_passes_and_nothing_is_sent(
    root: Path, repo: GitRepo, sleeper: subprocess.Popen[bytes]
) -> None:
    """A pid file naming a live process: ✓, and the process got no signal (signal 0 only)."""
    proc = sleeper
    pidfile = root / "app.pid"
    pidfile.write_text(f"{proc.pid}\n")
    result = await _one(_config(root, repo, reload_signal="HUP", reload_pidfile=pidfile), "reload")
    assert proc.poll() is None  # HUP would have killed it
    assert result == CheckResult("reload", True, f"signal: SIGHUP to process {proc.pid} (from {pidfile}), which exists")


async def test_a_missing_pid_file_fails_with_how_to_write_one(root: Path, repo: GitRepo) -> None:
    """No pid file at all: ✗ with the app-server options that write one."""
    result = await _one(_config(root, repo, reload_signal="HUP", reload_pidfile=root / "app.pid"), "reload")
    assert not result.ok and "does not exist" in result.detail
    assert result.fix is not None and "gunicorn --pid FILE" in result.fix


async def test_a_reload_command_not_found_fails(root: Path, repo: GitRepo) -> None:
    """--reload-command whose program is on no PATH: ✗ with the absolute-path fix."""
    result = await _one(_config(root, repo, reload_command="no-such-reloader --graceful"), "reload")
    assert result == CheckResult(
        "reload",
        False,
        "command: program 'no-such-reloader' not found on PATH",
        "install it, or give its absolute path in --reload-command",
    )


async def test_a_reload_file_in_a_missing_directory_fails(root: Path, repo: GitRepo) -> None:
    """The touch strategy with a reload file whose directory does not exist: ✗ reload."""
    config = Config(layout=Layout.for_root(root, reload_file=root / "app" / "reload.touch"), repo=str(repo.path))
    result = await _one(config, "reload")
    assert not result.ok and result.detail == f"touch: the reload file's directory {root}/app does not exist"


async def test_a_symlink_at_the_reload_file_fails(root: Path, repo: GitRepo) -> None:
    """A symlink planted at the reload file (the daemon refuses to touch through it): ✗ reload."""
    (root / "reload.touch").symlink_to("/etc/hostname")
    result = await _one(_config(root, repo), "reload")
    assert not result.ok and result.detail == f"touch: {root}/reload.touch is a symlink, not a regular file"


# ---------------------------------------------------------------------------------------------- health


async def test_a_health_url_on_a_closed_port_fails(root: Path, repo: GitRepo) -> None:
    """Nothing listening at --health-url: ✗ health, connection refused."""
    url = _closed_port_url()
    result = await _one(_config(root, repo, health_url=url), "health")
    assert not result.ok and result.detail.startswith(f"cannot reach {url}: ") and "refused" in result.detail
    assert result.fix == "start the app server, or fix --health-url (it must answer 2xx)"


async def test_a_health_url_answering_500_fails(root: Path, repo: GitRepo, serve: Callable[[int, bytes], str]) -> None:
    """An app answering 500: ✗ health, HTTP 500."""
    url = serve(500, b"oops\n")
    result = await _one(_config(root, repo, health_url=url), "health")
    assert not result.ok and result.detail == f"HTTP 500 from {url}"


@pytest.fixture
def current_v1(root: Path, repo: GitRepo) -> str:
    """ROOT with release v1-x (of tag v1) current, with its metadata; returns v1's sha."""
    sha = repo.tag_sha("v1")
    (root / "releases" / "v1-x").mkdir(parents=True)
    (root / "current").symlink_to("releases/v1-x")
    (root / ".coordinator" / "releases").mkdir(parents=True)
    write_release_meta(Layout.for_root(root).meta_dir, ReleaseMeta("v1-x", "v1", sha, 1.0))
    return sha


async def test_health_notes_an_answer_without_the_current_release_sha(
    root: Path, repo: GitRepo, serve: Callable[[int, bytes], str], current_v1: str
) -> None:
    """2xx passes; with a current release whose sha the answer lacks, a note says so (still ✓)."""
    sha = current_v1
    without = await _one(_config(root, repo, health_url=serve(200, b"hello\n")), "health")
    url = serve(200, f"sha={sha}\n".encode())
    with_sha = await _one(_config(root, repo, health_url=url), "health")
    assert without.ok and f"(note: without {sha!r} of the current release v1-x" in without.detail
    assert with_sha == CheckResult("health", True, f"{url} answers 2xx with {sha!r} of the current release v1-x")


# ---------------------------------------------------------------------------------------------- commands


async def test_a_build_command_not_found_fails(root: Path, repo: GitRepo) -> None:
    """--build-command whose program is on no PATH: ✗ build command."""
    result = await _one(_config(root, repo, build_command="no-such-builder --all"), "build command")
    assert result == CheckResult(
        "build command",
        False,
        "program 'no-such-builder' not found on PATH",
        "install it, or give its absolute path in --build-command",
    )


async def test_commands_relative_to_the_release_or_needing_a_shell_are_noted(root: Path, repo: GitRepo) -> None:
    """`./manage.py migrate` runs in the release (not checkable yet); `a | b` needs only /bin/sh."""
    results = await _results(
        _config(root, repo, pre_swap_command="./manage.py migrate", notify_command="echo $RESULT >> /tmp/log")
    )
    assert results["pre-swap command"] == CheckResult(
        "pre-swap command", True, "./manage.py is relative to the release (note: not checked before a deploy)"
    )
    assert results["notify command"] == CheckResult(
        "notify command", True, "runs through /bin/sh (shell syntax: its programs are not checked)"
    )


async def test_an_absolute_notify_command_that_is_not_executable_fails(root: Path, repo: GitRepo) -> None:
    """An absolute path to a file that is not executable: ✗ not found."""
    script = root / "notify.sh"
    script.write_text("#!/bin/sh\n")
    result = await _one(_config(root, repo, notify_command=f"{script} --all"), "notify command")
    assert not result.ok and result.detail == f"program {str(script)!r} not found"


# ---------------------------------------------------------------------------------------------- running


async def test_a_check_that_hangs_fails_at_its_limit_and_the_others_still_answer() -> None:
    """A check that does not answer in time fails with its limit; a quick one beside it passes."""

    async def hangs() -> CheckResult:
        await anyio.sleep(30)
        return CheckResult("slow", True, "never")

    async def quick() -> CheckResult:
        return CheckResult("quick", True, "fine")

    with anyio.fail_after(5):
        results = await run_all([Check("slow", hangs, limit_s=0.1), Check("quick", quick)])
    assert results[0].name == "slow" and not results[0].ok and results[0].detail == "no answer within 0.1 s"
    assert results[1] == CheckResult("quick", True, "fine")


async def test_an_unexpected_os_error_fails_only_its_check() -> None:
    """An OSError a check did not expect becomes its ✗ line, with the volume fix."""

    async def broken() -> CheckResult:
        raise PermissionError(13, "Permission denied", "/srv/app/x")

    results = await run_all([Check("broken", broken)])
    assert results == [
        CheckResult(
            "broken",
            False,
            "Permission denied: /srv/app/x",
            "make /srv/app/x (or the directory holding it) writable by the user coordinator runs as "
            f"(uid {os.geteuid()})",
        )
    ]


def test_format_results_shows_a_line_per_check_then_the_summary() -> None:
    """✓ name: detail, ✗ name: detail -- fix, then `1 of 2 checks failed: name`; ok/x without Unicode."""
    results = [CheckResult("root", True, "fine"), CheckResult("repository", False, "down", "bring it up")]
    assert format_results(results, Style(unicode=True)) == (
        "✓ root: fine\n✗ repository: down -- bring it up\n1 of 2 checks failed: repository"
    )
    assert format_results(results, Style(unicode=False)).splitlines()[:2] == [
        "ok root: fine",
        "x repository: down -- bring it up",
    ]
    with pytest.raises(CheckFailed, match="1 of 2 checks failed: repository") as info:
        raise_if_failed(results)
    assert info.value.exit_code == 1


async def test_build_sandbox_is_probed_and_reported(root: Path, repo: GitRepo) -> None:
    """With a build command and the layout in place, the build sandbox is probed (nothing left behind)."""
    for d in (root / "releases", root / ".coordinator" / "tmp"):
        d.mkdir(parents=True)
    before = _snapshot(root)
    result = await _one(_config(root, repo, build_command="true"), "build sandbox")
    assert result.ok and result.detail.startswith(("available:", "note: unavailable ("))
    assert _snapshot(root) == before


async def test_build_sandbox_is_not_probed_before_the_layout_exists(root: Path, repo: GitRepo) -> None:
    """Before the daemon made ROOT/releases the sandbox is not probed (and nothing is created)."""
    result = await _one(_config(root, repo, build_command="true"), "build sandbox")
    assert result.ok and result.detail.startswith("not probed")
    assert not (root / "releases").exists()


async def test_build_sandbox_off_is_not_checked(root: Path, repo: GitRepo) -> None:
    """--build-sandbox off: no build sandbox check."""
    assert "build sandbox" not in await _results(_config(root, repo, build_command="true", build_sandbox="off"))


# ---------------------------------------------------------------------------------------------- canary


async def test_the_canary_of_the_current_release_is_started_once_and_passes(
    root: Path, repo: GitRepo, current_v1: str, tmp_path: Path
) -> None:
    """--canary-command: the canary of current runs, answers its sha on $PORT: ✓; ROOT is unchanged."""
    script = tmp_path / "canary.py"
    script.write_text(CANARY_SERVER)
    before = _snapshot(root)
    starts = tmp_path / "starts.log"
    config = _config(root, repo, canary_command=f"{sys.executable} {script} $PORT {starts}", canary_url="/health")
    result = await _one(config, "canary")
    assert result.ok and result.detail.startswith("the canary of v1-x passed in "), result
    assert len(starts.read_text().splitlines()) == 1  # started once
    assert _snapshot(root) == before


async def test_a_canary_command_that_exits_fails_the_check_with_its_output(
    root: Path, repo: GitRepo, current_v1: str
) -> None:
    """A canary that exits at once: ✗ canary, with its exit, its last output and the fix."""
    command = f"{sys.executable} -c 'print(\"no module named mysite\"); raise SystemExit(1)'"
    result = await _one(_config(root, repo, canary_command=command, health_url="http://127.0.0.1:1/health"), "canary")
    assert not result.ok
    assert "exited with code 1" in result.detail and "its output ends: no module named mysite" in result.detail
    assert result.fix == "fix --canary-command (it must serve the release on 127.0.0.1:$PORT) or --canary-url"


async def test_no_canary_runs_without_a_current_release(root: Path, repo: GitRepo) -> None:
    """Nothing deployed yet: the canary check passes with a note (every deploy runs it)."""
    result = await _one(_config(root, repo, canary_command="gunicorn app", canary_url="/health"), "canary")
    assert result == CheckResult("canary", True, "not run: no current release yet (note: every deploy runs the canary)")
