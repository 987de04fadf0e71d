"""SimulatedHttp: the node's real Executor calls in-process upstreams by host:port, on virtual time, no sockets."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import trio

from edge.engine.shell.executor import AttemptResult, Executor, Timeouts
from edge.outbound.client import OutboundHttp
from simulations.determinism import Simulation, run_simulation
from simulations.http import Latency, SimulatedHttp, authority_of
from simulations.runtime import SIMULATED_EPOCH_S, simulated_runtime

TIMEOUTS = Timeouts(connect_s=1.0, read_s=1.0, total_s=2.0)
LATENCY = Latency(min_s=0.010, max_s=0.020)


class LimitedUpstream:
    """An upstream that allows `limit` requests per virtual second and answers 429 with Retry-After beyond it."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.seen_by_second: dict[int, int] = {}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        second = int(trio.current_time())
        self.seen_by_second[second] = self.seen_by_second.get(second, 0) + 1
        allowed = self.seen_by_second[second] <= self.limit
        body = json.dumps({"upstream": self.name, "path": scope["path"], "echo": message["body"].decode()}).encode()
        headers = [(b"content-type", b"application/json")]
        if not allowed:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": 200 if allowed else 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def call(executor: Executor, url: str, body: str = "") -> AttemptResult:
    return await executor.execute(method="POST", url=url, headers={}, body=body, timeouts=TIMEOUTS)


def build(simulation: Simulation) -> tuple[SimulatedHttp, Executor, OutboundHttp]:
    http = SimulatedHttp(rng=simulation.rng_for("http"), trace=simulation.trace, latency=LATENCY)
    outbound = OutboundHttp(http)
    return http, Executor(outbound), outbound


def test_requests_reach_the_app_mounted_at_their_host_and_port_after_two_legs_of_latency() -> None:
    async def main(simulation: Simulation) -> None:
        http, executor, outbound = build(simulation)
        async with outbound:
            http.mount("api.upstream.test:443", LimitedUpstream("a", limit=10))
            http.mount("api.upstream.test:8443", LimitedUpstream("b", limit=10), latency=Latency(min_s=0.5, max_s=0.5))
            first = await call(executor, "https://api.upstream.test/v1/send?x=1", body="hi")
            second = await call(executor, "https://api.upstream.test:8443/v1/other")
        assert first.status_code == 200
        assert json.loads(first.body) == {"upstream": "a", "path": "/v1/send", "echo": "hi"}
        assert 2 * LATENCY.min_s <= first.duration_s <= 2 * LATENCY.max_s
        assert json.loads(second.body)["upstream"] == "b"
        assert second.duration_s == pytest.approx(1.0)  # its own latency, both legs

    run_simulation(main, seed=1)


def test_the_upstream_sees_virtual_time_and_answers_429_with_retry_after() -> None:
    async def main(simulation: Simulation) -> list[int | None]:
        http, executor, outbound = build(simulation)
        async with outbound:
            http.mount("limited.test:80", LimitedUpstream("limited", limit=3))
            statuses = []
            for _ in range(5):
                result = await call(executor, "http://limited.test/")
                statuses.append(result.status_code)
            assert ("retry-after", "1") in result.headers
            await trio.sleep(1.0)
            statuses.append((await call(executor, "http://limited.test/")).status_code)
        return statuses

    assert run_simulation(main, seed=2).value == [200, 200, 200, 429, 429, 200]


def test_an_unmounted_authority_is_refused_like_a_closed_port() -> None:
    async def main(simulation: Simulation) -> tuple[AttemptResult, AttemptResult]:
        http, executor, outbound = build(simulation)
        async with outbound:
            http.mount("flaky.test:80", LimitedUpstream("flaky", limit=10))
            assert (await call(executor, "http://flaky.test/")).status_code == 200
            http.unmount("flaky.test:80")  # a region outage
            gone = await call(executor, "http://flaky.test/")
            never = await call(executor, "http://other.test:8080/")
        return gone, never

    gone, never = run_simulation(main, seed=3).value
    assert gone.status_code is None and gone.error is not None and "ConnectError" in gone.error
    assert never.error is not None and "other.test:8080" in never.error


