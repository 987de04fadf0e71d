"""One EZThrottle Edge node: the nursery that holds the store, the queues, the deliverer, the HTTP server of the
job API and one inbound proxy per `[[protect]]` section (edge/proxy), all in one process.

Start-up order matters for "nothing accepted is lost": the store opens first, then the queue manager resumes every
unfinished job and the deliverer every pending webhook, and only then does the HTTP server start accepting jobs.
Shut-down runs the other way round: the server stops accepting, then the queue and delivery tasks are cancelled
(anything in flight stays durable as queued or pending and resumes on the next start), then the store closes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from cluster.shell import ClusterMember
from edge.config import Config
from edge.engine.records import JobRecord
from edge.engine.regions import RegionHealth
from edge.engine.shell.events import EventBus
from edge.engine.shell.executor import Executor
from edge.engine.shell.placement import LocalPlacement, Placement
from edge.engine.shell.queues import QueueManager
from edge.engine.shell.webhooks import WebhookDeliverer
from edge.engine.spec import queue_key
from edge.http.api import JobApi
from edge.http.dashboard import ActivityHistory, Dashboard
from edge.http.server import serve_asgi
from edge.metrics import NodeMetrics
from edge.outbound.client import OutboundHttp
from edge.outbound.ssrf import guarded_transport
from edge.placement.account_queues import AccountQueueFlags, SharedState
from edge.placement.counters import CounterEntry, Counters, CounterSaver, LocalCounters, decode_counter_entries
from edge.placement.membership import describe_cluster, keyring_of, start_membership
from edge.placement.peers import InternalRoutes, PeerClient, PeerError
from edge.placement.regions import ClusterPlacement
from edge.placement.replication import Replicator
from edge.placement.routing import JobRouter
from edge.placement.shared_state import LocalSharedState, SharedStateSaver, decode_entries
from edge.placement.usage import LendFailed, UsageMeter
from edge.placement.webhook_secrets import LOCAL_KEY_FILENAME, SecretBox, WebhookSecretStore
from edge.proxy import ProxyMetrics, serve_protected
from edge.runtime import Runtime
from edge.store import Store, open_sqlite_store

log = logging.getLogger("ezthrottle.node")

STORE_FILENAME = "jobs.sqlite3"
LEAVE_TIMEOUT_S = 2.0


@dataclass
class Node:
    """A running node, as its starter sees it (tests read its parts; `stop()` shuts it down gracefully)."""

    config: Config
    bound: list[str]
    manager: QueueManager
    deliverer: WebhookDeliverer
    store: Store
    metrics: NodeMetrics
    app: JobApi
    _stop: trio.Event = field(default_factory=trio.Event)
    # Each protected listener's bound addresses, by its label (`ProtectConfig.label`).
    protected: dict[str, list[str]] = field(default_factory=dict)
    # This node's cluster member when clustered: the simulator's invariants read its view of the membership.
    membership: ClusterMember | None = None
    # Per-origin X-EZTHROTTLE-ACCOUNT-QUEUE as this node knows it (shared with the cluster when clustered).
    account_queues: AccountQueueFlags | None = None
    # The accounts' webhook secrets set through the API (shared with the cluster when clustered, kept sealed).
    webhook_secrets: WebhookSecretStore | None = None
    # The grow-only counters (usage): the cluster member's when clustered, else this node's own (LocalCounters).
    counters: Counters | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.bound[0]}"

    def stop(self) -> None:
        self._stop.set()


@contextlib.asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Store]:
    async with open_sqlite_store(config.server.data_dir / STORE_FILENAME) as store:
        yield store


def build_outbound(config: Config, runtime: Runtime) -> OutboundHttp:
    """The one outbound HTTP of the node (jobs and webhooks), behind the SSRF guard unless a transport is injected."""
    settings = config.http_client
    return OutboundHttp(
        runtime.transport
        or guarded_transport(
            allow_private=config.security.allow_private_targets,
            resolver=runtime.resolver,
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive_connections,
            keepalive_expiry_s=settings.keepalive_expiry_s,
            local_address=settings.source_address,
        )
    )


async def run_node(
    config: Config,
    runtime: Runtime,
    *,
    store: Store | None = None,
    serve_http: bool = True,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until `Node.stop()` is called or the task is cancelled.

    With `serve_http=False` no socket is opened: the caller serves `Node.app` itself (the simulator mounts it on
    its simulated HTTP network), and `Node.bound` is the address the config says the API is reached at.
    """
    async with contextlib.AsyncExitStack() as stack:
        if store is None:
            store = await stack.enter_async_context(open_store(config))
        outbound = await stack.enter_async_context(build_outbound(config, runtime))
        metrics = NodeMetrics()
        deliverer = WebhookDeliverer(config=config, runtime=runtime, store=store, outbound=outbound, metrics=metrics)
        executor = Executor(outbound)
        stop = trio.Event()
        saved_settings = decode_entries(await store.shared_state())
        saver = SharedStateSaver(store)
        saved_counts = decode_counter_entries(await store.shared_state())  # the same table, the "counter:" rows
        counter_saver = CounterSaver(store, saved=saved_counts)
        async with trio.open_nursery() as services:
            services.start_soon(saver.run)
            services.start_soon(counter_saver.run)
            membership = None
            shared: SharedState
            counters: Counters
            if config.cluster.enabled:
                membership = await start_membership(
                    services,
                    config,
                    runtime,
                    shared_entries=saved_settings,
                    on_shared_change=saver.note,
                    counter_entries=saved_counts,
                    on_counter_change=counter_saver.note,
                )
                shared = membership
                counters = membership
            else:
                shared = LocalSharedState(
                    node=config.server.node_id or "local", wall_ms=runtime.wall_ms, entries=saved_settings, saver=saver
                )
                counters = LocalCounters(
                    node=config.server.node_id or "local", entries=saved_counts, saver=counter_saver
                )
            keyring = keyring_of(config.cluster)
            peers = None
            if membership is not None:
                peers = PeerClient(
                    keyring=keyring, runtime=runtime, timeout_s=config.cluster.forward_deadline_s, nursery=services
                )
                stack.push_async_callback(peers.aclose)
            account_queues = AccountQueueFlags(config, shared)
            # Sealed under the cluster keyring; a node alone without one uses a key of its own, a cluster without
            # keys none at all (edge/placement/webhook_secrets.py says why).
            keyless_cluster = membership is not None and keyring is None
            secret_box = SecretBox(
                keyring=keyring,
                local_key_path=None if keyless_cluster else config.server.data_dir / LOCAL_KEY_FILENAME,
            )
            webhook_secrets = WebhookSecretStore(shared=shared, box=secret_box, store=store)
            deliverer.sign_with(webhook_secrets.signing_secret)
            placement: Placement = LocalPlacement(executor, region=config.cluster.region or "")
            if membership is not None and peers is not None:
                placement = ClusterPlacement(
                    members=membership,
                    peers=peers,
                    local=executor,
                    health=RegionHealth(),
                    runtime=runtime,
                    metrics=metrics,
                )
            if isinstance(placement, ClusterPlacement):
                deliverer.place_in_regions(placement)
            meter = _usage_meter(config, runtime, counters, counter_saver, membership, peers, metrics)
            replicator = None
            if membership is not None and peers is not None and config.cluster.replicas > 1:
                replicator = Replicator(
                    membership=membership,
                    peers=peers,
                    store=store,
                    replicas=config.cluster.replicas,
                    deadline_s=config.cluster.forward_deadline_s,
                )
            events = EventBus(
                node=membership.local.node if membership else config.server.node_id or "local",
                wall_ms=runtime.wall_ms,
            )
            deliverer.report_to(events)
            history = ActivityHistory(runtime.wall_ms)
            events.observe(history.observe)
            manager = QueueManager(
                config=config,
                runtime=runtime,
                store=store,
                executor=executor,
                events=events,
                placement=placement,
                webhooks=deliverer,
                metrics=metrics,
                owns=_dispatch_gate(membership, replicator),
                on_account_queue=account_queues.learned,
                per_key=account_queues.enabled,
                admission=meter,
                replication=replicator,
                holds_copy=replicator.holds_copy if replicator is not None else lambda key: False,
            )
            plans = {account.id: account.plan for account in config.accounts}

            def key_of(record: JobRecord) -> str:
                """The queue key a job gets now; a job of an account no longer configured keeps its key."""
                plan = plans.get(record.account_id)
                if plan is None:
                    return record.queue_key
                enabled = account_queues.enabled(record.spec.origin)
                return queue_key(account_id=record.account_id, plan=plan, job=record.spec, account_queue=enabled)

            manager.follow_keys(key_of)
            account_queues.subscribe(lambda origin: services.start_soon(manager.rekey, origin))
            router = JobRouter(
                manager=manager,
                store=store,
                membership=membership,
                peers=peers,
                forward_deadline_s=config.cluster.forward_deadline_s,
                holds_copy=replicator.holds if replicator is not None else lambda key: False,
            )
            manager.connect(router)
            internal = None
            if membership is not None:
                internal = InternalRoutes(
                    keyring=keyring, runtime=runtime, manager=manager, store=store, executor=executor, lend=meter.lend
                )
                if keyring is None:
                    log.warning(
                        "cluster without keys (--insecure-cluster): the internal API answers loopback callers only, "
                        "so members must reach each other on 127.0.0.1 or ::1 (cluster.api_advertise); "
                        "set cluster.keys to cluster across hosts"
                    )
            if replicator is not None and internal is not None:
                replicator.connect(manager, deliverer)
                deliverer.replicate_with(is_copy=replicator.holds_copy, on_final=replicator.delivery_final)
                internal.serve_replicas(replicator)
            ready = False
            cluster_status = partial(describe_cluster, membership, config, manager) if membership else None
            regions_status = (
                partial(_regions_status, placement, manager) if isinstance(placement, ClusterPlacement) else None
            )
            dashboard = Dashboard(
                config=config,
                wall_ms=runtime.wall_ms,
                router=router,
                manager=manager,
                events=events,
                history=history,
                registry=metrics.registry,
                usage=meter,
                cluster_status=cluster_status,
                regions_status=regions_status,
            )
            if internal is not None:
                internal.serve_dashboard(dashboard.local_part)
            app = JobApi(
                config=config,
                runtime=runtime,
                router=router,
                account_queues=account_queues,
                metrics=metrics,
                is_ready=lambda: ready,
                internal=internal,
                cluster_status=cluster_status,
                regions_status=regions_status,
                webhook_secrets=webhook_secrets,
                usage=meter,
                dashboard=dashboard,
                stopping=stop.wait,
            )
            await services.start(manager.run)
            services.start_soon(router.hand_off_forever)
            if replicator is not None:
                services.start_soon(replicator.run)
            if membership is not None:
                services.start_soon(_wake_queues_on_gate, membership, manager)
            services.start_soon(account_queues.follow)
            await services.start(deliverer.run)
            services.start_soon(_housekeeping, config, runtime, store, manager)
            services.start_soon(history.run)
            async with trio.open_nursery() as http:
                bound, protected = [config.cluster.api_advertise or config.server.listen], {}
                if serve_http:
                    # A worker of several (edge/workers.py) shares `listen` with its siblings and has an address
                    # of its own, where members reach exactly it.
                    own = config.server.worker_listen
                    bound = await http.start(
                        partial(
                            serve_asgi,
                            app,
                            bind=[config.server.listen] if own is None else [config.server.listen, own],
                            reuse_port=() if own is None else (config.server.listen,),
                            certfile=config.server.certfile,
                            keyfile=config.server.keyfile,
                            header_bytes_max=config.server.header_bytes_max,
                            idle_timeout_s=config.server.idle_timeout_s,
                            shutdown_trigger=stop.wait,
                        )
                    )
                    protected = await _start_protected(http, config, runtime, metrics, stop)
                ready = True
                log.info("listening on %s", ", ".join(bound))
                task_status.started(
                    Node(
                        config,
                        bound,
                        manager,
                        deliverer,
                        store,
                        metrics,
                        app,
                        stop,
                        protected,
                        membership,
                        account_queues,
                        webhook_secrets,
                        counters=counters,
                    )
                )
                await stop.wait()
                ready = False
            # The front end has stopped accepting and drained its requests: leave the cluster (so peers take our
            # keys at once instead of after failure detection), then stop queues and deliveries.
            if membership is not None:
                await membership.leave(LEAVE_TIMEOUT_S)
            services.cancel_scope.cancel()


