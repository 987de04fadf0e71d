"""Every core: a node of 2 worker processes against a node of 1, measured in the same run (edge/workers.py).

Goal from the issue: job intake and proxied req/s of 2 workers at least 1.8x those of 1 worker on this 2-core
machine. Every target is the real `ezthrottle serve --workers N` on loopback; the load generator is wrk (one
thread), which shares the machine's two cores with the node's workers.

- job intake: wrk POSTs jobs over HTTP/1.1 keep-alive connections, each request a new job (a fresh idempotent key
  from wrk's Lua `request` hook) with one of `CREDENTIALS` provider credentials, so the queue keys spread over
  the workers as real traffic's would; the jobs wait for a retry time far ahead, so nothing runs meanwhile. One
  worker alone has no cluster; two form the loopback cluster of their own, with `cluster.replicas` 2 (the default:
  each job durable on both workers before its 201) and with 1 (no copy), to show what the copy costs. A job that
  arrives at the worker that does not own its key is forwarded to its sibling (the internal API).
- proxied req/s: wrk GETs through a `[[protect]]` listener in front of a fast upstream (`bench.execution`'s), with
  a `max_concurrency` above the connection count, so the figure is the proxy's own work.
- fairness: the noisy-neighbour measurement (bench/noisy_neighbour.py: a light tenant's 10 GET/s, timed, alone and
  under a heavy tenant's paced wrk flood; same tier, sized per-key cap) on a 1-worker and a 2-worker node; the
  figure is the light tenant's p99 under the flood over its p99 alone.

`python -m bench.workers` runs it alone and prints its RESULTS.md section.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from bench import noisy_neighbour
from bench.common import (
    LOOPBACK,
    STARTUP_TIMEOUT_S,
    TOOL_GRACE_S,
    LoadResult,
    alternate,
    free_loopback_port,
    parse_wrk,
    percentiles,
    running_command,
    summarize,
    wait_until_answers,
)
from bench.job_api_target import BENCH_ACCOUNT_ID, BENCH_ACCOUNT_KEY, FAR_FUTURE_MS, INTAKE_BACKLOG_MAX
from bench.proxy_overhead import KEY_HEADER, OVERHEAD_KEY, proxy_config_toml

ROUNDS = 3  # per target: 1 2 1 2 1 2
DURATION_S = 5
CONNECTIONS = 10
CREDENTIALS = 64
GOAL_RATIO = 1.8
OVERHEAD_CONCURRENCY = 64
NODE_LOG_LEVEL = "WARNING"
# The fairness rows: noisy_neighbour's 8 x 50 ms upstream, fair scheduler with its sized cap, the paced flood.
FAIRNESS_UPSTREAM = noisy_neighbour.UPSTREAMS[0]
FAIRNESS_FLOOD_PAUSE_MS = noisy_neighbour.FLOOD_PAUSES_MS["flood, 50 ms pauses"]

ONE, TWO, TWO_NO_COPY = "1 worker", "2 workers", "2 workers, replicas = 1"
JOB_URL = "https://api.example.com/v1/charges"


@dataclass(frozen=True, slots=True)
class RunningNode:
    url: str  # the shared public port (the job API)
    proxy_url: str | None  # the [[protect]] listener, when the node has one


def free_port_run(count: int) -> int:
    """A loopback port P with P .. P + count - 1 free a moment ago: a node of N workers uses 2N + 1 ports."""
    for _attempt in range(100):
        base = free_loopback_port()
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind((LOOPBACK, port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no run of {count} free loopback ports")


@contextlib.contextmanager
def running_node(scratch: Path, name: str, workers: int, config: str) -> Iterator[str]:
    """`ezthrottle serve --workers N` with the config text `config` (LISTEN and DATA_DIR filled in here), until
    the block ends; yields the job API's URL once every worker says it is ready on its own port."""
    port = free_port_run(2 * workers + 1)
    config_file = scratch / f"{name}.toml"
    config_file.write_text(config.replace("LISTEN", f"{LOOPBACK}:{port}").replace("DATA_DIR", str(scratch / name)))
    argv = [sys.executable, "-m", "edge", "serve", "--config", str(config_file), "--workers", str(workers)]
    url = f"http://{LOOPBACK}:{port}"
    with running_command([*argv, "--log-level", NODE_LOG_LEVEL], url + "/readyz"):
        own = [url] if workers == 1 else [f"http://{LOOPBACK}:{port + 1 + index}" for index in range(workers)]
        for worker in own:
            _wait_ready(worker + "/readyz")
        yield url


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} was not ready within {STARTUP_TIMEOUT_S} s")
        time.sleep(0.05)


def intake_config(replicas: int) -> str:
    return f"""[server]
listen = "LISTEN"
data_dir = "DATA_DIR"
account_backlog_max = {INTAKE_BACKLOG_MAX}

[cluster]
replicas = {replicas}

[[accounts]]
id = "{BENCH_ACCOUNT_ID}"
key = "{BENCH_ACCOUNT_KEY}"
plan = "enterprise"
"""


