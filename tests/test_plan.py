"""Unit and property tests for coordinator.plan: the pure planner and the prune policy."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.marker import DeployRequest, release_name
from coordinator.plan import (
    Action,
    Observation,
    Plan,
    ReleaseInfo,
    StageAction,
    StageObservation,
    Step,
    failure_blocks_marker,
    plan,
    plan_prune,
    plan_stage,
    recover_reload,
    reload_to_confirm,
    resume_verify,
    rollback_target,
    settled_state,
    staged_after,
    status_error,
)
from coordinator.records import AttemptResult, ErrorInfo, StageState, StatusState
from coordinator.statefile import PendingReload, PendingVerify, StageDone, StagedRelease, State

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
REQ = DeployRequest(tag="v2")
TARGET = release_name("v2", SHA)
OLD = release_name("v1", OTHER_SHA)

FULL_DEPLOY = (Step.PREPARE, Step.PUBLISH, Step.SWAP, Step.RELOAD, Step.PRUNE)
FULL_DEPLOY_WITH_BUILD = (Step.PREPARE, Step.BUILD, Step.PUBLISH, Step.SWAP, Step.RELOAD, Step.PRUNE)
SWAP_ONLY = (Step.SWAP, Step.RELOAD, Step.PRUNE)


def obs(**kw: Any) -> Observation:
    """An observation of a converged volume serving OLD, asked to deploy v2 (cached at SHA)."""
    base = Observation(request=REQ, current=OLD, reloaded=OLD, releases=frozenset({OLD}), cached_sha=SHA)
    return replace(base, **kw)


# --------------------------------------------------------------------------------------------------
# plan(): no request / blocked


def test_no_request_and_nothing_deployed_is_noop() -> None:
    """Without a valid request and with nothing current there is nothing to do."""
    result = plan(Observation(request=None))
    assert result.action is Action.NOOP
    assert result.steps == ()


def test_no_request_with_current_reloaded_is_noop() -> None:
    """Without a request, a current release that was reloaded needs nothing."""
    assert plan(obs(request=None)).action is Action.NOOP


@pytest.mark.parametrize("reloaded", [None, "something-else"])
def test_no_request_with_pending_reload_reloads(reloaded: str | None) -> None:
    """Without a request, a current release whose reload was never recorded is reloaded once."""
    result = plan(obs(request=None, reloaded=reloaded))
    assert result == Plan(Action.RELOAD, (Step.RELOAD,), OLD, reason=result.reason)


def test_blocked_request_waits() -> None:
    """A marker that failed for good before is not retried: wait for it to change."""
    result = plan(obs(blocked=True))
    assert result.action is Action.WAIT
    assert result.steps == ()


def test_blocked_request_waits_even_when_deployable() -> None:
    """Being blocked wins over a cached, deployable tag."""
    assert plan(obs(blocked=True, releases=frozenset({OLD, TARGET}))).action is Action.WAIT


def test_blocked_request_with_pending_reload_reloads() -> None:
    """A blocked marker does not stop a pending reload of the current release."""
    result = plan(obs(blocked=True, reloaded=None))
    assert (result.action, result.steps, result.target) == (Action.RELOAD, (Step.RELOAD,), OLD)


def test_blocked_request_with_nothing_current_waits() -> None:
    """With nothing current there is no reload pending, so a blocked marker waits."""
    assert plan(obs(blocked=True, current=None, reloaded=None)).action is Action.WAIT


# --------------------------------------------------------------------------------------------------
# plan(): fetch and errors


def test_unknown_tag_is_fetched() -> None:
    """A tag not in the git cache is fetched first."""
    result = plan(obs(cached_sha=None))
    assert (result.action, result.steps) == (Action.FETCH, (Step.FETCH,))
    assert "not in cache" in result.reason


def test_sha_mismatch_is_fetched() -> None:
    """A cached tag pointing elsewhere than the requested sha is fetched again (it may have moved)."""
    result = plan(obs(request=DeployRequest(tag="v2", sha=OTHER_SHA)))
    assert (result.action, result.steps) == (Action.FETCH, (Step.FETCH,))
    assert "does not match" in result.reason


def test_a_request_whose_fetch_failed_waits_out_its_back_off() -> None:
    """The tag is not cached and its last fetch failed: no fetch, a BACKOFF with the delay left."""
    result = plan(obs(cached_sha=None, retry_in=2.5))
    assert result == Plan(Action.BACKOFF, delay=2.5, reason=result.reason)
    assert "next try in 2.5 s" in result.reason


def test_a_moved_tag_whose_fetch_failed_waits_too() -> None:
    """A cached tag not at the requested sha needs a fetch: while that backs off, it waits too."""
    assert plan(obs(request=DeployRequest(tag="v2", sha=OTHER_SHA), retry_in=1.0)).action is Action.BACKOFF


@pytest.mark.parametrize(
    ("o", "action"),
    [
        (obs(retry_in=4.0), Action.DEPLOY),
        (obs(retry_in=4.0, current=TARGET, reloaded=TARGET), Action.NOOP),
        (obs(retry_in=4.0, cached_sha=None, blocked=True), Action.WAIT),
        (obs(retry_in=4.0, cached_sha=None, paused=True), Action.PAUSED),
        (obs(retry_in=4.0, cached_sha=None, request=None), Action.NOOP),
    ],
    ids=["cached", "current", "blocked", "paused", "no-request"],
)
def test_a_back_off_holds_back_only_a_fetch(o: Observation, action: Action) -> None:
    """A request that needs no fetch deploys (or converges) during a back-off; a block or a pause wins."""
    assert plan(o).action is action


def test_unknown_tag_after_fetch_is_an_error() -> None:
    """A tag still unknown after fetching is an error naming the tag, with nothing to deploy."""
    result = plan(obs(cached_sha=None, fetched=True))
    assert result.action is Action.ERROR
    assert (result.steps, result.target, result.sha) == ((), None, None)
    assert "'v2'" in result.reason


def test_sha_mismatch_after_fetch_is_an_error() -> None:
    """A tag still pointing elsewhere after fetching is an error reporting both commits."""
    result = plan(obs(request=DeployRequest(tag="v2", sha=OTHER_SHA[:10]), fetched=True))
    assert result.action is Action.ERROR
    assert (result.steps, result.target, result.sha) == ((), None, SHA)
    assert SHA[:12] in result.reason
    assert OTHER_SHA[:10] in result.reason


def test_fetched_and_matching_deploys() -> None:
    """After a fetch that found the tag, the plan goes on to deploy."""
    assert plan(obs(fetched=True)).action is Action.DEPLOY


# --------------------------------------------------------------------------------------------------
# plan(): already current


def test_already_current_is_noop() -> None:
    """The requested release being current and reloaded means converged."""
    result = plan(obs(current=TARGET, reloaded=TARGET, releases=frozenset({TARGET})))
    assert result == Plan(Action.NOOP, (), TARGET, SHA, reason=result.reason)


def test_already_current_with_pending_reload_reloads() -> None:
    """The requested release is current but was never reloaded (crash after swap): reload only."""
    result = plan(obs(current=TARGET, reloaded=OLD, releases=frozenset({TARGET, OLD})))
    assert (result.action, result.steps, result.target) == (Action.RELOAD, (Step.RELOAD,), TARGET)


def test_already_current_with_abbreviated_sha_is_noop() -> None:
    """An abbreviated requested sha matching the current commit is converged too."""
    request = DeployRequest(tag="v2", sha=SHA[:7])
    result = plan(obs(request=request, current=TARGET, reloaded=TARGET))
    assert result.action is Action.NOOP


# --------------------------------------------------------------------------------------------------
# plan(): deploy


def test_release_on_disk_is_swapped_in() -> None:
    """A release that already exists on disk (rollback) only needs swap, reload and prune."""
    result = plan(obs(releases=frozenset({OLD, TARGET})))
    assert result == Plan(Action.DEPLOY, SWAP_ONLY, TARGET, SHA, reason=result.reason)


def test_release_on_disk_is_not_rebuilt_even_with_build_step() -> None:
    """A build command does not cause an existing release to be rebuilt."""
    assert plan(obs(releases=frozenset({OLD, TARGET}), has_build=True)).steps == SWAP_ONLY


def test_new_release_without_build_step() -> None:
    """A new release is prepared, published, swapped in, reloaded and pruned."""
    result = plan(obs())
    assert result == Plan(Action.DEPLOY, FULL_DEPLOY, TARGET, SHA, reason=result.reason)


def test_new_release_with_build_step() -> None:
    """With a build command, the build runs between prepare and publish."""
    assert plan(obs(has_build=True)).steps == FULL_DEPLOY_WITH_BUILD


def test_pre_swap_command_runs_before_every_swap() -> None:
    """With a pre-swap command, its step comes right before the swap of a new release and of one on disk."""
    new = plan(obs(has_build=True, has_pre_swap=True)).steps
    on_disk = plan(obs(releases=frozenset({OLD, TARGET}), has_pre_swap=True)).steps
    assert new == (Step.PREPARE, Step.BUILD, Step.PUBLISH, Step.PRE_SWAP, Step.SWAP, Step.RELOAD, Step.PRUNE)
    assert on_disk == (Step.PRE_SWAP, *SWAP_ONLY)


def test_no_pre_swap_step_without_a_swap() -> None:
    """A release already current is not swapped, so no pre-swap command runs."""
    assert plan(obs(current=TARGET, reloaded=TARGET, has_pre_swap=True)).steps == ()


def test_the_canary_runs_after_the_pre_swap_command_before_the_swap() -> None:
    """With a canary, its step comes after the pre-swap command, before the swap of a new release."""
    steps = plan(obs(has_pre_swap=True, has_canary=True)).steps
    assert steps == (Step.PREPARE, Step.PUBLISH, Step.PRE_SWAP, Step.CANARY, *SWAP_ONLY)


def test_the_canary_runs_before_a_swap_to_a_release_on_disk_that_never_served() -> None:
    """A release on disk other than the one served before current (staged, older) gets its canary."""
    on_disk = obs(releases=frozenset({OLD, TARGET}), has_canary=True, previous=release_name("v0", SHA))
    assert plan(on_disk).steps == (Step.CANARY, *SWAP_ONLY)


def test_no_canary_to_go_back_to_the_release_served_before_current() -> None:
    """Going back to `previous` (a rollback) swaps at once: that release served already."""
    back = obs(releases=frozenset({OLD, TARGET}), has_canary=True, previous=TARGET)
    assert plan(back).steps == SWAP_ONLY


def test_first_deploy_on_empty_volume() -> None:
    """With nothing current, the requested tag is deployed from scratch."""
    result = plan(obs(current=None, reloaded=None, releases=frozenset()))
    assert (result.action, result.steps, result.target) == (Action.DEPLOY, FULL_DEPLOY, TARGET)


def test_deploy_wins_over_pending_reload_of_old_release() -> None:
    """A pending reload of the old release is folded into deploying the new one (which reloads)."""
    result = plan(obs(reloaded=None))
    assert result.action is Action.DEPLOY
    assert Step.RELOAD in result.steps


@pytest.mark.parametrize("prefix_len", [4, 7, 12, 40])
def test_abbreviated_sha_match_deploys(prefix_len: int) -> None:
    """A requested sha that is a prefix of the cached commit is satisfied without a fetch."""
    result = plan(obs(request=DeployRequest(tag="v2", sha=SHA[:prefix_len])))
    assert (result.action, result.target, result.sha) == (Action.DEPLOY, TARGET, SHA)


def test_release_named_after_tag_and_cached_sha() -> None:
    """The deploy target is derived from the tag and the full cached commit."""
    result = plan(obs(request=DeployRequest(tag="release/3.1"), cached_sha=OTHER_SHA))
    assert result.target == f"release_3.1-{OTHER_SHA[:12]}"
    assert result.sha == OTHER_SHA


def test_steps_enum_is_in_run_order() -> None:
    """Step is declared in the order the steps run (the planner's tuples follow it)."""
    assert [s.value for s in Step] == [
        "fetch",
        "prepare",
        "build",
        "publish",
        "pre_swap",
        "canary",
        "swap",
        "reload",
        "verify",
        "rollback",
        "prune",
    ]


# --------------------------------------------------------------------------------------------------
# plan(): properties

_names = st.sampled_from([OLD, TARGET, release_name("v2", OTHER_SHA), "other-000000000000"])
_requests = st.none() | st.builds(
    DeployRequest,
    tag=st.sampled_from(["v1", "v2", "release/1"]),
    sha=st.none() | st.sampled_from([SHA, SHA[:7], OTHER_SHA, OTHER_SHA[:4]]),
)
observations = st.builds(
    Observation,
    request=_requests,
    current=st.none() | _names,
    reloaded=st.none() | _names,
    releases=st.frozensets(_names),
    cached_sha=st.none() | st.sampled_from([SHA, OTHER_SHA]),
    fetched=st.booleans(),
    blocked=st.booleans(),
    has_build=st.booleans(),
    paused=st.booleans(),
    retry_in=st.none() | st.floats(0.001, 300),
)


@settings(max_examples=500, deadline=None)
@given(observations)
def test_plan_invariants(o: Observation) -> None:
    """Whatever is observed, the plan is consistent with it."""
    p = plan(o)
    order = list(Step)
    assert list(p.steps) == sorted(p.steps, key=order.index), "steps run in Step order"
    pending = o.current is not None and o.reloaded != o.current
    if p.action is Action.FETCH:
        assert not o.fetched and not o.paused and o.retry_in is None and p.steps == (Step.FETCH,)
    elif p.action is Action.BACKOFF:
        assert o.retry_in is not None and p.delay == o.retry_in and p.steps == ()
        assert not o.fetched and not o.paused and not o.blocked
    elif p.action is Action.ERROR:
        assert o.fetched and p.steps == () and p.target is None
    elif p.action is Action.WAIT:
        assert o.blocked and not pending and p.steps == ()
    elif p.action is Action.RELOAD:
        assert pending and p.steps == (Step.RELOAD,) and p.target == o.current
    elif p.action is Action.NOOP:
        assert not pending and p.steps == () and not o.paused
    elif p.action is Action.PAUSED:
        assert o.paused and not pending and p.steps == ()
    else:
        assert p.action is Action.DEPLOY
        assert o.request is not None and o.cached_sha is not None and not o.blocked and not o.paused
        assert p.target == release_name(o.request.tag, o.cached_sha) != o.current
        assert o.request.matches(o.cached_sha)
        assert p.steps[-3:] == SWAP_ONLY
        assert (Step.PREPARE in p.steps) is (p.target not in o.releases)
        assert (Step.BUILD in p.steps) is (p.target not in o.releases and o.has_build)


# --------------------------------------------------------------------------------------------------
# plan_prune


def rel(name: str, created: float, ok: bool = True, known: bool = True) -> ReleaseInfo:
    return ReleaseInfo(name=name, created=created, ok=ok, known=known)


#: r5 is the newest, r1 the oldest; all successful.
FIVE = [rel(f"r{i}", float(i)) for i in range(1, 6)]


def test_prune_nothing_on_disk() -> None:
    """With no releases there is nothing to delete."""
    assert plan_prune([], "cur", "prev", keep=1) == []


def test_prune_keeps_newest_counting_current_and_previous() -> None:
    """Current and previous count toward keep; the older rest is deleted."""
    assert sorted(plan_prune(FIVE, "r5", "r4", keep=2)) == ["r1", "r2", "r3"]


def test_prune_keeps_everything_within_keep() -> None:
    """When there are no more successful releases than keep, nothing is deleted."""
    assert plan_prune(FIVE, "r5", "r4", keep=5) == []


def test_prune_keeps_newest_beyond_current_and_previous() -> None:
    """With room left after current and previous, the newest others fill it."""
    assert sorted(plan_prune(FIVE, "r5", "r4", keep=3)) == ["r1", "r2"]


def test_prune_never_deletes_old_current_and_previous() -> None:
    """An old current (rollback) and previous are kept and use up keep before newer releases."""
    assert sorted(plan_prune(FIVE, "r1", "r2", keep=2)) == ["r3", "r4", "r5"]


def test_prune_keep_one_keeps_current_and_previous() -> None:
    """keep=1 still keeps both current and previous (they are never deleted)."""
    assert sorted(plan_prune(FIVE, "r5", "r3", keep=1)) == ["r1", "r2", "r4"]


def test_prune_keep_one_without_current_keeps_newest() -> None:
    """keep=1 with no current or previous keeps only the newest successful release."""
    assert sorted(plan_prune(FIVE, None, None, keep=1)) == ["r1", "r2", "r3", "r4"]


def test_prune_never_deletes_protected() -> None:
    """Protected releases (e.g. one being deployed) are kept regardless of age or keep."""
    assert sorted(plan_prune(FIVE, "r5", None, keep=1, protected=["r1", "r3"])) == ["r2", "r4"]


@pytest.mark.parametrize("ok", [True, False])
def test_prune_never_deletes_unknown_release(ok: bool) -> None:
    """A release without metadata was not made by coordinator and is never deleted."""
    releases = [*FIVE, rel("foreign", 0.0, ok=ok, known=False)]
    assert "foreign" not in plan_prune(releases, "r5", None, keep=1)


def test_prune_unknown_release_does_not_count_toward_keep() -> None:
    """An unknown release, even the newest, does not take a successful release's place."""
    releases = [rel("foreign", 99.0, known=False), *FIVE]
    assert sorted(plan_prune(releases, None, None, keep=2)) == ["r1", "r2", "r3"]


def test_prune_deletes_failed_release_even_if_newest() -> None:
    """A failed release is deleted even when keep would have room for it."""
    releases = [*FIVE, rel("bad", 10.0, ok=False)]
    assert plan_prune(releases, "r5", "r4", keep=10) == ["bad"]


def test_prune_failed_releases_do_not_count_toward_keep() -> None:
    """Failed releases neither count toward keep nor push successful ones out."""
    releases = [rel("bad2", 12.0, ok=False), rel("bad1", 11.0, ok=False), *FIVE]
    assert sorted(plan_prune(releases, "r5", None, keep=2)) == ["bad1", "bad2", "r1", "r2", "r3"]


def test_prune_failed_current_is_kept_but_not_counted() -> None:
    """A failed current release is never deleted, but does not use up a keep slot."""
    releases = [rel("r6", 6.0, ok=False), *FIVE]
    assert sorted(plan_prune(releases, "r6", None, keep=2)) == ["r1", "r2", "r3"]


def test_prune_current_missing_from_disk_does_not_count() -> None:
    """A current name with no release on disk does not use up a keep slot."""
    assert sorted(plan_prune(FIVE, "gone", None, keep=1)) == ["r1", "r2", "r3", "r4"]


def test_prune_previous_only() -> None:
    """previous alone (no current) is kept and counts toward keep."""
    assert sorted(plan_prune(FIVE, None, "r1", keep=2)) == ["r2", "r3", "r4"]


def test_prune_ties_on_created_are_broken_by_name() -> None:
    """Releases with the same timestamp are ordered deterministically (by name)."""
    releases = [rel("a", 1.0), rel("b", 1.0), rel("c", 1.0)]
    assert sorted(plan_prune(releases, None, None, keep=1)) == ["a", "b"]
    assert sorted(plan_prune(list(reversed(releases)), None, None, keep=1)) == ["a", "b"]


def test_prune_ignores_empty_protected_names() -> None:
    """Empty names in protected, current or previous protect nothing."""
    assert sorted(plan_prune(FIVE, "", "", keep=1, protected=[""])) == ["r1", "r2", "r3", "r4"]


def test_prune_accepts_any_iterable() -> None:
    """Releases may be given as a one-shot iterator."""
    assert sorted(plan_prune(iter(FIVE), "r5", None, keep=4)) == ["r1"]


# --------------------------------------------------------------------------------------------------
# plan_prune: properties


@st.composite
def prune_cases(
    draw: st.DrawFn,
) -> tuple[list[ReleaseInfo], str | None, str | None, int, list[str]]:
    names = draw(st.lists(st.sampled_from([f"r{i}" for i in range(12)]), unique=True, max_size=12))
    releases = [
        ReleaseInfo(
            name=n,
            created=draw(st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, 8.0])),
            ok=draw(st.booleans()),
            known=draw(st.booleans() | st.just(True)),
        )
        for n in names
    ]
    candidates = st.none() | st.sampled_from([*names, "absent"]) if names else st.none() | st.just("absent")
    current = draw(candidates)
    previous = draw(candidates)
    keep = draw(st.integers(min_value=1, max_value=8))
    protected = draw(st.lists(st.sampled_from([*names, "absent"]), max_size=3)) if names else []
    return releases, current, previous, keep, protected


