"""Proxy overhead: HTTP/1.1 req/s and latency through the inbound proxy, against going straight to the upstream.

The upstream is the raw keep-alive Trio server of `bench.execution` (its own process, a fixed 200 for every
request), far faster than the proxy, so what the proxied rows lose is the proxy's own cost. The proxy is the real
command, `ezthrottle serve --config FILE`, in its own process, with one `[[protect]]` listener in front of that
upstream: fairness on, one configured paid key, `max_concurrency` above the connection count so nothing queues.
Three more targets put that cost in context:

- the trivial app of `bench.intake` on stock hypercorn (`serve_on_hypercorn`), the yardstick the issue's goal
  names: what the cheapest endpoint cost on the server the node used before it had its own;
- the same trivial app on the node's own front end (edge/http): the least any answer of the node's costs, a
  refusal included, so it bounds how far below a proxied request a refusal can get;
- refusals: the same listener, called with a second key whose rate (`REFUSED_RATE_PER_S`) refuses all but the
  first request (429 with Retry-After and RateLimit fields); wrk counts them as failed, which they are meant to be;
- nginx with one worker (bench/nginx.py) proxying to the same upstream: a reference for the forwarding alone.

wrk sends the same request to all of them (POST with an empty body and the key header, which only the proxy
reads) and the runs alternate, so a slow spell on the shared machine hits them all:

- 1 connection: one request at a time, so the latency difference is what the proxy adds to a request.
- 10 connections: throughput when the server is the bottleneck (its p50 then includes the queueing in wrk's
  connections, not only the work). The issue's goals are at 10 connections (`GOALS`).

`python -m bench.proxy_overhead` runs it alone and prints its RESULTS.md section.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    LOOPBACK,
    LoadResult,
    ServedTarget,
    alternate,
    free_loopback_port,
    run_wrk,
    running_command,
    served_app,
    summarize,
)
from bench.intake import BASELINE_FACTORY, NODE_FLOOR_FACTORY
from bench.nginx import running_nginx

BENCH_ACCOUNT = {"id": "bench", "key": "ck_bench_proxy_0123456789abcdef"}
KEY_HEADER = "x-api-key"
OVERHEAD_KEY = {"id": "overhead", "key": "pk_overhead_0123456789abcdef", "tier": "paid"}
# One request per 1000 s: every request of a run but the first is refused.
REFUSED_RATE_PER_S = 0.001
REFUSED_SECRET = "pk_refused_0123456789abcdef"
REFUSED_KEY = {"id": "refused", "key": REFUSED_SECRET, "tier": "paid", "rate_per_s": REFUSED_RATE_PER_S}
CONNECTION_COUNTS = (1, 10)
# Above every connection count, so no request waits for a slot and the figure is the proxy's own work.
OVERHEAD_CONCURRENCY = 64
DURATION_S = 2
ROUNDS = 3
DIRECT = "direct"
# The cheapest app on stock hypercorn (bench.intake's baseline): the yardstick.
SERVER_FLOOR = "trivial app on hypercorn"
# The same app on the node's own front end: what the proxy's listeners are served by, before any work of theirs.
NODE_FLOOR = "trivial app on the node's front end"
PROXIED = "through the proxy"
REFUSED = "refused by the proxy (429)"
NGINX = "nginx, 1 worker"
# From the issue, each a ratio of medians at 10 connections: (numerator, denominator, at least).
GOALS = ((PROXIED, SERVER_FLOOR, 1.0), (REFUSED, PROXIED, 5.0))
# The proxy process logs only what goes wrong: its INFO start-up lines would interleave with the bench output.
PROXY_LOG_LEVEL = "WARNING"


@dataclass(frozen=True, slots=True)
class ProtectedListener:
    """A running `ezthrottle serve` as the benchmarks see it."""

    url: str  # the [[protect]] listener
    api_url: str  # the node's job API, which serves the proxy's metrics at /metrics
    pid: int

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the node process has used so far, from Linux's /proc."""
        after_name = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15


def proxy_config_toml(
    data_dir: Path,
    api_listen: str,
    listen: str,
    upstream: str,
    protect: Mapping[str, Any],
    keys: Sequence[Mapping[str, Any]],
) -> str:
    """A node config with one `[[protect]]` listener (`protect` are its extra settings, `keys` its keys).

    The job API has a configured account, so the node prints no development key.
    """
    lines = [
        "[server]",
        f"listen = {_toml_value(api_listen)}",
        f"data_dir = {_toml_value(str(data_dir))}",
        "",
        "[[accounts]]",
        *_toml_pairs(BENCH_ACCOUNT),
        "",
        "[[protect]]",
        *_toml_pairs({"listen": listen, "upstream": upstream, **protect}),
    ]
    for key in keys:
        lines += ["", "[[protect.keys]]", *_toml_pairs(key)]
    return "\n".join(lines) + "\n"


def _toml_pairs(table: Mapping[str, Any]) -> list[str]:
    return [f"{name} = {_toml_value(value)}" for name, value in table.items()]


