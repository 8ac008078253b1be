"""The schemas of the OpenAPI document (web/openapi.py): the bodies /api/v1 takes and
answers, and the small builders both modules use."""

from __future__ import annotations

from typing import Any

from hivemind_cluster.model.blobs import FILE, INPUT_KINDS, MAX_INPUTS, MAX_URL
from hivemind_cluster.model.states import ALL_STATES, MAX_ROWS

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(kind: str) -> Schema:
    return {"type": kind, "nullable": True}


def obj(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


NUMBER, INTEGER, STRING, BOOLEAN = (
    {"type": "number"},
    {"type": "integer"},
    {"type": "string"},
    {"type": "boolean"},
)
RESOURCES = obj({"cpu_millis": INTEGER, "memory_bytes": INTEGER, "gpus": INTEGER})
TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64},
}
LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS},
}
UPLOAD_ID = {
    "name": "upload_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64},
}
SECURED: list[Schema] = [{"token": []}]
DIGEST = {
    "type": "string",
    "pattern": "^sha256:[0-9a-f]{64}$",
    "description": "sha256:<64 hex>, of an upload (POST /uploads)",
}
INPUT_NAME = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.+=@,-]{0,99}$",
    "description": "its name under /work/inputs/",
}
# An input of a task as the pool shows it (a URL's size is 0).
INPUT = obj({"name": STRING, "digest": STRING, "size": INTEGER, "kind": STRING, "url": STRING})
# What /register answers and /me shows.
ACCOUNT = obj({"username": STRING, "account": STRING, "balance": NUMBER, "balance_micro": INTEGER})

