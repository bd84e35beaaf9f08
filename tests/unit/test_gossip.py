"""Gossip engine: records on the wire, merge rules, failure detection, and whole meshes in memory.

Everything runs on a simulated clock. `SimNet` moves messages between engines the way the node
and transport will (with loss, kills, goodbyes, restarts and dialing of peers learned from
gossip), deterministically for a given seed, so a 50-node mesh goes through churn and settles
in well under a second.
"""

from __future__ import annotations

import json
import random
import string
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.errors import ConfigError, MalformedFrame
from mesh_llm.mesh.gossip import (
    MAX_MESSAGE_BYTES,
    Departure,
    EngineState,
    FailureDetector,
    GossipConfig,
    GossipEngine,
    GossipEvent,
    ModelAd,
    NodeRecord,
    Outgoing,
    PeerJoined,
    PeerLeft,
    PeerRestarted,
    PeerStatus,
    PeerUpdated,
)

DEFAULTS = GossipConfig()
REQUIREMENT_S = 10.0  # a kill -9'd node must leave every view within this


def make_record(node_id: str, incarnation: int = 1, **fields: Any) -> NodeRecord:
    fields.setdefault("software", "mesh-llm 0.1.0")
    fields.setdefault("addresses", (f"10.0.0.{len(node_id)}:7000",))
    return NodeRecord(node_id=node_id, incarnation=incarnation, **fields)


def scaled(factor: float) -> GossipConfig:
    """The default timings stretched by `factor`: the same protocol rounds over a longer span."""
    return GossipConfig(
        push_interval_s=DEFAULTS.push_interval_s * factor,
        suspect_after_s=DEFAULTS.suspect_after_s * factor,
        dead_after_s=DEFAULTS.dead_after_s * factor,
        relayed_dead_after_s=DEFAULTS.relayed_dead_after_s * factor,
        tombstone_s=DEFAULTS.tombstone_s * factor,
    )


# --------------------------------------------------------------------------------------------
# An in-memory network.


