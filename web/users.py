"""User accounts of the web UI: registration, passwords, API tokens, login rate limits.

A user ``alice`` pays from the ledger account ``user:alice`` (opened with the
registration grant when she registers). Passwords are hashed with argon2id; API tokens
are random, shown once, and stored only as their SHA-256.
"""

from __future__ import annotations

import functools
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hivemind_cluster.core.audit import AuditLog, Event
from hivemind_cluster.core.errors import (
    AlreadyExists,
    InvalidInput,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from hivemind_cluster.mesh.tokens import secret_hash as token_digest
from hivemind_cluster.web import constants as keys

USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{2,31}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256
TOKEN_PREFIX = "hm_"
BUSY = "the hub is busy checking passwords: try again in a second"
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """Login attempts per username and per address in ``LOGIN_WINDOW``; registrations per
    address and hour. (Tests raise the per-address ones: all their users share 127.0.0.1.)

    ``registration_hashes`` and ``login_hashes``: how many password hashes (argon2id, ~0.2 s
    of both cores and 64 MiB each) each may compute at once, with ``waiting_hashes`` more
    waiting up to ``hashing_wait`` seconds. Past that the answer is "busy, retry" at once: a
    flood holds a few of the web's threads (``server.THREADS``), the rest serve everyone else.
    """

    logins_per_user: int = 5
    logins_per_address: int = 20
    registrations_per_hour: int = 20
    registration_hashes: int = 1
    login_hashes: int = 2
    waiting_hashes: int = 3
    hashing_wait: float = 1.0


class HashingBusy(Unavailable):
    """Every password-hashing slot is taken: the caller should retry in a moment."""

    retry_after = 1  # seconds, for the HTTP Retry-After header


class HashingGate:
    """At most ``slots`` hashes at once and ``waiting`` more waiting (``wait`` seconds at the
    most); anyone else is refused at once with ``HashingBusy``, never queued."""

    def __init__(self, slots: int, waiting: int, wait: float) -> None:
        self._hashing = threading.BoundedSemaphore(slots)
        self._admitted = threading.BoundedSemaphore(slots + waiting)
        self.wait = wait

    def run(self, work: Callable[[], T]) -> T:
        if not self._admitted.acquire(blocking=False):
            raise HashingBusy(BUSY)
        try:
            if not self._hashing.acquire(timeout=self.wait):
                raise HashingBusy(BUSY)
            try:
                return work()
            finally:
                self._hashing.release()
        finally:
            self._admitted.release()


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
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD or not _encodes(password):
        raise InvalidInput(f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def normal_username(name: str) -> str:
    """The one spelling of a username: ``" Alice "`` is ``alice`` (form, API and CLI alike)."""
    return name.strip().lower()[: MAX_PASSWORD + 1]


def _encodes(text: str) -> bool:
    """Not too long for a hash, and valid Unicode (JSON may carry lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return len(text) <= MAX_PASSWORD


class UserStore:
    def __init__(
        self,
        db: redis.Redis,
        open_account: Callable[[str], object],
        hasher: PasswordHasher | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.db = db
        self.open_account = open_account  # opens a user's ledger account, through the pool
        self.hasher = hasher or PasswordHasher()
        self.limits = limits = limits or Limits()
        waiting, wait = limits.waiting_hashes, limits.hashing_wait
        self.registration_gate = HashingGate(limits.registration_hashes, waiting, wait)
        self.login_gate = HashingGate(limits.login_hashes, waiting, wait)
        # A hash to verify against for unknown users, so both cases take the same time.
        self._decoy = self.hasher.hash(secrets.token_hex(16))

    def register(self, username: str, password: str, address: str) -> User:
        """Create a user and open its ledger account (with the registration grant).

        Everything cheap comes first (the input, the limit, a taken name), the hash last:
        a refused registration costs no hashing. The user record is written in one step
        (``WATCH``/``MULTI``), so it is there whole or not at all. Should opening the
        account fail, the first submission opens it.
        """
        name = check_username(normal_username(username))
        check_password(password)
        counter = keys.REGISTRATIONS.format(ip=address)
        (registrations,) = self._hit([counter], 3600)
        if registrations > self.limits.registrations_per_hour:
            raise RateLimited("too many attempts from this address: try again later")
        account, key = account_of(name), keys.USER.format(name=name)
        if self.db.exists(key):
            raise AlreadyExists(f"the username {name!r} is taken")
        hashing = functools.partial(self.hasher.hash, password)
        password_hash = self._hash_once(self.registration_gate, [counter], hashing)
        record: dict[Any, Any] = {  # (redis-py types mapping keys invariantly)
            "account": account,
            "password_hash": password_hash,
            "created_at": time.time(),
        }
        try:
            with self.db.pipeline() as pipe:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                if pipe.exists(key):
                    raise redis.WatchError
                pipe.multi()
                pipe.hset(key, mapping=record)
                pipe.execute()
        except redis.WatchError:
            raise AlreadyExists(f"the username {name!r} is taken") from None
        AuditLog(self.db).record(Event(account, address, "account.create", account))
        self.open_account(account)
        return User(name, account)

    def get(self, username: str) -> User | None:
        account = self.db.hget(keys.USER.format(name=username), "account") if username else None
        return User(username, str(account)) if account else None

    def authenticate(self, username: str, password: str, address: str) -> User:
        """The user, if the password is right.

        Every attempt is counted first (per username and per address) and forgiven only
        when it succeeds, so parallel guesses cannot outrun the limit.
        """
        name = normal_username(username)
        valid = USERNAME.match(name) is not None and _encodes(password)
        per_address = self.limits.logins_per_address
        counters = [(keys.LOGIN_FAILURES.format(who=f"ip:{address}"), per_address)]
        if valid:
            per_user = self.limits.logins_per_user
            counters.append((keys.LOGIN_FAILURES.format(who=f"user:{name}"), per_user))
        counts = self._hit([key for key, _ in counters], keys.LOGIN_WINDOW)
        for (key, limit), count in zip(counters, counts, strict=True):
            if int(count) > limit:
                wait = max(int(self.db.ttl(key)), 1)
                raise RateLimited(f"too many failed logins: try again in {wait} s")
        stored = self.db.hget(keys.USER.format(name=name), "password_hash") if valid else None
        checking = functools.partial(self._verifies, str(stored or self._decoy), password, valid)
        if not (
            self._hash_once(self.login_gate, [key for key, _ in counters], checking) and stored
        ):
            target = account_of(name) if valid else "(not a username)"
            AuditLog(self.db).record(Event("unknown", address, "login.fail", target, "refused"))
            raise Unauthenticated("wrong username or password")
        pipe = self.db.pipeline()
        pipe.delete(*(key for key, _ in counters[1:]))  # this user starts afresh
        pipe.decr(counters[0][0])
        pipe.execute()
        account = account_of(name)
        AuditLog(self.db).record(Event(account, address, "login.ok", account))
        return User(name, account)

    def _verifies(self, password_hash: str, password: str, valid: bool) -> bool:
        """Whether ``password`` is the one hashed (never for an invalid name or password,
        though it takes as long: the decoy stands in for a user that does not exist)."""
        try:
            return self.hasher.verify(password_hash, password if valid else "") and valid
        except (VerificationError, InvalidHashError):
            return False

    def _hash_once(self, gate: HashingGate, counters: list[str], work: Callable[[], T]) -> T:
        """``work`` through ``gate``; turned away busy, the attempt counted on ``counters``
        did not happen (it is taken back), so a retry is not held against the caller."""
        try:
            return gate.run(work)
        except HashingBusy:
            pipe = self.db.pipeline()
            for key in counters:
                pipe.decr(key)
            pipe.execute()
            raise

    def _hit(self, counters: list[str], window: int) -> list[int]:
        """Count one more attempt on each counter (each lives ``window`` seconds from its
        first); their new values."""
        pipe = self.db.pipeline()
        for key in counters:
            pipe.incr(key)
            pipe.expire(key, window, nx=True)
        return [int(count) for count in pipe.execute()[::2]]

    def start_session(self, user: User) -> str:
        """A browser login: its id goes into the signed cookie, its record stays here, so
        logging out ends it for good (a copied cookie is worthless afterwards)."""
        session_id = secrets.token_urlsafe(24)
        key = keys.SESSION.format(digest=token_digest(session_id))
        self.db.set(key, user.name, ex=keys.SESSION_TTL)
        return session_id

    def user_of_session(self, session_id: str) -> User | None:
        name = self.db.get(keys.SESSION.format(digest=token_digest(session_id)))
        return self.get(str(name)) if name else None

    def end_session(self, session_id: str) -> None:
        self.db.delete(keys.SESSION.format(digest=token_digest(session_id)))

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
        self._forget_expired_tokens(user)
        return token

    def _forget_expired_tokens(self, user: User) -> None:
        """Drop the digests of tokens Redis has expired from the user's set."""
        tokens = keys.USER_TOKENS.format(name=user.name)
        digests = sorted(self.db.smembers(tokens))
        pipe = self.db.pipeline()
        for digest in digests:
            pipe.exists(keys.TOKEN.format(digest=digest))
        gone = [d for d, alive in zip(digests, pipe.execute(), strict=True) if not alive]
        if gone:
            self.db.srem(tokens, *gone)

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
