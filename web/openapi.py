"""The OpenAPI 3.0 document of /api/v1, served at /api/v1/openapi.json.

Kept next to the routes it describes; tests/integration/test_web_schema.py runs
schemathesis against it, so a route and its description cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

from hivemind_cluster import __version__
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
SECURED: list[Schema] = [{"token": []}]
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
            "bundle": {"type": "string", "format": "byte", "description": "a zip, base64"},
            "idempotency_key": STRING,
        },
    },
    "Quote": obj({"price_cap": NUMBER, "price_cap_micro": INTEGER}),
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
            "submitted_at": NUMBER,
            "started_at": nullable("number"),
            "ended_at": nullable("number"),
            "attempts": {"type": "array", "items": ref("Attempt")},
            "output_bytes": INTEGER,
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


def reply(schema: str, description: str = "OK") -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": ref(schema)}},
    }


ERROR = reply("Error", "an error, with a code and a message")


def operation(
    summary: str,
    ok: tuple[str, Schema],
    errors: tuple[str, ...] = ("400", "401", "404"),
    body: str | None = None,
    parameters: list[Schema] | None = None,
    secured: bool = True,
) -> Schema:
    # Any route may meet a pool or Redis that is down (503), any body may be too large (413).
    always = ("503", "413") if body else ("503",)
    found: Schema = {
        "summary": summary,
        "responses": {ok[0]: ok[1], **{code: ERROR for code in (*errors, *always)}},
    }
    if body:
        found["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(body)}},
        }
    if parameters:
        found["parameters"] = parameters
    found["security"] = SECURED if secured else []
    return found


AUTH = ("400", "401")
PATHS: dict[str, Schema] = {
    "/register": {
        "post": operation(
            "Create an account (with the registration grant)",
            ("201", reply("Registered", "created")),
            ("400", "409", "429"),
            body="Credentials",
            secured=False,
        )
    },
    "/tokens": {
        "post": operation(
            "Log in: an API token for Authorization: Bearer",
            ("201", reply("Token", "created")),
            ("400", "401", "429"),
            body="Credentials",
            secured=False,
        )
    },
    "/tokens/current": {
        "delete": operation("Log out: revoke this token", ("204", {"description": "revoked"}), AUTH)
    },
    "/me": {"get": operation("Who you are, and your balance", ("200", reply("Me")), AUTH)},
    "/tasks": {
        "get": operation(
            "Your tasks, newest first",
            ("200", reply("TaskList")),
            AUTH,
            parameters=[
                {
                    "name": "status",
                    "in": "query",
                    "schema": {"type": "array", "items": {"type": "string", "enum": ALL_STATES}},
                    "explode": True,
                },
                LIMIT,
            ],
        ),
        "post": operation(
            "Submit a task (its price cap moves into escrow)",
            ("201", reply("Task", "submitted")),
            ("400", "401", "409"),
            body="Submission",
        ),
    },
    "/tasks/quote": {
        "post": operation(
            "The price cap a submission would hold in escrow",
            ("200", reply("Quote")),
            ("400", "401"),
            body="Submission",
        )
    },
    "/tasks/{task_id}": {
        "get": operation("One task", ("200", reply("Task")), parameters=[TASK_ID])
    },
    "/tasks/{task_id}/cancel": {
        "post": operation(
            "Cancel a task", ("200", reply("Task")), ("400", "401", "404", "409"), None, [TASK_ID]
        )
    },
    "/tasks/{task_id}/logs": {
        "get": operation(
            f"Up to {MAX_ROWS:,} log entries after the entry `after`",
            ("200", reply("Logs")),
            parameters=[
                TASK_ID,
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "string", "pattern": "^([0-9]{1,20}-[0-9]{1,20})?$"},
                },
            ],
        )
    },
    "/tasks/{task_id}/result": {
        "get": operation(
            "The task's /out files, as a zip",
            (
                "200",
                {
                    "description": "a zip",
                    "content": {
                        "application/zip": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
            ),
            ("400", "401", "404", "409"),
            parameters=[TASK_ID],
        )
    },
    "/balance": {"get": operation("Your balance", ("200", reply("Balance")), AUTH)},
    "/history": {
        "get": operation(
            "Your ledger movements, newest first",
            ("200", reply("History")),
            AUTH,
            parameters=[LIMIT],
        )
    },
    "/tips": {
        "post": operation(
            "Tip a registered project",
            ("201", reply("Entry", "sent")),
            ("400", "401", "404", "409"),
            body="Tip",
        )
    },
    "/rates": {"get": operation("The rate card", ("200", reply("Rates")), (), secured=False)},
    "/nodes": {"get": operation("The pool's nodes", ("200", reply("NodeList")), AUTH)},
    "/mesh": {"get": operation("The mesh status", ("200", reply("Mesh")), AUTH)},
}

DOCUMENT: Schema = {
    "openapi": "3.0.3",
    "info": {
        "title": "HiveMind API",
        "version": __version__,
        "description": "Tasks, CPT ledger and mesh status of a HiveMind hub. "
        "Errors are JSON: {error: {code, message}}.",
    },
    "servers": [{"url": "/api/v1"}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
    },
}
