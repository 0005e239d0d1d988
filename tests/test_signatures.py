"""--verify-signatures with real keys (ssh-keygen, gpg --batch) and real repositories: which tags deploy,
what is refused and how it shows, the keys files read again at each verification, --follow, stage,
rollback, the command line (exit 2 at start, releases, status, history, check) and the daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.exceptions import ConfigError
from coordinator.layout import Layout
from coordinator.metrics import Metrics
from coordinator.records import AttemptResult
from coordinator.report import Attempt
from coordinator.signing import parse_allowed_signers, signer_from_output
from coordinator.state import load_state, read_journal, read_release_meta
from tests.helpers import (
    Daemon,
    GitRepo,
    cli,
    current_release,
    deployed,
    read_status,
    started_deployer,
    wait_until,
    write_marker,
)
from tests.signing import Keys, session_keys, signed_repo, ssh_tag, write_keys


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """alice and mallory (ssh), bob and eve (OpenPGP), made once per session."""
    yield from session_keys(tmp_path_factory.mktemp("signing-keys"))


@pytest.fixture
def srepo(tmp_path: Path, keys: Keys) -> GitRepo:
    """v1 ssh-signed by alice, v2 gpg-signed by bob, v3 unsigned, v4 lightweight, v5 by mallory, v6 by eve."""
    return signed_repo(tmp_path / "repo", keys)


@pytest.fixture
def keydir(tmp_path: Path, keys: Keys) -> Path:
    """allowed_signers with alice, keyring.pgp with bob."""
    return write_keys(tmp_path / "keys", keys, ssh=(keys.alice,), gpg=(keys.bob,))


def verifying(keydir: Path, **kw: Any) -> dict[str, Any]:
    return {
        "verify_signatures": True,
        "allowed_signers": keydir / "allowed_signers",
        "gpg_keyring": keydir / "keyring.pgp",
        **kw,
    }


async def deploy(d: Deployer, root: Path, marker: str) -> Attempt:
    write_marker(root, marker)
    attempt = await d.reconcile()
    assert attempt is not None
    return attempt


def meta_signer(root: Path, release: str) -> str | None:
    meta = read_release_meta(root / ".coordinator" / "releases", release)
    assert meta is not None
    return meta.signer


pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------------- accepted


async def test_an_ssh_signed_tag_deploys_with_its_principal_recorded(
    root: Path, srepo: GitRepo, keydir: Path, keys: Keys
) -> None:
    """A tag signed by a key of --allowed-signers deploys; its principal and key are recorded everywhere."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    attempt = await deploy(d, root, "v1")
    signer = f"alice@example.com (ssh ED25519 {keys.alice.fingerprint})"
    assert attempt.result is AttemptResult.SUCCESS and attempt.signer == signer
    assert attempt.release is not None and current_release(root) == f"releases/{attempt.release}"
    assert meta_signer(root, attempt.release) == signer
    assert json.loads((root / "releases" / f"{attempt.release}.json").read_text())["signer"] == signer
    assert read_journal(root / ".coordinator" / "journal.jsonl")[-1]["signer"] == signer
    status = read_status(root) or {}
    assert status["current"]["signer"] == signer and status["last_attempt"]["signer"] == signer


async def test_a_gpg_signed_tag_deploys_with_its_user_id_and_fingerprint(
    root: Path, srepo: GitRepo, keydir: Path, keys: Keys
) -> None:
    """A tag signed by a key of --gpg-keyring deploys; the signer is its user id and primary fingerprint."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    attempt = await deploy(d, root, "v2")
    assert attempt.result is AttemptResult.SUCCESS
    assert attempt.signer == f"{keys.bob.uid} (OpenPGP {keys.bob.fingerprint})"


async def test_the_private_gnupg_home_is_ours_and_closed(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """The keyring is imported into ROOT/.coordinator/gnupg, mode 0700, not into the user's GNUPGHOME."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    await deploy(d, root, "v2")
    home = root / ".coordinator" / "gnupg"
    assert (home / "pubring.kbx").is_file() and home.stat().st_mode & 0o777 == 0o700


async def test_without_verification_nothing_is_checked_or_recorded(root: Path, srepo: GitRepo) -> None:
    """Without --verify-signatures an unsigned tag deploys and no signer is written anywhere."""
    d = await started_deployer(root, srepo)
    attempt = await deploy(d, root, "v3")
    assert attempt.result is AttemptResult.SUCCESS and attempt.release is not None
    assert "signer" not in json.loads((root / ".coordinator" / "releases" / f"{attempt.release}.json").read_text())
    assert "signer" not in read_journal(root / ".coordinator" / "journal.jsonl")[-1]


