"""Who may do what: bearer tokens with a scope and an optional session prefix, and the
short-lived signed cookie a browser's EventSource uses instead of a header.

A token line reads ``SECRET SCOPE [PREFIX]``: the scope is ``read`` or ``append`` (which
includes read), and the prefix, when given, limits the token to sessions whose id starts
with it. Lines come from a file (``--token-file``, ``$JOURNAL_HTTP_TOKEN_FILE``) and from
``$JOURNAL_HTTP_TOKENS`` (entries separated by commas or newlines). Secrets are compared in
constant time and never logged or echoed, not even in a parse error.

The cookie carries no secret: only the scope (always ``read``: a cookie never authorizes a
write, so a cross-site form cannot append), the prefix and an expiry, signed with HMAC-SHA256.
The signing key is derived from the configured secrets (or ``$JOURNAL_HTTP_SIGNING_KEY``), so
every worker process behind one port accepts the same cookies, and removing a token from the
configuration invalidates the cookies made from it as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "COOKIE_NAME",
    "Grant",
    "Token",
    "TokenError",
    "load_tokens",
    "parse_tokens",
]

Scope = Literal["read", "append"]
COOKIE_NAME = "journal_auth"
MIN_SECRET_LENGTH = 16


class TokenError(ValueError):
    """The token configuration cannot be used (the message never holds a secret)."""


@dataclass(frozen=True)
class Grant:
    """What a request may do: ``scope`` on the sessions starting with ``prefix``."""

    scope: Scope
    prefix: str = ""

    def may_read(self, session_id: str) -> bool:
        return session_id.startswith(self.prefix)

    def may_append(self, session_id: str) -> bool:
        return self.scope == "append" and session_id.startswith(self.prefix)

    def covers_prefix(self, prefix: str) -> bool:
        """A firehose of ``prefix`` shows only sessions this grant may read."""
        return prefix.startswith(self.prefix)


#: The grant of every request when no tokens are configured (loopback-only serving).
OPEN = Grant("append", "")


@dataclass(frozen=True)
class Token:
    secret: str
    grant: Grant

    def __repr__(self) -> str:  # never show the secret
        return f"Token(scope={self.grant.scope!r}, prefix={self.grant.prefix!r})"


def parse_tokens(text: str, where: str) -> list[Token]:
    """Token lines from ``text``; ``where`` names the source in error messages."""
    tokens: list[Token] = []
    entries = text.replace(",", "\n").splitlines()
    for number, raw in enumerate(entries, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) not in (2, 3):
            raise TokenError(f"{where}: entry {number}: expected 'SECRET SCOPE [PREFIX]', "
                             f"got {len(fields)} fields")
        secret, scope = fields[0], fields[1]
        if scope not in ("read", "append"):
            raise TokenError(f"{where}: entry {number}: scope must be read or append, "
                             f"got {scope!r}")
        if len(secret) < MIN_SECRET_LENGTH:
            raise TokenError(f"{where}: entry {number}: the secret is shorter than "
                             f"{MIN_SECRET_LENGTH} characters")
        prefix = fields[2] if len(fields) == 3 else ""
        tokens.append(Token(secret, Grant(scope, prefix)))  # type: ignore[arg-type]
    return tokens


def load_tokens(token_file: str | os.PathLike[str] | None = None,
                env: str | None = None) -> list[Token]:
    """Tokens from the file and from ``$JOURNAL_HTTP_TOKENS`` (or ``env`` when given)."""
    tokens: list[Token] = []
    path = token_file or os.environ.get("JOURNAL_HTTP_TOKEN_FILE")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenError(f"cannot read token file {path}: {exc.strerror or exc}") from None
        tokens += parse_tokens(text, str(path))
    text = os.environ.get("JOURNAL_HTTP_TOKENS", "") if env is None else env
    if text.strip():
        tokens += parse_tokens(text, "$JOURNAL_HTTP_TOKENS")
    return tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Turns a request's credentials into a :class:`Grant` (or ``None``: not allowed)."""

    def __init__(self, tokens: Iterable[Token], signing_key: bytes | None = None) -> None:
        self.tokens = list(tokens)
        if signing_key is None:
            env_key = os.environ.get("JOURNAL_HTTP_SIGNING_KEY")
            if env_key:
                signing_key = env_key.encode()
            else:
                material = "\0".join(sorted(t.secret for t in self.tokens))
                signing_key = hashlib.sha256(b"journal-http-cookie\0" + material.encode()).digest()
        self._key = signing_key

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def bearer(self, header: str | None) -> Grant | None:
        if not header or not header.startswith("Bearer "):
            return None
        offered = header[7:].strip().encode()
        found: Grant | None = None
        for token in self.tokens:  # every comparison runs, in constant time each
            if hmac.compare_digest(offered, token.secret.encode()):
                found = token.grant
        return found

    def make_cookie(self, grant: Grant, ttl_s: int) -> str:
        body = json.dumps({"p": grant.prefix, "e": int(time.time()) + ttl_s},
                          separators=(",", ":")).encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return f"{_b64(body)}.{_b64(mac)}"

    def cookie(self, value: str | None) -> Grant | None:
        if not value or value.count(".") != 1:
            return None
        body_text, mac_text = value.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, hmac.new(self._key, body, hashlib.sha256).digest()):
            return None
        try:
            claims = json.loads(body)
            prefix, expires = str(claims["p"]), int(claims["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        return Grant("read", prefix)
