"""A node on every core: `ezthrottle serve` with `server.workers` > 1 runs a supervisor and that many workers.

Why processes that are cluster members of their own: a node's work (HTTP parsing, JSON, SQLite, the queues) is
pure Python under one GIL, so one process uses one core. The cluster already knows how to keep one queue per key
across processes, with durable hand-offs, replicas, the majority lease and forwarding to a key's owner; so each
worker is simply one more member, with its own store shard and identity, and nothing about the semantics the
users see is new code. What is new is small: the supervisor, the per-worker settings derived here, and the
listen sockets the workers share.

- **Identity** (stable across restarts, so a restarted worker is the same member and recovers its own jobs): node
  id `<node>-w<i>`, `<node>` being the node's id (`server.node_id`, else the id kept in `data_dir`); store shard
  `<data_dir>/worker-<i>`. Every worker also carries `<node>` as its `machine` in the gossip, so replicas go to
  other machines first (edge/placement/replication.py).
- **Ports**, for `server.listen` port P and N workers: P is shared by every worker (SO_REUSEPORT: the kernel
  spreads connections over them); worker i also listens on P + 1 + i, its own address, where members forward to
  it (`cluster.api_advertise`'s port + 1 + i when that is set). Gossip: `cluster.bind`'s port + i (likewise its
  `advertise`); every worker has its siblings as seeds beside the configured ones. A node with no `[cluster]`
  becomes a cluster of its own workers on loopback: gossip on 127.0.0.1, port P + 1 + N + i, the `local` timing
  profile, authenticated by a key the supervisor keeps in `<data_dir>/workers.key` (0600) and hands to each worker
  through its stdin, never in argv, the environment or a log. The key is kept, not made per start, because it also
  seals the webhook secrets set through the API (edge/placement/webhook_secrets.py), which must outlive a restart.
- **Protected listeners** (`[[protect]]`) run on worker 0 alone, with the whole upstream capacity: they are bound
  without SO_REUSEPORT (`serve_protected` passes no `reuse_port`), so a second worker could not share the port.
  Their limits are unchanged.
- **The supervisor** starts the workers (`ezthrottle serve ... --worker I`, each in a session of its own, so a
  terminal's Ctrl-C reaches only the supervisor), forwards SIGINT and SIGTERM to them (the first stops each
  gracefully, a second at once, as for a node of one process), restarts one that exits while the node is not
  stopping (`restart_delay_s`: exponential, bounded), and exits when every worker has. A worker holds its stdin
  pipe open to the supervisor and stops at once when it closes: a supervisor killed with -9 leaves no worker
  behind to run a shard the next start will run too.

`worker_config` and the restart policy are pure functions (tests/edge/test_workers.py holds them to tables);
`supervise` is the Trio shell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from edge.config import Config, ConfigError, ServerConfig, split_listen, with_dev_account
from edge.placement.membership import node_id
from edge.runtime import Runtime

log = logging.getLogger("ezthrottle.workers")

SOURCE: Final = "server.workers"  # what a ConfigError about the derived settings names as its source
SHARD_DIRNAME: Final = "worker-{index}"
SIBLING_KEY_FILENAME: Final = "workers.key"
SIBLING_KEY_BYTES: Final = 32
HANDOFF_BYTES_MAX: Final = 64 * 1024
LOOPBACK: Final = "127.0.0.1"
# Restarts: the first after RESTART_DELAY_S_FIRST, doubling with each quick failure in a row up to
# RESTART_DELAY_S_MAX (systemd's default RestartSec is 100 ms and its limit 5 starts in 10 s; a worker that cannot
# start, its port held by another program say, is retried every 10 s and logged each time, never given up on).
RESTART_DELAY_S_FIRST: Final = 0.25
RESTART_DELAY_S_MAX: Final = 10.0
# A worker that ran this long before it exited counts as having worked: its next failure starts the count over.
STABLE_RUN_S: Final = 60.0
SHUTDOWN_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True, slots=True, kw_only=True)
class Handoff:
    """What the supervisor tells worker `index` of `count` on its stdin: the node's id (`machine`), and the
    secrets that must stay out of argv and the environment."""

    index: int
    count: int
    machine: str
    sibling_key: bytes | None = field(default=None, repr=False)  # the loopback cluster's key, without [cluster]
    dev_key: str | None = field(default=None, repr=False)  # the development account's key, without [[accounts]]

    def encode(self) -> bytes:
        document = {
            "index": self.index,
            "count": self.count,
            "machine": self.machine,
            "sibling_key": None if self.sibling_key is None else self.sibling_key.hex(),
            "dev_key": self.dev_key,
        }
        return json.dumps(document).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Handoff:
        document = json.loads(line)
        key = document["sibling_key"]
        return cls(
            index=int(document["index"]),
            count=int(document["count"]),
            machine=str(document["machine"]),
            sibling_key=None if key is None else bytes.fromhex(key),
            dev_key=document["dev_key"],
        )


def worker_count(configured: int | None, cpus: int | None) -> int:
    """`server.workers`, else one per CPU (at least one)."""
    return configured if configured is not None else max(1, cpus or 1)


def worker_id(machine: str, index: int) -> str:
    return f"{machine}-w{index}"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _shifted(address: str, by: int, key: str) -> str:
    """`address` with its port moved up by `by`; a port of 0 (any free one) cannot be shared out this way."""
    host, port = split_listen(address)
    if port == 0:
        raise ConfigError(SOURCE, key, f"needs a fixed port when a node has several workers (got {address})")
    if port + by > 65535:
        raise ConfigError(SOURCE, key, f"port {port} + {by} for the workers is beyond 65535")
    return _address(host, port + by)


def _loopback_of(host: str) -> str:
    """The loopback address of `host`'s family: where a worker's own listener goes in a loopback-only cluster."""
    return "::1" if ":" in host else LOOPBACK


def worker_config(config: Config, handoff: Handoff) -> Config:
    """The configuration worker `handoff.index` runs: the node's, with the identity, shard, ports and cluster
    settings of the module docstring. Raises ConfigError when the node's settings cannot be shared out."""
    index, count = handoff.index, handoff.count
    server = config.server
    name = worker_id(handoff.machine, index)
    if len(name) > 64:
        raise ConfigError(SOURCE, "server.node_id", f"{name!r} (the node id plus -w{index}) is over 64 characters")
    listen_host, port = split_listen(server.listen)
    own = _shifted(server.listen, 1 + index, "server.listen")
    settings = config.cluster
    if settings.enabled:
        if settings.api_advertise is not None:
            advertised = _shifted(settings.api_advertise, 1 + index, "cluster.api_advertise")
        elif listen_host in ("0.0.0.0", "::"):
            raise ConfigError(SOURCE, "cluster.api_advertise", "required with a wildcard server.listen")
        else:
            advertised = own
        assert settings.bind is not None
        reached_at = settings.advertise or settings.bind
        siblings = tuple(_shifted(reached_at, j, "cluster.bind") for j in range(count) if j != index)
        cluster = dataclasses.replace(
            settings,
            bind=_shifted(settings.bind, index, "cluster.bind"),
            advertise=None if settings.advertise is None else _shifted(settings.advertise, index, "cluster.advertise"),
            api_advertise=advertised,
            seeds=(*settings.seeds, *siblings),
        )
    else:
        if handoff.sibling_key is None:
            raise ConfigError(SOURCE, "cluster.keys", "a node of several workers without [cluster] needs their key")
        # Nothing beyond the machine needs to reach a worker's own listener then.
        own = _address(_loopback_of(listen_host), split_listen(own)[1])
        _shifted(server.listen, 2 * count, "server.listen")  # the last gossip port must exist
        gossip = [_address(LOOPBACK, port + 1 + count + j) for j in range(count)]
        cluster = dataclasses.replace(
            settings,
            bind=gossip[index],
            api_advertise=own,
            seeds=tuple(address for j, address in enumerate(gossip) if j != index),
            keys=(handoff.sibling_key,),
            profile="local",
        )
    cluster = dataclasses.replace(cluster, machine=handoff.machine)
    derived = dataclasses.replace(
        config,
        server=dataclasses.replace(
            server,
            data_dir=server.data_dir / SHARD_DIRNAME.format(index=index),
            node_id=name,
            workers=count,
            worker_listen=own,
        ),
        cluster=cluster,
        protect=config.protect if index == 0 else (),
    )
    if handoff.dev_key is not None:
        derived = with_dev_account(derived, account_id="dev", key=handoff.dev_key)
    return derived


