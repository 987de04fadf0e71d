"""bench.common: tool output parsing, fair alternation, and serving an app factory in a child process.

No h2load or wrk needed: the parsers read output captured from the real tools (nghttp2 1.52, wrk 4.1).
"""

from __future__ import annotations

import functools
import sys

import httpx
import pytest

from bench.common import (
    LoadResult,
    alternate,
    free_loopback_port,
    parse_h2load,
    parse_wrk,
    percentiles,
    running_command,
    served_app,
    summarize,
)

H2LOAD_OUTPUT = """\
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 1.00s, 1116.00 req/s, 129.05KB/s
requests: 1116 total, 1120 started, 1116 done, 1109 succeeded, 4 failed, 2 errored, 1 timeout
status codes: 1118 2xx, 0 3xx, 0 4xx, 0 5xx
time for request:     1.86ms      8.09ms      3.56ms      1.05ms    74.10%
"""

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:34733/api/v1/jobs
  1 threads and 5 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.53ms    1.66ms  14.82ms   83.98%
    Req/Sec     1.11k   163.11     1.42k    70.00%
  Latency Distribution
     50%  950.00us
     75%    5.61ms
     90%    6.41ms
     99%    1.02s
  1111 requests in 1.01s, 231.21KB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 11
Requests/sec:   1104.93
Transfer/sec:    229.94KB
"""


def test_h2load_summary_and_percentiles_from_its_log() -> None:
    result = parse_h2load(H2LOAD_OUTPUT, [float(ms) for ms in range(100, 0, -1)], command="h2load ...")
    assert result.requests_per_s == 1116.0
    assert (result.succeeded, result.failed) == (1109, 7)  # failed + errored + timeout
    assert (result.latency_ms_p50, result.latency_ms_p90, result.latency_ms_p99) == (50.0, 90.0, 99.0)


def test_wrk_summary_with_errors_and_mixed_units() -> None:
    result = parse_wrk(WRK_OUTPUT, command="wrk ...")
    assert result.requests_per_s == 1104.93
    assert (result.succeeded, result.failed) == (1100, 16)  # 11 non-2xx/3xx + 5 socket errors
    assert result.latency_ms_p50 == pytest.approx(0.95)
    assert result.latency_ms_p90 == pytest.approx(6.41)
    assert result.latency_ms_p99 == pytest.approx(1020.0)


def test_unrecognised_output_is_an_error_not_a_zero() -> None:
    refused = "connect: Connection refused\n"
    with pytest.raises(ValueError, match="unrecognised h2load"):
        parse_h2load(refused, [], command="")
    with pytest.raises(ValueError, match="unrecognised wrk"):
        parse_wrk(refused, command="")


def test_percentiles_nearest_rank() -> None:
    assert percentiles([3.0, 1.0, 2.0], (50, 99)) == [2.0, 3.0]
    assert percentiles([7.0], (1, 100)) == [7.0, 7.0]


def fake_result(rate: float) -> LoadResult:
    return LoadResult(
        "cmd", rate, succeeded=10, failed=1, latency_ms_p50=rate / 100, latency_ms_p90=1, latency_ms_p99=2
    )


def test_alternation_interleaves_targets_and_summary_uses_medians() -> None:
    calls: list[str] = []
    rates = {"baseline": iter([100.0, 300.0, 200.0]), "candidate": iter([50.0, 10.0, 100.0])}

    def measure(name: str) -> LoadResult:
        calls.append(name)
        return fake_result(next(rates[name]))

    runs = alternate({name: functools.partial(measure, name) for name in rates}, rounds=3)
    assert calls == ["baseline", "candidate"] * 3
    baseline, candidate = summarize(runs, baseline="baseline", label="h2c")
    assert (baseline["req/s (median)"], baseline["vs baseline"], baseline["p50 ms"]) == (
        "200",
        "1.00x",
        "2.00",
    )
    assert (candidate["req/s (median)"], candidate["vs baseline"]) == ("50", "0.25x")
    assert (candidate["succeeded"], candidate["failed"], candidate["runs (req/s)"]) == (
        "30",
        "3",
        "50, 10, 100",
    )


def test_served_app_runs_a_factory_in_a_child_process_and_stops_it() -> None:
    with served_app("bench.intake:baseline_target") as target:
        assert target.url.startswith("http://127.0.0.1:")
        response = httpx.post(target.url, content=target.body, headers=dict(target.headers))
        assert response.status_code == 201
        assert response.json()["status"] == "queued"
    with pytest.raises(httpx.ConnectError):
        httpx.post(target.url, content=target.body)


def test_running_command_waits_for_any_server_and_stops_it() -> None:
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}/"
    with running_command(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], url
    ) as process:
        assert httpx.get(url).status_code == 200
    assert process.returncode is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
