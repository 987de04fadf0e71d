"""Scenario files: parsing, defaults, validation errors that name the file and field, sweep overrides, swarm faults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from simulations.scenario import (
    DISK_LOSS_CLEARANCE_S,
    FAULT_KINDS,
    SWEEP_KEYS,
    ClusterSpec,
    FaultSpec,
    NetworkSpec,
    PlanSpec,
    ProviderSpec,
    RegionLatencySpec,
    Scenario,
    ScenarioError,
    SwarmSpec,
    TenantSpec,
    bundled_scenarios,
    load_scenario,
)

MINIMAL = """
[[providers]]
name = "api"

[[tenants]]
name = "t"
provider = "api"
"""

FULL = """
name = "full"
description = "every field set"
duration_s = 12
warmup_s = 2.5
drain_s = 7

[cluster]
nodes = 4
regions = ["iad", "lax"]
profile = "wan"

[network]
loss = 0.01
duplication = 0.02
delay_min_s = 0.001
delay_max_s = 0.01

[[providers]]
name = "api"
rate_limit_rps = 3
burst = 2
signal = "x-ratelimit"
latency_median_s = 0.1
latency_p99_s = 0.5
error_rate = 0.1
regions = ["iad"]

[[receivers]]
name = "a"
failure_rate = 0.2

[[receivers]]
name = "b"

[[tenants]]
name = "t"
tier = "reserved"
keys = 7
rate_per_s = 9
arrival = "periodic"
provider = "api"
receivers = ["a", "b"]
quorum = 2
workers = 3

[[faults]]
at_s = 1
kind = "partition"
nodes = ["n1"]
other_nodes = ["n2", "n3"]
one_way = true
duration_s = 2

[[faults]]
at_s = 3
kind = "upstream_errors"
target = "api"
region = "iad"
rate = 0.5

