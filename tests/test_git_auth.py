"""Reading the repository with credentials and across owners: a password from a file against a real
smart-HTTP server (git http-backend), and a local repository owned by another user."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.config import Config
from coordinator.exceptions import ConfigError, GitError
from coordinator.git import GitCache
from coordinator.layout import Layout
from tests.git_http import GitHttpServer, git_http_server
from tests.helpers import GitRepo, app_repo, chown_to_nobody, process_texts_during

pytestmark = pytest.mark.anyio

PASSWORD = "s3cr3t-Pa55word-9f2c71"
USER = "deployer"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[GitHttpServer]:
    """The v1..v3 app repository, served as http://127.0.0.1:PORT/app (user deployer)."""
    app_repo(tmp_path / "srv" / "app")
    with git_http_server(tmp_path / "srv", USER, PASSWORD) as server:
        yield server


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    p = tmp_path / "secret" / "password"
    p.parent.mkdir()
    p.write_text(PASSWORD + "\n")
    return p


def _cache(tmp_path: Path, server: GitHttpServer, password_file: Path | None) -> GitCache:
    return GitCache(
        tmp_path / "cache.git",
        server.url("app"),
        timeout=30,
        username=USER if password_file else None,
        password_file=password_file,
    )


async def test_fetch_with_the_password_file(tmp_path: Path, served: GitHttpServer, password_file: Path) -> None:
    """The right password in the file: the tag is fetched over authenticated HTTP."""
    cache = _cache(tmp_path, served, password_file)
    await cache.ensure()
    sha = await cache.fetch_tag("v2")
    assert sha == GitRepo(tmp_path / "srv" / "app").tag_sha("v2")
    assert True in served.attempts


async def test_fetch_without_credentials_fails(tmp_path: Path, served: GitHttpServer) -> None:
    """Without a password file the server refuses, and git fails instead of prompting."""
    cache = _cache(tmp_path, served, None)
    await cache.ensure()
    with pytest.raises(GitError):
        await cache.fetch_tag("v1")
    assert True not in served.attempts


async def test_wrong_password_fails_without_showing_it(
    tmp_path: Path, served: GitHttpServer, password_file: Path
) -> None:
    """A wrong password: a GitError saying authentication failed, and the password nowhere in it."""
    wrong = "wrong-Pa55word-77aa"
    password_file.write_text(wrong + "\n")
    cache = _cache(tmp_path, served, password_file)
    await cache.ensure()
    with pytest.raises(GitError) as info:
        await cache.fetch_tag("v1")
    text = str(info.value) + repr(info.value.as_dict())
    assert "Authentication failed" in text
    assert wrong not in text and PASSWORD not in text
    assert False in served.attempts


async def test_rotated_password_file_is_read_at_each_fetch(
    tmp_path: Path, served: GitHttpServer, password_file: Path
) -> None:
    """The server's password and the file change between two fetches: the second uses the new one."""
    cache = _cache(tmp_path, served, password_file)
    await cache.ensure()
    await cache.fetch_tag("v1")
    served.password = "rotated-Pa55-0b1e"
    password_file.write_text("rotated-Pa55-0b1e\n")
    assert await cache.fetch_tag("v2") == GitRepo(tmp_path / "srv" / "app").tag_sha("v2")


async def test_only_the_first_line_of_the_file_is_the_password(
    tmp_path: Path, served: GitHttpServer, password_file: Path
) -> None:
    """A file with no final newline, or more lines: the first line, without its newline, is sent."""
    cache = _cache(tmp_path, served, password_file)
    await cache.ensure()
    password_file.write_text(PASSWORD)
    await cache.fetch_tag("v1")
    password_file.write_text(PASSWORD + "\nsomething else\n")
    await cache.fetch_tag("v2")


