"""A full TCP connect scan of one address: ``python -m tests.support.portscan HOST`` prints the
open ports as JSON. Bounded: 65,535 connection attempts, each with a short timeout."""

from __future__ import annotations

import asyncio
import json
import sys


async def is_open(host: str, port: int, gate: asyncio.Semaphore, timeout: float) -> bool:
    async with gate:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (TimeoutError, OSError):
            return False
        writer.close()
        return True


async def scan(host: str, ports: range, concurrency: int = 512, timeout: float = 1.0) -> list[int]:
    gate = asyncio.Semaphore(concurrency)
    results = await asyncio.gather(*(is_open(host, p, gate, timeout) for p in ports))
    return [port for port, open_ in zip(ports, results, strict=True) if open_]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(scan(sys.argv[1], range(1, 65536)))))
