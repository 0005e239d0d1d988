"""Reading an ssh repository with a key and a known-hosts file (``--ssh-key-file``,
``--ssh-known-hosts-file``) against a real sshd started by the test, and how those options are
checked at start."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator.check import run_checks
from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.exceptions import ConfigError, GitError
from coordinator.git import GitCache
from coordinator.gitenv import is_ssh_repo
from coordinator.gitssh import ssh_command, ssh_host
from coordinator.layout import Layout
from coordinator.records import AttemptResult
from tests.git_sshd import SSHD, SshServer, make_key, sshd
from tests.helpers import GitRepo, app_repo, current_release, process_texts_during, read_status, write_marker

pytestmark = pytest.mark.anyio

needs_sshd = pytest.mark.skipif(SSHD is None, reason="sshd is not installed (apt-get install openssh-server)")


@pytest.fixture
def source(tmp_path: Path) -> GitRepo:
    """The v1..v3 app repository; the server serves its bare clone ``srv/app.git``."""
    repo = app_repo(tmp_path / "src")
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(tmp_path / "srv" / "app.git")], check=True)
    return repo


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SshServer]:
    if SSHD is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    with sshd(tmp_path / "sshd") as s:
        yield s


@pytest.fixture
def key(tmp_path: Path, server: SshServer) -> Path:
    """A deploy key the server authorises; its public half is not beside it (as in a Secret: ssh
    would offer a ``.pub`` next to the key instead of the key's own public half)."""
    k = make_key(tmp_path / "secret" / "deploy_key")
    server.authorize(k)
    Path(str(k) + ".pub").unlink()
    return k


@pytest.fixture
def known_hosts(tmp_path: Path, server: SshServer) -> Path:
    """A known-hosts file trusting the server's host key."""
    p = tmp_path / "secret" / "known_hosts"
    p.parent.mkdir(exist_ok=True)
    p.write_text(server.known_hosts_line)
    return p


def _url(tmp_path: Path, server: SshServer) -> str:
    return server.url(tmp_path / "srv" / "app.git")


def _cache(tmp_path: Path, server: SshServer, key: Path | None, known_hosts: Path | None) -> GitCache:
    return GitCache(
        tmp_path / "cache.git", _url(tmp_path, server), timeout=60, ssh_key_file=key, ssh_known_hosts_file=known_hosts
    )


async def _deployer(tmp_path: Path, server: SshServer, key: Path, known_hosts: Path | None) -> Deployer:
    root = tmp_path / "root"
    root.mkdir()
    config = Config(
        layout=Layout.for_root(root),
        repo=_url(tmp_path, server),
        git_timeout=60,
        ssh_key_file=key,
        ssh_known_hosts_file=known_hosts,
    )
    d = Deployer(config)
    await d.startup()
    return d


def _replace(path: Path, content: bytes) -> None:
    """Replace ``path`` by a new file (mode 0600) holding ``content``, by rename, as kubelet does."""
    new = path.with_name(path.name + ".new")
    new.write_bytes(content)
    new.chmod(0o600)
    os.replace(new, path)


# ------------------------------------------------------------------------------------- against sshd


@needs_sshd
async def test_deploy_over_ssh_with_key_and_known_hosts(
    tmp_path: Path, server: SshServer, key: Path, known_hosts: Path, source: GitRepo
) -> None:
    """ssh://USER@127.0.0.1:PORT/abs/path/app.git with a key and known_hosts: the tag is deployed."""
    d = await _deployer(tmp_path, server, key, known_hosts)
    write_marker(d.layout.root, "v1\n")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result is AttemptResult.SUCCESS, attempt and attempt.error
    assert current_release(d.layout.root) == f"releases/v1-{source.tag_sha('v1')[:12]}"


@needs_sshd
async def test_ls_remote_over_ssh_lists_the_tags(
    tmp_path: Path, server: SshServer, key: Path, known_hosts: Path, source: GitRepo
) -> None:
    """The tag listing (--follow, coordinator check) goes through the same ssh command."""
    tags = await _cache(tmp_path, server, key, known_hosts).remote_tags()
    assert tags == {t: source.tag_sha(t) for t in ("v1", "v2", "v3")}


@needs_sshd
async def test_another_host_key_fails_with_the_host_key_message_and_keeps_current(
    tmp_path: Path, server: SshServer, key: Path, known_hosts: Path, source: GitRepo
) -> None:
    """The known-hosts file names another key for the server: the fetch fails, the status and the
    log say the host key verification failed, and current stays."""
    d = await _deployer(tmp_path, server, key, known_hosts)
    write_marker(d.layout.root, "v1")
    await d.reconcile()
    before = current_release(d.layout.root)
    impostor = await anyio.to_thread.run_sync(make_key, tmp_path / "impostor" / "host_key")
    algo, blob = Path(str(impostor) + ".pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{server.port} {algo} {blob}\n")
    write_marker(d.layout.root, "v2")
    with capture_logs() as logs:
        attempt = await d.reconcile()
    assert attempt is not None and attempt.result is AttemptResult.FAILED
    assert current_release(d.layout.root) == before
    status = read_status(d.layout.root)
    assert status is not None
    error = status["error"]
    assert "host key verification failed" in error["message"] and "differs" in error["message"]
    assert "known-hosts" in error["fix"]
    failed = [e for e in logs if e["event"] == "deploy_failed"]
    assert failed and "host key verification failed" in failed[0]["message"]


@needs_sshd
async def test_server_missing_from_the_known_hosts_file_is_named(
    tmp_path: Path, server: SshServer, key: Path, known_hosts: Path, source: GitRepo
) -> None:
    """A known-hosts file without the server: strict checking fails the fetch, naming the file."""
    known_hosts.write_text("")
    cache = _cache(tmp_path, server, key, known_hosts)
    await cache.ensure()
    with pytest.raises(GitError, match="host key verification failed") as info:
        await cache.fetch_tag("v1")
    assert f"[127.0.0.1]:{server.port} is not in --ssh-known-hosts-file {known_hosts}" in info.value.message
    assert info.value.fix is not None and "ssh-keyscan" in info.value.fix


@needs_sshd
async def test_without_a_known_hosts_file_an_unknown_host_fails_and_nothing_is_learnt(
    tmp_path: Path, server: SshServer, key: Path, source: GitRepo
) -> None:
    """A key but no known-hosts file: ssh's defaults, the user's known_hosts, which does not know
    this fresh host key; BatchMode fails the fetch (no prompt) and adds nothing to known_hosts."""
    user_known = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh" / "known_hosts"
    before = user_known.read_bytes() if user_known.exists() else None
    cache = _cache(tmp_path, server, key, None)
    await cache.ensure()
    with pytest.raises(GitError, match="host key verification failed") as info:
        await cache.fetch_tag("v1")
    assert "the known_hosts file of this user" in info.value.message
    assert info.value.fix is not None and "--ssh-known-hosts-file" in info.value.fix
    assert (user_known.read_bytes() if user_known.exists() else None) == before


@needs_sshd
async def test_a_rotated_key_is_used_by_the_next_fetch(
    tmp_path: Path, server: SshServer, key: Path, known_hosts: Path, source: GitRepo
) -> None:
    """The key file is replaced between deploys: another authorised key deploys; a key the server
    does not know fails the fetch (permission denied, publickey) and current stays."""
    second = await anyio.to_thread.run_sync(make_key, tmp_path / "keys" / "second")
    stranger = await anyio.to_thread.run_sync(make_key, tmp_path / "keys" / "stranger")
    server.authorize(second, keep=True)
    d = await _deployer(tmp_path, server, key, known_hosts)
    write_marker(d.layout.root, "v1")
    assert (a := await d.reconcile()) is not None and a.result is AttemptResult.SUCCESS

    _replace(key, second.read_bytes())
    server.authorize(second)  # the first key is revoked: only the rotated one can fetch v2
    write_marker(d.layout.root, "v2")
    a = await d.reconcile()
    assert a is not None
    assert a.result is AttemptResult.SUCCESS, a.error
    v2 = current_release(d.layout.root)
    assert v2 == f"releases/v2-{source.tag_sha('v2')[:12]}"

    _replace(key, stranger.read_bytes())
    write_marker(d.layout.root, "v3")
    assert (a := await d.reconcile()) is not None and a.result is AttemptResult.FAILED
    assert current_release(d.layout.root) == v2
    status = read_status(d.layout.root)
    assert status is not None
    assert "permission denied (publickey)" in status["error"]["message"]
    assert str(key) in status["error"]["message"]
    assert "authorised on the server" in status["error"]["fix"]


@needs_sshd
async def test_paths_with_a_space_are_passed_whole(tmp_path: Path, server: SshServer, source: GitRepo) -> None:
    """A key and a known-hosts file in a directory with a space in its name: both are used."""
    k = await anyio.to_thread.run_sync(make_key, tmp_path / "my secrets" / "deploy key")
    server.authorize(k)
    kh = tmp_path / "my secrets" / "known hosts"
    kh.write_text(server.known_hosts_line)
    cache = _cache(tmp_path, server, k, kh)
    await cache.ensure()
    assert await cache.fetch_tag("v1") == source.tag_sha("v1")


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[SshServer]:
    """An sshd whose sessions wait 0.5 s before running git, with ``secret/deploy_key`` authorised and
    ``secret/known_hosts`` trusting it."""
    if SSHD is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    with sshd(tmp_path / "sshd", delay_s=0.5) as s:
        s.authorize(make_key(tmp_path / "secret" / "deploy_key"))
        (tmp_path / "secret" / "known_hosts").write_text(s.known_hosts_line)
        yield s


async def test_key_content_is_in_no_command_line_or_environment_during_a_fetch(
    tmp_path: Path, slow_server: SshServer, source: GitRepo
) -> None:
    """While a fetch runs (each ssh session slowed down), no process has any line of the private
    key in its command line or environment; the key's path is there, in ssh's arguments."""
    key, known_hosts = tmp_path / "secret" / "deploy_key", tmp_path / "secret" / "known_hosts"
    secret_lines = [ln.encode() for ln in key.read_text().splitlines() if "-----" not in ln]
    assert secret_lines
    cache = _cache(tmp_path, slow_server, key, known_hosts)
    await cache.ensure()
    seen = await process_texts_during(lambda: cache.fetch_tag("v1"))
    assert any(b"ssh\0-i\0" + str(key).encode() in t for t in seen)  # the scan did see ssh at work
    assert not [t for t in seen if any(ln in t for ln in secret_lines)]


@needs_sshd
async def test_check_reports_the_ssh_files_and_the_repository(
    tmp_path: Path, server: SshServer, key: Path, known_hosts: Path, source: GitRepo
) -> None:
    """coordinator check: the ssh files check names the server found in the known-hosts file, and
    the repository check lists the tags over ssh."""
    (tmp_path / "root").mkdir()
    config = Config(
        layout=Layout.for_root(tmp_path / "root"),
        repo=_url(tmp_path, server),
        ssh_key_file=key,
        ssh_known_hosts_file=known_hosts,
    )
    results = {r.name: r for r in await run_checks(config)}
    assert results["ssh files"].ok, results["ssh files"]
    assert f"has a key for [127.0.0.1]:{server.port}" in results["ssh files"].detail
    assert results["repository"].ok and "3 tags" in results["repository"].detail


# ------------------------------------------------------------------------------- without a server


def _config(tmp_path: Path, repo: str = "ssh://git@example.com/app.git", **kw: object) -> Config:
    return Config(layout=Layout.for_root(tmp_path), repo=repo, **kw)  # type: ignore[arg-type]


@pytest.fixture
def offline_key(tmp_path: Path) -> Path:
    """A private key (mode 0600) not authorised anywhere."""
    if shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client is not installed (apt-get install openssh-client)")
    return make_key(tmp_path / "offline" / "id")


def test_ssh_command_names_only_the_paths_quoted(tmp_path: Path) -> None:
    """GIT_SSH_COMMAND, split as git's shell splits it: the key, IdentitiesOnly, BatchMode, the
    known-hosts file in ssh's quotes and strict checking; each part only when its file is given."""
    key, kh = tmp_path / "a b" / "key", tmp_path / "a b" / "known'hosts"
    assert shlex.split(ssh_command(key, kh)) == [
        "ssh",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        f'UserKnownHostsFile="{kh}"',
        "-o",
        "StrictHostKeyChecking=yes",
    ]
    assert shlex.split(ssh_command(None, kh)) == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        f'UserKnownHostsFile="{kh}"',
        "-o",
        "StrictHostKeyChecking=yes",
    ]
    assert shlex.split(ssh_command(key, None)) == [
        "ssh",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
    ]


