"""The JSON API against its own OpenAPI document, with schemathesis generating the input.

Every operation gets generated requests, valid and invalid, with a fresh API token; the
checks: never a 5xx, only documented status codes, bodies, content types and headers as
described.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.pool.ledger import Ledger
from hivemind_cluster.web.constants import CHUNK_TYPE
from tests.support.webkit import WebCluster, api_login, web_cluster

pytestmark = pytest.mark.privileged
users = itertools.count()
# An upload's chunk is raw bytes, sent like any other binary body.
schemathesis.serializer.alias(CHUNK_TYPE, "application/octet-stream")


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebCluster]:
    with web_cluster(redis_server, tmp_path_factory.mktemp("schema")) as found:
        found.start_worker("w1")
        Ledger(found.db()).open_account("project:numpy", "project")
        yield found


@pytest.fixture(scope="module")
def api_client(world: WebCluster) -> FlaskClient:
    return world.app().test_client()


@pytest.fixture(scope="module")
def api_schema(api_client: FlaskClient) -> Any:
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", api_client.application)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,  # the ones documented as always sent (Upload-Offset, ETag)
]


def test_the_api_matches_its_document_and_never_fails_on_bad_input(
    api_schema: Any, api_client: FlaskClient
) -> None:
    # Not schemathesis' pytest plugin: its lazy fixture loading does not work with pytest 9.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 22
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: Any) -> None:
            headers = api_login(api_client, f"schema{next(users)}")  # DELETE /tokens revokes one
            case.call_and_validate(headers=headers, checks=CHECKS)

        check()
