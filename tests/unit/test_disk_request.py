"""The disk a task asks for (``--disk``, the API's ``disk``, task.json's ``storage_gb``): parsed,
defaulted and bounded by the hub before anything is stored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hivemind_cluster.client import poolcli
from hivemind_cluster.client.cli import build_hivemind_parser
from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model import submission
from hivemind_cluster.model.spec import check_submission
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.tasks import held_bundle

GIB = 1024 * MIB


def disk_of(request: pb.SubmitRequest, **settings: Any) -> int:
    return check_submission(request, "op", HubSettings(state_dir="unused", **settings)).disk_bytes


def disk_with_bundle(files: dict[str, str], **fields: Any) -> int:
    """The disk of a submission of a bundle of ``files`` (held on the hub)."""
    with held_bundle(files) as data:
        assert data.bundle is not None
        request = pb.SubmitRequest(bundle_digest=data.bundle.digest, **fields)
        settings = HubSettings(state_dir="unused")
        return check_submission(request, "op", settings, data).disk_bytes


def test_the_flag_reaches_the_api_body_and_the_request() -> None:
    args = build_hivemind_parser().parse_args(["submit", "--disk", "2G", "--", "true"])
    body = poolcli.submit_body(args)
    assert body["disk"] == "2G"
    assert submission.from_json({**body, "image": "busybox"}).disk_bytes == 2 * GIB
    assert submission.from_form({"disk": "512M", "image": "busybox"}).disk_bytes == 512 * MIB


def test_the_hub_default_fills_in_and_its_maximum_bounds() -> None:
    plain = pb.SubmitRequest(image="busybox", command=["true"])
    assert disk_of(plain) == GIB
    assert disk_of(plain, task_disk_bytes=2 * GIB) == 2 * GIB
    big = pb.SubmitRequest(image="busybox", command=["true"], disk_bytes=8 * GIB)
    assert disk_of(big) == 8 * GIB
    with pytest.raises(InvalidInput, match="disk must be between 16 MiB and 4 GiB"):
        disk_of(big, max_task_disk_bytes=4 * GIB)
    with pytest.raises(InvalidInput, match="got 1 MiB"):
        disk_of(pb.SubmitRequest(image="busybox", command=["true"], disk_bytes=MIB))


def test_task_json_storage_gb_is_the_disk_and_a_flag_wins() -> None:
    files = {"main.py": "", "task.json": json.dumps({"requirements": {"storage_gb": 2}})}
    assert disk_with_bundle(files) == 2 * GIB
    assert disk_with_bundle(files, disk_bytes=3 * GIB) == 3 * GIB
    bad = {"main.py": "", "task.json": '{"storage_gb": "lots"}'}
    with pytest.raises(InvalidInput, match="storage_gb must be a number above 0"):
        disk_with_bundle(bad)
