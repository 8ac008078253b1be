"""The membership cache: which known workers are still members of the mesh.

A submission is refused when no member worker could ever fit it; asking the mesh for every
submission would cost a Redis round trip each, so ``MemberCache`` reuses the answer for
MEMBERS_TTL seconds (or until a worker it has not asked about appears).
"""

from __future__ import annotations

import time
from typing import Any

from hivemind_cluster.mesh import membership
from hivemind_cluster.pool.scheduler import Scheduler, Worker

MEMBERS_TTL = 2.0  # seconds a membership check of the workers is reused


class MemberCache:
    def __init__(self, db: Any, scheduler: Scheduler) -> None:
        self.db = db
        self.scheduler = scheduler
        self._checked_at = 0.0
        self._active: dict[str, bool] = {}  # node id -> still a member, when last read

    async def workers(self) -> list[Worker]:
        """Known workers that are still members (revoked and departed ones do not count)."""
        workers = list(self.scheduler.workers.values())
        stale = time.monotonic() - self._checked_at > MEMBERS_TTL
        if stale or any(w.node_id not in self._active for w in workers):
            active = await membership.active_among(self.db, [w.node_id for w in workers])
            self._checked_at, self._active = time.monotonic(), active
        return [w for w in workers if self._active.get(w.node_id)]
