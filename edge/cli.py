"""The `ezthrottle` command (also `python -m edge`).

`serve` is built in. Every other command comes from the entry-point group `ezthrottle.commands` (COMMAND_GROUP):
the entry point's name is the command, and it loads a callable that takes the arguments after the name and
returns the exit status; the first line of its docstring is the command's line in `ezthrottle --help`. The
simulator registers `simulate` this way (pyproject.toml), so edge never imports it: a command's module is loaded
only when that command runs, or when the help lists it.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import trio

from edge import workers
from edge.config import Config, ConfigError, is_loopback_listen, load_config, with_dev_account
from edge.fly import fly_defaults
from edge.logs import JsonFormatter, configure_logging
from edge.node import STORE_FILENAME, Node, run_node
from edge.process import tune_garbage_collector
from edge.runtime import Runtime

DEV_KEY_FILENAME = "dev-account.key"
COMMAND_GROUP = "ezthrottle.commands"
BUILT_IN_COMMANDS = ("serve",)
# A graceful stop (drain, leave the cluster, close the store) on either: Ctrl-C, `docker stop`, Fly's kill_signal.
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Command = Callable[[list[str]], int]

SERVE_EPILOG = """\
Every config value can also be set by an environment variable EZTHROTTLE_<SECTION>_<KEY>, for example
EZTHROTTLE_SERVER_LISTEN=0.0.0.0:8080 or EZTHROTTLE_SECURITY_ALLOW_PRIVATE_TARGETS=true; EZTHROTTLE_ACCOUNTS and
EZTHROTTLE_TARGETS take JSON. Precedence: config file < environment < command-line flags.

With no [[accounts]] configured, the node creates a development account, keeps its key in DATA_DIR/dev-account.key
and prints it with a curl example; it does so only when every listener is on loopback, and otherwise refuses to
start. On Fly.io, FLY_REGION, FLY_MACHINE_ID, FLY_PRIVATE_IP and FLY_APP_NAME fill in what the config leaves unset
(edge/fly.py).
"""


def registered_commands() -> dict[str, EntryPoint]:
    """The commands other packages register, by name; a name that shadows a built-in command is ignored."""
    found = entry_points(group=COMMAND_GROUP)
    return {point.name: point for point in found if point.name not in BUILT_IN_COMMANDS}


def build_parser(commands: Mapping[str, EntryPoint] | None = None) -> argparse.ArgumentParser:
    """The top-level parser, listing `commands` (default: every registered one) beside `serve` for the help.

    A registered command is only listed here: `main` hands its arguments to it before this parser runs.
    """
    parser = argparse.ArgumentParser(prog="ezthrottle", description="EZThrottle Edge: an API protection layer.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = subcommands.add_parser(
        "serve",
        help="run one node: the job API, queues, webhooks",
        description="Run one EZThrottle Edge node: the outbound job API with its queues and webhook delivery.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("EZTHROTTLE_CONFIG"),
        metavar="FILE",
        help="TOML config file (default: $EZTHROTTLE_CONFIG, else built-in defaults)",
    )
    serve.add_argument("--listen", metavar="HOST:PORT", help="address of the job API (default 127.0.0.1:8080)")
    serve.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="where the SQLite job store lives (default ./.ezthrottle)"
    )
    serve.add_argument(
        "--join",
        metavar="HOST:PORT,...",
        help="cluster members to join (gossip addresses; DNS names such as <app>.internal resolve to every "
        "member); sets cluster.seeds",
    )
    serve.add_argument(
        "--cluster-bind",
        metavar="HOST:PORT",
        help="gossip address (UDP and TCP) of this node; turns the cluster on; sets cluster.bind",
    )
    serve.add_argument(
        "--insecure-cluster",
        action="store_true",
        help="allow a cluster without [cluster] keys: gossip and forwarding unauthenticated (development only)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes serving this node (default 1: one process); sets server.workers",
    )
    # Set by the supervisor for each worker it starts (edge/workers.py); the worker reads the rest on stdin.
    serve.add_argument("--worker", type=int, metavar="INDEX", help=argparse.SUPPRESS)
    serve.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging verbosity (default INFO); keys and secrets are never logged",
    )
    for name, point in sorted((registered_commands() if commands is None else commands).items()):
        subcommands.add_parser(name, help=_summary(point))
    return parser


def _summary(point: EntryPoint) -> str:
    """A registered command's line in the help: the first line of its docstring (loading it imports its module)."""
    try:
        command = point.load()
    except Exception as exc:  # a broken plug-in must not take `ezthrottle --help` down with it
        return f"(cannot be loaded: {type(exc).__name__}: {exc})"
    lines = (command.__doc__ or "").strip().splitlines()
    if not lines:
        return f"(from {point.value})"
    first = lines[0].rstrip(".")
    return first[:1].lower() + first[1:]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    registered = registered_commands()
    if argv[:1] and argv[0] in registered:
        # Loaded only now: `serve` has no use for the other commands and starts faster without them.
        command: Command = registered[argv[0]].load()
        return command(argv[1:])
    # `serve` never needs the other commands' help; anything else (no command, --help, a typo) lists them all.
    args = build_parser(registered if argv[:1] != ["serve"] else {}).parse_args(argv)
    overrides = {}
    if args.listen:
        overrides["server.listen"] = args.listen
    if args.data_dir:
        overrides["server.data_dir"] = str(args.data_dir)
    if args.join:
        overrides["cluster.seeds"] = [seed.strip() for seed in args.join.split(",") if seed.strip()]
    if args.cluster_bind:
        overrides["cluster.bind"] = args.cluster_bind
    if args.insecure_cluster:
        overrides["cluster.insecure"] = True
    if args.workers is not None:
        overrides["server.workers"] = args.workers
    try:
        config = fly_defaults(load_config(args.config, overrides=overrides), os.environ)
        if args.worker is not None:
            config = workers.worker_config(config, workers.read_handoff())
    except ConfigError as exc:
        print(f"ezthrottle: bad configuration: {exc}", file=sys.stderr)
        return 2
    exposed = [] if config.accounts else _exposed_listeners(config)
    if exposed:
        print(_dev_account_refusal(exposed), file=sys.stderr)
        return 2
    formatter = configure_logging(
        args.log_level, config.server.log_format, node=config.server.node_id, region=config.cluster.region
    )
    if args.worker is not None:  # the supervisor has checked and logged the node's settings
        trio.run(functools.partial(_serve, config, formatter, supervised=True))
        return 0
    dev_key = None if config.accounts else _dev_account_key(config)
    logging.getLogger("ezthrottle").info("starting: %s", config.describe())
    count = workers.worker_count(config.server.workers, workers.available_cpus())
    data_dir = config.server.data_dir
    entries = [entry.name for entry in data_dir.iterdir()] if data_dir.is_dir() else []
    for stranded in workers.stranded_shards(entries, count, store=STORE_FILENAME):
        logging.getLogger("ezthrottle").warning(
            "%s holds jobs that a node of %d process(es) does not run: run it with the server.workers that wrote "
            "them until they are done",
            data_dir / stranded,
            count,
        )
    if count > 1:  # each worker adds the development account itself, from the key it is handed
        try:
            return workers.supervise(config, argv[1:], count, dev_key=dev_key)
        except ConfigError as exc:
            print(f"ezthrottle: bad configuration: {exc}", file=sys.stderr)
            return 2
    if dev_key is not None:
        config = with_dev_account(config, account_id="dev", key=dev_key)
    trio.run(functools.partial(_serve, config, formatter, supervised=False))
    return 0


