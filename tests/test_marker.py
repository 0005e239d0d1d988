"""Unit and property tests for coordinator.marker: parsing hostile marker bytes, git ref-name rules,
sha and request-id validation, and release directory names. No filesystem access; one test runs the
real ``git check-ref-format`` as an oracle."""

from __future__ import annotations

import json
import re
import string
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.exceptions import MarkerError
from coordinator.marker import (
    MARKER_MAX_BYTES,
    REQUEST_ID_MAX_LEN,
    TAG_MAX_LEN,
    DeployRequest,
    parse_marker,
    release_name,
    validate_request_id,
    validate_sha,
    validate_tag,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
TAG_CHARS = set(string.ascii_letters + string.digits + "._/+@-")
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")
#: How many examples the --fuzz run of the parser tries.
FUZZ_EXAMPLES = 100_000

# --------------------------------------------------------------------------------------------------
# strategies

#: Pieces that exercise every ref-name rule: separators, dots, '.lock', '@{', forbidden and control
#: characters, a non-ASCII letter, and plenty of ordinary characters so that many tags are valid.
_TAG_ATOMS = [
    *"aZv0159",
    *"-_+@{}!#$%&'()=,;<>|`\"]",
    ".",
    "..",
    "/",
    "//",
    "@{",
    ".lock",
    "lock",
    "v1.2.3",
    "release/",
    *" ~^:?*[\\",
    "\t",
    "\x7f",
    "\x1b",
    "\u00e9",
]
tagish = st.lists(st.sampled_from(_TAG_ATOMS), max_size=12).map("".join)
hex_sha40 = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | tagish | hex_sha40
json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_marker_keys = st.sampled_from(["tag", "sha", "id", "sah", "TAG", ""]) | st.text(max_size=6)
marker_objects = st.dictionaries(_marker_keys, json_values, max_size=4) | st.fixed_dictionaries(
    {"tag": tagish | json_values},
    optional={"sha": hex_sha40 | json_values, "id": st.text(max_size=10) | json_values},
)
_json_texts = st.builds(
    lambda obj, ascii_only, indent: json.dumps(obj, ensure_ascii=ascii_only, indent=indent),
    marker_objects | json_values,
    st.booleans(),
    st.none() | st.integers(min_value=0, max_value=3),
)
#: Arbitrary JSON-ish marker text: valid JSON objects and values, sometimes cut short, sometimes
#: wrapped in whitespace or prefixed with a BOM, followed by trailing lines.
jsonish_text = st.builds(
    lambda text, cut, prefix, suffix: prefix + (text if cut is None else text[:cut]) + suffix,
    _json_texts,
    st.none() | st.integers(min_value=0, max_value=200),
    st.sampled_from(["", " ", "\n", "\ufeff", "\ufeff \n"]),
    st.sampled_from(["", "\n", "\nmore\n", " x", "}"]),
)
arbitrary_markers = (
    st.binary(max_size=MARKER_MAX_BYTES + 16)
    | jsonish_text.map(lambda t: t.encode("utf-8"))
    | tagish.map(lambda t: t.encode("utf-8"))
)


def _accepted(tag: str) -> bool:
    try:
        validate_tag(tag)
    except MarkerError:
        return False
    return True


def _git_accepts(tag: str) -> bool:
    proc = subprocess.run(
        ["git", "check-ref-format", f"refs/tags/{tag}"],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


def _check_parse(data: bytes, pattern: str | None = None) -> bool:
    """Parse ``data``; only MarkerError may escape, and anything accepted is fully valid."""
    try:
        req = parse_marker(data, pattern)
    except MarkerError:
        return False
    assert len(data) <= MARKER_MAX_BYTES
    assert validate_tag(req.tag, pattern) == req.tag
    assert req.sha is None or validate_sha(req.sha) == req.sha
    assert req.request_id is None or validate_request_id(req.request_id) == req.request_id
    return True


# --------------------------------------------------------------------------------------------------
# parse_marker: plain text


@pytest.mark.parametrize(
    ("data", "tag"),
    [
        (b"v1.2.3", "v1.2.3"),
        (b"v1.2.3\n", "v1.2.3"),
        (b"v1.2.3\r\n", "v1.2.3"),
        (b"release/1.0\n", "release/1.0"),
    ],
)
def test_plain_text_marker_is_the_tag(data: bytes, tag: str) -> None:
    """A plain-text marker names the tag, with its line ending removed."""
    assert parse_marker(data) == DeployRequest(tag=tag)


@pytest.mark.parametrize(
    "data",
    [b"v1\nv2\n", b"v1\n{not json\n", b"v1\n\xc2\xa0 anything \x01 at all\n", b"v1\r\nrm -rf /\n"],
)
def test_plain_text_marker_ignores_trailing_lines(data: bytes) -> None:
    """Only the first line of a plain-text marker counts; later lines are ignored."""
    assert parse_marker(data).tag == "v1"


@pytest.mark.parametrize("data", [b"  v1  ", b"\tv1\t\n", b"\n\n  v1\n\n", b" \r\n v1 \r\n v2"])
def test_plain_text_marker_strips_whitespace(data: bytes) -> None:
    """Surrounding whitespace and leading blank lines are not part of the tag."""
    assert parse_marker(data).tag == "v1"


@pytest.mark.parametrize("data", [b"\xef\xbb\xbfv1\n", b"\xef\xbb\xbf  v1\n"])
def test_plain_text_marker_skips_utf8_bom(data: bytes) -> None:
    """A UTF-8 byte order mark (as written by some Windows editors) is dropped."""
    assert parse_marker(data).tag == "v1"


def test_plain_text_marker_has_no_sha_or_id() -> None:
    """A plain-text request pins no commit and carries no request id."""
    req = parse_marker(b"v1\n")
    assert (req.sha, req.request_id) == (None, None)


@pytest.mark.parametrize("data", [b"v 1\n", b"v1 v2\n", b"-v1\n", b"v1..2\n", b"v1\x01\n", b"v1.lock\n"])
def test_plain_text_marker_with_invalid_tag_is_rejected(data: bytes) -> None:
    """The first line must itself be a valid tag (internal spaces, options, control chars...)."""
    with pytest.raises(MarkerError):
        parse_marker(data)


@pytest.mark.parametrize("data", [b'["v1"]', b"[v1]"])
def test_non_object_json_marker_is_rejected(data: bytes) -> None:
    """JSON that is not an object is not a valid marker (it is read as a tag, and '[' is forbidden)."""
    with pytest.raises(MarkerError):
        parse_marker(data)


# --------------------------------------------------------------------------------------------------
# parse_marker: JSON


def test_json_marker_with_tag_only() -> None:
    """A JSON object with just a tag is a plain request."""
    assert parse_marker(b'{"tag": "v1.2.3"}') == DeployRequest(tag="v1.2.3")


def test_json_marker_with_tag_sha_and_id() -> None:
    """All three keys are read into the request."""
    data = json.dumps({"tag": "v1", "sha": SHA, "id": "req-7"}).encode()
    assert parse_marker(data) == DeployRequest(tag="v1", sha=SHA, request_id="req-7")


def test_json_marker_sha_is_normalized_to_lowercase() -> None:
    """An upper-case sha is accepted and stored in lower case, as git prints it."""
    assert parse_marker(b'{"tag": "v1", "sha": "ABCDEF12"}').sha == "abcdef12"


@pytest.mark.parametrize("data", [b'{"tag": "v1", "sha": null}', b'{"tag": "v1", "id": null}'])
def test_json_marker_null_optional_keys_mean_absent(data: bytes) -> None:
    """``null`` for sha or id is the same as leaving the key out."""
    assert parse_marker(data) == DeployRequest(tag="v1")


@pytest.mark.parametrize(
    "data",
    [
        b'  \n{"tag": "v1"}\n\n',
        b'\xef\xbb\xbf{"tag": "v1"}',
        b'{\n  "tag": "v1"\n}\n',
    ],
)
def test_json_marker_tolerates_whitespace_and_bom(data: bytes) -> None:
    """Whitespace around the object, newlines inside it and a BOM are all fine."""
    assert parse_marker(data).tag == "v1"


def test_json_marker_round_trips_through_to_json() -> None:
    """``DeployRequest.to_json`` writes a marker that parses back to the same request."""
    req = DeployRequest(tag="release/1.0", sha=SHA[:12], request_id="ci:42")
    assert parse_marker(req.to_json().encode()) == req


@pytest.mark.parametrize("key", ["sah", "TAG", "Tag", "ids", "", "tag "])
def test_json_marker_unknown_key_is_rejected(key: str) -> None:
    """Any key other than tag, sha and id is an error, so typos are not silently ignored."""
    data = json.dumps({"tag": "v1", key: "x"}).encode()
    with pytest.raises(MarkerError, match="unknown key"):
        parse_marker(data)


def test_json_marker_unknown_key_is_named_in_the_error() -> None:
    """The error message names the offending key."""
    with pytest.raises(MarkerError, match="'sah'"):
        parse_marker(b'{"tag": "v1", "sah": "abcd"}')


@pytest.mark.parametrize(
    "data",
    [b"{}", b'{"tag": null}', b'{"tag": 1}', b'{"tag": ["v1"]}', b'{"tag": {"v": 1}}', b'{"tag": true}'],
)
def test_json_marker_needs_string_tag(data: bytes) -> None:
    """The tag must be present and a string."""
    with pytest.raises(MarkerError, match="string 'tag'"):
        parse_marker(data)


@pytest.mark.parametrize("value", ["1234", '["abcd"]', "true", "{}", "12.5"])
def test_json_marker_sha_must_be_string(value: str) -> None:
    """A non-string sha is an error, not coerced."""
    with pytest.raises(MarkerError, match="'sha' must be a string"):
        parse_marker(f'{{"tag": "v1", "sha": {value}}}'.encode())


@pytest.mark.parametrize("value", ["7", '["a"]', "false", "{}"])
def test_json_marker_id_must_be_string(value: str) -> None:
    """A non-string request id is an error, not coerced."""
    with pytest.raises(MarkerError, match="'id' must be a string"):
        parse_marker(f'{{"tag": "v1", "id": {value}}}'.encode())


@pytest.mark.parametrize(
    "data",
    [b'{"tag": "v1", "sha": "xyz1"}', b'{"tag": "v1", "sha": "abc"}', b'{"tag": "v1", "sha": ""}'],
)
def test_json_marker_invalid_sha_is_rejected(data: bytes) -> None:
    """The sha is validated as a 4-64 digit hex commit id."""
    with pytest.raises(MarkerError, match="invalid sha"):
        parse_marker(data)


@pytest.mark.parametrize("data", [b'{"tag": "v1", "id": "a b"}', b'{"tag": "v1", "id": ""}'])
def test_json_marker_invalid_id_is_rejected(data: bytes) -> None:
    """The request id is validated."""
    with pytest.raises(MarkerError, match="invalid request id"):
        parse_marker(data)


@pytest.mark.parametrize("tag", ["-v1", "a..b", "v1 ", "x\u00e9", "a\nb"])
def test_json_marker_invalid_tag_is_rejected(tag: str) -> None:
    """The JSON tag goes through the same ref-name rules as a plain-text tag."""
    with pytest.raises(MarkerError, match="invalid tag"):
        parse_marker(json.dumps({"tag": tag}).encode())


@pytest.mark.parametrize(
    "data",
    [
        b'{"tag": "v1"',
        b"{tag: v1}",
        b"{'tag': 'v1'}",
        b'{"tag": "v1",}',
        b'{"tag": "v1"} trailing',
        b'{"tag": "v1"}\n{"tag": "v2"}',
        b"{",
    ],
)
def test_json_marker_with_bad_json_is_rejected(data: bytes) -> None:
    """Text starting with '{' must be a complete, valid JSON object."""
    with pytest.raises(MarkerError, match="not valid JSON"):
        parse_marker(data)


def test_json_marker_deeply_nested_is_rejected_cleanly() -> None:
    """Nesting deep enough to exhaust the recursion limit is a MarkerError, not a RecursionError."""
    data = b'{"tag":' + b"[" * (MARKER_MAX_BYTES - 16) + b"}"
    with pytest.raises(MarkerError):
        parse_marker(data)


# --------------------------------------------------------------------------------------------------
# parse_marker: bytes that are not a marker


@pytest.mark.parametrize("data", [b"", b"   ", b"\n\n", b"\t\r\n ", b"\xef\xbb\xbf", b"\xef\xbb\xbf \n"])
def test_empty_marker_is_rejected(data: bytes) -> None:
    """An empty or whitespace-only marker (e.g. truncated by `> deploy.request`) is an error."""
    with pytest.raises(MarkerError, match="empty"):
        parse_marker(data)


@pytest.mark.parametrize("data", [b"\x00", b"v1\x00", b"v1\n\x00\x00", b'{"tag": "v1"}\x00'])
def test_marker_with_nul_byte_is_rejected(data: bytes) -> None:
    """A NUL byte anywhere means binary data, even after the first line."""
    with pytest.raises(MarkerError, match="binary"):
        parse_marker(data)


@pytest.mark.parametrize("data", [b"v1\xff", b"\xc3\x28", b"v1\n\x80", b"\xed\xa0\x80", b"\xfe\xff"])
def test_marker_that_is_not_utf8_is_rejected(data: bytes) -> None:
    """Invalid UTF-8 anywhere in the marker is an error."""
    with pytest.raises(MarkerError, match="UTF-8"):
        parse_marker(data)


def test_marker_over_size_limit_is_rejected() -> None:
    """A marker larger than MARKER_MAX_BYTES is refused before parsing."""
    with pytest.raises(MarkerError, match="larger than"):
        parse_marker(b"v1\n" + b" " * (MARKER_MAX_BYTES - 2))


def test_marker_at_size_limit_is_accepted() -> None:
    """A marker of exactly MARKER_MAX_BYTES is still parsed."""
    data = b"v1\n" + b" " * (MARKER_MAX_BYTES - 3)
    assert len(data) == MARKER_MAX_BYTES
    assert parse_marker(data).tag == "v1"


def test_oversized_marker_error_carries_size() -> None:
    """The size error records how big the marker was."""
    with pytest.raises(MarkerError) as info:
        parse_marker(b"x" * (MARKER_MAX_BYTES + 10))
    assert info.value.fields["size"] == MARKER_MAX_BYTES + 10


def test_marker_error_has_a_fix() -> None:
    """Every marker error tells the user what to do."""
    with pytest.raises(MarkerError) as info:
        parse_marker(b"")
    assert info.value.fix


# --------------------------------------------------------------------------------------------------
# parse_marker: --tag-pattern


@pytest.mark.parametrize("data", [b"v1.2\n", b'{"tag": "v1.2"}'])
def test_marker_tag_matching_pattern_is_accepted(data: bytes) -> None:
    """A tag matching --tag-pattern is accepted in both marker forms."""
    assert parse_marker(data, "v*").tag == "v1.2"


@pytest.mark.parametrize("data", [b"release-1\n", b'{"tag": "release-1"}'])
def test_marker_tag_not_matching_pattern_is_rejected(data: bytes) -> None:
    """A tag outside --tag-pattern is rejected in both marker forms."""
    with pytest.raises(MarkerError, match="tag-pattern"):
        parse_marker(data, "v*")


# --------------------------------------------------------------------------------------------------
# validate_tag

VALID_TAGS = [
    "v1",
    "v1.2.3",
    "1.0",
    "release/1.0",
    "a/b/c/d",
    "v1.0-rc.1+build.5",
    "a@b",
    "x/@",
    "a./b",
    "a.lock.b",
    "lock",
    "locked.lockx",
    "_private",
    "+plus",
    "a" * TAG_MAX_LEN,
]

INVALID_TAGS = [
    ("", "empty"),
    ("a" * (TAG_MAX_LEN + 1), "longer than"),
    ("-v1", "start with '-'"),
    ("--upload-pack=evil", "start with '-'"),
    ("a..b", "'..'"),
    ("..", "'..'"),
    ("a@{b", "'@{'"),
    ("@{-1}", "'@{'"),
    ("@", "'@' alone"),
    ("a\x00b", "printable"),
    ("a\tb", "printable"),
    ("a\nb", "printable"),
    ("a\rb", "printable"),
    ("a\x1bb", "printable"),
    ("a\x7fb", "printable"),
    ("a b", "forbidden"),
    ("a~1", "forbidden"),
    ("a^1", "forbidden"),
    ("a:b", "forbidden"),
    ("a?b", "forbidden"),
    ("a*b", "forbidden"),
    ("a[b", "forbidden"),
    ("a\\b", "forbidden"),
    ("v1.", "ends with '.'"),
    ("a/b.", "ends with '.'"),
    ("a.lock", "'.lock'"),
    ("x.lock/y", "'.lock'"),
    ("a/b.lock", "'.lock'"),
    (".lock", "starts with '.'"),
    ("/a", "empty path component"),
    ("a/", "empty path component"),
    ("a//b", "empty path component"),
    ("/", "empty path component"),
    (".a", "starts with '.'"),
    ("a/.b", "starts with '.'"),
    ("a/./b", "starts with '.'"),
    ("\u00e9t\u00e9", "printable ASCII"),
    ("v1\u2028", "printable ASCII"),
    ("v\uff11", "printable ASCII"),
    ("{braces}", "outside A-Z"),
    ("`id`", "outside A-Z"),
    ("$(id)", "outside A-Z"),
    ("v1;rm", "outside A-Z"),
    ('"v1"', "outside A-Z"),
    ("a|b", "outside A-Z"),
    ("a!b", "outside A-Z"),
]


@pytest.mark.parametrize("tag", VALID_TAGS)
def test_validate_tag_accepts_valid_ref_names(tag: str) -> None:
    """Ordinary and unusual-but-legal tag names are returned unchanged."""
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(("tag", "why"), INVALID_TAGS)
def test_validate_tag_rejects_invalid_ref_names(tag: str, why: str) -> None:
    """Each ref-name rule violation is rejected with a message naming the rule."""
    with pytest.raises(MarkerError) as info:
        validate_tag(tag)
    assert why in info.value.message


@pytest.mark.parametrize("tag", VALID_TAGS)
def test_valid_tag_examples_are_valid_for_git(tag: str) -> None:
    """Every tag listed as valid here is also valid for the real `git check-ref-format`."""
    assert _git_accepts(tag)


def test_invalid_tag_error_message_is_truncated() -> None:
    """A huge tag is not echoed in full in the error message."""
    with pytest.raises(MarkerError) as info:
        validate_tag("a" * 1000 + " ")
    assert len(info.value.message) < 200


@pytest.mark.parametrize(
    ("tag", "pattern"),
    [("v1", "v*"), ("v1.2.3", "v[0-9]*"), ("v/1", "v*"), ("release-7", "release-?"), ("x", "*")],
)
def test_validate_tag_matching_pattern(tag: str, pattern: str) -> None:
    """A tag matching the --tag-pattern glob is accepted ('*' also spans '/')."""
    assert validate_tag(tag, pattern) == tag


@pytest.mark.parametrize(
    ("tag", "pattern"),
    [("V1", "v*"), ("x1", "v*"), ("va", "v[0-9]*"), ("release-77", "release-?"), ("v1", "")],
)
def test_validate_tag_not_matching_pattern(tag: str, pattern: str) -> None:
    """A tag outside the glob is rejected; matching is case-sensitive."""
    with pytest.raises(MarkerError, match="does not match --tag-pattern"):
        validate_tag(tag, pattern)


def test_validate_tag_checks_ref_rules_before_pattern() -> None:
    """A pattern that would match an invalid tag does not make it valid."""
    with pytest.raises(MarkerError, match="invalid tag"):
        validate_tag("-x", "*")


# --------------------------------------------------------------------------------------------------
# validate_sha, validate_request_id


@pytest.mark.parametrize(
    ("sha", "expected"),
    [
        ("abcd", "abcd"),
        (SHA, SHA),
        ("0" * 64, "0" * 64),
        ("ABCDEF12", "abcdef12"),
        (" abcd1234\n", "abcd1234"),
    ],
)
def test_validate_sha_accepts_hex_commit_ids(sha: str, expected: str) -> None:
    """4 to 64 hex digits are accepted, stripped and lowercased."""
    assert validate_sha(sha) == expected


@pytest.mark.parametrize(
    "sha",
    ["", "abc", "0" * 65, "g" * 40, "abcd efgh", "0x1234", "abcd\x00", "\uff10\uff11\uff12\uff13", "-abcd"],
)
def test_validate_sha_rejects_non_hex_or_wrong_length(sha: str) -> None:
    """Anything but 4 to 64 ASCII hex digits is rejected."""
    with pytest.raises(MarkerError, match="invalid sha"):
        validate_sha(sha)


@pytest.mark.parametrize("rid", ["a", "req-1", "A.b_c:d@e+f=g-h", "x" * REQUEST_ID_MAX_LEN, "2024-01-01T00:00:00"])
def test_validate_request_id_accepts_safe_ids(rid: str) -> None:
    """Ids of 1-128 characters from the safe set are returned unchanged."""
    assert validate_request_id(rid) == rid


@pytest.mark.parametrize(
    "rid", ["", "x" * (REQUEST_ID_MAX_LEN + 1), "a b", "a/b", "a\n", "\u00e9", "a\x00", "a;b", "$(x)", "a\\b"]
)
def test_validate_request_id_rejects_unsafe_ids(rid: str) -> None:
    """Empty, too long, or containing anything outside the safe set is rejected."""
    with pytest.raises(MarkerError, match="invalid request id"):
        validate_request_id(rid)


# --------------------------------------------------------------------------------------------------
# DeployRequest


@pytest.mark.parametrize(
    ("req_sha", "matches"),
    [(None, True), (SHA, True), (SHA[:7], True), (SHA[:4], True), (OTHER_SHA[:7], False), (SHA[1:8], False)],
)
def test_request_matches_full_or_abbreviated_sha(req_sha: str | None, matches: bool) -> None:
    """A request's sha matches a commit when it is absent or a prefix of the full id."""
    assert DeployRequest(tag="v1", sha=req_sha).matches(SHA) is matches


def test_request_to_json_omits_absent_fields() -> None:
    """The marker written for a tag-only request holds only the tag."""
    assert json.loads(DeployRequest(tag="v1").to_json()) == {"tag": "v1"}


# --------------------------------------------------------------------------------------------------
# release_name


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("v1.2.3", f"v1.2.3-{SHA[:12]}"),
        ("release/1.0", f"release_1.0-{SHA[:12]}"),
        ("a/b/c", f"a_b_c-{SHA[:12]}"),
        ("x@{y}", f"x__y_-{SHA[:12]}"),
        ("_p+q", f"_p+q-{SHA[:12]}"),
    ],
)
def test_release_name_sanitizes_tag_and_appends_short_sha(tag: str, expected: str) -> None:
    """Unsafe characters become '_' and the first 12 hex digits of the commit are appended."""
    assert release_name(tag, SHA) == expected


