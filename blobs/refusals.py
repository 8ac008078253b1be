"""Why the blob store refuses to begin an upload or a result, each as one clear error."""

from __future__ import annotations

from typing import NoReturn

from hivemind_cluster.blobs.states import BlobLimits
from hivemind_cluster.core.errors import Conflict, InvalidInput, TooLarge, Unavailable
from hivemind_cluster.core.units import format_bytes, format_duration


def refuse_begin(
    limits: BlobLimits, outcome: str, value: int, size: int, digest: str, max_blobs: int
) -> NoReturn:
    """The error for what ``hm_blob_begin`` answered (blobs/blobs.lua), but "new"."""
    if outcome == "size":
        raise InvalidInput(
            f"{digest} is {format_bytes(value)} ({value} bytes) on the hub, not {size} bytes"
        )
    if outcome == "quota":
        quota = format_bytes(limits.quota_bytes, exact=True)
        raise TooLarge(
            f"storage quota: {format_bytes(value)} of {quota} used, and this upload needs "
            f"{format_bytes(size)} more (data no task uses expires after "
            f"{format_duration(limits.upload_retention_seconds)})"
        )
    if outcome == "too_many":
        raise Conflict(
            f"{value} unfinished uploads: finish one (resume it) before starting another"
        )
    if outcome == "too_many_blobs":
        raise TooLarge(
            f"storage: {value} blobs held, the most an account may hold is "
            f"{max_blobs} (data no task uses expires after "
            f"{format_duration(limits.upload_retention_seconds)})"
        )
    raise AssertionError(f"hm_blob_begin answered {outcome!r}")


def no_room(free: int, needed: int, margin: int) -> Unavailable:
    return Unavailable(
        f"the hub's disk has {format_bytes(free)} free, and this upload needs "
        f"{format_bytes(needed)} more with {format_bytes(margin)} to spare: try again later"
    )


def check_size(size: int, limit: int, what: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"{what}: size must be a whole number of bytes")
    if size > limit:
        raise TooLarge(
            f"{what} of {format_bytes(size)} is over the hub's limit of "
            f"{format_bytes(limit, exact=True)}"
        )
