"""Tests of journal.kinds: the 87 typed kinds, validate_kind and kind_to_dict."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
import pytest

from journal.errors import InvalidRecord
from journal.kinds import (
    KNOWN_KINDS,
    IntentApproved,
    IntentEvaluated,
    IntentRejected,
    KindBase,
    ModeChanged,
    PhaseEntered,
    RunFinished,
    TokenUsage,
    kind_to_dict,
    validate_kind,
)

REPO = Path(__file__).resolve().parents[1]
FORMAT_MD = REPO / "docs" / "format.md"
SAMPLE = REPO / "tests" / "fixtures" / "aios-sample.jsonl"

KERNEL_TAGS = [
    "KernelVmCreated",
    "KernelVmForked",
    "KernelVmSnapshotted",
    "KernelVmHibernated",
    "KernelVmResumed",
    "KernelVmDestroyed",
    "KernelDispatchStarted",
    "KernelDispatchCompleted",
    "KernelDispatchDenied",
    "KernelForkDenied",
    "KernelEgressRecorded",
    "KernelPolicyViolated",
    "KernelUsageRecorded",
]


# ─── Helpers: build a valid value for each field from the struct's own type info ──────────


def _sample(t: msgspec.inspect.Type, *, full: bool) -> Any:
    """A valid builtin value of type ``t`` (optionals filled in when ``full``)."""
    if isinstance(t, msgspec.inspect.IntType):
        return 3
    if isinstance(t, msgspec.inspect.FloatType):
        return 0.5
    if isinstance(t, msgspec.inspect.StrType):
        return "s"
    if isinstance(t, msgspec.inspect.BoolType):
        return True
    if isinstance(t, msgspec.inspect.LiteralType):
        return t.values[-1]
    if isinstance(t, msgspec.inspect.AnyType):
        return {"k": [1, None, "x"]}
    if isinstance(t, msgspec.inspect.DictType):
        return {"a": 1}
    if isinstance(t, msgspec.inspect.ListType):
        return ["because"]
    if isinstance(t, msgspec.inspect.StructType):
        return {f.encode_name: _sample(f.type, full=full) for f in t.fields}
    if isinstance(t, msgspec.inspect.UnionType):
        (inner,) = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        return _sample(inner, full=full)
    raise AssertionError(f"no sample for {t!r}")


def _sample_kind(tag: str, *, full: bool) -> dict[str, Any]:
    """A valid kind as it is written: required fields (all fields when ``full``).

    On a struct that writes its defaults (IntentEvaluated, IntentRejected) the written form
    also holds each default, so it is expected here too.
    """
    info = msgspec.inspect.type_info(KNOWN_KINDS[tag])
    assert isinstance(info, msgspec.inspect.StructType)
    out: dict[str, Any] = {"type": tag}
    for f in info.fields:
        if f.required or full:
            out[f.encode_name] = _sample(f.type, full=full)
        elif not KNOWN_KINDS[tag].__struct_config__.omit_defaults:
            default = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
            out[f.encode_name] = default
    return out


def _fields(tag: str) -> list[msgspec.inspect.Field]:
    info = msgspec.inspect.type_info(KNOWN_KINDS[tag])
    assert isinstance(info, msgspec.inspect.StructType)
    return list(info.fields)


def _with(tag: str, **changes: Any) -> dict[str, Any]:
    kind = _sample_kind(tag, full=False)
    kind.update(changes)
    return kind


# ─── The registry ──────────────────────────────────────────────────────────────────────────


def test_there_are_87_known_kinds() -> None:
    assert len(KNOWN_KINDS) == 87
    assert len(set(KNOWN_KINDS.values())) == 87
    assert all(issubclass(cls, KindBase) for cls in KNOWN_KINDS.values())
    assert "Custom" in KNOWN_KINDS
    assert [t for t in KNOWN_KINDS if t.startswith("Kernel")] == KERNEL_TAGS


def test_tags_match_class_names_and_every_subclass_is_registered() -> None:
    for tag, cls in KNOWN_KINDS.items():
        assert cls.__name__ == tag
        assert cls.__struct_config__.tag == tag
        assert cls.__struct_config__.tag_field == "type"
    # Every kind this module defines is registered (subclasses made elsewhere are not ours).
    defined_here = {c for c in KindBase.__subclasses__() if c.__module__ == "journal.kinds"}
    assert defined_here == set(KNOWN_KINDS.values())


def test_fields_match_format_md() -> None:
    """Field names, order and optionality agree with the list in docs/format.md."""
    text = FORMAT_MD.read_text(encoding="utf-8")
    section = text.split("## The 87 kinds", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, list[tuple[str, bool]]] = {}
    for name, body in re.findall(r"(\w+)\{([^}]*)\}", section):
        if body.startswith("same as "):
            documented[name] = documented[body.removeprefix("same as ").strip()]
            continue
        fields = []
        for part in filter(None, (p.strip() for p in body.split(","))):
            fname = part.split(":", 1)[0]
            fields.append((fname.rstrip("?"), fname.endswith("?")))
        documented[name] = fields
    for tag in KERNEL_TAGS:
        assert tag in section
        documented[tag] = []
    assert set(documented) == set(KNOWN_KINDS)
    for tag, fields in documented.items():
        ours = [(f.encode_name, not f.required) for f in _fields(tag)]
        assert ours == fields, tag


# ─── Typed variants through kind_to_dict ───────────────────────────────────────────────────


@pytest.mark.parametrize("tag", list(KNOWN_KINDS))
@pytest.mark.parametrize("full", [False, True], ids=["required", "all-fields"])
def test_every_kind_round_trips(tag: str, full: bool) -> None:
    sample = _sample_kind(tag, full=full)
    typed = msgspec.convert(sample, KNOWN_KINDS[tag])
    assert kind_to_dict(typed) == sample
    assert list(kind_to_dict(typed)) == list(sample)  # "type" first, docs/format.md order
    assert validate_kind(sample) == sample
    # And back again: the written object decodes to the same typed value.
    assert msgspec.json.decode(msgspec.json.encode(sample), type=KNOWN_KINDS[tag]) == typed


def test_phase_entered_typed_variant() -> None:
    assert kind_to_dict(PhaseEntered(phase="perceive")) == {
        "type": "PhaseEntered",
        "phase": "perceive",
    }


def test_optional_none_fields_are_omitted() -> None:
    assert kind_to_dict(RunFinished(reason="done", total_iterations=2)) == {
        "type": "RunFinished",
        "reason": "done",
        "total_iterations": 2,
    }
    assert kind_to_dict(IntentApproved(intent_id="i1")) == {
        "type": "IntentApproved",
        "intent_id": "i1",
    }


def test_token_usage_is_written_whole() -> None:
    out = kind_to_dict(RunFinished(reason="r", total_iterations=1, usage=TokenUsage()))
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_token_usage_fields_default_to_zero_on_validation() -> None:
    kind = {"type": "RunFinished", "reason": "r", "total_iterations": 1, "usage": {}}
    assert validate_kind(kind) == kind


def test_reasons_written_as_empty_list() -> None:
    evaluated = IntentEvaluated(intent_id="i1", allowed=True, requires_approval=False)
    assert kind_to_dict(evaluated) == {
        "type": "IntentEvaluated",
        "intent_id": "i1",
        "allowed": True,
        "requires_approval": False,
        "reasons": [],
    }
    assert kind_to_dict(IntentRejected(intent_id="i2")) == {
        "type": "IntentRejected",
        "intent_id": "i2",
        "reasons": [],
    }


def test_reasons_may_be_missing_in_a_mapping() -> None:
    kind = {"type": "IntentRejected", "intent_id": "i2"}
    assert validate_kind(kind) == kind  # returned unchanged: not filled in


def test_mode_changed_uses_from() -> None:
    out = kind_to_dict(ModeChanged(from_="explore", to="ask_human", reason="stuck"))
    assert out == {"type": "ModeChanged", "from": "explore", "to": "ask_human", "reason": "stuck"}
    kind = {"type": "ModeChanged", "from": "verify", "to": "recover", "reason": "r"}
    assert validate_kind(kind) == kind
    with pytest.raises(InvalidRecord, match="invalid ModeChanged kind"):
        validate_kind({"type": "ModeChanged", "from_": "verify", "to": "recover", "reason": "r"})


def test_typed_variant_with_bad_values_is_refused() -> None:
    # Struct constructors do not check types, so kind_to_dict must.
    with pytest.raises(InvalidRecord, match="invalid PhaseEntered kind"):
        kind_to_dict(PhaseEntered(phase="nap"))  # type: ignore[arg-type]
    with pytest.raises(InvalidRecord, match="invalid RunFinished kind"):
        kind_to_dict(RunFinished(reason="r", total_iterations=-1))


# ─── Strict validation of known kinds ──────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("kind", "tag"),
    [
        # enum violations
        ({"type": "PhaseEntered", "phase": "Perceive"}, "PhaseEntered"),
        (_with("ToolCallCompleted", status="success"), "ToolCallCompleted"),
        (_with("ApprovalRequested", risk="extreme"), "ApprovalRequested"),
        (_with("ApprovalResolved", decision="maybe"), "ApprovalResolved"),
        (_with("SnapshotCreated", snapshot_type="partial"), "SnapshotCreated"),
        (_with("PolicyEvaluated", decision="requireApproval"), "PolicyEvaluated"),
        (_with("Queued", mode="later"), "Queued"),
        (_with("ObservationAppended", scope="global"), "ObservationAppended"),
        (_with("StateEstimated", mode="askHuman"), "StateEstimated"),
        (_with("IntentProposed", risk="none"), "IntentProposed"),
        # missing required fields
        ({"type": "PhaseEntered"}, "PhaseEntered"),
        ({"type": "UserMessage"}, "UserMessage"),
        ({"type": "Custom", "event_type": "x"}, "Custom"),
        ({"type": "Custom", "data": {}}, "Custom"),
        ({"type": "SessionCreated", "name": "n"}, "SessionCreated"),
        ({"type": "ModeChanged", "to": "sleep", "reason": "r"}, "ModeChanged"),
        # wrong types
        ({"type": "UserMessage", "content": 5}, "UserMessage"),
        ({"type": "UserMessage", "content": None}, "UserMessage"),
        (_with("IntentEvaluated", allowed="yes"), "IntentEvaluated"),
        (_with("IntentEvaluated", allowed=1), "IntentEvaluated"),
        (_with("IntentEvaluated", reasons="because"), "IntentEvaluated"),
        (_with("IntentEvaluated", reasons=[1]), "IntentEvaluated"),
        (_with("IntentRejected", reasons=None), "IntentRejected"),
        (_with("StatePatchCommitted", patch=[1, 2]), "StatePatchCommitted"),
        (_with("StateEstimated", state="s"), "StateEstimated"),
        (_with("BudgetUpdated", budget=None), "BudgetUpdated"),
        (_with("RunFinished", usage={"prompt_tokens": "1"}), "RunFinished"),
        (_with("RunFinished", usage=[1, 2, 3]), "RunFinished"),
        (_with("KnowledgeSearched", top_relevance="0.9"), "KnowledgeSearched"),
        (_with("KnowledgeSearched", top_relevance=True), "KnowledgeSearched"),
        (_with("WorldModelRollout", score="high"), "WorldModelRollout"),
        # string, float or bool for an int
        (_with("StepStarted", index="1"), "StepStarted"),
        (_with("StepStarted", index=1.0), "StepStarted"),
        (_with("StepStarted", index=True), "StepStarted"),
        (_with("SandboxExecuted", exit_code="0"), "SandboxExecuted"),
        (_with("TextDelta", index="2"), "TextDelta"),
        # negative ints
        (_with("StepStarted", index=-1), "StepStarted"),
        (_with("BranchCreated", fork_point_seq=-4), "BranchCreated"),
        (_with("SandboxExecuted", duration_ms=-1), "SandboxExecuted"),
        (_with("AssistantTextDelta", index=-1), "AssistantTextDelta"),
        (_with("RunFinished", usage={"total_tokens": -1}), "RunFinished"),
    ],
)
def test_invalid_known_kinds_are_refused(kind: dict[str, Any], tag: str) -> None:
    with pytest.raises(InvalidRecord, match=rf"^invalid {tag} kind: "):
        validate_kind(kind)
    with pytest.raises(InvalidRecord, match=rf"^invalid {tag} kind: "):
        kind_to_dict(kind)


def test_error_message_names_the_field() -> None:
    with pytest.raises(InvalidRecord) as info:
        validate_kind({"type": "StepStarted", "index": "1"})
    assert "index" in str(info.value)
    assert "StepStarted" in str(info.value)


def test_exit_code_may_be_negative() -> None:
    kind = _with("SandboxExecuted", exit_code=-9)
    assert validate_kind(kind) == kind


def test_int_accepted_for_float_field() -> None:
    kind = {
        "type": "KnowledgeSearched",
        "query": "q",
        "result_count": 0,
        "top_relevance": 1,
        "duration_ms": 3,
    }
    out = validate_kind(kind)
    assert out == kind
    assert type(out["top_relevance"]) is int  # unchanged, not coerced to 1.0


def test_null_optional_is_accepted_and_kept() -> None:
    kind = {"type": "DeliberationProposed", "summary": "s", "proposed_tool": None}
    assert validate_kind(kind) == kind


def test_json_fields_accept_any_json_value_including_null() -> None:
    for value in (None, 1, "s", [1, {"a": None}], {"x": 1.5}, True):
        kind = {"type": "Custom", "event_type": "my.thing", "data": value}
        assert validate_kind(kind) == kind


def test_kernel_kinds_are_open_objects() -> None:
    for tag in KERNEL_TAGS:
        assert _fields(tag) == []
        bare = {"type": tag}
        assert validate_kind(bare) == bare
        kind = {"type": tag, "vm_id": "vm-1", "nested": {"a": [1, None]}, "n": -3}
        out = validate_kind(kind)
        assert list(out.items()) == list(kind.items())


# ─── Lossless: the mapping comes back unchanged ────────────────────────────────────────────


def test_extra_fields_on_known_kind_are_kept_in_order() -> None:
    kind = {
        "type": "PhaseEntered",
        "zeta": 1,
        "phase": "gate",
        "alpha": {"b": [2, None]},
        "mid": None,
    }
    out = validate_kind(kind)
    assert list(out.items()) == list(kind.items())
    assert out is not kind
    assert type(out) is dict


def test_values_are_not_coerced_or_rebuilt() -> None:
    usage = {"total_tokens": 7, "custom": "kept"}
    kind = {"type": "Message", "role": "assistant", "content": "c", "token_usage": usage}
    out = validate_kind(kind)
    assert out["token_usage"] is usage  # the same object: nothing re-serialized
    assert kind == {"type": "Message", "role": "assistant", "content": "c", "token_usage": usage}


def test_unknown_tag_is_returned_unchanged() -> None:
    kind = {"type": "FutureKind", "x": [1, {"y": None}]}
    out = validate_kind(kind)
    assert out == {"type": "FutureKind", "x": [1, {"y": None}]}
    assert list(out) == ["type", "x"]
    assert kind_to_dict(kind) == kind


def test_unknown_tag_with_anything_is_accepted() -> None:
    kind = {"z": 1, "type": "Phaseentered", "phase": 42}
    assert list(validate_kind(kind).items()) == list(kind.items())


def test_any_mapping_becomes_a_plain_dict() -> None:
    proxy = MappingProxyType({"type": "UserMessage", "content": "hi"})
    out = validate_kind(proxy)
    assert type(out) is dict
    assert out == {"type": "UserMessage", "content": "hi"}
    assert kind_to_dict(proxy) == out


# ─── Malformed input ───────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "kind",
    [
        {"phase": "perceive"},
        {},
        {"type": 5, "phase": "perceive"},
        {"type": None},
        {"type": ["PhaseEntered"]},
    ],
)
def test_kind_without_string_type_is_refused(kind: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecord, match='"type"'):
        validate_kind(kind)
    with pytest.raises(InvalidRecord, match='"type"'):
        kind_to_dict(kind)


@pytest.mark.parametrize("kind", [None, "PhaseEntered", 3, ["type", "PhaseEntered"], b"{}"])
def test_non_mapping_is_refused(kind: Any) -> None:
    with pytest.raises(InvalidRecord):
        validate_kind(kind)
    with pytest.raises(InvalidRecord):
        kind_to_dict(kind)


def test_invalid_record_is_a_journal_error() -> None:
    from journal.errors import JournalError

    with pytest.raises(JournalError):
        validate_kind({"type": "PhaseEntered", "phase": "nap"})


# ─── The aiOS sample (tests/fixtures) ───────────────────────────────────────────────────────


def _sample_lines() -> list[str]:
    return [line for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_sample_has_lines() -> None:
    assert _sample_lines()


@pytest.mark.parametrize("line", _sample_lines())
def test_sample_kinds_pass_unchanged(line: str) -> None:
    kind = json.loads(line)["kind"]
    original = json.dumps(kind)
    out = validate_kind(kind)
    assert json.dumps(out) == original  # same keys, values and order
    assert msgspec.json.encode(out) == msgspec.json.encode(json.loads(original))
