"""The node-to-node API: forward a job to its queue key's owner, hand queues over, find a job on any node.

Served under `/internal/v1/` on the node's API port and spoken over HTTP/2 (h2c with prior knowledge): one
connection per peer carries every concurrent forward. Bodies are msgpack of `JobRecord.to_wire()`.

Authentication: every request carries `X-EZThrottle-Cluster: t=<unix seconds>,v1=<hex>` where `v1` is the cluster
keyring's HMAC-SHA256 of `t`, the method, the path and the body. Any key of the ring verifies (so keys rotate as
for gossip) and `t` must be within `CLOCK_SKEW_S_MAX`. Without a keyring (the insecure dev mode) requests carry no
tag and none is checked.

Routes (all POST, so that every request is signed over a body):
    jobs      accept one record (the owner makes it durable)   -> {record, created} | {refused, limit}
    handoff   accept records moving to this node               -> {accepted}
    find      a job by id, if this node holds it                -> {record | None}
    cancel    cancel a queued job held here                     -> {record | None, found}
    queues    queues with a key prefix                          -> {queues}

Forwards are deadline-bounded, so requests get cancelled mid-stream; httpcore 1.0.9 needs a patch for that
(edge/vendor/httpcore.py explains it), which `edge.node.run_node` installs with the other vendor patches.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgpack

from cluster import Keyring
from edge.engine.queue import BacklogFull
from edge.engine.records import JobRecord
from edge.engine.shell.queues import QueueManager
from edge.outbound.client import OutboundHttp
from edge.problems import Problem
from edge.runtime import Runtime
from edge.store import Store

log = logging.getLogger("ezthrottle.internal")

PREFIX = "/internal/v1/"
AUTH_HEADER = "X-EZThrottle-Cluster"
CLOCK_SKEW_S_MAX = 30.0
CONTENT_TYPE = "application/msgpack"


def _signed_part(timestamp: str, method: str, path: str, body: bytes) -> bytes:
    return f"{timestamp}\n{method}\n{path}\n".encode() + body


def sign_request(keyring: Keyring, *, method: str, path: str, body: bytes, wall_s: float) -> str:
    timestamp = str(int(wall_s))
    return f"t={timestamp},v1={keyring.sign(_signed_part(timestamp, method, path, body)).hex()}"


def verify_request(keyring: Keyring, header: str, *, method: str, path: str, body: bytes, wall_s: float) -> bool:
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    timestamp, tag = parts.get("t", ""), parts.get("v1", "")
    if not timestamp.isdigit() or len(timestamp) > 12 or abs(wall_s - int(timestamp)) > CLOCK_SKEW_S_MAX:
        return False
    try:
        raw_tag = bytes.fromhex(tag)
    except ValueError:
        return False
    return keyring.verify(_signed_part(timestamp, method, path, body), raw_tag)


def _pack(doc: dict[str, Any]) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def _unpack(data: bytes) -> dict[str, Any]:
    doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    if not isinstance(doc, dict):
        raise ValueError("expected a map")
    return doc


class PeerError(Exception):
    """A peer could not be reached or answered badly; the caller decides whether to retry elsewhere."""


class PeerClient:
    """Calls other nodes' internal API."""

    def __init__(self, *, keyring: Keyring | None, runtime: Runtime, timeout_s: float) -> None:
        self._keyring = keyring
        self._runtime = runtime
        self._outbound = OutboundHttp(runtime.transport or httpx.AsyncHTTPTransport(http1=False, http2=True))
        self._timeout = httpx.Timeout(timeout_s)

    async def aclose(self) -> None:
        await self._outbound.aclose()

    async def _call(self, api_address: str, route: str, doc: dict[str, Any]) -> dict[str, Any]:
        path = PREFIX + route
        body = _pack(doc)
        headers = {"Content-Type": CONTENT_TYPE}
        if self._keyring is not None:
            headers[AUTH_HEADER] = sign_request(
                self._keyring, method="POST", path=path, body=body, wall_s=self._runtime.wall_clock()
            )
        try:
            async with self._outbound.stream(
                "POST", f"http://{api_address}{path}", headers=headers, content=body, timeout=self._timeout
            ) as response:
                reply = await response.aread()
        except httpx.HTTPError as exc:
            raise PeerError(f"{api_address}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise PeerError(f"{api_address}: HTTP {response.status_code}")
        try:
            return _unpack(reply)
        except (ValueError, msgpack.ExtraData) as exc:
            raise PeerError(f"{api_address}: unreadable reply") from exc

    async def submit(self, api_address: str, record: JobRecord) -> tuple[JobRecord, bool]:
        """The owner's answer to a forwarded job; BacklogFull when the owner refused it."""
        reply = await self._call(api_address, "jobs", {"record": record.to_wire()})
        if reply.get("refused") == "backlog-full":
            raise BacklogFull(record.account_id, int(reply["limit"]))
        return JobRecord.from_wire(reply["record"]), bool(reply["created"])

    async def hand_off(self, api_address: str, records: list[JobRecord]) -> int:
        reply = await self._call(api_address, "handoff", {"records": [r.to_wire() for r in records]})
        return int(reply["accepted"])

    async def find(self, api_address: str, job_id: str) -> JobRecord | None:
        reply = await self._call(api_address, "find", {"job_id": job_id})
        return JobRecord.from_wire(reply["record"]) if reply.get("record") else None

    async def cancel(self, api_address: str, job_id: str) -> tuple[JobRecord | None, bool]:
        reply = await self._call(api_address, "cancel", {"job_id": job_id})
        record = JobRecord.from_wire(reply["record"]) if reply.get("record") else None
        return record, bool(reply["found"])

    async def queues(self, api_address: str, prefix: str) -> list[dict[str, Any]]:
        return list((await self._call(api_address, "queues", {"prefix": prefix}))["queues"])


class InternalRoutes:
    """The serving side: authenticate, then hand each call to the local queue manager and store."""

    def __init__(self, *, keyring: Keyring | None, runtime: Runtime, manager: QueueManager, store: Store) -> None:
        self._keyring = keyring
        self._runtime = runtime
        self._manager = manager
        self._store = store
        self._routes: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "jobs": self._jobs,
            "handoff": self._handoff,
            "find": self._find,
            "cancel": self._cancel,
            "queues": self._queues,
        }

    async def handle(self, method: str, path: str, auth_header: str, body: bytes) -> bytes:
        if self._keyring is not None and not verify_request(
            self._keyring, auth_header, method=method, path=path, body=body, wall_s=self._runtime.wall_clock()
        ):
            raise Problem(401, "Unauthorized", "cluster authentication failed", kind="cluster-unauthorized")
        route = self._routes.get(path.removeprefix(PREFIX))
        if route is None or method != "POST":
            raise Problem(404, "Not found", f"no internal route {path}")
        try:
            doc = _unpack(body)
        except (ValueError, msgpack.ExtraData):
            raise Problem(400, "Malformed request", "the body is not a msgpack map") from None
        try:
            return _pack(await route(doc))
        except (KeyError, TypeError) as exc:
            raise Problem(400, "Malformed request", f"missing or mistyped field: {exc}") from None

    async def _jobs(self, doc: dict[str, Any]) -> dict[str, Any]:
        try:
            stored, created = await self._manager.submit(JobRecord.from_wire(doc["record"]))
        except BacklogFull as full:
            return {"refused": "backlog-full", "limit": full.limit}
        return {"record": stored.to_wire(), "created": created}

    async def _handoff(self, doc: dict[str, Any]) -> dict[str, Any]:
        records = [JobRecord.from_wire(wire) for wire in doc["records"]]
        return {"accepted": await self._manager.accept_handoff(records)}

    async def _find(self, doc: dict[str, Any]) -> dict[str, Any]:
        job_id = str(doc["job_id"])
        record = self._manager.live_job(job_id) or await self._store.get_job(job_id)
        return {"record": record.to_wire() if record else None}

    async def _cancel(self, doc: dict[str, Any]) -> dict[str, Any]:
        job_id = str(doc["job_id"])
        found = self._manager.live_job(job_id) or await self._store.get_job(job_id)
        cancelled = await self._manager.cancel(job_id) if found else None
        return {"record": (cancelled or found).to_wire() if found else None, "found": found is not None}

    async def _queues(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {"queues": self._manager.queues_with_prefix(str(doc["prefix"]))}