@pytest.mark.parametrize("tag", ["..", ".", "...", ".hidden", "-x", "--", ".-.-", "", "-.-v1"])
def test_release_name_never_starts_with_dot_or_dash(tag: str) -> None:
    """Even for tags that validation would reject, the name never starts with '.' or '-'."""
    name = release_name(tag, SHA)
    assert SAFE_NAME_RE.match(name), name
    assert name not in {".", ".."}


def test_release_name_falls_back_when_nothing_is_left() -> None:
    """A tag made only of dots and dashes becomes 'tag-<sha>'."""
    assert release_name("..-..", SHA) == f"tag-{SHA[:12]}"


def test_release_name_is_bounded() -> None:
    """A maximal tag yields a name of at most 100 + 1 + 12 characters (one path component)."""
    name = release_name("a" * TAG_MAX_LEN, SHA)
    assert len(name) == 100 + 1 + 12
    assert name.endswith(f"-{SHA[:12]}")


def test_release_name_distinguishes_commits() -> None:
    """The same tag at two different commits gives two different directories."""
    assert release_name("v1", SHA) != release_name("v1", OTHER_SHA)


def test_release_name_distinguishes_tags_that_sanitize_alike_at_different_commits() -> None:
    """'release/1' and 'release_1' only collide if they are the very same commit."""
    assert release_name("release/1", SHA) != release_name("release_1", OTHER_SHA)