def stranded_shards(entries: Iterable[str], count: int, *, store: str) -> list[str]:
    """The stores among a data dir's `entries` that a node of `count` processes does not run: with one process,
    every worker's shard; with several, the single process's `store` file and the shards of workers beyond
    `count`. Their queued jobs stay there, unrun, until the node runs with the count that wrote them again."""
    shards = {SHARD_DIRNAME.format(index=index) for index in range(count)} if count > 1 else set()
    stranded = [entry for entry in entries if _is_shard(entry) and entry not in shards]
    if count > 1 and store in entries:
        stranded.append(store)
    return sorted(stranded)


def _is_shard(entry: str) -> bool:
    prefix = SHARD_DIRNAME.format(index="")
    return entry.startswith(prefix) and entry[len(prefix) :].isdigit()


def failures_after(failures: int, ran_s: float) -> int:
    """Quick failures in a row once a worker exits after `ran_s`: one that ran STABLE_RUN_S starts over at 1."""
    return 1 if ran_s >= STABLE_RUN_S else failures + 1


def restart_delay_s(failures: int) -> float:
    """How long to wait before restarting a worker after `failures` quick failures in a row (>= 1)."""
    return min(RESTART_DELAY_S_MAX, RESTART_DELAY_S_FIRST * 2 ** min(failures - 1, 32))


def describe_exit(status: int) -> str:
    """ "status 3" or "SIGKILL", from a `Popen.returncode` (negative: the signal that ended it)."""
    if status < 0:
        try:
            return signal.Signals(-status).name
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