def intake_script(scratch: Path, tag: str) -> Path:
    """wrk's Lua: every request a new job, keys `<tag>-<n>`, credentials in turn out of CREDENTIALS."""
    job = json.dumps(
        {
            "url": JOB_URL,
            "method": "POST",
            "headers": {"Authorization": "Bearer sk_test_CREDENTIAL"},
            "body": json.dumps({"amount": 4200, "currency": "usd"}),
            "metadata": {"order_id": "order-42"},
            "idempotent_key": "KEY",
            "retry_at": FAR_FUTURE_MS,
        }
    )
    prefix, rest = job.split("CREDENTIAL", 1)
    middle, suffix = rest.split("KEY", 1)
    lua = f"""wrk.method = "POST"
wrk.headers["authorization"] = "Bearer {BENCH_ACCOUNT_KEY}"
wrk.headers["content-type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  local body = {_lua(prefix)} .. (counter % {CREDENTIALS}) .. {_lua(middle)} .. "{tag}-" .. counter .. {_lua(suffix)}
  return wrk.format(nil, nil, nil, body)
end
"""
    path = scratch / f"intake-{tag}.lua"
    path.write_text(lua)
    return path


def _lua(text: str) -> str:
    return "[[" + text + "]]"


def run_wrk(url: str, script: Path, *, headers: Mapping[str, str] | None = None) -> LoadResult:
    """wrk, one thread and CONNECTIONS keep-alive connections, for DURATION_S with `script` (run from its folder)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    argv = ["-t", "1", "-c", str(CONNECTIONS), "-d", f"{DURATION_S}s", "--latency"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv += ["-s", script.name, url]
    completed = subprocess.run(
        [wrk, *argv], cwd=script.parent, capture_output=True, text=True, timeout=DURATION_S + TOOL_GRACE_S, check=True
    )
    return parse_wrk(completed.stdout, command=shlex.join(["wrk", *argv]))


def measure_intake(scratch: Path) -> tuple[dict[str, list[LoadResult]], list[str]]:
    nodes = {ONE: (1, 2), TWO: (2, 2), TWO_NO_COPY: (2, 1)}
    with contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(running_node(scratch, f"intake-{index}", workers, intake_config(replicas)))
            for index, (name, (workers, replicas)) in enumerate(nodes.items())
        }
        rounds = iter(range(10_000))

        def measure(url: str) -> LoadResult:
            return run_wrk(url + "/api/v1/jobs", intake_script(scratch, f"r{next(rounds)}"))

        runs = alternate({name: functools.partial(measure, url) for name, url in urls.items()}, ROUNDS)
    return runs, [runs[ONE][0].command.replace(" -s intake-r0.lua", " -s intake.lua")]


def proxy_config() -> str:
    return proxy_config_toml(
        Path("DATA_DIR"),
        "LISTEN",
        "PROXY_LISTEN",
        "UPSTREAM",
        {"max_concurrency": OVERHEAD_CONCURRENCY},
        [OVERHEAD_KEY],
    )


@contextlib.contextmanager
def running_proxy(scratch: Path, name: str, workers: int, upstream: str, text: str) -> Iterator[str]:
    """A node of `workers` with the [[protect]] listener of `text` in front of `upstream`; yields its URL."""
    proxy = f"{LOOPBACK}:{free_loopback_port()}"
    config = text.replace("PROXY_LISTEN", proxy).replace("UPSTREAM", upstream)
    with running_node(scratch, name, workers, config):
        wait_until_answers(f"http://{proxy}/")
        yield f"http://{proxy}"


def measure_proxy(scratch: Path, upstream: str) -> tuple[dict[str, list[LoadResult]], list[str]]:
    script = scratch / "get.lua"
    script.write_text('wrk.method = "GET"\n')
    with contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(running_proxy(scratch, f"proxy-{workers}", workers, upstream, proxy_config()))
            for name, workers in ((ONE, 1), (TWO, 2))
        }
        headers = {KEY_HEADER: OVERHEAD_KEY["key"]}
        runs = alternate(
            {name: functools.partial(run_wrk, url + "/", script, headers=headers) for name, url in urls.items()},
            ROUNDS,
        )
    command = runs[ONE][0].command.replace(OVERHEAD_KEY["key"], "<key>")
    return runs, [command]


async def light_p99_ratio(proxy: str, scratch: Path) -> tuple[float, float, LoadResult]:
    """The light tenant's p99 alone and under the paced flood (ms), and the flood's wrk result."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    window_s = noisy_neighbour.LIGHT_WINDOW_S
    async with httpx.AsyncClient(timeout=noisy_neighbour.LIGHT_TIMEOUT_S, limits=limits, trust_env=False) as client:
        await noisy_neighbour.time_light_tenant(client, proxy, noisy_neighbour.WARM_UP_S)
        alone, _refused = await noisy_neighbour.time_light_tenant(client, proxy, window_s)
        flood_s = noisy_neighbour.FLOOD_SETTLE_S + window_s + noisy_neighbour.FLOOD_TAIL_S
        flood = functools.partial(
            noisy_neighbour.flood_with_wrk,
            proxy + noisy_neighbour.WORK_PATH,
            scratch,
            FAIRNESS_FLOOD_PAUSE_MS,
            flood_s,
        )
        results: list[LoadResult] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_in_thread, flood, results)
            await trio.sleep(noisy_neighbour.FLOOD_SETTLE_S)
            flooded, _refused = await noisy_neighbour.time_light_tenant(client, proxy, window_s)
    (alone_p99,) = percentiles(alone, (99,))
    (flooded_p99,) = percentiles(flooded, (99,))
    return alone_p99, flooded_p99, results[0]