@settings(max_examples=500, deadline=None)
@given(prune_cases())
def test_prune_invariants(case: tuple[list[ReleaseInfo], str | None, str | None, int, list[str]]) -> None:
    """plan_prune never deletes what it must keep, and keeps exactly the newest `keep` successful ones."""
    releases, current, previous, keep, protected = case
    deleted = plan_prune(releases, current, previous, keep, protected)
    by_name = {r.name: r for r in releases}
    always = {n for n in (current, previous, *protected) if n}

    assert len(deleted) == len(set(deleted)), "no name is deleted twice"
    assert set(deleted) <= set(by_name), "only existing releases are deleted"
    assert not set(deleted) & always, "current, previous and protected are never deleted"
    assert all(by_name[n].known for n in deleted), "unknown releases are never deleted"
    failed = {r.name for r in releases if r.known and not r.ok and r.name not in always}
    assert failed <= set(deleted), "failed releases are deleted"

    good = [r for r in releases if r.known and r.ok]
    kept_good = [r for r in good if r.name not in deleted]
    pinned = sum(1 for r in good if r.name in always)
    assert len(kept_good) == max(pinned, min(keep, len(good)))

    def age(r: ReleaseInfo) -> tuple[float, str]:
        return (r.created, r.name)

    kept_free = [r for r in kept_good if r.name not in always]
    deleted_good = [r for r in good if r.name in deleted]
    assert all(age(k) > age(d) for k in kept_free for d in deleted_good), "the newest are the ones kept"


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=2, max_value=10), st.integers(min_value=2, max_value=15))
def test_prune_keeps_min_keep_total_when_current_and_previous_are_successful(keep: int, total: int) -> None:
    """With current and previous among the successful releases, exactly min(keep, total) remain."""
    releases = [rel(f"r{i:02d}", float(i)) for i in range(total)]
    current, previous = releases[0].name, releases[total // 2].name
    deleted = plan_prune(releases, current, previous, keep)
    assert total - len(deleted) == min(keep, total)


def test_health_check_adds_verify_after_reload_for_a_new_release() -> None:
    """With a health URL, a new release is verified after the reload and before pruning."""
    p = plan(Observation(request=DeployRequest("v2"), cached_sha=SHA, has_health=True))
    assert p.steps == (Step.PREPARE, Step.PUBLISH, Step.SWAP, Step.RELOAD, Step.VERIFY, Step.PRUNE)


def test_health_check_adds_verify_for_a_release_on_disk() -> None:
    """A swap to a release on disk is verified too."""
    p = plan(Observation(request=DeployRequest("v2"), cached_sha=SHA, releases=frozenset({TARGET}), has_health=True))
    assert p.steps == (Step.SWAP, Step.RELOAD, Step.VERIFY, Step.PRUNE)


def test_rollback_is_never_planned() -> None:
    """ROLLBACK only happens when VERIFY fails; the planner never puts it in a plan."""
    p = plan(Observation(request=DeployRequest("v2"), cached_sha=SHA, has_health=True, has_build=True))
    assert Step.ROLLBACK not in p.steps


# --------------------------------------------------------------------------------------------------
# start-up recovery, resumed verification, rollback eligibility, failure blocking, status


PENDING_VERIFY = PendingVerify(TARGET, back_to=OLD, previous_before=None)


def test_an_interrupted_verification_of_current_is_resumed_first() -> None:
    """A release swapped in but never verified is verified again before anything else, whatever the marker."""
    o = obs(current=TARGET, reloaded=TARGET, has_health=True, resume_verify=PENDING_VERIFY, request=None, invalid=True)
    assert plan(o) == Plan(Action.RESUME_VERIFY, (Step.VERIFY,), TARGET, reason="verification interrupted")


def test_a_verification_of_a_release_no_longer_current_is_not_resumed() -> None:
    """Someone changed `current` since: the pending verification no longer applies."""
    o = obs(has_health=True, resume_verify=PENDING_VERIFY)  # current is OLD
    assert plan(o).action is Action.DEPLOY


def test_no_verification_is_resumed_without_a_health_check() -> None:
    """With --health-url gone from the configuration there is nothing to verify with."""
    o = obs(current=TARGET, reloaded=TARGET, has_health=False, resume_verify=PENDING_VERIFY)
    assert plan(o).action is Action.NOOP


def test_resume_verify_offers_the_recorded_verification_of_current() -> None:
    """At start-up the state's pending verification is offered when it names current and a health URL is set."""
    state = State(verify=PENDING_VERIFY)
    assert resume_verify(state, TARGET, has_health=True) == PENDING_VERIFY
    assert resume_verify(state, OLD, has_health=True) is None
    assert resume_verify(state, TARGET, has_health=False) is None
    assert resume_verify(State(), TARGET, has_health=True) is None


def test_an_invalid_marker_with_an_unrecorded_reload_still_reloads() -> None:
    """`current` was swapped and not reloaded: the reload happens even while the marker is refused."""
    p = plan(obs(request=None, invalid=True, current=TARGET, reloaded=OLD))
    assert p.action is Action.RELOAD and p.target == TARGET


# --------------------------------------------------------------------------------------------------
# plan(): paused


@pytest.mark.parametrize(
    "o",
    [
        obs(paused=True),
        obs(paused=True, cached_sha=None),
        obs(paused=True, current=None, reloaded=None, releases=frozenset()),
    ],
    ids=["deployable", "not-in-cache", "first-deploy"],
)
def test_paused_deploys_and_fetches_nothing(o: Observation) -> None:
    """While paused a new request is neither fetched nor deployed: the plan is PAUSED with reason paused."""
    assert plan(o) == Plan(Action.PAUSED, reason="paused")


def test_paused_still_does_the_reload_a_crash_left_undone() -> None:
    """The recovery reload of a `current` already swapped completes a deploy already made: done while paused."""
    p = plan(obs(paused=True, current=TARGET, reloaded=OLD))
    assert p.action is Action.RELOAD and p.target == TARGET


def test_paused_still_resumes_an_interrupted_verification() -> None:
    """A release swapped in but never verified is verified (and rolled back if it fails) while paused."""
    o = obs(paused=True, current=TARGET, reloaded=TARGET, has_health=True, resume_verify=PENDING_VERIFY)
    assert plan(o).action is Action.RESUME_VERIFY


def test_the_paused_request_deploys_once_the_pause_is_gone() -> None:
    """The same observation without the pause deploys: the request was kept, not dropped."""
    o = obs(paused=True)
    assert plan(o).action is Action.PAUSED
    assert plan(replace(o, paused=False)).action is Action.DEPLOY


def test_a_pending_reload_of_current_is_confirmed_with_the_strategy() -> None:
    """Only a started reload of the release current still names is worth asking the reloader about."""
    pending = PendingReload(TARGET, token=1700000000)
    state = State(reloaded=OLD, pending=pending)
    assert reload_to_confirm(state, TARGET) == pending
    assert reload_to_confirm(state, OLD) is None
    assert reload_to_confirm(state, None) is None
    assert reload_to_confirm(State(reloaded=OLD), TARGET) is None


def test_a_confirmed_reload_is_recorded_as_done() -> None:
    """Recovering a reload that happened records it: reloaded, previous moved, token kept, nothing pending."""
    pending = PendingReload(TARGET, token=1700000000)
    state = State(reloaded=OLD, previous="v0-x", pending=pending, last_reload_mtime=1600000000)
    after = recover_reload(state, TARGET, pending)
    assert (after.reloaded, after.previous, after.pending, after.last_reload_mtime) == (TARGET, OLD, None, 1700000000)
    assert state.pending == pending  # the input is not changed


def test_a_token_less_reload_keeps_the_last_mtime() -> None:
    """A strategy without tokens leaves the touch file's last mtime as it was."""
    pending = PendingReload(TARGET, token=None)
    after = recover_reload(State(reloaded=TARGET, previous=OLD, pending=pending, last_reload_mtime=5), TARGET, pending)
    assert (after.reloaded, after.previous, after.last_reload_mtime) == (TARGET, OLD, 5)


@pytest.mark.parametrize(
    ("pending", "on_disk", "expected"),
    [
        (PendingVerify(TARGET, back_to=OLD), [OLD, TARGET], OLD),
        (PendingVerify(TARGET, back_to=OLD), [TARGET], None),  # pruned or deleted by hand
        (PendingVerify(TARGET, back_to=None), [OLD, TARGET], None),  # first deploy: nothing before it
        (PendingVerify(TARGET, back_to=TARGET), [TARGET], None),  # never back to the failed release itself
    ],
    ids=["previous-on-disk", "previous-gone", "no-previous", "same-release"],
)
def test_rollback_goes_back_only_to_a_published_earlier_release(
    pending: PendingVerify, on_disk: list[str], expected: str | None
) -> None:
    """A failed health check rolls back to the release before it only if that release is still on disk."""
    assert rollback_target(pending, on_disk) == expected


@pytest.mark.parametrize(
    ("request_tag", "tag", "retryable", "blocks"),
    [
        ("v2", "v2", False, True),  # a broken build or a failed health check of the marker's tag
        ("v2", "v2", True, False),  # a remote that was down: retried on the next resync
        ("v3", "v2", False, False),  # a resumed verification of a release the marker no longer asks for
        (None, "v2", False, False),  # no valid marker
    ],
)
def test_only_a_permanent_failure_of_the_markers_tag_blocks_the_marker(
    request_tag: str | None, tag: str, retryable: bool, blocks: bool
) -> None:
    """A failure waits for the marker to change only when it is permanent and for the tag asked for."""
    req = DeployRequest(tag=request_tag) if request_tag else None
    assert failure_blocks_marker(req, tag, retryable) is blocks


@pytest.mark.parametrize(
    ("o", "action", "reload_failed", "state"),
    [
        (obs(), Action.NOOP, False, StatusState.IDLE),
        (obs(request=None), Action.NOOP, False, StatusState.WAITING),
        (obs(request=None, invalid=True), Action.RELOAD, True, StatusState.INVALID),
        (obs(), Action.RELOAD, True, StatusState.FAILED),
        (obs(blocked=True, failed_kind="build"), Action.WAIT, False, StatusState.FAILED),
        (obs(blocked=True, failed_kind="rolled_back"), Action.WAIT, False, StatusState.ROLLED_BACK),
        (obs(paused=True), Action.PAUSED, False, StatusState.PAUSED),
        (obs(paused=True, request=None), Action.PAUSED, False, StatusState.PAUSED),
        (obs(paused=True, request=None, invalid=True), Action.PAUSED, False, StatusState.INVALID),
        (obs(paused=True), Action.RELOAD, True, StatusState.FAILED),
        (obs(cached_sha=None, retry_in=2.0), Action.BACKOFF, False, StatusState.FAILED),
    ],
    ids=[
        "converged",
        "no-marker",
        "invalid-marker",
        "reload-failed",
        "blocked-build",
        "blocked-rollback",
        "paused",
        "paused-no-marker",
        "paused-invalid-marker",
        "paused-reload-failed",
        "fetch-backing-off",
    ],
)
def test_settled_state_names_what_the_status_shows(
    o: Observation, action: Action, reload_failed: bool, state: StatusState
) -> None:
    """Without a deploy attempt the status state follows the marker, the failure memory and the reload."""
    assert settled_state(o, action, reload_failed=reload_failed) is state


def test_each_attempt_result_maps_to_one_status_state() -> None:
    """Success is idle, failures are failed or rolled_back, a superseded attempt hands over to the next deploy."""
    assert {r: r.status_state for r in AttemptResult} == {
        AttemptResult.RUNNING: StatusState.DEPLOYING,
        AttemptResult.SUCCESS: StatusState.IDLE,
        AttemptResult.FAILED: StatusState.FAILED,
        AttemptResult.ROLLED_BACK: StatusState.ROLLED_BACK,
        AttemptResult.CANCELLED: StatusState.DEPLOYING,
    }
    assert [r for r in AttemptResult if r.failed] == [AttemptResult.FAILED, AttemptResult.ROLLED_BACK]


ERR_A: ErrorInfo = {"kind": "reload", "message": "a"}
ERR_B: ErrorInfo = {"kind": "marker", "message": "b"}
ERR_C: ErrorInfo = {"kind": "build", "message": "c"}


def test_the_status_shows_one_error_in_order_of_precedence() -> None:
    """This reconcile's error first, then the marker's, then (only while failed) the attempt's or the remembered one."""
    assert status_error(StatusState.IDLE, explicit=ERR_A, marker_error=ERR_B) == ERR_A
    assert status_error(StatusState.INVALID, marker_error=ERR_B, attempt_error=ERR_C) == ERR_B
    assert status_error(StatusState.FAILED, attempt_error=ERR_C, failed_error=ERR_A) == ERR_C
    assert status_error(StatusState.ROLLED_BACK, failed_error=ERR_A) == ERR_A
    assert status_error(StatusState.IDLE, attempt_error=ERR_C, failed_error=ERR_A) is None


# --------------------------------------------------------------------------------------------------
# staging: plan_stage, staged_after, and retention of the staged release

STAGE_REQ = DeployRequest(tag="v2", request_id="stage-1")


def _stage_obs(**kw: Any) -> StageObservation:
    base: dict[str, Any] = {"request": STAGE_REQ, "digest": "d1", "cached_sha": SHA, "current": OLD}
    return StageObservation(**{**base, **kw})


def test_stage_builds_a_release_not_on_disk_without_any_swap() -> None:
    """A stage of a tag in the cache prepares and publishes its release: no swap, reload or prune."""
    p = plan_stage(_stage_obs())
    assert (p.action, p.steps, p.target, p.sha) == (StageAction.STAGE, (Step.PREPARE, Step.PUBLISH), TARGET, SHA)


def test_stage_runs_the_build_command_when_there_is_one() -> None:
    """With a build command the stage builds between prepare and publish."""
    assert plan_stage(_stage_obs(has_build=True)).steps == (Step.PREPARE, Step.BUILD, Step.PUBLISH)


def test_stage_of_a_release_on_disk_only_records_it() -> None:
    """A stage of a release already on disk builds nothing: it is only recorded as staged."""
    p = plan_stage(_stage_obs(releases=frozenset({TARGET, OLD})))
    assert (p.action, p.steps, p.target) == (StageAction.STAGE, (), TARGET)


def test_stage_of_the_current_release_has_nothing_to_do() -> None:
    """A stage of the release already current stages nothing."""
    p = plan_stage(_stage_obs(current=TARGET, releases=frozenset({TARGET})))
    assert (p.action, p.state) == (StageAction.CURRENT, StageState.CURRENT)


def test_no_stage_request_plans_nothing() -> None:
    """Without a stage request nothing is staged; a refused one is invalid."""
    assert plan_stage(_stage_obs(request=None, digest=None)).action is StageAction.NONE
    assert plan_stage(_stage_obs(request=None, invalid=True)).action is StageAction.INVALID


@pytest.mark.parametrize("action", [Action.FETCH, Action.DEPLOY, Action.RELOAD, Action.RESUME_VERIFY, Action.ERROR])
def test_deploys_come_first(action: Action) -> None:
    """While the marker's request needs work, the stage request waits (pending)."""
    p = plan_stage(_stage_obs(deploy_action=action))
    assert (p.action, p.state) == (StageAction.PENDING, StageState.PENDING)


@pytest.mark.parametrize("action", [Action.NOOP, Action.WAIT, Action.PAUSED, Action.BACKOFF])
def test_a_converged_failed_or_paused_marker_lets_the_stage_run(action: Action) -> None:
    """Converged, waiting on a failed marker or a back-off, or paused: the stage runs (it serves nothing)."""
    assert plan_stage(_stage_obs(deploy_action=action)).action is StageAction.STAGE


def test_a_handled_stage_request_is_not_handled_again() -> None:
    """Stage request bytes staged, current or failed for good are not handled again until they change."""
    for state in (StageState.STAGED, StageState.CURRENT, StageState.FAILED):
        done = StageDone("d1", state)
        assert plan_stage(_stage_obs(done=done, deploy_action=Action.DEPLOY)).action is StageAction.DONE
        assert plan_stage(_stage_obs(done=done, digest="d2")).action is StageAction.STAGE


def test_a_stage_of_a_tag_not_in_the_cache_fetches() -> None:
    """An unknown tag, or a cached tag at another commit than requested, is fetched first."""
    assert plan_stage(_stage_obs(cached_sha=None)).action is StageAction.FETCH
    pinned = DeployRequest(tag="v2", sha=SHA[:8])
    assert plan_stage(_stage_obs(request=pinned, cached_sha=OTHER_SHA)).action is StageAction.FETCH


def test_a_stage_whose_sha_does_not_match_after_a_fetch_is_an_error() -> None:
    """After a fetch, a missing tag or a tag at another commit is an error."""
    pinned = DeployRequest(tag="v2", sha=SHA[:8])
    assert plan_stage(_stage_obs(cached_sha=None, fetched=True)).action is StageAction.ERROR
    p = plan_stage(_stage_obs(request=pinned, cached_sha=OTHER_SHA, fetched=True))
    assert (p.action, p.state) == (StageAction.ERROR, StageState.FAILED)


def test_a_moved_tag_names_another_release_than_the_staged_one() -> None:
    """A deploy of the staged tag at another commit (the tag moved) plans a full build, not a swap."""
    staged = release_name("v2", SHA)
    moved = plan(
        Observation(request=DeployRequest("v2", sha=OTHER_SHA), cached_sha=OTHER_SHA, releases=frozenset({staged}))
    )
    assert moved.target != staged and moved.steps == FULL_DEPLOY
    same = plan(Observation(request=DeployRequest("v2"), cached_sha=SHA, releases=frozenset({staged})))
    assert (same.target, same.steps) == (staged, SWAP_ONLY)


def test_the_staged_release_stays_staged_until_current_or_gone() -> None:
    """staged_after keeps the staged release until it is current (deployed) or gone from disk."""
    s = StagedRelease("v2", TARGET, SHA, "stage-1", "2026-11-28T00:00:00.000+00:00")
    assert staged_after(s, OLD, {TARGET, OLD}) == s
    assert staged_after(s, OLD) == s
    assert staged_after(s, TARGET, {TARGET}) is None
    assert staged_after(s, OLD, {OLD}) is None
    assert staged_after(None, OLD) is None


def test_prune_keeps_the_staged_release() -> None:
    """The staged release is never pruned, and counts toward keep like current and previous."""
    assert sorted(plan_prune(FIVE, "r5", "r4", keep=2, staged="r1")) == ["r2", "r3"]
    assert sorted(plan_prune(FIVE, "r5", "r4", keep=3, staged="r1")) == ["r2", "r3"]
    assert sorted(plan_prune(FIVE, "r5", "r4", keep=4, staged="r1")) == ["r2"]


def test_a_release_staged_before_is_pruned_as_an_ordinary_one() -> None:
    """Once another release is staged, the one staged before is an ordinary release to retention."""
    assert "r2" in plan_prune(FIVE, "r5", "r4", keep=3, staged="r1")
