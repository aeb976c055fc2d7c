"""The ``kind`` payload of an aiOS event record: typed variants and the write-side check.

A record's ``kind`` is a JSON object internally tagged by ``"type"`` (see docs/format.md,
"kind" and "The 87 kinds"). This module gives one tagged :class:`msgspec.Struct` per known
tag so callers can build kinds with type checking, and two functions used on the write path:

* :func:`validate_kind` is the strict check. A known tag must carry its required fields with
  the right JSON types and enum values, because the Rust reader silently downgrades a
  malformed known kind to ``Custom``; refusing it up front keeps journals readable by aiOS.
  It returns the caller's mapping as a plain dict, untouched: user kinds are never
  re-serialized through a struct, so extra fields, key order and unknown tags survive.
* :func:`kind_to_dict` turns a typed variant or a mapping into that validated JSON object.

The structs are used only to *check* mappings (``msgspec.convert``) and to *build* new kinds;
the lossless path never goes through them. That is also why the 13 ``Kernel*`` kinds have no
declared fields: they are open objects and their fields live in the mapping.
"""

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeAlias

import msgspec

from journal.errors import InvalidRecord

__all__ = [
    "KNOWN_KINDS",
    "ApprovalDecision",
    "ApprovalRequested",
    "ApprovalResolved",
    "AssistantMessageCommitted",
    "AssistantTextDelta",
    "BranchCreated",
    "BranchMerged",
    "BudgetUpdated",
    "CheckpointCreated",
    "CheckpointRestored",
    "CircuitBreakerTripped",
    "ContextCompacted",
    "Custom",
    "DeliberationProposed",
    "ErrorRaised",
    "ExternalSignal",
    "FileDelete",
    "FileMutated",
    "FileRename",
    "FileWrite",
    "GatesUpdated",
    "Heartbeat",
    "HiveArtifactShared",
    "HiveGenerationCompleted",
    "HiveSelectionMade",
    "HiveTaskCompleted",
    "HiveTaskCreated",
    "IntentApproved",
    "IntentEvaluated",
    "IntentProposed",
    "IntentRejected",
    "KernelDispatchCompleted",
    "KernelDispatchDenied",
    "KernelDispatchStarted",
    "KernelEgressRecorded",
    "KernelForkDenied",
    "KernelPolicyViolated",
    "KernelUsageRecorded",
    "KernelVmCreated",
    "KernelVmDestroyed",
    "KernelVmForked",
    "KernelVmHibernated",
    "KernelVmResumed",
    "KernelVmSnapshotted",
    "KindBase",
    "KnowledgeEvaluated",
    "KnowledgeRetrieved",
    "KnowledgeSearched",
    "LoopPhase",
    "MemoryCommitted",
    "MemoryProposed",
    "MemoryScope",
    "MemoryTombstoned",
    "Message",
    "ModeChanged",
    "ObservationAppended",
    "OperatingMode",
    "PhaseEntered",
    "PolicyDecisionKind",
    "PolicyEvaluated",
    "QueueDrained",
    "Queued",
    "ReflectionCompacted",
    "RiskLevel",
    "RunErrored",
    "RunFinished",
    "RunStarted",
    "SandboxCreated",
    "SandboxDestroyed",
    "SandboxExecuted",
    "SandboxViolation",
    "SessionClosed",
    "SessionCreated",
    "SessionResumed",
    "SnapshotCreated",
    "SnapshotType",
    "SpanStatus",
    "StateEstimated",
    "StatePatchCommitted",
    "StatePatched",
    "Steered",
    "SteeringMode",
    "StepFinished",
    "StepStarted",
    "TextDelta",
    "TokenUsage",
    "ToolCallCompleted",
    "ToolCallFailed",
    "ToolCallRequested",
    "ToolCallStarted",
    "UserMessage",
    "VoiceAdapterError",
    "VoiceInputChunk",
    "VoiceOutputChunk",
    "VoiceSessionStarted",
    "VoiceSessionStopped",
    "WorldModelObserved",
    "WorldModelRollout",
    "kind_to_dict",
    "validate_kind",
]

# ─── Scalar and enumeration types ─────────────────────────────────────────────

