"""Tag signature verification (``--verify-signatures``): only an annotated tag signed by an allowed key
deploys.

The keys: ``--allowed-signers FILE`` (ssh's allowed-signers format, as git's
``gpg.ssh.allowedSignersFile``) and ``--gpg-keyring FILE`` (OpenPGP public keys, ``gpg --export``).
Both are read again at each verification, so a rotated Kubernetes Secret is picked up without a
restart: the allowed-signers file is parsed (and handed to git by its path), the keyring is imported
into a private ``GNUPGHOME`` (``ROOT/.coordinator/gnupg``, mode 0700, never the user's) again whenever
its content changed, so a key removed from it is no longer trusted.

:meth:`TagVerifier.verify` checks a fetched tag in the git cache before anything is prepared: the ref
must name a tag object (a lightweight tag is refused), whose own ``tag`` header is the tag asked for
(a signed tag of another name re-pushed under this one is refused) and whose ``object`` is the commit
to deploy; then ``git verify-tag --raw`` on that object id (never the tag name) must succeed, and an
OpenPGP signature's key must be one of the keyring's. The signer found (an ssh principal and key
fingerprint, or an OpenPGP user id and fingerprint) is returned, or named in the SignatureError.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from coordinator.exceptions import ConfigError, SignatureError, SigningKeysError
from coordinator.fsutil import remove_tree, temp_name
from coordinator.proc import run_in_group

if TYPE_CHECKING:
    from coordinator.config import Config
    from coordinator.git import GitCache

__all__ = [
    "TagVerifier",
    "allowed_signers_problem",
    "describe_keys",
    "keyring_problem",
    "parse_allowed_signers",
    "signer_from_output",
]

log = structlog.get_logger("coordinator")

#: the key types an allowed-signers line may name (ssh-keygen(1), ALLOWED SIGNERS)
_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_TOKEN_RE = re.compile(r'(?:"[^"]*"|[^\s"])+')
#: the most a keys file may hold (a keyring of a few hundred keys is far smaller)
_MAX_KEYS_FILE = 4 * 1024 * 1024
_SIGN_FIX = "sign release tags with a key of --allowed-signers or --gpg-keyring (see Sign release tags)"


# ---------------------------------------------------------------------------------------- the keys files


def parse_allowed_signers(text: str) -> list[str]:
    """The principals of each key of an allowed-signers file (``principals [options] keytype base64``,
    ``#`` comments and blank lines skipped); ValueError naming the first bad line, or an empty file."""
    keys: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = _TOKEN_RE.findall(line)
        at = next((i for i, t in enumerate(tokens) if i > 0 and t in _KEY_TYPES), None)
        if at is None or at + 1 >= len(tokens):
            raise ValueError(f"line {n}: expected `PRINCIPALS [OPTIONS] KEYTYPE BASE64-KEY`")
        if not _key_blob_ok(tokens[at], tokens[at + 1]):
            raise ValueError(f"line {n}: the {tokens[at]} key is not valid base64 of such a key")
        keys.append(tokens[0].strip('"'))
    if not keys:
        raise ValueError("no key in it")
    return keys


def _key_blob_ok(key_type: str, b64: str) -> bool:
    """Whether ``b64`` decodes to an ssh public key blob of ``key_type`` (it starts with its name)."""
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(blob) < 4:
        return False
    (size,) = struct.unpack(">I", blob[:4])
    return blob[4 : 4 + size] == key_type.encode()


def _read_keys_file(path: Path) -> bytes:
    """The file's bytes (blocking); OSError as a plain ValueError message."""
    with path.open("rb") as f:
        data = f.read(_MAX_KEYS_FILE + 1)
    if len(data) > _MAX_KEYS_FILE:
        raise ValueError(f"larger than {_MAX_KEYS_FILE // (1024 * 1024)} MiB")
    return data


def _load(option: str, path: Path, fix: str) -> bytes | tuple[str, str]:
    """The bytes of the file given to ``--option``, or why it cannot be read (message, fix) (blocking)."""
    try:
        return _read_keys_file(path)
    except FileNotFoundError:
        return f"--{option} file {path} does not exist", "check the path (a mounted Secret?)"
    except OSError as e:
        return f"cannot read --{option} file {path}: {e.strerror}", "make it readable by coordinator's user"
    except ValueError as e:
        return f"--{option} file {path} is too large: {e}", fix


def allowed_signers_problem(path: Path) -> tuple[str, str] | None:
    """Why ``path`` is no usable allowed-signers file (message, fix), or None (blocking)."""
    fix = "give a file of lines `PRINCIPAL KEYTYPE KEY`, e.g. `alice@example.com ssh-ed25519 AAAA...`"
    data = _load("allowed-signers", path, fix)
    if isinstance(data, tuple):
        return data
    try:
        parse_allowed_signers(data.decode("utf-8", "replace"))
    except ValueError as e:
        return f"--allowed-signers file {path} is malformed: {e}", fix
    return None


def keyring_problem(path: Path) -> tuple[str, str] | None:
    """Why ``path`` is no OpenPGP public keyring (message, fix), or None: a quick look at its first
    packet (blocking); gpg itself reads it at the first verification."""
    fix = "export the public keys: gpg --export KEYID... > FILE (or --armor)"
    data = _load("gpg-keyring", path, fix)
    if isinstance(data, tuple):
        return data
    head = data.lstrip()[:64]
    if head.startswith(b"-----BEGIN PGP PRIVATE KEY BLOCK-----"):
        return f"--gpg-keyring file {path} holds secret keys", fix
    if head.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"):
        return None
    if not data or not data[0] & 0x80:
        return f"--gpg-keyring file {path} is not an OpenPGP keyring", fix
    packet = data[0] & 0x3F if data[0] & 0x40 else (data[0] >> 2) & 0x0F
    if packet == 5:
        return f"--gpg-keyring file {path} holds secret keys", fix
    if packet != 6:
        return f"--gpg-keyring file {path} is not an OpenPGP public keyring", fix
    return None


# ---------------------------------------------------------------------------------------- git's output


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``git verify-tag --raw`` said: the signer (None: no signature at all) and whether it is
    trusted (a good signature by an allowed key)."""

    signer: str | None
    good: bool
    fingerprint: str | None = None  # OpenPGP: the primary key's fingerprint (VALIDSIG's last field)


_SSH_GOOD = re.compile(r'^Good "git" signature for (?P<who>.+) with (?P<type>\S+) key (?P<fp>\S+)\s*$', re.M)
_SSH_UNKNOWN = re.compile(r'^Good "git" signature with (?P<type>\S+) key (?P<fp>\S+)\s*$', re.M)
_GPG = re.compile(r"^\[GNUPG:\] (?P<word>[A-Z_]+) ?(?P<rest>.*)$", re.M)


def signer_from_output(text: str) -> Verdict:
    """Read the output of ``git verify-tag --raw`` (ssh-keygen's lines, or gpg's status lines)."""
    if "no signature found" in text:
        return Verdict(None, False)
    m = _SSH_GOOD.search(text)
    if m is not None:
        return Verdict(f"{m['who']} (ssh {m['type']} {m['fp']})", True)
    m = _SSH_UNKNOWN.search(text)
    if m is not None:
        return Verdict(f"unknown ssh {m['type']} key {m['fp']}", False)
    status = {m["word"]: m["rest"] for m in _GPG.finditer(text)}
    if "GOODSIG" in status and "VALIDSIG" in status:
        uid = status["GOODSIG"].partition(" ")[2]
        fpr = status["VALIDSIG"].split()[-1]
        return Verdict(f"{uid} (OpenPGP {fpr})", True, fpr)
    for word, what in (("EXPKEYSIG", "expired"), ("REVKEYSIG", "revoked"), ("BADSIG", "bad signature of")):
        if word in status:
            keyid, _, uid = status[word].partition(" ")
            return Verdict(f"{what} OpenPGP key {keyid} ({uid})", False)
    if "ERRSIG" in status or "NO_PUBKEY" in status:
        keyid = (status.get("NO_PUBKEY") or status["ERRSIG"]).split(" ")[0]
        return Verdict(f"unknown OpenPGP key {keyid}", False)
    if "-----BEGIN SSH SIGNATURE" in text or "ssh" in text.lower():
        return Verdict("a bad ssh signature", False)
    return Verdict("a signature that cannot be verified", False)


def _tag_headers(body: bytes) -> dict[str, str]:
    """The header lines of a tag object (``object``, ``type``, ``tag``, ``tagger``)."""
    head = body.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    return dict(line.partition(" ")[::2] for line in head.splitlines())


# ---------------------------------------------------------------------------------------- the verifier


class TagVerifier:
    """Verifies the signature of a cached tag against the configured keys, re-read each time."""

    def __init__(
        self,
        git: GitCache,
        allowed_signers: Path | None,
        gpg_keyring: Path | None,
        gnupg_home: Path,
        timeout: float = 60.0,
    ) -> None:
        self.git = git
        self.allowed_signers = allowed_signers
        self.gpg_keyring = gpg_keyring
        self.gnupg_home = gnupg_home
        self.timeout = timeout
        self._keyring_digest: str | None = None  # sha256 of the keyring imported into gnupg_home
        self._fingerprints: frozenset[str] = frozenset()  # its primary keys' fingerprints

    @classmethod
    def from_config(cls, config: Config, git: GitCache) -> TagVerifier | None:
        """The verifier ``config`` asks for (None without ``--verify-signatures``)."""
        if not config.verify_signatures:
            return None
        home = config.layout.state_dir / "gnupg"
        return cls(git, config.allowed_signers, config.gpg_keyring, home, config.git_timeout)

    async def load(self) -> None:
        """At start: the keys files readable and usable, the keyring imported (ConfigError: exit 2)."""
        try:
            await self._refresh_keys()
        except SigningKeysError as e:
            raise ConfigError(e.message, fix=e.fix, option=e.fields.get("option")) from e

    async def verify(self, tag: str, sha: str) -> str:
        """The signer of the cached annotated tag ``tag`` pointing to commit ``sha``; SignatureError when
        it is not signed by an allowed key, SigningKeysError when the keys cannot be read now."""
        await self._refresh_keys()
        found = await self.git.read_tag(tag)
        if found is None:
            raise SignatureError(f"tag {tag!r} is not in the git cache", fix="deploy it again", tag=tag)
        oid, kind, body = found
        if kind != "tag":
            raise SignatureError(
                f"tag {tag!r} is a lightweight tag, refused by --verify-signatures",
                fix=f"replace it with a signed annotated tag (git tag -s -f {tag} ...), push it, deploy it again",
                tag=tag,
                signer="lightweight tag",
            )
        headers = _tag_headers(body)
        if headers.get("tag") != tag:
            raise SignatureError(
                f"tag {tag!r} is a tag object named {headers.get('tag', '')[:80]!r}: refused",
                fix=f"sign a tag named {tag} itself; a signed tag must not be re-used under another name",
                tag=tag,
                signer="another tag's object",
            )
        if headers.get("type") != "commit" or headers.get("object") != sha:
            raise SignatureError(
                f"tag {tag!r} does not point straight at commit {sha[:12]}: refused",
                fix="sign a tag of the commit itself (not a tag of a tag)",
                tag=tag,
                signer="a tag of a tag",
            )
        verdict = await self._run_verify(oid)
        if verdict.good and (verdict.fingerprint is None or verdict.fingerprint in self._fingerprints):
            assert verdict.signer is not None
            log.info("tag_verified", tag=tag, sha=sha, signer=verdict.signer)
            return verdict.signer
        signer = verdict.signer or "not signed"
        why = "is not signed" if verdict.signer is None else f"is signed by {signer}, not an allowed key"
        raise SignatureError(f"tag {tag!r} {why}", fix=_SIGN_FIX, tag=tag, signer=signer)

    async def _run_verify(self, oid: str) -> Verdict:
        signers = str(self.allowed_signers) if self.allowed_signers is not None else os.devnull
        config = [
            *("-c", f"gpg.ssh.allowedSignersFile={signers}"),
            *("-c", "gpg.minTrustLevel=undefined"),
        ]
        await anyio.Path(self.gnupg_home).mkdir(mode=0o700, exist_ok=True)
        output = await self.git.verify_tag(oid, config, {"GNUPGHOME": str(self.gnupg_home)})
        return signer_from_output(output)

    # ------------------------------------------------------------------ the keys, read each time

    async def _refresh_keys(self) -> None:
        """Check the allowed-signers file; import the keyring again if its content changed."""
        if self.allowed_signers is not None:
            problem = await anyio.to_thread.run_sync(allowed_signers_problem, self.allowed_signers)
            if problem is not None:
                raise SigningKeysError(problem[0], fix=problem[1], option="allowed-signers")
        if self.gpg_keyring is None:
            return
        path = self.gpg_keyring

        def read() -> tuple[bytes, tuple[str, str] | None]:
            problem = keyring_problem(path)
            return (b"", problem) if problem is not None else (_read_keys_file(path), None)

        try:
            data, problem = await anyio.to_thread.run_sync(read)
        except (OSError, ValueError) as e:  # changed between the two reads
            problem = (f"cannot read --gpg-keyring file {path}: {e}", "check the file")
        if problem is not None:
            raise SigningKeysError(problem[0], fix=problem[1], option="gpg-keyring")
        digest = hashlib.sha256(data).hexdigest()
        if digest != self._keyring_digest or not await anyio.Path(self.gnupg_home).is_dir():
            self._fingerprints = await self._import(data)
            self._keyring_digest = digest
            log.info("gpg_keyring_imported", path=str(path), keys=len(self._fingerprints))

    async def _import(self, data: bytes) -> frozenset[str]:
        """Import ``data`` into a new private GNUPGHOME that then replaces the old one (so a key removed
        from the file is gone); the primary keys' fingerprints."""
        parent = self.gnupg_home.parent
        tmp = parent / temp_name(self.gnupg_home.name)
        await anyio.to_thread.run_sync(_new_home, tmp)
        try:
            fingerprints = await import_keyring(tmp, data, self.timeout, str(self.gpg_keyring))

            def swap() -> None:
                remove_tree(self.gnupg_home)
                os.rename(tmp, self.gnupg_home)

            await anyio.to_thread.run_sync(swap)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_tree, tmp)
            raise
        return fingerprints