def _exposed_listeners(config: Config) -> list[str]:
    """The listeners other machines could reach, as `key = address`: the job API's and each protected one's."""
    listeners = [("server.listen", config.server.listen)]
    listeners += [(f"protect[{index}].listen", listener.listen) for index, listener in enumerate(config.protect)]
    return [f"{key} = {address}" for key, address in listeners if not is_loopback_listen(address)]


def _dev_account_refusal(exposed: Sequence[str]) -> str:
    """Why a node without accounts does not start on a reachable address, and the two ways out."""
    listeners = "".join(f"  {listener}\n" for listener in exposed)
    return (
        "ezthrottle: refusing to start: no [[accounts]] are configured, and these listeners are not on loopback:\n"
        f"{listeners}"
        "Without accounts the node makes a development account and prints its key, and that key must never be "
        "served beyond this machine.\n"
        "Either configure an account: an [[accounts]] table (id, and key or key_sha256) in the config file, or\n"
        '  EZTHROTTLE_ACCOUNTS=\'[{"id": "acme", "key": "<a random key of 16 characters or more>"}]\'\n'
        'or listen on loopback only: server.listen = "127.0.0.1:8080" (EZTHROTTLE_SERVER_LISTEN, --listen), and '
        "each protect[].listen likewise."
    )


def _dev_account_key(config: Config) -> str:
    """Create (once) and print a development account key, so `make serve` works with no config at all."""
    key_file = config.server.data_dir / DEV_KEY_FILENAME
    key_file.parent.mkdir(parents=True, exist_ok=True)
    if key_file.exists():
        key = key_file.read_text().strip()
    else:
        key = "ck_dev_" + secrets.token_urlsafe(24)
        key_file.touch(mode=0o600)
        key_file.write_text(key + "\n")
    host = config.server.listen
    print(
        "No [[accounts]] configured: using the development account 'dev'.\n"
        f"  key (kept in {key_file}): {key}\n"
        "  try:\n"
        f"    curl -s http://{host}/api/v1/jobs -H 'Authorization: Bearer {key}' \\\n"
        "      -H 'Content-Type: application/json' \\\n"
        '      -d \'{"url": "https://api.example.com/v1/ping", "method": "GET"}\'\n'
        f"    curl -s http://{host}/api/v1/jobs/<job_id> -H 'Authorization: Bearer {key}'\n",
        flush=True,
    )
    return key


async def _serve(config: Config, formatter: JsonFormatter | None, *, supervised: bool) -> None:
    """Run the node until a shutdown signal: the first stops it gracefully, or cancels its start if it is still
    starting (waiting for its peers, say) rather than letting the signal kill the process; a second one stops it
    at once. A `supervised` worker (edge/workers.py) also stops at once when its supervisor is gone."""
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            running = trio.CancelScope()
            node: Node | None = None

            async def stop_on_signals() -> None:
                stopping = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if node is None or stopping:
                        logging.getLogger("ezthrottle").info("%s: stopping at once", name)
                        running.cancel()
                        return
                    logging.getLogger("ezthrottle").info("%s: shutting down", name)
                    node.stop()
                    stopping = True

            async def stop_without_supervisor() -> None:
                await workers.watch_supervisor()
                logging.getLogger("ezthrottle").warning("the supervisor is gone: stopping at once")
                running.cancel()

            nursery.start_soon(stop_on_signals)
            if supervised:
                nursery.start_soon(stop_without_supervisor)
            with running:
                async with trio.open_nursery() as serving:
                    node = await serving.start(run_node, config, Runtime.real())
                    tune_garbage_collector()
                    if formatter is not None and node.membership is not None:
                        formatter.identify(node=node.membership.local.node)  # a generated id is known only now
            nursery.cancel_scope.cancel()  # the node has stopped: no more signals to wait for
