"""The split planner: properties over random meshes, plus worked examples."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.errors import ConfigError, ModelError
from mesh_llm.planning.planner import PlanConfig, host_candidate, plan_model, replan
from mesh_llm.planning.plans import (
    ModelFacts,
    Plan,
    PlanNode,
    PlanRow,
    Shard,
    Solo,
    Split,
    Waiting,
    describe_plan,
    summarize_plan,
)
from mesh_llm.split.host_election import HostClaim, elect_host

GB = 1_000_000_000
CFG = PlanConfig()
HYST = CFG.rtt_hysteresis_ms
CAP = CFG.rtt_cap_ms

# No example database on disk, and no deadline: the suite runs fast and leaves nothing behind.
PROPS = settings(max_examples=25, database=None, deadline=None)
REQUIRED = Fraction(11, 10)  # the default fit factor, exactly

Scenario = tuple[list[PlanNode], ModelFacts]


# ---------------------------------------------------------------------------------------------
# Strategies


def _decode_node(index: int, word: int) -> PlanNode:
    """One random 32-bit word -> one node: a single draw per node keeps hypothesis fast.

    Bits 0-6: capacity up to 134 GB, skewed small (about one node in ten offers nothing). Bits 7-16: RTT in 0.12 ms steps
    up to 120 ms (two in three within the cap; a few unmeasured). Bits 17-18: has the GGUF
    (three in four). Bits 19-21: client (one in eight). Bits 22-29: an id prefix, so that id
    order is unrelated to list order.
    """
    cap_code = word & 0x7F
    rtt_code = (word >> 7) & 0x3FF
    return PlanNode(
        node_id=f"{(word >> 22) & 0xFF:02x}{index}",
        capacity_bytes=0 if cap_code < 12 else (cap_code - 11) ** 2 * GB // 100,
        rtt_ms=None if rtt_code >= 1000 else rtt_code * 0.12,
        has_model=(word >> 17) & 3 != 0,
        client=(word >> 19) & 7 == 7,
    )


def _scenario(words: list[int], target_split: bool, size_permille: int, n_layers: int) -> Scenario:
    nodes = [_decode_node(i, w) for i, w in enumerate(words)]
    pool = sum(n.capacity_bytes for n in nodes if usable(n)) or GB
    low, high = 0, pool  # anywhere from tiny to the whole mesh: solo, split and waiting
    if target_split and any(usable(n) for n in nodes):
        # Too big for the biggest node, small enough for it plus the nearby nodes with the GGUF.
        host = biggest(nodes)
        near = sum(
            n.capacity_bytes
            for n in nodes
            if usable(n) and n is not host and n.has_model and n.rtt_ms is not None and n.rtt_ms <= CAP
        )
        if near:
            low, high = int(host.capacity_bytes / REQUIRED) + 1, int((host.capacity_bytes + near) / REQUIRED)
    size = max(1, low + (high - low) * size_permille // 1000)
    return nodes, ModelFacts("m", size, n_layers)


def scenarios(min_nodes: int = 1, split: bool = False) -> st.SearchStrategy[Scenario]:
    """A mesh of up to 10 nodes with unique ids, and a model sized against it (often to split)."""
    return st.builds(
        _scenario,
        st.lists(st.integers(0, 2**32 - 1), min_size=min_nodes, max_size=10),
        st.just(True) if split else st.booleans(),
        st.integers(0, 1000),
        st.integers(1, 96),
    )


def split_scenarios() -> st.SearchStrategy[Scenario]:
    """Scenarios whose fresh plan is a split."""
    return scenarios(min_nodes=2, split=True).filter(lambda sc: isinstance(plan_model(*sc), Split))


JITTER = st.integers(-100, 100).map(lambda d: d * HYST / 100)  # up to the full hysteresis band


# ---------------------------------------------------------------------------------------------
# Helpers


def node(
    node_id: str, cap_gb: float, rtt: float | None = 10.0, has_model: bool = True, client: bool = False
) -> PlanNode:
    return PlanNode(node_id, int(cap_gb * GB), rtt, has_model, client)


def usable(n: PlanNode) -> bool:
    return not n.client and n.capacity_bytes > 0


def biggest(nodes: list[PlanNode]) -> PlanNode:
    return min((n for n in nodes if usable(n)), key=lambda n: (-n.capacity_bytes, n.node_id))


def anyone_fits(nodes: list[PlanNode], facts: ModelFacts) -> bool:
    return any(usable(n) and n.capacity_bytes >= facts.size_bytes * REQUIRED for n in nodes)


def check_split_shape(plan: Split, facts: ModelFacts) -> None:
    """Contiguous ranges from 0 to n_layers, no gaps or overlaps, one layer or more each."""
    assert plan.shards[0].node_id == plan.host
    assert plan.shards[0].start_layer == 0
    assert plan.shards[-1].end_layer == facts.n_layers
    for a, b in zip(plan.shards, plan.shards[1:], strict=False):
        assert a.end_layer == b.start_layer
    assert all(s.n_layers >= 1 for s in plan.shards)
    assert sum(s.bytes_estimate for s in plan.shards) == facts.size_bytes
    assert len(set(plan.members)) == len(plan.shards) >= 2


def plan_nodes(plan: Plan) -> set[str]:
    if isinstance(plan, Solo):
        return {plan.host}
    if isinstance(plan, Split):
        return set(plan.members)
    return set()


def jittered(nodes: list[PlanNode], deltas: list[float]) -> list[PlanNode]:
    return [
        n if n.rtt_ms is None else replace(n, rtt_ms=max(0.0, n.rtt_ms + d))
        for n, d in zip(nodes, deltas, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Properties of a fresh plan


@PROPS
@given(scenarios(), st.booleans())
def test_split_layers_are_contiguous_and_cover_the_model(sc: Scenario, force: bool) -> None:
    nodes, facts = sc
    plan = plan_model(nodes, facts, PlanConfig(force_split=force))
    if isinstance(plan, Split):
        check_split_shape(plan, facts)


@PROPS
@given(scenarios(), st.booleans())
def test_clients_and_empty_nodes_are_never_chosen(sc: Scenario, force: bool) -> None:
    nodes, facts = sc
    plan = plan_model(nodes, facts, PlanConfig(force_split=force))
    by_id = {n.node_id: n for n in nodes}
    assert all(usable(by_id[i]) for i in plan_nodes(plan))


@PROPS
@given(scenarios(), st.booleans())
def test_workers_are_within_the_rtt_cap_and_have_the_model(sc: Scenario, force: bool) -> None:
    nodes, facts = sc
    plan = plan_model(nodes, facts, PlanConfig(force_split=force))
    if isinstance(plan, Split):
        by_id = {n.node_id: n for n in nodes}
        for worker in (by_id[i] for i in plan.members[1:]):
            assert worker.rtt_ms is not None and worker.rtt_ms <= CAP
            assert worker.has_model


@PROPS
@given(split_scenarios())
def test_split_members_cover_the_model_and_none_is_superfluous(sc: Scenario) -> None:
    nodes, facts = sc
    plan = plan_model(nodes, facts)
    assert isinstance(plan, Split)
    by_id = {n.node_id: n for n in nodes}
    caps = {i: by_id[i].capacity_bytes for i in plan.members}
    assert sum(caps.values()) >= facts.size_bytes * REQUIRED
    # Workers join lowest RTT first, so the slowest one is the one that completed the cover.
    slowest = max(plan.members[1:], key=lambda i: (by_id[i].rtt_ms, i))
    assert sum(caps.values()) - caps[slowest] < facts.size_bytes * REQUIRED
    assert not anyone_fits(nodes, facts)  # a split only when no node holds it alone


def _wide_split(caps_gb: list[int], size_permille: int, n_layers: int, force: bool) -> Scenario:
    nodes = [PlanNode(f"n{i:02d}", c * GB, 1.0 + i, True) for i, c in enumerate(caps_gb)]
    # Between "just too big for the biggest" and "needs everyone", so splits are often wide.
    low = max(caps_gb) * GB / REQUIRED if not force else 1
    high = sum(caps_gb) * GB / REQUIRED
    return nodes, ModelFacts("m", int(low + (high - low) * size_permille / 1000) + 1, n_layers)


wide_splits = st.builds(
    _wide_split,
    st.lists(st.integers(1, 100), min_size=2, max_size=12),
    st.integers(0, 999),
    st.integers(2, 96),
    st.booleans(),
)


@PROPS
@given(wide_splits)
def test_layer_shares_follow_capacity_within_one_layer(sc: Scenario) -> None:
    nodes, facts = sc
    plan = plan_model(nodes, facts, PlanConfig(force_split=True))
    if not isinstance(plan, Split):
        return  # more members than layers: waiting
    check_split_shape(plan, facts)
    caps = {n.node_id: n.capacity_bytes for n in nodes}
    total = sum(caps[i] for i in plan.members)
    quotas = {i: Fraction(facts.n_layers * caps[i], total) for i in plan.members}
    # Where every quota reaches one layer, largest remainder is within one layer of it; else
    # the one-layer minimum may cost another member one more.
    slack = 1 if all(q >= 1 for q in quotas.values()) else 2
    for shard in plan.shards:
        assert abs(shard.n_layers - quotas[shard.node_id]) < slack


@PROPS
@given(scenarios())
def test_host_is_the_biggest_usable_node(sc: Scenario) -> None:
    nodes, facts = sc
    plan = plan_model(nodes, facts)
    if isinstance(plan, Solo | Split):
        assert plan.host == host_candidate(nodes) == biggest(nodes).node_id
    if anyone_fits(nodes, facts):
        assert plan == Solo(biggest(nodes).node_id, "m", facts.size_bytes, facts.n_layers)
    else:
        assert not isinstance(plan, Solo)


@PROPS
@given(scenarios())
def test_waiting_only_when_no_node_fits_and_says_what_is_missing(sc: Scenario) -> None:
    nodes, facts = sc
    plan = plan_model(nodes, facts)
    if isinstance(plan, Waiting):
        assert plan.reason
        assert 0 < plan.missing_bytes <= facts.size_bytes * REQUIRED + 1
        assert not anyone_fits(nodes, facts)


@PROPS
@given(st.data(), scenarios(), st.booleans())
def test_input_order_does_not_matter(data: st.DataObject, sc: Scenario, force: bool) -> None:
    nodes, facts = sc
    cfg = PlanConfig(force_split=force)
    shuffled = data.draw(st.permutations(nodes))
    assert plan_model(shuffled, facts, cfg) == plan_model(nodes, facts, cfg)
    assert host_candidate(shuffled) == host_candidate(nodes)


@PROPS
@given(scenarios(min_nodes=2))
def test_forced_split_uses_two_nodes_when_a_second_is_usable(sc: Scenario) -> None:
    nodes, facts = sc
    plan = plan_model(nodes, facts, PlanConfig(force_split=True))
    host = host_candidate(nodes)
    layer = facts.size_bytes * REQUIRED / facts.n_layers
    second = [
        n
        for n in nodes
        if usable(n)
        and n.node_id != host
        and n.has_model
        and n.rtt_ms is not None
        and n.rtt_ms <= CAP
        and n.capacity_bytes >= layer
    ]
    if second and facts.n_layers >= 2 and anyone_fits(nodes, facts):
        assert isinstance(plan, Split) and len(plan.shards) >= 2
    if isinstance(plan, Solo):
        assert not second or facts.n_layers < 2


# ---------------------------------------------------------------------------------------------
# Properties of re-planning


@PROPS
@given(st.data(), scenarios(), st.booleans())
def test_small_rtt_jitter_keeps_the_plan(data: st.DataObject, sc: Scenario, force: bool) -> None:
    nodes, facts = sc
    cfg = PlanConfig(force_split=force)
    before = plan_model(nodes, facts, cfg)
    shaken = jittered(nodes, data.draw(st.lists(JITTER, min_size=len(nodes), max_size=len(nodes))))
    after = replan(before, shaken, facts, cfg)
    if isinstance(before, Waiting):
        # A waiting model takes whatever capacity the jitter brought in: a fresh plan.
        assert after == plan_model(shaken, facts, cfg)
    else:
        assert after is before


@PROPS
@given(st.data(), scenarios(min_nodes=2))
def test_non_member_leaving_keeps_the_plan(data: st.DataObject, sc: Scenario) -> None:
    nodes, facts = sc
    before = plan_model(nodes, facts)
    outsiders = [n.node_id for n in nodes if n.node_id not in plan_nodes(before)]
    if isinstance(before, Waiting) or not outsiders:
        return
    gone = data.draw(st.sampled_from(outsiders))
    assert replan(before, [n for n in nodes if n.node_id != gone], facts) is before


@PROPS
@given(st.data(), scenarios())
def test_replan_is_idempotent_and_never_waits_needlessly(data: st.DataObject, sc: Scenario) -> None:
    nodes, facts = sc
    before = plan_model(nodes, facts)
    changed = list(data.draw(st.permutations(nodes)))
    if len(changed) > 1 and data.draw(st.booleans()):
        changed.pop()
    deltas = data.draw(st.lists(st.integers(-400, 400), min_size=len(changed), max_size=len(changed)))
    changed = jittered(changed, [d / 10 for d in deltas])
    once = replan(before, changed, facts)
    assert replan(once, changed, facts) is once
    if isinstance(once, Waiting):
        # The hysteresis band never keeps a model down that a fresh plan could place.
        assert isinstance(plan_model(changed, facts), Waiting)
    if isinstance(once, Split):
        check_split_shape(once, facts)
        by_id = {n.node_id: n for n in changed}
        for worker in once.members[1:]:
            rtt = by_id[worker].rtt_ms
            assert rtt is not None and rtt <= CAP + HYST


@PROPS
@given(st.data(), split_scenarios())
def test_member_crossing_cap_plus_hysteresis_is_replaced(data: st.DataObject, sc: Scenario) -> None:
    nodes, facts = sc
    before = plan_model(nodes, facts)
    assert isinstance(before, Split)
    gone = data.draw(st.sampled_from(before.members[1:]))
    rtt = data.draw(st.integers(1, 1000)) / 10 + CAP + HYST
    after = replan(before, [replace(n, rtt_ms=rtt) if n.node_id == gone else n for n in nodes], facts)
    assert after != before
    assert gone not in plan_nodes(after)


@PROPS
@given(st.data(), split_scenarios())
def test_member_leaving_triggers_a_new_plan(data: st.DataObject, sc: Scenario) -> None:
    nodes, facts = sc
    before = plan_model(nodes, facts)
    assert isinstance(before, Split)
    gone = data.draw(st.sampled_from(before.members))
    after = replan(before, [n for n in nodes if n.node_id != gone], facts)
    assert after != before
    assert gone not in plan_nodes(after)


# ---------------------------------------------------------------------------------------------
# Examples


FACTS = ModelFacts("qwen-32b", 20 * GB, 64)


def test_model_that_fits_runs_solo_on_the_biggest_node() -> None:
    nodes = [
        node("b", 24),
        node("a", 24, rtt=None),
        node("c", 48, has_model=False),
        node("z", 80, client=True),
    ]
    assert plan_model(nodes, FACTS) == Solo("c", "qwen-32b", 20 * GB, 64)


def test_fit_boundary_is_exactly_size_times_1_1() -> None:
    assert plan_model([node("a", 22, rtt=None)], FACTS) == Solo("a", "qwen-32b", 20 * GB, 64)
    short = PlanNode("a", 22 * GB - 1, None, True)
    assert isinstance(plan_model([short], FACTS), Waiting)


def test_model_too_big_for_any_node_is_split_in_proportion_to_capacity() -> None:
    nodes = [
        node("host", 12, rtt=None),
        node("w1", 6, rtt=5.0),
        node("w2", 6, rtt=20.0),
        node("far", 40, rtt=120),
    ]
    # "far" fits alone, so it runs the model however far away it is.
    assert plan_model(nodes, FACTS) == Solo("far", "qwen-32b", 20 * GB, 64)
    plan = plan_model(nodes[:3], FACTS)
    assert plan == Split(
        host="host",
        shards=(
            Shard("host", 0, 32, 10 * GB),
            Shard("w1", 32, 48, 5 * GB),
            Shard("w2", 48, 64, 5 * GB),
        ),
        model="qwen-32b",
        n_layers=64,
    )


def test_far_peers_are_not_used() -> None:
    nodes = [node("host", 12, rtt=None), node("near", 6, rtt=30.0), node("far", 6, rtt=81.0)]
    plan = plan_model(nodes, FACTS)
    assert isinstance(plan, Waiting)
    assert plan.missing_bytes == 4 * GB


def test_peers_without_the_gguf_or_unmeasured_are_not_workers() -> None:
    nodes = [node("host", 16, rtt=None), node("nofile", 8, has_model=False), node("unmeasured", 8, rtt=None)]
    assert isinstance(plan_model(nodes, FACTS), Waiting)


def test_forced_split_spreads_a_fitting_model_over_two_nodes() -> None:
    nodes = [node("big", 48, rtt=None), node("near", 16, rtt=2.0), node("nearer", 16, rtt=1.0)]
    plan = plan_model(nodes, FACTS, PlanConfig(force_split=True))
    assert isinstance(plan, Split)
    assert plan.members == ("big", "nearer")
    assert [s.n_layers for s in plan.shards] == [48, 16]


def test_forced_split_with_nobody_to_split_with_serves_solo() -> None:
    assert plan_model([node("a", 48, rtt=None)], FACTS, PlanConfig(force_split=True)) == Solo(
        "a", "qwen-32b", 20 * GB, 64
    )


def test_mesh_of_clients_waits_for_the_whole_model() -> None:
    plan = plan_model([node("c", 100, client=True), node("empty", 0)], FACTS)
    assert isinstance(plan, Waiting)
    assert plan.missing_bytes == 22 * GB
    assert host_candidate([node("c", 100, client=True)]) is None


def test_waiting_model_is_placed_once_capacity_arrives() -> None:
    nodes = [node("host", 16, rtt=None), node("w1", 4, rtt=5.0)]
    waiting = plan_model(nodes, FACTS)
    assert isinstance(waiting, Waiting) and waiting.missing_bytes == 2 * GB
    nodes.append(node("w2", 2, rtt=70.0))
    assert isinstance(replan(waiting, nodes, FACTS), Split)


def test_newcomer_in_the_band_does_not_displace_a_member() -> None:
    nodes = [node("host", 12, rtt=None), node("a", 6, rtt=10.0), node("m", 6, rtt=78.0)]
    before = plan_model(nodes, FACTS)
    assert isinstance(before, Split) and before.members == ("host", "a", "m")
    # "a" leaves; "f" is clearly near, "e" is nearer than "m" but only by jitter's worth.
    after = replan(before, [nodes[0], nodes[2], node("e", 6, rtt=72.0), node("f", 6, rtt=60.0)], FACTS)
    assert isinstance(after, Split) and after.members == ("host", "f", "m")
    # From scratch, "e" (72 ms) would have beaten "m" (78 ms).
    fresh = plan_model([nodes[0], nodes[2], node("e", 6, rtt=72.0), node("f", 6, rtt=60.0)], FACTS)
    assert isinstance(fresh, Split) and fresh.members == ("host", "e", "f")


def test_newcomer_in_the_band_joins_rather_than_leave_the_model_waiting() -> None:
    nodes = [node("host", 12, rtt=None), node("w1", 6, rtt=10.0), node("w2", 6, rtt=20.0)]
    before = plan_model(nodes, FACTS)
    assert isinstance(before, Split) and before.members == ("host", "w1", "w2")
    after = replan(before, [nodes[0], nodes[2], node("edge", 6, rtt=75.0)], FACTS)
    assert isinstance(after, Split) and after.members == ("host", "edge", "w2")


def test_member_drifting_past_the_cap_stays_until_cap_plus_hysteresis() -> None:
    nodes = [node("host", 16, rtt=None), node("w", 8, rtt=78.0)]
    before = plan_model(nodes, FACTS)
    assert isinstance(before, Split)
    assert replan(before, [nodes[0], replace(nodes[1], rtt_ms=89.9)], FACTS) is before
    assert isinstance(replan(before, [nodes[0], replace(nodes[1], rtt_ms=90.1)], FACTS), Waiting)


def test_split_becomes_solo_when_a_node_that_fits_joins() -> None:
    nodes = [node("host", 16, rtt=None), node("w", 8, rtt=5.0)]
    before = plan_model(nodes, FACTS)
    assert isinstance(before, Split)
    assert replan(before, [*nodes, node("big", 30, rtt=40.0, has_model=False)], FACTS) == Solo(
        "big", "qwen-32b", 20 * GB, 64
    )


def test_solo_host_stays_when_a_bigger_node_joins() -> None:
    before = plan_model([node("a", 24, rtt=None)], FACTS)
    assert replan(before, [node("a", 24, rtt=None), node("b", 80)], FACTS) is before
    assert host_candidate([node("a", 24, rtt=None), node("b", 80)], before) == "a"


def test_replan_prefers_the_previous_host() -> None:
    nodes = [node("h", 12, rtt=None), node("w1", 6, rtt=5.0), node("w2", 6, rtt=6.0), node("w3", 6, rtt=7.0)]
    before = plan_model(nodes, FACTS)
    assert isinstance(before, Split) and before.members == ("h", "w1", "w2")
    grown = [
        replace(n, capacity_bytes=14 * GB) if n.node_id == "w3" else n for n in nodes if n.node_id != "w2"
    ]
    after = replan(before, grown, FACTS)
    assert isinstance(after, Split) and after.host == "h"


def test_solo_host_that_shrinks_hosts_the_split() -> None:
    before = plan_model([node("a", 24, rtt=None), node("b", 16, rtt=5.0)], FACTS)
    assert before == Solo("a", "qwen-32b", 20 * GB, 64)
    # "a" loaded another model and now offers 12 GB: it stays host, whose RTT table we have.
    after = replan(before, [node("a", 12, rtt=None), node("b", 16, rtt=5.0)], FACTS)
    assert isinstance(after, Split) and after.members == ("a", "b")
    # From scratch "b" would host, and "a" (no RTT from "b" measured) could not be its worker.
    assert isinstance(plan_model([node("a", 12, rtt=None), node("b", 16, rtt=5.0)], FACTS), Waiting)


def test_member_losing_capacity_triggers_a_new_plan() -> None:
    nodes = [node("h", 12, rtt=None), node("w1", 6, rtt=5.0), node("w2", 6, rtt=6.0), node("w3", 6, rtt=7.0)]
    before = plan_model(nodes, FACTS)
    assert isinstance(before, Split) and before.members == ("h", "w1", "w2")
    shrunk = [replace(n, capacity_bytes=2 * GB) if n.node_id == "w2" else n for n in nodes]
    after = replan(before, shrunk, FACTS)
    assert isinstance(after, Split) and after.members == ("h", "w1", "w2", "w3")


def test_a_different_model_is_planned_from_scratch() -> None:
    before = plan_model([node("a", 24, rtt=None)], FACTS)
    other = ModelFacts("other", 1 * GB, 10)
    assert replan(before, [node("a", 24, rtt=None), node("b", 80)], other) == Solo("b", "other", GB, 10)


def test_describe_plan_rows() -> None:
    nodes = [node("host", 12, rtt=None), node("w1", 6, rtt=5.0), node("w2", 6, rtt=20.0)]
    rows = describe_plan(plan_model(nodes, FACTS))
    assert rows == [
        PlanRow("host", "host", 0, 32, 10 * GB),
        PlanRow("w1", "worker", 32, 48, 5 * GB),
        PlanRow("w2", "worker", 48, 64, 5 * GB),
    ]
    assert [r.n_layers for r in rows] == [32, 16, 16]
    assert describe_plan(Solo("a", "m", 5, 3)) == [PlanRow("a", "host", 0, 3, 5)]
    assert describe_plan(Waiting("short", 1, "m")) == []


def test_summaries_name_what_matters() -> None:
    assert "solo on a" in summarize_plan(Solo("a", "m", 5 * GB, 3))
    assert "waiting" in summarize_plan(Waiting("too little", 2 * GB, "m"))
    nodes = [node("host", 12, rtt=None), node("w1", 6, rtt=5.0), node("w2", 6, rtt=20.0)]
    assert "split across 3 nodes" in summarize_plan(plan_model(nodes, FACTS))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ModelError):
        ModelFacts("m", 0, 10)
    with pytest.raises(ModelError):
        ModelFacts("m", 10, 0)
    with pytest.raises(ConfigError):
        PlanConfig(rtt_hysteresis_ms=90.0)
    with pytest.raises(ConfigError):
        PlanConfig(fit_factor=0)
    with pytest.raises(ValueError, match="twice"):
        plan_model([node("a", 1), node("a", 2)], FACTS)


def test_pinned_host_hosts_even_with_less_capacity_and_splits_from_there() -> None:
    from mesh_llm.planning.planner import PlanConfig, plan_model
    from mesh_llm.planning.plans import ModelFacts, PlanNode, Solo, Split

    nodes = [
        PlanNode("small", 60, None, True),
        PlanNode("big", 200, 5.0, True),
    ]
    facts = ModelFacts("m", 100, 10)
    plan = plan_model(nodes, facts, PlanConfig(pinned_host="small"))
    assert isinstance(plan, Split) and plan.host == "small"
    assert [s.node_id for s in plan.shards] == ["small", "big"]
    assert sum(s.end_layer - s.start_layer for s in plan.shards) == 10
    solo = plan_model(
        [PlanNode("small", 500, None, True), PlanNode("big", 900, 5.0, True)],
        facts,
        PlanConfig(pinned_host="small"),
    )
    assert isinstance(solo, Solo) and solo.host == "small"


# ---------------------------------------------------------------------------------------------
# Who coordinates a model


def holders(nodes: list[PlanNode]) -> list[PlanNode]:
    return [n for n in nodes if usable(n) and n.has_model]


@PROPS
@given(st.data(), scenarios())
def test_elected_host_is_the_biggest_holder_whatever_the_order(data: st.DataObject, sc: Scenario) -> None:
    nodes, _ = sc
    shuffled = data.draw(st.permutations(nodes))
    elected = elect_host(shuffled, [])
    assert elected == elect_host(nodes, [])
    if not holders(nodes):
        assert elected is None
    else:
        assert elected == biggest(holders(nodes)).node_id


@PROPS
@given(st.data(), scenarios(min_nodes=2))
def test_a_settled_claimant_keeps_its_model_and_an_unsettled_one_yields(
    data: st.DataObject, sc: Scenario
) -> None:
    nodes, _ = sc
    claimant = data.draw(st.sampled_from(nodes))
    settled = elect_host(nodes, [HostClaim(claimant.node_id, settled=True)])
    unsettled = elect_host(nodes, [HostClaim(claimant.node_id, settled=False)])
    assert unsettled == elect_host(nodes, [])
    if usable(claimant):
        assert settled == claimant.node_id  # even when a bigger node is in the mesh
    else:
        assert settled == elect_host(nodes, [])  # a claimant that became a client or full does not count


def test_a_dead_hosts_model_goes_to_the_node_with_the_next_most_capacity() -> None:
    mesh = [node("a", 30), node("b", 20), node("c", 10), node("d", 40, has_model=False)]
    assert elect_host(mesh, []) == "a"  # d is bigger but has no copy of the GGUF
    assert elect_host(mesh, [HostClaim("a", settled=True)]) == "a"
    survivors = [n for n in mesh if n.node_id != "a"]
    assert elect_host(survivors, [HostClaim("a", settled=True)]) == "b"
    assert elect_host([node("x", 20), node("b", 20)], []) == "b"  # ties: smallest id
    # Two settled claims at once (a race): the better ranked keeps it, everywhere.
    assert elect_host(mesh, [HostClaim("c", True), HostClaim("b", True)]) == "b"
    assert elect_host([node("c", 10, client=True)], []) is None
