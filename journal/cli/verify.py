"""``journal verify``: check session files and their indexes, by reading files only.

No Redis is needed, and nothing is written: this is the tool to run on a journal directory
that is suspect, copied from another host, or written by another implementation (aiOS).

For each ``<root>/events/<sid>.jsonl`` it checks, line by line (1-based, blank lines
counted but otherwise ignored, as docs/format.md allows):

* the line is JSON, and a valid docs/format.md record (:class:`~journal.records.EventRecord`),
  and its ``kind`` passes the strict write-side check (:func:`~journal.kinds.validate_kind`);
* ``session_id`` is the file's name and ``session_id``/``branch_id`` follow the id grammar;
* sequences continue per branch: 1, 2, 3 ... (a gap, a repeated sequence and a repeated
  ``event_id`` are each reported);
* the file ends with a newline (otherwise the last line is a torn write);

and then the files under ``<root>/index/<sid>/``:

* every entry of ``<branch>.idx2`` (entry *n* holds the offset, length and CRC32C of
  sequence *n*) points at exactly the line that holds that sequence, and the line's bytes
  still have that checksum (a mismatch is reported at the line: ``file:line``);
* ``committed`` (the committed-length hint) is not beyond the end of the file, and falls on
  a line boundary.

Findings have a severity. An *error* is damage or a violation of the format. A *note* is a
state the journal repairs by itself and that loses nothing: a missing or short index (readers
fall back to a scan, the next writer or ``journal rebuild`` rewrites it; an index in the
previous layout, ``<branch>.idx`` without checksums, counts as missing) or index entries past
the branch's last line (left by a writer that died; the next append cuts them). Every finding
is reported; verification never stops at the first.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec

from journal._model.ids import validate_id
from journal._model.records import EventRecord
from journal._storage.session_file import (
    HINT,
    INDEX_ENTRY,
    INDEX_SUFFIX,
    OLD_INDEX_SUFFIX,
    checksum_of,
    iter_lines,
)
from journal.cli.lifecycle import verify_hook, verify_sessions
from journal.errors import InvalidId, InvalidRecord, JournalError
from journal.kinds import validate_kind

__all__ = ["Finding", "Report", "verify", "verify_report"]

Severity = Literal["error", "note"]

# The index layout is session_file.py's: (offset u64, length u32, crc32c u32) per sequence,
# and the hint.
_ENTRY = INDEX_ENTRY
_HINT = HINT
_MAX_SHOWN = 120  # characters of a decoder message kept in a finding

_record_decoder = msgspec.json.Decoder(EventRecord)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: ``path:line: problem``. ``line`` is 0 for a whole-file finding; for an
    index file it is the entry number, which is also the sequence the entry describes."""

    path: str
    line: int
    problem: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "note: " if self.severity == "note" else ""
        return f"{self.path}:{self.line}: {prefix}{self.problem}"


@dataclass(slots=True)
class Report:
    """Everything :func:`verify_report` found, and how much it looked at."""

    findings: list[Finding] = field(default_factory=list)
    sessions: int = 0
    lines: int = 0  # event lines read (valid or not), blank lines excluded

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "note"]


@dataclass(slots=True)
class _Branch:
    """Where each sequence of one branch sits in the file; compact arrays, since a session
    may hold millions of lines."""

    offsets: array[int] = field(default_factory=lambda: array("Q"))
    lengths: array[int] = field(default_factory=lambda: array("Q"))
    lines: array[int] = field(default_factory=lambda: array("Q"))
    checksums: array[int] = field(default_factory=lambda: array("Q"))

    @property
    def head(self) -> int:
        return len(self.offsets)

    def skip(self) -> None:
        """A sequence with no line (a gap, or below a truncation point)."""
        self.offsets.append(0)
        self.lengths.append(0)
        self.lines.append(0)
        self.checksums.append(0)


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """``(offset, line without newline, complete)``; the last line may be incomplete."""
    fd = os.open(path, os.O_RDONLY)
    try:
        yield from iter_lines(fd, 0)
    finally:
        os.close(fd)


