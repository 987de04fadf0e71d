"""The `ezthrottle` command (also `python -m edge`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

import trio

from edge.config import Config, ConfigError, load_config, with_dev_account
from edge.node import run_node
from edge.runtime import Runtime

DEV_KEY_FILENAME = "dev-account.key"

SERVE_EPILOG = """\
Every config value can also be set by an environment variable EZTHROTTLE_<SECTION>_<KEY>, for example
EZTHROTTLE_SERVER_LISTEN=0.0.0.0:8080 or EZTHROTTLE_SECURITY_ALLOW_PRIVATE_TARGETS=true; EZTHROTTLE_ACCOUNTS and
EZTHROTTLE_TARGETS take JSON. Precedence: config file < environment < command-line flags.

With no [[accounts]] configured, the node creates a development account, keeps its key in DATA_DIR/dev-account.key
and prints it with a curl example.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ezthrottle", description="EZThrottle Edge: an API protection layer.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
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
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging verbosity (default INFO); keys and secrets are never logged",
    )
    # Listed here for the help; `main` hands the command to the simulator's own parser before this one runs.
    commands.add_parser(
        "simulate", help="run a scenario on the deterministic simulator (seeds, swarm, capacity sweeps)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        # Imported here, not at the top: `serve` has no use for the simulator and starts faster without it.
        from simulations import cli as simulate_cli

        return simulate_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"ezthrottle: bad configuration: {exc}", file=sys.stderr)
        return 2
    if not config.accounts:
        config = _with_dev_account(config)
    if config.cluster.region is None and os.environ.get("FLY_REGION"):
        # On Fly.io every machine knows its region; members advertise it for region-aware routing.
        cluster = dataclasses.replace(config.cluster, region=os.environ["FLY_REGION"])
        config = dataclasses.replace(config, cluster=cluster)
    logging.getLogger("ezthrottle").info("starting: %s", config.describe())
    trio.run(_serve, config)
    return 0


def _with_dev_account(config: Config) -> Config:
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
    return with_dev_account(config, account_id="dev", key=key)


async def _serve(config: Config) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(run_node, config, Runtime.real())
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logging.getLogger("ezthrottle").info("%s: shutting down", signal.Signals(signum).name)
                node.stop()
                break
