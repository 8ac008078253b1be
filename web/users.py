"""User accounts of the web UI: registration, passwords, API tokens, login rate limits.

A user ``alice`` pays from the ledger account ``user:alice`` (opened with the
registration grant when she registers). Passwords are hashed with argon2id; API tokens
are random, shown once, and stored only as their SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hivemind_cluster.mesh.errors import AlreadyExists, InvalidInput
from hivemind_cluster.pool.ledger import Ledger
from hivemind_cluster.web import constants as keys
from hivemind_cluster.web.errors import RateLimited, Unauthenticated

USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{2,31}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256
TOKEN_PREFIX = "hm_"


@dataclass(frozen=True)
class User:
    name: str
    account: str


def account_of(username: str) -> str:
    return f"user:{username}"


def check_username(name: str) -> str:
    if not USERNAME.match(name):
        raise InvalidInput(
            "username: 3-32 characters, lowercase letters, digits and ._- "
            "(starting with a letter or digit)"
        )
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserStore:
    def __init__(
        self,
        db: redis.Redis,
        hasher: PasswordHasher | None = None,
        registrations_per_hour: int = keys.MAX_REGISTRATIONS_PER_ADDRESS,
    ) -> None:
        self.db = db
        self.hasher = hasher or PasswordHasher()
        self.registrations_per_hour = registrations_per_hour
        # A hash to verify against for unknown users, so both cases take the same time.
        self._decoy = self.hasher.hash(secrets.token_hex(16))

    def register(self, username: str, password: str, address: str) -> User:
        """Create a user and open its ledger account (with the registration grant)."""
        name = check_username(username)
        self._count(keys.REGISTRATIONS.format(ip=address), 3600, self.registrations_per_hour)
        account = account_of(name)
        password_hash = self.hasher.hash(check_password(password))
        if not self.db.hsetnx(keys.USER.format(name=name), "account", account):
            raise AlreadyExists(f"the username {name!r} is taken")
        self.db.hset(
            keys.USER.format(name=name),
            mapping={"password_hash": password_hash, "created_at": time.time()},
        )
        Ledger(self.db).open_account(account, "user")
        return User(name, account)

    def get(self, username: str) -> User | None:
        account = self.db.hget(keys.USER.format(name=username), "account") if username else None
        return User(username, str(account)) if account else None

    def authenticate(self, username: str, password: str, address: str) -> User:
        """The user, if the password is right; counts failures per user and per address."""
        per_user = keys.LOGIN_FAILURES.format(who=f"user:{username[:64]}")
        per_address = keys.LOGIN_FAILURES.format(who=f"ip:{address}")
        for key, limit in (
            (per_user, keys.MAX_FAILURES_PER_USER),
            (per_address, keys.MAX_FAILURES_PER_ADDRESS),
        ):
            if int(self.db.get(key) or 0) >= limit:
                wait = max(int(self.db.ttl(key)), 1)
                raise RateLimited(f"too many failed logins: try again in {wait} s")
        stored = self.db.hget(keys.USER.format(name=username), "password_hash")
        try:
            self.hasher.verify(str(stored or self._decoy), password)
            if stored:
                return User(username, account_of(username))
        except (VerificationError, InvalidHashError):
            pass
        for key in (per_user, per_address):
            self._count(key, keys.LOGIN_WINDOW, None)
        raise Unauthenticated("wrong username or password")

    def _count(self, key: str, window: int, limit: int | None) -> None:
        pipe = self.db.pipeline()
        pipe.incr(key)
        pipe.expire(key, window, nx=True)
        count, _ = pipe.execute()
        if limit is not None and int(count) > limit:
            raise RateLimited("too many attempts from this address: try again later")

    def issue_token(self, user: User) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_digest(token)
        pipe = self.db.pipeline()
        pipe.hset(
            keys.TOKEN.format(digest=digest),
            mapping={"username": user.name, "created_at": str(time.time())},
        )
        pipe.expire(keys.TOKEN.format(digest=digest), keys.TOKEN_TTL)
        pipe.sadd(keys.USER_TOKENS.format(name=user.name), digest)
        pipe.execute()
        return token

    def user_of_token(self, token: str) -> User:
        username = self.db.hget(keys.TOKEN.format(digest=token_digest(token)), "username")
        user = self.get(str(username)) if username else None
        if user is None:
            raise Unauthenticated("the API token is unknown, expired or revoked: log in again")
        return user

    def revoke_token(self, token: str) -> None:
        digest = token_digest(token)
        username = self.db.hget(keys.TOKEN.format(digest=digest), "username")
        pipe = self.db.pipeline()
        pipe.delete(keys.TOKEN.format(digest=digest))
        if username:
            pipe.srem(keys.USER_TOKENS.format(name=str(username)), digest)
        pipe.execute()
