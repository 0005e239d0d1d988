"""Hypothesis drives the RUNNING daemon with generated markers.

One real daemon (``coordinator run`` under :mod:`tests.audited_daemon`, an audit hook that logs every
process it starts) runs in a sandbox against a real repository with tricky-but-valid tags and decoys.
Each generated example writes a marker (in place, by rename, in two chunks, a burst of rewrites, or a
FIFO, directory, device or symlink in its place), waits until the status file shows the digest of the
bytes the daemon reads, and checks:

* the daemon is alive and its status is what the pure parser (:func:`coordinator.marker.parse_marker`)
  and the repository's tag list predict: ``invalid`` with an error for refused markers, ``idle`` on
  the right release for deployable ones, ``failed`` for unknown tags and sha mismatches;
* ``current`` is unchanged or names the release of a valid tag that the parser accepted for bytes
  written in this example, and that release holds that tag's commit;
* nothing outside ROOT changed (the sandbox minus ROOT, the marker directory and the logs is
  snapshotted), and no CANARY file named in shell-text markers exists in the sandbox or /tmp;
* no process was started from marker text: every process the daemon starts is ``git`` (through a
  logging wrapper, the only ``git`` on its PATH, next to logging shims named sh, touch, curl...) in
  one of the shapes the daemon uses, with marker text only as a validated tag in ``refs/tags/...``.

The default run tries DEFAULT_EXAMPLES examples; ``pytest --fuzz`` adds a long run of FUZZ_EXAMPLES.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.exceptions import MarkerError
from coordinator.marker import MARKER_MAX_BYTES, DeployRequest, parse_marker, release_name, validate_tag
from tests.blockcheck.detector import ENV as BLOCKCHECK_ENV
from tests.blockcheck.detector import PYTHONPATH_DIR as BLOCKCHECK_PYTHONPATH
from tests.helpers import Daemon, GitRepo, read_status

#: Examples of the default run (kept well under a minute on two shared cores).
DEFAULT_EXAMPLES = 600
#: Examples of the long run (``pytest --fuzz``).
FUZZ_EXAMPLES = 5000
#: The daemon reads at most this many bytes of the marker (and digests exactly those).
READ_CAP = MARKER_MAX_BYTES + 1
#: Seconds an example may take before the daemon counts as stuck.
EXAMPLE_TIMEOUT = 30.0
#: Name of the files shell-text markers try to create.
CANARY = "coordinator-fuzz-CANARY"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
T = TypeVar("T")

LONG_TAG = "long-" + "x" * 195
#: Tags in the repository that the daemon must deploy: tricky but valid names, one annotated.
VALID_TAGS = ("v1", "v2", "release/1.0", "release_1.0", "v1.0+build", "a@b", "_x.y-z+1", LONG_TAG)
ANNOTATED = frozenset({"v2", "a@b"})
#: Tags in the repository that git allows but the parser refuses: deploying one would be a bug.
DECOY_TAGS = (
    "-x",
    "--upload-pack=touch",
    "$(touch${IFS}pwned)",
    "a;b",
    "x|y",
    "v1'",
    "{x}",
    "`id`",
    "\u00e9t\u00e9",
    "v1,2",
    "v1!",
)
#: Names the parser accepts that are not deployable: a branch, tags of a tree and a blob, absent tags.
UNDEPLOYABLE = ("v9", "main", "treetag", "blobtag", "nope", "v3", "v1.0", "release/1.0/x", "refs/tags/v1", "HEAD")

#: Marker text that tries to be a git option, a revision, a path or shell code.
HOSTILE = (
    # options
    f"--upload-pack=touch /tmp/{CANARY}",
    f"--upload-pack=touch${{IFS}}/tmp/{CANARY}",
    f"-c core.sshCommand=touch /tmp/{CANARY}",
    "-ccore.sshCommand=touch",
    f"--exec=touch {CANARY}",
    f"--output=/tmp/{CANARY}",
    f"--config=core.pager=touch {CANARY}",
    f"-oProxyCommand=touch {CANARY}",
    "--git-dir=/tmp",
    "--work-tree=..",
    "--end-of-options",
    "--help",
    "-h",
    "--",
    "-",
    # revisions and refspecs
    "HEAD~1",
    "v1^{tree}",
    "v1^{commit}",
    "v1^",
    "v1~",
    "v1^0",
    "v2^!",
    "@{-1}",
    "@{u}",
    "v1@{0}",
    "@",
    ":/version",
    ":/",
    "v1..v2",
    "v1...v2",
    "v1:VERSION",
    "+refs/tags/v1:refs/heads/x",
    "refs/tags/v1:refs/tags/v2",
    "refs/heads/main",
    "tags/v1",
    "FETCH_HEAD",
    "*",
    "v*",
    "v?",
    "[v]1",
    # paths
    "../../etc",
    "../../../../etc/passwd",
    "/etc/passwd",
    "/tmp",
    "releases/../x",
    "../releases/x",
    "./v1",
    "v1/",
    "v1/..",
    ".",
    "..",
    "~",
    "~/x",
    "current",
    ".coordinator/git",
    "releases",
    "file:///etc/passwd",
    f"ext::sh -c touch% /tmp/{CANARY}",
    "C:\\Windows",
    "a/./b",
    "a//b",
    ".hidden",
    "x.lock",
    "release/1.0.lock",
    # shell
    f"$(touch {CANARY})",
    f"$(touch /tmp/{CANARY})",
    f"`touch {CANARY}`",
    f"v1;touch {CANARY}",
    f"v1|touch {CANARY}",
    f"v1&&touch ../{CANARY}",
    f"v1||touch ~/{CANARY}",
    f"v1\ntouch {CANARY}",
    f"v1 $(touch {CANARY})",
    f"v1>{CANARY}",
    "${IFS}",
    "$TAG",
    "${PATH}",
    "'v1'",
    '"v1"',
    "v1&",
    "v1#",
    f"v1%0atouch%20{CANARY}",
)

#: the git commands of the cache's tidy (GitCache.tidy): list the tag refs, delete unneeded ones,
#: expire the reflog, collect garbage, measure the cache
_TIDY_COMMANDS = [
    ["for-each-ref", "--format=%(refname)", "refs/tags/"],
    ["update-ref", "--stdin"],
    ["reflog", "expire", "--expire=now", "--all"],
    ["-c", "gc.auto=0", "gc", "--prune=now", "--quiet"],
    ["count-objects", "-v"],
]

#: Pieces of unicode tag-like text: tag characters, controls, bidi and zero-width marks, combining
#: marks, look-alikes, line separators python's splitlines/strip know about, shell and JSON syntax.
_TEXT_ATOMS = (
    *"v1a@._/+-",
    *VALID_TAGS[:4],
    "\x00",
    "\x01",
    "\x1b[31m",
    "\x7f",
    "\u202e",
    "\u200f",
    "\u0301",
    "\u200b",
    "\ufeff",
    "\u00a0",
    "\u2028",
    "\u2029",
    "\x85",
    "\uff56",
    "\u0432",
    "\u0131",
    "\U0001f600",
    *"\t \r\n\x0b\x0c\x1c\x1d\x1e\x1f",
    *"\\\"'{}[]:,$`;|&~^?*#!=%<>()",
    "\ud800",
    "\udfff",
)
#: Byte sequences that are not (or not only) UTF-8: lone surrogates, overlong forms, stray bytes, BOMs.
_BYTE_ATOMS = (
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xc0\xae",
    b"\xc0\xaf",
    b"\xe0\x80\xae",
    b"\xf8\x88\x80\x80\x80",
    b"\xf4\x90\x80\x80",
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xfe\xff",
    b"\x00",
    b"\n",
    b"v1",
    b"{",
    b'"tag"',
)
_WS_BEFORE = (
    "",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\ufeff",
    "\ufeff\ufeff",
    "\u00a0",
    "\u2028",
    "\x0b",
    "\x1c",
    "\u3000",
    "\u200b",
)
_WS_AFTER = (
    "",
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t\n",
    "\n\n",
    "\nv2",
    "\n--upload-pack=x",
    "\x00",
    "\u2029junk",
    "\x85junk",
    "\ufeff",
    "\x0cjunk",
)
_SIZES = (
    MARKER_MAX_BYTES - 2,
    MARKER_MAX_BYTES - 1,
    MARKER_MAX_BYTES,
    MARKER_MAX_BYTES + 1,
    MARKER_MAX_BYTES + 2,
    5000,
    8192,
    65536,
    1 << 20,
)
#: Daemon log events counted in the summary.
_COUNTED_EVENTS = frozenset({"deploy_started", "deploy_succeeded", "deploy_failed", "deploy_superseded", "pruned"})
_ALLOWED_ENV_ADDED = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "false", "LC_ALL": "C"}
#: Programs a hostile marker could try to reach through PATH: shims that log and fail.
SHIMS = (
    "sh",
    "bash",
    "dash",
    "zsh",
    "env",
    "touch",
    "curl",
    "wget",
    "nc",
    "python",
    "python3",
    "perl",
    "ssh",
    "rm",
    "cp",
    "mv",
    "ln",
    "cat",
    "echo",
    "id",
    "sleep",
    "true",
    "false",
    "ls",
    "mkdir",
    "chmod",
    "kill",
    "xargs",
    "busybox",
    "git-upload-pack",
    "git-receive-pack",
)


# --------------------------------------------------------------------------------------------------
# the repository


@dataclass(frozen=True)
class RepoInfo:
    """What the oracle knows about the repository."""

    path: Path
    tags: dict[str, str]  # deployable tag -> commit
    versions: dict[str, str]  # commit -> content of its VERSION file
    commits: tuple[str, ...]  # every commit, deployable or not
    paths: frozenset[str]  # every tracked path of every commit

    def release(self, tag: str) -> str:
        return release_name(tag, self.tags[tag])

    @property
    def release_names(self) -> dict[str, str]:
        """release name -> commit, for every deployable tag."""
        return {self.release(t): sha for t, sha in self.tags.items()}


def build_repo(path: Path) -> RepoInfo:
    """A repository with VALID_TAGS (one commit each), DECOY_TAGS, a branch v9, tags of a tree and a blob."""
    repo = GitRepo(path)
    tags: dict[str, str] = {}
    versions: dict[str, str] = {}
    paths: set[str] = set()
    for i, tag in enumerate(VALID_TAGS):
        files: dict[str, str | bytes | None] = {
            "VERSION": f"commit {i} for {tag}\n",
            "app.py": f"VERSION = {i}\n",
            "pkg/__init__.py": "",
            f"pkg/mod{i % 3}.py": f"X = {i}\n",
        }
        if tag == "a@b":  # option-like file names reach git only after "--"
            files.update({"--upload-pack=x": "opt\n", "-f": "dash\n"})
        sha = repo.commit(files, tag=tag, annotated=tag in ANNOTATED, message=f"commit {i}")
        tags[tag] = sha
        versions[sha] = f"commit {i} for {tag}\n"
        paths.update(repo.git("ls-files").splitlines())
    decoy = repo.commit({"VERSION": "decoy\n"}, message="decoy")
    versions[decoy] = "decoy\n"
    for name in DECOY_TAGS:
        repo.git("update-ref", f"refs/tags/{name}", decoy)
    repo.git("update-ref", "refs/tags/treetag", repo.git("rev-parse", f"{decoy}^{{tree}}"))
    repo.git("update-ref", "refs/tags/blobtag", repo.git("rev-parse", f"{decoy}:VERSION"))
    repo.git("checkout", "-q", "-b", "v9")
    branch = repo.commit({"VERSION": "branch v9\n"}, message="branch")
    versions[branch] = "branch v9\n"
    repo.git("checkout", "-q", "main")
    paths.update(repo.git("ls-files").splitlines())
    return RepoInfo(path, tags, versions, (*tags.values(), decoy, branch), frozenset(paths))


# --------------------------------------------------------------------------------------------------
# examples


WriteKind = Literal["bytes", "symlink", "fifo", "dir", "devnull", "dangling", "absent"]
WriteMode = Literal["rename", "inplace", "chunked"]


@dataclass(frozen=True)
class Write:
    """One change of the marker: bytes written in some way, or something else put in its place."""

    kind: WriteKind
    data: bytes = b""
    mode: WriteMode = "rename"
    target: str = ""  # for "symlink": "" (a file next to the marker holding data) or an absolute path
    pause: float = 0.0  # seconds to wait after this write when another one follows

    def __repr__(self) -> str:
        data = self.data if len(self.data) <= 120 else self.data[:60] + b"..." + self.data[-20:]
        return f"Write({self.kind}, {data!r}, len={len(self.data)}, {self.mode}, {self.target!r}, {self.pause})"


@dataclass(frozen=True)
class Example:
    """Writes in quick succession; the daemon is then checked against the last one."""

    writes: tuple[Write, ...]


def _json_marker(info: RepoInfo, tag: str, sha_spec: tuple[str, int, bool], rid: str | None, style: int) -> bytes:
    kind, n, upper = sha_spec
    body: dict[str, Any] = {"tag": tag}
    if kind == "own":
        own = info.tags.get(tag, info.commits[-1])
        body["sha"] = own[: max(4, n)]
    elif kind == "other":
        others = [c for c in info.commits if c != info.tags.get(tag)]
        body["sha"] = others[n % len(others)][: max(4, n)]
    elif kind == "short":
        body["sha"] = info.tags.get(tag, info.commits[0])[: n % 4]
    if upper and "sha" in body:
        body["sha"] = body["sha"].upper()
    if rid is not None:
        body["id"] = rid
    indent = (None, 2, 0)[style % 3]
    text = json.dumps(body, indent=indent, ensure_ascii=style % 2 == 0, sort_keys=style % 5 == 0)
    return (("\ufeff" if style % 7 == 0 else "") + (" \n" if style % 11 == 0 else "") + text).encode()


def _padded(base: bytes, size: int, filler: int) -> bytes:
    """``base`` grown to exactly ``size`` bytes while keeping its meaning if it fits under the cap."""
    if base.lstrip(b"\xef\xbb\xbf \n").startswith(b"{") and base.rstrip().endswith(b"}"):
        body = base.rstrip()[:-1]
        return body + b" " * max(0, size - len(body) - 1) + b"}"
    pad = (b"\n#", b" ", b"\n", b"x")[filler % 4]
    if pad == b"x":
        base += b"\n"
    need = max(0, size - len(base))
    return base + (pad * (need // len(pad) + 1))[:need]


def _mutated(base: bytes, edits: Sequence[tuple[int, int, int]]) -> bytes:
    out = bytearray(base)
    for pos, byte, op in edits:
        i = pos % (len(out) + 1)
        if op == 0 or not out:
            out.insert(i, byte)
        elif op == 1:
            del out[min(i, len(out) - 1)]
        else:
            out[min(i, len(out) - 1)] = byte
    return bytes(out)


def _dup_keys(first: str, second: str) -> bytes:
    return f'{{"tag": {json.dumps(first)}, "tag": {json.dumps(second)}}}'.encode()


def _weighted(*options: tuple[st.SearchStrategy[T], int]) -> st.SearchStrategy[T]:
    """One of ``options``, each chosen in proportion to its weight (one_of would merge equal ones)."""
    table = [strategy for strategy, weight in options for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


def marker_contents(info: RepoInfo) -> st.SearchStrategy[bytes]:
    """Marker bytes of every family the brief lists, with plenty of valid and deployable ones."""
    valid = st.sampled_from(sorted(info.tags))
    names = st.sampled_from([*sorted(info.tags), *DECOY_TAGS, *UNDEPLOYABLE, *HOSTILE])
    rid = st.none() | st.sampled_from(["ci-4711", "r:1@x+=y", "", "x" * 129, "bad id", "\u00e9"])
    sha_spec = st.tuples(
        st.sampled_from(["none", "none", "own", "own", "other", "short"]),
        st.integers(0, 64),
        st.booleans(),
    )
    json_valid = st.builds(_json_marker, st.just(info), valid, sha_spec, rid, st.integers(0, 1000))
    json_named = st.builds(_json_marker, st.just(info), names, sha_spec, rid, st.integers(0, 1000))
    text_valid = st.builds(
        lambda a, t, b: (a + t + b).encode(), st.sampled_from(_WS_BEFORE), valid, st.sampled_from(_WS_AFTER)
    )
    text_named = st.builds(
        lambda a, t, b: (a + t + b).encode(), st.sampled_from(_WS_BEFORE), names, st.sampled_from(_WS_AFTER)
    )
    unicode_text = st.lists(st.sampled_from(_TEXT_ATOMS), max_size=10).map(
        lambda parts: "".join(parts).encode("utf-8", "surrogatepass")
    )
    raw = st.binary(max_size=80) | st.lists(
        st.sampled_from([*_BYTE_ATOMS, *(t.encode() for t in VALID_TAGS[:3])]), max_size=6
    ).map(b"".join)
    encoded = st.builds(lambda t, enc: t.encode(enc), valid, st.sampled_from(["utf-16", "utf-16-be", "utf-32"]))
    json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | names
    json_values = st.recursive(
        json_scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
        max_leaves=10,
    )
    keys = st.sampled_from(["tag", "sha", "id", "sah", "TAG", "", "tag ", "Tag"]) | st.text(max_size=6)
    json_shapes = st.builds(
        lambda obj, ascii_only: json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"),
        st.dictionaries(keys, json_values, max_size=4)
        | st.fixed_dictionaries({"tag": names | json_values}, optional={"sha": json_values, "id": json_values})
        | json_values,
        st.booleans(),
    )
    json_tricks = st.sampled_from(
        [
            b'{"tag": 1' + b"0" * 4000 + b"}",
            b'{"tag": "v1", "sha": ' + b"9" * 4050 + b"}",
            b'{"tag": 1e999999}',
            b'{"tag": NaN}',
            b'{"tag": Infinity, "sha": -Infinity}',
            b'{"tag": "v1", "extra": {"tag": "v2"}}',
            b'{"tag": ["v1"]}',
            b'{"tag": {"tag": "v1"}}',
            b'{"tag": "v1"} trailing',
            b'{"tag": "v1"}{"tag": "v2"}',
            b'{"tag": "v\\u0031"}',
            b'{"tag": "v1\\u0000"}',
            b'{"tag": "\\ud800"}',
            b'{"tag": "v1", "sha": null, "id": null}',
            b"{" * 3000,
            b'{"tag": ' + b"[" * 2000 + b"]" * 2000 + b"}",
            b"[" * 5000,
            b'{"tag":"v1"',
            b"{}",
            b"[]",
            b'"v1"',
            b"null",
        ]
    )
    dup = st.builds(_dup_keys, names, names)
    sized = st.builds(
        _padded,
        text_valid | json_valid | st.sampled_from([b"v1", b'{"tag": "v2"}']),
        st.sampled_from(_SIZES),
        st.integers(0, 3),
    )
    mutated = st.builds(
        _mutated,
        text_valid | json_valid,
        st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255), st.integers(0, 2)), min_size=1, max_size=3),
    )
    return _weighted(
        (text_valid, 3),
        (json_valid, 3),
        (text_named, 3),
        (json_named, 2),
        (unicode_text, 2),
        (raw, 2),
        (encoded, 1),
        (json_shapes, 2),
        (json_tricks, 1),
        (dup, 1),
        (sized, 2),
        (mutated, 3),
    )


def example_strategy(info: RepoInfo) -> st.SearchStrategy[Example]:
    """A final write, sometimes after a burst of quick rewrites."""
    modes = st.sampled_from(["rename", "rename", "inplace", "chunked"])
    data_write = st.builds(lambda d, m: Write("bytes", d, m), marker_contents(info), modes)
    special = st.one_of(
        st.builds(lambda d: Write("symlink", d), marker_contents(info)),
        st.sampled_from(
            [
                Write("symlink", target="/etc/passwd"),
                Write("symlink", target="/etc/hostname"),
                Write("fifo"),
                Write("dir"),
                Write("devnull"),
                Write("dangling"),
                Write("absent"),
            ]
        ),
    )
    write = _weighted((data_write, 12), (special, 1))
    # a pause after an earlier write lets the daemon start on it (fetch, prepare) before the next one
    paused = st.builds(lambda w, p: replace(w, pause=p), write, st.sampled_from([0.0, 0.0, 0.002, 0.01, 0.03, 0.08]))
    burst = _weighted((st.just(()), 3), (st.lists(paused, min_size=1, max_size=3).map(tuple), 1))
    return st.builds(lambda b, w: Example((*b, w)), burst, write)


# --------------------------------------------------------------------------------------------------
# the harness


@dataclass
class Expected:
    """What the daemon must show once it has read the final write."""

    digest: str | None
    request: DeployRequest | None = None
    error: str | None = None
    release: str | None = None  # set when the request is deployable

    @property
    def outcome(self) -> str:
        if self.digest is None:
            return "absent"
        if self.request is None:
            return "refused"
        return "deployed" if self.release else "failed"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data[:READ_CAP]).hexdigest()


class AuditedDaemon(Daemon):
    """The daemon under tests/audited_daemon.py, with its own working directory and environment."""

    def __init__(self, root: Path, repo: Path, audit_log: Path, cwd: Path, env: dict[str, str], *extra: str) -> None:
        super().__init__(root, repo, *extra)
        self.args[1:3] = [str(Path(__file__).with_name("audited_daemon.py")), str(audit_log)]
        self.env = env
        self.cwd = cwd

    def start(self, wait_ready: bool = True) -> AuditedDaemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        if wait_ready:
            deadline = time.monotonic() + 30
            while '"started"' not in self.log() and not self.proc_exited():
                assert time.monotonic() < deadline, self.log()
                time.sleep(0.02)
            assert not self.proc_exited(), self.log()
        return self


def _wrapper(python: str, body: str) -> str:
    return f"#!{python} -IS\nimport json, os, sys\n{body}"


class Harness:
    """The sandbox, the daemon, the oracle and the invariant checks."""

    def __init__(self, sandbox: Path) -> None:
        self.sandbox = sandbox
        self.root = sandbox / "volume"
        self.markers = sandbox / "markers"
        self.logs = sandbox / "logs"
        self.bin = sandbox / "bin"
        self.cwd = sandbox / "canary"
        for d in (self.root, self.markers, self.logs, self.bin, self.cwd, sandbox / "home", sandbox / "tmp"):
            d.mkdir()
        self.marker = self.markers / "deploy.request"
        self.git_log, self.shim_log, self.audit_log = (
            self.logs / n for n in ("git.jsonl", "shim.jsonl", "audit.jsonl")
        )
        self.info = build_repo(sandbox / "repo")
        self.git_dir = self.root / ".coordinator" / "git"
        self.tmp_dir = self.root / ".coordinator" / "tmp"
        real_git = shutil.which("git")
        assert real_git is not None
        self._install_wrappers(real_git)
        env = {
            "PATH": str(self.bin),
            "HOME": str(sandbox / "home"),
            "TMPDIR": str(sandbox / "tmp"),
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            # the blocking-call detector in the daemon (tests/blockcheck), checked when the harness closes
            BLOCKCHECK_ENV: str(self.logs / "blocking.log"),
            "PYTHONPATH": BLOCKCHECK_PYTHONPATH,
        }
        self.env = env
        self.daemon = AuditedDaemon(
            self.root, self.info.path, self.audit_log, self.cwd, env, "--marker", str(self.marker)
        )
        self.examples: st.SearchStrategy[Example] = example_strategy(self.info)
        self.stats: Counter[str] = Counter()
        self.seen_tags: set[str] = set()  # tags the parser accepted from bytes written so far
        self._offsets: dict[Path, int] = {}
        self._separators = 0
        self._writes: Sequence[Write] = ()  # the writes of the example being checked
        assert not self._canaries(), "canary files exist before the run"
        self.daemon.start()
        self.baseline = self.snapshot()

    def _install_wrappers(self, real_git: str) -> None:
        py = sys.executable
        git = _wrapper(
            py,
            f"line = json.dumps({{'argv': sys.argv[1:], 'ppid': os.getppid()}}) + '\\n'\n"
            f"fd = os.open({str(self.git_log)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)\n"
            "os.write(fd, line.encode()); os.close(fd)\n"
            f"os.execv({real_git!r}, ['git', *sys.argv[1:]])\n",
        )
        shim = _wrapper(
            py,
            f"line = json.dumps({{'shim': sys.argv[0], 'argv': sys.argv[1:], 'ppid': os.getppid()}}) + '\\n'\n"
            f"fd = os.open({str(self.shim_log)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)\n"
            "os.write(fd, line.encode()); os.close(fd)\n"
            "sys.exit(126)\n",
        )
        for name, text in [("git", git), *((s, shim) for s in SHIMS)]:
            p = self.bin / name
            p.write_text(text)
            p.chmod(0o755)

    # ---------------------------------------------------------------- observing

    def status(self) -> dict[str, Any]:
        return read_status(self.root) or {}

    def current(self) -> str | None:
        try:
            return os.readlink(self.root / "current")
        except FileNotFoundError:
            return None

    def new_raw_lines(self, log: Path) -> list[bytes]:
        """Complete lines appended to ``log`` since the last call."""
        try:
            with open(log, "rb") as f:
                f.seek(self._offsets.get(log, 0))
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self._offsets[log] = self._offsets.get(log, 0) + end
        return [line for line in chunk[:end].splitlines() if line.strip()]

    def new_lines(self, log: Path) -> list[dict[str, Any]]:
        """Complete JSON lines appended to ``log`` since the last call."""
        return [json.loads(line) for line in self.new_raw_lines(log)]

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        """Every entry of the sandbox outside ROOT, the marker directory, the logs and the daemon log."""
        skip = {self.root, self.markers, self.logs}
        out: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.sandbox):
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
            for name in [*dirnames, *filenames]:
                p = Path(dirpath, name)
                if p == self.daemon.log_path:
                    continue
                s = os.lstat(p)
                link = os.readlink(p) if stat.S_ISLNK(s.st_mode) else None
                size = s.st_size if not stat.S_ISDIR(s.st_mode) else 0
                out[str(p.relative_to(self.sandbox))] = (s.st_mode, size, s.st_mtime_ns, s.st_ino, link)
        return out

    def _canaries(self, *, deep: bool = False) -> list[str]:
        """CANARY files in /tmp and the sandbox (with ``deep``, inside ROOT too)."""
        found = [f"/tmp/{n}" for n in os.listdir("/tmp") if CANARY in n]
        for dirpath, dirnames, filenames in os.walk(self.sandbox):
            if not deep:
                dirnames[:] = [d for d in dirnames if Path(dirpath, d) != self.root]
            found += [str(Path(dirpath, n)) for n in [*dirnames, *filenames] if CANARY in n]
        return found

    # ---------------------------------------------------------------- oracle

    def expect(self, w: Write) -> Expected:
        if w.kind in ("fifo", "dir", "devnull"):
            return Expected("not-a-file", error="not a regular file")
        if w.kind in ("dangling", "absent"):
            return Expected(None)
        data = Path(w.target).read_bytes()[:READ_CAP] if w.target else w.data[:READ_CAP]
        digest = hashlib.sha256(data).hexdigest()
        try:
            req = parse_marker(data)
        except MarkerError as e:
            return Expected(digest, error=e.message)
        deployable = req.tag in self.info.tags and req.matches(self.info.tags[req.tag])
        return Expected(digest, req, release=self.info.release(req.tag) if deployable else None)

    def _prefix_releases(self, writes: Sequence[Write]) -> set[str]:
        """Releases the daemon may legitimately deploy from a partial read of an in-place write."""
        out: set[str] = set()
        for w in writes:
            if w.kind != "bytes" or w.mode == "rename":
                continue
            for k in range(min(len(w.data), READ_CAP) + 1):
                try:
                    req = parse_marker(w.data[:k])
                except MarkerError:
                    continue
                self.seen_tags.add(req.tag)
                if req.tag in self.info.tags and req.matches(self.info.tags[req.tag]):
                    out.add(self.info.release(req.tag))
        return out

    # ---------------------------------------------------------------- acting

    def _clear(self, *, regular_too: bool = False) -> None:
        try:
            s = os.lstat(self.marker)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(s.st_mode):
            os.rmdir(self.marker)
        elif regular_too or not stat.S_ISREG(s.st_mode):
            os.unlink(self.marker)

    def put(self, w: Write) -> None:
        """Make the marker what ``w`` says."""
        m, tmp = self.marker, self.markers / ".deploy.request.writing"
        if w.kind == "bytes" and w.mode != "rename":
            self._clear()
            with open(m, "wb") as f:
                if w.mode == "inplace":
                    f.write(w.data)
                else:
                    f.write(w.data[: len(w.data) // 2])
                    f.flush()
                    time.sleep(0.001)
                    f.write(w.data[len(w.data) // 2 :])
            return
        if w.kind == "bytes":
            tmp.write_bytes(w.data)
        elif w.kind == "symlink":
            target = w.target
            if not target:
                (self.markers / ".target.writing").write_bytes(w.data)
                os.replace(self.markers / ".target.writing", self.markers / "target")
                target = "target"
            os.symlink(target, tmp)
        elif w.kind == "fifo":
            os.mkfifo(tmp)
        elif w.kind == "devnull":
            os.symlink("/dev/null", tmp)
        elif w.kind == "dangling":
            os.symlink("missing-target", tmp)
        else:
            self._clear(regular_too=True)
            if w.kind == "dir":
                os.mkdir(m)
            return
        if os.path.isdir(m) and not os.path.islink(m):
            os.rmdir(m)
        os.replace(tmp, m)

    def _may_show(self, w: Write, digest: str | None, final: Write) -> bool:
        """Whether the daemon may read ``digest`` (that of ``final``) while ``w`` is being written."""
        if self.expect(w).digest == digest:
            return True
        partial = w.kind == "bytes" and w.mode != "rename"
        has_data = final.kind in ("bytes", "symlink") and not final.target
        return partial and has_data and w.data.startswith(final.data[:READ_CAP])

    def wait_processed(self, digest: str | None, timeout: float = EXAMPLE_TIMEOUT) -> dict[str, Any]:
        """The first status that shows ``digest`` and no deploy in progress."""
        deadline = time.monotonic() + timeout
        while True:
            st_ = self.status()
            if st_ and st_.get("marker_digest") == digest and st_.get("state") != "deploying":
                return st_
            if self.daemon.proc_exited():
                rc = self.daemon.proc.returncode if self.daemon.proc else None
                pytest.fail(f"the daemon exited (rc {rc}):\n{self._tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"daemon stuck: no status for {digest} within {timeout} s; last {st_}\n{self._tail()}")
            time.sleep(0.003)

    def _tail(self) -> str:
        return "\n".join(self.daemon.log().splitlines()[-15:])

    def run(self, ex: Example) -> None:
        """Apply ``ex`` and check every invariant."""
        final = ex.writes[-1]
        want = self.expect(final)
        # an earlier write that shows the final digest (itself, or a partial read of it) would end the wait early
        writes = [w for w in ex.writes[:-1] if not self._may_show(w, want.digest, final)] + [final]
        if self.status().get("marker_digest") == want.digest:
            self._separators += 1
            self.put(Write("bytes", f"# separator {self._separators}\n".encode()))
            self.wait_processed(_digest(f"# separator {self._separators}\n".encode()))
        self._writes = writes
        before = self.current()
        allowed = {before}
        for w in writes:
            exp = self.expect(w)
            if exp.request is not None:
                self.seen_tags.add(exp.request.tag)
            if exp.release is not None:
                allowed.add(f"releases/{exp.release}")
            self.put(w)
            if w is not final and w.pause:
                time.sleep(w.pause)
        status = self.wait_processed(want.digest)
        self.check(writes, want, status, before, allowed)

    # ---------------------------------------------------------------- checking

    def check(
        self,
        writes: Sequence[Write],
        want: Expected,
        status: dict[str, Any],
        before: str | None,
        allowed: set[str | None],
    ) -> None:
        assert not self.daemon.proc_exited(), self._tail()
        current = self.current()
        state = status.get("state")
        outcome = want.outcome
        if outcome == "refused":
            assert state == "invalid", (status, want)
            assert status.get("error") and status.get("marker_error"), status
        elif outcome == "absent":
            assert state == "waiting", status
        elif outcome == "failed":
            assert state == "failed" and status.get("error"), (status, want)
        else:
            assert state == "idle", (status, want)
            assert current == f"releases/{want.release}", (current, want)
            assert (status.get("current") or {}).get("release") == want.release, status
            assert status.get("reloaded") == want.release, status
        if want.request is not None:
            desired = status.get("desired") or {}
            assert desired.get("tag") == want.request.tag and desired.get("sha") == want.request.sha, status
            assert desired.get("id") == want.request.request_id, status
        if current not in allowed:
            allowed |= {f"releases/{r}" for r in self._prefix_releases(writes)}
        assert current in allowed, f"current {current!r} is not one of {sorted(map(str, allowed))}"
        self._check_release(current)
        self._check_root()
        self._check_processes()
        self._check_log()
        now = self.snapshot()
        changed = sorted(k for k in now.keys() | self.baseline.keys() if now.get(k) != self.baseline.get(k))
        assert not changed, f"written outside ROOT: {changed[:10]}"
        if any(w.kind in ("bytes", "symlink") and CANARY.encode() in w.data for w in writes):
            assert not self._canaries(deep=True), self._canaries(deep=True)
            self.stats["canary_markers"] += 1
        self.stats["examples"] += 1
        self.stats["writes"] += len(writes)
        self.stats[f"outcome_{outcome}"] += 1
        self.stats["bursts"] += len(writes) > 1
        self.stats["over_cap"] += final_len(writes[-1]) > MARKER_MAX_BYTES
        self.stats["special"] += writes[-1].kind not in ("bytes",)
        self.stats["current_changed"] += current != before
        if self.stats["examples"] % 200 == 0:
            gc.collect()

    def _check_release(self, current: str | None) -> None:
        """``current`` is ``releases/<name>`` of a deployable tag, holding that tag's commit."""
        if current is None:
            return
        names = self.info.release_names
        assert current.startswith("releases/") and current[len("releases/") :] in names, current
        sha = names[current[len("releases/") :]]
        assert (self.root / current / "VERSION").read_text() == self.info.versions[sha]

    def _check_root(self) -> None:
        """ROOT holds only the layout, and releases/ only releases named after deployable tags."""
        top = {"current", "releases", "deploy.status.json", "reload.touch", ".coordinator"}
        for name in os.listdir(self.root):
            assert name in top or (name.startswith(".") and ".tmp-" in name), name
        names = self.info.release_names
        for name in os.listdir(self.root / "releases"):  # no temporary release left once idle
            assert name.removesuffix(".json") in names, name
        assert not os.listdir(self.tmp_dir), os.listdir(self.tmp_dir)

    def _check_log(self) -> None:
        """The daemon logged no crash, no traceback and no error other than refused markers and failed deploys."""
        for line in self.new_raw_lines(self.daemon.log_path):
            try:
                event = json.loads(line)
            except ValueError:
                pytest.fail(f"the daemon wrote a non-JSON line (a traceback?): {line[:300]!r}\n{self._tail()}")
            if event.get("level") in ("error", "critical", "exception"):
                assert event.get("event") in ("marker_invalid", "deploy_failed"), event
            if event.get("event") in _COUNTED_EVENTS:
                self.stats[f"daemon_{event['event']}"] += 1

    def _check_processes(self) -> None:
        """Every process the daemon started is git, in a known shape; no shim ran."""
        shims = self.new_lines(self.shim_log)
        assert not shims, f"a non-git program was run: {shims}"
        pid = self.daemon.proc.pid if self.daemon.proc else -1
        for entry in self.new_lines(self.git_log):
            assert entry["ppid"] == pid, f"git not started by the daemon: {entry}"
            problem = self.git_problem(entry["argv"])
            assert problem is None, f"{problem}: {entry['argv']}"
            self.stats["git_calls"] += 1
        for entry in self.new_lines(self.audit_log):
            assert entry["event"] == "subprocess.Popen", f"unexpected process event {entry}"
            _executable, args, _cwd, env = entry["args"]
            assert isinstance(args, list) and args and args[0] == "git", f"a non-git process: {entry}"
            problem = self.git_problem(args[1:])
            assert problem is None, f"{problem}: {args}"
            if env is not None:
                self._check_env(env)
            self.stats["processes"] += 1

    def _check_env(self, env: dict[str, str]) -> None:
        for key, value in env.items():
            if key in self.env:
                assert value == self.env[key], (key, value)
            elif key in _ALLOWED_ENV_ADDED:
                assert value == _ALLOWED_ENV_ADDED[key], (key, value)
            elif key == "GIT_CONFIG_GLOBAL":  # the repository is a local path: safe.directory names it
                assert Path(value) == self.root / ".coordinator" / "gitenv" / "gitconfig", (key, value)
            else:
                spare = self.root / ".coordinator" / "spare" / "manifest.index"
                assert key == "GIT_INDEX_FILE" and (Path(value).parent == self.tmp_dir or Path(value) == spare), (
                    key,
                    value,
                )

    def git_problem(self, argv: list[str]) -> str | None:
        """None if ``argv`` (after ``git``) is one of the shapes the daemon uses, else what is wrong."""
        if argv[:3] == ["init", "--bare", "-q"]:
            return None if argv[3:] == [str(self.git_dir)] else "unexpected init"
        if not argv or argv[0] != f"--git-dir={self.git_dir}":
            return "no --git-dir first"
        rest = argv[1:]
        if rest and rest[0].startswith("--work-tree="):
            wt = Path(rest[0].removeprefix("--work-tree="))
            spare = wt == self.root / ".coordinator" / "spare" / "tree"  # readied while idle
            # a published release: only its owed manifest completed while idle (read-tree -m -i, --refresh)
            published = wt.parent == self.root / "releases" and not wt.name.startswith(".")
            if (
                not spare
                and not published
                and (wt.parent != self.root / "releases" or not wt.name.startswith(".") or ".tmp-" not in wt.name)
            ):
                return "work tree outside releases/.<temp> and the spare"
            if rest[1:5] != ["-c", "core.autocrlf=false", "-c", "core.symlinks=true"]:
                return "unexpected -c options"
            rest = rest[5:]
            if published and rest[8:] != ["update-index", "--refresh"] and rest[8:11] != ["read-tree", "-m", "-i"]:
                return "a command other than completing a manifest in a published release"
            if rest == ["update-index", "-z", "--index-info"]:  # the changed entries, into a temporary index
                return None
            if rest[:2] == ["read-tree", "--end-of-options"] and len(rest) == 3:
                return None if rest[2] in self.info.commits else "read-tree of an unknown commit"
            if rest in (["checkout-index", "-a", "-f"], ["checkout-index", "-a", "-f", "-u"]):
                return None
            for head in (["checkout-index", "-f", "--"], ["checkout-index", "-f", "-u", "--"]):
                if rest[: len(head)] == head and len(rest) > len(head):
                    bad = [p for p in rest[len(head) :] if p not in self.info.paths]
                    return f"checkout-index of unknown paths {bad}" if bad else None
            if rest[:2] == ["ls-files", "-z"] and rest[2:3] == ["--"] and len(rest) > 3:  # a shared path's entries
                return None if all(a.startswith(":(literal)") for a in rest[3:]) else "ls-files of a non-literal path"
            stat_check = [
                *("-c", "core.trustctime=false", "-c", "core.checkStat=default"),
                *("-c", "core.untrackedCache=false", "-c", "core.fsmonitor=false"),
            ]
            if rest[:8] != stat_check:
                return "unknown work-tree command"
            rest = rest[8:]
            if rest in (["update-index", "--refresh"], ["clean", "-ffdx"]):
                return None
            if rest[:2] == ["read-tree", "-m"] and rest[2:3] in (["-i"], ["-u"]) and rest[3:4] == ["--end-of-options"]:
                unknown = [c for c in rest[4:] if c not in self.info.commits]
                return "read-tree -m of unknown commits" if unknown or len(rest) != 6 else None
            return "unknown work-tree command"
        if rest[:4] == ["rev-parse", "-q", "--verify", "--end-of-options"] and len(rest) == 5:
            m = re.fullmatch(r"refs/tags/(.+)\^\{commit\}", rest[4])
            return self._tag_problem(m.group(1)) if m else "rev-parse of something other than refs/tags/<tag>"
        if rest[:4] == ["fetch", "--no-tags", "--no-write-fetch-head", "-q"] and rest[4:5] != ["--"]:
            # one depth argument (--depth N, default 1) or --unshallow (--depth 0 on a shallow cache)
            if not (re.fullmatch(r"--depth=[1-9][0-9]*", rest[4]) or rest[4] == "--unshallow"):
                return "fetch with an unexpected option"
            rest = rest[:4] + rest[5:]
        if rest[:6] == ["fetch", "--no-tags", "--no-write-fetch-head", "-q", "--", str(self.info.path)]:
            m = re.fullmatch(r"\+refs/tags/(.+):refs/tags/(.+)", rest[6]) if len(rest) == 7 else None
            if m is None or m.group(1) != m.group(2):
                return "fetch of something other than +refs/tags/<tag>:refs/tags/<tag>"
            return self._tag_problem(m.group(1))
        raw = ["diff-tree", "-r", "-z", "--raw", "--no-renames", "--ignore-submodules=none"]
        if rest[:6] == raw and len(rest) == 10:
            out = Path(rest[6].removeprefix("--output="))
            if not rest[6].startswith("--output=") or out.parent != self.tmp_dir or rest[7] != "--end-of-options":
                return "diff-tree output outside the state tmp dir"
            if rest[8] not in (EMPTY_TREE, *self.info.commits) or rest[9] not in self.info.commits:
                return "diff-tree of unknown objects"
            return None
        if rest in _TIDY_COMMANDS:  # the cache's tidy after a prune (GitCache.tidy)
            return None
        return "unknown git command"

    def _tag_problem(self, tag: str) -> str | None:
        try:
            validate_tag(tag)
        except MarkerError as e:
            return f"git got a tag the parser refuses: {e.message}"
        if tag not in self.seen_tags:
            self._prefix_releases(self._writes)  # a partial read of an in-place write asks for a prefix
        if tag not in self.seen_tags:
            return f"git got tag {tag!r} that no marker asked for"
        return None

    def logs_agree(self) -> int:
        """Every git the wrapper saw was started by the daemon (the audit log saw it too); returns how
        many the wrapper missed (a deploy superseded while its git was starting kills its group first)."""
        self._check_processes()
        audit = Counter(json.dumps(json.loads(x)["args"][1][1:]) for x in self.audit_log.read_text().splitlines())
        wrapped = Counter(json.dumps(json.loads(x)["argv"]) for x in self.git_log.read_text().splitlines())
        assert not wrapped - audit, f"git runs the audit hook did not see: {wrapped - audit}"
        return (audit - wrapped).total()

    def close(self) -> int:
        rc = self.daemon.stop(signal.SIGTERM)
        return rc


