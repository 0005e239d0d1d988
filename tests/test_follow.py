"""--follow: the version order of tags, the choice of the newest, the period and the back-off (pure);
then the deployer and the daemon following a real repository, and fetch failures backing off."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from coordinator import follow
from coordinator.config import Config
from coordinator.display import format_status
from coordinator.exceptions import ConfigError
from coordinator.follow import BACKOFF_CAP, Backoff, backoff_delay, newest, parse_version, tick_delay, version_key
from coordinator.layout import Layout
from coordinator.probes import check_ready
from coordinator.records import AttemptResult, as_status
from coordinator.state import iso, load_state, read_journal
from tests.helpers import (
    Daemon,
    GitRepo,
    current_release,
    deployed,
    read_status,
    run_once,
    started_deployer,
    wait_until,
    write_marker,
)

# ---------------------------------------------------------------------- version order (pure)

ORDERED = [
    ("v1.9.2", "v1.10.0"),
    ("1.2.0rc1", "1.2.0"),
    ("1.2.0", "1.2.1.post1"),
    ("1.2.0.dev1", "1.2.0a1"),
    ("1.2.0a1", "1.2.0b1"),
    ("1.2.0b2", "1.2.0rc1"),
    ("1.2.0rc2", "1.2.0rc10"),
    ("1.2.0.post1.dev1", "1.2.0.post1"),
    ("1.2.3-rc.1", "1.2.3"),
    ("1.2.3-alpha", "1.2.3-alpha.1"),
    ("1.2.3-alpha.1", "1.2.3-alpha.beta"),
    ("1.2.3-beta.2", "1.2.3-beta.11"),
    ("v1.2.3-rc.1", "v1.2.3-rc.2"),
    ("v2", "v10"),
    ("latest-build", "v0.0.1"),
    ("build-a", "build-b"),
    ("v1.0", "v1.0.0"),  # the same version: by name
]


@pytest.mark.parametrize(("lower", "higher"), ORDERED)
def test_version_order_of_known_pairs(lower: str, higher: str) -> None:
    """Each pair is ordered as PEP 440, semver, or (same version, or no version) by name says."""
    assert version_key(lower) < version_key(higher)


@pytest.mark.parametrize("tag", ["latest", "release-5", "v", "1.2.3-", "v1..2", "main"])
def test_tags_that_are_no_version(tag: str) -> None:
    """Tags without a version in them are not parsed as one."""
    assert parse_version(tag) is None


_TAGS = st.one_of(
    st.text(st.sampled_from("v0123456789.-+abcdefrpost"), max_size=14),
    st.builds(
        lambda nums, pre: "v" + ".".join(map(str, nums)) + pre,
        st.lists(st.integers(0, 30), min_size=1, max_size=4),
        st.sampled_from(["", "rc1", "a2", "-rc.1", "-beta.2", ".post1", ".dev3", "-alpha.x.1"]),
    ),
)


@given(_TAGS, _TAGS)
def test_version_order_is_total_and_equal_only_for_equal_tags(a: str, b: str) -> None:
    """Any two tags compare (no TypeError) one way exactly, and equal keys mean equal tags."""
    ka, kb = version_key(a), version_key(b)
    assert [ka < kb, ka == kb, ka > kb].count(True) == 1
    assert (ka == kb) == (a == b)


@given(_TAGS, _TAGS, _TAGS)
def test_version_order_is_transitive(a: str, b: str, c: str) -> None:
    """Sorting three tags gives keys in order whichever way they came."""
    x, y, z = sorted([a, b, c], key=version_key)
    assert version_key(x) <= version_key(y) <= version_key(z)


@given(st.lists(st.integers(0, 999), min_size=3, max_size=3), st.lists(st.integers(0, 999), min_size=3, max_size=3))
def test_releases_order_by_their_numbers_not_their_text(a: list[int], b: list[int]) -> None:
    """vX.Y.Z tags order as their number tuples (v1.10.0 after v1.9.2)."""
    ta, tb = ("v" + ".".join(map(str, n)) for n in (a, b))
    if a != b:
        assert (version_key(ta) < version_key(tb)) == (a < b)


@given(
    st.lists(st.integers(0, 99), min_size=1, max_size=4),
    st.sampled_from(["rc1", "a1", "b3", ".dev2", "-rc.1", "-alpha", "-beta.2"]),
)
def test_a_pre_release_comes_before_its_release(nums: list[int], pre: str) -> None:
    """1.2.3rc1, 1.2.3-rc.1, 1.2.3.dev2 ... all come before 1.2.3."""
    release = "v" + ".".join(map(str, nums))
    if "-" in pre and len(nums) != 3:
        release = "v" + ".".join(map(str, [*nums, 0, 0, 0][:3]))  # semver needs three numbers
    assert version_key(release + pre) < version_key(release)


# ---------------------------------------------------------------------- newest (pure)


def test_newest_is_the_highest_version_matching_the_glob() -> None:
    """v1.10.0 wins over v1.9.2; a tag outside the glob is not considered."""
    tag, reason = newest(["v1.9.2", "v1.10.0", "w9.0.0"], "v*")
    assert tag == "v1.10.0"
    assert "newest version of 2" in reason


def test_a_version_tag_wins_over_any_other_tag() -> None:
    """A tag that is no version never wins while a version matches."""
    assert newest(["latest-build", "zzz", "v2.0"], "*")[0] == "v2.0"


def test_without_versions_the_greatest_name_wins() -> None:
    """Only non-version tags match: the greatest by name, and the reason says so."""
    tag, reason = newest(["build-a", "build-c", "build-b"], "build-*")
    assert tag == "build-c"
    assert "none a version" in reason


def test_skipped_tags_are_not_chosen() -> None:
    """A tag in skip is passed over for the next newest."""
    assert newest(["v1", "v2"], "v*", skip={"v2"})[0] == "v1"


def test_nothing_matching_gives_none_with_a_reason() -> None:
    """No match: None, and the reason names the glob."""
    assert newest(["v1"], "release-*") == (None, "no tag matches 'release-*'")


# ---------------------------------------------------------------------- period and back-off (pure)


@given(st.floats(0.1, 3600), st.floats(0, 0.999), st.floats(0, 1, exclude_max=True))
def test_tick_delay_stays_within_the_jitter(period: float, share: float, rand: float) -> None:
    """The delay is within period ± jitter."""
    jitter = period * share
    delay = tick_delay(period, jitter, rand)
    assert period - jitter - 1e-9 <= delay <= period + jitter + 1e-9


def test_tick_delay_default_jitter_is_a_tenth_of_the_period() -> None:
    """No jitter given: the extremes are 54 and (almost) 66 s for a 60 s period."""
    assert tick_delay(60, None, 0.0) == pytest.approx(54)
    assert tick_delay(60, None, 0.5) == pytest.approx(60)
    assert tick_delay(60, None, 0.9999) == pytest.approx(66, abs=0.01)


def test_backoff_doubles_from_one_second_up_to_five_minutes() -> None:
    """Without jitter (rand 0.5): 1, 2, 4 ... 256, then 300 for ever."""
    assert [backoff_delay(n, 0.5) for n in range(1, 12)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff_delay(10_000, 0.5) == BACKOFF_CAP


@given(st.integers(1, 100), st.floats(0, 1, exclude_max=True))
def test_backoff_jitter_is_within_20_percent(failures: int, rand: float) -> None:
    """Each wait is within ±20 % of its base."""
    base = backoff_delay(failures, 0.5)
    assert base * 0.8 - 1e-9 <= backoff_delay(failures, rand) <= base * 1.2 + 1e-9


def test_backoff_holds_back_only_the_request_that_failed() -> None:
    """The failed key waits until its time; another key does not; a success ends the wait."""
    b = Backoff()
    assert b.failed("m1", now=100.0, rand=0.5) == 1
    assert b.waiting("m1", 100.5) and not b.waiting("m1", 101.0)
    assert not b.waiting("m2", 100.5) and not b.waiting(None, 100.5)
    assert b.failed("m1", now=101.0, rand=0.5) == 2
    assert b.remaining(102.0) == 1
    b.succeeded()
    assert not b.waiting("m1", 101.5) and b.remaining(101.5) is None
    assert b.failed("m1", now=200.0, rand=0.5) == 1


# ---------------------------------------------------------------------- options and display


def test_period_jitter_must_be_less_than_the_period(tmp_path: Path) -> None:
    """--period-jitter at or above --period, or negative, is refused; 0 is allowed."""
    lay = Layout.for_root(tmp_path)
    for bad in (10.0, 11.0, -1.0):
        with pytest.raises(ConfigError, match="period-jitter"):
            Config(layout=lay, repo="r", period=10.0, period_jitter=bad)
    assert Config(layout=lay, repo="r", period=10.0, period_jitter=0.0).period_jitter == 0.0


def test_status_shows_what_is_followed() -> None:
    """`coordinator status` has a `following` row: glob, chosen tag and reason."""
    status = as_status(
        {
            "state": "idle",
            "following": {
                "glob": "v*",
                "tag": "v1.10.0",
                "sha": "a" * 40,
                "reason": "newest version of 2 tag(s) matching 'v*'",
                "checked_at": None,
                "error": None,
            },
        }
    )
    assert "following  v*: v1.10.0 (newest version of 2 tag(s) matching 'v*')" in format_status(status, 0.0)


# ---------------------------------------------------------------------- the deployer following a repository


@pytest.fixture
def vrepo(tmp_path: Path) -> GitRepo:
    """A repository tagged v1.9.2 and v1.10.0 (created in that order... and a non-version tag)."""
    r = GitRepo(tmp_path / "vrepo")
    for tag in ("v1.10.0", "v1.9.2", "latest-build"):
        r.commit({"VERSION": tag}, tag=tag)
    return r


@pytest.mark.anyio
async def test_without_a_marker_the_newest_tag_is_deployed(root: Path, vrepo: GitRepo) -> None:
    """No marker, --follow 'v*': v1.10.0 (not v1.9.2, not latest-build) is deployed and shown."""
    d = await started_deployer(root, vrepo, follow="v*")
    assert d.follower is not None
    await d.follower.check()
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result is AttemptResult.SUCCESS
    assert current_release(root) == f"releases/v1.10.0-{vrepo.tag_sha('v1.10.0')[:12]}"
    status = read_status(root)
    assert status is not None
    assert status["desired"]["tag"] == "v1.10.0"
    assert status["following"]["tag"] == "v1.10.0" and status["following"]["checked_at"]


@pytest.mark.anyio
async def test_readyz_is_ready_once_the_followed_tag_is_deployed(root: Path, vrepo: GitRepo) -> None:
    """Without a marker, /readyz's rule holds the followed request: not ready before, ready after."""
    d = await started_deployer(root, vrepo, follow="v*")
    assert d.follower is not None
    await d.follower.check()
    assert not check_ready(await d.read_marker(), as_status(read_status(root) or {}), None, os.getpid()).ready
    await d.reconcile()
    status = as_status(read_status(root) or {})
    ready = check_ready(await d.read_marker(), status, (current_release(root) or "").split("/")[-1], os.getpid())
    assert ready.ready, ready.reason


