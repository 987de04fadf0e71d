"""Benchmark plumbing: serve an app or a command on loopback, drive h2load or wrk at it, summarise fairly.

The machine is shared and noisy (runs vary by about ±25%), so a number is only worth something next to a
baseline measured in the same run: `alternate` interleaves the targets (B C B C B C) so that slow spells hit
both, and `summarize` reports medians.

Apps run in their own process (`python -m bench.common serve module:factory`), as in production, so the load
generator and the server do not share a core's Trio loop.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib
import inspect
import json
import os
import re
import select
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import httpx
import hypercorn.config
import hypercorn.trio
import trio
from hypercorn.typing import ASGIFramework

from bench import hypercorn_guard
from edge.http.h2 import H2_CONCURRENT_STREAMS_MAX
from edge.http.server import LISTEN_BACKLOG, ASGIApp, serve_asgi
from edge.process import tune_garbage_collector

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
# A load generator gets this long beyond its own duration before it is called hung.
TOOL_GRACE_S = 30.0


@dataclass(frozen=True, slots=True)
class BenchTarget:
    """What an app factory ("module:factory") returns: the app, and the request the load generator sends it.

    The factory runs in the server process, so it may also set up whatever the app needs (files, keys, data).
    """

    app: ASGIApp
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    # "node": the node's own server (`serve_asgi`); "hypercorn": hypercorn's Trio worker as it comes, the fixed
    # yardstick the issues' ratios are measured against ("the trivial app on hypercorn"), whatever the node serves
    # its listeners with.
    server: Literal["node", "hypercorn"] = "node"


@dataclass(frozen=True, slots=True)
class ServedTarget:
    """A running server as the load generators see it."""

    base_url: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def url(self) -> str:
        return self.base_url + self.path


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One load generator run, reduced to the figures the tables show."""

    command: str
    requests_per_s: float
    succeeded: int
    failed: int
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float


def free_loopback_port() -> int:
    """A port that was free a moment ago, for commands that cannot report the port they bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_until_answers(url: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Return once `url` gives any HTTP response: listening is not the same as serving."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s} s") from None
            time.sleep(0.05)


@contextlib.contextmanager
def running_command(argv: Sequence[str], url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run any server command (already told its port) until the block ends; it must answer `url` first."""
    process = subprocess.Popen(list(argv), cwd=REPO_ROOT)
    try:
        wait_until_answers(url)
        yield process
    finally:
        _stop(process)


@contextlib.contextmanager
def served_app(factory_path: str) -> Iterator[ServedTarget]:
    """Serve the BenchTarget from `factory_path` with serve_asgi in a child process, on a free port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.common", "serve", factory_path],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        announcement = json.loads(_first_line(process, STARTUP_TIMEOUT_S))
        served = ServedTarget(
            base_url=f"http://{announcement['address']}",
            path=announcement["path"],
            headers=tuple((name, value) for name, value in announcement["headers"]),
            body=base64.b64decode(announcement["body"]),
        )
        wait_until_answers(served.url)
        yield served
    finally:
        _stop(process)


def run_h2load(
    target: ServedTarget, scratch: Path, *, duration_s: int, warm_up_s: int, clients: int, streams: int
) -> LoadResult:
    """POST the target's body over h2c (prior knowledge) for `duration_s` after a warm-up."""
    h2load = _tool("h2load")
    body_file = _write(scratch / "body", target.body)
    log_file = scratch / "h2load.log"
    log_file.unlink(missing_ok=True)  # h2load appends: a reused file would mix earlier runs into the percentiles
    argv = [h2load, "-D", str(duration_s), f"--warm-up-time={warm_up_s}", "-t", "1"]
    argv += ["-c", str(clients), "-m", str(streams), "-d", str(body_file), f"--log-file={log_file}"]
    for name, value in target.headers:
        argv += ["-H", f"{name}: {value}"]
    argv.append(target.url)
    output = _run_tool(argv, duration_s + warm_up_s)
    latencies_ms = [int(line.split("\t")[2]) / 1000 for line in log_file.read_text().splitlines() if line]
    return parse_h2load(output, latencies_ms, command=_display(argv, scratch))


def parse_h2load(output: str, latencies_ms: list[float], *, command: str) -> LoadResult:
    """Read h2load's summary; it prints no percentiles, so they come from its per-request log."""
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
    counts = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, "
        r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        output,
    )
    if rate is None or counts is None:
        raise ValueError(f"unrecognised h2load output:\n{output}")
    succeeded, failed, errored, timed_out = (int(value) for value in counts.groups())
    p50, p90, p99 = percentiles(latencies_ms, (50, 90, 99))
    return LoadResult(
        command=command,
        requests_per_s=float(rate.group(1)),
        succeeded=succeeded,
        failed=failed + errored + timed_out,
        latency_ms_p50=p50,
        latency_ms_p90=p90,
        latency_ms_p99=p99,
    )


def run_wrk(target: ServedTarget, scratch: Path, *, duration_s: int, connections: int) -> LoadResult:
    """POST the target's body over HTTP/1.1 keep-alive (h2load's --h1 miscounts hypercorn's responses)."""
    wrk = _tool("wrk")
    body_file = _write(scratch / "body", target.body)
    lines = ['wrk.method = "POST"', f'local body = io.open("{_lua_escape(body_file)}", "rb")']
    lines += ["wrk.body = body:read('*a')", "body:close()"]
    lines += [f'wrk.headers["{_lua_escape(name)}"] = "{_lua_escape(value)}"' for name, value in target.headers]
    script = _write(scratch / "post.lua", "\n".join(lines).encode())
    argv = [wrk, "-t", "1", "-c", str(connections), "-d", f"{duration_s}s", "--latency", "-s", str(script)]
    argv.append(target.url)
    return parse_wrk(_run_tool(argv, duration_s), command=_display(argv, scratch))


