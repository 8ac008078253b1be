"""The OpenAPI 3.0 document of /api/v1, served at /api/v1/openapi.json.

Kept next to the routes it describes (the bodies: web/schemas.py);
tests/integration/test_web_schema.py runs
schemathesis against it, so a route and its description cannot drift apart silently.
"""

from __future__ import annotations

from hivemind_cluster import __version__
from hivemind_cluster.model.states import ALL_STATES, MAX_ROWS
from hivemind_cluster.web.constants import (
    CHUNK_TYPE,
    DIGEST_HEADER,
    OFFSET_HEADER,
    UPLOAD_CHUNK_BYTES,
)
from hivemind_cluster.web.schemas import (
    LIMIT,
    SCHEMAS,
    SECURED,
    STRING,
    TASK_ID,
    UPLOAD_ID,
    Schema,
    ref,
)


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
