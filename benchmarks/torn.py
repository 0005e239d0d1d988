"""The unsafe window: torn reads while each deploy method runs.

A reader process (:mod:`benchmarks.reader`) reads every file of the live tree over and over and
classifies each pass: one version's tree, or torn (files of two versions), a file missing, or a file
cut short. Each method walks the same chain of tags (``base -> c10-1 -> ... -> c1000-R`` of a
:mod:`benchmarks.repos` repository, 10, 100 or 1,000 files changed per deploy):

* ``ours``: the real daemon; the reader resolves ``current`` with ``realpath`` once per pass, as a
  worker pinned to its release does (coordinator's recommended set-up);
* ``ours_follow``: the same, but the reader opens every file through the ``current`` symlink (the
  set-up the README warns about: ``sys.path`` holding the symlink path);
* ``checkout``: in-place ``git checkout -f tags/X`` in a clone (the old way);
* ``archive``: in-place ``git archive tags/X | tar -x`` over the live directory;
* ``worktree``: ``git worktree add --detach`` into a new directory, then a symlink renamed over the
  live link (git-sync's way); the reader pins as for ``ours``.

Before each deploy the driver waits for a complete pass that started after the previous deploy
ended, so every deploy starts from a steady tree; the window of a deploy is [its start, its end].
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from benchmarks.deploys import Deployer
from benchmarks.harness import _pdeathsig
from benchmarks.newtag import OBSERVER_SLEEP_S, release_names, timed_archive
from benchmarks.reader import MISSING, PARTIAL, TORN
from benchmarks.repos import ChainRepo
from benchmarks.session import Session
from benchmarks.stats import summarize
from benchmarks.synth import GIT_ENV, git

__all__ = ["METHODS", "run_torn"]

#: (key, label, reader mode)
METHODS: list[tuple[str, str, str]] = [
    ("ours", "coordinator; reader pins `current` (realpath once per pass)", "pinned"),
    ("checkout", "in-place `git checkout -f` (the old way)", "plain"),
    ("archive", "in-place `git archive | tar -x` over the live tree", "plain"),
    ("worktree", "`git worktree add --detach` + symlink rename (git-sync's way); reader pins", "pinned"),
    ("ours_follow", "coordinator; reader opens every file through `current` (not pinned)", "follow"),
]
_CHECKOUT = ["git", "-c", "advice.detachedHead=false", "checkout", "-q", "-f"]


class _Method(Protocol):
    def setup(self) -> Path: ...  # the live tree (or link) at version ``base``
    def deploy(self, tag: str) -> tuple[int, int]: ...  # (start, end) in time_ns
    def close(self) -> None: ...


def _env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


class _Ours:
    def __init__(self, work: Path, repo: ChainRepo, seed: int, log_level: str) -> None:
        self.root = work / "root"
        self.repo = repo
        self.session = Session(
            self.root,
            repo.path,
            work / "daemon.log",
            release_names(repo),
            step_ms=None,
            log_level=log_level,
            seed=seed,
            observer_sleep_s=OBSERVER_SLEEP_S,
        )
        self.anomalies: list[dict[str, Any]] = []
        self.drv: Deployer | None = None

    def setup(self) -> Path:
        self.root.mkdir()
        self.drv = self.session.__enter__()
        self.drv.deploy("base", timeout_s=300)
        return self.root / "current"

    def deploy(self, tag: str) -> tuple[int, int]:
        assert self.drv is not None
        rec = self.drv.deploy(tag, timeout_s=300)
        return rec.t0_ns, time.time_ns()

    def close(self) -> None:
        if self.drv is not None:
            self.anomalies = list(self.drv.anomalies)
            self.session.__exit__(None, None, None)


class _Checkout:
    def __init__(self, work: Path, repo: ChainRepo) -> None:
        self.clone = work / "clone"
        self.repo = repo

    def setup(self) -> Path:
        git(self.clone.parent, "clone", "-q", "--no-checkout", str(self.repo.path), str(self.clone))
        subprocess.run([*_CHECKOUT, "tags/base"], cwd=self.clone, env=_env(), check=True, capture_output=True)
        return self.clone

    def deploy(self, tag: str) -> tuple[int, int]:
        t0 = time.time_ns()
        subprocess.run([*_CHECKOUT, f"tags/{tag}"], cwd=self.clone, env=_env(), check=True, capture_output=True)
        return t0, time.time_ns()

    def close(self) -> None:
        pass


class _Archive(_Checkout):
    def __init__(self, work: Path, repo: ChainRepo) -> None:
        super().__init__(work, repo)
        self.live = work / "live"

    def setup(self) -> Path:
        git(self.clone.parent, "clone", "-q", "--bare", str(self.repo.path), str(self.clone))
        self.live.mkdir()
        timed_archive(self.clone, "base", self.live)
        return self.live

    def deploy(self, tag: str) -> tuple[int, int]:
        t0 = time.time_ns()
        timed_archive(self.clone, tag, self.live)
        return t0, time.time_ns()


class _Worktree(_Checkout):
    def __init__(self, work: Path, repo: ChainRepo) -> None:
        super().__init__(work, repo)
        self.trees = work / "trees"
        self.link = work / "live"

    def setup(self) -> Path:
        super().setup()
        self.trees.mkdir()
        self._add("base")
        os.symlink("trees/base", self.link)
        return self.link

    def _add(self, tag: str) -> None:
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(self.trees / tag), f"tags/{tag}"],
            cwd=self.clone,
            env=_env(),
            check=True,
            capture_output=True,
        )

    def deploy(self, tag: str) -> tuple[int, int]:
        t0 = time.time_ns()
        self._add(tag)
        tmp = self.link.with_name(".live.tmp")
        os.symlink(f"trees/{tag}", tmp)
        os.rename(tmp, self.link)
        return t0, time.time_ns()


class _Reader:
    """The reader subprocess and its pass log."""

    def __init__(self, manifest: Path, target: Path, mode: str, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.reader", str(manifest), str(target), mode, str(out)],
            cwd=str(Path(__file__).resolve().parent.parent),
            stdin=subprocess.DEVNULL,
            preexec_fn=_pdeathsig(),
        )

    def passes(self) -> list[tuple[int, int, int]]:
        try:
            data = self.out.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n")[:-1]:  # the last piece is empty or a line being written
            a, b, c = line.split()
            out.append((int(a), int(b), int(c)))
        return out

    def wait_pass_after(self, t_ns: int, count: int = 1, timeout: float = 60.0) -> tuple[int, int, int]:
        """Wait until ``count`` passes that started at or after ``t_ns`` are complete; return the last."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [p for p in self.passes() if p[0] >= t_ns]
            if len(later) >= count:
                return later[count - 1]
            if self.proc.poll() is not None:
                raise RuntimeError(f"reader exited with {self.proc.returncode}")
            time.sleep(0.002)
        raise RuntimeError(f"reader made no complete pass within {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _make(key: str, work: Path, repo: ChainRepo, seed: int, log_level: str) -> _Method:
    if key in ("ours", "ours_follow"):
        return _Ours(work, repo, seed, log_level)
    if key == "checkout":
        return _Checkout(work, repo)
    if key == "archive":
        return _Archive(work, repo)
    if key == "worktree":
        return _Worktree(work, repo)
    raise ValueError(key)


def _analyze(
    passes: list[tuple[int, int, int]],
    deploys: list[dict[str, Any]],
    tags: list[str],
) -> dict[str, Any]:
    unsafe_codes = {TORN: "torn", MISSING: "missing", PARTIAL: "partial"}
    counts = {"torn": 0, "missing": 0, "partial": 0}
    outside = 0  # unsafe passes overlapping no deploy: would mean the tree changed outside a deploy
    wrong = 0  # clean passes of a version that is neither side of the deploy they overlap
    per_deploy: list[dict[str, Any]] = []
    for d in deploys:
        d["unsafe"] = 0
        d["passes"] = 0
        d["span_ms"] = 0.0
    for t0, t1, code in passes:
        hit = [d for d in deploys if t0 <= d["end"] and t1 >= d["start"]]
        for d in hit:
            d["passes"] += 1
        if code >= 0:
            if hit and all(tags[code] not in (d["tag"], d["from"]) for d in hit):
                wrong += 1
            continue
        counts[unsafe_codes[code]] += 1
        if not hit:
            outside += 1
        for d in hit:
            d["unsafe"] += 1
            d.setdefault("unsafe_t0", t0)
            d["unsafe_t1"] = t1
    for d in deploys:
        if d["unsafe"]:
            d["span_ms"] = (d["unsafe_t1"] - d["unsafe_t0"]) / 1e6
        per_deploy.append(
            {
                "tag": d["tag"],
                "changed": d["changed"],
                "duration_ms": (d["end"] - d["start"]) / 1e6,
                "passes": d["passes"],
                "unsafe": d["unsafe"],
                "span_ms": d["span_ms"],
            }
        )
    unsafe = sum(counts.values())
    by_changed: dict[str, dict[str, Any]] = {}
    for c in sorted({d["changed"] for d in per_deploy}):
        rows = [d for d in per_deploy if d["changed"] == c]
        by_changed[str(c)] = {
            "deploys": len(rows),
            "affected": sum(1 for d in rows if d["unsafe"]),
            "unsafe_passes": sum(d["unsafe"] for d in rows),
            "passes_during": sum(d["passes"] for d in rows),
            "duration_ms": summarize([d["duration_ms"] for d in rows]).to_dict(),
            "span_ms": summarize([d["span_ms"] for d in rows if d["unsafe"]]).to_dict(),
        }
    spans = [d["span_ms"] for d in per_deploy if d["unsafe"]]
    return {
        "passes": len(passes),
        "pass_ms": summarize([(b - a) / 1e6 for a, b, _ in passes]).to_dict(),
        "passes_during_deploys": sum(d["passes"] for d in per_deploy),
        "deploys": len(per_deploy),
        "affected_deploys": sum(1 for d in per_deploy if d["unsafe"]),
        "unsafe_passes": unsafe,
        **counts,
        "unsafe_outside_deploys": outside,
        "wrong_version_passes": wrong,
        "deploy_ms": summarize([d["duration_ms"] for d in per_deploy]).to_dict(),
        "observed_span_ms": summarize(spans).to_dict(),
        "by_changed": by_changed,
        "samples": per_deploy,
    }


def run_method(
    key: str, work: Path, repo: ChainRepo, manifest: Path, seed: int, log_level: str
) -> tuple[dict[str, Any], list[str]]:
    mode = next(m for k, _, m in METHODS if k == key)
    mwork = work / key
    mwork.mkdir()
    method = _make(key, mwork, repo, seed, log_level)
    tags = [t for t, _ in repo.chain]
    notes: list[str] = []
    deploys: list[dict[str, Any]] = []
    try:
        target = method.setup()
        reader = _Reader(manifest, target, mode, mwork / "passes.txt")
        try:
            last = reader.wait_pass_after(time.time_ns(), 2)
            if last[2] != 0:
                raise RuntimeError(f"{key}: the reader does not see version base before the first deploy: {last}")
            prev = "base"
            for tag, changed in repo.chain[1:]:
                reader.wait_pass_after(time.time_ns())  # one complete pass of the steady tree
                start, end = method.deploy(tag)
                deploys.append({"tag": tag, "from": prev, "changed": changed, "start": start, "end": end})
                prev = tag
            last = reader.wait_pass_after(time.time_ns(), 2)
            if last[2] != tags.index(prev):
                notes.append(f"{key}: the last pass saw code {last[2]}, expected version {prev}")
            passes = reader.passes()
        finally:
            reader.stop()
    finally:
        method.close()
    if isinstance(method, _Ours) and method.anomalies:
        kinds = sorted({str(a.get("event")) for a in method.anomalies})
        notes.append(f"{key}: {len(method.anomalies)} warning/error events in the daemon log: {', '.join(kinds)}")
    res = _analyze(passes, deploys, tags)
    if res["unsafe_outside_deploys"] or res["wrong_version_passes"]:
        notes.append(
            f"{key}: {res['unsafe_outside_deploys']} unsafe passes outside any deploy, "
            f"{res['wrong_version_passes']} passes of an unexpected version"
        )
    return res, notes  # mwork stays until the end of the run: see benchmarks.newtag on deleting while measuring


def run_torn(
    work: Path,
    repo: ChainRepo,
    methods: list[str],
    seed: int,
    progress: Callable[[str], None],
    log_level: str = "info",
) -> dict[str, Any]:
    twork = work / "torn"
    twork.mkdir()
    manifest = twork / "manifest.json"
    tags = [t for t, _ in repo.chain]
    manifest.write_text(json.dumps({"paths": repo.paths, "tags": tags, "labels": {t: repo.labels_at(t) for t in tags}}))
    out: dict[str, Any] = {
        "files": repo.files,
        "deploys_per_method": len(tags) - 1,
        "changes": sorted({c for _, c in repo.chain[1:]}),
        "methods": {},
    }
    notes: list[str] = []
    for key in methods:
        progress(f"torn reads: {key} ({len(tags) - 1} deploys of {repo.files} files under a reader)")
        res, n = run_method(key, twork, repo, manifest, seed, log_level)
        label = next(lbl for k, lbl, _ in METHODS if k == key)
        out["methods"][key] = {"label": label, **res}
        notes += n
    out["notes"] = notes
    return out