# aiOS integers are unsigned Rust ints (u8..u64): a negative value would make the Rust
# reader drop the whole kind to Custom, so it is refused on write. There is no upper bound:
# msgspec constraints stop at int64, and capping at i64::MAX would refuse valid u64 values.
NonNegInt: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]

# Enumerations, written in snake_case as serde's rename_all = "snake_case" does.
LoopPhase: TypeAlias = Literal[
    "perceive", "deliberate", "gate", "execute", "commit", "reflect", "sleep"
]
SpanStatus: TypeAlias = Literal["ok", "error", "timeout", "cancelled"]
RiskLevel: TypeAlias = Literal["low", "medium", "high", "critical"]
ApprovalDecision: TypeAlias = Literal["approved", "denied", "timeout"]
SnapshotType: TypeAlias = Literal["full", "incremental"]
PolicyDecisionKind: TypeAlias = Literal["allow", "deny", "require_approval"]
SteeringMode: TypeAlias = Literal["collect", "steer", "followup", "interrupt"]
MemoryScope: TypeAlias = Literal["session", "user", "agent", "org"]
OperatingMode: TypeAlias = Literal["explore", "execute", "verify", "recover", "ask_human", "sleep"]


class TokenUsage(msgspec.Struct, kw_only=True):
    """LLM token counts. Every field defaults to 0 and is always written, as in aiOS."""

    prompt_tokens: NonNegInt = 0
    completion_tokens: NonNegInt = 0
    total_tokens: NonNegInt = 0


class KindBase(
    msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True, forbid_unknown_fields=False
):
    """Base of every typed kind.

    ``omit_defaults`` leaves out ``None`` optionals, matching serde's
    ``skip_serializing_if = "Option::is_none"``. Unknown fields are allowed so that a mapping
    with extra fields still validates (the extras are kept by :func:`validate_kind`).
    """


# ─── Input / sensing ──────────────────────────────────────────────────────────


class UserMessage(KindBase, tag="UserMessage"):
    content: str


class ExternalSignal(KindBase, tag="ExternalSignal"):
    signal_type: str
    data: Any


# ─── Session and branch lifecycle ─────────────────────────────────────────────


class SessionCreated(KindBase, tag="SessionCreated"):
    name: str
    config: Any


class SessionResumed(KindBase, tag="SessionResumed"):
    from_snapshot: str | None = None


class SessionClosed(KindBase, tag="SessionClosed"):
    reason: str


class BranchCreated(KindBase, tag="BranchCreated"):
    new_branch_id: str
    fork_point_seq: NonNegInt
    name: str


class BranchMerged(KindBase, tag="BranchMerged"):
    source_branch_id: str
    merge_seq: NonNegInt


# ─── Loop phases ──────────────────────────────────────────────────────────────


class PhaseEntered(KindBase, tag="PhaseEntered"):
    phase: LoopPhase


class DeliberationProposed(KindBase, tag="DeliberationProposed"):
    summary: str
    proposed_tool: str | None = None


# ─── Runs and steps ───────────────────────────────────────────────────────────


class RunStarted(KindBase, tag="RunStarted"):
    provider: str
    max_iterations: NonNegInt


class RunFinished(KindBase, tag="RunFinished"):
    reason: str
    total_iterations: NonNegInt
    final_answer: str | None = None
    usage: TokenUsage | None = None


class RunErrored(KindBase, tag="RunErrored"):
    error: str


class StepStarted(KindBase, tag="StepStarted"):
    index: NonNegInt


class StepFinished(KindBase, tag="StepFinished"):
    index: NonNegInt
    stop_reason: str
    directive_count: NonNegInt


# ─── Text streaming and messages ──────────────────────────────────────────────


class AssistantTextDelta(KindBase, tag="AssistantTextDelta"):
    delta: str
    index: NonNegInt | None = None


class AssistantMessageCommitted(KindBase, tag="AssistantMessageCommitted"):
    role: str
    content: str
    model: str | None = None
    token_usage: TokenUsage | None = None


class TextDelta(KindBase, tag="TextDelta"):
    delta: str
    index: NonNegInt | None = None


class Message(KindBase, tag="Message"):
    role: str
    content: str
    model: str | None = None
    token_usage: TokenUsage | None = None


# ─── Tools ────────────────────────────────────────────────────────────────────