class SimNet:
    """Engines on one simulated clock, linked the way the transport would link them.

    Messages sent during a step are delivered (or lost) within that step, replies included: link
    latency is tiny next to a push interval. Like the node, it dials every peer it learns of
    unless `dial_learned` is off. It keeps score of how views changed: removals of nodes that
    were alive (false removals) and how long each killed node took to leave each view.
    """

    def __init__(self, config: GossipConfig, *, seed: int, loss: float = 0.0, dial_learned: bool = True):
        self.config = config
        self.rng = random.Random(seed)
        self.loss = loss
        self.dial_learned = dial_learned
        self.now = 0.0
        self.engines: dict[str, GossipEngine] = {}
        self.links: dict[str, set[str]] = {}
        self.incarnations: dict[str, int] = {}
        self.events: dict[str, list[tuple[float, GossipEvent]]] = {}
        self.killed_at: dict[tuple[str, int], float] = {}
        self.false_removals: list[tuple[str, PeerLeft]] = []
        self.removal_delays: list[float] = []
        self.cut: set[str] = set()  # nodes whose every message is lost (a partition)
        self._queue: deque[tuple[str, str, Any]] = deque()

    # ---- membership -------------------------------------------------------------------------

    def start(self, node_id: str, seeds: Iterable[str] = ()) -> GossipEngine:
        """Start (or restart, with a higher incarnation) a node and link it to `seeds`."""
        incarnation = self.incarnations.get(node_id, 0) + 1
        self.incarnations[node_id] = incarnation
        engine = GossipEngine(make_record(node_id, incarnation), self.config)
        self.engines[node_id] = engine
        self.links[node_id] = set()
        self.events[node_id] = []
        for seed in seeds:
            self.connect(node_id, seed)
        return engine

    def connect(self, a: str, b: str) -> None:
        if a == b or b in self.links[a] or b not in self.engines:
            return
        self.links[a].add(b)
        self.links[b].add(a)
        self.send(a, self.engines[a].peer_connected(b, self.now))
        self.send(b, self.engines[b].peer_connected(a, self.now))

    def kill(self, node_id: str) -> None:
        """kill -9: no goodbye, and the peers' transports do not notice either."""
        self.killed_at[(node_id, self.incarnations[node_id])] = self.now
        del self.engines[node_id]
        for peer in self.links.pop(node_id):
            self.links[peer].discard(node_id)

    def leave(self, node_id: str) -> None:
        """Clean shutdown: goodbye first, then the links close."""
        self.send(node_id, self.engines[node_id].leave(self.now))
        self.flush()
        for peer in self.links[node_id]:
            self.engines[peer].peer_disconnected(node_id, self.now)
        self.kill(node_id)
        del self.killed_at[(node_id, self.incarnations[node_id])]

    def heal(self) -> None:
        """Link up components that departures split off, as a cut-off node re-dials known peers."""
        seen: set[str] = set()
        components: list[list[str]] = []
        for node_id in sorted(self.engines):
            if node_id in seen:
                continue
            component, stack = [], [node_id]
            seen.add(node_id)
            while stack:
                here = stack.pop()
                component.append(here)
                fresh = self.links[here] - seen
                seen |= fresh
                stack.extend(sorted(fresh))
            components.append(component)
        main = max(components, key=len)
        for component in components:
            if component is not main:
                self.connect(self.rng.choice(component), self.rng.choice(main))

    # ---- message movement -------------------------------------------------------------------

    def send(self, src: str, out: list[Outgoing]) -> None:
        for dst, msg in out:
            self._queue.append((src, dst, msg))

    def flush(self) -> None:
        queue, engines, links, rand, loss = self._queue, self.engines, self.links, self.rng.random, self.loss
        while queue:
            src, dst, msg = queue.popleft()
            if dst not in engines or src not in links[dst] or (loss and rand() < loss):
                continue
            if self.cut and (src in self.cut or dst in self.cut):
                continue
            out = engines[dst].receive(src, msg, self.now)
            if out:
                self.send(dst, out)

    def step(self, dt: float) -> None:
        self.now += dt
        for node_id, engine in self.engines.items():
            out = engine.tick(self.now)
            if out:
                self.send(node_id, out)
        self.flush()
        self.drain_events()
        self.flush()

    def drain_events(self) -> None:
        for node_id, engine in list(self.engines.items()):
            while (event := engine.next_event()) is not None:
                self.events[node_id].append((self.now, event))
                if isinstance(event, PeerLeft):
                    self._score_removal(node_id, event)
                elif self.dial_learned and event.record.node_id in self.engines:
                    self.connect(node_id, event.record.node_id)

    def _score_removal(self, observer: str, event: PeerLeft) -> None:
        alive = self.engines.get(event.node_id)
        if alive is not None and alive.self_record.incarnation == event.incarnation:
            self.false_removals.append((observer, event))
        killed_at = self.killed_at.get((event.node_id, event.incarnation))
        if killed_at is not None:
            self.removal_delays.append(self.now - killed_at)

    def run(self, seconds: float, dt: float | None = None) -> None:
        dt = dt or self.config.push_interval_s / 4
        end = self.now + seconds - 1e-9
        while self.now < end:
            self.step(dt)

    # ---- observations -----------------------------------------------------------------------

    def truth(self) -> dict[str, tuple[int, int]]:
        return {node_id: engine.self_record.key for node_id, engine in self.engines.items()}

    def view(self, node_id: str) -> dict[str, tuple[int, int]]:
        engine = self.engines[node_id]
        seen = {peer: view.record.key for peer, view in engine.peers().items()}
        seen[node_id] = engine.self_record.key
        return seen

    def converged(self) -> bool:
        """Every live node sees exactly the live nodes, each at its latest (incarnation, version)."""
        truth = self.truth()
        return all(self.view(node_id) == truth for node_id in self.engines)

    def run_until_converged(self, limit_s: float) -> float:
        """Step until converged; return how long it took. Fails if that exceeds `limit_s`."""
        start = self.now
        while not self.converged():  # checked once per push interval: it costs a round of its own
            assert self.now - start <= limit_s, f"not converged {limit_s} s after churn stopped"
            self.run(self.config.push_interval_s)
        return self.now - start


def node_ids(n: int) -> list[str]:
    return [f"n{i:02d}" for i in range(n)]


def full_mesh(n: int, config: GossipConfig = DEFAULTS, *, seed: int = 1, loss: float = 0.0) -> SimNet:
    """n nodes that have all dialed each other (without loss), settled; then `loss` applies."""
    net = SimNet(config, seed=seed)
    ids = node_ids(n)
    for node_id in ids:
        net.start(node_id)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            net.connect(a, b)
    net.flush()
    assert net.converged()
    net.run(2 * config.push_interval_s)  # into the steady rhythm of heartbeats
    net.loss = loss
    return net


