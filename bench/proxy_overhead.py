"""Proxy overhead: HTTP/1.1 req/s and latency through the inbound proxy, against going straight to the upstream.

The upstream is the raw keep-alive Trio server of `bench.execution` (its own process, a fixed 200 for every
request), far faster than the proxy, so what the proxied rows lose is the proxy's own cost. The proxy is the real
command, `ezthrottle serve --config FILE`, in its own process, with one `[[protect]]` listener in front of that
upstream: fairness on, one configured paid key, `max_concurrency` above the connection count so nothing queues.
wrk sends the same request both ways (POST with an empty body and the key header; the upstream ignores the key)
and runs alternate, direct then proxied, so a slow spell on the shared machine hits both:

- 1 connection: one request at a time, so the latency difference is what the proxy adds to a request.
- 10 connections: the proxy's throughput when it is the bottleneck (its p50 then includes queueing in wrk's
  connections, not only the proxy's work).

`python -m bench.proxy_overhead` runs it alone and prints its RESULTS.md section.
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
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
    summarize,
)

BENCH_ACCOUNT = {"id": "bench", "key": "ck_bench_proxy_0123456789abcdef"}
KEY_HEADER = "x-api-key"
OVERHEAD_KEY = {"id": "overhead", "key": "pk_overhead_0123456789abcdef", "tier": "paid"}
CONNECTION_COUNTS = (1, 10)
# Above every connection count, so no request waits for a slot and the figure is the proxy's own work.
OVERHEAD_CONCURRENCY = 64
DURATION_S = 3
ROUNDS = 3
DIRECT = "direct"
PROXIED = "through the proxy"
# The proxy process logs only what goes wrong: its INFO start-up lines would interleave with the bench output.
PROXY_LOG_LEVEL = "WARNING"


def proxy_config_toml(
    data_dir: Path, listen: str, upstream: str, protect: Mapping[str, Any], keys: Sequence[Mapping[str, Any]]
) -> str:
    """A node config with one `[[protect]]` listener (`protect` are its extra settings, `keys` its keys).

    The job API gets a free loopback port and a configured account, so the node prints no development key.
    """
    lines = [
        "[server]",
        f"listen = {_toml_value(f'{LOOPBACK}:{free_loopback_port()}')}",
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
) -> Iterator[str]:
    """Run `ezthrottle serve` with one `[[protect]]` listener in front of `upstream`; yields the listener's URL.

    The upstream must already be up: the listener counts as started once a request through it is answered.
    """
    listen = f"{LOOPBACK}:{free_loopback_port()}"
    config_file = scratch / f"{name}.toml"
    config_file.write_text(proxy_config_toml(scratch / f"{name}-data", listen, upstream, protect, keys))
    argv = [sys.executable, "-m", "edge", "serve", "--config", str(config_file), "--log-level", PROXY_LOG_LEVEL]
    url = f"http://{listen}"
    with running_command(argv, url + "/"):
        yield url


def _target(base_url: str) -> ServedTarget:
    return ServedTarget(base_url=base_url, path="/", headers=((KEY_HEADER, OVERHEAD_KEY["key"]),), body=b"")


def _connections(count: int) -> str:
    return f"{count} connection{'s' if count > 1 else ''}"


def run() -> dict[str, Any]:
    """Start the upstream and the proxy, alternate wrk runs at both, and shape the result for `python -m bench`."""
    upstream = f"http://{LOOPBACK}:{free_loopback_port()}"
    upstream_argv = [sys.executable, "-m", "bench.execution", "upstream", upstream.rsplit(":", 1)[1]]
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-proxy-overhead-")))
        stack.enter_context(running_command(upstream_argv, upstream + "/"))
        proxy = stack.enter_context(
            protected_listener(scratch, "overhead", upstream, {"max_concurrency": OVERHEAD_CONCURRENCY}, [OVERHEAD_KEY])
        )
        measurements = {
            f"{side}, {_connections(connections)}": functools.partial(
                run_wrk, _target(base_url), scratch, duration_s=DURATION_S, connections=connections
            )
            for connections in CONNECTION_COUNTS
            for side, base_url in ((DIRECT, upstream), (PROXIED, proxy))
        }
        runs = alternate(measurements, ROUNDS)
    rows: list[dict[str, str]] = []
    checks: dict[str, str] = {}
    for connections in map(_connections, CONNECTION_COUNTS):
        direct, proxied = f"{DIRECT}, {connections}", f"{PROXIED}, {connections}"
        rows += summarize({direct: runs[direct], proxied: runs[proxied]}, baseline=direct, label="HTTP/1.1")
        rate_ratio = _median(runs[proxied], "requests_per_s") / _median(runs[direct], "requests_per_s")
        added_p50_ms = _median(runs[proxied], "latency_ms_p50") - _median(runs[direct], "latency_ms_p50")
        checks[f"{connections}: proxied / direct req/s (medians)"] = f"{rate_ratio:.2f}x"
        checks[f"{connections}: p50 added by the proxy (medians)"] = f"{added_p50_ms:+.2f} ms"
    return {
        "title": "Inbound proxy overhead (HTTP/1.1, trivial upstream)",
        "about": __doc__.strip().splitlines()[0],
        "targets": {DIRECT: "python -m bench.execution upstream PORT", PROXIED: "ezthrottle serve --config FILE"},
        "commands": [results[0].command for results in runs.values()],
        "rows": rows,
        "checks": checks,
        "notes": [
            f"wrk, {DURATION_S} s per run, {ROUNDS} alternating rounds of each of the {len(runs)} rows; the proxy, the"
            " upstream and wrk share this machine's cores."
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
