"""Report a result for an old attempt, as a killed worker coming back late would.

    python -m tests.support.late_result AGENT_STATE_DIR TASK_ID ATTEMPT

Run inside the worker's namespace: brings the worker's WireGuard interface back up from
its saved state, opens a pool stream with the worker's certificate, sends a
``TaskResult`` for ``ATTEMPT`` and prints the pool's answer as JSON; removes the
interface again.
"""

from __future__ import annotations

import asyncio
import json
import sys

from hivemind_cluster.agent.overlay import bring_up, wait_until_hub_answers
from hivemind_cluster.agent.state import Enrollment, load_settings
from hivemind_cluster.client.channel import Identity, aio_channel
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc


async def report(
    identity: Identity, task_id: str, attempt: int, status: str = "succeeded"
) -> pb.PoolMessage:
    """Register over a fresh stream, send the result, return the pool's answer to it."""
    result = pb.TaskResult(task_id=task_id, attempt=attempt, status=status)
    return await send_late(identity, pb.AgentMessage(result=result))


async def send_late(identity: Identity, message: pb.AgentMessage) -> pb.PoolMessage:
    """Register over a fresh stream, send ``message``, return the pool's answer to it."""
    async with aio_channel(identity) as channel:
        call = pb_grpc.PoolStub(channel).Connect()
        capacity = pb.Resources(cpu_millis=1000, memory_bytes=1 << 30)
        await call.write(pb.AgentMessage(register=pb.Register(capacity=capacity)))
        registered = await call.read()
        assert isinstance(registered, pb.PoolMessage) and registered.HasField("registered")
        await call.write(message)
        reply = await call.read()
        call.cancel()
    assert isinstance(reply, pb.PoolMessage)
    return reply


def main(state_dir: str, task_id: str, attempt: str) -> int:
    settings = load_settings(state_dir)
    enrollment = Enrollment.load(settings.path)
    interface = bring_up(settings, enrollment)
    try:
        if not wait_until_hub_answers(enrollment, 20):
            print(json.dumps({"kind": "unreachable"}))
            return 1
        reply = asyncio.run(report(Identity.load(state_dir), task_id, int(attempt)))
        kind = reply.WhichOneof("kind") or ""
        reason = reply.rejected.reason if kind == "rejected" else ""
        print(json.dumps({"kind": kind, "reason": reason}))
    finally:
        interface.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:4]))
