"""Real signing keys for the tag signature tests: ssh keys (``ssh-keygen``) with their allowed-signers
lines, OpenPGP keys (``gpg --batch``) in their own temporary GNUPGHOME with the exported public keyring,
and signed tags made with them in a :class:`tests.helpers.GitRepo`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import GIT_ENV, GitRepo


@dataclass(frozen=True)
class SshKey:
    """An ed25519 key pair and the principal it signs as."""

    private: Path
    principal: str

    @property
    def public(self) -> str:
        return self.private.with_suffix(".pub").read_text().strip()

    @property
    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-l", "-f", str(self.private)], capture_output=True, text=True, check=True)
        return out.stdout.split()[1]  # SHA256:...

    @property
    def allowed_line(self) -> str:
        """This key's line of an allowed-signers file."""
        return f"{self.principal} {self.public}\n"


def make_ssh_key(directory: Path, principal: str) -> SshKey:
    name = principal.split("@")[0]
    private = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(private)],
        check=True,
        capture_output=True,
    )
    return SshKey(private, principal)


@dataclass(frozen=True)
class GpgKey:
    """An OpenPGP key in its own GNUPGHOME, its user id, fingerprint and exported public key."""

    home: Path
    uid: str
    fingerprint: str
    exported: bytes


def make_gpg_key(uid: str) -> GpgKey:
    """A new ed25519 signing key without passphrase, in a new short-pathed GNUPGHOME (the agent's
    socket lives there); :func:`stop_gpg` ends its agent."""
    home = Path(tempfile.mkdtemp(prefix="gpg-"))
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", uid, "ed25519", "sign", "never"], env=env, check=True, capture_output=True)
    listed = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--list-keys", uid], env=env, check=True, capture_output=True, text=True
    ).stdout
    fingerprint = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
    exported = subprocess.run(["gpg", "--batch", "--export", fingerprint], env=env, check=True, capture_output=True)
    return GpgKey(home, uid, fingerprint, exported.stdout)


def stop_gpg(key: GpgKey) -> None:
    """End the gpg-agent of ``key``'s GNUPGHOME and remove it."""
    subprocess.run(["gpgconf", "--homedir", str(key.home), "--kill", "all"], check=False, capture_output=True)
    shutil.rmtree(key.home, ignore_errors=True)


@dataclass(frozen=True)
class Keys:
    """The keys of a test session: two ssh keys and two OpenPGP keys."""

    alice: SshKey  # ssh, allowed in the tests' allowed-signers files
    mallory: SshKey  # ssh, never allowed
    bob: GpgKey  # OpenPGP, in the tests' keyrings
    eve: GpgKey  # OpenPGP, never in a keyring


def session_keys(directory: Path) -> Iterator[Keys]:
    """Make the keys once (the fixture in test_signatures.py); end the gpg agents afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    bob = make_gpg_key("Bob Builder <bob@example.com>")
    eve = make_gpg_key("Eve <eve@example.com>")
    try:
        yield Keys(
            make_ssh_key(directory, "alice@example.com"), make_ssh_key(directory, "mallory@example.com"), bob, eve
        )
    finally:
        stop_gpg(bob)
        stop_gpg(eve)


def ssh_tag(repo: GitRepo, tag: str, key: SshKey, ref: str = "HEAD") -> None:
    """Create (or move, -f) annotated tag ``tag`` at ``ref`` signed with ssh ``key``."""
    config = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key.private}"]
    _git(repo, [*config, "tag", "-s", "-f", "-m", tag, tag, ref])


def gpg_tag(repo: GitRepo, tag: str, key: GpgKey, ref: str = "HEAD") -> None:
    """Create (or move, -f) annotated tag ``tag`` at ``ref`` signed with OpenPGP ``key``."""
    config = ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={key.fingerprint}"]
    _git(repo, [*config, "tag", "-s", "-f", "-m", tag, tag, ref], {"GNUPGHOME": str(key.home)})


def _git(repo: GitRepo, args: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(
        ["git", *args], cwd=repo.path, env={**os.environ, **GIT_ENV, **(env or {})}, check=True, capture_output=True
    )


def signed_repo(path: Path, keys: Keys) -> GitRepo:
    """A repository of a tiny app: v1 signed by alice (ssh), v2 signed by bob (OpenPGP), v3 annotated
    but not signed, v4 lightweight, v5 signed by mallory (ssh, not allowed), v6 signed by eve (OpenPGP,
    not in the keyring)."""
    repo = GitRepo(path)
    for i in range(1, 7):
        repo.commit({"app.py": f"VERSION = 'v{i}'\n", "VERSION": f"v{i}\n"}, message=f"version {i}")
        tag = f"v{i}"
        if i == 1:
            ssh_tag(repo, tag, keys.alice)
        elif i == 2:
            gpg_tag(repo, tag, keys.bob)
        elif i == 3:
            repo.git("tag", "-a", "-m", tag, tag)
        elif i == 4:
            repo.git("tag", tag)
        elif i == 5:
            ssh_tag(repo, tag, keys.mallory)
        else:
            gpg_tag(repo, tag, keys.eve)
    return repo


def write_keys(directory: Path, keys: Keys, *, ssh: tuple[SshKey, ...] = (), gpg: tuple[GpgKey, ...] = ()) -> Path:
    """Write (replace, by rename) ``directory/allowed_signers`` with the ``ssh`` keys and
    ``directory/keyring.pgp`` with the ``gpg`` keys; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("allowed_signers", "".join(k.allowed_line for k in ssh).encode()),
        ("keyring.pgp", b"".join(k.exported for k in gpg)),
    ):
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)
    return directory
