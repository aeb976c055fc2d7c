"""Retrying appends: :class:`RetryPolicy`, and which errors are transient.

``append(record, retry=RetryPolicy())`` retries what may succeed on a second try
(:data:`TRANSIENT`: ``AppendOutcomeUnknown``, ``RedisUnavailable``, ``LeaseTimeout``) with
the same record, so the same ``event_id``: the journal then stores it exactly once. Any
other error is final and raised at once.
"""

from journal._core.retry import TRANSIENT, RetryPolicy

__all__ = ["TRANSIENT", "RetryPolicy"]