# --- the shell ---


def sibling_key(server: ServerConfig) -> bytes:
    """The loopback cluster's key, made once and kept in the data dir (owner-only), like the development key."""
    path: Path = server.data_dir / SIBLING_KEY_FILENAME
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(SIBLING_KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key.hex() + "\n")
    return key


def read_handoff(fd: int = 0) -> Handoff:
    """The supervisor's first line on `fd` (stdin), read without buffering past it."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk or len(line) >= HANDOFF_BYTES_MAX:
            raise ConfigError("worker", None, "no hand-off from the supervisor on stdin (run `ezthrottle serve`)")
        line += chunk
    try:
        return Handoff.decode(line)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError("worker", None, f"a malformed hand-off from the supervisor ({type(exc).__name__})") from None


def available_cpus() -> int | None:
    """The CPUs this process may run on (its affinity mask, which a container's cpuset narrows), else all of them.
    A CFS quota (`docker --cpus`) is not seen: set `server.workers` there."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


async def watch_supervisor(fd: int = 0) -> None:
    """Return when the supervisor's end of the pipe on `fd` closes: it exited, or was killed."""
    stream = trio.lowlevel.FdStream(os.dup(fd))
    async with stream:
        while await stream.receive_some():
            pass


@dataclass
class _Supervisor:
    argv: list[str]
    handoffs: list[Handoff]
    stopping: trio.Event = field(default_factory=trio.Event)
    running: dict[int, trio.Process] = field(default_factory=dict)
    failed_stop: bool = False

    def signal_all(self, signum: int) -> None:
        for process in self.running.values():
            if process.returncode is None:
                process.send_signal(signum)

    async def keep_running(self, handoff: Handoff) -> None:
        """Run worker `handoff.index` until the node stops, restarting it (after a delay) whenever it exits."""
        index, failures = handoff.index, 0
        command = [sys.executable, "-m", "edge", "serve", *self.argv, "--worker", str(index)]
        while not self.stopping.is_set():
            started = trio.current_time()
            process = await trio.lowlevel.open_process(command, stdin=subprocess.PIPE, start_new_session=True)
            self.running[index] = process
            if self.stopping.is_set():  # the signal came while it was starting
                process.send_signal(signal.SIGTERM)
            log.info("worker %d started (pid %d)", index, process.pid)
            assert process.stdin is not None
            with contextlib.suppress(trio.BrokenResourceError):  # it died already; wait() says how
                await process.stdin.send_all(handoff.encode())
            status = await process.wait()
            await process.stdin.aclose()  # only now: the worker stops at once when this pipe closes
            del self.running[index]
            if self.stopping.is_set():
                log.info("worker %d (pid %d) stopped: %s", index, process.pid, describe_exit(status))
                self.failed_stop |= status != 0
                return
            ran_s = trio.current_time() - started
            failures = failures_after(failures, ran_s)
            delay_s = restart_delay_s(failures)
            log.warning(
                "worker %d (pid %d) exited (%s) after %.1f s; restarting it in %.2f s",
                index,
                process.pid,
                describe_exit(status),
                ran_s,
                delay_s,
            )
            with trio.move_on_after(delay_s):
                await self.stopping.wait()

    async def forward_signals(self) -> None:
        with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
            async for signum in signals:
                first = not self.stopping.is_set()
                log.info(
                    "%s: %s every worker", signal.Signals(signum).name, "stopping" if first else "stopping at once"
                )
                self.stopping.set()
                self.signal_all(signal.SIGTERM)


async def _supervise(argv: list[str], handoffs: list[Handoff]) -> int:
    supervisor = _Supervisor(argv, handoffs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.forward_signals)
        async with trio.open_nursery() as workers:
            for handoff in handoffs:
                workers.start_soon(supervisor.keep_running, handoff)
        nursery.cancel_scope.cancel()
    log.info("every worker has stopped")
    return 1 if supervisor.failed_stop else 0


def supervise(config: Config, argv: Sequence[str], count: int, *, dev_key: str | None) -> int:
    """Run `count` workers of the node `config` describes until a signal stops them; the exit status.

    `argv` are the `serve` arguments the node was started with: each worker is started with the same ones (and so
    loads the same configuration), plus `--worker I`. Every worker's settings are derived here first, so a node
    whose settings cannot be shared out (a port of 0, say) fails at once, naming the setting."""
    machine = node_id(config, Runtime.real())
    key = None if config.cluster.enabled else sibling_key(config.server)
    handoffs = [
        Handoff(index=index, count=count, machine=machine, sibling_key=key, dev_key=dev_key) for index in range(count)
    ]
    for handoff in handoffs:
        worker = worker_config(config, handoff)
        log.info(
            "worker %d: node %s, listens on %s and %s, gossip on %s, store in %s",
            handoff.index,
            worker.server.node_id,
            worker.server.listen,
            worker.server.worker_listen,
            worker.cluster.bind,
            worker.server.data_dir,
        )
    return trio.run(_supervise, list(argv), handoffs)
