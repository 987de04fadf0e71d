"""schemathesis against a real node process with the node's own /openapi.json: no 5xx, every answer as documented.

Every operation gets positive and negative examples (a bounded number, derandomised so CI is repeatable): the answer
must not be a 5xx, its status, content type, headers and body must be documented, bad input must be refused with a
4xx, and an operation that needs a key must refuse a call without one.

Nothing leaves the machine: the node refuses loopback and private targets (allow_private_targets off), and every
job that schemathesis makes up is moved to `RETRY_AT_MAX` before it is sent (`keep_waiting`), so the node accepts
jobs for made-up hosts but never attempts them; the last test checks on the node's own metrics that it did not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from edge.engine.spec import CAMEL_ALIASES, DEADLINE_MS_MAX, RETRY_AT_MAX
from edge.http.openapi import document
from tests.e2e.support import auth, free_port, write_config

pytestmark = pytest.mark.slow

# The job submission is the operation with the most to find, and the coverage phase (every boundary of every field,
# nested jobs included) alone would take most of a minute on it: it gets more random examples instead, and
# tests/edge/http/test_openapi.py holds the job schema's bounds to the validator's directly.
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": 25, "deterministic": True, "database": "none"},
        "operations": [
            {
                "include-operation-id": "submitJob",
                "phases": {"coverage": {"enabled": False}},
                "generation": {"max-examples": 150},
            }
        ],
    }
)
STARTUP_TIMEOUT_S = 20.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    unsupported_method,
]
NESTED_JOBS = ("on_success", "on_failure", "fallback_job")
# (field, the value that keeps a job from ever being due, the largest value the node accepts; all start at 0).
# on_failure_timeout_ms too: when it passes, the job fails and its webhooks are delivered.
NEVER_DUE = (("retry_at", RETRY_AT_MAX, RETRY_AT_MAX), ("on_failure_timeout_ms", None, DEADLINE_MS_MAX))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A node process with the e2e accounts, refusing private targets; its base URL."""
    directory = tmp_path_factory.mktemp("node")
    config, log, port = write_config(directory, allow_private=False), directory / "node.log", free_port()
    command = [sys.executable, "-m", "edge", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    with open(log, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process, log)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the node was not ready within {STARTUP_TIMEOUT_S:g} s:\n{log.read_text()}")


def keep_waiting(job: Any) -> None:
    """Make a generated job, and every job nested in it, never due (NEVER_DUE), so the node never attempts it nor
    delivers its webhooks.

    The job stays as valid or invalid as generated: a valid or absent field becomes another valid value, an invalid
    one is left for the node to refuse. (The snake_case field wins over its alias, as in `validate_job`.)"""
    if not isinstance(job, dict):
        return
    for name, waiting, accepted_max in NEVER_DUE:
        value = job[name] if name in job else job.get(CAMEL_ALIASES[name])
        if value is None or (type(value) is int and 0 <= value <= accepted_max):
            job[name] = waiting
    for name in NESTED_JOBS:
        keep_waiting(job.get(name))
        keep_waiting(job.get(CAMEL_ALIASES[name]))


def keep_envelope_waiting(call: Any) -> None:
    """The same for a job inside an SDK envelope's `body` string, if it holds one."""
    if not isinstance(call, dict) or not isinstance(call.get("body"), str):
        return
    try:
        inner = json.loads(call["body"])
    except ValueError:
        return
    if isinstance(inner, dict):
        keep_waiting(inner)
        call["body"] = json.dumps(inner)


# The document the node serves (test_the_document_is_served_without_a_key checks they are the same). Loaded here, not
# from the node: schemathesis's fixture-loaded schemas do not run under pytest 9.
schema = schemathesis.openapi.from_dict(document(), config=CONFIG)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case, node: str) -> None:
    if case.path == "/api/v1/jobs":
        keep_waiting(case.body)
    elif case.path == "/api/v1/proxy":
        keep_envelope_waiting(case.body)
    case.call_and_validate(base_url=node, headers=auth(), checks=CHECKS)


def test_the_document_is_served_without_a_key(node: str) -> None:
    response = httpx.get(f"{node}/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == document()


def test_a_job_submitted_read_and_cancelled_answers_as_documented(node: str) -> None:
    job = {"url": "https://api.example.com/v1/ping", "retry_at": RETRY_AT_MAX}  # no webhooks: a cancel delivers them
    with httpx.Client(base_url=node, headers=auth()) as client:
        submitted = client.post("/api/v1/jobs", json=job)
        schema["/api/v1/jobs"]["POST"].validate_response(submitted)
        job_id = submitted.json()["job_id"]
        for method in ("GET", "DELETE"):
            answer = client.request(method, f"/api/v1/jobs/{job_id}")
            assert answer.status_code == 200, answer.text
            schema["/api/v1/jobs/{job_id}"][method].validate_response(answer)


def test_the_node_never_called_out(node: str) -> None:
    """Runs last: no attempt and no webhook delivery, whatever the examples were."""
    metrics = httpx.get(f"{node}/metrics").text.splitlines()
    totals = [
        line
        for line in metrics
        if line.startswith(("ezthrottle_attempts_total", "ezthrottle_webhook_deliveries_total"))
    ]
    assert totals and all(float(line.rsplit(" ", 1)[1]) == 0 for line in totals), totals
