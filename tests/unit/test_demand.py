"""Demand counters and standby promotion, against synthetic demand over simulated time."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.errors import ConfigError
from mesh_llm.planning.demand import (
    DEMAND_HALF_LIFE_S,
    Decision,
    DemandConfig,
    DemandTable,
    PromotionReason,
    StandbyInfo,
    assign_standby_work,
    choose_standby_work,
)

GB = 1_000_000_000
SIZES = {"small": 4 * GB, "mid": 10 * GB, "big": 40 * GB}
PROPS = settings(max_examples=30, database=None, deadline=None)


def standby(node_id: str, cap_gb: int, on_disk: tuple[str, ...] = (), **kw: bool) -> StandbyInfo:
    return StandbyInfo(node_id, cap_gb * GB, frozenset(on_disk), **kw)


# ---------------------------------------------------------------------------------------------
# A simulated mesh: every node counts its own API's requests and gossips its counters


class SimMesh:
    """Nodes with their own DemandTable; ``tick`` delivers every node's counters to every other."""

    def __init__(self, node_ids: list[str]) -> None:
        self.tables = {n: DemandTable(n) for n in node_ids}

    def requests(self, at_node: str, model: str, now: float, n: int = 1) -> None:
        self.tables[at_node].record(model, now, n)

    def tick(self, now: float) -> None:
        for sender, table in self.tables.items():
            counters = table.own_counters()
            for receiver, other in self.tables.items():
                if receiver != sender:
                    other.merge(sender, counters, now)

    def run(self, start: float, end: float, traffic: dict[tuple[str, str], float], step: float = 2.0) -> None:
        """From ``start`` to ``end``: requests at ``rpm`` per (node, model), gossip every ``step`` s."""
        t = start
        owed = dict.fromkeys(traffic, Fraction(0))  # exact, so totals come out whole
        while t < end:
            t += step
            for key, rpm in traffic.items():
                owed[key] += Fraction(rpm) * Fraction(step) / 60
                whole = int(owed[key])
                if whole:
                    self.requests(key[0], key[1], t, whole)
                    owed[key] -= whole
            self.tick(t)


# ---------------------------------------------------------------------------------------------
# Demand table


def test_rate_converges_to_the_steady_request_rate() -> None:
    table = DemandTable("a")
    for i in range(1, 301):  # one request every 6 s for 30 minutes: 10 per minute
        table.record("m", now=i * 6.0)
    assert table.rate("m", now=30 * 60.0) == pytest.approx(10.0, rel=0.05)
    assert table.total("m") == 300


def test_rate_halves_every_half_life_once_requests_stop() -> None:
    table = DemandTable("a")
    table.record("m", now=0.0, n=100)
    start = table.rate("m", 0.0)
    assert start == pytest.approx(100 * math.log(2) / DEMAND_HALF_LIFE_S * 60)
    assert table.rate("m", DEMAND_HALF_LIFE_S) == pytest.approx(start / 2)
    assert table.rate("m", 5 * DEMAND_HALF_LIFE_S) == pytest.approx(start / 32)
    # A clock stepping back never inflates the estimate.
    assert table.rate("m", -100.0) == pytest.approx(start)


def test_all_nodes_agree_on_mesh_wide_totals() -> None:
    mesh = SimMesh(["a", "b", "c"])
    mesh.tick(0.0)
    mesh.run(0, 300, {("a", "m"): 12, ("b", "m"): 6, ("c", "other"): 3})
    totals = [t.totals() for t in mesh.tables.values()]
    assert totals[0] == totals[1] == totals[2] == {"m": 90, "other": 15}
    rates = [t.rate("m", 300.0) for t in mesh.tables.values()]
    assert max(rates) - min(rates) < 0.5  # each saw the deltas within one gossip round