def sparse_graph(n: int, degree: int, *, seed: int, loss: float = 0.0) -> SimNet:
    """n nodes, each linked to `degree` random earlier ones, that do not dial whom they learn of."""
    net = SimNet(DEFAULTS, seed=seed, loss=loss, dial_learned=False)
    for node_id in node_ids(n):
        earlier = sorted(net.engines)
        net.start(node_id, net.rng.sample(earlier, min(degree, len(earlier))))
    net.flush()
    net.run(4)
    return net


CHURN = ("kill", "update", "leave", "restart", "kill", "update", "restart", "quiet")


def churn(net: SimNet, rounds: int, *, sparse_degree: int | None = None, floor: int = 35) -> Counter[str]:
    """One event per push interval, cycling through CHURN, on random nodes."""
    rng = net.rng
    down: list[str] = []
    done: Counter[str] = Counter()
    for i in range(rounds):
        live = sorted(net.engines)
        action = CHURN[i % len(CHURN)]
        if action in ("kill", "leave") and len(live) > floor:
            victim = rng.choice(live)
            net.kill(victim) if action == "kill" else net.leave(victim)
            down.append(victim)
        elif action == "restart" and down:
            back = down.pop(rng.randrange(len(down)))
            seeds = rng.sample(live, sparse_degree) if sparse_degree else [rng.choice(live)]
            net.start(back, seeds)
        elif action == "update":
            node = rng.choice(live)
            demand = {"qwen": rng.randrange(1000)}
            net.send(node, net.engines[node].update_self(net.now, demand=demand))
        else:
            action = "quiet"
        done[action] += 1
        if sparse_degree:
            net.heal()
        net.run(net.config.push_interval_s)
    return done


# --------------------------------------------------------------------------------------------
# Records on the wire.

names = st.text(alphabet=string.ascii_letters + string.digits + "-._:/", min_size=1, max_size=24)
counts = st.integers(min_value=0, max_value=2**63 - 1)
ports = st.integers(min_value=0, max_value=65535)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
MODEL_KEYS = frozenset(ModelAd("m", True).to_dict())
RECORD_KEYS = frozenset(NodeRecord("n", 1).to_dict())


def unknown_fields(known: frozenset[str]) -> st.SearchStrategy[dict[str, Any]]:
    key = st.text(min_size=1, max_size=8).filter(lambda k: k not in known)
    return st.dictionaries(key, json_values, max_size=2)


model_ads = st.builds(
    ModelAd,
    name=names,
    ready=st.booleans(),
    role=st.sampled_from(["host", "worker"]),
    layers=st.none() | st.tuples(st.integers(0, 200), st.integers(0, 200)).map(lambda p: (min(p), max(p))),
    port=st.none() | ports,
    in_flight=st.integers(0, 10_000),
    extra=unknown_fields(MODEL_KEYS),
)
records = st.builds(
    NodeRecord,
    node_id=names,
    incarnation=counts,
    version=counts,
    heartbeat=counts,
    software=st.text(max_size=30),
    addresses=st.lists(st.text(max_size=30), max_size=4).map(tuple),
    role=st.sampled_from(["host", "worker", "client", "standby", "idle"]),
    capacity_bytes=counts,
    models=st.lists(model_ads, max_size=3).map(tuple),
    on_disk=st.lists(names, max_size=4).map(tuple),
    api_port=ports,
    console_port=ports,
    demand=st.dictionaries(names, st.integers(0, 10**9), max_size=4),
    client=st.booleans(),
    extra=unknown_fields(RECORD_KEYS),
)


def over_the_wire(value: Any) -> Any:
    return json.loads(json.dumps(value))


@settings(max_examples=20, deadline=None, database=None)
@given(records)
def test_record_survives_a_json_round_trip(record: NodeRecord) -> None:
    assert NodeRecord.from_dict(over_the_wire(record.to_dict())) == record