async def test_password_file_removed_later_is_a_clear_git_error(
    tmp_path: Path, served: GitHttpServer, password_file: Path
) -> None:
    """The password file disappears after start: the fetch fails with a GitError naming the file."""
    cache = _cache(tmp_path, served, password_file)
    await cache.ensure()
    password_file.unlink()
    with pytest.raises(GitError, match="cannot read the password file") as info:
        await cache.fetch_tag("v1")
    assert str(password_file) in info.value.message
    assert served.attempts == []


async def test_password_is_in_no_command_line_or_environment_during_a_fetch(
    tmp_path: Path, served: GitHttpServer, password_file: Path
) -> None:
    """While a fetch runs (the server slowed down), no process has the password in its command line
    or environment."""
    served.delay_s = 0.5
    cache = _cache(tmp_path, served, password_file)
    await cache.ensure()
    seen = await process_texts_during(lambda: cache.fetch_tag("v1"))
    assert any(b"remote-http" in t for t in seen)  # the scan did see git at work
    assert not [t for t in seen if PASSWORD.encode() in t]


# ---------------------------------------------------------------------------------------------- config


def _config(tmp_path: Path, repo: str, **kw: object) -> Config:
    return Config(layout=Layout.for_root(tmp_path), repo=repo, **kw)  # type: ignore[arg-type]


def test_password_file_with_an_ssh_repo_is_a_config_error(tmp_path: Path, password_file: Path) -> None:
    """--password-file applies to http(s) only: with an ssh or local repo, a ConfigError (exit 2)."""
    for repo in ("git@example.com:app.git", "ssh://example.com/app.git", str(tmp_path)):
        with pytest.raises(ConfigError, match="http"):
            _config(tmp_path, repo, username=USER, password_file=password_file)


def test_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    """A password file that cannot be read at start: a ConfigError naming it."""
    with pytest.raises(ConfigError, match="cannot read the password file") as info:
        _config(tmp_path, "https://example.com/app.git", password_file=tmp_path / "nope")
    assert info.value.exit_code == 2


def test_username_without_password_file_is_a_config_error(tmp_path: Path) -> None:
    """--username alone says nothing git can use."""
    with pytest.raises(ConfigError, match="--password-file"):
        _config(tmp_path, "https://example.com/app.git", username=USER)


# ----------------------------------------------------------------------------- local repository, other owner


@pytest.mark.parametrize("suffix", ["", "/.git", "/"])
async def test_local_repository_of_another_owner_is_fetched(tmp_path: Path, suffix: str) -> None:
    """A repository on disk owned by nobody: plain git refuses it (dubious ownership); the cache,
    which names exactly that repository safe, fetches from it (given as path, path/.git, path/)."""
    src = app_repo(tmp_path / "src")
    v1 = src.tag_sha("v1")
    chown_to_nobody(src.path)
    assert b"dubious ownership" in _plain_ls_remote(src.path, {})
    cache = GitCache(tmp_path / "cache.git", str(src.path) + suffix, timeout=30)
    await cache.ensure()
    assert await cache.fetch_tag("v1") == v1
    assert "v3" in await cache.remote_tags()


async def test_safe_directory_names_only_that_repository(tmp_path: Path) -> None:
    """The permission is scoped: another repository of another owner is still refused."""
    other = app_repo(tmp_path / "other")
    chown_to_nobody(other.path)
    cache = GitCache(tmp_path / "cache.git", str(tmp_path / "src"), timeout=30)
    opts, env = await cache.remote_env.remote()
    assert opts == []
    config = Path(env["GIT_CONFIG_GLOBAL"]).read_text()
    assert "*" not in config and str(tmp_path / "src") in config
    assert b"dubious ownership" in _plain_ls_remote(other.path, env)


def _plain_ls_remote(path: Path, env: dict[str, str]) -> bytes:
    """git ls-remote of ``path`` (with ``env`` added): its error output, asserting that it failed."""
    result = subprocess.run(["git", "ls-remote", "--", str(path)], capture_output=True, env={**os.environ, **env})
    assert result.returncode != 0
    return result.stderr
