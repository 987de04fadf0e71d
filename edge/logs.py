"""How a node's log lines look: text for a person at a terminal, or one JSON object per line for a log collector.

`[server] log_format = "json"` gives every line the same fields, so a query can pick out one job, queue or node
without parsing prose:

    time       RFC 3339 in UTC, milliseconds: "2025-06-01T12:00:00.123Z"
    level      "debug", "info", "warning", "error", "critical"
    logger     the logger's name: "ezthrottle.queues"
    event      what happened, the same for every line of one call site: the message before its arguments
    message    the message with its arguments
    node       this node's id, region its region, once known
    job_id     the job a line is about, queue its queue (a digest, see below), when the call names them
    exception  the traceback, when an exception is logged

No line carries a secret: the code never logs API keys, bearer tokens, webhook secrets or cluster keys (the config
keeps only digests of keys, and `Config.describe` shows secrets as "set"), nor job or webhook URLs, whose paths and
queries can hold credentials, nor headers (`configure_logging` quiets the HTTP library that would). A queue key is
the account, the target origin and a fingerprint of the job's credential (edge/engine/spec.py); a line names its
queue only by `queue_digest`, which tells queues apart and matches `queue_digest()` of a `queue_key` from
GET /api/v1/queues, but gives nobody a fingerprint to test guessed credentials against.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The `extra=` fields a call may pass (see `job_fields`); nothing else a call attaches reaches a JSON line.
JOB_FIELDS = ("job_id", "queue")
QUEUE_DIGEST_HEX_CHARS = 16
# Libraries whose own lines would carry what a node must never log: httpcore logs every response's headers at DEBUG
# (a provider's Set-Cookie, say). (hpack, which logs request headers, is quieted where the server starts.)
QUIETED_LOGGERS = {"httpcore": logging.INFO}


def queue_digest(queue_key: str) -> str:
    """The name of a queue in logs: a prefix of the SHA-256 of its key."""
    return hashlib.sha256(queue_key.encode()).hexdigest()[:QUEUE_DIGEST_HEX_CHARS]


def job_fields(job_id: str, queue_key: str | None = None) -> dict[str, str]:
    """The `extra=` of a log call about one job: its id, and its queue as a digest."""
    fields = {"job_id": job_id}
    if queue_key is not None:
        fields["queue"] = queue_digest(queue_key)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the fields of the module docstring."""

    def __init__(self, *, node: str | None = None, region: str | None = None) -> None:
        super().__init__()
        self._identity: dict[str, str] = {}
        self.identify(node=node, region=region)

    def identify(self, *, node: str | None = None, region: str | None = None) -> None:
        """Name this node on every later line (a clustered node learns its id only once it starts)."""
        for name, value in (("node", node), ("region", region)):
            if value:
                self._identity[name] = value

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        line: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": str(record.msg),
            "message": record.getMessage(),
            **self._identity,
        }
        for name in JOB_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str, *, node: str | None, region: str | None) -> JsonFormatter | None:
    """Send every log line to stderr at `level` in `log_format` ("text" or "json").

    Returns the JSON formatter (to `identify` the node later), or None for text."""
    for name, quieted in QUIETED_LOGGERS.items():
        logging.getLogger(name).setLevel(quieted)
    if log_format != "json":
        logging.basicConfig(level=level, format=TEXT_FORMAT)
        return None
    formatter = JsonFormatter(node=node, region=region)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler])
    return formatter
