"""Every Redis key the web UI uses, and its limits on request bodies, in one place."""

from hivemind_cluster.core.units import MIB

USER = "hm:web:user:{name}"  # hash: password_hash, account, created_at
TOKEN = "hm:web:token:{digest}"  # hash: username, created_at (key: sha256 of the API token)
USER_TOKENS = "hm:web:user-tokens:{name}"  # set: token digests of a user (revoked together)
SESSION = "hm:web:session:{digest}"  # string: username (key: sha256 of the session id)
LOGIN_FAILURES = "hm:web:login-failures:{who}"  # counter with a TTL (rate limiting)
REGISTRATIONS = "hm:web:registrations:{ip}"  # counter with a TTL (rate limiting)

TOKEN_TTL = 30 * 86400  # API tokens last 30 days
SESSION_TTL = 7 * 86400  # a browser login lasts a week (or until logout)
LOGIN_WINDOW = 300  # seconds over which failed logins are counted

# Request bodies: JSON is small (data comes as uploads, by digest); an upload's PATCH carries
# up to UPLOAD_CHUNK_BYTES (the CLI sends 8 MiB, the page's script too); the submit form
# without its script sends the bundle itself, up to FORM_BUNDLE_BYTES (bigger: the script
# uploads it in pieces, or the CLI). waitress spools a whole body before the app sees it,
# whoever sent it, so its own limit (web/server.py MAX_REQUEST_BODY) is the largest of
# these plus a little, not more.
MAX_BODY = 1 * MIB
UPLOAD_CHUNK_BYTES = 16 * MIB
SLICE_BYTES = 8 * MIB  # what the submit page's script sends per PATCH
FORM_BUNDLE_BYTES = 16 * MIB
BODY_LIMITS = {
    "uploads.append": UPLOAD_CHUNK_BYTES,
    "tasks.new_task": FORM_BUNDLE_BYTES,
}
# An upload's PATCH: its body's type, and the header of the offset it starts at (and, in
# the reply, the bytes the hub holds).
CHUNK_TYPE = "application/offset+octet-stream"
OFFSET_HEADER = "Upload-Offset"
# A result download's digest (sha256:HEX), for the client to verify the zip it got.
DIGEST_HEADER = "X-Content-SHA256"