@pytest.mark.anyio
async def test_a_new_tag_is_picked_up_at_the_next_check(root: Path, vrepo: GitRepo) -> None:
    """A tag pushed after the first deploy is deployed after the next check."""
    d = await started_deployer(root, vrepo, follow="v*")
    assert d.follower is not None
    await d.follower.check()
    await d.reconcile()
    assert await d.reconcile() is None  # nothing new: converged
    vrepo.commit({"VERSION": "v1.11.0"}, tag="v1.11.0")
    await d.follower.check()
    attempt = await d.reconcile()
    assert attempt is not None and attempt.tag == "v1.11.0" and attempt.result is AttemptResult.SUCCESS


@pytest.mark.anyio
async def test_a_marker_pins_and_removing_it_returns_to_following(root: Path, vrepo: GitRepo) -> None:
    """With a marker the followed tag is ignored; once it is removed, the newest tag is deployed again."""
    d = await started_deployer(root, vrepo, follow="v*")
    assert d.follower is not None
    await d.follower.check()
    write_marker(root, "v1.9.2")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.tag == "v1.9.2"
    assert await d.reconcile() is None
    (root / "deploy.request").unlink()
    attempt = await d.reconcile()
    assert attempt is not None and attempt.tag == "v1.10.0" and attempt.result is AttemptResult.SUCCESS


