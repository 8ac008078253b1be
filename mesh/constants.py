"""Every Redis key the mesh uses, in one place."""

TOKENS = "hm:tokens"  # zset: token id -> created_at
TOKEN = (
    "hm:token:{id}"  # hash: role, secret_sha256, uses, uses_left, created_at, expires_at, revoked
)
NODES = "hm:nodes"  # zset: node id -> address offset (enrollment order)
NODE = "hm:node:{id}"  # hash: see mesh/nodes.py Node
NODE_BY_WG_KEY = "hm:node-by-wg-key"  # hash: WireGuard public key -> node id (keys never reused)
NODE_BY_IP = "hm:node-by-ip"  # hash: overlay IP -> node id (addresses never reused)
IPAM_NEXT = "hm:ipam:next"  # next host offset inside the overlay network
REVOKED_SERIALS = "hm:revoked-serials"  # set: certificate serials (decimal) refused by the pool