# ---------------------------------------------------------------------- refused


async def refused(d: Deployer, root: Path, marker: str) -> dict[str, Any]:
    """Deploy ``marker`` expecting a refusal: nothing published, current untouched; the status error."""
    before = current_release(root)
    attempt = await deploy(d, root, marker)
    assert attempt.result is AttemptResult.FAILED
    assert current_release(root) == before
    assert not [p for p in (root / "releases").iterdir() if p.is_dir() and p.name.startswith(marker)]
    status = read_status(root) or {}
    assert status["state"] == "failed" and status["error"]["kind"] == "signature"
    error: dict[str, Any] = status["error"]
    return error


async def test_an_unsigned_annotated_tag_is_refused(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """An annotated tag without a signature fails with kind `signature`, signer "not signed", and a fix."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    await deploy(d, root, "v1")
    error = await refused(d, root, "v3")
    assert error["signer"] == "not signed" and error["tag"] == "v3" and "v3" in error["message"]
    assert error["fix"]


async def test_a_lightweight_tag_is_refused(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """A lightweight tag cannot be signed: refused, named as such."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    error = await refused(d, root, "v4")
    assert error["signer"] == "lightweight tag" and "git tag -s" in error["fix"]


async def test_a_tag_signed_by_an_unknown_ssh_key_is_refused(
    root: Path, srepo: GitRepo, keydir: Path, keys: Keys
) -> None:
    """A good ssh signature by a key missing from --allowed-signers is refused, naming that key."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    error = await refused(d, root, "v5")
    assert error["signer"] == f"unknown ssh ED25519 key {keys.mallory.fingerprint}"


async def test_a_tag_signed_by_an_unknown_gpg_key_is_refused(
    root: Path, srepo: GitRepo, keydir: Path, keys: Keys
) -> None:
    """An OpenPGP signature by a key missing from --gpg-keyring is refused, naming its key id."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    error = await refused(d, root, "v6")
    assert error["signer"] == f"unknown OpenPGP key {keys.eve.fingerprint[-16:]}"


async def test_an_ssh_signed_tag_is_refused_when_only_a_keyring_is_given(
    root: Path, srepo: GitRepo, keydir: Path
) -> None:
    """With --gpg-keyring alone no ssh key is allowed (and no user configuration fills the gap)."""
    d = await started_deployer(root, srepo, **verifying(keydir, allowed_signers=None))
    error = await refused(d, root, "v1")
    assert error["signer"].startswith("unknown ssh ED25519 key")


async def test_a_refused_tag_is_not_retried_until_the_marker_changes(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """Like a failed build, a refusal blocks these marker bytes: the next reconcile does nothing."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    await refused(d, root, "v3")
    assert await d.reconcile() is None
    assert (read_status(root) or {})["error"]["kind"] == "signature"


async def test_a_signed_tag_object_pushed_under_another_name_is_refused(
    root: Path, srepo: GitRepo, keydir: Path
) -> None:
    """alice's signed v1 object re-pushed as tag v9 (a replay of an old release) is refused."""
    await anyio.to_thread.run_sync(lambda: srepo.git("update-ref", "refs/tags/v9", srepo.git("rev-parse", "v1")))
    d = await started_deployer(root, srepo, **verifying(keydir))
    error = await refused(d, root, "v9")
    assert "'v1'" in error["message"]


# ---------------------------------------------------------------------- moved tags


async def test_a_signed_tag_moved_to_an_unsigned_tag_is_refused(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """v1 deployed signed, then moved to a new commit without a signature: refused, v1 keeps serving."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    first = await deploy(d, root, "v1")
    sha = await anyio.to_thread.run_sync(lambda: srepo.commit({"app.py": "evil\n"}, tag="v1", annotated=True))
    error = await refused(d, root, json.dumps({"tag": "v1", "sha": sha}))
    assert error["signer"] == "not signed" and current_release(root) == f"releases/{first.release}"


async def test_a_signed_tag_moved_and_signed_again_deploys(
    root: Path, srepo: GitRepo, keydir: Path, keys: Keys
) -> None:
    """v1 moved to a new commit and signed again by an allowed key deploys that commit."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    await deploy(d, root, "v1")

    def move() -> str:
        sha = srepo.commit({"app.py": "fixed\n"})
        ssh_tag(srepo, "v1", keys.alice)
        return sha

    sha = await anyio.to_thread.run_sync(move)
    attempt = await deploy(d, root, json.dumps({"tag": "v1", "sha": sha}))
    assert attempt.result is AttemptResult.SUCCESS and attempt.sha == sha
    assert attempt.signer is not None and attempt.signer.startswith("alice@example.com")


# ---------------------------------------------------------------------- the keys files, read each time


async def test_a_key_added_to_the_allowed_signers_file_is_trusted_without_restart(
    root: Path, srepo: GitRepo, keydir: Path, keys: Keys
) -> None:
    """A rotated allowed-signers file (a Secret update) is read at the next verification."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    await refused(d, root, "v5")
    write_keys(keydir, keys, ssh=(keys.alice, keys.mallory), gpg=(keys.bob,))
    attempt = await deploy(d, root, '{"tag": "v5"}')  # a new marker: a refusal waits for one
    assert attempt.result is AttemptResult.SUCCESS
    assert attempt.signer is not None and attempt.signer.startswith("mallory@example.com")


async def test_a_key_removed_from_the_gpg_keyring_is_no_longer_trusted(
    root: Path, srepo: GitRepo, keydir: Path, keys: Keys
) -> None:
    """A keyring whose content changed is imported again from scratch: bob removed, v2 is refused."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    assert (await deploy(d, root, "v2")).result is AttemptResult.SUCCESS
    write_keys(keydir, keys, ssh=(keys.alice,), gpg=(keys.eve,))
    await deploy(d, root, "v1")
    shutil.rmtree(root / "releases" / f"v2-{srepo.tag_sha('v2')[:12]}")  # built again: verified again
    error = await refused(d, root, "v2")
    assert error["signer"] == f"unknown OpenPGP key {keys.bob.fingerprint[-16:]}"


async def test_a_keys_file_gone_later_fails_with_signing_keys_and_is_retried(
    root: Path, srepo: GitRepo, keydir: Path, keys: Keys
) -> None:
    """The allowed-signers file removed after start: kind `signing_keys`, retried on resync (the marker
    is not blocked), and deployed once the file is back."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    (keydir / "allowed_signers").unlink()
    attempt = await deploy(d, root, "v1")
    assert attempt.result is AttemptResult.FAILED and attempt.error is not None
    assert attempt.error["kind"] == "signing_keys" and "does not exist" in attempt.error["message"]
    assert load_state(root / ".coordinator" / "state.json").failed_marker is None
    write_keys(keydir, keys, ssh=(keys.alice,), gpg=(keys.bob,))
    again = await d.reconcile()
    assert again is not None and again.result is AttemptResult.SUCCESS


async def test_a_malformed_keyring_at_start_is_a_config_error(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """A keyring gpg cannot import stops the daemon at start (exit 2), naming the file."""
    (keydir / "keyring.pgp").write_bytes(b"\x99\x00\x05junk!")
    d = Deployer(Config(layout=Layout.for_root(root), repo=str(srepo.path), **verifying(keydir)))
    with pytest.raises(ConfigError, match=r"keyring\.pgp"):
        await d.startup()


# ---------------------------------------------------------------------- follow, stage, rollback


async def test_follow_passes_over_an_unsigned_newest_tag(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """--follow: the newest tag v3 is not signed: refused, logged, and the newest signed one (v2) deploys."""
    await anyio.to_thread.run_sync(lambda: [srepo.git("tag", "-d", t) for t in ("v4", "v5", "v6")])
    d = await started_deployer(root, srepo, **verifying(keydir, follow="v*"))
    assert d.follower is not None
    await d.follower.check()
    with capture_logs() as logs:
        await d.reconcile()
    skipped = [e for e in logs if e["event"] == "follow_skipped"]
    assert [e["tag"] for e in skipped] == ["v3"]
    assert deployed(root, "v2")
    assert "v3" in d.follower.record["reason"]
    journal = read_journal(root / ".coordinator" / "journal.jsonl")
    assert [(e["tag"], e["result"]) for e in journal] == [("v3", "failed"), ("v2", "success")]
    await d.follower.check()  # listed again: v3 is still passed over
    assert await d.reconcile() is None and deployed(root, "v2")


async def test_stage_of_an_unsigned_tag_fails_with_kind_signature(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """`coordinator stage` verifies too: an unsigned tag is not staged."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    await deploy(d, root, "v1")
    write_marker(root, "v3", name="stage.request")
    await d.reconcile()
    stage = (read_status(root) or {})["stage"]
    assert stage["state"] == "failed" and stage["error"]["kind"] == "signature"
    assert d.state.staged is None


async def test_stage_of_a_signed_tag_records_its_signer(root: Path, srepo: GitRepo, keydir: Path, keys: Keys) -> None:
    """A staged release carries its signer; the later deploy (a swap only) shows it without verifying."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    await deploy(d, root, "v1")
    write_marker(root, "v2", name="stage.request")
    await d.reconcile()
    assert d.state.staged is not None and meta_signer(root, d.state.staged.release) is not None
    attempt = await deploy(d, root, "v2")
    assert attempt.result is AttemptResult.SUCCESS and "prepare" not in attempt.phases
    assert attempt.signer == f"{keys.bob.uid} (OpenPGP {keys.bob.fingerprint})"


async def test_rollback_to_a_release_on_disk_shows_its_recorded_signer(
    root: Path, srepo: GitRepo, keydir: Path
) -> None:
    """A rollback swaps a release on disk: its recorded signer is shown, even with the keys file gone."""
    d = await started_deployer(root, srepo, **verifying(keydir))
    first = await deploy(d, root, "v1")
    await deploy(d, root, "v2")
    (keydir / "allowed_signers").unlink()  # not read: the release was verified when it was built
    back = await deploy(d, root, json.dumps({"tag": "v1", "sha": first.sha}))
    assert back.result is AttemptResult.SUCCESS and back.signer == first.signer
    assert (read_status(root) or {})["current"]["signer"] == first.signer


async def test_a_release_built_before_verification_is_verified_when_swapped_in(
    root: Path, srepo: GitRepo, keydir: Path
) -> None:
    """Verification turned on later: a release on disk without a signer is verified before its swap
    (v3, unsigned, is refused and not swapped in; v1 is swapped in and its signer recorded)."""
    plain = await started_deployer(root, srepo)
    for tag in ("v3", "v1", "v2"):
        await deploy(plain, root, tag)
    before = current_release(root)
    d = await started_deployer(root, srepo, **verifying(keydir))
    no = await deploy(d, root, json.dumps({"tag": "v3", "id": "again"}))
    assert no.result is AttemptResult.FAILED and no.error is not None and no.error["kind"] == "signature"
    assert current_release(root) == before
    back = await deploy(d, root, json.dumps({"tag": "v1", "id": "back"}))
    assert back.result is AttemptResult.SUCCESS and back.signer is not None and back.release is not None
    assert meta_signer(root, back.release) == back.signer


# ---------------------------------------------------------------------- metrics and parsing


def test_a_refusal_is_counted() -> None:
    """coordinator_signature_refusals_total counts attempts that ended with kind `signature` only."""
    m = Metrics()
    for kind in ("signature", "build", "signature"):
        a = Attempt(tag="v3", request_id=None, result=AttemptResult.FAILED, error={"kind": kind, "message": "x"})
        m.attempt_changed(a)
    assert m.signature_refusals._value.get() == 2


def test_allowed_signers_lines_are_parsed_with_options_and_comments() -> None:
    """Principals, options (namespaces="git") and comments; a line without a valid key is named."""
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIB6m6Ge0XHgGAwlP6MI0Z/bpIgtx2Z8x0EHJQHvG4Q2n"
    text = f'# release keys\n\nalice@example.com,bob@example.com namespaces="git" ssh-ed25519 {key} a\n'
    assert parse_allowed_signers(text) == ["alice@example.com,bob@example.com"]
    with pytest.raises(ValueError, match="line 1"):
        parse_allowed_signers("alice@example.com ssh-ed25519 notbase64!\n")
    with pytest.raises(ValueError, match="no key"):
        parse_allowed_signers("# nothing\n")


def test_gpg_status_lines_name_a_bad_or_expired_signature() -> None:
    """BADSIG and EXPKEYSIG are refusals naming the key; VALIDSIG gives the primary fingerprint."""
    assert (
        signer_from_output("[GNUPG:] BADSIG ABCD Bob <b@x>\n").signer == "bad signature of OpenPGP key ABCD (Bob <b@x>)"
    )
    assert not signer_from_output("[GNUPG:] EXPKEYSIG ABCD Bob <b@x>\n").good
    good = signer_from_output("[GNUPG:] GOODSIG ABCD Bob <b@x>\n[GNUPG:] VALIDSIG F1 2026 1 0 4 0 22 8 00 PRIMARY\n")
    assert good.good and good.fingerprint == "PRIMARY" and good.signer == "Bob <b@x> (OpenPGP PRIMARY)"


# ---------------------------------------------------------------------- the command line and the daemon


def run_args(root: Path, srepo: GitRepo, *extra: str) -> list[str]:
    return ["run", "--once", "--root", str(root), "--repo", str(srepo.path), *extra]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--verify-signatures"], "needs --allowed-signers FILE or --gpg-keyring FILE"),
        (["--verify-signatures", "--allowed-signers", "missing"], "does not exist"),
        (["--verify-signatures", "--allowed-signers", "bad"], "is malformed: line 1"),
        (["--verify-signatures", "--gpg-keyring", "bad"], "is not an OpenPGP keyring"),
        (["--allowed-signers", "allowed_signers"], "only with --verify-signatures"),
    ],
)
def test_unusable_keys_options_exit_2_at_start(
    root: Path, srepo: GitRepo, keydir: Path, options: list[str], says: str
) -> None:
    """A missing or malformed keys file, or none at all, is exit 2 at start with a fix."""
    (keydir / "bad").write_text("alice@example.com ssh-ed25519\n")
    opts = [str(keydir / o) if o in ("missing", "bad", "allowed_signers") else o for o in options]
    out = cli(*run_args(root, srepo, *opts))
    assert out.returncode == 2 and says in out.stderr and " -- " in out.stderr


def test_the_signer_is_shown_by_releases_status_and_history(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """`releases`, `status`, `history` and their --json show who signed the deployed tag."""
    keys_opts = ["--verify-signatures", "--allowed-signers", str(keydir / "allowed_signers")]
    write_marker(root, "v1")
    assert cli(*run_args(root, srepo, *keys_opts)).returncode == 0
    common = ("--root", str(root))
    releases = cli("releases", *common).stdout
    assert "SIGNED BY" in releases and "alice@example.com (ssh ED25519 SHA256:" in releases
    rows = json.loads(cli("releases", "--json", *common).stdout)
    assert rows[0]["signer"].startswith("alice@example.com") and rows[0]["current"] is True
    status = cli("status", *common).stdout
    assert re.search(r"\n  signed by +alice@example\.com \(ssh ED25519 SHA256:", status), status
    assert json.loads(cli("status", "--json", *common).stdout)["current"]["signer"].startswith("alice@")
    assert "signed by alice@example.com" in cli("history", *common).stdout
    assert json.loads(cli("history", "--json", *common).stdout)[0]["signer"].startswith("alice@")


def test_run_once_of_an_unsigned_tag_exits_1_naming_the_signature(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """`run --once` of a refused tag fails (exit 1) with the message and the fix."""
    write_marker(root, "v3")
    out = cli(*run_args(root, srepo, "--verify-signatures", "--gpg-keyring", str(keydir / "keyring.pgp")))
    assert out.returncode == 1 and "is not signed" in out.stderr and current_release(root) is None


def test_check_reports_the_signing_keys(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """`coordinator check --verify-signatures` imports the keyring (elsewhere) and counts the keys."""
    opts = verifying_flags(keydir)
    out = cli("check", "--json", "--root", str(root), "--repo", str(srepo.path), *opts)
    found = {r["name"]: r for r in json.loads(out.stdout)}
    assert found["signing keys"]["ok"], found["signing keys"]
    assert "1 ssh key(s)" in found["signing keys"]["detail"] and "1 OpenPGP key(s)" in found["signing keys"]["detail"]
    assert not (root / ".coordinator" / "gnupg").exists()


def verifying_flags(keydir: Path) -> list[str]:
    return [
        "--verify-signatures",
        "--allowed-signers",
        str(keydir / "allowed_signers"),
        "--gpg-keyring",
        str(keydir / "keyring.pgp"),
    ]


def test_the_daemon_deploys_signed_tags_and_refuses_others(root: Path, srepo: GitRepo, keydir: Path) -> None:
    """The real daemon: v2 (OpenPGP) deploys, v4 (lightweight) is refused with current untouched, v1 deploys."""
    with Daemon(root, srepo.path, *verifying_flags(keydir), "--resync-interval", "0.5", env=dict(os.environ)):
        write_marker(root, "v2")
        wait_until(lambda: deployed(root, "v2"))
        before = current_release(root)
        write_marker(root, "v4")
        wait_until(lambda: ((read_status(root) or {}).get("error") or {}).get("kind") == "signature")
        assert current_release(root) == before
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
        assert (read_status(root) or {})["current"]["signer"].startswith("alice@example.com")