@pytest.mark.anyio
async def test_a_followed_tag_that_failed_waits_for_a_newer_tag(root: Path, vrepo: GitRepo) -> None:
    """v2.0.0's build fails: it is not built again on the next reconciles, only v2.1.0 once pushed."""
    d = await started_deployer(root, vrepo, follow="v*", build_command='test "$TAG" != v2.0.0')
    assert d.follower is not None
    vrepo.commit({"VERSION": "v2.0.0"}, tag="v2.0.0")
    await d.follower.check()
    attempt = await d.reconcile()
    assert attempt is not None and attempt.tag == "v2.0.0" and attempt.result is AttemptResult.FAILED
    state = await anyio.to_thread.run_sync(load_state, root / ".coordinator" / "state.json")
    assert state.failed_marker == f"follow:v2.0.0@{vrepo.tag_sha('v2.0.0')}"
    await d.follower.check()
    assert await d.reconcile() is None  # blocked: no second build
    vrepo.commit({"VERSION": "v2.1.0"}, tag="v2.1.0")
    await d.follower.check()
    attempt = await d.reconcile()
    assert attempt is not None and attempt.tag == "v2.1.0" and attempt.result is AttemptResult.SUCCESS


@pytest.mark.anyio
async def test_an_unreachable_repository_is_not_fetched_again_during_the_back_off(
    root: Path, repo: GitRepo, tmp_path: Path
) -> None:
    """A failed fetch: reconciles during the back-off fetch nothing, the status names the retry time,
    the metric hook is called; a new marker is fetched at once."""
    d = await started_deployer(root, repo)
    failures: list[str] = []
    d.on_fetch_failure = failures.append
    shutil.move(repo.path, tmp_path / "gone")
    write_marker(root, "v1")
    with capture_logs() as logs:
        attempt = await d.reconcile()
        assert attempt is not None and attempt.result is AttemptResult.FAILED
        for _ in range(3):
            assert await d.reconcile() is None
    fetches = [e for e in logs if e["event"] == "git" and e["cmd"] == "fetch"]
    assert len(fetches) == 1
    assert failures == ["fetch"]
    status = read_status(root)
    assert status is not None and status["error"]["next_retry_at"]
    assert d.retry_in() is not None
    write_marker(root, "v2")
    with capture_logs() as logs:
        attempt = await d.reconcile()
    assert attempt is not None and attempt.tag == "v2"
    assert [e["cmd"] for e in logs if e["event"] == "git"].count("fetch") == 1


