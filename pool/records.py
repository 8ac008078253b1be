"""A task as stored in Redis (``hm:task:{id}``), and its wire form."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hivemind_cluster.model.blobs import InputRef
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.model.spec import TaskSpec
from hivemind_cluster.model.states import ACTIVE_STATES, TaskState
from hivemind_cluster.protos import pool_pb2 as pb


def spec_fields(spec: TaskSpec) -> dict[str, str]:
    """The hash fields written at submission (besides id, seq and score)."""
    return {
        "owner": spec.owner,
        "name": spec.name,
        "status": TaskState.QUEUED,
        "image": spec.image,
        "command": json.dumps(spec.command),
        "env": json.dumps(spec.env),
        "cpu_millis": str(spec.request.cpu_millis),
        "memory_bytes": str(spec.request.memory_bytes),
        "gpus": str(spec.request.gpus),
        "timeout_seconds": str(spec.timeout_seconds),
        "priority": str(spec.priority),
        "max_attempts": str(spec.max_attempts),
        "network": "1" if spec.network else "0",
        "bundle_bytes": str(spec.bundle_bytes),
        "disk_bytes": str(spec.disk_bytes),
        "bundle": json.dumps(spec.bundle.as_json()) if spec.bundle else "",
        "inputs": json.dumps([ref.as_json() for ref in spec.inputs]),
        "attempt": "1",
        "node_id": "",
    }


def _float(raw: dict[str, str], key: str) -> float:
    return float(raw.get(key) or 0)


def _bundle(raw: dict[str, str]) -> InputRef | None:
    text = raw.get("bundle") or ""
    return InputRef.from_json(json.loads(text)) if text else None


def _inputs(raw: dict[str, str]) -> tuple[InputRef, ...]:
    return tuple(InputRef.from_json(item) for item in json.loads(raw.get("inputs") or "[]"))


@dataclass(frozen=True, kw_only=True)
class TaskRecord(TaskSpec):
    """A stored task: its checked submission (``TaskSpec``) and where it stands."""

    id: str
    status: str
    attempt: int
    node_id: str
    score: float
    submitted_at: float
    started_at: float
    ended_at: float
    exit_code: int | None
    error: str
    usage: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    output: str = ""  # the result zip's digest ("": the task wrote nothing)
    output_bytes: int = 0
    price_cap: int = 0
    cost: int = 0
    settled: bool = False
    released: bool = False  # its data let go in the blob store (pool/settlement.py)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> TaskRecord:
        exit_code = raw.get("exit_code", "")
        return cls(
            id=raw["id"],
            owner=raw.get("owner", ""),
            name=raw.get("name", ""),
            status=raw["status"],
            image=raw["image"],
            command=json.loads(raw.get("command") or "[]"),
            env=json.loads(raw.get("env") or "{}"),
            request=Resources(
                int(raw["cpu_millis"]), int(raw["memory_bytes"]), int(raw.get("gpus") or 0)
            ),
            timeout_seconds=int(raw["timeout_seconds"]),
            priority=int(raw.get("priority") or 0),
            max_attempts=int(raw["max_attempts"]),
            network=raw.get("network") == "1",
            attempt=int(raw["attempt"]),
            node_id=raw.get("node_id", ""),
            score=_float(raw, "score"),
            submitted_at=_float(raw, "submitted_at"),
            started_at=_float(raw, "started_at"),
            ended_at=_float(raw, "ended_at"),
            exit_code=int(exit_code) if exit_code not in ("", None) else None,
            error=raw.get("error", ""),
            usage=json.loads(raw.get("usage") or "{}"),
            cancel_requested=raw.get("cancel_requested") == "1",
            output=raw.get("output", ""),
            output_bytes=int(raw.get("output_bytes") or 0),
            bundle_bytes=int(raw.get("bundle_bytes") or 0),
            disk_bytes=int(raw.get("disk_bytes") or 0),
            bundle=_bundle(raw),
            inputs=_inputs(raw),
            price_cap=int(raw.get("price_cap") or 0),
            cost=int(raw.get("cost") or 0),
            settled=raw.get("settled") == "1",
            released=raw.get("released") == "1",
        )

    def runs(self, attempt: int, node_id: str) -> bool:
        """Whether ``attempt`` is its current attempt, on ``node_id`` (the Lua's fencing)."""
        return self.status in ACTIVE_STATES and self.attempt == attempt and self.node_id == node_id

    def node_on(self, attempts: list[dict[str, Any]] | None) -> str:
        """Its node: the one running it, or the one that ran its last attempt."""
        return self.node_id or (str(attempts[-1].get("node_id", "")) if attempts else "")

    def to_proto(
        self, attempts: list[dict[str, Any]] | None = None, node_name: str = ""
    ) -> pb.Task:
        return pb.Task(
            id=self.id,
            name=self.name,
            owner=self.owner,
            status=self.status,
            image=self.image,
            command=self.command,
            resources=self.request.to_proto(),
            timeout_seconds=self.timeout_seconds,
            priority=self.priority,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            node_id=self.node_on(attempts),
            node_name=node_name,
            exit_code=self.exit_code or 0,
            has_exit_code=self.exit_code is not None,
            error=self.error,
            usage=pb.Usage(
                cpu_seconds=float(self.usage.get("cpu_seconds", 0)),
                peak_memory_bytes=int(self.usage.get("peak_memory_bytes", 0)),
                wall_seconds=float(self.usage.get("wall_seconds", 0)),
                gpu_seconds=float(self.usage.get("gpu_seconds", 0)),
            ),
            submitted_at=self.submitted_at,
            started_at=self.started_at,
            ended_at=self.ended_at,
            network=self.network,
            cancel_requested=self.cancel_requested,
            attempts=[
                pb.Attempt(
                    attempt=int(a.get("attempt", 0)),
                    node_id=str(a.get("node_id", "")),
                    status=str(a.get("status", "")),
                    started_at=float(a.get("started_at", 0)),
                    ended_at=float(a.get("ended_at", 0)),
                    error=str(a.get("error", "")),
                    image_digest=str(a.get("image_digest", "")),
                )
                for a in attempts or []
            ],
            output_bytes=self.output_bytes,
            price_cap=self.price_cap,
            cost=self.cost,
            settled=self.settled,
            disk_bytes=self.disk_bytes,
            bundle=self.bundle.message() if self.bundle else None,
            inputs=[ref.message() for ref in self.inputs],
            output_digest=self.output,
        )
