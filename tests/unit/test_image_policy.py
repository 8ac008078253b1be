"""The hub's image policy at submission, and how a worker names the image an attempt ran."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from hivemind_cluster.agent.pulls import familiar, repository_of, resolved_digest
from hivemind_cluster.core.errors import InvalidInput, PermissionDenied
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.model.spec import DEFAULT_PYTHON_IMAGE, check_submission
from hivemind_cluster.pool.messages import check_result
from hivemind_cluster.protos import pool_pb2 as pb

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
REFERENCES = [
    "python:3.12-slim",
    "ghcr.io/org/tool:1",
    f"registry.example:5000/team/tool@{DIGEST}",
    "127.0.0.1:5000/lab/busybox:1",
]


def submit(image: str, **settings: Any) -> str:
    request = pb.SubmitRequest(image=image, command=["true"])
    return check_submission(request, "op", HubSettings(state_dir="unused", **settings)).image


@pytest.mark.parametrize("image", REFERENCES)
def test_by_default_any_image_reference_may_run(image: str) -> None:
    assert submit(image) == image


def test_only_the_images_the_patterns_name_may_run() -> None:
    policy = {"allowed_images": "hivemind/*, python:3.* ,ghcr.io/org/*"}
    assert submit("python:3.12-slim", **policy) == "python:3.12-slim"
    assert submit("ghcr.io/org/tool:1", **policy) == "ghcr.io/org/tool:1"
    for refused in ("python:2.7", "ghcr.io/other/tool:1", "docker.io/library/python:3.12"):
        with pytest.raises(PermissionDenied, match="hub setting allowed_images"):
            submit(refused, **policy)


def test_the_local_images_are_under_the_policy_too() -> None:
    with pytest.raises(PermissionDenied, match=DEFAULT_PYTHON_IMAGE):
        submit(DEFAULT_PYTHON_IMAGE, allowed_images="python:*")


def test_an_empty_policy_refuses_everything_and_a_bad_reference_stays_invalid() -> None:
    with pytest.raises(PermissionDenied):
        submit("python:3.12-slim", allowed_images="")
    with pytest.raises(InvalidInput, match="not a valid image reference"):
        submit("Python:3")


@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        ("python:3.12-slim", "python"),
        ("registry.example:5000/team/tool:1", "registry.example:5000/team/tool"),
        (f"registry.example:5000/team/tool@{DIGEST}", "registry.example:5000/team/tool"),
        ("registry.example:5000/team/tool", "registry.example:5000/team/tool"),
    ],
)
def test_the_repository_of_a_reference(reference: str, repository: str) -> None:
    assert repository_of(reference) == repository


def test_docker_hub_names_are_compared_as_docker_shows_them() -> None:
    assert familiar("docker.io/library/python") == "python"
    assert familiar("index.docker.io/org/tool") == "org/tool"
    assert familiar("127.0.0.1:5000/lab/busybox") == "127.0.0.1:5000/lab/busybox"


def image(repo_digests: list[str], image_id: str = OTHER) -> Any:
    return cast(Any, SimpleNamespace(attrs={"RepoDigests": repo_digests}, id=image_id))


def test_the_digest_is_the_registrys_for_that_repository_else_the_image_id() -> None:
    pulled = image([f"elsewhere:5000/x@{OTHER}", f"python@{DIGEST}"])
    assert resolved_digest(pulled, "docker.io/library/python:3.12") == DIGEST
    assert resolved_digest(pulled, "python:3.12") == DIGEST
    assert resolved_digest(image([]), "hivemind/busybox:latest") == OTHER
    assert resolved_digest(image([]), f"registry.example:5000/team/tool@{DIGEST}") == DIGEST


def test_a_worker_reports_a_digest_or_nothing() -> None:
    for digest in ("", DIGEST):
        check_result(pb.TaskResult(status="succeeded", image_digest=digest))
    with pytest.raises(InvalidInput, match="image digest"):
        check_result(pb.TaskResult(status="succeeded", image_digest="sha256:zz"))