class ToolCallRequested(KindBase, tag="ToolCallRequested"):
    call_id: str
    tool_name: str
    arguments: Any
    category: str | None = None


class ToolCallStarted(KindBase, tag="ToolCallStarted"):
    tool_run_id: str
    tool_name: str


class ToolCallCompleted(KindBase, tag="ToolCallCompleted", kw_only=True):
    # kw_only is per class in msgspec; needed here because an optional field precedes
    # required ones (docs/format.md order is kept, since it is the serialized order).
    tool_run_id: str
    call_id: str | None = None
    tool_name: str
    result: Any
    duration_ms: NonNegInt
    status: SpanStatus


class ToolCallFailed(KindBase, tag="ToolCallFailed"):
    call_id: str
    tool_name: str
    error: str


# ─── Knowledge ────────────────────────────────────────────────────────────────


class KnowledgeSearched(KindBase, tag="KnowledgeSearched"):
    query: str
    result_count: NonNegInt
    top_relevance: float
    duration_ms: NonNegInt


class KnowledgeRetrieved(KindBase, tag="KnowledgeRetrieved"):
    note_count: NonNegInt
    context_tokens: NonNegInt
    source: str


class KnowledgeEvaluated(KindBase, tag="KnowledgeEvaluated"):
    health_score: float
    note_count: NonNegInt
    contradictions: NonNegInt
    missing_pages: NonNegInt
    orphans: NonNegInt


# ─── Files ────────────────────────────────────────────────────────────────────


class FileWrite(KindBase, tag="FileWrite"):
    path: str
    blob_hash: str
    size_bytes: NonNegInt
    content_type: str | None = None


class FileDelete(KindBase, tag="FileDelete"):
    path: str


class FileRename(KindBase, tag="FileRename"):
    old_path: str
    new_path: str


class FileMutated(KindBase, tag="FileMutated"):
    path: str
    content_hash: str


# ─── State ────────────────────────────────────────────────────────────────────


class StatePatchCommitted(KindBase, tag="StatePatchCommitted"):
    new_version: NonNegInt
    patch: dict[str, Any]


class StatePatched(KindBase, tag="StatePatched", kw_only=True):
    # Optional `index` comes first in docs/format.md order, hence kw_only (see ToolCallCompleted).
    index: NonNegInt | None = None
    patch: Any
    revision: NonNegInt


class ContextCompacted(KindBase, tag="ContextCompacted"):
    dropped_count: NonNegInt
    tokens_before: NonNegInt
    tokens_after: NonNegInt


# ─── Policy and approvals ─────────────────────────────────────────────────────


class PolicyEvaluated(KindBase, tag="PolicyEvaluated"):
    tool_name: str
    decision: PolicyDecisionKind
    rule_id: str | None = None
    explanation: str | None = None


class ApprovalRequested(KindBase, tag="ApprovalRequested"):
    approval_id: str
    call_id: str
    tool_name: str
    arguments: Any
    risk: RiskLevel


class ApprovalResolved(KindBase, tag="ApprovalResolved"):
    approval_id: str
    decision: ApprovalDecision
    reason: str | None = None


# ─── Snapshots ────────────────────────────────────────────────────────────────


class SnapshotCreated(KindBase, tag="SnapshotCreated"):
    snapshot_id: str
    snapshot_type: SnapshotType
    covers_through_seq: NonNegInt
    data_hash: str


# ─── Sandboxes ────────────────────────────────────────────────────────────────


class SandboxCreated(KindBase, tag="SandboxCreated"):
    sandbox_id: str
    tier: str
    config: Any


class SandboxExecuted(KindBase, tag="SandboxExecuted"):
    sandbox_id: str
    command: str
    # The only signed integer of the protocol (an i32 process exit code, may be negative).
    exit_code: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
    duration_ms: NonNegInt


class SandboxViolation(KindBase, tag="SandboxViolation"):
    sandbox_id: str
    violation_type: str
    details: str


class SandboxDestroyed(KindBase, tag="SandboxDestroyed"):
    sandbox_id: str


# ─── Memory ───────────────────────────────────────────────────────────────────
# docs/format.md types only ObservationAppended.scope as MemoryScope; the aiOS source types the
# scope of all five memory kinds as MemoryScope, so an unknown scope would make the Rust
# reader fall back to Custom. We check all five against the enum.


