"""Dialling the pool: an ``Identity`` (certificate, key, CA, address) and channels from it.

An identity is read from an agent's state directory (``node.pem``, ``tls.key``,
``ca.pem``, ``agent.json``) or from a hub's (its own client certificate ``hub-client.pem``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from hivemind_cluster.core.errors import NotFound, PermissionDenied
from hivemind_cluster.core.grpcutil import POOL_CHANNEL_OPTIONS
from hivemind_cluster.core.names import (
    CA_CERT,
    DEFAULT_AGENT_DIR,
    DEFAULT_HUB_DIR,
    HUB_CLIENT_CERT,
    HUB_CLIENT_KEY,
    HUB_CONFIG,
    HUB_NODE_ID,
    NODE_CERT,
    STATE_FILE,
    TLS_KEY,
)
from hivemind_cluster.core.settings import load_hub_settings

DEFAULT_IDENTITIES = (DEFAULT_AGENT_DIR, DEFAULT_HUB_DIR)


@dataclass(frozen=True)
class Identity:
    node_id: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    pool_address: str

    @classmethod
    def load(cls, directory: str | Path | None = None) -> Identity:
        """From ``directory``, ``$HIVEMIND_IDENTITY``, or the default agent/hub state dirs."""
        candidates = (
            [str(directory)]
            if directory
            else [os.environ["HIVEMIND_IDENTITY"]]
            if os.environ.get("HIVEMIND_IDENTITY")
            else list(DEFAULT_IDENTITIES)
        )
        for candidate in candidates:
            root = Path(candidate)
            try:
                if (root / STATE_FILE).exists():
                    return cls._from_agent(root)
                if (root / HUB_CONFIG).exists():
                    return cls._from_hub(root)
            except PermissionError:
                raise PermissionDenied(
                    f"cannot read the identity in {root} (run as root?)"
                ) from None
            except FileNotFoundError as exc:
                missing = Path(str(exc.filename)).name
                raise NotFound(f"the identity in {root} is incomplete: no {missing}") from None
        raise NotFound(
            f"no HiveMind identity in {' or '.join(candidates)}: join the overlay "
            "(hivemind-agent join) or pass --identity DIR"
        )

    @classmethod
    def _from_agent(cls, root: Path) -> Identity:
        state = json.loads((root / STATE_FILE).read_text())
        return cls(
            state["node_id"],
            (root / NODE_CERT).read_bytes(),
            (root / TLS_KEY).read_bytes(),
            (root / CA_CERT).read_bytes(),
            state["pool_address"],
        )

    @classmethod
    def _from_hub(cls, root: Path) -> Identity:
        settings = load_hub_settings(str(root))
        return cls(
            HUB_NODE_ID,
            (root / HUB_CLIENT_CERT).read_bytes(),
            (root / HUB_CLIENT_KEY).read_bytes(),
            (root / CA_CERT).read_bytes(),
            settings.pool_address,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)


def aio_channel(identity: Identity, address: str | None = None) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        address or identity.pool_address, identity.credentials(), options=POOL_CHANNEL_OPTIONS
    )


def sync_channel(identity: Identity, address: str | None = None) -> grpc.Channel:
    return grpc.secure_channel(
        address or identity.pool_address, identity.credentials(), options=POOL_CHANNEL_OPTIONS
    )