@settings(max_examples=15, deadline=None, database=None)
@given(records, unknown_fields(RECORD_KEYS), unknown_fields(MODEL_KEYS))
def test_unknown_fields_from_newer_nodes_are_kept_and_passed_on(
    record: NodeRecord, newer: dict[str, Any], newer_model: dict[str, Any]
) -> None:
    wire = over_the_wire(record.to_dict())
    wire.update(newer)
    wire["models"].append(ModelAd("future-model", True).to_dict() | newer_model)
    decoded = NodeRecord.from_dict(over_the_wire(wire))
    assert {k: decoded.extra[k] for k in newer} == newer
    assert dict(decoded.models[-1].extra) == newer_model
    assert over_the_wire(decoded.to_dict()) == over_the_wire(wire)


def test_fields_an_older_node_lacks_take_defaults() -> None:
    decoded = NodeRecord.from_dict({"node_id": "old", "incarnation": 5, "version": 2, "heartbeat": 9})
    assert decoded == NodeRecord("old", 5, version=2, heartbeat=9)
    assert decoded.models == () and dict(decoded.demand) == {} and decoded.role == "idle"


def valid_wire() -> dict[str, Any]:
    model = ModelAd("qwen", True, layers=(0, 12), port=8080)
    return over_the_wire(make_record("a", models=(model,), demand={"qwen": 3}).to_dict())


BROKEN_RECORDS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("not an object", lambda d: [d]),
    ("missing node_id", lambda d: {k: v for k, v in d.items() if k != "node_id"}),
    ("missing incarnation", lambda d: {k: v for k, v in d.items() if k != "incarnation"}),
    ("missing version", lambda d: {k: v for k, v in d.items() if k != "version"}),
    ("missing heartbeat", lambda d: {k: v for k, v in d.items() if k != "heartbeat"}),
    ("empty node_id", lambda d: {**d, "node_id": ""}),
    ("numeric node_id", lambda d: {**d, "node_id": 7}),
    ("string incarnation", lambda d: {**d, "incarnation": "1"}),
    ("boolean version", lambda d: {**d, "version": True}),
    ("negative heartbeat", lambda d: {**d, "heartbeat": -1}),
    ("float capacity", lambda d: {**d, "capacity_bytes": 1.5}),
    ("huge incarnation", lambda d: {**d, "incarnation": 2**64}),
    ("port out of range", lambda d: {**d, "api_port": 70000}),
    ("models not a list", lambda d: {**d, "models": "qwen"}),
    ("model without name", lambda d: {**d, "models": [{"ready": True}]}),
    ("model ready not bool", lambda d: {**d, "models": [{"name": "q", "ready": "yes"}]}),
    ("layers backwards", lambda d: {**d, "models": [{"name": "q", "ready": True, "layers": [9, 2]}]}),
    ("layers not a pair", lambda d: {**d, "models": [{"name": "q", "ready": True, "layers": [1, 2, 3]}]}),
    ("address not text", lambda d: {**d, "addresses": [1234]}),
    ("too many addresses", lambda d: {**d, "addresses": ["x"] * 17}),
    ("demand not a map", lambda d: {**d, "demand": [1, 2]}),
    ("negative demand", lambda d: {**d, "demand": {"qwen": -3}}),
    ("client not bool", lambda d: {**d, "client": 1}),
    ("oversized", lambda d: {**d, "padding": "x" * 20_000}),
]


