"""Schemathesis (acceptance check 8) against the app's own OpenAPI document: every operation, authenticated.

The pytest equivalent of `st run .../openapi.json -H "Authorization: Bearer KEY" --checks all
--exclude-checks positive_data_acceptance`. The app runs in process (ASGI) on a copy of the world template
(alice's network, dataset, jobs and model), per operation (`@schema.parametrize()`: explicit examples, coverage
and fuzzing phases). Its state machine is not run (see the note above the checks test).

`positive_data_acceptance` is excluded: the schema cannot express the semantic limits (max_params, a network's
shape against a dataset's, softmax + cross_entropy, ...), so a schema-valid request is rejectable by design.
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import string
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.transport import Response as StResponse

from app.db.models import ApiKey
from app.db.session import Database
from app.main import create_app
from tests.api.conftest import sqlite_url
from tests.security.conftest import ALICE, LEAK_RE, PROBLEM, SUMMARY, Template, sha256_hex, small_settings

load_all_checks()
EXCLUDED = {"positive_data_acceptance"}
REQUIRED = {
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "ignored_auth",
    "use_after_free",
}
CHECK_FUNCS = [c for c in CHECKS.get_all() if c.__name__ not in EXCLUDED]
MAX_EXAMPLES = 25  # fuzzing examples per operation, on top of the explicit-examples and coverage phases

COUNTS: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()


def problem_and_no_leak(ctx: Any, response: StResponse, case: schemathesis.Case) -> bool | None:
    """Our own check: errors are problem+json with type/title/status/detail; no body leaks a traceback or a path."""
    ctype = (response.headers.get("content-type") or [""])[0]  # lowercase keys, list values
    STATUSES[response.status_code] += 1
    if ctype.startswith("application/octet-stream"):
        return None
    text = response.text or ""
    assert not LEAK_RE.search(text), f"response body leaks internals: {text[:300]!r}"
    if response.status_code >= 400:
        assert ctype.startswith(PROBLEM), f"error with content type {ctype!r}"
        body = response.json()
        assert {"type", "title", "status", "detail"} <= body.keys(), body
        assert body["status"] == response.status_code
    return None


# `schemathesis.pytest.from_fixture` (a lazily loaded schema) breaks on pytest 9.2 (it sets the removed
# `Function._nodeid`), so the schema is loaded eagerly, at import, from an app whose Database has not connected
# yet; `st_env` puts a copy of the world template at that database's path before any case runs. The key is
# chosen here too, because schemathesis fixes configured headers when it builds the tests (like `st run -H`):
# `st_env` stores its sha256 as one of alice's keys.
_DB_DIR = Path(tempfile.mkdtemp(prefix="bp-schemathesis-"))
atexit.register(shutil.rmtree, _DB_DIR, ignore_errors=True)  # also when the module is collected but not run
_DB_URL = sqlite_url(_DB_DIR / "st.db")
_DB = Database(_DB_URL)
APP = create_app(small_settings(_DB_URL), db=_DB)
_PREFIX = "bp_live_" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
_SECRET = secrets.token_urlsafe(32)
KEY = f"{_PREFIX}_{_SECRET}"

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.auth()
class BearerKey:
    """The key as an auth provider, not a fixed header: schemathesis then knows the credentials are explicit and
    valid, and its ignored_auth check probes every operation without them and with invalid ones (a plain header
    counts as generated auth once an operation has other header parameters, such as Idempotency-Key)."""

    def get(self, case: schemathesis.Case, ctx: Any) -> str:
        return KEY

    def set(self, case: schemathesis.Case, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module", autouse=True)
def st_env(world_template: Template) -> Iterator[None]:
    for suffix in ("", "-wal", "-shm"):
        part = world_template.path.with_name(world_template.path.name + suffix)
        if part.exists():
            shutil.copyfile(part, _DB_DIR / f"st.db{suffix}")
    with _DB.session() as s:
        s.add(ApiKey(prefix=_PREFIX, secret_sha256=sha256_hex(_SECRET), owner=ALICE, name="schemathesis"))
    try:
        yield
    finally:
        _DB.dispose()
        shutil.rmtree(_DB_DIR, ignore_errors=True)
        line = (
            f"schemathesis: {COUNTS['cases']} generated cases (plus check probes); "
            f"statuses {dict(sorted(STATUSES.items()))}"
        )
        SUMMARY.append(line)


def test_the_key_is_accepted() -> None:
    """Without this every generated case could be a 401 and the run would prove little."""
    case = schema["/v1/networks"]["GET"].Case()
    response = case.call(headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api(case: schemathesis.Case) -> None:
    COUNTS["cases"] += 1
    case.call_and_validate(checks=CHECK_FUNCS, additional_checks=[problem_and_no_leak])


# The schemathesis state machine (schema.as_state_machine()) is not run: its links infer ids from the list
# endpoints, whose contents differ between Hypothesis test cases, and Hypothesis then stops every run with
# FlakyStrategyDefinition before any result. Stateful tenancy is covered by tests/security/test_tenants_stateful.py.


def test_the_checks_asked_for_are_all_run() -> None:
    names = {c.__name__ for c in CHECK_FUNCS}
    assert not REQUIRED - names, REQUIRED - names
    if COUNTS["cases"]:  # test_api ran before (file order), unless deselected
        assert COUNTS["cases"] >= 300, COUNTS  # "a few hundred" at least
        assert STATUSES[200] + STATUSES[201] + STATUSES[204] >= 50, STATUSES  # authenticated cases got through