class ObservationAppended(KindBase, tag="ObservationAppended"):
    scope: MemoryScope
    observation_ref: str
    source_run_id: str | None = None


class ReflectionCompacted(KindBase, tag="ReflectionCompacted"):
    scope: MemoryScope
    summary_ref: str
    covers_through_seq: NonNegInt


class MemoryProposed(KindBase, tag="MemoryProposed"):
    scope: MemoryScope
    proposal_id: str
    entries_ref: str
    source_run_id: str | None = None


class MemoryCommitted(KindBase, tag="MemoryCommitted"):
    scope: MemoryScope
    memory_id: str
    committed_ref: str
    supersedes: str | None = None


class MemoryTombstoned(KindBase, tag="MemoryTombstoned"):
    scope: MemoryScope
    memory_id: str
    reason: str


# ─── Homeostasis ──────────────────────────────────────────────────────────────


class Heartbeat(KindBase, tag="Heartbeat"):
    summary: str
    checkpoint_id: str | None = None


class StateEstimated(KindBase, tag="StateEstimated"):
    state: dict[str, Any]
    mode: OperatingMode


class BudgetUpdated(KindBase, tag="BudgetUpdated"):
    budget: dict[str, Any]
    reason: str


class ModeChanged(KindBase, tag="ModeChanged"):
    # "from" is a Python keyword: the attribute is from_, the JSON key stays "from".
    from_: OperatingMode = msgspec.field(name="from")
    to: OperatingMode
    reason: str


class GatesUpdated(KindBase, tag="GatesUpdated"):
    gates: Any
    reason: str


class CircuitBreakerTripped(KindBase, tag="CircuitBreakerTripped"):
    reason: str
    error_streak: NonNegInt


# ─── Checkpoints ──────────────────────────────────────────────────────────────


class CheckpointCreated(KindBase, tag="CheckpointCreated"):
    checkpoint_id: str
    event_sequence: NonNegInt
    state_hash: str


class CheckpointRestored(KindBase, tag="CheckpointRestored"):
    checkpoint_id: str
    restored_to_seq: NonNegInt


# ─── Voice ────────────────────────────────────────────────────────────────────


class VoiceSessionStarted(KindBase, tag="VoiceSessionStarted"):
    voice_session_id: str
    adapter: str
    model: str
    sample_rate_hz: NonNegInt
    channels: NonNegInt


class VoiceInputChunk(KindBase, tag="VoiceInputChunk"):
    voice_session_id: str
    chunk_index: NonNegInt
    bytes: NonNegInt
    format: str


class VoiceOutputChunk(KindBase, tag="VoiceOutputChunk"):
    """Same fields as :class:`VoiceInputChunk`."""

    voice_session_id: str
    chunk_index: NonNegInt
    bytes: NonNegInt
    format: str


class VoiceSessionStopped(KindBase, tag="VoiceSessionStopped"):
    voice_session_id: str
    reason: str


class VoiceAdapterError(KindBase, tag="VoiceAdapterError"):
    voice_session_id: str
    message: str


# ─── World models ─────────────────────────────────────────────────────────────


class WorldModelObserved(KindBase, tag="WorldModelObserved"):
    state_ref: str
    meta: Any


class WorldModelRollout(KindBase, tag="WorldModelRollout"):
    trajectory_ref: str
    score: float | None = None


# ─── Intents ──────────────────────────────────────────────────────────────────
# aiOS writes `reasons` even when empty (a plain Vec, no skip_serializing_if), so the two
# kinds that carry it turn omit_defaults off. Their other fields are all required, so
# nothing else is written as null.


class IntentProposed(KindBase, tag="IntentProposed"):
    intent_id: str
    kind: str
    risk: RiskLevel | None = None


class IntentEvaluated(KindBase, tag="IntentEvaluated", omit_defaults=False):
    intent_id: str
    allowed: bool
    requires_approval: bool
    reasons: list[str] = msgspec.field(default_factory=list)


class IntentApproved(KindBase, tag="IntentApproved"):
    intent_id: str
    actor: str | None = None


class IntentRejected(KindBase, tag="IntentRejected", omit_defaults=False):
    intent_id: str
    reasons: list[str] = msgspec.field(default_factory=list)


