"""What the blob store's callers hold on to: its limits (from the hub's settings) and the
state of an upload, as the gRPC and HTTP APIs show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.protos import pool_pb2 as pb


@dataclass(frozen=True)
class BlobLimits:
    max_input_bytes: int
    max_result_bytes: int
    quota_bytes: int
    upload_retention_seconds: int
    result_retention_seconds: int

    @classmethod
    def from_settings(cls, settings: HubSettings) -> BlobLimits:
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
