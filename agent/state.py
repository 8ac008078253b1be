"""What an enrolled agent keeps in its state directory.

agent.json   identity and hub peer (no secrets)          0644
wg.key       WireGuard private key                       0600
tls.key      TLS private key                             0600
node.pem     certificate signed by the hub CA            0644
ca.pem       the hub CA (the one pinned by the token)    0644
<if>.conf    wg-quick-compatible config, for inspection  0600
agent.pid    the running service; agent.log its log
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from hivemind_cluster.core.errors import NotFound
from hivemind_cluster.core.files import write_public
from hivemind_cluster.core.names import AGENT_CONFIG, DEFAULT_AGENT_DIR, STATE_FILE
from hivemind_cluster.core.settings import load
from hivemind_cluster.mesh.wireguard import PeerConfig


@dataclass(frozen=True)
class AgentSettings:
    state_dir: str = DEFAULT_AGENT_DIR
    interface: str = "hm0"
    backend: str = "auto"
    # Seconds `join` waits for the hub to answer over the overlay.
    join_timeout: int = 20
    # Capacity offered to the pool: "" detects it; else like "2" / "500m" and "4G".
    cpus: str = ""
    memory: str = ""
    # Labels reported to the pool: "zone=lab,disk=ssd".
    labels: str = ""
    # On SIGTERM, running tasks get this many seconds to finish before they are requeued.
    drain_seconds: int = 30
    # host:port of the local status page (`hivemind-agent run`); "" turns it off. Loopback
    # by default: it shows the node's identity and earnings, and has no login.
    status_listen: str = "127.0.0.1:5000"
    # Where tasks' requirements.txt wheels come from (pip's --index-url, a PEP 503 index);
    # "" uses pip's own configuration on this machine (pip.conf, PIP_INDEX_URL).
    package_index_url: str = ""
    # Bytes the cache of installed requirements may hold; past it, the least recently used
    # installs no running task holds are removed.
    requirements_cache_bytes: int = 4 * 1024 * 1024 * 1024
    # Bytes the cache of tasks' inputs (by digest, shared by all tasks) may hold; past it,
    # the least recently used inputs no running task holds are removed.
    input_cache_bytes: int = 20 * 1024 * 1024 * 1024

    @property
    def path(self) -> Path:
        return Path(self.state_dir)


def load_settings(state_dir: str | None, **overrides: object) -> AgentSettings:
    root = Path(state_dir or DEFAULT_AGENT_DIR)
    return load(AgentSettings, root / AGENT_CONFIG, state_dir=str(root), **overrides)


@dataclass(frozen=True)
class Enrollment:
    node_id: str
    name: str
    role: str
    overlay_ip: str
    overlay_prefix: int
    hub_ip: str
    hub_public_key: str
    hub_endpoint: str
    hub_allowed_ips: tuple[str, ...]
    persistent_keepalive: int
    pool_address: str
    enroll_endpoint: str
    interface: str
    backend: str
    enrolled_at: float

    @property
    def address(self) -> str:
        return f"{self.overlay_ip}/{self.overlay_prefix}"

    @property
    def hub_peer(self) -> PeerConfig:
        return PeerConfig(
            self.hub_public_key, self.hub_allowed_ips, self.hub_endpoint, self.persistent_keepalive
        )

    @property
    def pool_port(self) -> int:
        return int(self.pool_address.rsplit(":", 1)[1])

    def save(self, root: Path) -> None:
        write_public(root / STATE_FILE, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, root: Path) -> Enrollment:
        path = root / STATE_FILE
        if not path.exists():
            raise NotFound(f"this machine is not enrolled (no {path}); run hivemind-agent join")
        data = json.loads(path.read_text())
        data["hub_allowed_ips"] = tuple(data["hub_allowed_ips"])
        return cls(**data)

    @classmethod
    def exists(cls, root: Path) -> bool:
        return (root / STATE_FILE).exists()