@PROPS
@given(st.lists(st.integers(0, 2**16 - 1), max_size=30), st.integers(0, 2**32 - 1))
def test_merge_ignores_duplicate_and_out_of_order_records(words: list[int], seed: int) -> None:
    # Each word is one burst: at node p or q, for model x or y, of 1-5 requests.
    events = [("pq"[w & 1], "xy"[w >> 1 & 1], 1 + (w >> 2) % 5) for w in words]
    rnd = random.Random(seed)
    sources = {"p": DemandTable("p"), "q": DemandTable("q")}
    observer = DemandTable("o")
    for node_id, table in sources.items():
        observer.merge(node_id, table.own_counters(), 0.0)  # baseline: empty
    snapshots: list[tuple[str, dict[str, int]]] = []
    for node_id, model, n in events:
        sources[node_id].record(model, 1.0, n)
        snapshots.append((node_id, sources[node_id].own_counters()))
    # Deliver every snapshot, some twice, in any order.
    deliveries = snapshots + rnd.sample(snapshots, len(snapshots) // 2)
    rnd.shuffle(deliveries)
    for node_id, counters in deliveries:
        observer.merge(node_id, counters, 2.0)
    for model in ("x", "y"):
        truth = sum(t.total(model) for t in sources.values())
        assert observer.total(model) == truth
        # Every request became demand exactly once, whatever the delivery order.
        assert observer.rate(model, 2.0) == pytest.approx(
            truth * math.log(2) / DEMAND_HALF_LIFE_S * 60, abs=1e-9
        )


def test_first_record_from_a_peer_is_a_baseline_not_a_burst() -> None:
    table = DemandTable("a")
    table.merge("b", {"m": 5000}, now=0.0)
    assert table.total("m") == 5000
    assert table.rate("m", 0.0) == 0.0
    table.merge("b", {"m": 5003}, now=1.0)
    assert table.rate("m", 1.0) == pytest.approx(3 * math.log(2) / DEMAND_HALF_LIFE_S * 60, rel=1e-3)


def test_restarted_peer_is_counted_afresh_and_stale_generations_ignored() -> None:
    table = DemandTable("a")
    table.merge("b", {"m": 100}, now=0.0, generation=1)
    table.merge("b", {"m": 4}, now=10.0, generation=2)  # b restarted and has seen 4 requests
    assert table.total("m") == 4
    assert table.rate("m", 10.0) == pytest.approx(4 * math.log(2) / DEMAND_HALF_LIFE_S * 60)
    table.merge("b", {"m": 150}, now=11.0, generation=1)  # a delayed record from before
    assert table.total("m") == 4


def test_own_counters_are_not_overwritten_by_echoes() -> None:
    table = DemandTable("a")
    table.record("m", 0.0, 3)
    table.merge("a", {"m": 99}, 1.0)
    assert table.own_counters() == {"m": 3}
    assert table.total("m") == 3


def test_forgotten_peer_leaves_the_totals_but_its_demand_still_decays() -> None:
    table = DemandTable("a")
    table.merge("b", {"m": 0}, 0.0)
    table.merge("b", {"m": 10}, 1.0)
    table.forget("b")
    assert table.total("m") == 0
    assert table.rate("m", 1.0) > 0


def test_wanted_models_are_those_in_demand_that_nobody_serves() -> None:
    table = DemandTable("a")
    table.record("served", 0.0, 50)
    table.record("hot-unserved", 0.0, 50)
    table.record("warm-unserved", 0.0, 5)
    table.record("typo", 0.0, 1)  # one request: below the floor
    assert table.wanted({"served": ["x"], "hot-unserved": []}, 0.0) == ["hot-unserved", "warm-unserved"]


def test_prune_forgets_only_fully_decayed_estimates() -> None:
    table = DemandTable("a")
    table.record("old", 0.0, 5)
    table.record("new", 3600.0, 5)
    table.prune(3600.0)
    assert set(table.rates(3600.0)) == {"new"}
    assert table.total("old") == 5  # totals are history, not demand


# ---------------------------------------------------------------------------------------------
# Rule 1: unserved models in demand


def test_standby_with_the_file_serves_an_unserved_model() -> None:
    decision = choose_standby_work("s", [standby("s", 16, ("mid",))], {}, {"mid": 5.0}, SIZES)
    assert decision == Decision("s", "mid", PromotionReason.UNSERVED, download=False, rate_rpm=5.0)


def test_standby_without_the_file_downloads_it_unless_it_may_not() -> None:
    d = choose_standby_work("s", [standby("s", 16)], {}, {"mid": 5.0}, SIZES)
    assert d is not None and d.download
    assert choose_standby_work("s", [standby("s", 16, can_download=False)], {}, {"mid": 5.0}, SIZES) is None


def test_model_that_does_not_fit_or_is_unknown_is_not_taken() -> None:
    assert (
        choose_standby_work("s", [standby("s", 10, ("mid",))], {}, {"mid": 5.0}, SIZES) is None
    )  # 11 GB needed
    assert choose_standby_work("s", [standby("s", 99)], {}, {"unknown": 50.0}, SIZES) is None


def test_clients_are_never_promoted() -> None:
    assert (
        choose_standby_work("c", [standby("c", 99, ("mid",), client=True)], {}, {"mid": 50.0}, SIZES) is None
    )


def test_little_demand_promotes_nobody() -> None:
    assert choose_standby_work("s", [standby("s", 99)], {}, {"mid": 0.4}, SIZES) is None


def test_standby_with_the_file_then_the_tightest_fit_is_chosen() -> None:
    pool = [standby("huge", 80), standby("snug", 12), standby("roomy", 30)]
    assert assign_standby_work(pool, {}, {"mid": 5.0}, SIZES)["snug"].model == "mid"
    pool.append(standby("has-it", 60, ("mid",)))
    assert set(assign_standby_work(pool, {}, {"mid": 5.0}, SIZES)) == {"has-it"}


def test_each_unserved_model_gets_exactly_one_standby_hottest_first() -> None:
    pool = [standby("s1", 50), standby("s2", 50), standby("s3", 50)]
    work = assign_standby_work(pool, {}, {"small": 2.0, "mid": 8.0}, SIZES)
    assert sorted(d.model for d in work.values()) == ["mid", "small"]
    # Only one 50 GB standby and two wanted models: the hotter one gets it.
    work = assign_standby_work(pool[:1], {}, {"small": 2.0, "mid": 8.0}, SIZES)
    assert [d.model for d in work.values()] == ["mid"]


def test_model_being_loaded_counts_as_served() -> None:
    pool = [standby("s1", 50), standby("s2", 50)]
    assert assign_standby_work(pool, {"mid": ["loader"]}, {"mid": 5.0}, SIZES) == {}


def test_lost_last_server_gets_a_capable_standby_within_a_minute() -> None:
    mesh = SimMesh(["server", "client", "tiny", "able"])
    mesh.tick(0.0)
    # Ten minutes of modest traffic through a client node while "server" serves "mid".
    mesh.run(0, 600, {("client", "mid"): 2.0})
    served: dict[str, list[str]] = {"mid": ["server"]}
    pool = [standby("tiny", 8), standby("able", 16, ("mid",))]
    rates = mesh.tables["able"].rates(600.0)
    assert choose_standby_work("able", pool, served, rates, SIZES) is None  # served: nothing to do

    # The server dies and the clients give up: no new requests at all.
    del mesh.tables["server"]
    chosen_at = None
    for t in range(605, 661, 5):  # standbys evaluate every 5 s
        rates = mesh.tables["able"].rates(float(t))
        if choose_standby_work("able", pool, {"mid": []}, rates, SIZES) is not None:
            chosen_at = t
            break
        assert (
            choose_standby_work("tiny", pool, {"mid": []}, mesh.tables["tiny"].rates(float(t)), SIZES) is None
        )
    assert chosen_at is not None and chosen_at <= 660


# ---------------------------------------------------------------------------------------------
# Rule 2: hot models


def test_hot_model_draws_a_standby() -> None:
    work = assign_standby_work(
        [standby("s", 16, ("mid",))],
        {"mid": ["a"], "small": ["b"]},
        {"mid": 30.0, "small": 2.0},
        SIZES,
    )
    assert work == {"s": Decision("s", "mid", PromotionReason.HOT, download=False, rate_rpm=30.0)}


def test_model_served_alone_needs_only_the_load_threshold() -> None:
    assert choose_standby_work("s", [standby("s", 16)], {"mid": ["a"]}, {"mid": 12.0}, SIZES) is not None


@pytest.mark.parametrize(
    ("mid_rpm", "small_rpm", "promoted"),
    [
        (30.0, 10.0, True),  # 30 per server is 3x the coldest: exactly enough
        (29.0, 10.0, False),  # hot, but not 3x the coldest model's load
        (9.9, 0.0, False),  # far hotter than the rest, but under 10 per server
        (10.0, 0.0, True),
    ],
)
def test_hot_thresholds(mid_rpm: float, small_rpm: float, promoted: bool) -> None:
    rates = {"mid": mid_rpm, "small": small_rpm}
    d = choose_standby_work("s", [standby("s", 16)], {"mid": ["a"], "small": ["b"]}, rates, SIZES)
    assert (d is not None) is promoted


def test_load_is_per_server() -> None:
    served = {"mid": ["a", "b", "c"], "small": ["d"]}
    # 45 per minute over three servers is 15 each: hot enough, but only 1.5x the coldest.
    assert choose_standby_work("s", [standby("s", 16)], served, {"mid": 45.0, "small": 10.0}, SIZES) is None
    assert (
        choose_standby_work("s", [standby("s", 16)], served, {"mid": 45.0, "small": 1.0}, SIZES) is not None
    )


def test_standbys_join_a_very_hot_model_until_its_load_is_spread() -> None:
    pool = [standby(f"s{i}", 16) for i in range(6)]
    work = assign_standby_work(pool, {"mid": ["a"]}, {"mid": 45.0}, SIZES)
    # 45/1, 45/2, 45/3, 45/4 are at least 10; at five servers it is 9 each.
    assert len(work) == 4
    assert {d.model for d in work.values()} == {"mid"}


def test_unserved_models_come_before_hot_ones() -> None:
    work = assign_standby_work([standby("s", 16)], {"mid": ["a"]}, {"mid": 100.0, "small": 1.0}, SIZES)
    assert work["s"].model == "small" and work["s"].reason is PromotionReason.UNSERVED


def test_hot_promotion_stops_once_demand_decays() -> None:
    mesh = SimMesh(["a", "s"])
    mesh.tick(0.0)
    mesh.run(0, 900, {("a", "mid"): 40.0})
    pool = [standby("s", 16)]
    assert choose_standby_work("s", pool, {"mid": ["a"]}, mesh.tables["s"].rates(900.0), SIZES) is not None
    mesh.run(900, 1500, {})  # ten quiet minutes: 40 -> about 4 per minute
    assert choose_standby_work("s", pool, {"mid": ["a"]}, mesh.tables["s"].rates(1500.0), SIZES) is None


def test_stale_interest_stops_pinning_a_standby() -> None:
    mesh = SimMesh(["client", "s"])
    mesh.tick(0.0)
    mesh.run(0, 60, {("client", "big"): 30.0})  # a burst of interest in a model nobody serves
    pool = [standby("s", 48)]
    assert choose_standby_work("s", pool, {}, mesh.tables["s"].rates(60.0), SIZES) is not None
    mesh.run(60, 60 + 30 * 60, {})  # half an hour of silence
    rates = mesh.tables["s"].rates(1860.0)
    assert choose_standby_work("s", pool, {}, rates, SIZES) is None
    assert mesh.tables["s"].wanted({}, 1860.0) == []


# ---------------------------------------------------------------------------------------------
# One slot, one standby


MODELS = sorted(SIZES)
SERVERS = ["a", "x", "y"]


def _decode_standby(index: int, word: int) -> StandbyInfo:
    """One random word -> one standby (one draw each keeps hypothesis fast).

    Bits 0-5: capacity 0-63 GB. Bits 6-8: which models are on disk. Bits 9-10: may download
    (three in four). Bits 11-13: client (one in eight). Bit 14: the first standby is "a", which
    may also be listed as serving something. Bits 15-22: id prefix, unrelated to list order.
    """
    return StandbyInfo(
        node_id="a" if index == 0 and word >> 14 & 1 else f"{(word >> 15) & 0xFF:02x}{index}",
        capacity_bytes=(word & 0x3F) * GB,
        on_disk=frozenset(m for i, m in enumerate(MODELS) if word >> (6 + i) & 1),
        can_download=(word >> 9) & 3 != 0,
        client=(word >> 11) & 7 == 7,
    )


standby_pools = st.lists(st.integers(0, 2**32 - 1), max_size=8).map(
    lambda ws: [_decode_standby(i, w) for i, w in enumerate(ws)]
)
# Per model, a 3-bit mask of which of SERVERS serve it (an empty list: it lost its servers).
served_maps = st.integers(0, 2 ** (3 * len(MODELS)) - 1).map(
    lambda bits: {
        m: [n for j, n in enumerate(SERVERS) if bits >> (3 * i + j) & 1] for i, m in enumerate(MODELS)
    }
)
# Requests per minute in 0.1 steps up to 200 (0 = no entry), plus a model of unknown size.
rate_maps = st.lists(st.integers(0, 2000), min_size=len(MODELS) + 1, max_size=len(MODELS) + 1).map(
    lambda vs: {m: v / 10 for m, v in zip([*MODELS, "unknown"], vs, strict=True) if v}
)


@PROPS
@given(st.data(), standby_pools, served_maps, rate_maps)
def test_no_two_standbys_take_one_slot_and_every_node_agrees(
    data: st.DataObject,
    pool: list[StandbyInfo],
    served: dict[str, list[str]],
    rates: dict[str, float],
) -> None:
    work = assign_standby_work(pool, served, rates, SIZES)
    # Every standby, whatever order it lists the others in, reaches the same assignment.
    shuffled = data.draw(st.permutations(pool))
    for s in pool:
        assert choose_standby_work(s.node_id, shuffled, served, rates, SIZES) == work.get(s.node_id)
    by_id = {s.node_id: s for s in pool}
    unserved = [d.model for d in work.values() if d.reason is PromotionReason.UNSERVED]
    assert len(unserved) == len(set(unserved))  # one standby per unserved model
    for d in work.values():
        s = by_id[d.node_id]
        assert not s.client
        assert s.capacity_bytes * 10 >= SIZES[d.model] * 11
        assert d.model in s.on_disk or s.can_download
        assert d.rate_rpm >= DemandConfig().wanted_min_rpm
        if d.reason is PromotionReason.UNSERVED:
            assert not served.get(d.model)
        assert not any(d.node_id in ids for ids in served.values())  # already busy
    # Once the chosen standbys serve, the same demand asks nothing more of the others.
    after = {m: list(ids) for m, ids in served.items()}
    for d in work.values():
        after.setdefault(d.model, []).append(d.node_id)
    assert assign_standby_work([s for s in pool if s.node_id not in work], after, rates, SIZES) == {}


def test_duplicate_standbys_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        assign_standby_work([standby("s", 16), standby("s", 32)], {}, {"mid": 5.0}, SIZES)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        DemandConfig(half_life_s=0)
    with pytest.raises(ConfigError):
        DemandConfig(hot_ratio=0.5)
    with pytest.raises(ConfigError):
        DemandConfig(wanted_min_rpm=0)


def test_a_model_asked_for_just_now_goes_to_a_standby_that_has_it_on_disk() -> None:
    table = DemandTable("a")
    table.record("small", 100.0)  # one request: far below wanted_min_rpm
    assert table.rates(100.0)["small"] < DemandConfig().wanted_min_rpm
    assert table.recent(100.0) == {"small"} and table.recent(100.0 + 61) == frozenset()
    pool = [standby("far", 8, ()), standby("near", 8, ("small",))]
    got = assign_standby_work(pool, {}, table.rates(100.0), SIZES, recent=table.recent(100.0))
    assert list(got) == ["near"] and got["near"].reason is PromotionReason.UNSERVED
    # A stray request starts no download: without the GGUF on disk nobody takes it.
    assert assign_standby_work([standby("far", 8)], {}, table.rates(100.0), SIZES, recent={"small"}) == {}


def test_a_standby_that_declined_a_model_is_never_given_it() -> None:
    rates = {"small": 30.0}
    decliner = StandbyInfo("a", 8 * GB, frozenset({"small"}), declined=frozenset({"small"}))
    other = standby("b", 16, ("small",))
    got = assign_standby_work([decliner, other], {}, rates, SIZES)
    assert list(got) == ["b"]  # not "a", though its tighter fit would win otherwise
    assert assign_standby_work([decliner], {}, rates, SIZES) == {}


def test_unserved_comes_before_hot() -> None:
    rates = {"small": 500.0, "mid": 1.0}
    got = assign_standby_work([standby("s", 16, ("small", "mid"))], {"small": ["x"]}, rates, SIZES)
    assert got["s"].model == "mid" and got["s"].reason is PromotionReason.UNSERVED