def _toml_value(value: str | bool | float) -> str:
    """TOML for the scalars these configs hold: a JSON string is a TOML basic string, and so are the numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


@contextlib.contextmanager
def protected_listener(
    scratch: Path,
    name: str,
    upstream: str,
    protect: Mapping[str, Any],
    keys: Sequence[Mapping[str, Any]],
) -> Iterator[ProtectedListener]:
    """Run `ezthrottle serve` with one `[[protect]]` listener in front of `upstream`, on free loopback ports.

    The upstream must already be up: the listener counts as started once a request through it is answered.
    """
    api_listen, listen = (f"{LOOPBACK}:{free_loopback_port()}" for _ in range(2))
    config_file = scratch / f"{name}.toml"
    config_file.write_text(proxy_config_toml(scratch / f"{name}-data", api_listen, listen, upstream, protect, keys))
    # One process (no supervisor): the figures are one proxy process's, and `pid` is the process that proxies.
    argv = [sys.executable, "-m", "edge", "serve", "--config", str(config_file), "--workers", "1"]
    argv += ["--log-level", PROXY_LOG_LEVEL]
    url = f"http://{listen}"
    with running_command(argv, url + "/") as process:
        yield ProtectedListener(url=url, api_url=f"http://{api_listen}", pid=process.pid)


def _target(base_url: str, key: str = OVERHEAD_KEY["key"]) -> ServedTarget:
    return ServedTarget(base_url=base_url, path="/", headers=((KEY_HEADER, key),), body=b"")


def _connections(count: int) -> str:
    return f"{count} connection{'s' if count > 1 else ''}"


def run() -> dict[str, Any]:
    """Start the upstream, the proxy and the server floor; alternate wrk runs at all three; shape the result."""
    upstream = f"http://{LOOPBACK}:{free_loopback_port()}"
    upstream_argv = [sys.executable, "-m", "bench.execution", "upstream", upstream.rsplit(":", 1)[1]]
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-proxy-overhead-")))
        stack.enter_context(running_command(upstream_argv, upstream + "/"))
        settings = {"max_concurrency": OVERHEAD_CONCURRENCY}
        proxy = stack.enter_context(
            protected_listener(scratch, "overhead", upstream, settings, [OVERHEAD_KEY, REFUSED_KEY])
        ).url
        targets = {
            DIRECT: _target(upstream),
            SERVER_FLOOR: _target(stack.enter_context(served_app(BASELINE_FACTORY)).base_url),
            NODE_FLOOR: _target(stack.enter_context(served_app(NODE_FLOOR_FACTORY)).base_url),
            PROXIED: _target(proxy),
            REFUSED: _target(proxy, REFUSED_SECRET),
            NGINX: _target(stack.enter_context(running_nginx(scratch, upstream))),
        }
        measurements = {
            f"{side}, {_connections(connections)}": functools.partial(
                run_wrk, target, scratch, duration_s=DURATION_S, connections=connections
            )
            for connections in CONNECTION_COUNTS
            for side, target in targets.items()
        }
        runs = alternate(measurements, ROUNDS)
    rows: list[dict[str, str]] = []
    checks: dict[str, str] = {}
    for connections in map(_connections, CONNECTION_COUNTS):
        named = {side: f"{side}, {connections}" for side in targets}
        rows += summarize({name: runs[name] for name in named.values()}, baseline=named[DIRECT], label="HTTP/1.1")
        rate = {side: _median(runs[name], "requests_per_s") for side, name in named.items()}
        added_p50_ms = _median(runs[named[PROXIED]], "latency_ms_p50") - _median(runs[named[DIRECT]], "latency_ms_p50")
        checks[f"{connections}: proxied / direct req/s (medians)"] = f"{rate[PROXIED] / rate[DIRECT]:.2f}x"
        checks[f"{connections}: proxied / trivial app on hypercorn req/s"] = (
            f"{rate[PROXIED] / rate[SERVER_FLOOR]:.2f}x"
        )
        checks[f"{connections}: refusals / proxied req/s"] = f"{rate[REFUSED] / rate[PROXIED]:.2f}x"
        checks[f"{connections}: refusals / trivial app on the node's front end req/s"] = (
            f"{rate[REFUSED] / rate[NODE_FLOOR]:.2f}x"
        )
        checks[f"{connections}: trivial app on the node's front end / proxied req/s (what refusals could reach)"] = (
            f"{rate[NODE_FLOOR] / rate[PROXIED]:.2f}x"
        )
        checks[f"{connections}: proxied / nginx (1 worker) req/s"] = f"{rate[PROXIED] / rate[NGINX]:.2f}x"
        checks[f"{connections}: p50 added by the proxy (medians)"] = f"{added_p50_ms:+.2f} ms"
    at_goal_load = {side: _median(runs[f"{side}, {_connections(10)}"], "requests_per_s") for side in targets}
    for numerator, denominator, least in GOALS:
        ratio = at_goal_load[numerator] / at_goal_load[denominator]
        verdict = "met" if ratio >= least else "not met"
        checks[f"goal, {numerator} / {denominator} >= {least:g}x at 10 connections"] = f"{verdict} ({ratio:.2f}x)"
    return {
        "title": "Inbound proxy overhead (HTTP/1.1, trivial upstream)",
        "about": __doc__.strip().splitlines()[0],
        "targets": {
            DIRECT: "python -m bench.execution upstream PORT",
            SERVER_FLOOR: BASELINE_FACTORY,
            NODE_FLOOR: NODE_FLOOR_FACTORY,
            PROXIED: "ezthrottle serve --workers 1 --config FILE",
            REFUSED: f"the same listener, key rate_per_s = {REFUSED_RATE_PER_S:g}",
            NGINX: "nginx -c FILE (bench/nginx.py)",
        },
        "commands": [results[0].command for results in runs.values()],
        "rows": rows,
        "checks": checks,
        "notes": [
            f"wrk, {DURATION_S} s per run, {ROUNDS} alternating rounds of each of the {len(runs)} rows; the proxy, the"
            " upstream and wrk share this machine's cores. The refusal rows' failed column counts the 429s."
        ],
    }


def _median(results: list[LoadResult], figure: str) -> float:
    return statistics.median(getattr(result, figure) for result in results)


def main() -> None:
    """`python -m bench.proxy_overhead`: print this benchmark's RESULTS.md section."""
    from bench.__main__ import render_section  # here, not at the top: bench.__main__ imports this module

    print(render_section(run()))


if __name__ == "__main__":
    main()