def test_release_name_normalizes_sha_case() -> None:
    """An upper-case sha gives the same name as its lower-case form."""
    assert release_name("v1", SHA.upper()) == release_name("v1", SHA)


@pytest.mark.parametrize("sha", ["", "xyz", "../../etc", "abc/def0"])
def test_release_name_rejects_invalid_sha(sha: str) -> None:
    """The sha part is validated, so it can never inject a path."""
    with pytest.raises(MarkerError):
        release_name("v1", sha)


# --------------------------------------------------------------------------------------------------
# properties


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_markers)
def test_parse_marker_only_raises_marker_error(data: bytes) -> None:
    """On any bytes, parse_marker returns a fully valid request or raises MarkerError, nothing else."""
    _check_parse(data)
    _check_parse(data, "v*")


@settings(max_examples=300, deadline=None)
@given(jsonish_text)
def test_parse_marker_only_raises_marker_error_on_jsonish_text(text: str) -> None:
    """On JSON-like text (valid, truncated, odd types, unknown keys), only MarkerError escapes."""
    _check_parse(text.encode("utf-8"))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "._-+/@", min_size=1, max_size=30), hex_sha40)
def test_json_marker_round_trips_for_any_valid_tag(tag: str, sha: str) -> None:
    """Any request with a valid tag survives to_json -> parse_marker unchanged."""
    if not _accepted(tag):
        return
    req = DeployRequest(tag=tag, sha=sha, request_id="r1")
    assert parse_marker(req.to_json().encode()) == req