@pytest.mark.anyio
async def test_a_failed_tag_listing_keeps_the_choice_and_waits_at_least_a_period(
    root: Path, vrepo: GitRepo, tmp_path: Path
) -> None:
    """ls-remote fails: the last chosen tag stays, the error says when it is tried again, the next
    check waits no less than the period (minus its jitter), the metric hook is called."""
    d = await started_deployer(root, vrepo, follow="v*", period=5.0, period_jitter=1.0)
    assert d.follower is not None
    failures: list[str] = []
    d.follower.on_failure = failures.append
    await d.follower.check()
    shutil.move(vrepo.path, tmp_path / "gone")
    delay = await d.follower.check()
    assert delay >= 4.0
    assert failures == ["ls-remote"]
    assert d.follower.request is not None and d.follower.request.tag == "v1.10.0"
    error = d.follower.record["error"]
    assert error is not None and error["kind"] == "git" and error["next_retry_at"]


# ---------------------------------------------------------------------- run --once and the daemon


def test_run_once_follow_deploys_the_newest_tag(root: Path, vrepo: GitRepo) -> None:
    """`run --once --follow 'v*'` without a marker deploys v1.10.0 and exits 0."""
    proc = run_once(root, vrepo, "--follow", "v*")
    assert proc.returncode == 0, proc.stderr
    assert current_release(root) == f"releases/v1.10.0-{vrepo.tag_sha('v1.10.0')[:12]}"


def test_run_once_follow_without_a_matching_tag_fails(root: Path, vrepo: GitRepo) -> None:
    """No marker and no tag matching --follow: exit 1, and nothing deployed."""
    proc = run_once(root, vrepo, "--follow", "release-*")
    assert proc.returncode == 1
    assert "no tag matches 'release-*'" in proc.stderr
    assert current_release(root) is None


def test_the_daemon_follows_new_tags_and_a_marker_pins(root: Path, vrepo: GitRepo) -> None:
    """The daemon deploys the newest tag, a tag pushed later at a following tick, the marker's tag
    while there is one, and the newest again once it is removed."""

    def serving(tag: str) -> bool:
        return (current_release(root) or "").startswith(f"releases/{tag}-")

    with Daemon(root, vrepo.path, "--follow", "v*", "--period", "0.2", "--resync-interval", "0.5") as daemon:
        wait_until(lambda: serving("v1.10.0"))
        vrepo.commit({"VERSION": "v1.11.0"}, tag="v1.11.0")
        wait_until(lambda: serving("v1.11.0"))
        write_marker(root, "v1.9.2")
        wait_until(lambda: serving("v1.9.2"))
        (root / "deploy.request").unlink()
        wait_until(lambda: serving("v1.11.0"))
        assert daemon.stop(signal.SIGTERM) == 0