[swarm]
kinds = ["crash"]
rate_per_min = 1
max_duration_s = 3
"""


def write(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


def test_minimal_file_gets_every_default_and_its_name_from_the_file(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, MINIMAL, "tiny-one.toml"))
    assert scenario.name == "tiny-one"
    assert scenario.cluster == ClusterSpec()
    assert scenario.network == NetworkSpec()
    assert scenario.swarm == SwarmSpec()
    assert scenario.faults == () and scenario.receivers == ()
    assert scenario.tenants == (TenantSpec(name="t", provider="api"),)
    assert scenario.providers == (ProviderSpec(name="api"),)
    assert scenario.duration_s > 0 and scenario.warmup_s >= 0 and scenario.drain_s >= 0


def test_full_file_keeps_every_value_with_its_type(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, FULL))
    assert (scenario.name, scenario.duration_s, scenario.warmup_s, scenario.drain_s) == ("full", 12.0, 2.5, 7.0)
    assert isinstance(scenario.duration_s, float)
    assert scenario.cluster == ClusterSpec(nodes=4, regions=("iad", "lax"), profile="wan")
    assert scenario.cluster.node_names == ("n1", "n2", "n3", "n4")
    assert [scenario.cluster.region_of(node) for node in scenario.cluster.node_names] == ["iad", "lax", "iad", "lax"]
    assert scenario.network.link_faults().delay_max_s == 0.01
    provider = scenario.providers[0]
    assert (provider.rate_limit_rps, provider.burst, provider.signal, provider.regions) == (
        3.0,
        2,
        "x-ratelimit",
        ("iad",),
    )
    tenant = scenario.tenants[0]
    assert (tenant.tier, tenant.keys, tenant.receivers, tenant.quorum, tenant.workers) == (
        "reserved",
        7,
        ("a", "b"),
        2,
        3,
    )
    partition, errors = scenario.faults
    assert partition.one_way and partition.other_nodes == ("n2", "n3") and partition.end_s == 3.0
    assert errors.duration_s is None and errors.end_s == float("inf")
    assert errors.describe() == "t=3s upstream_errors api@iad rate=0.5 never healed"
    assert scenario.swarm == SwarmSpec(kinds=("crash",), rate_per_min=1.0, max_duration_s=3.0)


@pytest.mark.parametrize(
    ("change", "where", "problem"),
    [
        (("duration_s = 12", "duraton_s = 12"), "duraton_s", "unknown key"),
        (('profile = "wan"', 'profile = "wam"'), "cluster.profile", "must be one of lan, wan, local"),
        (('tier = "reserved"', 'tier = "gold"'), "tenants[0].tier", "must be one of reserved, paid, free"),
        (("keys = 7", 'keys = "7"'), "tenants[0].keys", "must be a whole number, not a string"),
        (("keys = 7", "keys = 7.5"), "tenants[0].keys", "must be a whole number"),
        (("burst = 2", "burst = true"), "providers[0].burst", "must be a whole number, not true or false"),
        (('regions = ["iad"]', 'regions = "iad"'), "providers[0].regions", "must be a list"),
        (('receivers = ["a", "b"]', 'receivers = ["a", 3]'), "tenants[0].receivers[1]", "must be a string"),
        (('provider = "api"', 'provider = "nope"'), "tenants[0].provider", "no provider named 'nope'"),
        (('receivers = ["a", "b"]', 'receivers = ["a", "c"]'), "tenants[0].receivers", "no receiver named 'c'"),
        (("quorum = 2", "quorum = 3"), "tenants[0].quorum", "must be 1..2"),
        (('other_nodes = ["n2", "n3"]', 'other_nodes = ["n2", "n9"]'), "faults[0].nodes", "no node 'n9'"),
        (('region = "iad"', 'region = "lax"'), "faults[1].region", "api has no region 'lax'"),
        (("rate = 0.5", "rate = 1.5"), "faults[1].rate", "0 < rate <= 1"),
        (("at_s = 3", "at_s = 30"), "faults[1].at_s", "after the workload ends"),
        (("loss = 0.01", "loss = 2"), "network", "probabilities"),
        (('kinds = ["crash"]', 'kinds = ["crash", "meteor"]'), "swarm.kinds[1]", "must be one of"),
        (('name = "b"', 'name = "a"'), "receivers", "'a' repeats"),
        (("latency_p99_s = 0.5", "latency_p99_s = 0.05"), "providers[0].latency_p99_s", ">= latency_median_s"),
    ],
)
def test_bad_field_is_named_with_its_problem(tmp_path: Path, change: tuple[str, str], where: str, problem: str) -> None:
    old, new = change
    assert old in FULL
    message = error_for(tmp_path, FULL.replace(old, new, 1))
    assert message.startswith(f"{where}: "), message
    assert problem in message


def test_missing_required_fields_and_sections(tmp_path: Path) -> None:
    assert error_for(tmp_path, MINIMAL.replace('name = "t"\n', "")) == "tenants[0].name: missing (required)"
    assert error_for(tmp_path, MINIMAL.split("[[tenants]]")[0]) == "tenants: missing (required)"
    assert error_for(tmp_path, "tenants = []\n" + MINIMAL.split("[[tenants]]")[0]).startswith(
        "tenants: needs at least one"
    )
    assert "not a readable TOML file" in error_for(tmp_path, "nodes = = 3")


def test_overlapping_faults_on_one_subject_are_refused_but_different_subjects_may_overlap(tmp_path: Path) -> None:
    crash = '\n[[faults]]\nat_s = {at}\nkind = "crash"\nnodes = ["{node}"]\nduration_s = 5\n'
    base = MINIMAL.replace("[[providers]]", "[cluster]\nnodes = 3\n\n[[providers]]")
    ok = load_scenario(write(tmp_path, base + crash.format(at=1, node="n1") + crash.format(at=2, node="n2")))
    assert len(ok.faults) == 2
    message = error_for(tmp_path, base + crash.format(at=1, node="n1") + crash.format(at=5.9, node="n1"))
    assert message.startswith("faults[1].at_s: overlaps faults[0] (t=1s crash n1 for 5s)"), message


def test_bare_name_finds_a_bundled_scenario_and_unknown_name_lists_them() -> None:
    assert load_scenario("baseline").name == "baseline"
    with pytest.raises(ScenarioError, match=r"no such scenario file .*bundled scenarios: .*baseline"):
        load_scenario("no-such-scenario")


def test_every_bundled_scenario_loads_and_says_what_it_checks() -> None:
    names = {path.stem for path in bundled_scenarios()}
    assert {
        "baseline",
        "noisy-neighbour",
        "region-outage",
        "rolling-restart",
        "partition",
        "one-key-50-workers",
        "racing",
        "slow-region",
        "quota",
    } <= names
    for path in bundled_scenarios():
        scenario = load_scenario(path)
        assert scenario.description, path
        assert path.read_text().startswith("# "), f"{path} has no comment saying what it checks"
    baseline = load_scenario("baseline")
    assert (baseline.cluster.nodes, baseline.total_keys, baseline.total_rate_per_s) == (5, 100, 200.0)


def scenario_with(**changes: object) -> Scenario:
    base = Scenario(
        name="s",
        cluster=ClusterSpec(nodes=5, regions=("iad",)),
        providers=(ProviderSpec(name="api"),),
        tenants=(
            TenantSpec(name="big", provider="api", keys=30, rate_per_s=10.0),
            TenantSpec(name="small", provider="api", keys=10, rate_per_s=2.0),
        ),
    )
    return dataclasses.replace(base, **changes)


def test_overrides_apply_every_sweep_key() -> None:
    scenario = scenario_with().with_overrides(
        {"nodes": "3", "load": "2.5", "keys": "8", "duration": "7", "regions": "3", "loss": "0.1", "cores": "4"}
    )
    assert scenario.cluster.nodes == 3
    assert [tenant.rate_per_s for tenant in scenario.tenants] == [25.0, 5.0]
    assert [tenant.keys for tenant in scenario.tenants] == [6, 2]
    assert scenario.duration_s == 7.0
    assert scenario.cluster.regions == ("iad", "lax", "fra")
    assert scenario.network.loss == 0.1
    assert scenario.cpu.cores == 4
    assert set(SWEEP_KEYS) == {"nodes", "load", "keys", "duration", "regions", "loss", "cores"}


def test_keys_override_sums_exactly_and_keeps_one_key_per_tenant() -> None:
    for total in (2, 3, 7, 40, 41, 1000):
        tenants = scenario_with().with_overrides({"keys": str(total)}).tenants
        assert sum(tenant.keys for tenant in tenants) == total
        assert min(tenant.keys for tenant in tenants) >= 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nodez": "3"}, "override: must be one of nodes, load"),
        ({"nodes": "three"}, "nodes=three: nodes must be a whole number"),
        ({"nodes": "0"}, "nodes=0: must be 1..254"),
        ({"load": "-1"}, "load=-1: must be > 0"),
        ({"keys": "1"}, "keys=1: needs at least one per tenant (2)"),
        ({"loss": "1.5"}, "loss=1.5: loss and duplication are probabilities"),
        ({"regions": "0"}, "regions=0: must be >= 1"),
        ({"duration": "0"}, "duration=0: duration_s: must be > 0"),
    ],
)
def test_bad_overrides_say_which_and_why(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        scenario_with().with_overrides(overrides)
    assert str(caught.value).startswith(message), str(caught.value)


def test_override_that_strands_a_fault_is_refused() -> None:
    crash = FaultSpec(at_s=1.0, kind="crash", nodes=("n5",), duration_s=2.0)
    with pytest.raises(ScenarioError, match=r"nodes=3: faults\[0\].nodes: no node 'n5' in a 3-node cluster"):
        scenario_with(faults=(crash,)).with_overrides({"nodes": "3"})


def test_swarm_faults_are_a_function_of_the_seed_and_respect_the_spec() -> None:
    swarm = SwarmSpec(kinds=FAULT_KINDS[:-1], rate_per_min=30.0, max_duration_s=4.0)
    scenario = scenario_with(duration_s=60.0, swarm=swarm)
    first = scenario.with_swarm_faults(7)
    assert first == scenario.with_swarm_faults(7)
    assert first.faults != scenario.with_swarm_faults(8).faults
    assert 10 <= len(first.faults) <= 40  # 30 a minute over a minute, minus the overlaps skipped
    for fault in first.faults:
        assert fault.kind in swarm.kinds
        assert fault.duration_s is not None and fault.duration_s <= swarm.max_duration_s
        assert fault.end_s <= scenario.duration_s
    # Re-validating the drawn schedule checks node names, targets and that no two faults overlap on one subject.
    assert dataclasses.replace(first) == first
    assert [fault.at_s for fault in first.faults] == sorted(fault.at_s for fault in first.faults)


def test_swarm_faults_keep_the_scheduled_ones() -> None:
    crash = FaultSpec(at_s=1.0, kind="crash", nodes=("n1",), duration_s=2.0)
    drawn = scenario_with(faults=(crash,), swarm=SwarmSpec(kinds=("loss",), rate_per_min=20.0)).with_swarm_faults(1)
    assert crash in drawn.faults
    assert {fault.kind for fault in drawn.faults} == {"crash", "loss"}


def test_a_disk_loss_is_a_node_fault_and_swarm_draws_only_those_the_replicas_survive() -> None:
    crash = FaultSpec(at_s=1.0, kind="crash", nodes=("n1",), duration_s=4.0)
    lost = FaultSpec(at_s=3.0, kind="disk_loss", nodes=("n1",), duration_s=2.0)
    assert lost.describe() == "t=3s disk_loss n1 for 2s"
    with pytest.raises(ScenarioError, match=r"overlaps faults\[0\] \(t=1s crash n1 for 4s\) on the same node n1"):
        scenario_with(faults=(crash, lost))
    assert FaultSpec(at_s=3.0, kind="disk_loss", nodes=("n2",)).describe() == "t=3s disk_loss n2 never healed"

    swarm = SwarmSpec(kinds=("crash", "disk_loss", "partition"), rate_per_min=30.0, max_duration_s=4.0)
    scenario = scenario_with(duration_s=120.0, swarm=swarm)
    drawn = 0
    for seed in range(5):
        faults = scenario.with_swarm_faults(seed).faults
        for loss in (fault for fault in faults if fault.kind == "disk_loss"):
            drawn += 1  # and every copy is back on two disks before a disk is lost:
            earlier = [fault for fault in faults if fault is not loss and fault.at_s <= loss.at_s]
            assert all(fault.end_s + DISK_LOSS_CLEARANCE_S <= loss.at_s for fault in earlier), (seed, loss)
    assert drawn >= 5
    one_copy = dataclasses.replace(scenario, cluster=ClusterSpec(nodes=5, replicas=1))
    assert "disk_loss" not in {fault.kind for fault in one_copy.with_swarm_faults(0).faults}


REGIONAL = """
[cluster]
nodes = 3
regions = ["iad", "lax", "ord"]

