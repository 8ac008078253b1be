from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from hivemind_cluster.core.errors import InvalidInput, NotFound, TokenMalformed
from hivemind_cluster.mesh import tokens
from hivemind_cluster.mesh.tokens import JoinToken

PIN = "A" * 43


def sample() -> JoinToken:
    return JoinToken(("198.51.100.2:7443",), PIN, "0123456789ab", "s" * 43)


def reencode(payload: dict[str, object]) -> str:
    raw = json.dumps(payload).encode()
    blob = raw + hashlib.sha256(raw).digest()[:4]
    return tokens.PREFIX + base64.urlsafe_b64encode(blob).rstrip(b"=").decode()


def test_round_trip() -> None:
    token = sample()
    text = token.encode()
    assert text.startswith("hm1_")
    assert JoinToken.parse(text) == token
    assert JoinToken.parse(f"  {text}\n") == token


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: "", "empty"),
        (lambda t: "   ", "empty"),
        (lambda t: "xyz_" + t[4:], "must start with"),
        (lambda t: t[:-6], "checksum"),
        (lambda t: t[: len(t) // 2], "checksum"),
        (lambda t: t[:20] + ("A" if t[20] != "A" else "B") + t[21:], "checksum"),
        (lambda t: t + "!!", "base64url"),
        (lambda t: "hm1_", "checksum"),
        (lambda t: t * 30, "too long"),
    ],
    ids=[
        "empty",
        "blank",
        "prefix",
        "truncated-end",
        "truncated-half",
        "tampered",
        "garbage",
        "bare-prefix",
        "huge",
    ],
)
def test_malformed_tokens_have_specific_errors(mangle: Callable[[str], str], message: str) -> None:
    with pytest.raises(TokenMalformed, match=message):
        JoinToken.parse(mangle(sample().encode()))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"v": 2, "e": ["h:1"], "p": PIN, "i": "0123456789ab", "s": "s" * 43}, "version"),
        ({"v": 1, "e": [], "p": PIN, "i": "0123456789ab", "s": "s" * 43}, "no enrollment"),
        ({"v": 1, "e": ["h:1"], "p": "short", "i": "0123456789ab", "s": "s" * 43}, "pin"),
        ({"v": 1, "e": ["h:1"], "p": PIN, "i": "zz", "s": "s" * 43}, "id or secret"),
        ({"v": 1, "e": ["h:1"], "p": PIN, "i": "0123456789ab", "s": "x"}, "id or secret"),
        ({"v": 1, "e": ["h:1"]}, "payload is malformed"),
    ],
)
def test_well_checksummed_but_invalid_payloads(payload: dict[str, object], message: str) -> None:
    with pytest.raises(TokenMalformed, match=message):
        JoinToken.parse(reencode(payload))


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 604800), ("45", 45)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert tokens.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1h", "1w", "h", "1.5h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        tokens.parse_duration(text)


@pytest.mark.privileged
def test_store_keeps_only_a_hash(client: redis.Redis) -> None:
    token = tokens.create_token(client, ["198.51.100.2:7443"], PIN, role="operator", uses=3)
    stored = client.hgetall(f"hm:token:{token.token_id}")
    assert token.secret not in json.dumps(stored)
    assert stored["secret_sha256"] == hashlib.sha256(token.secret.encode()).hexdigest()
    [record] = tokens.list_tokens(client)
    assert (record.role, record.uses_left, record.state()) == ("operator", 3, "active")


@pytest.mark.privileged
def test_states_and_revocation(client: redis.Redis) -> None:
    token = tokens.create_token(client, ["h:1"], PIN, ttl_seconds=60)
    [record] = tokens.list_tokens(client)
    assert record.state(now=time.time() + 61) == "expired"
    tokens.revoke_token(client, token.token_id)
    assert tokens.list_tokens(client)[0].state() == "revoked"
    with pytest.raises(NotFound):
        tokens.revoke_token(client, "ffffffffffff")


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"role": "admin"}, "role"), ({"uses": 0}, "uses"), ({"ttl_seconds": 0}, "ttl")],
)
def test_create_rejects_bad_arguments(
    client: redis.Redis, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        tokens.create_token(client, ["h:1"], PIN, **kwargs)
    assert tokens.list_tokens(client) == []
