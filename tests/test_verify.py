"""journal.verify: every kind of damage is found, with the right file and line number.

Most files here are written by hand (verify reads files only, no Redis); one test checks
that what the journal itself writes (file, index, committed hint) verifies clean.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from journal import EventRecord, Journal
from journal._model.records import encode_line
from journal._storage.session_file import HINT, INDEX_ENTRY, checksum
from journal.cli.verify import Finding, verify, verify_report
from journal.testing import RedisServer

from .support import sample_path

SID = "s1"


def rec(seq: int, branch: str = "main", session: str = SID, **kind: object) -> EventRecord:
    return EventRecord.new(session, branch, seq, kind or {"type": "PhaseEntered", "phase": "sleep"})


def write_session(root: Path, lines: list[bytes], session: str = SID) -> Path:
    path = root / "events" / f"{session}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def write_index(root: Path, lines: list[bytes], session: str = SID) -> None:
    """The index the journal would write for ``lines`` (one branch per record's branch_id)."""
    rows: dict[str, list[bytes]] = {}
    offset = 0
    for line in lines:
        if line.strip():
            from journal._model.records import decode_line

            record = decode_line(line)
            entry = INDEX_ENTRY.pack(offset, len(line), checksum(line))
            rows.setdefault(record.branch_id, []).append(entry)
        offset += len(line)
    index = root / "index" / session
    index.mkdir(parents=True, exist_ok=True)
    for branch, entries in rows.items():
        (index / f"{branch}.idx2").write_bytes(b"".join(entries))
    (index / "committed").write_bytes(HINT.pack(offset, 0))


def problems(findings: list[Finding]) -> list[tuple[str, int, str]]:
    return [(Path(f.path).name, f.line, f.problem) for f in findings]


def errors(root: Path) -> list[Finding]:
    return verify_report(root).errors


def test_clean_handwritten_session(tmp_path: Path) -> None:
    lines = [encode_line(rec(1)), encode_line(rec(2)), b"\n", encode_line(rec(1, "alt"))]
    write_session(tmp_path, lines)
    write_index(tmp_path, lines)
    report = verify_report(tmp_path)
    assert report.findings == []
    assert (report.sessions, report.lines) == (1, 3)


def test_missing_index_is_a_note_not_an_error(tmp_path: Path) -> None:
    shutil.copy(sample_path(), tmp_path / "x.jsonl")
    session = "7f3c9a52-1d2e-4b8a-9c0f-2a6b1e4d8c11"
    write_session(tmp_path, [(tmp_path / "x.jsonl").read_bytes()], session)
    report = verify_report(tmp_path)
    assert report.errors == []
    assert sorted(Path(n.path).name for n in report.notes) == ["alt.idx2", "main.idx2"]
    assert all(n.severity == "note" and "no index" in n.problem for n in report.notes)
    assert str(report.notes[0]).split(": ", 2)[1] == "note"


def test_torn_tail(tmp_path: Path) -> None:
    whole = [encode_line(rec(1)), encode_line(rec(2))]
    write_session(tmp_path, [*whole, encode_line(rec(3))[:-20]])
    write_index(tmp_path, whole)
    found = errors(tmp_path)
    assert len(found) == 1
    assert (Path(found[0].path).name, found[0].line) == ("s1.jsonl", 3)
    assert found[0].problem.startswith("torn tail: the last line")
    assert "committed region" not in found[0].problem  # beyond the hint: recovery cuts it


def test_bad_lines_get_their_line_numbers(tmp_path: Path) -> None:
    lines = [
        encode_line(rec(1)),
        b"\n",  # blank: counted as line 2, otherwise ignored
        b'{"event_id": "x", oops\n',  # 3: not JSON
        b"[1, 2]\n",  # 4: JSON, not an object
        b'{"event_id":"e","session_id":"s1"}\n',  # 5: not a record
        encode_line(rec(2)).replace(b'"sleep"', b'"nap"'),  # 6: bad kind (enum value)
        encode_line(rec(3, session="other")),  # 7: wrong session
        encode_line(rec(4, branch="a/b")),  # 8: bad branch id
        encode_line(rec(3)),  # 9: fine (the bad kind on 6 still counts as sequence 2)
    ]
    write_session(tmp_path, lines)
    found = {(f.line): f.problem for f in errors(tmp_path) if f.path.endswith(".jsonl")}
    assert sorted(found) == [3, 4, 5, 6, 7, 8]
    assert found[3].startswith("invalid JSON")
    assert found[4].startswith("not a JSON object")
    assert found[5].startswith("not a valid event record")
    assert "invalid PhaseEntered kind" in found[6] and "nap" in found[6]
    assert "does not match the file name" in found[7]
    assert "branch_id" in found[8]


def test_gaps_and_duplicates(tmp_path: Path) -> None:
    one, two = rec(1), rec(2)
    again = rec(2)
    lines = [
        encode_line(one),
        encode_line(two),
        encode_line(two),  # 3: the same event twice (a duplicated write)
        encode_line(again),  # 4: another event at sequence 2
        encode_line(rec(5)),  # 5: gap, 3..4 missing
        encode_line(rec(6)),  # 6: fine again
        encode_line(EventRecord.new(SID, "alt", 1, {"type": "PhaseEntered", "phase": "sleep"},
                                    event_id=one.event_id)),  # 7: event id reused
    ]
    write_session(tmp_path, lines)
    write_index(tmp_path, [])
    found = {f.line: f.problem for f in errors(tmp_path) if f.path.endswith(".jsonl")}
    assert sorted(found) == [3, 4, 5, 7]
    assert "duplicate" in found[3] and "(same event_id)" in found[3] and "line 2" in found[3]
    assert "duplicate" in found[4] and "(same event_id)" not in found[4]
    assert found[5] == "gap: branch main sequence 5, expected 3 (missing 3..4)"
    assert "duplicate event_id" in found[7] and "line 1" in found[7]


def test_index_mismatch_short_and_stale(tmp_path: Path) -> None:
    lines = [encode_line(rec(i)) for i in (1, 2, 3)]
    write_session(tmp_path, lines)
    write_index(tmp_path, lines)
    idx = tmp_path / "index" / SID / "main.idx2"
    entries = bytearray(idx.read_bytes())
    # Entry 2 points at line 3's bytes: a wrong index is an error...
    entries[INDEX_ENTRY.size : 2 * INDEX_ENTRY.size] = entries[2 * INDEX_ENTRY.size :]
    idx.write_bytes(bytes(entries))
    found = verify(tmp_path)
    assert problems([f for f in found if f.severity == "error"]) == [
        ("main.idx2", 2, f"entry for sequence 2 points at offset {2 * len(lines[0])} length "
                        f"{len(lines[2])}, but that sequence is line 2 at offset "
                        f"{len(lines[0])} length {len(lines[1])}"),
    ]
    # ...a short one or one with entries past the head is only a note.
    idx.write_bytes(bytes(entries[: INDEX_ENTRY.size]))
    report = verify_report(tmp_path)
    assert report.errors == []
    assert [(Path(n.path).name, n.line) for n in report.notes] == [("main.idx2", 2)]
    assert "stops at sequence 1" in report.notes[0].problem
    write_index(tmp_path, lines)
    idx.write_bytes(idx.read_bytes() + INDEX_ENTRY.pack(9999, 10, 0))
    report = verify_report(tmp_path)
    assert report.errors == []
    assert [(Path(n.path).name, n.line) for n in report.notes] == [("main.idx2", 4)]


def test_committed_hint_beyond_the_file(tmp_path: Path) -> None:
    lines = [encode_line(rec(1)), encode_line(rec(2))]
    write_session(tmp_path, lines)
    write_index(tmp_path, lines)
    hint = tmp_path / "index" / SID / "committed"
    hint.write_bytes(HINT.pack(10_000, 0))
    found = errors(tmp_path)
    assert [(Path(f.path).name, f.line) for f in found] == [("committed", 0)]
    assert "committed data is missing" in found[0].problem
    hint.write_bytes(HINT.pack(5, 0))
    assert "not at a line boundary" in errors(tmp_path)[0].problem
    # A bad line below the hint is corruption of committed data, and says so.
    write_session(tmp_path, [lines[0], b"garbage\n"])
    hint.write_bytes(HINT.pack(len(lines[0]) + 8, 0))
    assert errors(tmp_path)[0].problem.endswith("(inside the committed region)")


def test_every_finding_is_reported_across_sessions(tmp_path: Path) -> None:
    write_session(tmp_path, [b"nope\n", b"nope\n"], "a")
    write_session(tmp_path, [encode_line(rec(2, session="b"))], "b")
    found = errors(tmp_path)
    assert [(Path(f.path).name, f.line) for f in found] == [
        ("a.jsonl", 1), ("a.jsonl", 2), ("b.jsonl", 1),
    ]
    # Asking for given sessions: unknown ones and bad ids are findings too.
    named = verify(tmp_path, ["b", "zz", "../etc"])
    assert [(Path(f.path).name, f.line) for f in named if f.severity == "error"] == [
        ("b.jsonl", 1), ("zz.jsonl", 0), ("etc.jsonl", 0),
    ]


@pytest.mark.timeout(30)
def test_what_the_journal_writes_verifies_clean(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with RedisServer(dir=tmp_path / "redis") as server, Journal(root, server.url) as j:
        for i in range(1, 8):
            j.append(rec(i))
        j.append(rec(1, "alt", type="BranchCreated", new_branch_id="alt", fork_point_seq=7,
                     name="alt"))
        j.append_batch([rec(2, "alt"), rec(3, "alt")])
        server.restart()  # Redis forgets everything: the journal rebuilds from the file
        assert j.branches(SID) == {"main": 7, "alt": 3}
    assert verify(root) == []
