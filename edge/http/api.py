"""The node's HTTP API: a plain ASGI app, served by the node's own front end under Trio (`edge.http.server`).

Routes:
    POST   /api/v1/jobs            submit a job (201 new, 200 duplicate idempotent_key)
    GET    /api/v1/jobs/{job_id}   the job, its attempts, response and webhook deliveries
    GET    /api/v1/jobs/{job_id}/events   the job's life as Server-Sent Events (edge/http/events.py)
    DELETE /api/v1/jobs/{job_id}   cancel a queued job
    GET    /api/v1/queues          the account's queues with their limits and where each came from
    GET    /api/v1/cluster         members and this node's view of ownership
    GET    /api/v1/regions         regions with their members, and the health of the origins the account uses
    GET/POST/DELETE /api/v1/webhook-secrets   the account's webhook signing secrets (edge/http/secrets.py)
    GET    /api/v1/usage           the account's plan usage this month (when plans are metered)
    POST   /api/v1/proxy           the public SDKs' metering envelope: runs /api/v1/jobs or /api/v1/webhook-secrets
                                   in-process as the same account (edge/http/envelope.py)
    POST   /internal/v1/...        node-to-node calls (edge.placement.peers), authenticated with the cluster keyring
                                   before any of the body is read
    GET    /healthz /readyz        liveness, readiness
    GET    /openapi.json           this API as OpenAPI 3.1 (edge/http/openapi.py)
    GET    /metrics                Prometheus text
    GET    /dashboard              the operator's page (edge/http/dashboard.py), and its data: /api/v1/dashboard

No web framework: the surface is small, and owning the body reading lets the API refuse an oversize body after
reading at most the limit. Every error is RFC 9457 problem+json (`edge.problems`), except the SDK proxy's own
refusals, which keep the hosted proxy's shape for the SDKs that parse them. API keys are compared in constant time
(`Config.account_by_key`) and never logged; job request headers are shown by name only, since they usually carry the
caller's credentials for the target; webhook secrets are shown masked only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httpx
import trio

from edge.config import AccountConfig, Config
from edge.engine.queue import BacklogFull
from edge.engine.records import JobRecord
from edge.engine.spec import JobSpec, queue_key, validate_job
from edge.http import envelope, openapi
from edge.http.dashboard import ASSET_HEADERS, DATA_PATH, Dashboard, asset
from edge.http.envelope import JOBS_PATH, WEBHOOK_SECRETS_PATH, Envelope, EnvelopeError, parse_envelope
from edge.http.events import JobEventStreams
from edge.http.secrets import WebhookSecretsApi
from edge.http.server import REFUSED_BODY_DRAIN_BYTES_MAX, send_whole_response
from edge.metrics import NodeMetrics
from edge.outbound.origins import parsed_url
from edge.outbound.ssrf import forbidden_reason
from edge.placement.account_queues import AccountQueueFlags
from edge.placement.peers import AUTH_HEADER, InternalRoutes
from edge.placement.peers import CONTENT_TYPE as INTERNAL_CONTENT_TYPE
from edge.placement.peers import PREFIX as INTERNAL_PREFIX
from edge.placement.routing import JobRouter
from edge.placement.usage import QuotaExceeded, UsageReport
from edge.placement.webhook_secrets import WebhookSecretStore
from edge.problems import PROBLEM_CONTENT_TYPE, Problem, store_unavailable
from edge.runtime import Runtime
from edge.store import StoreError

log = logging.getLogger("ezthrottle.api")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JOB_PATH = re.compile(r"^/api/v1/jobs/([A-Za-z0-9_\-]{1,128})$")
_JOB_EVENTS_PATH = re.compile(r"^/api/v1/jobs/([A-Za-z0-9_\-]{1,128})/events$")
_JSON = b"application/json"
INTERNAL_BODY_BYTES_MAX = 64 * 1024 * 1024  # a hand-off batch of queued jobs
# What a node-to-node request carries beyond one job's body: a remote attempt is the job's method, URL, headers
# and body (all inside the submitted JSON, so within server.body_bytes_max) plus a few fields of msgpack.
INTERNAL_ENVELOPE_BYTES_MAX = 64 * 1024
# One encoder for every response: `json.dumps` with options builds a new encoder per call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


class JobApi:
    """The ASGI application of one node."""

    def __init__(
        self,
        *,
        config: Config,
        runtime: Runtime,
        router: JobRouter,
        account_queues: AccountQueueFlags,
        metrics: NodeMetrics,
        is_ready: Callable[[], bool],
        internal: InternalRoutes | None = None,
        cluster_status: Callable[[], dict[str, Any]] | None = None,
        regions_status: Callable[[str], dict[str, Any]] | None = None,
        usage: UsageReport | None = None,
        webhook_secrets: WebhookSecretStore | None = None,
        dashboard: Dashboard | None = None,
        stopping: Callable[[], Awaitable[None]] = trio.sleep_forever,
    ) -> None:
        """`stopping` returns when the node begins to stop (open event streams end then)."""
        self._config = config
        self._dashboard = dashboard
        self._event_streams = JobEventStreams(router, stopping=stopping)
        self._runtime = runtime
        self._router = router
        self._account_queues = account_queues
        self._metrics = metrics
        self._is_ready = is_ready
        self._internal = internal
        self._cluster_status = cluster_status
        self._regions_status = regions_status
        self._usage = usage
        self._secrets = WebhookSecretsApi(webhook_secrets)
        # 64 MiB takes any job at the default body limit (1 MiB); a node configured for larger jobs takes one more.
        self._internal_body_bytes_max = max(
            INTERNAL_BODY_BYTES_MAX, config.server.body_bytes_max + INTERNAL_ENVELOPE_BYTES_MAX
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            if match := _JOB_EVENTS_PATH.match(scope["path"]):
                await self._stream_events(scope, receive, send, match[1])
                return
            status, body, content_type, headers = await self._route(scope, receive)
        except _CallerGone:
            return  # the caller reset its request (or closed its connection): no one is left to answer
        except Problem as problem:
            if problem.status in (413, 429):
                self._metrics.jobs_refused.labels(str(problem.status)).inc()
            status, body, content_type = problem.status, problem.body(scope.get("path")), PROBLEM_CONTENT_TYPE
            headers = problem.headers
        await send_whole_response(send, status, body, content_type=content_type, headers=headers)

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes, dict[str, str]]:
        method, path = scope["method"], scope["path"]
        if path == "/healthz":
            _allow(method, "GET")
            return 200, b'{"status":"ok"}', _JSON, {}
        if path == "/readyz":
            _allow(method, "GET")
            if not self._is_ready():
                raise Problem(503, "Not ready", "the node is starting or stopping", headers={"Retry-After": "1"})
            return 200, b'{"status":"ready"}', _JSON, {}
        if path == "/metrics":
            _allow(method, "GET")
            return 200, self._metrics.render(), b"text/plain; version=0.0.4; charset=utf-8", {}
        if path == openapi.OPENAPI_PATH:
            _allow(method, "GET")
            return 200, openapi.document_bytes(), _JSON, {}
        if path.startswith(INTERNAL_PREFIX) and self._internal is not None:
            # Judged on its head before any body is read: a caller without the cluster key costs a header parse,
            # and its refusal goes out at once (the connection is then dropped, not drained).
            call = self._internal.admit(
                method,
                path,
                _header(scope, AUTH_HEADER.lower().encode()),
                client_host=scope["client"][0] if scope.get("client") else None,
                body_bytes_max=self._internal_body_bytes_max,
            )
            raw = await _read_body(scope, receive, call.body_bytes_max)
            reply = await self._internal.handle(call, raw, caller_gone=partial(_until_disconnected, receive))
            if reply is None:
                raise _CallerGone
            return 200, reply, INTERNAL_CONTENT_TYPE.encode(), {}
        if page := asset(path):
            _allow(method, "GET")
            return 200, *page, ASSET_HEADERS
        if path == DATA_PATH:
            _allow(method, "GET")
            if self._dashboard is None:
                raise Problem(404, "Not found", "this node serves no dashboard")
            return 200, _dump(await self._dashboard.view(self._dashboard_viewer(scope))), _JSON, {}
        if path == "/api/v1/cluster":
            _allow(method, "GET")
            self._authenticate(scope)
            status = self._cluster_status() if self._cluster_status else {"enabled": False}
            return 200, _dump(status), _JSON, {}
        if path == JOBS_PATH:
            _allow(method, "POST")
            return await self._submit(scope, receive)
        if path == "/api/v1/proxy":
            _allow(method, "POST")
            return await self._proxy(scope, receive)
        if path == WEBHOOK_SECRETS_PATH:
            _allow(method, "GET", "POST", "DELETE")
            payload = None
            if method == "POST":
                raw = await _read_body(scope, receive, self._config.server.body_bytes_max)
                account = self._authenticate(scope)
                payload = _json_body(scope, raw)
            else:
                account = self._authenticate(scope)
            code, doc = await self._secrets.handle(account, method, payload)
            return code, _dump(doc), _JSON, {}
        if path == "/api/v1/usage":
            _allow(method, "GET")
            account = self._authenticate(scope)
            if self._usage is None:
                raise Problem(404, "Not found", "this node does not meter plan usage", kind="usage-not-metered")
            return 200, _dump(self._usage.usage(account.id)), _JSON, {}
        if match := _JOB_PATH.match(path):
            _allow(method, "GET", "DELETE")
            account = self._authenticate(scope)
            if method == "GET":
                return 200, _dump(self._view(await self._owned_job(account, match[1]))), _JSON, {}
            return await self._cancel(account, match[1])
        if path == "/api/v1/regions":
            _allow(method, "GET")
            account = self._authenticate(scope)
            prefix = "free|" if account.plan == "free" else f"{account.id}|"
            regions = self._regions_status(prefix) if self._regions_status else {"regions": []}
            return 200, _dump(regions), _JSON, {}
        if path == "/api/v1/queues":
            _allow(method, "GET")
            account = self._authenticate(scope)
            prefix = "free|" if account.plan == "free" else f"{account.id}|"
            queues = await self._router.queues(prefix)
            return 200, _dump({"account_id": account.id, "queues": queues}), _JSON, {}
        raise Problem(404, "Not found", f"no route for {path}")

    # -- jobs ------------------------------------------------------------------------------------------------

    async def _submit(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes, dict[str, str]]:
        # Read the body before judging the request: a client still sending its body may not read an early answer
        # (over HTTP/1.1 it then sees a dropped connection instead of the refusal).
        raw = await _read_body(scope, receive, self._config.server.body_bytes_max)
        account = self._authenticate(scope)
        data = _json_body(scope, raw, "the job")
        try:
            return await self._accept_job(account, data)
        except QuotaExceeded as exceeded:
            raise Problem(
                429,
                "Quota exceeded",
                f"this account used its plan's {exceeded.limit} jobs this month",
                kind="quota-exceeded",
                headers={"Retry-After": str(envelope.retry_after_s(exceeded.retry_at_ms, self._runtime.wall_ms()))},
                extra={"retry_at": exceeded.retry_at_ms, "limit": exceeded.limit},
            ) from None

    async def _accept_job(self, account: AccountConfig, data: Any) -> tuple[int, bytes, bytes, dict[str, str]]:
        """Validate and submit one job for `account` (direct or through the proxy). Raises `Problem`, and
        `QuotaExceeded` for the caller to answer in its own form."""
        job = validate_job(data, account_id=account.id)
        _refuse_private(job, allow=self._config.security.allow_private_targets)
        record = self._new_record(account, job)
        try:
            stored, created = await self._router.submit(record)
        except BacklogFull as full:
            # Decided by the key's owner, which holds the account's jobs for this key (README: "Backlog").
            raise Problem(
                429,
                "Backlog full",
                f"this account already has {full.limit} unfinished jobs",
                kind="backlog-full",
                headers={"Retry-After": str(self._config.server.backlog_retry_after_s)},
            ) from None
        except StoreError:
            log.exception("job store failed; the job was not accepted")
            raise store_unavailable("the job could not be made durable; it was not accepted") from None
        (self._metrics.jobs_accepted if created else self._metrics.jobs_duplicate).inc()
        body = {"job_id": stored.job_id, "status": submit_status(stored), "idempotent_key": stored.idempotent_key}
        return (201 if created else 200), _dump(body), _JSON, {"Location": f"/api/v1/jobs/{stored.job_id}"}

    def _new_record(self, account: AccountConfig, job: JobSpec) -> JobRecord:
        wall_ms = self._runtime.wall_ms()
        deadline_ms = job.deadline_ms or int(self._config.defaults.job_deadline_s * 1000)
        idempotent_key = job.idempotent_key
        assert idempotent_key is not None  # validate_job derived one for the account
        origin_queue = self._account_queues.enabled(job.origin)
        return JobRecord(
            job_id=f"job_{wall_ms}_{self._runtime.rng.randrange(10**12):012d}",
            account_id=account.id,
            idempotent_key=idempotent_key,
            queue_key=queue_key(account_id=account.id, plan=account.plan, job=job, account_queue=origin_queue),
            spec=job,
            created_at_ms=wall_ms,
            updated_at_ms=wall_ms,
            deadline_at_ms=max(wall_ms, job.retry_at or 0) + deadline_ms,
        )

    async def _owned_job(self, account: AccountConfig, job_id: str) -> JobRecord:
        """The job if this account owns it; 404 otherwise (never 403: that would confirm the id exists)."""
        record = await self._router.find(job_id)
        if record is None or record.account_id != account.id:
            raise Problem(404, "Job not found", f"no job {job_id} for this account", kind="job-not-found")
        return record

    async def _stream_events(self, scope: Scope, receive: Receive, send: Send, job_id: str) -> None:
        """GET /api/v1/jobs/{job_id}/events; Problems (raised before the stream starts) are answered as usual."""
        _allow(scope["method"], "GET")
        record = await self._owned_job(self._authenticate(scope), job_id)
        await self._event_streams.serve(record, send, caller_gone=partial(_until_disconnected, receive))

    async def _cancel(self, account: AccountConfig, job_id: str) -> tuple[int, bytes, bytes, dict[str, str]]:
        record = await self._owned_job(account, job_id)
        try:
            cancelled = await self._router.cancel(job_id)
        except StoreError:
            log.exception("job store failed; the job was not cancelled")
            raise store_unavailable("the cancel could not be made durable; the job is still queued") from None
        if cancelled is None:
            raise Problem(
                409,
                "Job not cancellable",
                f"job {job_id} is {record.status}; only queued jobs can be cancelled",
                kind="not-cancellable",
                extra={"job_status": record.status},
            )
        return 200, _dump(self._view(cancelled)), _JSON, {}

    def _view(self, record: JobRecord) -> dict[str, Any]:
        spec = record.spec
        return {
            "job_id": record.job_id,
            "status": record.status,
            "idempotent_key": record.idempotent_key,
            "request": {
                "url": spec.url,
                "method": spec.method,
                "header_names": sorted(spec.headers),
                "body_bytes": len(spec.body.encode()) if spec.body is not None else 0,
            },
            "queue_key": record.queue_key,
            "metadata": dict(spec.metadata),
            "created_at_ms": record.created_at_ms,
            "updated_at_ms": record.updated_at_ms,
            "deadline_at_ms": record.deadline_at_ms,
            "next_attempt_at_ms": record.next_attempt_at_ms,
            "finished_at_ms": record.finished_at_ms,
            "retries_used": record.retries_used,
            "reroutes_used": record.reroutes_used,
            "regions_tried": list(record.regions_tried),
            "attempts_total": record.attempts_total,
            "attempts_not_listed": record.attempts_dropped,
            "attempts": [a.to_wire() for a in record.attempts],
            "response": record.response,
            "region_responses": dict(record.region_responses) if record.spec.execution_mode == "fanout" else None,
            "error": record.error,
            "webhooks": {
                "outcome": record.webhook_outcome,
                "quorum": spec.webhook_quorum,
                "deliveries": [d.to_wire() for d in record.deliveries],
            },
            **_workflow_view(record),
        }

    # -- the SDK proxy --------------------------------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes, dict[str, str]]:
        """POST /api/v1/proxy: judge the envelope, run its inner call here as the same account, wrap the answer.

        Proxy-level refusals use the hosted proxy's shape, not problem+json (edge/http/envelope.py); the inner
        call's own answers, refusals included, travel inside `forwarded_response`."""
        try:
            raw = await _read_body(scope, receive, self._config.server.body_bytes_max)
        except Problem as problem:  # 413 over the limit, 400 the body never arrived
            if problem.status == 413:
                self._metrics.jobs_refused.labels("413").inc()
            return _proxy_refusal(problem.status, problem.detail or problem.title)
        account = self._account_of(scope)
        if account is None:
            status, body, content_type, _headers = _proxy_refusal(401, "Invalid API key")
            return status, body, content_type, {"WWW-Authenticate": 'Bearer realm="ezthrottle"'}
        try:
            call = parse_envelope(raw)
        except EnvelopeError as exc:
            return _proxy_refusal(exc.status_hint, str(exc))
        try:
            status, body, content_type, headers = await self._inner_call(account, call)
        except QuotaExceeded as exceeded:
            self._metrics.jobs_refused.labels("429").inc()
            breach = self._breach_status(account)
            if self._usage is None:  # a refusal without a report to describe it: say what the refusal knows
                breach.update(is_breached=True, current_usage=exceeded.limit, limit_value=exceeded.limit)
            wait_s = envelope.retry_after_s(exceeded.retry_at_ms, self._runtime.wall_ms())
            return 429, _dump(envelope.denied(breach, exceeded.retry_at_ms)), _JSON, {"Retry-After": str(wait_s)}
        except Problem as problem:
            if call.path == JOBS_PATH and problem.status in (413, 429):
                self._metrics.jobs_refused.labels(str(problem.status)).inc()
            status, body, content_type = problem.status, problem.body(call.path), PROBLEM_CONTENT_TYPE
            headers = problem.headers
        forwarded = envelope.forwarded_response(status, {"Content-Type": content_type.decode(), **headers}, body)
        return 200, _dump(envelope.allowed(self._breach_status(account), forwarded)), _JSON, {}

    async def _inner_call(self, account: AccountConfig, call: Envelope) -> tuple[int, bytes, bytes, dict[str, str]]:
        if call.path == JOBS_PATH:
            _allow(call.method, "POST")
            return await self._accept_job(account, call.payload)
        status, doc = await self._secrets.handle(account, call.method, call.payload)
        return status, _dump(doc), _JSON, {}

    def _breach_status(self, account: AccountConfig) -> dict[str, Any]:
        if self._usage is None:
            return dict(envelope.NO_USAGE_BREACH_STATUS)
        return self._usage.breach_status(account.id)

    def _account_of(self, scope: Scope) -> AccountConfig | None:
        token = _bearer_token(scope)
        return self._config.account_by_key(token) if token is not None else None

    def _dashboard_viewer(self, scope: Scope) -> AccountConfig | None:
        """Whom the dashboard's data is for: the account of the key, or None for the operator's token; 401 for
        anything else."""
        token = _bearer_token(scope)
        if token is not None and self._config.server.is_admin_token(token):
            return None
        return self._authenticate(scope)

    def _authenticate(self, scope: Scope) -> AccountConfig:
        account = self._account_of(scope)
        if account is None:
            raise Problem(
                401,
                "Unauthorized",
                "send a known account key as 'Authorization: Bearer <key>'",
                kind="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="ezthrottle"'},
            )
        return account