def test_same_seed_same_trace_and_a_different_seed_draws_other_latencies() -> None:
    async def main(simulation: Simulation) -> float:
        http, executor, outbound = build(simulation)
        async with outbound:
            http.mount("api.test:80", LimitedUpstream("api", limit=100))
            async with trio.open_nursery() as nursery:
                for index in range(20):
                    nursery.start_soon(call, executor, "http://api.test/", str(index))
        return trio.current_time()

    runs = [run_simulation(main, seed=seed) for seed in (4, 4, 5)]
    assert runs[0].trace.hexdigest() == runs[1].trace.hexdigest()
    assert runs[0].value == runs[1].value
    assert runs[0].trace.hexdigest() != runs[2].trace.hexdigest()
    assert sum(" http POST http://api.test/ -> 200 " in line for line in runs[0].trace.tail()) == 20


def test_authorities_and_the_simulated_world() -> None:
    assert authority_of(httpx.URL("https://x.test/")) == "x.test:443"
    assert authority_of(httpx.URL("http://[::1]:8080/")) == "[::1]:8080"

    async def main(simulation: Simulation) -> tuple[float, list[str]]:
        runtime = simulated_runtime(simulation, "n", names={"seed.test": ["127.0.1.1", "127.0.1.2"]})
        await trio.sleep(5)
        with pytest.raises(OSError):
            await runtime.resolver("unknown.test")
        return runtime.wall_clock(), await runtime.resolver("seed.test") + await runtime.resolver("127.0.1.9")

    wall, addresses = run_simulation(main, seed=6).value
    assert wall == SIMULATED_EPOCH_S + 5
    assert addresses == ["127.0.1.1", "127.0.1.2", "127.0.1.9"]


def test_a_delay_spike_holds_up_each_leg_of_the_paths_it_applies_to() -> None:
    spike_s = 0.4

    async def main(simulation: Simulation) -> tuple[float, float]:
        http = SimulatedHttp(
            rng=simulation.rng_for("http"),
            trace=simulation.trace,
            latency=LATENCY,
            spikes=lambda source, destination: spike_s if source == "10.0.0.1" else 0.0,
        )
        http.mount("api.upstream.test:80", LimitedUpstream("a", limit=1000))
        elapsed: dict[str, list[float]] = {"10.0.0.1": [], "10.0.0.2": []}
        for source, times in elapsed.items():
            async with httpx.AsyncClient(transport=http.for_source(source)) as client:
                for _ in range(20):
                    started = trio.current_time()
                    assert (await client.post("http://api.upstream.test/")).status_code == 200
                    times.append(trio.current_time() - started)
        return max(elapsed["10.0.0.2"]), max(elapsed["10.0.0.1"])

    calm_max_s, spiked_max_s = run_simulation(main, seed=3).value
    assert calm_max_s <= 2 * LATENCY.max_s + 1e-9  # the other source's path is untouched
    assert 2 * LATENCY.max_s < spiked_max_s <= 2 * (LATENCY.max_s + spike_s) + 1e-9


def test_a_caller_that_gives_up_hangs_up_and_its_server_hears_the_disconnect_one_leg_later() -> None:
    async def main(simulation: Simulation) -> tuple[list[tuple[str, float]], float]:
        http = SimulatedHttp(rng=simulation.rng_for("http"), trace=simulation.trace, latency=LATENCY)
        heard: list[tuple[str, float]] = []

        async def watching_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            await receive()  # the body
            heard.append(("sent", scope["extensions"]["simulated"]["sent_at"]))
            with trio.move_on_after(5):
                message = await receive()  # waits until the caller has gone, as hypercorn's does
                heard.append((message["type"], trio.current_time()))
                return  # no one is left to answer: ending without a response is fine then
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        async with trio.open_nursery() as server:
            http.mount("node:80", watching_app, nursery=server)
            async with httpx.AsyncClient(transport=http.for_source("owner")) as client:
                with trio.move_on_after(1):
                    await client.get("http://node/")
                gave_up = trio.current_time()
            await trio.sleep(1)
            server.cancel_scope.cancel()
        return heard, gave_up

    heard, gave_up = run_simulation(main, seed=3).value
    (sent, sent_at), (disconnect, heard_at) = heard
    assert (sent, sent_at) == ("sent", 0.0)  # stamped when it left the caller, before its first leg
    assert disconnect == "http.disconnect"
    assert gave_up + LATENCY.min_s <= heard_at <= gave_up + LATENCY.max_s
