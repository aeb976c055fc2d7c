"""The record model and codec: lossless reads, strict writes."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from journal import EventRecord, InvalidId, InvalidRecord, RecordTooLarge
from journal._model.records import decode_line, encode_line, normalize_timestamp, prepare_for_write
from journal.kinds import PhaseEntered
from tests.support import sample_path


def test_aios_sample_round_trips_byte_for_byte() -> None:
    lines = [line for line in sample_path().read_bytes().splitlines(keepends=True) if line.strip()]
    assert len(lines) >= 10
    for line in lines:
        record = decode_line(line)
        assert encode_line(record) == line


def test_unknown_kinds_and_extra_fields_are_kept() -> None:
    records = [decode_line(line) for line in sample_path().read_bytes().splitlines()]
    future = next(r for r in records if r.kind_type == "FutureKindFromNewerKernel")
    assert future.kind == {"type": "FutureKindFromNewerKernel", "weird_field": [1, 2, {"x": None}]}
    kernel = next(r for r in records if r.kind_type == "KernelVmCreated")
    assert kernel.kind["backend"] == "firecracker"
    # and they can be written again, unchanged
    checked, data = prepare_for_write([future])
    assert checked[0].kind == future.kind
    assert data == encode_line(future)


def test_new_record_defaults() -> None:
    r = EventRecord.new("s1", "main", 1, PhaseEntered(phase="perceive"))
    assert r.kind == {"type": "PhaseEntered", "phase": "perceive"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", r.timestamp)
    assert r.actor.type == "system" and r.actor.component == "arcan-daemon"
    assert (r.schema.name, r.schema.version) == ("aios-protocol", "0.1.0")
    assert r.event_id != r.agent_id
    line = encode_line(r)
    assert line.startswith(b'{"event_id":') and line.endswith(b'"kind":{"type":"PhaseEntered",'
                                                               b'"phase":"perceive"}}\n')
    assert b"causation_id" not in line


def test_mapping_kind_is_accepted_and_checked() -> None:
    r = EventRecord.new("s1", "main", 1, {"type": "UserMessage", "content": "hi"})
    assert r.kind_type == "UserMessage"
    with pytest.raises(InvalidRecord, match="PhaseEntered"):
        EventRecord.new("s1", "main", 1, {"type": "PhaseEntered", "phase": "dreaming"})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-02-21T10:15:30Z", "2026-02-21T10:15:30Z"),
        ("2026-02-21T10:15:30.123456789Z", "2026-02-21T10:15:30.123456789Z"),
        ("2026-02-21T12:15:30.5+02:00", "2026-02-21T10:15:30.5Z"),
        ("2026-02-21T00:15:30-01:30", "2026-02-21T01:45:30Z"),
        ("2026-01-01T00:30:00+01:00", "2025-12-31T23:30:00Z"),
    ],
)
def test_timestamps_are_normalized_to_utc(given: str, expected: str) -> None:
    assert normalize_timestamp(given) == expected


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01T00:00:00Z", "2026-02-21T10:15:30",
                                 "2026-02-21T10:15:30.1234567890Z"])
def test_bad_timestamps_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRecord):
        normalize_timestamp(bad)


def test_a_remembered_timestamp_never_lets_a_bad_one_through() -> None:
    # normalize_timestamp remembers the last canonical timestamp; an empty or bad one is
    # refused whether or not one was remembered, and a remembered one still passes.
    for bad in ["", "2026-02-21T10:15:30"]:
        with pytest.raises(InvalidRecord):
            normalize_timestamp(bad)
        assert normalize_timestamp("2026-02-21T10:15:30Z") == "2026-02-21T10:15:30Z"
        with pytest.raises(InvalidRecord):
            normalize_timestamp(bad)
    record = _rec(1)
    record.timestamp = ""  # changed after it was made (and checked)
    with pytest.raises(InvalidRecord):
        prepare_for_write([record])


@pytest.mark.parametrize("rest", ["Z", ".5Z", ".123456789Z", ".Z", ".1234567890Z", ".12a4Z",
                                  ".5z", ".5", "Zjunk", "+00:00", "-01:30", ".\u0663Z", " Z", ""])
def test_the_remembered_second_decides_as_the_full_check_does(rest: str) -> None:
    # The check remembers the second of the last canonical timestamp and then looks only at
    # the rest; whatever that rest is, the outcome must be the one of the full check.
    def outcome(value: str) -> str:
        try:
            return normalize_timestamp(value)
        except InvalidRecord:
            return "refused"

    value = "2026-02-21T10:15:30" + rest
    normalize_timestamp("1999-01-01T00:00:00Z")  # another second remembered: full check
    full = outcome(value)
    normalize_timestamp("2026-02-21T10:15:30Z")  # this second remembered
    assert outcome(value) == full


def test_an_id_found_valid_is_still_held_to_each_length_limit() -> None:
    prepare_for_write([_rec(1, session="s" * 20)])  # valid, and remembered as valid
    with pytest.raises(InvalidId, match="1 to 10 characters"):
        prepare_for_write([_rec(1, session="s" * 20)], max_id_length=10)
    prepare_for_write([_rec(1, session="s" * 20)], max_id_length=20)


def test_a_kind_changed_after_the_record_was_made_is_checked_again() -> None:
    record = _rec(1)
    prepare_for_write([record])
    record.kind["content"] = float("nan")  # a flat kind, but no longer plain
    with pytest.raises(InvalidRecord, match="not a JSON number"):
        prepare_for_write([record])
    record.kind = {"type": "UserMessage", 1: "x"}  # type: ignore[dict-item]
    with pytest.raises(InvalidRecord, match="keys must be strings"):
        prepare_for_write([record])


def test_decode_accepts_offsets_and_fills_defaults() -> None:
    line = (b'{"event_id":"e","session_id":"s","branch_id":"main","sequence":1,'
            b'"timestamp":"2026-02-21T12:00:00+02:00","kind":{"type":"X"}}')
    r = decode_line(line)
    assert r.timestamp == "2026-02-21T10:00:00Z"
    assert r.actor.component == "arcan-daemon"
    assert len(r.agent_id) == 36


def _rec(seq: int, **kw: object) -> EventRecord:
    return EventRecord.new(kw.pop("session", "s1"), kw.pop("branch", "main"), seq,  # type: ignore[arg-type]
                           {"type": "UserMessage", "content": "x"}, **kw)


def test_prepare_checks_batches() -> None:
    checked, data = prepare_for_write([_rec(1), _rec(2), _rec(3)])
    assert [r.sequence for r in checked] == [1, 2, 3]
    assert data.count(b"\n") == 3
    with pytest.raises(InvalidRecord, match="contiguous"):
        prepare_for_write([_rec(1), _rec(3)])
    with pytest.raises(InvalidRecord, match="one session and one branch"):
        prepare_for_write([_rec(1), _rec(2, branch="b")])
    with pytest.raises(InvalidRecord, match="at least one"):
        prepare_for_write([])
    dup = _rec(1)
    with pytest.raises(InvalidRecord, match="twice"):
        prepare_for_write([dup, _rec(2, event_id=dup.event_id)])
    with pytest.raises(InvalidRecord):
        prepare_for_write(["not a record"])  # type: ignore[list-item]


def test_prepare_checks_types_the_constructor_does_not() -> None:
    bad = _rec(1)
    bad.sequence = "7"  # type: ignore[assignment]
    with pytest.raises(InvalidRecord):
        prepare_for_write([bad])
    zero = _rec(1)
    zero.sequence = 0
    with pytest.raises(InvalidRecord):
        prepare_for_write([zero])


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "a\x00b", "x" * 200, ".hidden", "a b", "{x}"])
def test_prepare_refuses_hostile_ids(bad: str) -> None:
    with pytest.raises(InvalidId):
        prepare_for_write([_rec(1, session=bad)])
    with pytest.raises(InvalidId):
        prepare_for_write([_rec(1, branch=bad)])


def test_record_size_limit() -> None:
    big = EventRecord.new("s1", "main", 1, {"type": "UserMessage", "content": "x" * 2000})
    with pytest.raises(RecordTooLarge, match="over the limit of 1000"):
        prepare_for_write([big], max_record_bytes=1000)
    prepare_for_write([big], max_record_bytes=4000)


def test_prepare_names_the_record_over_the_limit_and_normalizes_each_timestamp() -> None:
    batch = [_rec(1), _rec(2), _rec(3)]
    batch[1] = EventRecord.new("s1", "main", 2, {"type": "UserMessage", "content": "x" * 2000})
    with pytest.raises(RecordTooLarge, match="record 2 encodes to"):
        prepare_for_write(batch, max_record_bytes=1000)
    batch = [_rec(1), _rec(2), _rec(3)]
    batch[2].timestamp = "2026-02-21T12:15:30.5+02:00"  # set after it was made
    checked, data = prepare_for_write(batch)
    assert checked[2].timestamp == "2026-02-21T10:15:30.5Z"
    assert [decode_line(line) for line in data.splitlines()] == checked


def test_garbage_lines_fail_to_decode() -> None:
    for bad in [b"{", b"[]", b'{"event_id":1}', b"\xff\xfe"]:
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
            decode_line(bad)


def test_a_large_batch_checks_every_kind_in_its_group() -> None:
    # A batch's kinds of one tag are converted together; the one at fault still raises with
    # msgspec's words for it, wherever it sits, and other and unknown tags are checked too.
    def batch() -> list[EventRecord]:
        out = []
        for seq in range(1, 21):
            kind: dict[str, Any] = {"type": "UserMessage", "content": f"m{seq}"}
            if seq % 5 == 0:
                kind = {"type": "SomethingNew", "x": [1, 2.5, None]}
            out.append(EventRecord.new("s1", "main", seq, kind))
        return out

    checked, _ = prepare_for_write(batch())
    assert [r.kind["type"] for r in checked].count("SomethingNew") == 4
    for at in (1, 11, 20):
        records = batch()
        records[at - 1].kind = {"type": "UserMessage", "content": 7}  # set after it was made
        with pytest.raises(InvalidRecord, match="invalid UserMessage kind: Expected `str`"):
            prepare_for_write(records)
        records = batch()
        records[at - 1].kind = {"type": "SomethingNew", "x": float("nan")}
        with pytest.raises(InvalidRecord, match="not a JSON number"):
            prepare_for_write(records)
