"""The executor reports what it cannot send as the attempt's error; it never raises for it."""

from __future__ import annotations

import httpx
import pytest

from edge.engine.shell.executor import Executor, Timeouts
from edge.outbound.client import OutboundHttp


@pytest.mark.parametrize(
    ("headers", "body"),
    [({"X-Note": "caf\u00e9"}, None), ({}, "\ud800")],
    ids=["a non-ASCII header value", "a body with a lone surrogate"],
)
async def test_a_request_that_cannot_be_encoded_is_a_final_error(headers: dict[str, str], body: str | None):
    """Jobs stored before intake refused these (edge/engine/spec.py) once stopped the node at their first attempt."""
    sent: list[httpx.Request] = []
    executor = Executor(OutboundHttp(httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200))))
    result = await executor.execute(
        method="POST",
        url="https://api.example.com/x",
        headers=headers,
        body=body,
        timeouts=Timeouts(connect_s=1, read_s=1, total_s=1),
    )
    assert result.status_code is None and result.error and "cannot be encoded" in result.error
    assert not result.retryable and not sent
