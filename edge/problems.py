"""RFC 9457 problem details: every error the HTTP API returns.

Handlers raise `Problem`; the ASGI app turns it into an `application/problem+json` response. A problem that is
about one field of the request names it (`field`, a JSON-pointer-like dotted path such as `webhooks[0].url`), so a
client can show the user exactly what to fix.
"""

from __future__ import annotations

import json
from typing import Any

PROBLEM_CONTENT_TYPE = b"application/problem+json"
PROBLEM_TYPE_BASE = "https://ezthrottle.dev/problems/"


class Problem(Exception):
    """An HTTP error response, raised from anywhere below the ASGI app."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        kind: str | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind or title.lower().replace(" ", "-")
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self, instance: str | None = None) -> bytes:
        doc: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + self.kind, "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if self.field:
            doc["field"] = self.field
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return json.dumps(doc).encode()


def invalid(field: str, detail: str) -> Problem:
    """422: the request was JSON but a field is wrong."""
    return Problem(422, "Invalid field", f"{field}: {detail}", kind="invalid-field", field=field)


STORE_UNAVAILABLE = "store-unavailable"
STORE_RETRY_AFTER_S = 5


def store_unavailable(detail: str) -> Problem:
    """503: a store (this node's, or that of a peer the request needed) failed, so the request did not take effect;
    the client retries after a few seconds, as a full or failing disk rarely recovers at once."""
    return Problem(
        503,
        "Store unavailable",
        detail,
        kind=STORE_UNAVAILABLE,
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )
