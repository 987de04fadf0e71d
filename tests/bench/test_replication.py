"""bench.replication's pure helpers: window counting against the GCRA, credential spreading, replica placement.

No node runs here: the helpers only hash keys and count.
"""

from __future__ import annotations

from collections import Counter

from bench.job_api_target import PLACEHOLDER_CREDENTIAL
from bench.replication import (
    SPREAD_JOB,
    credential_owned_by,
    gcra_window_ratio,
    max_in_window,
    misplaced,
    owners_of_credentials,
    spread_credentials,
)
from cluster import Rendezvous

MEMBERS = ("node-a", "node-b", "node-c")


def test_a_pacer_exactly_at_its_rate_uses_its_whole_limit_and_no_more() -> None:
    # At 4/s with a burst of one, a closed 1 s window holds 5 arrivals: (5 - 1) / 4 = 1.00.
    paced = [i * 0.25 for i in range(20)]
    assert max_in_window(paced, 1.0) == 5
    assert gcra_window_ratio(max_in_window(paced, 1.0), 4.0, 1.0) == 1.0


def test_two_pacers_on_one_key_show_as_over_the_limit() -> None:
    twice = sorted([i * 0.25 for i in range(8)] + [0.1 + i * 0.25 for i in range(8)])
    assert max_in_window(twice, 1.0) == 9  # 0, 0.1, 0.25, ..., 1.0
    assert gcra_window_ratio(max_in_window(twice, 1.0), 4.0, 1.0) > 1.0


def test_window_counting_needs_no_order_and_handles_no_arrivals() -> None:
    assert max_in_window([2.0, 0.0, 1.0, 0.5], 1.0) == 3
    assert max_in_window([], 1.0) == 0


def test_spread_credentials_give_each_member_the_same_share_of_keys() -> None:
    credentials = spread_credentials(MEMBERS, 3)
    assert len(set(credentials)) == 9
    assert all(len(credential) == len(PLACEHOLDER_CREDENTIAL) for credential in credentials)
    owners = Counter(owner for _credential, owner in owners_of_credentials(SPREAD_JOB, credentials, MEMBERS, "bench"))
    assert owners == dict.fromkeys(MEMBERS, 3)


def test_credential_owned_by_names_a_key_of_that_owner() -> None:
    job = {"url": "http://127.0.0.1:9/pay", "method": "POST"}
    credential = credential_owned_by(job, "node-b", MEMBERS, "k")
    [(_, owner)] = owners_of_credentials(job, [credential], MEMBERS, "acme")
    assert owner == "node-b"


def test_misplaced_wants_exactly_the_owner_and_its_successors() -> None:
    ring = Rendezvous(MEMBERS)
    queue_keys = {"a": "q1", "b": "q2", "c": "q3"}
    owner_and_successor = {key: set(ring.ranked(queue, 2)) for key, queue in queue_keys.items()}
    holders = {**owner_and_successor, "b": set(ring.ranked("q2", 1)), "c": set(MEMBERS)}
    assert misplaced(["a", "b", "c", "missing"], holders, queue_keys, MEMBERS, 2) == ["b", "c", "missing"]
    assert misplaced(["a"], owner_and_successor, queue_keys, MEMBERS, 2) == []