def _dispatch_gate(membership: ClusterMember | None, replicator: Replicator | None) -> Callable[[str], bool]:
    """Which keys the queue manager may dispatch: all of them alone; in a cluster the ones this node may run
    (cluster/lease.py), and with replicas only once synced (edge/placement/replication.py)."""
    if replicator is not None:
        return replicator.may_dispatch
    if membership is not None:
        return membership.may_run
    return lambda key: True


async def _wake_queues_on_gate(membership: ClusterMember, manager: QueueManager) -> None:
    """Queues that the partition rule held back look again whenever its answer may have changed."""
    while True:
        await membership.wait_gate_changed()
        manager.ownership_changed()


async def _start_protected(
    http: trio.Nursery, config: Config, runtime: Runtime, metrics: NodeMetrics, stop: trio.Event
) -> dict[str, list[str]]:
    """Start every protected listener beside the job API, so they drain and stop with it."""
    if not config.protect:
        return {}
    proxy_metrics = ProxyMetrics(metrics.registry)
    protected: dict[str, list[str]] = {}
    for listener in config.protect:
        protected[listener.label] = await http.start(
            partial(
                serve_protected,
                listener,
                metrics=proxy_metrics,
                wall_clock=runtime.wall_clock,
                transport=runtime.transport,
                shutdown_trigger=stop.wait,
            )
        )
        log.info("protecting %s on %s", listener.upstream, ", ".join(protected[listener.label]))
    return protected