@pytest.mark.anyio
async def test_a_marker_written_again_during_its_back_off_gets_its_status(
    root: Path, repo: GitRepo, tmp_path: Path
) -> None:
    """The failed marker, written again after another one while its fetch backs off, is not fetched
    but still gets its status: failed, with the retry time (found by the daemon fuzz test)."""
    d = await started_deployer(root, repo)
    shutil.move(repo.path, tmp_path / "gone")
    write_marker(root, "v1")
    assert (await d.reconcile()) is not None
    write_marker(root, "bad tag")  # invalid: its own status
    assert await d.reconcile() is None
    assert (read_status(root) or {})["state"] == "invalid"
    write_marker(root, "v1")
    with capture_logs() as logs:
        assert await d.reconcile() is None
    assert not [e for e in logs if e["event"] == "git" and e["cmd"] == "fetch"]
    status = read_status(root) or {}
    assert status["state"] == "failed" and status["desired"]["tag"] == "v1"
    assert status["error"]["next_retry_at"]


@pytest.mark.anyio
async def test_each_check_refreshes_the_status_while_a_fetch_backs_off(
    root: Path, vrepo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repository is gone after v1.11.0 was chosen: its fetch backs off (a minute here), and each
    follow check still rewrites `following.checked_at` (with the listing's error), fetching nothing."""
    monkeypatch.setattr(follow, "BACKOFF_BASE", 60.0)  # every reconcile below falls within the back-off
    d = await started_deployer(root, vrepo, follow="v*")
    assert d.follower is not None
    vrepo.commit({"VERSION": "v1.11.0"}, tag="v1.11.0")
    await d.follower.check()
    shutil.move(vrepo.path, tmp_path / "gone")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result is AttemptResult.FAILED
    checked = (read_status(root) or {})["following"]["checked_at"]
    for _ in range(2):
        before = iso()
        await d.follower.check()
        with capture_logs() as logs:
            assert await d.reconcile() is None
        assert not [e for e in logs if e["event"] == "git" and e["cmd"] == "fetch"]
        status = read_status(root) or {}
        following = status["following"]
        assert status["state"] == "failed" and status["error"]["next_retry_at"]
        assert following["checked_at"] >= before and following["checked_at"] > checked
        assert following["tag"] == "v1.11.0" and following["error"]["next_retry_at"]
        checked = following["checked_at"]


# ---------------------------------------------------------------------- health check and superseding


def _attempts(root: Path) -> list[tuple[str, str]]:
    """The journal's attempts, as (tag, result)."""
    return [(e["tag"], e["result"]) for e in read_journal(root / ".coordinator" / "journal.jsonl")]


@pytest.mark.anyio
async def test_a_followed_tag_rolled_back_waits_for_a_newer_tag(root: Path, tmp_path: Path, app_url: str) -> None:
    """v1.10.0 fails its health check and is rolled back to v1.9.2; follow checks after that do not
    deploy it again (the status says rolled_back, following v1.10.0 and why); v1.10.1 is deployed."""
    repo = GitRepo(tmp_path / "hrepo")
    repo.commit({"VERSION": "v1.9.2"}, tag="v1.9.2")
    d = await started_deployer(root, repo, follow="v*", health_url=app_url, health_timeout=2.0)
    assert d.follower is not None
    await d.follower.check()
    first = await d.reconcile()
    assert first is not None and first.result is AttemptResult.SUCCESS
    good = current_release(root)
    repo.commit({"VERSION": "v1.10.0", "BROKEN": "health answers 500"}, tag="v1.10.0")
    await d.follower.check()
    broken = await d.reconcile()
    assert broken is not None and broken.tag == "v1.10.0" and broken.result is AttemptResult.ROLLED_BACK
    assert current_release(root) == good
    with capture_logs() as logs:
        for _ in range(3):  # three follow periods
            await d.follower.check()
            assert await d.reconcile() is None
    assert not [e for e in logs if e["event"] in ("deploy_started", "follow_chose")]
    assert _attempts(root) == [("v1.9.2", "success"), ("v1.10.0", "rolled_back")]
    status = read_status(root) or {}
    assert status["state"] == "rolled_back" and status["following"]["tag"] == "v1.10.0"
    rows = [line.split(None, 1) for line in format_status(as_status(status), 0.0).splitlines()]
    assert ["following", "v*: v1.10.0 (newest version of 2 tag(s) matching 'v*')"] in rows
    repo.commit({"VERSION": "v1.10.1", "BROKEN": None}, tag="v1.10.1")
    await d.follower.check()
    fixed = await d.reconcile()
    assert fixed is not None and fixed.tag == "v1.10.1" and fixed.result is AttemptResult.SUCCESS
    assert current_release(root) == f"releases/v1.10.1-{repo.tag_sha('v1.10.1')[:12]}"
    assert _attempts(root)[-1] == ("v1.10.1", "success")
    status = read_status(root) or {}
    assert status["state"] == "idle"
    assert status["following"]["tag"] == "v1.10.1"
    assert status["following"]["reason"] == "newest version of 3 tag(s) matching 'v*'"


def _gated_build(tmp_path: Path, tag: str) -> tuple[str, Path]:
    """A build command that, for ``tag`` only, creates ``started`` and then blocks reading a FIFO no
    one writes to (until the build is killed); returns it and the ``started`` path."""
    gate, started = tmp_path / "gate", tmp_path / "started"
    os.mkfifo(gate)
    return f'[ "$TAG" != {tag} ] || {{ touch {started}; read line < {gate}; }}', started


async def _until_exists(path: Path) -> None:
    while not await anyio.Path(path).exists():
        await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_a_newer_followed_tag_supersedes_a_build_in_flight(root: Path, tmp_path: Path) -> None:
    """v2 is building when v3 is tagged: the next follow check cancels v2 (superseded, nothing left
    behind) and the next reconcile deploys v3."""
    repo = GitRepo(tmp_path / "srepo")
    repo.commit({"VERSION": "v1"}, tag="v1")
    build, started = _gated_build(tmp_path, "v2")
    d = await started_deployer(root, repo, follow="v*", build_command=build)
    assert d.follower is not None
    await d.follower.check()
    await d.reconcile()
    repo.commit({"VERSION": "v2"}, tag="v2")
    await d.follower.check()
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:

            async def tag_v3_while_building() -> None:
                await _until_exists(started)
                repo.commit({"VERSION": "v3"}, tag="v3")
                assert d.follower is not None
                await d.follower.check()  # what the daemon's follow loop does each period ...
                await d.check_superseded()  # ... then the hint it gives

            tg.start_soon(tag_v3_while_building)
            with anyio.fail_after(20):
                v2 = await d.reconcile()
    assert v2 is not None and v2.tag == "v2" and v2.result is AttemptResult.CANCELLED
    assert {"event": "superseding", "old_tag": "v2", "new_tag": "v3", "log_level": "info"} in logs
    assert [n for n in os.listdir(root / "releases") if n.startswith((".", "v2"))] == []
    v3 = await d.reconcile()
    assert v3 is not None and v3.tag == "v3" and v3.result is AttemptResult.SUCCESS
    assert current_release(root) == f"releases/v3-{repo.tag_sha('v3')[:12]}"
    assert _attempts(root) == [("v1", "success"), ("v2", "cancelled"), ("v3", "success")]


def test_the_daemon_supersedes_a_build_when_a_newer_tag_appears(root: Path, tmp_path: Path) -> None:
    """The daemon's own follow period notices v3 while v2 builds: v2 is cancelled and v3 served."""
    repo = GitRepo(tmp_path / "srepo")
    repo.commit({"VERSION": "v2"}, tag="v2")
    build, started = _gated_build(tmp_path, "v2")
    with Daemon(root, repo.path, "--follow", "v*", "--period", "0.2", "--build-command", build) as daemon:
        wait_until(started.exists)
        repo.commit({"VERSION": "v3"}, tag="v3")
        wait_until(lambda: deployed(root, "v3"))
        assert daemon.stop(signal.SIGTERM) == 0
    assert _attempts(root) == [("v2", "cancelled"), ("v3", "success")]
    assert any(e["event"] == "superseding" and e["new_tag"] == "v3" for e in daemon.events())
