"""Per-line checksums in the index (issue 14): a changed letter inside a string value still
decodes, and only the CRC32C kept beside the line's offset and length can tell. Reads refuse
such a line with CorruptLine naming it, `journal verify` reports it, a rebuild never launders
it into a new index, and indexes in the previous 12-byte layout are rebuilt, not misread.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from journal import CorruptLine, EventRecord, Journal
from journal._model.records import encode_line
from journal._storage.session_file import INDEX_ENTRY, checksum
from journal.cli.verify import verify_report
from journal.testing import RedisServer

pytestmark = pytest.mark.timeout(60)
SID = "s"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


def ev(i: int, branch: str = "main", content: str | None = None) -> EventRecord:
    return EventRecord.new(SID, branch, i, {"type": "UserMessage",
                                            "content": content or f"hello number {i}"},
                           event_id=f"e{branch}{i}", agent_id="a",
                           timestamp="2026-01-01T00:00:00Z")


def journal(root: Path, server: RedisServer) -> Journal:
    return Journal(root, server.url, lease_ms=2000, lease_hold_ms=0,
                   view_catch_up_s=0).open()


def flip_letter(path: Path, line: int, old: bytes, new: bytes) -> None:
    """Replace one letter inside a string value of ``line`` (1-based): the JSON stays valid."""
    lines = path.read_bytes().splitlines(keepends=True)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_bytes(b"".join(lines))


def entries(root: Path, branch: str = "main") -> list[tuple[int, int, int]]:
    raw = (root / "index" / SID / f"{branch}.idx2").read_bytes()
    return list(INDEX_ENTRY.iter_unpack(raw))


def test_every_entry_holds_the_crc32c_of_its_line(tmp_path: Path, server: RedisServer) -> None:
    j = journal(tmp_path, server)
    j.append(ev(1))
    j.append_batch([ev(2), ev(3)])
    j.append(ev(1, "alt"))
    data = (tmp_path / "events" / f"{SID}.jsonl").read_bytes()
    for branch, n in (("main", 3), ("alt", 1)):
        rows = entries(tmp_path, branch)
        assert len(rows) == n
        for offset, length, crc in rows:
            assert crc == checksum(data[offset : offset + length])
    j.close()


@pytest.mark.parametrize("redis", ["kept", "lost"])
def test_a_flipped_letter_in_a_string_value_is_corrupt_line(
    tmp_path: Path, server: RedisServer, redis: str
) -> None:
    j = journal(tmp_path, server)
    j.append_batch([ev(i) for i in range(1, 5)])
    j.close()
    path = tmp_path / "events" / f"{SID}.jsonl"
    flip_letter(path, 2, b"hello number 2", b"jello number 2")
    if redis == "lost":
        server.restart()  # empty memory: the next open rebuilds from the file and its index
    j = journal(tmp_path, server)
    try:
        with pytest.raises(CorruptLine) as caught:
            j.read(SID, "main", 1, 10)
        assert (caught.value.path, caught.value.line) == (str(path), 2)
        assert "checksum mismatch" in caught.value.problem
        # The lines around it are still served: only the damaged one is refused.
        assert [r.sequence for r in j.read(SID, "main", 3, 2)] == [3, 4]
        assert [r.kind["content"] for r in j.read(SID, "main", 1, 1)] == ["hello number 1"]
        with pytest.raises(CorruptLine):
            j.read(SID, "main", 2, 1)
    finally:
        j.close()
    report = verify_report(tmp_path)
    assert [(f.path, f.line) for f in report.errors] == [(str(path), 2)]
    assert "checksum mismatch" in report.errors[0].problem


def test_a_rebuild_refuses_to_launder_a_changed_line(tmp_path: Path, server: RedisServer) -> None:
    """A full rebuild (`journal rebuild`, or Redis lost with an index that cannot prove the
    prefix) rewrites the index from the file: it must not record the changed line as good."""
    j = journal(tmp_path, server)
    j.append_batch([ev(i) for i in range(1, 4)])
    path = tmp_path / "events" / f"{SID}.jsonl"
    flip_letter(path, 3, b"hello number 3", b"hellx number 3")
    with pytest.raises(CorruptLine) as caught:
        j.rebuild(SID)
    assert caught.value.line == 3
    # The index still holds the written checksum: reads keep refusing the line.
    with pytest.raises(CorruptLine):
        j.read(SID, "main", 3, 1)
    j.close()


def test_an_index_in_the_previous_layout_is_rebuilt(tmp_path: Path, server: RedisServer) -> None:
    j = journal(tmp_path, server)
    j.append_batch([ev(i) for i in range(1, 6)])
    j.close()
    index = tmp_path / "index" / SID
    old = b"".join(struct.pack("<QI", o, n) for o, n, _ in entries(tmp_path))
    (index / "main.idx2").unlink()
    (index / "main.idx").write_bytes(old)  # what a journal before checksums left
    notes = [n.problem for n in verify_report(tmp_path).notes]
    assert any("previous layout without checksums" in n for n in notes), notes
    j = journal(tmp_path, server)
    assert [r.sequence for r in j.read(SID, "main", 1, 10)] == [1, 2, 3, 4, 5]  # a scan
    j.append(ev(6))  # the writer rewrites the index under the new name, checksums included
    assert not (index / "main.idx").exists()
    data = (tmp_path / "events" / f"{SID}.jsonl").read_bytes()
    rows = entries(tmp_path)
    assert len(rows) == 6
    assert all(crc == checksum(data[o : o + n]) for o, n, crc in rows)
    assert [r.sequence for r in j.read(SID, "main", 1, 10)] == [1, 2, 3, 4, 5, 6]
    j.close()
    assert verify_report(tmp_path).findings == []


def test_lines_written_by_aios_get_their_checksum_when_indexed(
    tmp_path: Path, server: RedisServer
) -> None:
    """aiOS writes the same JSONL and no index: a rebuild (no Redis state) and a tail
    recovery (lines past the committed length) both index them with their checksums."""
    path = tmp_path / "events" / f"{SID}.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(encode_line(ev(i)) for i in (1, 2)))  # aiOS, no index
    j = journal(tmp_path, server)
    assert j.branches(SID) == {"main": 2}  # rebuilt from the file
    with path.open("ab") as f:
        f.write(encode_line(ev(3)))  # aiOS again, past what Redis knows
    j.append(ev(4))  # recovers line 3 (rolled forward) and indexes it, then appends
    data = path.read_bytes()
    rows = entries(tmp_path)
    assert len(rows) == 4
    assert all(crc == checksum(data[o : o + n]) for o, n, crc in rows)
    flip_letter(path, 3, b"hello number 3", b"hellq number 3")
    with pytest.raises(CorruptLine) as caught:
        j.read(SID, "main", 1, 10)
    assert caught.value.line == 3
    j.close()
