"""Schemathesis over /openapi.json: whatever it sends, Keepers never answers 5xx, and every
status it answers is one the schema documents.

(Driven through schemathesis' programmatic API: its pytest plugin does not support pytest 9.)
"""

from __future__ import annotations

import base64

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from keepers.services.keepers import Keepers
from keepers.settings import Settings
from keepers.web.app import create_app

ADMIN_TOKEN = "fuzz-admin-token"


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzz") / "fuzz.duckdb")
    keepers = Keepers.open(Settings(database_url=path))
    _, write_key = keepers.create_write_key("fuzz")
    app = create_app(Settings(database_url=path, admin_token=ADMIN_TOKEN), keepers)
    yield schemathesis.openapi.from_asgi("/openapi.json", app), write_key
    keepers.close()


def auth_for(path: str, write_key: str) -> dict[str, str]:
    if path.startswith("/api"):
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}


def test_no_input_makes_the_server_fail(fuzz_target):
    schema, write_key = fuzz_target
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18  # every tracking path and the management API are covered
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case) -> None:
            case.call_and_validate(
                headers=auth_for(case.path, write_key),
                # /api/compute may start Spark (engine=spark): the first session takes ~10 s
                timeout=180,
                checks=[not_a_server_error, status_code_conformance],
            )

        check()
