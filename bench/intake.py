"""Job intake: how many job submissions per second one node accepts, next to a trivial app on the same stack.

The baseline is the cheapest possible intake endpoint served by hypercorn's own Trio worker (`serve_on_hypercorn`),
a yardstick that stays put whatever the node serves with, so the ratio says what the node's intake costs next to
the least an ASGI endpoint costs on a stock Python server. The candidate (the real job API, on the node's own
server) is an import path "module:factory" returning a `bench.common.BenchTarget`; it is measured in the same run,
alternating with the baseline. `python -m bench.intake` measures the node's job API (`bench.job_api_target`) and
checks afterwards that every 201 it sent is durable.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import (
    BenchTarget,
    LoadResult,
    ServedTarget,
    alternate,
    run_h2load,
    run_wrk,
    served_app,
    summarize,
)
from edge.http.server import ASGIReceive, ASGIScope, ASGISend

BASELINE_FACTORY = "bench.intake:baseline_target"
ROUNDS = 3  # per target and protocol: B C B C B C
DURATION_S = 5
WARM_UP_S = 1
CLIENTS = 10
STREAMS_PER_CLIENT = 10
GOAL_H2C_RATIO = 0.6  # from the issue: a candidate keeps 60% of the trivial app's req/s over h2c

# A typical submission: a target call with a credential header, a webhook and metadata (~400 bytes).
SAMPLE_JOB = {
    "url": "https://api.example.com/v1/charges",
    "method": "POST",
    "headers": {"Authorization": "Bearer sk_test_0123456789abcdef", "Content-Type": "application/json"},
    "body": json.dumps({"amount": 4200, "currency": "usd", "customer": "cus_0123456789"}),
    "metadata": {"order_id": "order-42", "attempt": 1},
    "webhooks": [{"url": "https://hooks.example.com/ezthrottle", "has_quorum_vote": True}],
    "retry_policy": {
        "max_retries": 3,
        "max_reroutes": 2,
        "retry_codes": [429, 503],
        "reroute_codes": [500, 502],
    },
    "idempotent_key": "order-42",
}
ACCEPTED = json.dumps({"job_id": "job_1763674210055_853341", "status": "queued", "idempotent_key": "order-42"})


async def baseline_app(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
    """Reads the whole body and answers 201 with a fixed job id: the floor under any real intake. It answers the
    lifespan protocol too, as hypercorn's own worker (the yardstick it runs on) needs of an app."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ACCEPTED.encode()})


def baseline_target() -> BenchTarget:
    return BenchTarget(
        app=baseline_app,
        path="/api/v1/jobs",
        headers=(("content-type", "application/json"),),
        body=json.dumps(SAMPLE_JOB).encode(),
        server="hypercorn",
    )


def node_floor_target() -> BenchTarget:
    """The same trivial app on the node's own front end: the least any answer of the node's can cost."""
    return dataclasses.replace(baseline_target(), server="node")


NODE_FLOOR_FACTORY = "bench.intake:node_floor_target"


def load_generators() -> dict[str, Callable[[ServedTarget, Path], LoadResult]]:
    """The intake tables' load runs by row label, h2c (h2load) first, then HTTP/1.1 (wrk); each takes the served
    target and a scratch directory. Also what `bench.proxy_intake` drives."""
    return {
        f"h2c, {CLIENTS} connections x {STREAMS_PER_CLIENT} streams": functools.partial(
            run_h2load,
            duration_s=DURATION_S,
            warm_up_s=WARM_UP_S,
            clients=CLIENTS,
            streams=STREAMS_PER_CLIENT,
        ),
        f"HTTP/1.1, {CLIENTS} keep-alive connections": functools.partial(
            run_wrk, duration_s=DURATION_S, connections=CLIENTS
        ),
    }


def run(
    candidate_app_factory: str | None = None,
    verify: Callable[[ServedTarget], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Measure POST /api/v1/jobs over h2c (h2load) and HTTP/1.1 (wrk), candidate against baseline.

    With a candidate, "checks" says whether it met `GOAL_H2C_RATIO`, plus what `verify` found: `verify`
    inspects the still-running candidate after the last round (say, that every job it acknowledged is durable).
    """
    factories = {"baseline": BASELINE_FACTORY}
    if candidate_app_factory is not None:
        factories["candidate"] = candidate_app_factory
    protocols = load_generators()
    h2c_label = next(iter(protocols))
    rows: list[dict[str, str]] = []
    commands: list[str] = []
    checks: dict[str, Any] = {}
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-intake-")))
        targets = {name: stack.enter_context(served_app(factory)) for name, factory in factories.items()}
        for label, measure in protocols.items():
            runs = alternate(
                {name: functools.partial(measure, target, scratch) for name, target in targets.items()},
                ROUNDS,
            )
            rows += summarize(runs, baseline="baseline", label=label)
            commands += [results[0].command for results in runs.values()]
            if label == h2c_label and "candidate" in runs:
                ratio = _median_rate(runs["candidate"]) / _median_rate(runs["baseline"])
                verdict = "met" if ratio >= GOAL_H2C_RATIO else "missed"
                checks[f"goal, candidate >= {GOAL_H2C_RATIO:.2f}x baseline over h2c"] = f"{verdict} ({ratio:.2f}x)"
        if verify is not None and "candidate" in targets:
            checks.update(verify(targets["candidate"]))
    return {
        "title": "Job intake (POST /api/v1/jobs)",
        "about": __doc__.strip().splitlines()[0],
        "targets": factories,
        "commands": commands,
        "rows": rows,
        "checks": checks,
    }


def _median_rate(results: list[LoadResult]) -> float:
    return statistics.median(result.requests_per_s for result in results)


def main() -> None:
    """`python -m bench.intake`: the node's job API against the baseline, printed as its RESULTS.md section."""
    # Imported here, not at the top: both modules import this one.
    from bench import job_api_target
    from bench.__main__ import render_section

    print(render_section(run(job_api_target.FACTORY, verify=job_api_target.verify_durability)))


if __name__ == "__main__":
    main()
