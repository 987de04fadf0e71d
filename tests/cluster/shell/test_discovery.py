"""Seeds to addresses, the send rule, and join backoff; resolution runs through an injected resolver function."""

from __future__ import annotations

from random import Random

import pytest
import trio

from cluster.shell.discovery import (
    backoff_delay,
    parse_seed,
    resolve_seeds,
    split_host_port,
    usable_peer_address,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5:7946", ("10.0.0.5", 7946)),
        ("[fdaa::3]:7946", ("fdaa::3", 7946)),
        ("[fdaa::3]", ("fdaa::3", None)),
        ("fdaa::3", ("fdaa::3", None)),
        ("node-a:8000", ("node-a", 8000)),
        (" my-app.internal ", ("my-app.internal", None)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int | None]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["", ":7946", "[fdaa::3", "[fdaa::3]7946", "host:port", "host:70000", "h:-1"])
def test_split_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text)


def test_a_seed_on_a_privileged_port_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="1024"):
        parse_seed("10.0.0.1:53")
    assert parse_seed("10.0.0.1:1024") == ("10.0.0.1", 1024)


@pytest.mark.parametrize(
    ("address", "usable"),
    [
        (("127.0.0.1", 7946), True),
        (("10.1.2.3", 65535), True),
        (("::1", 7946), True),
        (("fdaa:0:1::2", 7946), True),  # Fly's private network
        (("::ffff:10.0.0.1", 7946), True),
        (("0.0.0.0", 7946), False),
        (("::", 7946), False),
        (("255.255.255.255", 7946), False),
        (("240.0.0.1", 7946), False),
        (("224.0.0.251", 7946), False),
        (("ff02::1", 7946), False),
        (("fe80::1", 7946), False),
        (("example.com", 7946), False),
        (("127.0.0.1", 53), False),
        (("127.0.0.1", 1023), False),
        (("127.0.0.1", 0), False),
    ],
)
def test_usable_peer_address(address: tuple[str, int], usable: bool) -> None:
    assert usable_peer_address(address) is usable


async def test_resolve_seeds_expands_names_skips_ourselves_and_bad_answers() -> None:
    asked: list[str] = []

    async def dns(host: str) -> list[str]:
        asked.append(host)
        answers = {
            "my-app.internal": ["fdaa::1", "fdaa::2", "fdaa:0::3"],  # fdaa::1 is us
            "weird.test": ["not-an-ip", "224.0.0.1", "10.0.0.9"],
        }
        if host not in answers:
            raise OSError("NXDOMAIN")
        return answers[host]

    seeds = [parse_seed(s) for s in ("my-app.internal", "missing.test:8000", "10.0.0.7:9000", "weird.test", "fdaa::2")]
    addresses = await resolve_seeds(seeds, resolver=dns, default_port=7946, own=[("fdaa:0::1", 7946)], timeout_s=1)
    assert addresses == [("fdaa::2", 7946), ("fdaa::3", 7946), ("10.0.0.7", 9000), ("10.0.0.9", 7946)]
    assert sorted(asked) == ["missing.test", "my-app.internal", "weird.test"]  # literals never reach DNS


async def test_a_hanging_resolver_costs_the_attempt_its_timeout_and_only_its_own_seed() -> None:
    async def dns(host: str) -> list[str]:
        if host == "slow.test":
            await trio.sleep_forever()
        return ["10.0.0.2"]

    seeds = [parse_seed("slow.test:7000"), parse_seed("fast.test:7000")]
    started = trio.current_time()
    addresses = await resolve_seeds(seeds, resolver=dns, default_port=7946, own=[], timeout_s=0.2)
    assert addresses == [("10.0.0.2", 7000)]  # the answer that came in time is used; the slow one is skipped
    assert 0.2 <= trio.current_time() - started < 1


def test_backoff_doubles_up_to_the_max_with_equal_jitter() -> None:
    rng = Random(5)
    for attempt, base in [(0, 1.0), (1, 2.0), (3, 8.0), (5, 30.0), (500, 30.0)]:
        delays = [backoff_delay(attempt, initial_s=1.0, maximum_s=30.0, rng=rng) for _ in range(200)]
        assert base / 2 <= min(delays) and max(delays) <= base
        assert max(delays) - min(delays) > base / 4  # actually jittered
