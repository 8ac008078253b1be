"""Every Redis key the mesh uses, in one place."""

TOKENS = "hm:tokens"  # zset: token id -> created_at
TOKEN = (
    "hm:token:{id}"  # hash: role, secret_sha256, uses, uses_left, created_at, expires_at, revoked,
    # labels (JSON object)
)
NODES = "hm:nodes"  # zset: node id -> address offset (enrollment order)
NODE = "hm:node:{id}"  # hash: see mesh/nodes.py Node
NODE_BY_WG_KEY = "hm:node-by-wg-key"  # hash: WireGuard public key -> node id (keys never reused)
NODE_BY_IP = "hm:node-by-ip"  # hash: overlay IP -> node id (addresses never reused)
IPAM_NEXT = "hm:ipam:next"  # next host offset inside the overlay network
REVOKED_SERIALS = "hm:revoked-serials"  # set: certificate serials (decimal) refused by the pool
# Node hashes also hold ``labels``: a JSON object, the hub's labels from the node's token.
MESH_CHANGED = "hm:mesh:changed"  # pub/sub: a member joined or left (payload: JSON, a hint)
PATHS = "hm:paths:{id}"  # JSON string (TTL PATHS_TTL): a member's last report of its paths
PATHS_TTL = 30  # seconds: a member that stopped reporting is no longer described
# Refused enrollments written to the audit log from one source address this minute
# (TTL 60 s; past REFUSALS_RECORDED they are counted in the metric only: mesh/audits.py).
REFUSALS = "hm:enroll-refusals:{source}"
POLICY = "hm:policy"  # hash: digest, source, rules (JSON), applied_at, error, error_at
