"""The JSON log line: stable fields, one line per record, only the fields it names, queues only as digests."""

from __future__ import annotations

import json
import logging
import re
import sys

from edge.logs import JsonFormatter, job_fields, queue_digest

QUEUE_KEY = "acme|https://api.stripe.com|0123456789abcdef01234567"


def record(message: str, *args: object, extra: dict[str, object] | None = None, exc: bool = False) -> logging.LogRecord:
    logger = logging.getLogger("ezthrottle.test")
    made = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, message, args, sys.exc_info() if exc else None, extra=extra
    )
    made.created = 1_750_000_000.25
    return made


def test_a_line_has_the_stable_fields() -> None:
    formatter = JsonFormatter(region="iad")
    formatter.identify(node="3d8d9930b32189")
    line = formatter.format(record("job %s accepted", "j1", extra=job_fields("j1", QUEUE_KEY)))
    assert json.loads(line) == {
        "time": "2025-06-15T15:06:40.250Z",
        "level": "info",
        "logger": "ezthrottle.test",
        "event": "job %s accepted",  # the same for every job: what to group or alert on
        "message": "job j1 accepted",
        "node": "3d8d9930b32189",
        "region": "iad",
        "job_id": "j1",
        "queue": queue_digest(QUEUE_KEY),
    }


def test_fields_are_left_out_until_known_and_other_extras_never_appear() -> None:
    line = json.loads(JsonFormatter().format(record("started", extra={"token": "sk_live_secret"})))
    assert set(line) == {"time", "level", "logger", "event", "message"}


def test_one_line_per_record_with_the_traceback_inside() -> None:
    try:
        raise RuntimeError("store failed\nbadly")
    except RuntimeError:
        line = JsonFormatter().format(record("could not save job %s", "j1", exc=True))
    assert "\n" not in line
    assert re.search(r"RuntimeError: store failed\nbadly$", json.loads(line)["exception"])


def test_a_queue_is_named_by_a_short_stable_digest_of_its_key() -> None:
    digest = queue_digest(QUEUE_KEY)
    assert re.fullmatch(r"[0-9a-f]{16}", digest) and digest == queue_digest(QUEUE_KEY)
    assert digest != queue_digest(QUEUE_KEY.replace("acme", "other"))
    assert job_fields("j1") == {"job_id": "j1"}