[[providers]]
name = "api"
latency_median_s = 0.05
latency_p99_s = 0.2

[[providers.region_latency]]
region = "ord"
latency_median_s = 1.0
latency_p99_s = 4.0

[[tenants]]
name = "racer"
provider = "api"
regions = ["iad", "ord"]
execution_mode = "fanout"
region_policy = "strict"
send_idempotency_key = true
on_success = true
on_failure = true
"""


def test_region_latencies_and_the_job_fields_of_a_tenant_parse_and_default_to_plain_jobs(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, REGIONAL))
    (provider,) = scenario.providers
    assert provider.region_latency == (RegionLatencySpec(region="ord", latency_median_s=1.0, latency_p99_s=4.0),)
    assert provider.latency_p99_max_s == 4.0
    (tenant,) = scenario.tenants
    assert (tenant.regions, tenant.execution_mode, tenant.region_policy) == (("iad", "ord"), "fanout", "strict")
    assert tenant.send_idempotency_key and tenant.on_success and tenant.on_failure
    plain = TenantSpec(name="t", provider="api")
    assert (plain.regions, plain.execution_mode, plain.region_policy) == ((), "race", "fallback")
    assert not (plain.send_idempotency_key or plain.on_success or plain.on_failure)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('regions = ["iad", "ord"]', 'regions = ["iad", "sin"]'), "tenants[0].regions: 'sin' is not a cluster region"),
        (('execution_mode = "fanout"', 'execution_mode = "hedge"'), "tenants[0].execution_mode: must be one of race"),
        (('region = "ord"', 'region = "fra"'), "providers[0].region_latency[0].region: 'fra' is not a cluster region"),
        (('regions = ["iad", "ord"]\n', ""), "tenants[0].execution_mode: needs regions"),
        (("latency_p99_s = 4.0", "latency_p99_s = 0.5"), "latency_p99_s: must be >= latency_median_s"),
    ],
)
def test_region_fields_are_validated(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    message = error_for(tmp_path, REGIONAL.replace(*change))
    assert expected in message, message


PLANNED = (
    MINIMAL
    + """plan = "small"

