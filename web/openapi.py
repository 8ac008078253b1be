"""The OpenAPI 3.0 document of /api/v1, served at /api/v1/openapi.json.

Kept next to the routes it describes; tests/integration/test_web_schema.py runs
schemathesis against it, so a route and its description cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

from hivemind_cluster import __version__
from hivemind_cluster.model.blobs import FILE, INPUT_KINDS, MAX_INPUTS, MAX_URL
from hivemind_cluster.model.states import ALL_STATES, MAX_ROWS
from hivemind_cluster.web.constants import (
    CHUNK_TYPE,
    DIGEST_HEADER,
    OFFSET_HEADER,
    UPLOAD_CHUNK_BYTES,
)

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
ZIP = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}


def header(pattern: str, description: str) -> Schema:
    """A response header that is always sent, of this form."""
    return {"required": True, "schema": STRING | {"pattern": pattern}, "description": description}


def request_header(name: str, description: str) -> Schema:
    return {"name": name, "in": "header", "schema": STRING, "description": description}


# The result download (web/downloads.py): send_file with the digest as its ETag.
RESULT_HEADERS = {
    "ETag": header('^"[0-9a-f]{64}"$', "the zip's SHA-256, its hex digits quoted"),
    DIGEST_HEADER: header("^sha256:[0-9a-f]{64}$", "the zip's digest, to verify it"),
    "Accept-Ranges": header("^bytes$", "a cut download resumes with Range"),
}
CONTENT_RANGE = header("^bytes [0-9]+-[0-9]+/[0-9]+$", "the part sent, of the whole zip")
RESULT = operation(
    "The task's /out files, as a zip (Range requests resume a download)",
    ("200", {"description": "the zip", "content": ZIP, "headers": RESULT_HEADERS}),
    ("400", "401", "404", "409", "416"),
    parameters=[
        TASK_ID,
        request_header("Range", "bytes=START- to resume a download"),
        request_header("If-Range", "the ETag: the range only if the zip is still that one"),
        request_header("If-None-Match", "the ETag of a zip you have: 304 if it is this one"),
    ],
)
RESULT["responses"] |= {
    "204": {"description": "the task wrote no files"},
    "206": {
        "description": "the requested range of the zip",
        "content": ZIP,
        "headers": RESULT_HEADERS | {"Content-Range": CONTENT_RANGE},
    },
    "304": {"description": "the zip you have (If-None-Match)", "headers": RESULT_HEADERS},
}
# Every upload state comes with its offset in this header too (web/uploads.py state_reply).
OFFSET_REPLY = {OFFSET_HEADER: header("^[0-9]{1,19}$", "bytes the hub holds")}


def upload_state(description: str = "OK") -> Schema:
    return reply("UploadState", description) | {"headers": OFFSET_REPLY}


BEGIN = operation(
    "Begin (or resume) an upload",
    ("201", upload_state("send the bytes from offset")),
    ("400", "401", "404", "409", "413"),
    body="UploadRequest",
)
BEGIN["responses"]["409"] = ERROR | {"description": "too many unfinished uploads"}
BEGIN["responses"]["200"] = upload_state("the hub holds it already: send nothing")
APPEND = operation(
    f"The next bytes of an upload, at most {UPLOAD_CHUNK_BYTES >> 20} MiB, at {OFFSET_HEADER}",
    ("200", upload_state()),
    ("400", "401", "404", "413"),
    parameters=[
        UPLOAD_ID,
        {
            "name": OFFSET_HEADER,
            "in": "header",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
        },
    ],
)
APPEND["responses"]["409"] = ERROR | {
    "description": "not at that offset: resume from the Upload-Offset header",
    "headers": OFFSET_REPLY,
}
APPEND["requestBody"] = {
    "required": True,
    "content": {CHUNK_TYPE: {"schema": {"type": "string", "format": "binary"}}},
}
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
            ("400", "401", "403", "404", "409"),
            body="Submission",
        ),
    },
    "/tasks/quote": {
        "post": operation(
            "The price cap a submission would hold in escrow",
            ("200", reply("Quote")),
            ("400", "401", "404"),
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
    "/tasks/{task_id}/result": {"get": RESULT},
    "/uploads": {
        "post": BEGIN,
    },
    "/uploads/{upload_id}": {
        "get": operation(
            "An upload's state (where to resume)",
            ("200", upload_state()),
            parameters=[UPLOAD_ID],
        ),
        "patch": APPEND,
        "delete": operation(
            "Give up an unfinished upload: its size no longer counts toward your quota",
            ("204", {"description": "given up, its bytes gone"}),
            ("400", "401", "404", "409"),
            parameters=[UPLOAD_ID],
        ),
    },
    "/storage": {
        "get": operation("Your uploads' bytes and your quota", ("200", reply("Storage")), AUTH)
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