async def _in_thread(work: functools.partial[LoadResult], results: list[LoadResult]) -> None:
    results.append(await trio.to_thread.run_sync(work))


def measure_fairness(scratch: Path) -> list[dict[str, str]]:
    size = FAIRNESS_UPSTREAM
    port = free_loopback_port()
    upstream = f"http://{LOOPBACK}:{port}"
    argv = [sys.executable, "-m", "bench.noisy_neighbour", "upstream", str(port), str(size.slots), str(size.service_s)]
    settings = size.protect_settings(noisy_neighbour.MODES[0])
    keys = [noisy_neighbour.HEAVY_KEY, noisy_neighbour.LIGHT_KEY]
    text = proxy_config_toml(Path("DATA_DIR"), "LISTEN", "PROXY_LISTEN", "UPSTREAM", settings, keys)
    rows = []
    with running_command(argv, upstream + noisy_neighbour.LEDGER_PATH):
        for name, workers in ((ONE, 1), (TWO, 2)):
            with running_proxy(scratch, f"fair-{workers}", workers, upstream, text) as proxy:
                alone, flooded, flood = trio.run(light_p99_ratio, proxy, scratch)
            rows.append(
                {
                    "target": name,
                    "upstream": size.label,
                    "light p99 alone ms": f"{alone:.1f}",
                    "light p99 under flood ms": f"{flooded:.1f}",
                    "ratio": f"{flooded / alone:.2f}x",
                    "flood offered req/s": f"{flood.requests_per_s:.0f}",
                }
            )
    return rows


def run() -> dict[str, Any]:
    upstream = f"http://{LOOPBACK}:{free_loopback_port()}"
    upstream_argv = [sys.executable, "-m", "bench.execution", "upstream", upstream.rsplit(":", 1)[1]]
    checks: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch_dir:
        scratch = Path(scratch_dir)
        intake, intake_commands = measure_intake(scratch)
        with running_command(upstream_argv, upstream + "/"):
            proxied, proxy_commands = measure_proxy(scratch, upstream)
        fairness = measure_fairness(scratch)
    rows = summarize(intake, baseline=ONE, label=f"job intake, HTTP/1.1, {CONNECTIONS} connections")
    rows += summarize(proxied, baseline=ONE, label=f"proxied GET, HTTP/1.1, {CONNECTIONS} connections")
    for label, runs in (("job intake", intake), ("proxied req/s", proxied)):
        ratio = _median_rate(runs[TWO]) / _median_rate(runs[ONE])
        checks[f"goal, {label}: 2 workers >= {GOAL_RATIO:.1f}x 1 worker"] = (
            f"{'met' if ratio >= GOAL_RATIO else 'missed'} ({ratio:.2f}x)"
        )
    for row in fairness:
        checks[f"light tenant p99 under a paced flood / alone, {row['target']}"] = row["ratio"]
    return {
        "title": "Every core: 2 worker processes against 1",
        "about": __doc__.strip().splitlines()[0],
        "targets": {
            ONE: "ezthrottle serve --workers 1",
            TWO: "ezthrottle serve --workers 2 (cluster.replicas = 2, the default)",
            TWO_NO_COPY: "ezthrottle serve --workers 2, cluster.replicas = 1 (intake only)",
        },
        "commands": [
            "ezthrottle serve --config FILE --workers N",
            *intake_commands,
            *proxy_commands,
            "python -m bench.noisy_neighbour upstream PORT 8 0.05",
        ],
        "rows": rows,
        "checks": checks,
        "notes": [
            "Fairness rows (light tenant alone, then under wrk's flood with "
            f"{FAIRNESS_FLOOD_PAUSE_MS} ms pauses, each {noisy_neighbour.LIGHT_WINDOW_S} s): "
            + "; ".join(" ".join(f"{key} {value}" for key, value in row.items()) for row in fairness),
            "Protected listeners run on worker 0 alone (edge/workers.py says why), so the proxied and fairness "
            "figures of 2 workers are those of one proxy process sharing the machine with a second worker.",
            "Intake with 2 workers: about half the submissions reach the worker that does not own their key and are "
            "forwarded (the internal API, keep-alive HTTP/1.1), and with replicas = 2 every job is also copied to "
            "the other worker before its 201; wrk shares the two cores with both workers.",
        ],
    }


def _median_rate(results: list[LoadResult]) -> float:
    return statistics.median(result.requests_per_s for result in results)


def main() -> None:
    """`python -m bench.workers`: the measurement alone, printed as its RESULTS.md section."""
    from bench.__main__ import render_section  # imported here: bench.__main__ imports this module

    print(render_section(run()))


if __name__ == "__main__":
    main()