@settings(max_examples=200, deadline=None)
@given(tagish)
def test_validate_tag_agrees_with_git_check_ref_format(tag: str) -> None:
    """validate_tag accepts exactly what git accepts as refs/tags/<tag>, minus our extra restrictions."""
    ours = _accepted(tag)
    extra_ok = tag.isascii() and tag.isprintable() and not tag.startswith("-") and tag != "@"
    extra_ok = extra_ok and len(tag) <= TAG_MAX_LEN and set(tag) <= TAG_CHARS
    assert ours == (extra_ok and _git_accepts(tag)), (tag, ours)


@settings(max_examples=300, deadline=None)
@given(tagish | st.text(max_size=40), hex_sha40)
def test_release_name_is_one_safe_component_for_accepted_tags(tag: str, sha: str) -> None:
    """For any accepted tag and full sha, the release name is one safe path component."""
    if not _accepted(tag):
        return
    name = release_name(tag, sha)
    assert SAFE_NAME_RE.match(name), name
    assert "/" not in name
    assert name != ".."
    assert len(name) <= 100 + 1 + 12
    assert name.endswith("-" + sha[:12])


@settings(max_examples=300, deadline=None)
@given(tagish | st.text(max_size=40))
def test_accepted_tags_are_printable_ascii_without_leading_dash(tag: str) -> None:
    """Whatever validate_tag accepts is non-empty, of A-Z a-z 0-9 . _ / + @ -, never starting with '-'."""
    if not _accepted(tag):
        return
    assert tag
    assert not tag.startswith("-")
    assert set(tag) <= TAG_CHARS, tag


