"""What one outbound attempt produced, as plain data: the executor (the shell) reports it, the queue core judges it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt produced: a response, or an error string (then `status_code` is None)."""

    duration_s: float
    status_code: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    body_truncated: bool = False
    error: str | None = None
    retryable: bool = True  # False for errors that no retry can fix (the SSRF guard refused the target)

    def response_dict(self) -> dict[str, Any]:
        """The `response` object of the webhook payload and the job record."""
        headers: dict[str, str] = {}
        for name, value in self.headers:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        response: dict[str, Any] = {"status_code": self.status_code, "headers": headers, "body": self.body}
        if self.body_truncated:
            response["body_truncated"] = True
        return response