# ─── Hive ─────────────────────────────────────────────────────────────────────


class HiveTaskCreated(KindBase, tag="HiveTaskCreated"):
    hive_task_id: str
    objective: str
    agent_count: NonNegInt


class HiveArtifactShared(KindBase, tag="HiveArtifactShared"):
    hive_task_id: str
    source_session_id: str
    score: float
    mutation_summary: str


class HiveSelectionMade(KindBase, tag="HiveSelectionMade"):
    hive_task_id: str
    winning_session_id: str
    winning_score: float
    generation: NonNegInt


class HiveGenerationCompleted(KindBase, tag="HiveGenerationCompleted"):
    hive_task_id: str
    generation: NonNegInt
    best_score: float
    agent_results: Any


class HiveTaskCompleted(KindBase, tag="HiveTaskCompleted"):
    hive_task_id: str
    total_generations: NonNegInt
    total_trials: NonNegInt
    final_score: float


# ─── Queue and steering ───────────────────────────────────────────────────────


class Queued(KindBase, tag="Queued"):
    queue_id: str
    mode: SteeringMode
    message: str


class Steered(KindBase, tag="Steered"):
    queue_id: str
    preempted_at: str


class QueueDrained(KindBase, tag="QueueDrained"):
    queue_id: str
    processed: NonNegInt


# ─── Errors ───────────────────────────────────────────────────────────────────


class ErrorRaised(KindBase, tag="ErrorRaised"):
    message: str


# ─── Kernel kinds ─────────────────────────────────────────────────────────────
# Open objects: docs/format.md fixes no fields for them, so the structs declare none and any
# fields they carry pass validation and are kept by the mapping path.


class KernelVmCreated(KindBase, tag="KernelVmCreated"):
    """A VM was created (open object)."""


class KernelVmForked(KindBase, tag="KernelVmForked"):
    """A VM was forked from a parent snapshot (open object)."""


class KernelVmSnapshotted(KindBase, tag="KernelVmSnapshotted"):
    """A VM snapshot was captured (open object)."""


class KernelVmHibernated(KindBase, tag="KernelVmHibernated"):
    """A VM was paused and persisted (open object)."""


class KernelVmResumed(KindBase, tag="KernelVmResumed"):
    """A hibernated VM was resumed (open object)."""


class KernelVmDestroyed(KindBase, tag="KernelVmDestroyed"):
    """A VM was torn down (open object)."""


class KernelDispatchStarted(KindBase, tag="KernelDispatchStarted"):
    """A tool dispatch began inside a VM (open object)."""


class KernelDispatchCompleted(KindBase, tag="KernelDispatchCompleted"):
    """A tool dispatch finished (open object)."""


class KernelDispatchDenied(KindBase, tag="KernelDispatchDenied"):
    """A gate vetoed a dispatch (open object)."""


class KernelForkDenied(KindBase, tag="KernelForkDenied"):
    """A gate vetoed a VM fork (open object)."""


class KernelEgressRecorded(KindBase, tag="KernelEgressRecorded"):
    """An egress flow was observed (open object)."""


class KernelPolicyViolated(KindBase, tag="KernelPolicyViolated"):
    """A capability use broke the VM's policy (open object)."""


class KernelUsageRecorded(KindBase, tag="KernelUsageRecorded"):
    """Resource usage was attributed to a wallet (open object)."""


# ─── Catch-all ────────────────────────────────────────────────────────────────


class Custom(KindBase, tag="Custom"):
    """Application-defined kind; also what aiOS turns unknown tags into on read."""

    event_type: str
    data: Any


# ─── Registry ─────────────────────────────────────────────────────────────────

