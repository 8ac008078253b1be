"""Registration floods: a refused registration costs no password hash, hashing is bounded,
and another user's requests stay fast while one address floods the real web server.

The flood test runs the real ``hivemind-hub web`` process (waitress, the default argon2
cost and limits) over a real pool and redis-server on loopback, floods it with
registrations from 127.0.0.1 and times another user's requests from 127.0.0.2. The
latencies are printed (``pytest -s``), never asserted beyond a sanity bound.
"""

from __future__ import annotations

import http.client
import itertools
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from argon2 import PasswordHasher

from hivemind_cluster.core.errors import AlreadyExists, RateLimited, Unauthenticated
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.web import constants as keys
from hivemind_cluster.web.users import HashingBusy, Limits, UserStore
from tests.support.hubstate import hub_state_dir, web_process
from tests.support.webkit import PASSWORD, web_cluster

pytestmark = pytest.mark.privileged
FLOODER, OTHER = "127.0.0.1", "127.0.0.2"  # both loopback: the web sees two addresses
NAMES = itertools.count()


class CountingHasher(PasswordHasher):
    """Cheap argon2 that counts its hashes and verifications, and can be held mid-hash."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.hashes = self.verifies = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.release.set()
        self.inside = threading.Semaphore(0)  # released once per hash or verify begun

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with self.lock:
            self.hashes += 1
        self.inside.release()
        self.release.wait(30)
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Any:
        with self.lock:
            self.verifies += 1
        self.inside.release()
        self.release.wait(30)
        return super().verify(hash, password)


def store(db: redis.Redis, **limits: Any) -> tuple[UserStore, CountingHasher]:
    hasher = CountingHasher()
    users = UserStore(db, lambda account: None, hasher, Limits(**limits))
    hasher.hashes = 0  # the decoy
    hasher.inside = threading.Semaphore(0)
    return users, hasher


def settle(db: redis.Redis, counter: str, attempts: int) -> None:
    """Until ``attempts`` are counted on ``counter``, and a moment more for the last of
    them to reach the gate (its next step)."""
    deadline = time.monotonic() + 10
    while int(db.get(counter) or 0) < attempts:
        assert time.monotonic() < deadline, f"{counter} stayed below {attempts}"
        time.sleep(0.01)
    time.sleep(0.2)


def test_refused_registrations_compute_no_hash(client: redis.Redis) -> None:
    users, hasher = store(client, registrations_per_hour=3)
    for n in range(3):
        users.register(f"user{n}", PASSWORD, "192.0.2.1")
    assert hasher.hashes == 3
    for n in range(3, 40):
        with pytest.raises(RateLimited):
            users.register(f"user{n}", PASSWORD, "192.0.2.1")
    with pytest.raises(AlreadyExists):
        users.register("user0", PASSWORD, "192.0.2.2")  # another address: only the name
    assert hasher.hashes == 3  # the refused 38 cost nothing


def test_a_full_hashing_gate_says_busy_at_once_and_takes_back_the_attempt(
    client: redis.Redis,
) -> None:
    users, hasher = store(
        client,
        registration_hashes=1,
        login_hashes=1,
        waiting_hashes=1,
        hashing_wait=30,
        logins_per_user=100,
    )
    hasher.release.clear()
    registering = ThreadPoolExecutor(2)
    held = [registering.submit(users.register, f"held{n}", PASSWORD, "192.0.2.3") for n in (0, 1)]
    assert hasher.inside.acquire(timeout=10)  # one hashing, the other waiting its turn
    settle(client, keys.REGISTRATIONS.format(ip="192.0.2.3"), 2)
    with pytest.raises(HashingBusy):
        users.register("turned-away", PASSWORD, "192.0.2.3")
    assert int(client.get(keys.REGISTRATIONS.format(ip="192.0.2.3")) or 0) == 2
    hasher.release.set()
    assert sorted(f.result(10).name for f in held) == ["held0", "held1"]
    assert users.get("turned-away") is None

    hasher.release.clear()
    wrong = [registering.submit(users.authenticate, "held0", "wrong!!!", "192.0.2.4") for _ in "ab"]
    assert hasher.inside.acquire(timeout=10)
    settle(client, keys.LOGIN_FAILURES.format(who="user:held0"), 2)
    with pytest.raises(HashingBusy):
        users.authenticate("held0", "wrong!!!", "192.0.2.4")
    failures = keys.LOGIN_FAILURES.format(who="user:held0")
    assert int(client.get(failures) or 0) == 2  # the busy one is not held against anyone
    hasher.release.set()
    for guess in wrong:
        with pytest.raises(Unauthenticated):
            guess.result(10)
    registering.shutdown()


# The flood, against the real web server.


def call(
    url: str, method: str, path: str, source: str, body: Any = None, token: str = ""
) -> tuple[int, dict[str, str], Any]:
    """One request on a connection of its own from ``source``: status, headers, JSON."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60, source_address=(source, 0))
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, json.dumps(body) if body is not None else None, headers)
        answer = connection.getresponse()
        payload = answer.read()
        return answer.status, dict(answer.getheaders()), json.loads(payload) if payload else None
    finally:
        connection.close()


