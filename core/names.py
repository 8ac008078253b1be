"""Names every process agrees on: files in the state directories, certificate names.

A hub state directory (``hivemind-hub init``) holds ``hub.toml``, the CA (``ca.pem``,
``ca.key``), the enrollment server's certificate, the hub's WireGuard key, the Redis
password, the hub's own client certificate for the pool and, while it runs, ``run.json`` and
``up.json``.
An agent state directory (``hivemind-agent join``) holds ``agent.json`` (identity and hub
peer, no secrets), the WireGuard and TLS keys (0600), ``node.pem`` and ``ca.pem``.
"""

from __future__ import annotations

# Both kinds of state directory.
CA_CERT = "ca.pem"  # the hub CA (the one a join token pins)
WG_KEY = "wg.key"  # WireGuard private key, 0600

# A hub's state directory.
DEFAULT_HUB_DIR = "/var/lib/hivemind-hub"
HUB_CONFIG = "hub.toml"
CA_KEY = "ca.key"
WG_PUB = "wg.pub"
SERVER_CERT = "server.pem"  # enrollment and pool server certificate
SERVER_KEY = "server.key"
HUB_CLIENT_CERT = "hub-client.pem"  # the hub's own identity as a pool client
HUB_CLIENT_KEY = "hub-client.key"
REDIS_PASSWORD = "redis.password"
REDIS_DIR = "redis"
RUN_FILE = "run.json"  # what the running hub publishes about itself
UP_RECORD = "up.json"  # what `up` has changed so far, for the next `up` after a crash
WEB_SECRET = "web-secret.key"  # the web's session signing key
WEB_LOG = "web.log"
AUDIT_LOG = "audit.log"  # the audit log mirrored as JSON lines while the hub runs
# The web child's metrics files (prometheus-client multiprocess mode), read by the hub's
# /metrics; emptied at each `up`.
WEB_METRICS_DIR = "metrics-web"
WEB_PARENT_ENV = "HIVEMIND_WEB_PARENT"  # the web child leaves when this pid (`up`) is gone

# An agent's state directory.
DEFAULT_AGENT_DIR = "/var/lib/hivemind-agent"
AGENT_CONFIG = "agent.toml"
STATE_FILE = "agent.json"
TLS_KEY = "tls.key"
NODE_CERT = "node.pem"
PID_FILE = "agent.pid"
LOG_FILE = "agent.log"

# Certificates.
HUB_SERVER_NAME = "hub.hivemind.internal"  # the name in the hub's server certificate
NODE_URI_PREFIX = "hivemind://node/"  # URI SAN of a node certificate: <prefix><node id>
HUB_NODE_ID = "hub"  # the node id in the hub's own client certificate
