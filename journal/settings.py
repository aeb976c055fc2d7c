"""Configuration at the boundary, with pydantic-settings.

Every field can come from the constructor or from a ``JOURNAL_*`` environment variable
(``JOURNAL_ROOT``, ``JOURNAL_REDIS_URL``, ``JOURNAL_DURABILITY``, ...). The Redis URL is a
``SecretStr`` so a password in it never shows up in a repr, a log line or an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Durability = Literal["fsync", "batch", "none"]


class JournalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOURNAL_", extra="forbid")

    root: Path = Field(default=Path("data"), description="directory holding events/ and index/")
    redis_url: SecretStr | None = Field(
        default=None,
        description="redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL "
        "(see journal/connect.py); None starts the embedded server",
    )
    durability: Durability = "fsync"
    lease_ms: int = Field(default=5000, ge=50, description="writer lease length")
    lease_hold_ms: int = Field(
        default=100, ge=0, description="keep the lease this long after a commit (0: release)"
    )
    fence_ms: int = Field(
        default=100, ge=10,
        description="how long a step that destroys bytes (a cut, an unlink, a rename over the "
        "file) may act after Redis confirmed its lease; a rebuild after Redis lost its state "
        "first waits this or lease_hold_ms, whichever is longer (docs/design.md, 'Fencing')")
    lease_wait_s: float = Field(default=30.0, gt=0, description="how long to wait on a busy lease")
    rebuild_lease_ms: int = Field(
        default=120_000, ge=100,
        description="the longest lease of a rebuild or life-cycle operation (see docs/design.md)")
    key_prefix: str = "journal"
    max_record_bytes: int = Field(default=1024 * 1024, ge=256)
    max_id_length: int = Field(default=128, ge=1, le=1024)
    inline_message_max: int = Field(
        default=64 * 1024, ge=0, description="events up to this size travel inside pub/sub"
    )
    sharded_pubsub: bool = Field(default=False, description="SPUBLISH/SSUBSCRIBE (Redis Cluster)")
    cluster: bool = Field(
        default=False,
        description="Redis Cluster (as does a redis+cluster:// URL); turns sharded_pubsub on",
    )
    socket_timeout_s: float = Field(default=10.0, gt=0)
    view_catch_up_s: float = Field(
        default=2.0,
        ge=0,
        description="how long a file that looks shorter than its committed length is "
        "re-read before it is reported: a shared mount's view may lag another host's writes",
    )

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        # The prefix sits in key names and PSUBSCRIBE patterns: no braces or glob characters.
        if not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", value):
            raise ValueError("key_prefix may only hold [A-Za-z0-9._:-], 1 to 64 characters")
        return value

    @model_validator(mode="after")
    def _cluster_means_sharded(self) -> Self:
        # Classic PUBLISH in a cluster is broadcast to every node; the journal publishes to
        # the session's own slot instead, so cluster mode always uses sharded pub/sub.
        if self.cluster_mode() and not self.sharded_pubsub:
            if "sharded_pubsub" in self.model_fields_set:
                raise ValueError("Redis Cluster mode needs sharded_pubsub=True (or leave it unset)")
            self.sharded_pubsub = True
        return self

    def cluster_mode(self) -> bool:
        """True for ``cluster=True`` or a ``redis+cluster://``/``rediss+cluster://`` URL."""
        url = self.redis_url_value()
        scheme = "" if url is None else url.partition("://")[0].lower()
        return self.cluster or scheme in ("redis+cluster", "rediss+cluster")

    def redis_url_value(self) -> str | None:
        return None if self.redis_url is None else self.redis_url.get_secret_value()


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print. Handles host lists
    (``redis+cluster://u:pw@h1:1,h2:2``) and passwords in the query (``?password=``,
    ``?sentinel_password=``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        scheme, sep, rest = url.partition("://")
        hidden = f"{userinfo.partition(':')[0]}:***@{hostlist}"
        url = scheme + sep + rest.replace(parts.netloc, hidden, 1)
    return re.sub(r"([?&])((?:sentinel_)?password)=[^&#]*", r"\1\2=***", url)