def final_len(w: Write) -> int:
    return len(w.data) if w.kind == "bytes" else 0


# --------------------------------------------------------------------------------------------------
# fixtures and tests


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One audited daemon in a sandbox, shared by the tests of this module."""
    h = Harness(tmp_path_factory.mktemp("fuzz-sandbox"))
    try:
        yield h
    finally:
        rc = h.close()
        assert rc == 0, h._tail()
        blocking = h.logs / "blocking.log"
        assert not blocking.exists() or not blocking.read_text(), blocking.read_text()


def _fuzz(harness: Harness, examples: int, *, database: bool) -> None:
    """Run ``examples`` generated examples against the daemon and print the counts."""
    before = Counter(harness.stats)
    started = time.monotonic()

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=settings().database if database else None,
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        harness.run(data.draw(harness.examples, label="example"))

    fuzz()
    elapsed = time.monotonic() - started
    unlogged = harness.logs_agree()
    counts = Counter(harness.stats)
    counts.subtract(before)
    n = counts["examples"]
    print(
        f"\nfuzz-daemon: {n} examples, {counts['writes']} marker writes in {elapsed:.1f} s "
        f"({n / elapsed:.1f} examples/s, {counts['writes'] / elapsed:.1f} writes/s); "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k not in ("examples", "writes"))
        + f"; git runs killed before the wrapper logged them (whole session): {unlogged}"
    )
    assert n >= examples


def _marker(text: str | bytes, mode: WriteMode = "rename") -> Example:
    return Example((Write("bytes", text.encode() if isinstance(text, str) else text, mode),))


@pytest.mark.parametrize("form", ["text", "json"])
def test_every_valid_tag_is_deployed(harness: Harness, form: str) -> None:
    """Each tricky-but-valid tag (release/1.0, v1.0+build, a@b, a 200-character tag...) is deployed."""
    for tag in VALID_TAGS:
        sha = harness.info.tags[tag]
        harness.run(_marker(f"{tag}\n" if form == "text" else json.dumps({"tag": tag, "sha": sha[:7]})))
        assert harness.current() == f"releases/{harness.info.release(tag)}"


@pytest.mark.parametrize("form", ["text", "json"])
def test_decoy_tags_in_the_repository_are_refused(harness: Harness, form: str) -> None:
    """Tags git has but the parser refuses (-x, $(touch...), a;b, non-ASCII) never change current."""
    harness.run(_marker("v1"))
    for tag in DECOY_TAGS:
        harness.run(_marker(tag if form == "text" else json.dumps({"tag": tag})))
        assert harness.status()["state"] == "invalid"
        assert harness.current() == f"releases/{harness.info.release('v1')}"


def test_branches_and_non_commit_tags_fail_without_changing_current(harness: Harness) -> None:
    """A branch name, tags of a tree and a blob and absent tags fail; current stays."""
    harness.run(_marker("v2"))
    for name in UNDEPLOYABLE:
        harness.run(_marker(name))
        assert harness.status()["state"] == "failed"
        assert harness.current() == f"releases/{harness.info.release('v2')}"


def test_hostile_markers_start_no_process_and_write_nothing(harness: Harness) -> None:
    """Every option-like, revision, path and shell marker, as text and JSON, passes the checks."""
    for text in HOSTILE:
        for data in (text.encode(), json.dumps({"tag": text}).encode()):
            harness.run(_marker(data, "inplace"))
    assert not harness._canaries(deep=True)


def test_the_process_and_write_checks_are_not_vacuous(harness: Harness) -> None:
    """The git wrapper logs the daemon's git calls; shims and the sandbox snapshot catch strays."""
    harness.run(_marker("v1.0+build"))
    harness.run(_marker("a@b"))
    assert harness.stats["git_calls"] > 0 and harness.stats["processes"] > 0
    shim = subprocess.run([str(harness.bin / "touch"), CANARY], env=harness.env, check=False)
    assert shim.returncode == 126
    assert [e["shim"] for e in harness.new_lines(harness.shim_log)] == [str(harness.bin / "touch")]
    home = harness.sandbox / "home"
    st_home = os.stat(home)
    (home / "stray").write_text("x")
    assert harness.snapshot() != harness.baseline
    (home / "stray").unlink()
    os.utime(home, ns=(st_home.st_atime_ns, st_home.st_mtime_ns))
    assert harness.snapshot() == harness.baseline