def timed(request: Callable[[], tuple[int, dict[str, str], Any]]) -> float:
    started = time.perf_counter()
    status, _, reply = request()
    assert status in (200, 201), reply
    return time.perf_counter() - started


def figures(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"median {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms  (n={len(ms)})"


class Flood:
    """Threads registering new users from one address until ``stop``."""

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.codes: Counter[int] = Counter()
        self.retry_after: set[str] = set()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.register, daemon=True) for _ in range(threads)]

    def register(self) -> None:
        while not self.stopping.is_set():
            body = {"username": f"flood{next(NAMES)}", "password": PASSWORD}
            status, headers, _ = call(self.url, "POST", "/api/v1/register", FLOODER, body)
            with self.lock:
                self.codes[status] += 1
                if status == 503:
                    self.retry_after.add(headers.get("Retry-After", ""))

    def __enter__(self) -> Flood:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 60
        while sum(self.codes.values()) < 20:  # under way
            if time.monotonic() > deadline or not any(t.is_alive() for t in self.threads):
                self.__exit__()
                raise AssertionError(f"the flood did not get under way: {self.codes}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)


@pytest.fixture
def web_url(redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    with (
        web_cluster(redis_server, tmp_path / "pool") as world,
        web_process(hub_state_dir(world, tmp_path / "hub")) as url,
    ):
        yield url


def test_a_registration_flood_leaves_other_users_fast(
    web_url: str, redis_server: RedisServer
) -> None:
    user = {"username": "bystander", "password": PASSWORD}
    assert call(web_url, "POST", "/api/v1/register", OTHER, user)[0] == 201

    def login() -> tuple[int, dict[str, str], Any]:
        return call(web_url, "POST", "/api/v1/tokens", OTHER, user)

    token = login()[2]["token"]
    requests = {
        "GET /rates": lambda: call(web_url, "GET", "/api/v1/rates", OTHER),
        "GET /me": lambda: call(web_url, "GET", "/api/v1/me", OTHER, token=token),
    }

    def measure(rounds: int) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {name: [] for name in [*requests, "POST /tokens"]}
        for n in range(rounds):
            for name, request in requests.items():
                found[name].append(timed(request))
            if n % 10 == 0:
                found["POST /tokens"].append(timed(login))
        return found

    quiet = measure(60)
    with Flood(web_url, threads=24) as flood:
        flooded = measure(60)
    total = sum(flood.codes.values())
    print(f"\nflood from one address: {total} registrations, {dict(flood.codes)}")
    for name in quiet:
        print(f"{name:<13} quiet   {figures(quiet[name])}")
        print(f"{'':<13} flooded {figures(flooded[name])}")

    limit = Limits().registrations_per_hour
    assert total > 5 * limit
    assert set(flood.codes) <= {201, 429, 503}, flood.codes
    assert flood.codes[201] <= limit and flood.codes[429] > 0
    assert flood.retry_after <= {"1"}
    with redis.Redis(
        host=redis_server.bind, port=redis_server.port, password=redis_server.password
    ) as db:
        assert len(db.keys(keys.USER.format(name="flood*"))) == flood.codes[201] <= limit
    # A sanity bound only, far above what either figure is (the flood is printed above).
    assert max(flooded["GET /rates"]) < 10