def _new_home(path: Path) -> None:
    """A GNUPGHOME (mode 0700) whose gpg never fetches a key from the network (blocking)."""
    os.mkdir(path, 0o700)
    (path / "gpg.conf").write_text("no-auto-key-retrieve\nno-auto-key-locate\n")


async def import_keyring(home: Path, data: bytes, limit_s: float, name: str) -> frozenset[str]:
    """Import the OpenPGP keys ``data`` (from file ``name``) into ``home``; their primary fingerprints.
    SigningKeysError when gpg refuses them or finds no public key."""
    base = ["gpg", "--batch", "--no-tty", "--no-autostart", "--homedir", str(home)]
    fix = "export the public keys: gpg --export KEYID... > FILE (or --armor)"
    try:
        imported = await run_in_group([*base, "--quiet", "--import"], limit_s=limit_s, stdin=data)
        listed = await run_in_group([*base, "--with-colons", "--list-keys"], limit_s=limit_s)
    except OSError as e:
        raise SigningKeysError(f"cannot run gpg: {e}", fix="install gnupg (gpg)", option="gpg-keyring") from e
    if imported.timed_out or listed.timed_out:
        raise SigningKeysError(f"gpg timed out importing {name}", fix="check gpg", option="gpg-keyring")
    fingerprints: list[str] = []
    primary = False
    for line in listed.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sub"):
            primary = fields[0] == "pub"
        elif fields[0] == "fpr" and primary and len(fields) > 9:
            fingerprints.append(fields[9])
            primary = False
    if not fingerprints:  # gpg's exit code is not used: it fails when it cannot reach an agent, never needed here
        said = [ln for ln in imported.stderr.decode("utf-8", "replace").splitlines() if "agent" not in ln]
        why = f": {said[-1]}" if said else ""
        raise SigningKeysError(
            f"gpg finds no public key in --gpg-keyring file {name}{why}", fix=fix, option="gpg-keyring"
        )
    return frozenset(fingerprints)