SCHEMAS: dict[str, Schema] = {
    "Error": obj({"error": obj({"code": STRING, "message": STRING})}),
    "Credentials": obj(
        {
            "username": {"type": "string", "minLength": 1, "maxLength": 64},
            "password": {"type": "string", "minLength": 1, "maxLength": 256},
        }
    ),
    "Registered": ACCOUNT,
    "Token": obj({"token": STRING, "username": STRING}),
    "Me": ACCOUNT,
    "Balance": obj(
        {
            "account": STRING,
            "kind": STRING,
            "balance": NUMBER,
            "balance_micro": INTEGER,
            "earned": NUMBER,
            "earned_micro": INTEGER,
        }
    ),
    "Resources": RESOURCES,
    "Submission": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "image": {"type": "string", "description": "default: the Python image"},
            "command": {"type": "array", "items": STRING},
            "env": {"type": "object", "additionalProperties": STRING},
            "cpu": {"oneOf": [STRING, NUMBER], "description": "1, 0.5 or 500m"},
            "memory": {"oneOf": [STRING, INTEGER], "description": "512M, 2G or bytes"},
            "disk": {
                "oneOf": [STRING, INTEGER],
                "description": "the working copy, /out and /tmp together: 2G or bytes",
            },
            "gpus": {"type": "integer", "minimum": 0},
            "timeout": {"type": "integer", "minimum": 0, "description": "seconds"},
            "priority": {"type": "integer", "minimum": 0, "maximum": 9},
            "max_attempts": {"type": "integer", "minimum": 0},
            "network": BOOLEAN,
            "name": STRING,
            "max_cost": {"oneOf": [STRING, NUMBER], "description": "CPT held in escrow: 2.5"},
            "bundle": DIGEST | {"description": "an uploaded zip, unpacked into /work"},
            "inputs": {
                "type": "array",
                "maxItems": MAX_INPUTS,
                "items": {
                    "oneOf": [
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "digest"],
                            "properties": {
                                "name": INPUT_NAME,
                                "digest": DIGEST,
                                "kind": {"type": "string", "enum": list(INPUT_KINDS)},
                            },
                        },
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["url"],
                            "properties": {
                                "name": INPUT_NAME | {"description": "default: the URL's"},
                                "url": {
                                    "type": "string",
                                    "maxLength": MAX_URL,
                                    "pattern": "^[^#]+#sha256=[0-9a-fA-F]{64}$",
                                    "description": "https://HOST/PATH#sha256=HEX, fetched by "
                                    "the worker (where the hub allows it)",
                                },
                                "kind": {"type": "string", "enum": [FILE]},
                            },
                        },
                    ]
                },
                "description": "mounted read-only under /work/inputs/<name>: a file as it "
                "is, a dir (an uploaded zip of a directory) unpacked",
            },
            "idempotency_key": STRING,
        },
    },
    "Quote": obj({"price_cap": NUMBER, "price_cap_micro": INTEGER}),
    "UploadRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["size"],
        "properties": {
            "size": {"type": "integer", "minimum": 1, "description": "bytes"},
            "digest": DIGEST | {"description": "sha256:<64 hex> if known (resume, reuse)"},
        },
    },
    "UploadState": obj(
        {
            "upload_id": {"type": "string", "description": "'' when nothing is to be sent"},
            "offset": {"type": "integer", "description": "bytes the hub holds"},
            "size": INTEGER,
            "digest": {"type": "string", "description": "'' until complete, if not announced"},
            "complete": {"type": "boolean", "description": "stored: submit it by digest"},
        }
    ),
    "Storage": obj(
        {"used": STRING, "used_bytes": INTEGER, "quota": STRING, "quota_bytes": INTEGER}
    ),
    "Attempt": obj(
        {
            "attempt": INTEGER,
            "node_id": STRING,
            "status": STRING,
            "started_at": nullable("number"),
            "ended_at": nullable("number"),
            "error": STRING,
            "image_digest": STRING,
        }
    ),
    "Task": obj(
        {
            "id": STRING,
            "name": STRING,
            "owner": STRING,
            "status": {"type": "string", "enum": list(ALL_STATES)},
            "node": STRING,
            "node_id": STRING,
            "attempt": INTEGER,
            "max_attempts": INTEGER,
            "exit_code": nullable("integer"),
            "error": STRING,
            "image": STRING,
            "image_digest": STRING,
            "command": {"type": "array", "items": STRING},
            "resources": RESOURCES,
            "timeout_seconds": INTEGER,
            "priority": INTEGER,
            "network": BOOLEAN,
            "usage": obj(
                {
                    "cpu_seconds": NUMBER,
                    "peak_memory_bytes": INTEGER,
                    "wall_seconds": NUMBER,
                    "gpu_seconds": NUMBER,
                }
            ),
            # The latest attempt's CPU and memory over its run (a task's own view; [] in
            # lists): a sample every 5 s, at most 720, a long run averaged in pairs.
            "usage_samples": {
                "type": "array",
                "items": obj({"time": NUMBER, "cpu_cores": NUMBER, "memory_bytes": INTEGER}),
            },
            "submitted_at": NUMBER,
            "started_at": nullable("number"),
            "ended_at": nullable("number"),
            "attempts": {"type": "array", "items": ref("Attempt")},
            "output_bytes": INTEGER,
            "output_digest": {"type": "string", "description": "the result zip; '': none"},
            "bundle": {"type": "string", "description": "the bundle's digest; '': none"},
            "inputs": {"type": "array", "items": INPUT},
            "price_cap": NUMBER,
            "price_cap_micro": INTEGER,
            "cost": nullable("number"),
            "cost_micro": nullable("integer"),
            "settled": BOOLEAN,
        }
    ),
    "TaskList": obj({"tasks": {"type": "array", "items": ref("Task")}}),
    "Logs": obj(
        {
            "entries": {
                "type": "array",
                "items": obj(
                    {
                        "id": {"type": "string", "description": "pass as `after` for later ones"},
                        "stream": {"type": "string", "enum": ["stdout", "stderr", "system"]},
                        "attempt": INTEGER,
                        "time": NUMBER,
                        "data": STRING,
                    }
                ),
            },
            "next": {"type": "string", "description": "`after` for the next page"},
            "done": {"type": "boolean", "description": "the task has ended, no more entries"},
        }
    ),
    "Entry": obj(
        {
            "id": STRING,
            "time": NUMBER,
            "from": STRING,
            "to": STRING,
            "amount": NUMBER,
            "amount_micro": INTEGER,
            "reason": STRING,
            "task": STRING,
        }
    ),
    "History": obj({"entries": {"type": "array", "items": ref("Entry")}}),
    "Tip": obj(
        {
            "project": {"type": "string", "description": "a project account"},
            "amount": {"oneOf": [STRING, NUMBER], "description": "CPT"},
        }
    ),
    "Rates": obj(
        {
            f"{name}{suffix}": kind
            for name in ("cpu_second", "gb_second", "gpu_second", "registration_grant")
            for suffix, kind in (("", NUMBER), ("_micro", INTEGER))
        }
    ),
    "Node": {"type": "object", "required": ["id", "name", "role", "overlay_ip", "state"]},
    "NodeList": obj({"nodes": {"type": "array", "items": ref("Node")}}),
    "Mesh": obj(
        {
            "time": NUMBER,
            "wireguard": BOOLEAN,
            "totals": {"type": "object"},
            "nodes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "role", "overlay_ip", "online", "handshake_age"],
                },
            },
        }
    ),
}