[[tenants]]
name = "paying"
tier = "paid"
provider = "api"

[[plans]]
name = "small"
monthly_requests = 100
overage_requests_max = 10

[[plans]]
name = "pro"
monthly_requests = 500
"""
)


def test_plans_parse_and_tenants_name_one_or_get_their_tiers(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, PLANNED))
    assert scenario.plans == (
        PlanSpec(name="small", monthly_requests=100, overage_requests_max=10),
        PlanSpec(name="pro", monthly_requests=500),
    )
    small, paying = scenario.tenants
    assert (small.plan_name, paying.plan_name) == ("small", "pro")  # a paid tenant is on pro, here overridden
    assert [scenario.plan_spec(tenant) for tenant in scenario.tenants] == list(scenario.plans)
    assert [plan.allowance for plan in scenario.plans] == [110, 500]
    assert PlanSpec(name="open").allowance is None  # 0 requests: unlimited, as in a node's [plans.NAME]
    assert scenario_with().plans == () and scenario_with().plan_spec(scenario_with().tenants[0]) is None
    assert TenantSpec(name="t", provider="api", tier="reserved").plan_name == "enterprise"
    assert TenantSpec(name="t", provider="api", plan="starter").plan_name == "starter"  # a built-in plan


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('plan = "small"', 'plan = "big"'), "tenants[0].plan: no plan named 'big' (plans: enterprise, free,"),
        (('name = "small"', 'name = "a small one"'), "plans[0].name: must be 1-64 characters"),
        (('name = "pro"', 'name = "small"'), "plans: names must be unique, 'small' repeats"),
        (("monthly_requests = 100", "monthly_requests = -1"), "plans[0].monthly_requests: must be >= 0"),
        (("overage_requests_max = 10", "overage_requests_max = 1.5"), "plans[0].overage_requests_max: must be a"),
        (("overage_requests_max = 10", "overage = 10"), "plans[0].overage: unknown key"),
    ],
)
def test_plan_fields_are_validated(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in PLANNED
    assert error_for(tmp_path, PLANNED.replace(old, new, 1)).startswith(expected)