def _workflow_view(record: JobRecord) -> dict[str, Any]:
    """A job's place in a workflow, when it has one: its steps and the one that won, its step's root, its
    follow-ups, its parent."""
    view: dict[str, Any] = {}
    if record.steps:
        view["steps"] = [state.to_wire() for state in record.steps]
        view["won_step"] = record.won_step
    if record.parent_id is not None:
        view["parent_id"] = record.parent_id
        if record.step is not None:
            view["step"] = record.step
    if record.children:
        view["children"] = dict(record.children)
    return view


def submit_status(record: JobRecord) -> str:
    """The submit answer's `status`: "racing" for a queued job that races several regions (the public SDKs'
    integration test asserts it), else the job's status."""
    spec = record.spec
    # A new workflow root is running its first step already; to its client it was just queued, like any job.
    status = "queued" if record.steps and not record.is_terminal and record.won_step is None else record.status
    if status == "queued" and spec.execution_mode == "race" and len(spec.regions) > 1:
        return "racing"
    return status


class _CallerGone(Exception):
    """An internal call ended early because its caller went away; nothing is sent."""


async def _until_disconnected(receive: Receive) -> None:
    """Return once the client has gone. Only for after the whole body was read: then the next message can only be
    `http.disconnect` (the front end sends it when the connection closes or an HTTP/2 stream is reset; it does not
    cancel the app)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _refuse_private(job: JobSpec, *, allow: bool) -> None:
    """Refuse at intake the targets the SSRF guard can judge without DNS; names are checked at connect time."""
    if allow:
        return
    # Webhook URLs were parsed at validation; `parsed_url` remembers that parse.
    urls = [("url", job.parsed_url)] + [(f"webhooks[{i}].url", parsed_url(h.url)) for i, h in enumerate(job.webhooks)]
    for field, url in urls:
        reason = static_refusal(url)
        if reason:
            raise Problem(
                422,
                "Target refused",
                f"{field}: {reason} (set security.allow_private_targets to allow it)",
                kind="target-refused",
                field=field,
            )


def static_refusal(url: str | httpx.URL) -> str | None:
    """Why the guard would refuse this URL's host without resolving it: an IP literal or a loopback name."""
    host = (url if isinstance(url, httpx.URL) else parsed_url(url)).host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is a loopback name"
    # IP literals are IPv6 (with ":") or dotted decimal IPv4; anything else is a name. Saying so here spares
    # the usual case the two exceptions `ip_address` raises on a name.
    if ":" not in host and not host.replace(".", "").isdigit():
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return forbidden_reason(host)


