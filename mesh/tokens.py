"""Join tokens: the one string a machine needs to join.

A token is ``hm1_`` + unpadded base64url of ``payload || sha256(payload)[:4]`` where the
payload is compact JSON: enrollment endpoints, the SHA-256 pin of the hub CA, the token id
and the secret. The checksum catches truncation and typos before anything is sent. The hub
keeps only ``sha256(secret)``, counts uses, honours expiry and revocation
(see ``hm_redeem`` in redis_functions.lua).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hivemind_cluster.core.errors import InvalidInput, NotFound, TokenMalformed
from hivemind_cluster.mesh import constants

if TYPE_CHECKING:  # the agent parses tokens and must not pay for importing redis
    import redis

PREFIX = "hm1_"
ROLES = ("worker", "operator")
MAX_TOKEN_CHARS = 4096
_ID = re.compile(r"^[0-9a-f]{12}$")
_PIN = re.compile(r"^[A-Za-z0-9_-]{43}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The hub's labels on a token (copied to the node it enrols; policy selects on them).
_LABEL = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
MAX_LABELS = 16


@dataclass(frozen=True)
class JoinToken:
    endpoints: tuple[str, ...]
    ca_pin: str
    token_id: str
    secret: str

    def encode(self) -> str:
        payload = json.dumps(
            {
                "v": 1,
                "e": list(self.endpoints),
                "p": self.ca_pin,
                "i": self.token_id,
                "s": self.secret,
            },
            separators=(",", ":"),
        ).encode()
        blob = payload + hashlib.sha256(payload).digest()[:4]
        return PREFIX + base64.urlsafe_b64encode(blob).rstrip(b"=").decode()

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """Parse a token string; raise TokenMalformed saying exactly what is wrong."""
        text = text.strip()
        if not text:
            raise TokenMalformed("join token is empty")
        if len(text) > MAX_TOKEN_CHARS:
            raise TokenMalformed("join token is too long")
        if not text.startswith(PREFIX):
            raise TokenMalformed(f"join token must start with {PREFIX!r} (not a HiveMind token?)")
        body = text[len(PREFIX) :]
        try:
            blob = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise TokenMalformed("join token is not valid base64url (truncated?)") from None
        payload, checksum = blob[:-4], blob[-4:]
        if len(blob) < 5 or hashlib.sha256(payload).digest()[:4] != checksum:
            raise TokenMalformed(
                "join token checksum does not match (truncated, mistyped or altered)"
            )
        try:
            data = json.loads(payload)
            token = cls(
                endpoints=tuple(str(e) for e in data["e"]),
                ca_pin=str(data["p"]),
                token_id=str(data["i"]),
                secret=str(data["s"]),
            )
            version = data["v"]
        except (ValueError, KeyError, TypeError):
            raise TokenMalformed("join token payload is malformed") from None
        if version != 1:
            raise TokenMalformed(f"join token version {version!r} is not supported")
        if not token.endpoints or not all(token.endpoints):
            raise TokenMalformed("join token names no enrollment endpoint")
        if not _PIN.match(token.ca_pin):
            raise TokenMalformed("join token CA pin is malformed")
        check_credentials(token.token_id, token.secret)
        return token


def check_credentials(token_id: str, secret: str) -> None:
    if not _ID.match(token_id) or not _SECRET.match(secret):
        raise TokenMalformed("join token id or secret is malformed")


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_duration(text: str) -> int:
    """``"1h"`` → 3600. Units s, m, h, d; a bare number is seconds."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise InvalidInput(f"duration {text!r} must look like 90s, 30m, 1h or 7d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels as a token may carry: keys and values of ``[A-Za-z0-9._-]{1,63}``, 16 at most."""
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"a token carries at most {MAX_LABELS} labels, not {len(labels)}")
    for key, value in labels.items():
        if not _LABEL.match(key) or not _LABEL.match(value):
            raise InvalidInput(
                f"label {key}={value} must be KEY=VALUE, each 1-63 letters, digits, . _ -"
            )
    return dict(sorted(labels.items()))


def parse_labels(texts: Iterable[str]) -> dict[str, str]:
    """``["gpu=a100", "site=lab"]`` (``--label`` options) → checked labels; a key given
    twice is refused rather than silently overwritten."""
    labels: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep:
            raise InvalidInput(f"label {text!r} must look like KEY=VALUE")
        if key in labels:
            raise InvalidInput(f"label {key!r} is given twice")
        labels[key] = value
    return check_labels(labels)


def token_labels(client: redis.Redis, token_id: str) -> dict[str, str]:
    """The labels a token carries ({} for a token made before labels existed)."""
    raw = client.hget(constants.TOKEN.format(id=token_id), "labels")
    return json.loads(str(raw)) if raw else {}


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    role: str
    uses: int
    uses_left: int
    created_at: float
    expires_at: float
    revoked: bool
    labels: dict[str, str] = field(default_factory=dict)

    def state(self, now: float | None = None) -> str:
        if self.revoked:
            return "revoked"
        if self.uses_left <= 0:
            return "used"
        if self.expires_at <= (time.time() if now is None else now):
            return "expired"
        return "active"

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.token_id,
            "role": self.role,
            "uses": self.uses,
            "uses_left": self.uses_left,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "state": self.state(),
            "labels": self.labels,
        }


def create_token(
    client: redis.Redis,
    endpoints: list[str],
    ca_pin: str,
    role: str = "worker",
    ttl_seconds: int = 3600,
    uses: int = 1,
    labels: Mapping[str, str] | None = None,
) -> JoinToken:
    """A new token; the node it enrols gets ``labels`` (checked: ``check_labels``)."""
    labels = check_labels(labels or {})
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
    if uses < 1:
        raise InvalidInput("uses must be at least 1")
    if ttl_seconds < 1:
        raise InvalidInput("ttl must be positive")
    token = JoinToken(tuple(endpoints), ca_pin, secrets.token_hex(6), secrets.token_urlsafe(32))
    now = time.time()
    pipe = client.pipeline(transaction=True)
    pipe.hset(
        constants.TOKEN.format(id=token.token_id),
        mapping={
            "role": role,
            "secret_sha256": secret_hash(token.secret),
            "uses": uses,
            "uses_left": uses,
            "created_at": now,
            "expires_at": now + ttl_seconds,
            "revoked": 0,
            "labels": json.dumps(labels, sort_keys=True, separators=(",", ":")),
        },
    )
    pipe.zadd(constants.TOKENS, {token.token_id: now})
    pipe.execute()
    return token


def list_tokens(client: redis.Redis) -> list[TokenRecord]:
    ids: list[str] = client.zrange(constants.TOKENS, 0, -1)  # type: ignore[assignment]
    pipe = client.pipeline(transaction=False)
    for token_id in ids:
        pipe.hgetall(constants.TOKEN.format(id=token_id))
    records = []
    raws: list[dict[str, str]] = pipe.execute()
    for token_id, raw in zip(ids, raws, strict=True):
        if raw:
            records.append(
                TokenRecord(
                    token_id=token_id,
                    role=raw["role"],
                    uses=int(raw["uses"]),
                    uses_left=int(raw["uses_left"]),
                    created_at=float(raw["created_at"]),
                    expires_at=float(raw["expires_at"]),
                    revoked=raw["revoked"] == "1",
                    labels=json.loads(raw.get("labels") or "{}"),
                )
            )
    return records


def revoke_token(client: redis.Redis, token_id: str) -> None:
    key = constants.TOKEN.format(id=token_id)
    if not _ID.match(token_id) or not client.exists(key):
        raise NotFound(f"no token with id {token_id!r}")
    client.hset(key, "revoked", 1)