def _regions_status(placement: ClusterPlacement, manager: QueueManager, prefix: str) -> dict[str, Any]:
    """GET /api/v1/regions: the regions, and health for the origins of the account's queues held here (this node
    is the owner that measured them)."""
    return placement.snapshot({queue["origin"] for queue in manager.queues_with_prefix(prefix)})


async def _housekeeping(config: Config, runtime: Runtime, store: Store, manager: QueueManager) -> None:
    """Delete finished jobs once their retention has passed, and forget queue keys idle as long."""
    while True:
        cutoff_ms = runtime.wall_ms() - int(config.jobs.retention_s * 1000)
        purged = await store.purge_finished(cutoff_ms)
        forgotten = manager.forget_idle(config.jobs.retention_s)
        if purged or forgotten:
            log.info("purged %d finished jobs and %d idle queue keys past the retention", purged, forgotten)
        await trio.sleep(config.jobs.purge_interval_s)


def _usage_meter(
    config: Config,
    runtime: Runtime,
    counters: Counters,
    saver: CounterSaver,
    membership: ClusterMember | None,
    peers: PeerClient | None,
    metrics: NodeMetrics,
) -> UsageMeter:
    """Plans' quotas on the counters: alone, this node holds every right; in a cluster, rights move between members
    over the internal API (edge/placement/usage.py)."""
    if membership is None or peers is None:
        node = config.server.node_id or "local"
        return UsageMeter(config, counters, runtime.wall_ms, node=node, saver=saver, metrics=metrics)
    members, client = membership, peers

    def genesis_owner(account_id: str) -> str | None:
        owner = members.owner_of(f"quota|{account_id}")
        return owner.node if owner is not None else None

    async def lend(node: str, account_id: str, month: str, wanted: int) -> list[CounterEntry]:
        member = next((m for m in members.live_members() if m.node == node), None)
        if member is None:
            raise LendFailed(f"{node} is not a live member")
        try:
            return await client.lend(
                member.api_address, account_id=account_id, month=month, wanted=wanted, borrower=members.local.node
            )
        except PeerError as exc:
            raise LendFailed(str(exc)) from exc

    return UsageMeter(
        config,
        counters,
        runtime.wall_ms,
        node=members.local.node,
        saver=saver,
        members=lambda: [m.node for m in members.live_members()],
        genesis_owner=genesis_owner,
        lend=lend,
        metrics=metrics,
    )
