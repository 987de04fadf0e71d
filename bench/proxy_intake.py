"""SDK intake: job submissions per second through the SDKs' envelope (POST /api/v1/proxy) next to POST /api/v1/jobs.

Both targets are the same node (`bench.job_api_target`: one account, the SQLite store, a fresh idempotent key per
request, every 201 checked durable afterwards), each in its own server process, driven by the intake benchmark's
load runs (`bench.intake.load_generators`: the same tools, connections and streams) in alternating rounds. The
direct target posts the intake benchmark's job; the proxy target posts that same job inside the envelope exactly
as the official Python SDK (ezthrottle 1.3.0) sends it: `EZThrottle.submit_job` is called once, with the HTTP call
captured instead of sent, so the body is the SDK's own bytes as `requests` encodes them (the envelope's `body`
string is then byte for byte the direct target's body). The ratio proxy / direct is the cost of the envelope:
parsing it (the job inside is one escaped string), then the job from that string (the one parse the direct path
does too), a usage report for `breach_status`, and wrapping the answer. The SDK is the test extra's `ezthrottle`,
which `make bench` installs.
"""

from __future__ import annotations

import functools
import json
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

import ezthrottle.client  # type: ignore[import-untyped]
import requests

from bench import intake, job_api_target
from bench.common import BenchTarget, LoadResult, ServedTarget, alternate, served_app, summarize

DIRECT_FACTORY = job_api_target.FACTORY
PROXY_FACTORY = "bench.proxy_intake:proxy_target"
GOAL_RATIO = 0.9  # from the issue: the SDKs' path keeps 90% of the direct job API's req/s
# The SDK's defaults: the hosted proxy and service. A node ignores the target's host (edge/http/envelope.py).
SDK_PROXY_URL = "https://tracktags.fly.dev"
SDK_TARGET_URL = "https://ezthrottle.fly.dev"
SDK_HEADERS = ("authorization", "content-type")  # what submit_job sets itself; requests adds only generic ones


class _Captured(Exception):
    """Stops `submit_job` at its HTTP call, carrying the request it was about to send."""

    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


def sdk_submission(job: dict[str, Any]) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """The headers (the SDK's own, lower-cased) and body of the request `EZThrottle.submit_job(**job)` sends."""

    def capture(url: str, **kwargs: Any) -> NoReturn:
        kwargs.pop("timeout", None)
        raise _Captured(requests.Request("POST", url, **kwargs).prepare())

    client = ezthrottle.client.EZThrottle(
        job_api_target.BENCH_ACCOUNT_KEY, tracktags_url=SDK_PROXY_URL, ezthrottle_url=SDK_TARGET_URL
    )
    with mock.patch.object(ezthrottle.client.requests, "post", capture):
        try:
            client.submit_job(**job)
        except _Captured as captured:
            request = captured.request
        else:
            raise AssertionError("submit_job sent nothing")
    assert request.url == f"{SDK_PROXY_URL}/api/v1/proxy", request.url
    headers = tuple((name.lower(), value) for name, value in request.headers.items() if name.lower() in SDK_HEADERS)
    body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
    return headers, body


def _job() -> dict[str, Any]:
    """The direct target's job (the intake benchmark's, with the placeholder key and the far-future retry_at)."""
    key, retry_at = job_api_target.PLACEHOLDER_KEY, job_api_target.FAR_FUTURE_MS
    return {**intake.SAMPLE_JOB, "idempotent_key": key, "retry_at": retry_at}


def proxy_target() -> BenchTarget:
    headers, body = sdk_submission(_job())
    return BenchTarget(app=job_api_target.UniqueJobIntake(), path=job_api_target.PROXY_PATH, headers=headers, body=body)


def run() -> dict[str, Any]:
    """Measure both targets with every intake load run, alternating; check the goal and what each node stored."""
    factories = {"direct": DIRECT_FACTORY, "proxy": PROXY_FACTORY}
    rows: list[dict[str, str]] = []
    commands: list[str] = []
    checks: dict[str, Any] = {}
    answered = dict.fromkeys(factories, 0)
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-proxy-intake-")))
        targets = {name: stack.enter_context(served_app(factory)) for name, factory in factories.items()}
        checks.update(_same_job(targets))
        for label, measure in intake.load_generators().items():
            runs = alternate(
                {name: functools.partial(measure, target, scratch) for name, target in targets.items()},
                intake.ROUNDS,
            )
            rows += summarize(runs, baseline="direct", label=label)
            commands += [results[0].command for results in runs.values()]
            ratio = _median_rate(runs["proxy"]) / _median_rate(runs["direct"])
            verdict = "met" if ratio >= GOAL_RATIO else "missed"
            protocol = label.partition(",")[0]
            checks[f"goal, proxy >= {GOAL_RATIO:.2f}x direct over {protocol}"] = f"{verdict} ({ratio:.2f}x)"
            for name, results in runs.items():
                answered[name] += sum(result.succeeded for result in results)
        for name, target in targets.items():
            report = job_api_target.verify_durability(target)
            checks.update({f"{name}: {what}": value for what, value in report.items()})
            created = int(report["201s sent (counted by the served app)"])
            # The load tools do not count their warm-up requests; the served app does, so it counts at least as many.
            verdict = "yes" if created >= answered[name] else f"NO: {answered[name] - created} answers created nothing"
            checks[f"{name}: every 2xx the load tools counted created a job"] = verdict
    return {
        "title": "SDK intake (POST /api/v1/proxy against POST /api/v1/jobs)",
        "about": __doc__.strip().splitlines()[0],
        "targets": factories,
        "commands": commands,
        "rows": rows,
        "checks": checks,
        "notes": [
            "The proxy target's body is the Python SDK's envelope around the direct target's job (both keyed "
            f"`{job_api_target.PLACEHOLDER_KEY}`, which the served app replaces with a counter); for the proxy, "
            "a 201 is the inner call's, inside the envelope's 200 (`forwarded_response.status_code`).",
        ],
    }


def _same_job(targets: dict[str, ServedTarget]) -> dict[str, Any]:
    """Check that the envelope carries exactly the direct target's job."""
    direct, proxy = targets["direct"], targets["proxy"]
    inner = json.loads(proxy.body)["body"]
    same = "byte for byte the direct body" if inner.encode() == direct.body else "FAILED: not the direct body"
    return {
        "request bodies (direct, proxy envelope)": f"{len(direct.body)} and {len(proxy.body)} bytes",
        "the envelope's inner body": same,
    }


def _median_rate(results: list[LoadResult]) -> float:
    return statistics.median(result.requests_per_s for result in results)


def main() -> None:
    """`python -m bench.proxy_intake`: both targets, printed as their RESULTS.md section."""
    from bench.__main__ import render_section

    print(render_section(run()))


if __name__ == "__main__":
    main()