# In docs/format.md order. Kept explicit (not KindBase.__subclasses__()) so that a subclass
# defined elsewhere can never silently become a "known" kind.
_ALL_KINDS: tuple[type[KindBase], ...] = (
    UserMessage,
    ExternalSignal,
    SessionCreated,
    SessionResumed,
    SessionClosed,
    BranchCreated,
    BranchMerged,
    PhaseEntered,
    DeliberationProposed,
    RunStarted,
    RunFinished,
    RunErrored,
    StepStarted,
    StepFinished,
    AssistantTextDelta,
    AssistantMessageCommitted,
    TextDelta,
    Message,
    ToolCallRequested,
    ToolCallStarted,
    ToolCallCompleted,
    ToolCallFailed,
    KnowledgeSearched,
    KnowledgeRetrieved,
    KnowledgeEvaluated,
    FileWrite,
    FileDelete,
    FileRename,
    FileMutated,
    StatePatchCommitted,
    StatePatched,
    ContextCompacted,
    PolicyEvaluated,
    ApprovalRequested,
    ApprovalResolved,
    SnapshotCreated,
    SandboxCreated,
    SandboxExecuted,
    SandboxViolation,
    SandboxDestroyed,
    ObservationAppended,
    ReflectionCompacted,
    MemoryProposed,
    MemoryCommitted,
    MemoryTombstoned,
    Heartbeat,
    StateEstimated,
    BudgetUpdated,
    ModeChanged,
    GatesUpdated,
    CircuitBreakerTripped,
    CheckpointCreated,
    CheckpointRestored,
    VoiceSessionStarted,
    VoiceInputChunk,
    VoiceOutputChunk,
    VoiceSessionStopped,
    VoiceAdapterError,
    WorldModelObserved,
    WorldModelRollout,
    IntentProposed,
    IntentEvaluated,
    IntentApproved,
    IntentRejected,
    HiveTaskCreated,
    HiveArtifactShared,
    HiveSelectionMade,
    HiveGenerationCompleted,
    HiveTaskCompleted,
    Queued,
    Steered,
    QueueDrained,
    ErrorRaised,
    KernelVmCreated,
    KernelVmForked,
    KernelVmSnapshotted,
    KernelVmHibernated,
    KernelVmResumed,
    KernelVmDestroyed,
    KernelDispatchStarted,
    KernelDispatchCompleted,
    KernelDispatchDenied,
    KernelForkDenied,
    KernelEgressRecorded,
    KernelPolicyViolated,
    KernelUsageRecorded,
    Custom,
)


def _tag_of(cls: type[KindBase]) -> str:
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):  # pragma: no cover - guards the table above
        raise TypeError(f"{cls.__name__} has no string tag")
    return tag


KNOWN_KINDS: dict[str, type[KindBase]] = {_tag_of(cls): cls for cls in _ALL_KINDS}
"""Every tag of docs/format.md ("The 87 kinds") mapped to its struct."""
# Each struct's list type, for checking many kinds of one tag in one conversion. msgspec
# works the list type out on every call (it caches only classes), so a few kinds are
# converted one by one instead.
_GROUP_MIN = 8
_LIST_OF: dict[str, Any] = {tag: list[cls] for tag, cls in KNOWN_KINDS.items()}  # type: ignore[valid-type]


# ─── Validation and conversion ────────────────────────────────────────────────


#: How deep a kind's JSON may nest. msgspec (and every other reader) recurses per level;
#: past about a thousand it raises RecursionError, so a deeper line could never be read back.
MAX_JSON_DEPTH = 256


# Types that need no check at all (exact types: a subclass takes the full path). Floats
# are left out: they need the finiteness check.
_PLAIN = frozenset({str, int, bool, type(None)})
_STR_ONLY = frozenset({str})


def check_json_value(value: Any, where: str) -> None:
    """Refuse what JSON cannot hold faithfully: NaN and infinities (msgspec would write
    them as ``null``), non-string object keys, and nesting deeper than ``MAX_JSON_DEPTH``.
    Iterative, so a hostile depth cannot blow the stack here either."""
    if (type(value) is dict and _STR_ONLY.issuperset(map(type, value))
            and _PLAIN.issuperset(map(type, value.values()))):
        return  # the common kind: a flat object of strings, ints, booleans and nulls
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRecord(f"{where}: {item} is not a JSON number")
        elif isinstance(item, Mapping | list | tuple):
            if depth > MAX_JSON_DEPTH:
                raise InvalidRecord(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, Mapping):
                if not all(isinstance(k, str) for k in item):
                    raise InvalidRecord(f"{where}: object keys must be strings")
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def validate_kind(kind: Mapping[str, Any]) -> dict[str, Any]:
    """Check a kind object for writing and return it as a plain dict, unchanged.

    The mapping needs a string ``"type"``. A known tag must have its required fields, with
    JSON types and enum values as in docs/format.md; extra fields are allowed and kept. An
    unknown tag is accepted as-is (aiOS readers are forward compatible). The result has the
    same keys, values and key order as ``kind``: nothing is re-serialized.

    Raises:
        InvalidRecord: ``kind`` is not a mapping, has no string ``"type"``, or is a known
            kind with missing or mistyped fields.
    """
    if type(kind) is not dict and not isinstance(kind, Mapping):  # (dict: skip the ABC check)
        raise InvalidRecord(f"kind must be a JSON object (a mapping), got {type(kind).__name__}")
    # Shallow copy: a plain dict in the caller's key order; values are not touched.
    result = dict(kind)
    check_kind(result)
    return result