@pytest.mark.parametrize(
    ("repo", "host"),
    [
        ("ssh://git@example.com/app.git", "example.com"),
        ("ssh://git@example.com:22/app.git", "example.com"),
        ("ssh://git@127.0.0.1:2222/srv/app.git", "[127.0.0.1]:2222"),
        ("git+ssh://[::1]:2222/app.git", "[::1]:2222"),
        ("git@github.com:team/app.git", "github.com"),
        ("host:app.git", "host"),
        ("git@[::1]:app.git", "::1"),
    ],
)
def test_ssh_repositories_and_their_known_hosts_names(repo: str, host: str) -> None:
    """ssh:// URLs and scp-like addresses are ssh; the server is named as known_hosts names it."""
    assert is_ssh_repo(repo)
    assert ssh_host(repo) == host


@pytest.mark.parametrize("repo", ["https://example.com/app.git", "/srv/app.git", "file:///srv/app", "./a:b"])
def test_other_repositories_are_not_ssh(repo: str) -> None:
    """http(s), paths and file:// are not ssh."""
    assert not is_ssh_repo(repo)


@pytest.mark.parametrize("option", ["ssh_key_file", "ssh_known_hosts_file"])
def test_ssh_files_with_another_repository_are_a_config_error(tmp_path: Path, offline_key: Path, option: str) -> None:
    """--ssh-key-file and --ssh-known-hosts-file apply to an ssh repository only: exit 2 otherwise."""
    for repo in ("https://example.com/app.git", str(tmp_path)):
        with pytest.raises(ConfigError, match="apply to an ssh --repo only") as info:
            _config(tmp_path, repo, **{option: offline_key})
        assert info.value.exit_code == 2 and info.value.fix


