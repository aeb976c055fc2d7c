"""Configuration at the boundary, with pydantic-settings.

Every field can come from the constructor or from a ``JOURNAL_*`` environment variable
(``JOURNAL_ROOT``, ``JOURNAL_REDIS_URL``, ``JOURNAL_DURABILITY``, ...). The Redis URL is a
``SecretStr`` so a password in it never shows up in a repr, a log line or an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Durability = Literal["fsync", "batch", "none"]


class JournalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOURNAL_", extra="forbid")

    root: Path = Field(default=Path("data"), description="directory holding events/ and index/")
    redis_url: SecretStr | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL; None starts the embedded server",
    )
    durability: Durability = "fsync"
    lease_ms: int = Field(default=5000, ge=50, description="writer lease length")
    lease_hold_ms: int = Field(
        default=100, ge=0, description="keep the lease this long after a commit (0: release)"
    )
    lease_wait_s: float = Field(default=30.0, gt=0, description="how long to wait on a busy lease")
    rebuild_lease_ms: int = Field(default=120_000, ge=100, description="lease while rebuilding")
    key_prefix: str = "journal"
    max_record_bytes: int = Field(default=1024 * 1024, ge=256)
    max_id_length: int = Field(default=128, ge=1, le=1024)
    inline_message_max: int = Field(
        default=64 * 1024, ge=0, description="events up to this size travel inside pub/sub"
    )
    sharded_pubsub: bool = Field(default=False, description="SPUBLISH/SSUBSCRIBE (Redis Cluster)")
    socket_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        # The prefix sits in key names and PSUBSCRIBE patterns: no braces or glob characters.
        if not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", value):
            raise ValueError("key_prefix may only hold [A-Za-z0-9._:-], 1 to 64 characters")
        return value

    def redis_url_value(self) -> str | None:
        return None if self.redis_url is None else self.redis_url.get_secret_value()


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