def check_kind(kind: dict[str, Any]) -> None:
    """:func:`validate_kind` of a plain dict, in place (no copy): for a kind that is about
    to be encoded and dropped, as on the append path."""
    tag = _checked_tag(kind)
    if tag in KNOWN_KINDS:
        _convert(kind, tag)


def check_kinds(kinds: list[dict[str, Any]]) -> None:
    """:func:`check_kind` of each, with one conversion per known tag for the whole list
    (a batch's kinds mostly share a few tags: one call into msgspec instead of one each)."""
    if len(kinds) < _GROUP_MIN:  # too few to gain; the common single append lands here
        for kind in kinds:
            check_kind(kind)
        return
    known: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        tag = _checked_tag(kind)
        if tag in KNOWN_KINDS:
            group = known.get(tag)
            if group is None:
                known[tag] = [kind]
            else:
                group.append(kind)
    for tag, group in known.items():
        if len(group) < _GROUP_MIN:
            for kind in group:
                _convert(kind, tag)
            continue
        try:
            msgspec.convert(group, _LIST_OF[tag])  # as _convert does, for the whole group
        except msgspec.ValidationError as exc:
            for kind in group:  # the one at fault, with msgspec's words for it
                _convert(kind, tag)
            # pragma: no cover - the list failed, so one of its kinds does; should msgspec
            # ever disagree with itself, the caller still gets the journal's error.
            raise InvalidRecord(f"invalid {tag} kind: {exc}") from exc


def _checked_tag(kind: dict[str, Any]) -> str:
    """The kind's tag, once the kind passed every check but its struct's."""
    if "type" not in kind:
        raise InvalidRecord('kind has no "type" key: it must be tagged by "type"')
    tag = kind["type"]
    if not isinstance(tag, str):
        raise InvalidRecord(f'kind "type" must be a string, got {type(tag).__name__}')
    check_json_value(kind, f"{tag} kind")
    return tag


def _convert(kind: dict[str, Any], tag: str) -> None:
    # strict=True (the default) is what the JSON wire allows: int is accepted for a float
    # field, but a string, float or bool is refused for an int. Unknown fields are ignored
    # by the struct (forbid_unknown_fields=False) and stay in the kind.
    try:
        msgspec.convert(kind, KNOWN_KINDS[tag])
    except msgspec.ValidationError as exc:
        raise InvalidRecord(f"invalid {tag} kind: {exc}") from exc


def kind_to_dict(kind: KindBase | Mapping[str, Any]) -> dict[str, Any]:
    """Return the validated JSON object of a typed variant or of a kind mapping.

    A typed variant is turned into builtins by msgspec (``"type"`` first, ``None`` optionals
    left out, ``reasons`` written as ``[]``) and then validated, since a Struct's
    constructor does not check types. A mapping goes through :func:`validate_kind`.

    Raises:
        InvalidRecord: the kind is neither, or it fails validation.
    """
    if isinstance(kind, KindBase):
        try:
            built = msgspec.to_builtins(kind)
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"cannot encode {type(kind).__name__} kind: {exc}") from exc
        if not isinstance(built, dict):  # pragma: no cover - a Struct always gives a dict
            raise InvalidRecord(f"{type(kind).__name__} did not encode to a JSON object")
        return validate_kind(built)
    if type(kind) is dict or isinstance(kind, Mapping):
        return validate_kind(kind)
    raise InvalidRecord(
        f'kind must be a typed kind or a mapping with a "type" key, got {type(kind).__name__}'
    )