class _SessionCheck:
    """All checks of one session file and its index directory."""

    def __init__(self, root: Path, session_id: str, report: Report) -> None:
        self.session_id = session_id
        self.path = root / "events" / f"{session_id}.jsonl"
        self.index_dir = root / "index" / session_id
        self.report = report
        self.shown = str(self.path)
        self.branches: dict[str, _Branch] = {}
        self.event_lines: dict[str, int] = {}
        self.size = 0
        self.hint: int | None = None
        self.line_starts: set[int] = {0}

    def add(self, path: Path | str, line: int, problem: str, severity: Severity = "error") -> None:
        self.report.findings.append(Finding(str(path), line, problem, severity))

    Branch = _Branch

    def run(self) -> None:
        if verify_hook(self):  # deleted or archived sessions; truncation points (issue 14)
            return
        try:
            self.size = self.path.stat().st_size
        except FileNotFoundError:
            self.add(self.shown, 0, "no such session file")
            return
        self.hint = self._read_hint()
        try:
            self._check_lines()
        except OSError as exc:
            self.add(self.shown, 0, f"cannot read the file: {exc.strerror or exc}")
            return
        self._check_hint()
        self._check_indexes()

    # ----- the event lines ------------------------------------------------------------------

    def _committed_note(self, offset: int) -> str:
        # The reader refuses a bad line below the hint (corruption), while beyond it tail
        # recovery cuts it on the next append: say which case this is.
        if self.hint is not None and offset < self.hint:
            return " (inside the committed region)"
        return ""

    def _check_lines(self) -> None:
        lineno = 0
        for offset, raw, complete in _iter_lines(self.path):
            lineno += 1
            if complete:
                self.line_starts.add(offset + len(raw) + 1)
            if not raw.strip():
                continue
            self.report.lines += 1
            if not complete:
                self.add(
                    self.shown,
                    lineno,
                    f"torn tail: the last line ({len(raw)} bytes) has no newline"
                    + self._committed_note(offset),
                )
                continue
            record = self._decode(lineno, offset, raw)
            if record is not None:
                self._check_record(lineno, offset, raw, record)

    def _decode(self, lineno: int, offset: int, raw: bytes) -> EventRecord | None:
        where = self._committed_note(offset)
        try:
            value = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            self.add(self.shown, lineno, f"invalid JSON: {_short(exc)}{where}")
            return None
        if not isinstance(value, dict):
            self.add(self.shown, lineno, f"not a JSON object: {type(value).__name__}{where}")
            return None
        try:
            record = _record_decoder.decode(raw)
        except (msgspec.ValidationError, JournalError) as exc:
            self.add(self.shown, lineno, f"not a valid event record: {_short(exc)}{where}")
            return None
        try:
            validate_kind(record.kind)
        except InvalidRecord as exc:
            # Still a record: keep checking its position, so one bad kind does not also
            # show up as a gap on the next line.
            self.add(self.shown, lineno, f"{_short(exc)}{where}")
        return record

    def _check_record(self, lineno: int, offset: int, raw: bytes, record: EventRecord) -> None:
        for value, what in ((record.session_id, "session_id"), (record.branch_id, "branch_id")):
            try:
                validate_id(value, what)
            except InvalidId as exc:
                self.add(self.shown, lineno, str(exc))
                return
        if record.session_id != self.session_id:
            self.add(
                self.shown,
                lineno,
                f"session_id {record.session_id!r} does not match the file name "
                f"({self.session_id!r})",
            )
            return
        first_line = self.event_lines.get(record.event_id)
        branch = self.branches.setdefault(record.branch_id, _Branch())
        expected = branch.head + 1
        if record.sequence < expected:
            earlier = branch.lines[record.sequence - 1]
            if earlier == 0:  # inside a gap reported earlier: the line is out of order
                self.add(
                    self.shown,
                    lineno,
                    f"out of order: branch {record.branch_id} sequence {record.sequence} "
                    f"after sequence {branch.head}, expected {expected}",
                )
                return
            same = first_line == earlier
            self.add(
                self.shown,
                lineno,
                f"duplicate: branch {record.branch_id} sequence {record.sequence} already at "
                f"line {earlier}" + (" (same event_id)" if same else "") + f", expected {expected}",
            )
            return
        if first_line is not None:
            self.add(
                self.shown,
                lineno,
                f"duplicate event_id {record.event_id!r} (first at line {first_line})",
            )
        if record.sequence > expected:
            missing = (
                str(expected) if record.sequence == expected + 1
                else f"{expected}..{record.sequence - 1}"
            )
            self.add(
                self.shown,
                lineno,
                f"gap: branch {record.branch_id} sequence {record.sequence}, expected "
                f"{expected} (missing {missing})",
            )
            # Go on from here so that one gap is one finding, not one per following line.
            # The skipped sequences have no line: index entries for them are not checked.
            while branch.head + 1 < record.sequence:
                branch.skip()
        self.event_lines.setdefault(record.event_id, lineno)
        branch.offsets.append(offset)
        branch.lengths.append(len(raw) + 1)
        branch.lines.append(lineno)
        branch.checksums.append(checksum_of(raw))

    # ----- the committed hint ---------------------------------------------------------------

    def _read_hint(self) -> int | None:
        path = self.index_dir / "committed"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.add(path, 0, f"cannot read the committed hint: {exc.strerror or exc}")
            return None
        if len(raw) != _HINT.size:
            self.add(path, 0, f"the committed hint is {len(raw)} bytes, expected {_HINT.size}")
            return None
        value: int = _HINT.unpack(raw)[0]
        return value

    def _check_hint(self) -> None:
        if self.hint is None:
            return
        path = self.index_dir / "committed"
        if self.hint > self.size:
            self.add(
                path,
                0,
                f"the committed hint is {self.hint} bytes but {self.shown} has only "
                f"{self.size}: committed data is missing from the file",
            )
        elif self.hint not in self.line_starts:
            self.add(path, 0, f"the committed hint {self.hint} is not at a line boundary")

    # ----- the index ------------------------------------------------------------------------

    def _check_indexes(self) -> None:
        indexed: set[str] = set()
        old: set[str] = set()
        if self.index_dir.is_dir():
            for idx in sorted(self.index_dir.glob(f"*{INDEX_SUFFIX}")):
                branch_id = idx.name.removesuffix(INDEX_SUFFIX)
                indexed.add(branch_id)
                self._check_index(idx, self.branches.get(branch_id))
            old = {p.name.removesuffix(OLD_INDEX_SUFFIX)
                   for p in self.index_dir.glob(f"*{OLD_INDEX_SUFFIX}")}
        for branch_id in sorted(set(self.branches) - indexed):
            layout = (f" (only {branch_id}{OLD_INDEX_SUFFIX}, the previous layout without "
                      "checksums)" if branch_id in old else "")
            self.add(
                self.index_dir / f"{branch_id}{INDEX_SUFFIX}",
                0,
                f"no index for branch {branch_id} ({self.branches[branch_id].head} events)"
                f"{layout}; reads scan the file until the next append or `journal rebuild` "
                "writes it",
                "note",
            )

    def _check_index(self, idx: Path, branch: _Branch | None) -> None:
        try:
            raw = idx.read_bytes()
        except OSError as exc:
            self.add(idx, 0, f"cannot read the index: {exc.strerror or exc}")
            return
        if branch is None:
            self.add(idx, 0, f"index of a branch with no line in {self.shown}", "note")
            return
        whole, rest = divmod(len(raw), _ENTRY.size)
        if rest:
            self.add(
                idx,
                whole + 1,
                f"partial entry ({rest} bytes) at the end of the index",
                "note",
            )
        entries = _ENTRY.iter_unpack(raw[: whole * _ENTRY.size])
        for number, (offset, length, crc) in enumerate(entries, start=1):
            if number > branch.head:
                self.add(
                    idx,
                    number,
                    f"{whole - branch.head} entries past the branch's last line "
                    f"(sequence {branch.head}), left by a writer that died or by a truncated file",
                    "note",
                )
                break
            want_offset, want_length = branch.offsets[number - 1], branch.lengths[number - 1]
            if want_length == 0:
                continue  # a sequence missing from the file: reported as a gap already
            if (offset, length) != (want_offset, want_length):
                self.add(
                    idx,
                    number,
                    f"entry for sequence {number} points at offset {offset} length {length}, "
                    f"but that sequence is line {branch.lines[number - 1]} at offset "
                    f"{want_offset} length {want_length}",
                )
            elif crc != branch.checksums[number - 1]:
                # The entry describes exactly this line, and the bytes changed since they were
                # written (a flipped letter that still decodes): the reader refuses this line.
                self.add(
                    self.shown,
                    branch.lines[number - 1],
                    f"checksum mismatch: branch {idx.name.removesuffix(INDEX_SUFFIX)} sequence "
                    f"{number}: the line's bytes are not those written (CRC32C "
                    f"{branch.checksums[number - 1]:08x}, {idx.name} entry {number} holds "
                    f"{crc:08x})" + self._committed_note(want_offset),
                )
        if whole < branch.head:
            self.add(
                idx,
                whole + 1,
                f"the index stops at sequence {whole} but the branch goes to {branch.head}; "
                "reads beyond it scan the file until the next append or `journal rebuild`",
                "note",
            )


def _all_sessions(root: Path) -> list[str]:
    events = root / "events"
    if not events.is_dir():
        return []
    names = {p.name.removesuffix(".jsonl") for p in events.glob("*.jsonl")}
    return sorted(names | verify_sessions(root))


def verify_report(
    root: str | os.PathLike[str], sessions: Iterable[str] | None = None
) -> Report:
    """Check the files of ``sessions`` (default: every session under ``root``)."""
    base = Path(root)
    report = Report()
    names = _all_sessions(base) if sessions is None else list(sessions)
    for session_id in names:
        report.sessions += 1
        try:
            validate_id(session_id, "session_id")
        except InvalidId as exc:
            report.findings.append(Finding(str(base / "events" / f"{session_id}.jsonl"), 0,
                                           str(exc)))
            continue
        _SessionCheck(base, session_id, report).run()
    return report


def verify(root: str | os.PathLike[str], sessions: Iterable[str] | None = None) -> list[Finding]:
    """Every finding (errors and notes) for ``sessions`` (default: all) under ``root``."""
    return verify_report(root, sessions).findings