@settings(max_examples=100, deadline=None)
@given(tagish, hex_sha40, hex_sha40)
def test_release_names_differ_for_different_commits(tag: str, sha_a: str, sha_b: str) -> None:
    """Two commits whose ids differ in the first 12 digits never share a release directory."""
    if not _accepted(tag) or sha_a[:12] == sha_b[:12]:
        return
    assert release_name(tag, sha_a) != release_name(tag, sha_b)


# --------------------------------------------------------------------------------------------------
# long fuzz run (pytest --fuzz)


@pytest.mark.timeout(3600)
def test_fuzz_parse_marker(pytestconfig: pytest.Config) -> None:
    """With --fuzz: parse_marker survives FUZZ_EXAMPLES arbitrary markers raising only MarkerError."""
    if not pytestconfig.getoption("fuzz"):
        pytest.skip("long fuzz run: pass --fuzz")
    seen = {"examples": 0, "accepted": 0}

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(arbitrary_markers, st.sampled_from([None, "v*", "*"]))
    def fuzz(data: bytes, pattern: str | None) -> None:
        seen["examples"] += 1
        if _check_parse(data, pattern):
            seen["accepted"] += 1

    start = time.monotonic()
    fuzz()
    elapsed = time.monotonic() - start
    print(f"\nfuzz: {seen['examples']} examples ({seen['accepted']} accepted) in {elapsed:.1f} s")
    assert seen["examples"] >= FUZZ_EXAMPLES