@pytest.mark.parametrize("breakage", [b for _, b in BROKEN_RECORDS], ids=[n for n, _ in BROKEN_RECORDS])
def test_structurally_invalid_record_is_a_malformed_frame(breakage: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(MalformedFrame):
        NodeRecord.from_dict(breakage(valid_wire()))


@settings(max_examples=30, deadline=None, database=None)
@given(st.sampled_from(sorted(RECORD_KEYS)), json_values)
def test_any_json_in_any_field_decodes_or_raises_malformed_frame(key: str, value: Any) -> None:
    wire = valid_wire()
    wire[key] = value
    try:
        NodeRecord.from_dict(wire)
    except MalformedFrame:
        pass


def test_records_cannot_be_changed_through_their_mappings() -> None:
    demand = {"qwen": 1}
    record = make_record("a", demand=demand)
    demand["qwen"] = 99
    assert record.demand["qwen"] == 1
    with pytest.raises(TypeError):
        record.demand["qwen"] = 5  # type: ignore[index]


def test_own_record_that_peers_would_reject_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        GossipEngine(make_record("a", addresses=tuple(f"h{i}:1" for i in range(40))))
    engine = GossipEngine(make_record("a"))
    with pytest.raises(ConfigError):
        engine.update_self(0.0, on_disk=tuple(f"model-{i}.gguf" for i in range(500)))
    with pytest.raises(ValueError):
        engine.update_self(0.0, version=99)


# --------------------------------------------------------------------------------------------
# Configuration and the failure detector alone.


@pytest.mark.parametrize(
    "fields",
    [
        {"push_interval_s": 0},
        {"suspect_after_s": 6.0},
        {"dead_after_s": 1.5},
        {"relayed_dead_after_s": 4.0},
        {"tombstone_s": 6.0},
        {"digest_fanout": 0},
        {"max_nodes": 5000},
        {"max_records_per_message": 100},
    ],
)
def test_inconsistent_config_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        GossipConfig(**fields)


def test_detector_suspects_then_expires_a_silent_node() -> None:
    detector = FailureDetector(suspect_after_s=2.5, dead_after_s=5.0)
    detector.observe("x", heartbeat=1, now=10.0, direct=True)
    assert detector.sweep(12.0) == [] and detector.status("x") is PeerStatus.ALIVE
    assert detector.sweep(12.6) == [] and detector.status("x") is PeerStatus.SUSPECT
    detector.observe("x", heartbeat=2, now=13.0, direct=True)
    assert detector.status("x") is PeerStatus.ALIVE
    assert detector.sweep(17.9) == []
    assert detector.sweep(18.0) == [("x", 2)]


def test_detector_dates_relayed_heartbeats_from_their_first_sighting() -> None:
    detector = FailureDetector(suspect_after_s=2.5, dead_after_s=5.0)
    detector.observe("x", heartbeat=1, now=0.0, direct=True)
    # A relay reports beat 2, which it saw 4 s ago: x has been silent since t=6, not t=10.
    assert detector.observe("x", heartbeat=2, now=10.0, age_s=4.0)
    assert detector.last_seen("x") == 6.0
    # The same beat seen more recently by another relay moves the sighting forward, never back.
    assert detector.observe("x", heartbeat=2, now=10.0, age_s=1.0)
    assert not detector.observe("x", heartbeat=2, now=10.0, age_s=3.0)
    assert not detector.observe("x", heartbeat=1, now=10.0)
    assert detector.last_seen("x") == 9.0


def test_detector_gives_nodes_heard_only_through_relays_a_grace_period() -> None:
    detector = FailureDetector(suspect_after_s=2.5, dead_after_s=5.0, relay_grace_s=3.0)
    detector.observe("direct", heartbeat=1, now=0.0, direct=True)
    detector.observe("relayed", heartbeat=1, now=0.0)
    assert detector.sweep(5.0) == [("direct", 1)]
    assert detector.sweep(7.9) == []
    assert detector.sweep(8.0) == [("relayed", 1)]


# --------------------------------------------------------------------------------------------
# Small meshes: the protocol step by step.


def test_linked_engines_learn_each_other_and_announce_it() -> None:
    net = SimNet(DEFAULTS, seed=1)
    net.start("a")
    net.start("b", ["a"])
    net.flush()
    net.drain_events()
    assert net.converged()
    (_, event), *_ = net.events["a"]
    assert isinstance(event, PeerJoined) and event.record.addresses == ("10.0.0.1:7000",)
    view = net.engines["a"].peers()["b"]
    assert view.connected and view.status is PeerStatus.ALIVE and view.last_seen == 0.0


def test_peer_learned_through_gossip_is_announced_so_the_node_can_dial_it() -> None:
    net = SimNet(DEFAULTS, seed=1, dial_learned=False)
    net.start("a")
    net.start("b", ["a"])
    net.start("c", ["b"])
    net.run(3)
    joined = [e.record.node_id for _, e in net.events["a"] if isinstance(e, PeerJoined)]
    assert joined == ["b", "c"]
    assert not net.engines["a"].peers()["c"].connected


def test_update_self_reaches_every_peer_in_one_step_in_a_full_mesh() -> None:
    net = full_mesh(20)
    net.send("n07", net.engines["n07"].update_self(net.now, role="host", capacity_bytes=24 << 30))
    net.flush()
    for node_id in net.engines.keys() - {"n07"}:
        seen = net.engines[node_id].peers()["n07"].record
        assert (seen.version, seen.role, seen.capacity_bytes) == (1, "host", 24 << 30)
    net.drain_events()
    updates = [e for _, e in net.events["n00"] if isinstance(e, PeerUpdated)]
    assert [e.record.node_id for e in updates] == ["n07"]


def test_lost_update_is_repaired_within_one_push_interval() -> None:
    net = full_mesh(10)
    net.engines["n03"].update_self(net.now, demand={"qwen": 42})  # every push is lost
    assert not net.converged()
    net.run(DEFAULTS.push_interval_s)
    assert net.converged()


def test_gossip_about_oneself_is_ignored() -> None:
    net = full_mesh(3)
    engine = net.engines["n00"]
    forged = make_record("n00", incarnation=99, version=7, role="host")
    engine.receive("n01", {"t": "records", "records": [{"r": forged.to_dict(), "age_ms": 0}]}, net.now)
    engine.receive("n01", {"t": "digest", "entries": [], "gone": [["n00", 1, 5000]]}, net.now)
    assert engine.self_record.key == (1, 0) and engine.self_record.role == "idle"
    assert net.converged()


def test_goodbye_from_an_older_incarnation_does_not_remove_the_restarted_node() -> None:
    net = full_mesh(3)
    net.kill("n02")
    net.start("n02", ["n00", "n01"])
    net.flush()
    net.engines["n00"].receive("n02", {"t": "bye", "inc": 1}, net.now)
    assert net.engines["n00"].peers()["n02"].record.incarnation == 2


def test_unknown_message_types_are_ignored() -> None:
    net = full_mesh(3)
    assert net.engines["n00"].receive("n01", {"t": "shiny-new-thing", "x": [1]}, net.now) == []
    assert net.engines["n00"].receive("n01", {"no type": 1}, net.now) == []


BROKEN_MESSAGES: list[dict[str, Any]] = [
    {"t": "hb", "inc": "1", "ver": 0, "hb": 3},
    {"t": "hb", "inc": 1},
    {"t": "digest", "entries": "all of them"},
    {"t": "digest", "entries": [["n09", 1, 0, 3, 0], ["n08", 1, 0]]},
    {"t": "digest", "entries": [["n09", 1, 0, 3, -5]]},
    {"t": "digest", "entries": [], "gone": [["n09"]]},
    {"t": "digest", "entries": [], "ask": "yes"},
    {"t": "pull", "ids": [3]},
    {"t": "records", "records": [{"r": {"node_id": "n09"}, "age_ms": 0}]},
    {"t": "records", "records": [{"r": make_record("n09").to_dict()}]},
    {"t": "records", "records": [{"r": make_record("n09").to_dict(), "age_ms": 0}, "junk"]},
    {"t": "bye"},
]


@pytest.mark.parametrize("msg", BROKEN_MESSAGES, ids=[json.dumps(m)[:40] for m in BROKEN_MESSAGES])
def test_malformed_message_raises_and_applies_nothing(msg: dict[str, Any]) -> None:
    net = full_mesh(3)
    before = net.view("n00")
    with pytest.raises(MalformedFrame):
        net.engines["n00"].receive("n01", msg, net.now)
    assert net.view("n00") == before and net.engines["n00"].next_event() is None
    with pytest.raises(MalformedFrame):
        net.engines["n00"].receive("n01", ["not", "a", "dict"], net.now)


fuzzed_messages = st.fixed_dictionaries(
    {"t": st.sampled_from(["hb", "digest", "pull", "records", "bye"])},
    optional={
        key: json_values | st.lists(st.lists(json_scalars, max_size=6), max_size=3)
        for key in ("inc", "ver", "hb", "entries", "gone", "ask", "ids", "records")
    },
)


@settings(max_examples=40, deadline=None, database=None)
@given(fuzzed_messages)
def test_any_message_is_handled_or_refused_with_malformed_frame(msg: dict[str, Any]) -> None:
    engine = GossipEngine(make_record("a"))
    engine.peer_connected("b", 0.0)
    engine.receive("b", {"t": "records", "records": [{"r": make_record("b").to_dict(), "age_ms": 0}]}, 0.0)
    before = {k: v.record for k, v in engine.peers().items()}
    try:
        out = engine.receive("b", msg, 0.5)
    except MalformedFrame:
        assert {k: v.record for k, v in engine.peers().items()} == before
    else:
        assert all(isinstance(m, dict) and "t" in m for _, m in out)


def test_killed_node_leaves_every_view_within_ten_seconds() -> None:
    net = full_mesh(20, seed=5, loss=0.05)
    net.run(10)
    net.kill("n13")
    killed_at = net.now
    net.run(REQUIREMENT_S, dt=0.1)
    assert all("n13" not in engine.peers() for engine in net.engines.values())
    assert len(net.removal_delays) == 19
    # Defaults: dead after 5 s of silence, swept once a second; the last beat precedes the kill.
    assert max(net.removal_delays) <= DEFAULTS.dead_after_s + DEFAULTS.push_interval_s + 0.1
    assert net.false_removals == []
    assert all(
        isinstance(e, PeerLeft) and e.reason is Departure.TIMEOUT
        for events in net.events.values()
        for when, e in events
        if when > killed_at
    )


def test_silent_node_is_suspect_before_it_is_removed() -> None:
    net = full_mesh(5)
    net.kill("n04")
    net.run(3.5, dt=0.1)
    assert {e.peers()["n04"].status for e in net.engines.values()} == {PeerStatus.SUSPECT}
    assert {e.peers()["n03"].status for e in net.engines.values() if e.node_id != "n03"} == {PeerStatus.ALIVE}


def test_goodbye_removes_the_node_from_every_view_at_once() -> None:
    net = full_mesh(10)
    net.leave("n04")
    net.drain_events()
    for node_id, engine in net.engines.items():
        assert "n04" not in engine.peers()
        assert net.events[node_id][-1][1] == PeerLeft("n04", 1, Departure.BYE)


def test_goodbye_reaches_peers_without_a_link_through_digests() -> None:
    net = SimNet(DEFAULTS, seed=1, dial_learned=False)
    net.start("a")
    net.start("b", ["a"])
    net.start("c", ["b"])
    net.run(3)
    net.leave("c")
    net.run(2)  # well before any timeout
    assert "c" not in net.engines["a"].peers()
    assert net.events["a"][-1][1] == PeerLeft("c", 1, Departure.BYE)


def capture(net: SimNet, src: str, dst: str, msg: dict[str, Any]) -> list[dict[str, Any]]:
    """What `dst` answers `src`."""
    return [m for _, m in net.engines[dst].receive(src, msg, net.now)]


def test_stale_gossip_does_not_resurrect_a_node_that_said_goodbye() -> None:
    net = full_mesh(4)
    stale_records = capture(net, "n01", "n02", {"t": "pull", "ids": ["n03"]})
    stale_digest = {"t": "digest", "entries": [["n03", 1, 0, 999, 0]], "gone": []}
    net.leave("n03")
    net.drain_events()
    for msg in [*stale_records, stale_digest]:
        replies = net.engines["n00"].receive("n01", msg, net.now)
        assert all(m["t"] != "pull" for _, m in replies)
    assert "n03" not in net.engines["n00"].peers()
    assert net.engines["n00"].next_event() is None


def test_stale_gossip_does_not_resurrect_a_timed_out_node() -> None:
    net = full_mesh(4)
    net.run(2)
    stale_records = capture(net, "n01", "n02", {"t": "pull", "ids": ["n03"]})
    net.kill("n03")
    net.run(DEFAULTS.dead_after_s + 2)
    assert "n03" not in net.engines["n00"].peers()
    for msg in stale_records:  # a delayed copy of n03's last news, claiming to be fresh
        net.engines["n00"].receive("n01", msg, net.now)
    assert "n03" not in net.engines["n00"].peers()


def test_falsely_suspected_node_returns_with_its_next_heartbeat() -> None:
    net = full_mesh(6)
    net.cut = {"n05"}
    net.run(DEFAULTS.dead_after_s + 2)
    assert all("n05" not in e.peers() for n, e in net.engines.items() if n != "n05")
    net.cut = set()
    net.run(2 * DEFAULTS.push_interval_s)
    assert net.converged()
    assert isinstance(net.events["n00"][-1][1], PeerJoined)


def test_restart_with_higher_incarnation_rejoins_after_goodbye() -> None:
    net = full_mesh(5)
    net.leave("n02")
    net.run(1)
    net.start("n02", ["n00"])
    net.run(2)
    assert net.converged()
    assert all(e.peers()["n02"].record.incarnation == 2 for n, e in net.engines.items() if n != "n02")


def test_restart_before_timeout_replaces_the_old_incarnation() -> None:
    net = full_mesh(5)
    net.kill("n02")
    net.start("n02", ["n00"])  # back within a second, before anyone noticed
    net.run(2)
    assert net.converged()
    restarted = [e for _, e in net.events["n03"] if isinstance(e, PeerRestarted)]
    assert [e.record.incarnation for e in restarted] == [2]
    net.run(DEFAULTS.tombstone_s)
    assert net.converged() and net.false_removals == []


def test_engine_that_left_is_silent() -> None:
    net = full_mesh(3)
    engine = net.engines["n00"]
    assert engine.leave(net.now) and engine.state is EngineState.LEFT
    assert engine.leave(net.now) == [] and engine.tick(net.now + 5) == []
    assert engine.update_self(net.now, role="host") == [] and engine.get_timer() is None
    assert engine.receive("n01", {"t": "pull", "ids": ["n00"]}, net.now) == []


def test_messages_fit_in_one_frame_at_the_protocol_limits() -> None:
    def long_id(i: int) -> str:
        return f"{i:04d}".ljust(128, "k")

    top = 2**63 - 1
    config = GossipConfig(max_nodes=1023, max_introduced_per_peer=1023, max_records_per_message=32)
    engine = GossipEngine(make_record(long_id(0), incarnation=top), config)
    engine.peer_connected(long_id(1), 0.0)
    padding = "p" * 15_000  # records near the 16 KiB limit
    for start in range(1, 1024, 32):
        batch = [
            make_record(long_id(i), top, version=top, heartbeat=top, extra={"x": padding if i < 33 else ""})
            for i in range(start, min(start + 32, 1024))
        ]
        msg = {"t": "records", "records": [{"r": r.to_dict(), "age_ms": 0} for r in batch]}
        engine.receive(long_id(1), msg, 0.0)
    gone = [[long_id(i), top, top] for i in range(2000, 3024)]
    engine.receive(long_id(1), {"t": "digest", "entries": [], "gone": gone}, 0.0)
    assert len(engine.peers()) == 1023

    out = engine.tick(1.0) + engine.tick(2.0)
    out += engine.receive(long_id(1), {"t": "pull", "ids": [long_id(i) for i in range(1, 1024)]}, 2.0)
    kinds = {m["t"] for _, m in out}
    assert kinds == {"hb", "digest", "records"}
    assert max(len(json.dumps(m)) for _, m in out) <= MAX_MESSAGE_BYTES


# --------------------------------------------------------------------------------------------
# Whole meshes.


def test_fifty_node_full_mesh_converges_after_an_hour_of_churn_and_loss() -> None:
    # An hour at default timings is 3600 rounds x 2450 heartbeats: minutes of CPU. The same
    # protocol stretched 120x (a heartbeat every 2 minutes) covers the hour in 30 rounds, which
    # is what the convergence argument is about. Churn runs for the first 32 minutes.
    factor = 120
    config = scaled(factor)
    net = full_mesh(50, config, seed=7, loss=0.05)
    done = churn(net, rounds=2 * len(CHURN))
    net.run_until_converged(limit_s=config.dead_after_s + 3 * config.push_interval_s)
    net.run(3600 - net.now)
    assert net.converged()
    assert min(done[action] for action in ("kill", "leave", "restart", "update")) >= 2
    assert net.false_removals == []
    assert net.removal_delays and max(net.removal_delays) <= REQUIREMENT_S * factor


def test_fifty_node_sparse_graph_converges_after_churn_and_loss() -> None:
    # Nobody dials learned peers here, so news of most nodes travels only through relays.
    net = sparse_graph(50, degree=3, seed=3, loss=0.03)
    done = churn(net, rounds=len(CHURN), sparse_degree=3)
    assert min(done[action] for action in ("kill", "leave", "restart", "update")) >= 1
    net.run_until_converged(limit_s=DEFAULTS.relayed_dead_after_s + 3 * DEFAULTS.push_interval_s)
    net.run(2)
    assert net.converged()
    assert net.false_removals == []
    assert net.removal_delays and max(net.removal_delays) <= REQUIREMENT_S