def _json_body(scope: Scope, raw: bytes, what: str = "the body") -> Any:
    """A request body that must be JSON: 415 for another media type, 400 for malformed JSON."""
    content_type = _header(scope, b"content-type").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise Problem(415, "Unsupported media type", f"send {what} as application/json")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "too deeply nested" if isinstance(exc, RecursionError) else str(exc)
        raise Problem(400, "Malformed JSON", f"the body is not valid JSON ({reason})", kind="malformed-json") from None


def _proxy_refusal(status: int, message: str) -> tuple[int, bytes, bytes, dict[str, str]]:
    return status, _dump(envelope.refusal(status, message)), _JSON, {}


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise Problem(405, "Method not allowed", f"use {', '.join(allowed)}", headers={"Allow": ", ".join(allowed)})


def _bearer_token(scope: Scope) -> str | None:
    scheme, _, token = _header(scope, b"authorization").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the body, refusing it with 413 past `limit` bytes.

    An oversize body is still drained (up to REFUSED_BODY_DRAIN_BYTES_MAX, see edge/http/server.py) before the 413
    goes out.
    """
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Problem(400, "Client disconnected", "the body did not arrive", kind="client-disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        more = message.get("more_body", False)
        if size > limit and (not more or size > REFUSED_BODY_DRAIN_BYTES_MAX):
            raise Problem(413, "Body too large", f"the request body is over {limit} bytes", kind="body-too-large")
        if not more:
            return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _dump(doc: dict[str, Any]) -> bytes:
    return _COMPACT_JSON.encode(doc).encode()
