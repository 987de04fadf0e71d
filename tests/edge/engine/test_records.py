"""Durable records and the job spec they carry (edge/engine/records.py, edge/engine/spec.py): copies, bounded
attempts, and wire round trips, including records written by older and newer versions."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

from edge.engine.records import ATTEMPTS_FIRST_KEPT, ATTEMPTS_LAST_KEPT, Attempt, Delivery, JobRecord
from edge.engine.spec import JobSpec, Trigger, credential_fingerprint, validate_job

WALL0 = 1_700_000_000_000
KEPT = ATTEMPTS_FIRST_KEPT + ATTEMPTS_LAST_KEPT

FULL_JOB: dict[str, Any] = {
    "url": "https://API.example.com:443/v1/charges?x=1",
    "method": "post",
    "headers": {"Authorization": "Bearer sk_live_1", "X-Trace": "t-1"},
    "body": '{"amount": 1}',
    "metadata": {"order": 42, "nested": {"a": [1, 2]}},
    "webhooks": [
        {"url": "https://hooks.example.com/a", "regions": ["iad", "lax"]},
        {"url": "https://hooks.example.com/b", "has_quorum_vote": False},
        {"url": "https://hooks.example.com/c", "regions": ["ord"]},
    ],
    "webhook_quorum": 2,
    "regions": ["iad", "ord"],
    "region_policy": "strict",
    "execution_mode": "fanout",
    "retry_policy": {"max_retries": 5, "max_reroutes": 1, "retry_codes": [503, 429, 500], "reroute_codes": [502]},
    "idempotent_key": "order-42",
    "send_idempotency_key": True,
    "retry_at": WALL0 + 60_000,
    "deadline_ms": 3_600_000,
    "on_failure_timeout_ms": 5000,
    "hedge_after_ms": 250,
    "tier": "pro",
    "on_success": {"url": "https://api.example.com/v1/notify", "method": "POST", "body": "ok"},
    "on_failure": {
        "url": "https://api.example.com/v1/alert",
        "headers": {"X-Api-Key": "k"},
        "on_success": {"url": "https://api.example.com/v1/deeper"},
    },
    "fallback_job": {
        "url": "https://backup.example.com/v1/charges",
        "trigger": {"type": "on_error", "codes": [502, 500]},
        "fallback_job": {"url": "https://third.example.com/", "trigger": {"type": "on_timeout", "timeout_ms": 2000}},
    },
}
DERIVED = ("parsed_url", "origin", "credential_fingerprint")


def full_spec() -> JobSpec:
    return validate_job(copy.deepcopy(FULL_JOB))


def make_record(spec: JobSpec | None = None, **changes: Any) -> JobRecord:
    return JobRecord(
        job_id="job-1",
        account_id="acme",
        idempotent_key="order-42",
        queue_key="acme|https://api.example.com|-",
        spec=spec or validate_job({"url": "https://api.example.com/v1/x"}),
        created_at_ms=WALL0,
        deadline_at_ms=WALL0 + 86_400_000,
        **changes,
    )


def attempt(i: int) -> Attempt:
    return Attempt(at_ms=WALL0 + i, duration_ms=1.5, status_code=429, delay_s=1.0, delay_reason="retry-after")


def with_attempts(record: JobRecord, count: int) -> JobRecord:
    for i in range(count):
        record = record.with_attempt(attempt(i))
    return record


# -- bounded attempts ---------------------------------------------------------------------------------------


def test_the_bound_is_three_first_and_ten_last():
    assert (ATTEMPTS_FIRST_KEPT, ATTEMPTS_LAST_KEPT) == (3, 10)


@pytest.mark.parametrize(
    ("count", "kept"),
    [
        (0, []),
        (1, [0]),
        (3, [0, 1, 2]),
        (KEPT, list(range(KEPT))),
        (KEPT + 1, [0, 1, 2, *range(4, KEPT + 1)]),
        (100, [0, 1, 2, *range(90, 100)]),
        (1000, [0, 1, 2, *range(990, 1000)]),
    ],
)
def test_with_attempt_keeps_the_first_and_the_last(count: int, kept: list[int]):
    record = with_attempts(make_record(), count)
    assert [a.at_ms - WALL0 for a in record.attempts] == kept
    assert record.attempts_total == count
    assert record.attempts_dropped == count - len(kept) == max(0, count - KEPT)


def test_with_attempt_applies_changes_to_a_copy():
    record = with_attempts(make_record(), KEPT)
    after = record.with_attempt(attempt(99), status="running", retries_used=4)
    assert (after.status, after.retries_used, after.attempts_total) == ("running", 4, KEPT + 1)
    assert len(record.attempts) == KEPT and record.attempts_total == KEPT and record.attempts[3].at_ms == WALL0 + 3
    assert record.status == "queued" and record.retries_used == 0


def test_bounded_attempts_survive_the_wire():
    record = with_attempts(make_record(), 1000)
    wire = json.loads(json.dumps(record.to_wire()))
    back = JobRecord.from_wire(wire)
    assert back == record
    assert back.attempts_total == 1000 and back.attempts_dropped == 1000 - KEPT
    assert back.with_attempt(attempt(1000)).attempts_total == 1001


@pytest.mark.parametrize("count", [0, 1, 5, 40])
def test_a_record_without_attempts_total_counts_its_listed_attempts(count: int):
    wire = make_record().to_wire()
    wire["attempts"] = [attempt(i).to_wire() for i in range(count)]  # older versions listed every attempt
    del wire["attempts_total"]
    back = JobRecord.from_wire(wire)
    assert back.attempts_total == len(back.attempts) == count
    assert back.attempts_dropped == 0


# -- wire round trips ---------------------------------------------------------------------------------------


def test_a_full_record_round_trips():
    record = with_attempts(
        make_record(
            full_spec(),
            status="failed",
            updated_at_ms=WALL0 + 9,
            next_attempt_at_ms=None,
            retries_used=3,
            response={"status_code": 503, "headers": {"retry-after": "5"}, "body": "busy", "body_truncated": True},
            error="deadline reached after status 503",
            finished_at_ms=WALL0 + 9,
            deliveries=[
                Delivery(url="https://hooks.example.com/a", state="delivered", tries=1, last_status=200),
                Delivery(
                    url="https://hooks.example.com/b",
                    has_quorum_vote=False,
                    tries=2,
                    next_at_ms=WALL0 + 360_000,
                    last_error="timeout",
                ),
            ],
            webhook_outcome="pending",
        ),
        20,
    )
    wire = record.to_wire()
    assert json.loads(json.dumps(wire)) == wire  # plain JSON values only
    back = JobRecord.from_wire(wire)
    assert back == record and back.to_wire() == wire
    assert back.spec.origin == record.spec.origin == "https://api.example.com"


def test_a_record_from_a_newer_version_loads():
    wire = with_attempts(make_record(deliveries=[Delivery(url="https://hooks.example.com/a")]), 2).to_wire()
    wire["region"] = "iad"
    wire["attempts"][0]["hedged_after_ms"] = 120
    wire["deliveries"][0]["signature_version"] = 2
    back = JobRecord.from_wire(wire)
    assert back.attempts_total == 2 and back.attempts[0] == attempt(0)
    assert back.deliveries == [Delivery(url="https://hooks.example.com/a")]


def test_a_minimal_record_loads_with_defaults():
    wire = {
        "job_id": "j",
        "account_id": "a",
        "idempotent_key": "k",
        "queue_key": "a|https://api.example.com|-",
        "spec": {"url": "https://api.example.com/"},
        "created_at_ms": WALL0,
        "deadline_at_ms": WALL0 + 1,
    }
    back = JobRecord.from_wire(wire)
    assert (back.status, back.attempts, back.attempts_total, back.deliveries) == ("queued", [], 0, [])
    assert back.webhook_outcome == "none" and back.spec.method == "GET"


# -- evolve -------------------------------------------------------------------------------------------------


def test_evolve_copies_the_lists():
    record = with_attempts(make_record(deliveries=[Delivery(url="https://hooks.example.com/a")]), 2)
    before = record.to_wire()
    copy_ = record.evolve(status="running")
    copy_.attempts.append(attempt(7))
    copy_.deliveries[0].state = "delivered"
    copy_.deliveries.append(Delivery(url="https://hooks.example.com/b"))
    assert record.to_wire() == before
    assert copy_.status == "running" and record.status == "queued"


def test_evolve_copies_the_attempts_too():
    record = with_attempts(make_record(), 1)
    copy_ = record.evolve()
    copy_.attempts[0].delay_reason = "changed"
    assert record.attempts[0].delay_reason == "retry-after"


# -- the spec: wire form ------------------------------------------------------------------------------------


def test_the_full_job_sets_every_field():
    """Guards the round-trip test below: every wire field of the spec is away from its default."""
    spec = full_spec()
    defaults = JobSpec(url="https://x.example/")
    for f in dataclasses.fields(JobSpec):
        if f.name in (*DERIVED, "extensions", "trigger", "_wire"):
            continue
        assert getattr(spec, f.name) != getattr(defaults, f.name), f.name
    assert spec.fallback_job is not None and spec.fallback_job.trigger == Trigger(type="on_error", codes=(500, 502))
    nested = spec.fallback_job.fallback_job
    assert nested is not None and nested.trigger == Trigger(type="on_timeout", timeout_ms=2000)
    assert spec.on_failure is not None and spec.on_failure.on_success is not None
    assert [hook.regions for hook in spec.webhooks] == [("iad", "lax"), (), ("ord",)]


def test_the_spec_round_trips():
    spec = full_spec()
    wire = spec.to_wire()
    assert json.loads(json.dumps(wire)) == wire
    back = JobSpec.from_wire(json.loads(json.dumps(wire)))
    assert back == spec
    assert back.to_wire() == wire
    assert (back.origin, back.credential_fingerprint) == (spec.origin, spec.credential_fingerprint)
    assert str(back.parsed_url) == str(spec.parsed_url)
    assert back.fallback_job == spec.fallback_job and back.on_failure == spec.on_failure
    assert wire["fallback_job"]["trigger"] == {"type": "on_error", "codes": [500, 502]}
    assert wire["fallback_job"]["fallback_job"]["trigger"] == {"type": "on_timeout", "timeout_ms": 2000}
    assert "trigger" not in wire  # only fallback jobs carry one


def test_unknown_fields_are_kept_through_a_round_trip():
    wire = full_spec().to_wire()
    wire["priority_lane"] = {"lane": 3}
    wire["on_success"]["future_flag"] = True
    wire["fallback_job"]["fallback_job"]["future_list"] = [1, 2]
    spec = JobSpec.from_wire(wire)
    assert dict(spec.extensions) == {"priority_lane": {"lane": 3}}
    assert spec.on_success is not None and dict(spec.on_success.extensions) == {"future_flag": True}
    assert spec.to_wire() == wire
    assert JobSpec.from_wire(spec.to_wire()) == spec


def test_validation_ignores_unknown_fields():
    spec = validate_job({"url": "https://api.example.com/", "priority_lane": 3})
    assert dict(spec.extensions) == {} and "priority_lane" not in spec.to_wire()


@pytest.mark.parametrize("where", ["webhook", "retry_policy", "trigger"])
def test_unknown_fields_inside_nested_objects_are_kept(where: str):
    wire = full_spec().to_wire()
    target = {
        "webhook": wire["webhooks"][0],
        "retry_policy": wire["retry_policy"],
        "trigger": wire["fallback_job"]["trigger"],
    }[where]
    target["added_later"] = "x"
    assert JobSpec.from_wire(wire).to_wire() == wire


def test_derived_fields_are_recomputed_and_never_on_the_wire():
    spec = full_spec()
    assert spec.origin == "https://api.example.com"
    assert spec.credential_fingerprint == credential_fingerprint({"authorization": "Bearer sk_live_1"})
    assert spec.on_failure is not None
    assert spec.on_failure.credential_fingerprint == credential_fingerprint({"x-api-key": "k"})

    def keys(wire: dict[str, Any]) -> set[str]:
        found = set(wire)
        for name in ("on_success", "on_failure", "fallback_job"):
            if wire.get(name):
                found |= keys(wire[name])
        return found

    assert keys(spec.to_wire()).isdisjoint(DERIVED)
    # Read back with other headers, the fingerprint follows the headers, not the old value.
    wire = spec.to_wire()
    wire["headers"] = {"X-Trace": "t-2"}
    assert JobSpec.from_wire(wire).credential_fingerprint is None
    wire["headers"] = {"Api-Key": "other"}
    assert JobSpec.from_wire(wire).credential_fingerprint == credential_fingerprint({"api-key": "other"})


def test_derived_fields_on_an_incoming_wire_form_do_not_override():
    wire = full_spec().to_wire()
    wire.update(origin="https://evil.example", credential_fingerprint="0" * 24)
    spec = JobSpec.from_wire(wire)
    assert spec.origin == "https://api.example.com"
    assert spec.credential_fingerprint == credential_fingerprint({"authorization": "Bearer sk_live_1"})


def test_derived_fields_on_an_incoming_wire_form_are_not_written_back():
    wire = full_spec().to_wire()
    wire.update(origin="https://evil.example", credential_fingerprint="0" * 24)
    assert set(JobSpec.from_wire(wire).to_wire()).isdisjoint(DERIVED)


# -- the spec: immutability ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["headers", "metadata", "extensions"])
def test_spec_mappings_cannot_be_changed(name: str):
    wire = full_spec().to_wire()
    wire["priority_lane"] = 1
    spec = JobSpec.from_wire(wire)
    mapping = getattr(spec, name)
    first = next(iter(mapping))
    with pytest.raises(TypeError):
        mapping["added"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        del mapping[first]  # type: ignore[attr-defined]
    assert "added" not in mapping and first in mapping


def test_the_spec_does_not_follow_the_dicts_it_was_built_from_or_handed_out():
    data = copy.deepcopy(FULL_JOB)
    spec = validate_job(data)
    data["headers"]["Authorization"] = "Bearer changed"
    data["metadata"]["order"] = 0
    assert spec.headers["Authorization"] == "Bearer sk_live_1" and spec.metadata["order"] == 42

    wire = spec.to_wire()
    wire["headers"]["X-Trace"] = "changed"
    wire["metadata"]["order"] = -1
    assert spec.headers["X-Trace"] == "t-1" and spec.metadata["order"] == 42

    built = {"X-A": "1"}
    direct = JobSpec(url="https://api.example.com/", headers=built)
    built["X-A"] = "2"
    assert direct.headers["X-A"] == "1"


def test_spec_fields_cannot_be_assigned():
    spec = full_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.url = "https://elsewhere.example/"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.headers = {}  # type: ignore[misc]
