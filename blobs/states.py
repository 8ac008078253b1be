"""What the blob store's callers hold on to: its limits (from the hub's settings) and the
state of an upload, as the gRPC and HTTP APIs show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.units import format_duration
from hivemind_cluster.protos import pool_pb2 as pb

# The least retention a hub may set: a task's data must outlive its submission by far (the
# garbage collector spares pins for PIN_GRACE_SECONDS, blobs/garbage.py) and an upload a
# slow client's pauses.
MIN_RETENTION_SECONDS = 3600
DISK_MARGIN_BYTES = 1 << 30  # free disk an upload or a result may not take from the hub


@dataclass(frozen=True)
class BlobLimits:
    max_input_bytes: int
    max_result_bytes: int
    quota_bytes: int
    upload_retention_seconds: int
    result_retention_seconds: int
    disk_margin_bytes: int = DISK_MARGIN_BYTES

    @classmethod
    def from_settings(cls, settings: HubSettings) -> BlobLimits:
        """The hub's limits; InvalidInput for a retention shorter than
        MIN_RETENTION_SECONDS."""
        for name in ("upload_retention_seconds", "result_retention_seconds"):
            seconds = getattr(settings, name)
            if seconds < MIN_RETENTION_SECONDS:
                raise InvalidInput(
                    f"hub setting {name} is {seconds}: it must be at least "
                    f"{MIN_RETENTION_SECONDS} ({format_duration(MIN_RETENTION_SECONDS)})"
                )
        return cls(
            max_input_bytes=settings.max_input_bytes,
            max_result_bytes=settings.max_result_bytes,
            quota_bytes=settings.blob_quota_bytes,
            upload_retention_seconds=settings.upload_retention_seconds,
            result_retention_seconds=settings.result_retention_seconds,
        )


@dataclass(frozen=True)
class UploadState:
    upload_id: str  # "" when nothing is to be sent (complete)
    offset: int  # bytes the hub holds
    size: int
    digest: str  # announced ("" for a browser's that announced none, until complete)
    complete: bool  # stored and verified: refer to it by digest

    def message(self) -> pb.UploadState:
        return pb.UploadState(
            upload_id=self.upload_id,
            offset=self.offset,
            size=self.size,
            digest=self.digest,
            complete=self.complete,
        )

    def as_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def stored(cls, digest: str, size: int) -> UploadState:
        return cls("", size, size, digest, True)