@pytest.mark.parametrize("var", ["GIT_SSH_COMMAND", "GIT_SSH"])
def test_ssh_files_and_git_ssh_in_the_environment_are_a_config_error(
    tmp_path: Path, offline_key: Path, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    """GIT_SSH_COMMAND or GIT_SSH set and a key file given: choose one."""
    monkeypatch.setenv(var, "ssh -i /elsewhere")
    with pytest.raises(ConfigError, match=f"choose one: {var}") as info:
        _config(tmp_path, ssh_key_file=offline_key)
    assert info.value.fix is not None and f"unset {var}" in info.value.fix


def test_missing_ssh_files_are_a_config_error(tmp_path: Path, offline_key: Path) -> None:
    """A key or known-hosts file that cannot be read at start: exit 2, naming it."""
    with pytest.raises(ConfigError, match="cannot read the ssh key file"):
        _config(tmp_path, ssh_key_file=tmp_path / "nope")
    with pytest.raises(ConfigError, match="cannot read the ssh known-hosts file") as info:
        _config(tmp_path, ssh_key_file=offline_key, ssh_known_hosts_file=tmp_path / "nope")
    assert str(tmp_path / "nope") in info.value.message


def test_unprotected_key_is_a_config_error_with_the_chmod_fix(tmp_path: Path, offline_key: Path) -> None:
    """A key of this user that others can read, which ssh would refuse: exit 2, chmod 600 or defaultMode."""
    offline_key.chmod(0o644)
    with pytest.raises(ConfigError, match="UNPROTECTED PRIVATE KEY FILE") as info:
        _config(tmp_path, ssh_key_file=offline_key)
    assert info.value.fix is not None
    assert f"chmod 600 {offline_key}" in info.value.fix and "defaultMode: 0400" in info.value.fix


def test_public_key_given_as_the_key_is_a_config_error(tmp_path: Path, offline_key: Path) -> None:
    """The .pub half given for the key: refused at start, the key's content not shown."""
    pub = Path(str(offline_key) + ".pub")
    pub.chmod(0o600)
    with pytest.raises(ConfigError, match="not a private key") as info:
        _config(tmp_path, ssh_key_file=pub)
    assert pub.read_text().split()[1] not in str(info.value)


@pytest.mark.parametrize("name", ["id%d", 'id"x', "id\\x"])
def test_paths_ssh_would_read_differently_are_a_config_error(tmp_path: Path, offline_key: Path, name: str) -> None:
    """ssh expands % in these paths and unquotes " and \\: such a path is refused at start."""
    odd = offline_key.with_name(name)
    odd.write_bytes(offline_key.read_bytes())
    odd.chmod(0o600)
    with pytest.raises(ConfigError, match="ssh would not read as written"):
        _config(tmp_path, ssh_key_file=odd)


def test_ssh_options_are_read_from_the_environment(
    tmp_path: Path, offline_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COORDINATOR_SSH_KEY_FILE and COORDINATOR_SSH_KNOWN_HOSTS_FILE reach the git cache."""
    from coordinator.options import resolve_options

    kh = tmp_path / "kh"
    kh.write_text("")
    env = {
        "COORDINATOR_ROOT": str(tmp_path),
        "COORDINATOR_REPO": "git@example.com:app.git",
        "COORDINATOR_SSH_KEY_FILE": str(offline_key),
        "COORDINATOR_SSH_KNOWN_HOSTS_FILE": str(kh),
    }
    cache = GitCache.from_config(Config.from_options(resolve_options({}, env)))
    assert (cache.remote_env.ssh_key_file, cache.remote_env.ssh_known_hosts_file) == (offline_key, kh)


async def test_a_key_removed_or_unprotected_later_fails_the_fetch_before_ssh(tmp_path: Path, offline_key: Path) -> None:
    """The key changes after start: the next fetch is a GitError naming the problem (no ssh run)."""
    cache = GitCache(tmp_path / "cache.git", "ssh://git@127.0.0.1:1/app.git", ssh_key_file=offline_key)
    await cache.ensure()
    offline_key.chmod(0o640)
    with pytest.raises(GitError, match="UNPROTECTED PRIVATE KEY FILE"):
        await cache.fetch_tag("v1")
    offline_key.unlink()
    with pytest.raises(GitError, match="cannot read the ssh key file"):
        await cache.remote_tags()


async def test_an_unreachable_ssh_server_names_ssh_s_own_error(tmp_path: Path, offline_key: Path) -> None:
    """Nothing listens on the port: the message is ssh's line (connection refused), not git's
    generic 'Could not read from remote repository'."""
    cache = GitCache(tmp_path / "cache.git", "ssh://git@127.0.0.1:1/app.git", ssh_key_file=offline_key)
    with pytest.raises(GitError, match=r"ssh: connect to host 127\.0\.0\.1 port 1") as info:
        await cache.remote_tags()
    assert info.value.fix is not None and "reachable" in info.value.fix


async def test_check_fails_when_the_known_hosts_file_lacks_the_server(tmp_path: Path, offline_key: Path) -> None:
    """coordinator check: a known-hosts file without the repository's server fails the ssh files
    check, with the ssh-keyscan command to run."""
    kh = tmp_path / "kh"
    kh.write_text("other.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFa\n")
    (tmp_path / "root").mkdir()
    config = Config(
        layout=Layout.for_root(tmp_path / "root"),
        repo="ssh://git@127.0.0.1:1/app.git",
        ssh_key_file=offline_key,
        ssh_known_hosts_file=kh,
        git_timeout=5,
    )
    result = {r.name: r for r in await run_checks(config)}["ssh files"]
    assert not result.ok and "has no key for [127.0.0.1]:1" in result.detail
    assert result.fix is not None and f"ssh-keyscan -p 1 127.0.0.1 >> {kh}" in result.fix
