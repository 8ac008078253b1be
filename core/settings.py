"""Typed settings: defaults, then the service's TOML file, then ``HIVEMIND_*`` environment.

``load(HubSettings, path)`` returns a frozen dataclass. Every field can be overridden by
the environment variable ``HIVEMIND_<FIELD>`` (``HIVEMIND_WG_PORT=51821``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from hivemind_cluster.core.errors import InvalidInput, NotFound
from hivemind_cluster.core.names import HUB_CONFIG

S = TypeVar("S")
# Defaults of ``hivemind-hub init`` and of HubSettings.
DEFAULT_OVERLAY = "100.64.0.0/16"
DEFAULT_WG_PORT = 51820
DEFAULT_INTERFACE = "hm0"
ENROLL_PORT = 7443  # an endpoint or listen address without a port means this one
DEFAULT_WEB_PORT = 5001  # the web UI and API, also what a bare ``--api HOST`` means


@dataclasses.dataclass(frozen=True)
class HubSettings:
    # Tables of hub.toml that are not settings: mesh/policy.py reads ``[[policy.allow]]``.
    SECTIONS: ClassVar[tuple[str, ...]] = ("policy",)

    state_dir: str
    # The hub's name in node lists (default: the host name).
    name: str = ""
    # host[:port] agents dial for enrollment (written into every token).
    endpoint: str = ""
    # host:port the enrollment service binds on the underlay.
    enroll_listen: str = f"0.0.0.0:{ENROLL_PORT}"
    overlay: str = DEFAULT_OVERLAY
    wg_port: int = DEFAULT_WG_PORT
    interface: str = DEFAULT_INTERFACE
    redis_port: int = 6379
    pool_port: int = 50051
    web_port: int = DEFAULT_WEB_PORT
    # Prometheus metrics at http://<hub overlay IP>:<metrics_port>/metrics; 0: none.
    metrics_port: int = 9464
    # Keepalive the agents send towards the hub (NAT traversal), seconds.
    persistent_keepalive: int = 25
    # Route traffic between spokes through the hub.
    forward_between_peers: bool = True
    # Drop packets for overlay addresses that arrive on any other interface.
    guard_underlay: bool = True
    # Pool: a worker silent this many seconds is lost and its tasks are requeued.
    heartbeat_timeout: int = 10
    # Task defaults and limits (a submission may ask for less or more, within the limits).
    task_timeout: int = 3600
    max_task_timeout: int = 86400
    max_attempts: int = 3
    task_cpu_millis: int = 1000
    task_memory_bytes: int = 512 * 1024 * 1024
    # A task's own disk: its working copy, /out and /tmp together (agent/taskdisk.py).
    task_disk_bytes: int = 1024 * 1024 * 1024
    max_task_disk_bytes: int = 64 * 1024 * 1024 * 1024
    # May a task ask for network access (`network: true`)? Off: tasks run with no network.
    allow_task_network: bool = False
    # Images a task may name: comma-separated fnmatch patterns matched against the reference
    # as written ("hivemind/*,python:3.*,ghcr.io/our-org/*"). The default "*" lets any image
    # run, since every container is hardened the same way whatever its image.
    allowed_images: str = "*"
    # May a worker pull a missing image from its registry (with its own Docker credentials)?
    # Off: only images already on a worker run.
    allow_pulls: bool = True
    # Output a task attempt may stream to the pool; the rest is dropped, marked truncated.
    log_cap_bytes: int = 4 * 1024 * 1024
    # The rate card, in micro-CPT (1 CPT = 1,000,000): per CPU-second, per GB-second of
    # memory, per GPU-second — of what a task requested, for its wall time, used or not
    # (model/pricing.py). A 1-CPU, 512 MiB task running an hour costs about 0.46 CPT.
    rate_cpu_second: int = 100
    rate_gb_second: int = 50
    rate_gpu_second: int = 2000
    # Blobs (blobs/): task inputs and results by SHA-256, under ``blob_dir`` ("": the
    # state directory's blobs/). An upload, a result: at most these many bytes.
    blob_dir: str = ""
    max_input_bytes: int = 20 * 1024**3
    max_result_bytes: int = 10 * 1024**3
    # Bytes of uploads an account may hold (unfinished uploads count at their full size).
    blob_quota_bytes: int = 100 * 1024**3
    # An upload no task uses is kept this long after its last use; a result this long after
    # its task ended. Then they are removed (the hub's disk does not grow without bound).
    # At least an hour each (blobs/states.py MIN_RETENTION_SECONDS; the hub refuses less).
    upload_retention_seconds: int = 7 * 86400
    result_retention_seconds: int = 7 * 86400
    # URL prefixes workers may fetch inputs from (``--input-url URL#sha256=HEX``),
    # comma-separated ("https://data.example.org/,https://mirror.example.net/pub/");
    # "" allows none.
    input_url_prefixes: str = ""

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.overlay)

    @property
    def hub_ip(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def pool_address(self) -> str:
        """Where the node pool listens: the hub's overlay address only."""
        return f"{self.hub_ip}:{self.pool_port}"

    @property
    def enroll_port(self) -> int:
        return split_host_port(self.enroll_listen, ENROLL_PORT)[1]

    @property
    def path(self) -> Path:
        return Path(self.state_dir)

    @property
    def blob_path(self) -> Path:
        return Path(self.blob_dir) if self.blob_dir else self.path / "blobs"


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """``"192.0.2.1:7443"`` → ``("192.0.2.1", 7443)``; ``"[2001:db8::1]:7443"`` too."""
    value = value.strip()
    if not value:
        raise InvalidInput("empty address")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not host:
        raise InvalidInput(f"address {value!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidInput(f"address {value!r} has an invalid port")
    return host, int(port_text)


def _coerce(field: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in {"1", "true", "yes", "on"}:
                return True
            if str(raw).lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        return str(raw)
    except ValueError:
        raise InvalidInput(f"{source}: {field.name} must be a {kind}, got {raw!r}") from None


def load(cls: type[S], path: Path, **overrides: Any) -> S:
    """Build ``cls`` from defaults, the TOML file at ``path`` (if any), env, then overrides."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path}: not valid TOML ({exc})") from None
        sections: tuple[str, ...] = getattr(cls, "SECTIONS", ())
        for key, raw in data.items():
            if key in sections:
                continue
            if key not in fields:
                raise InvalidInput(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(fields[key], raw, str(path))
    for name, field in fields.items():
        env = os.environ.get(f"HIVEMIND_{name.upper()}")
        if env is not None and name != "state_dir":
            values[name] = _coerce(field, env, f"HIVEMIND_{name.upper()}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def dump(settings: Any) -> str:
    """Render a settings dataclass as TOML (flat: strings, integers, booleans)."""
    lines = []
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{field.name} = {text}")
    return "\n".join(lines) + "\n"


def load_hub_settings(state_dir: str) -> HubSettings:
    """The settings of the hub whose state directory is ``state_dir``."""
    path = Path(state_dir) / HUB_CONFIG
    if not path.exists():
        raise NotFound(f"no hub in {state_dir} (create one with: hivemind-hub init)")
    return load(HubSettings, path, state_dir=state_dir)