@pytest.mark.timeout(600)  # 600 examples take 40-120 s here, longer on a machine kept busy; each wait is bounded
def test_daemon_survives_generated_markers(harness: Harness) -> None:
    """DEFAULT_EXAMPLES generated markers: the daemon stays up and every invariant holds."""
    _fuzz(harness, DEFAULT_EXAMPLES, database=True)


@pytest.mark.timeout(7200)
def test_fuzz_daemon_long(harness: Harness, pytestconfig: pytest.Config) -> None:
    """With --fuzz: FUZZ_EXAMPLES generated markers against the running daemon."""
    if not pytestconfig.getoption("fuzz"):
        pytest.skip("long fuzz run: pass --fuzz")
    _fuzz(harness, FUZZ_EXAMPLES, database=False)


def test_importing_the_daemon_starts_no_process(tmp_path: Path) -> None:
    """Regression: importing coordinator runs no process (it ran /sbin/ldconfig -p); syncfs is still found."""
    log = tmp_path / "audit.jsonl"
    code = (
        "import sys\n"
        "from tests.audited_daemon import make_hook\n"
        f"sys.addaudithook(make_hook({str(log)!r}))\n"
        "import coordinator.cli, coordinator.daemon, coordinator.fsutil\n"
        "assert coordinator.fsutil._libc is not None and hasattr(coordinator.fsutil._libc, 'syncfs')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, check=True, timeout=60)
    assert not log.exists(), log.read_text()