def parse_wrk(output: str, *, command: str) -> LoadResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or total is None:
        raise ValueError(f"unrecognised wrk output:\n{output}")
    latency_ms = {
        int(percent): _to_ms(float(value), unit)
        for percent, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    }
    non_success = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    rejected = int(non_success.group(1)) if non_success else 0
    broken = sum(int(count) for count in socket_errors.groups()) if socket_errors else 0
    return LoadResult(
        command=command,
        requests_per_s=float(rate.group(1)),
        succeeded=int(total.group(1)) - rejected,
        failed=rejected + broken,
        latency_ms_p50=latency_ms[50],
        latency_ms_p90=latency_ms[90],
        latency_ms_p99=latency_ms[99],
    )


def percentiles(values: Sequence[float], wanted: Sequence[int]) -> list[float]:
    """Nearest-rank percentiles; NaN for an empty sample so a broken run shows up in the table."""
    if not values:
        return [float("nan")] * len(wanted)
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, max(0, -(-percent * len(ordered) // 100) - 1))] for percent in wanted]


def alternate(measurements: Mapping[str, Callable[[], LoadResult]], rounds: int) -> dict[str, list[LoadResult]]:
    """Run each target once per round, in turn (B C B C ...), so noise spreads over all of them."""
    runs: dict[str, list[LoadResult]] = {name: [] for name in measurements}
    for _ in range(rounds):
        for name, measure in measurements.items():
            runs[name].append(measure())
    return runs


def summarize(runs: dict[str, list[LoadResult]], *, baseline: str, label: str) -> list[dict[str, str]]:
    """One table row per target: medians over its runs and the ratio of its median req/s to the baseline's."""
    baseline_rate = statistics.median(run.requests_per_s for run in runs[baseline])
    rows = []
    for name, results in runs.items():
        rate = statistics.median(run.requests_per_s for run in results)
        rows.append(
            {
                "target": name,
                "protocol": label,
                "req/s (median)": f"{rate:.0f}",
                "vs baseline": f"{rate / baseline_rate:.2f}x" if baseline_rate else "n/a",
                "p50 ms": _median_ms(run.latency_ms_p50 for run in results),
                "p90 ms": _median_ms(run.latency_ms_p90 for run in results),
                "p99 ms": _median_ms(run.latency_ms_p99 for run in results),
                "succeeded": str(sum(run.succeeded for run in results)),
                "failed": str(sum(run.failed for run in results)),
                "runs (req/s)": ", ".join(f"{run.requests_per_s:.0f}" for run in results),
            }
        )
    return rows


def _median_ms(values: Iterable[float]) -> str:
    return f"{statistics.median(values):.2f}"


def _to_ms(value: float, unit: str) -> float:
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (apt-get install nghttp2-client wrk)")
    return path


def _run_tool(argv: list[str], duration_s: int) -> str:
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + TOOL_GRACE_S, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {completed.returncode}:\n{completed.stdout}{completed.stderr}")
    return completed.stdout


def _display(argv: list[str], scratch: Path) -> str:
    """The command as one would type it: the tool by name, scratch files by file name."""
    return shlex.join([Path(argv[0]).name, *argv[1:]]).replace(f"{scratch}{os.sep}", "")


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _lua_escape(text: str | Path) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"')


def _first_line(process: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """The server's announcement, or a clear error if it died or stayed silent."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout_s)
    line = process.stdout.readline() if readable else b""
    if not line:
        raise RuntimeError(f"benchmark server did not start (exit code {process.poll()})")
    return line


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def serve_on_hypercorn(
    app: ASGIApp, *, bind: str, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve `app` on hypercorn's own Trio worker (HTTP/1.1 and h2c), set up as the job API was before it had a
    front end of its own: the connection guard installed (unguarded, h2load's hang-up at the end of a run can end
    the whole server, bench/hypercorn_guard.py), no access log, no request cap per connection, 128 HTTP/2 streams."""
    hypercorn_guard.install()
    config = hypercorn.config.Config()
    config.bind = [bind]
    config.accesslog = None
    config.keep_alive_max_requests = 2**31 - 1  # hypercorn's default (1000) ends h2load's connections mid-run
    config.h2_max_concurrent_streams = H2_CONCURRENT_STREAMS_MAX
    config.backlog = LISTEN_BACKLOG
    reporter = _BoundAddressReporter(task_status)
    await hypercorn.trio.serve(cast(ASGIFramework, app), config, task_status=reporter, mode="asgi")


@dataclass(frozen=True, slots=True)
class _BoundAddressReporter(trio.TaskStatus[list[str]]):
    """Hypercorn reports "http://host:port"; the harness wants "host:port"."""

    caller: trio.TaskStatus[list[str]]

    def started(self, value: list[str] | None = None) -> None:
        self.caller.started([address.split("://", 1)[1] for address in value or []])


async def _serve_target(factory_path: str) -> None:
    module_name, _, attribute = factory_path.partition(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    target = factory()
    if inspect.isawaitable(target):
        target = await target
    serve = serve_asgi if target.server == "node" else serve_on_hypercorn
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(functools.partial(serve, target.app, bind=f"{LOOPBACK}:0"))
        tune_garbage_collector()  # as `ezthrottle serve` does once its node is up: the baseline gets it too
        announcement = {
            "address": bound[0],
            "path": target.path,
            "headers": target.headers,
            "body": base64.b64encode(target.body).decode(),
        }
        print(json.dumps(announcement), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "serve":
        sys.exit("usage: python -m bench.common serve module:factory")
    trio.run(_serve_target, sys.argv[2])
