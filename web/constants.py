"""Every Redis key the web UI uses, in one place."""

USER = "hm:web:user:{name}"  # hash: password_hash, account, created_at
TOKEN = "hm:web:token:{digest}"  # hash: username, created_at (key: sha256 of the API token)
USER_TOKENS = "hm:web:user-tokens:{name}"  # set: token digests of a user (revoked together)
SESSION = "hm:web:session:{digest}"  # string: username (key: sha256 of the session id)
LOGIN_FAILURES = "hm:web:login-failures:{who}"  # counter with a TTL (rate limiting)
REGISTRATIONS = "hm:web:registrations:{ip}"  # counter with a TTL (rate limiting)

TOKEN_TTL = 30 * 86400  # API tokens last 30 days
SESSION_TTL = 7 * 86400  # a browser login lasts a week (or until logout)
LOGIN_WINDOW = 300  # seconds over which failed logins are counted