async def describe_keys(config: Config, limit_s: float) -> tuple[bool, str, str | None]:
    """``coordinator check``: the keys files readable and parsed, gpg and ssh-keygen installed, the
    keyring imported into a temporary GNUPGHOME (removed at once): (ok, detail, fix)."""
    parts: list[str] = []
    if config.allowed_signers is not None:
        path = config.allowed_signers

        def principals() -> list[str] | tuple[str, str]:
            problem = allowed_signers_problem(path)
            if problem is None and shutil.which("ssh-keygen") is None:
                return "ssh-keygen is not installed (git verifies ssh signatures with it)", "install openssh-client"
            return problem or parse_allowed_signers(_read_keys_file(path).decode("utf-8", "replace"))

        found = await anyio.to_thread.run_sync(principals)
        if isinstance(found, tuple):
            return False, found[0], found[1]
        parts.append(f"{len(found)} ssh key(s) in {path} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})")
    if config.gpg_keyring is not None:
        keyring = config.gpg_keyring
        problem = await anyio.to_thread.run_sync(keyring_problem, keyring)
        if problem is not None:
            return False, problem[0], problem[1]
        data = await anyio.to_thread.run_sync(_read_keys_file, keyring)
        home = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="coordinator-gnupg-")))
        try:
            await anyio.to_thread.run_sync(os.rmdir, home)
            await anyio.to_thread.run_sync(_new_home, home)
            fingerprints = await import_keyring(home, data, limit_s, str(keyring))
        except SigningKeysError as e:
            return False, e.message, e.fix
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(home, ignore_errors=True))
        parts.append(f"{len(fingerprints)} OpenPGP key(s) in {keyring}")
    return True, "; ".join(parts), None
