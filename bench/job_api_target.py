"""The intake candidate: a real node's job API, served by the `bench.intake` harness (`FACTORY`).

The served app starts `run_node` in its ASGI lifespan (config: one account, the SQLite store in a temporary
data dir, defaults otherwise), so the node lives exactly as long as the server process, and answers with that
node's `JobApi`: validation, authentication, the durable insert (group commit, fsync) and the queue, all real.

Every request must be a new job. h2load and wrk send one body over and over, and a job without an
`idempotent_key` gets one derived from (account, url, method, body): identical bodies would be one job followed
by 200 duplicates, which is not the intake path. Several load-generator runs with different bodies would not
help (each run is still one job). So the body carries a fixed-width placeholder key and the served app swaps in
a counter of the same width before the node reads the body: one `bytes.replace` on a ~600-byte body, no JSON
round trip, and the declared content-length stays right. That small cost is charged to the candidate.

The same app serves `bench.proxy_intake`'s SDK envelopes (`POST /api/v1/proxy`): the placeholder sits in the
envelope's `body` string just as well (its characters need no escaping), and there the created job shows in the
answer's `forwarded_response` (`PROXY_CREATED`), since the envelope's own status is 200.

To spread jobs over several queue keys (and so over a cluster's owners), a body may also carry
`PLACEHOLDER_CREDENTIAL` in its credential header: given `credentials` (each as wide), the app swaps in one after
another, the same way.

The jobs carry `retry_at` in 2100, so none runs during the benchmark: this measures intake alone.

Durability ("every job durable before its 201"): the app counts the 201s it actually sent and reports them with
the store's file at `DURABILITY_PATH`; `verify_durability`, which `bench.intake` calls after its last round,
counts the account's jobs in that file through its own SQLite connection in the bench process, so it sees only
what reached the file. `ACKNOWLEDGED_PATH` lists the numbers of the keys answered 201 (`intake_key` spells
one), for checks of where each acknowledged job is.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import sqlite3
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.common import BenchTarget, ServedTarget
from bench.intake import SAMPLE_JOB
from edge.config import Config, load_config, with_dev_account
from edge.http.api import JobApi
from edge.http.server import ASGIMessage, ASGIReceive, ASGIScope, ASGISend
from edge.node import STORE_FILENAME, Node, run_node
from edge.runtime import Runtime

FACTORY = "bench.job_api_target:job_api_target"
JOBS_PATH = "/api/v1/jobs"
PROXY_PATH = "/api/v1/proxy"
# How the node's envelope answer (compact JSON) says that its inner call created a job; the inner answer's own body
# is an escaped string inside it, so this cannot match there.
PROXY_CREATED = b'"forwarded_response":{"status_code":201,'
DURABILITY_PATH = "/bench/durability"
ACKNOWLEDGED_PATH = "/bench/acknowledged"
BENCH_ACCOUNT_ID = "bench"
BENCH_ACCOUNT_KEY = "ck_bench_0123456789abcdef"
# Jobs wait until 2100-01-01: accepted and durable, never executed while the benchmark runs.
FAR_FUTURE_MS = 4_102_444_800_000
# The default (100,000 unfinished jobs per account) would answer 429 once a fast machine had queued that many.
INTAKE_BACKLOG_MAX = 100_000_000
KEY_DIGITS = 12
PLACEHOLDER_KEY = "intake-" + "x" * KEY_DIGITS
PLACEHOLDER_CREDENTIAL = "credential-" + "x" * KEY_DIGITS


def intake_key(number: int) -> str:
    """The idempotent key the served app gives its `number`-th job (as wide as PLACEHOLDER_KEY)."""
    return f"intake-{number:0{KEY_DIGITS}d}"


def bench_config(data_dir: Path, settings: Mapping[str, Any] | None = None) -> Config:
    """A node config for benchmarks: loopback on a free port, `data_dir`, one pro account, dotted `settings`."""
    overrides = {"server.listen": "127.0.0.1:0", "server.data_dir": str(data_dir), **(settings or {})}
    config = load_config(None, env={}, overrides=overrides)
    return with_dev_account(config, account_id=BENCH_ACCOUNT_ID, key=BENCH_ACCOUNT_KEY)


def bench_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {BENCH_ACCOUNT_KEY}", "content-type": "application/json"}


class UniqueJobIntake:
    """The served app: a node in the lifespan, its job API with a fresh idempotent key per request."""

    __slots__ = ("_acknowledged", "_api", "_created", "_credentials", "_keys", "_runtime", "_settings", "_store_file")

    def __init__(
        self, settings: Mapping[str, Any] | None = None, first_key: int = 0, credentials: Sequence[str] = ()
    ) -> None:
        """`settings` are config overrides (a clustered node's, say); keys are numbered from `first_key`, so
        several nodes fed the same body still create distinct jobs. `credentials` take the place of
        PLACEHOLDER_CREDENTIAL in turn."""
        if any(len(credential) != len(PLACEHOLDER_CREDENTIAL) for credential in credentials):
            raise ValueError(f"every credential must be {len(PLACEHOLDER_CREDENTIAL)} characters, as the placeholder")
        self._runtime = Runtime.real()
        self._settings = dict(settings or {})
        self._api: JobApi | None = None
        self._store_file: Path | None = None
        self._keys = itertools.count(first_key)
        self._credentials = [credential.encode() for credential in credentials]
        self._created = 0
        self._acknowledged: list[int] = []

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await self._run_node(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == DURABILITY_PATH:
            report = {"responses_201": self._created, "store_file": str(self._store_file)}
            await _respond_json(send, report)
            return
        if scope["path"] == ACKNOWLEDGED_PATH:
            await _respond_json(send, {"numbers": self._acknowledged})
            return
        assert self._api is not None, "requests arrive only after the lifespan started the node"
        number = None
        if scope["path"] in (JOBS_PATH, PROXY_PATH) and scope["method"] == "POST":
            number = next(self._keys)
            receive = await self._with_unique_key(receive, number)
        proxied = scope["path"] == PROXY_PATH

        def created() -> None:
            self._created += 1
            if number is not None:
                self._acknowledged.append(number)

        async def counting_send(message: ASGIMessage) -> None:
            if proxied and message["type"] == "http.response.body" and PROXY_CREATED in message.get("body", b""):
                # Counted as a direct 201 is, once its start is out: before the body, which a client that leaves
                # (h2load, at the end of a run) may never take.
                created()
            await send(message)
            if message["type"] == "http.response.start" and message["status"] == 201:
                created()

        await self._api(scope, receive, counting_send)

    async def _with_unique_key(self, receive: ASGIReceive, number: int) -> ASGIReceive:
        """Read the whole body, give it key `number` (and a credential), and hand the node that body as one message."""
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        body = b"".join(chunks).replace(PLACEHOLDER_KEY.encode(), intake_key(number).encode(), 1)
        if self._credentials:
            credential = self._credentials[number % len(self._credentials)]
            body = body.replace(PLACEHOLDER_CREDENTIAL.encode(), credential, 1)
        replayed = False

        async def replay() -> ASGIMessage:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    async def _run_node(self, receive: ASGIReceive, send: ASGISend) -> None:
        """Run the node for the server's lifetime.

        The harness stops servers with SIGTERM, whose default action would leave the data dir behind: catch it,
        stop the node and remove its files, then let SIGTERM end the process as it would have.
        """
        await receive()  # lifespan.startup
        with (
            tempfile.TemporaryDirectory(prefix="bench-job-api-") as data_dir,
            trio.open_signal_receiver(signal.SIGTERM) as terminations,
        ):
            config = bench_config(Path(data_dir), {"server.account_backlog_max": INTAKE_BACKLOG_MAX, **self._settings})
            async with trio.open_nursery() as nursery:
                node: Node = await nursery.start(run_node, config, self._runtime)
                self._store_file = Path(data_dir) / STORE_FILENAME
                self._api = node.app
                await send({"type": "lifespan.startup.complete"})
                async for _ in terminations:
                    break
                node.stop()
        signal.raise_signal(signal.SIGTERM)


def job_api_target() -> BenchTarget:
    job = {**SAMPLE_JOB, "idempotent_key": PLACEHOLDER_KEY, "retry_at": FAR_FUTURE_MS}
    return BenchTarget(
        app=UniqueJobIntake(),
        path=JOBS_PATH,
        headers=tuple(bench_headers().items()),
        body=json.dumps(job).encode(),
    )


def verify_durability(served: ServedTarget) -> dict[str, Any]:
    """Compare the 201s the node sent with the jobs in its SQLite file, counted from this process."""
    report = httpx.get(served.base_url + DURABILITY_PATH, timeout=10).json()
    with contextlib.closing(sqlite3.connect(f"file:{report['store_file']}?mode=ro", uri=True)) as database:
        (stored,) = database.execute("SELECT COUNT(*) FROM jobs WHERE account_id = ?", (BENCH_ACCOUNT_ID,)).fetchone()
    created = int(report["responses_201"])
    if stored == created:
        verdict = "every 201 is in the file, and nothing else"
    elif stored > created:
        verdict = f"every 201 is in the file, plus {stored - created} jobs whose 201 never reached a client"
    else:
        verdict = f"FAILED: {created - stored} jobs answered 201 are missing from the file"
    return {
        "201s sent (counted by the served app)": created,
        "jobs in the SQLite file (counted by the bench process)": stored,
        "durability": verdict,
    }


async def _respond_json(send: ASGISend, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
