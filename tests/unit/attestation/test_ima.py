from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgectl.attestation.ima import Allowlist, ImaParseError, make_entry, parse_ima_list, replay

paths = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40).map(
    lambda s: "/" + s
)


@given(st.lists(st.tuples(paths, st.binary(min_size=32, max_size=32)), max_size=20))
def test_list_round_trips_and_replays_like_the_kernel(files: list[tuple[str, bytes]]) -> None:
    entries = [make_entry(p, d, i + 1) for i, (p, d) in enumerate(files)]
    parsed = parse_ima_list("".join(e.to_line() + "\n" for e in entries))
    assert parsed == entries
    assert all(e.template_hash_ok() for e in parsed)
    pcr = bytes(32)
    for path, digest in files:
        name = path.encode() + b"\0"
        data = (len(b"sha256:\0" + digest)).to_bytes(4, "little") + b"sha256:\0" + digest
        data += len(name).to_bytes(4, "little") + name
        pcr = hashlib.sha256(pcr + hashlib.sha256(data).digest()).digest()
    assert replay(parsed) == pcr


def test_path_with_spaces_and_ima_sig_signature() -> None:
    entry = make_entry("/opt/my app/run", hashlib.sha256(b"x").digest(), 1)
    parsed = parse_ima_list(entry.to_line() + "\n")
    assert parsed[0].path == "/opt/my app/run"


def test_violation_extends_all_ones() -> None:
    line = f"10 {'0' * 40} ima-ng sha256:{'0' * 64} /var/log/x\n"
    (entry,) = parse_ima_list(line)
    assert entry.is_violation and entry.template_hash_ok()
    assert replay([entry]) == hashlib.sha256(bytes(32) + b"\xff" * 32).digest()


def test_edited_entry_fails_its_template_hash() -> None:
    entry = make_entry("/usr/bin/agent", hashlib.sha256(b"a").digest(), 1)
    edited = entry.to_line().replace(entry.file_digest, hashlib.sha256(b"b").hexdigest())
    assert not parse_ima_list(edited)[0].template_hash_ok()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("10 abc", "line 1: expected"),
        (f"10 {'a' * 40} ima sha1:{'0' * 40} /x", "template 'ima' is not supported"),
        (f"x {'a' * 40} ima-ng sha256:{'0' * 64} /x", "line 1: PCR, template hash or file digest"),
        (f"10 {'a' * 40} ima-ng {'0' * 64} /x", "not ALGO:HEX"),
    ],
)
def test_malformed_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(ImaParseError, match=message):
        parse_ima_list(line)


def test_allowlist_reports_unknown_paths_and_wrong_digests() -> None:
    good = hashlib.sha256(b"good").digest()
    entries = [
        make_entry("boot_aggregate", bytes(32), 1),
        make_entry("/usr/bin/a", good, 2),
        make_entry("/usr/bin/b", good, 3),
        make_entry("/usr/bin/a", hashlib.sha256(b"bad").digest(), 4),
        make_entry("/tmp/scratch", good, 5),
    ]
    allow = Allowlist.from_json({"digests": {"/usr/bin/a": ["sha256:" + good.hex()]}, "excludes": ["/tmp/"]})
    problems = allow.problems(entries)
    assert len(problems) == 2
    assert "line 3: /usr/bin/b is not in the allowlist" in problems[0]
    assert "line 4: /usr/bin/a has digest" in problems[1]


@pytest.mark.parametrize("data", [[], {"digests": []}, {"digests": {"/a": "x"}}, {"digests": {}, "excludes": "x"}])
def test_allowlist_format_errors(data: object) -> None:
    with pytest.raises(ValueError, match=r"policy\.json"):
        Allowlist.from_json(data, "policy.json")
