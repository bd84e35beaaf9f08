"""Status is a pure function of a snapshot: built here by hand, with no node, process or mesh."""

from __future__ import annotations

from pathlib import Path

from mesh_llm.mesh.gossip import ModelAd, NodeRecord, PeerStatus, PeerView
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.models.states import Failed, Resolving
from mesh_llm.node.status import (
    DemandSnapshot,
    Duty,
    LocalModel,
    MeshSnapshot,
    PeerSnapshot,
    StatusSnapshot,
    WaitingSplit,
    build_status,
)
from mesh_llm.planning.plans import ModelFacts
from mesh_llm.serving.hardware import Capacity
from mesh_llm.serving.model_server import BackendState, BackendStatus
from mesh_llm.split import SplitHost
from mesh_llm.split.states import WaitingForWorkers

ME = "a" * 64
PEER = "b" * 64
CAP = Capacity("ram", "cpu", 16 << 30, 8 << 30, 16 << 30, 12 << 30)


def snapshot(**fields: object) -> StatusSnapshot:
    base: dict[str, object] = {
        "node_id": ME, "started_at": 1000.0, "now": 1060.04, "monotonic": 500.0, "state": "idle",
        "role": "idle", "client": False, "api_host": "127.0.0.1", "api_port": None, "api_auth": False,
        "console_port": 3131, "capacity": CAP,
    }  # fmt: skip
    return StatusSnapshot(**{**base, **fields})  # type: ignore[arg-type]


def test_an_idle_node_without_a_mesh_has_the_full_shape_and_nothing_in_it() -> None:
    s = build_status(snapshot())
    assert set(s) == {
        "node_id", "short_id", "version", "state", "role", "client", "started_at", "uptime_s", "api",
        "console", "capacity", "ram", "models", "peers", "demand", "standby", "declined", "worker_of",
        "rpc_bytes_served", "in_flight", "requests_total", "invite_token", "mesh_id", "mesh_port", "quic",
        "nat", "relay", "discovery",
    }  # fmt: skip
    assert s["short_id"] == "a" * 8 and s["uptime_s"] == 60.0 and s["state"] == "idle"
    assert s["api"] == {"host": "127.0.0.1", "port": None, "url": None, "auth": False}
    assert s["models"] == s["peers"] == s["demand"] == s["worker_of"] == []
    assert s["invite_token"] is s["mesh_id"] is s["rpc_bytes_served"] is s["discovery"] is None
    assert s["nat"] is s["relay"] is None
    assert s["capacity"]["used_bytes"] == 0 and s["ram"] == {
        "total_bytes": 16 << 30,
        "available_bytes": 12 << 30,
    }


def test_local_servers_waiting_splits_and_pending_models_each_get_a_row() -> None:
    ready = BackendStatus("M", BackendState.READY, "/s/run/m.sock", 4242, 1, 1010.0)
    split = SplitHost(ResolvedModel("Big", Path("/m/big.gguf"), 9 << 30), ModelFacts("Big", 9 << 30, 32))
    split.set_state(WaitingForWorkers(("bbbbbbbb",)))
    s = build_status(
        snapshot(
            state="starting", role="host", api_host="0.0.0.0", api_port=9337, api_auth=True,
            models=(LocalModel("M", ready, "/m/m.gguf", 1 << 30, in_flight=2, requests=7, load_s=3.14159),),
            waiting_splits=(
                WaitingSplit("Big", split.state.text, "/m/big.gguf", 9 << 30, 0, {"mode": "split", "epoch": 1}),
            ),
            pending=(("zz", Failed("cannot serve zz: no such model")), ("qq", Resolving())),
            in_flight=2, requests_total=7,
        )
    )  # fmt: skip
    assert s["api"]["url"] == "http://127.0.0.1:9337/v1" and s["api"]["auth"] is True
    assert [(m["name"], m["state"], m["message"]) for m in s["models"]] == [
        ("M", "ready", ""),
        ("Big", "waiting", "waiting for workers bbbbbbbb"),
        ("qq", "resolving", "resolving"),
        ("zz", "failed", "failed: cannot serve zz: no such model"),
    ]
    local = s["models"][0]
    assert local["ready"] and local["pid"] == 4242 and local["restarts"] == 1 and local["host"] == ME
    assert (local["socket"], local["port"]) == ("/s/run/m.sock", None)  # no TCP port any more
    assert (
        local["mode"] == "solo"
        and local["load_s"] == 3.14
        and (local["in_flight"], local["requests"]) == (2, 7)
    )
    assert s["models"][1]["mode"] == "split" and s["models"][1]["path"] == "/m/big.gguf"
    assert all(m["local"] and not m["ready"] for m in s["models"][1:])
    assert s["capacity"]["used_bytes"] == 1 << 30 and (s["in_flight"], s["requests_total"]) == (2, 7)


def test_peers_their_models_and_split_claims_come_from_their_records() -> None:
    # The peer hosts "Big" as a split (its claim is what its SplitHost publishes) and is still
    # placing "Huge", which has a claim but no model ad yet.
    big = SplitHost(ResolvedModel("Big", Path("big.gguf"), 9 << 30), ModelFacts("Big", 9 << 30, 32))
    huge = SplitHost(ResolvedModel("Huge", Path("huge.gguf"), 90 << 30), ModelFacts("Huge", 90 << 30, 80))
    huge.set_state(WaitingForWorkers(("cccccccc",)))
    record = NodeRecord(
        node_id=PEER, incarnation=1, software="0.1.0", role="host", capacity_bytes=32 << 30,
        models=(ModelAd("Big", ready=True, in_flight=1, free_slots=3), ModelAd("Small", ready=False)),
        extra={"splits": {"Big": big.published(), "Huge": huge.published()}},
    )  # fmt: skip
    view = PeerView(record, heartbeat=9, last_seen=497.5, connected=False, status=PeerStatus.ALIVE)
    mesh = MeshSnapshot("TOKEN", "m" * 16, 7000, "aioquic",
                        (PeerSnapshot(PEER, view, 12.345, 10.0, {"Big": 4}),), 10, 20)  # fmt: skip
    s = build_status(snapshot(mesh=mesh))
    assert (s["invite_token"], s["mesh_id"], s["mesh_port"], s["quic"]) == (
        "TOKEN",
        "m" * 16,
        7000,
        "aioquic",
    )
    assert s["rpc_bytes_served"] == {"from_host": 10, "to_host": 20}
    (peer,) = s["peers"]
    assert peer["state"] == "alive (via gossip)" and peer["rtt_ms"] == 12.35 and peer["last_seen_s"] == 2.5
    assert peer["path"] is peer["relay"] is None  # no link of its own

    rows = {m["name"]: m for m in s["models"]}
    assert (
        rows["Big"]["ready"]
        and rows["Big"]["requests"] == 4
        and rows["Big"]["mode"] == big.published()["mode"]
    )
    assert rows["Big"]["slots"] == {"slots_free": 3} and rows["Big"]["split_state"] == "planning"
    assert rows["Small"]["state"] == "loading" and rows["Small"]["mode"] == "solo"
    assert rows["Huge"]["state"] == "waiting" and rows["Huge"]["message"] == "waiting for workers cccccccc"
    assert all(not m["local"] and m["host"] == PEER for m in s["models"])


def test_each_peer_shows_its_path_and_the_node_its_nat() -> None:
    record = NodeRecord(node_id=PEER, incarnation=1, software="0.1.0")
    view = PeerView(record, heartbeat=1, last_seen=499.0, connected=True, status=PeerStatus.ALIVE)
    nat = {
        "type": "endpoint-independent",
        "addresses": [{"address": "203.0.113.7:4000", "kind": "advertised"}],
    }
    mesh = MeshSnapshot(
        "TOKEN", "m" * 16, 7000, "qh3", (PeerSnapshot(PEER, view, 30.0, 29.0, {}, "relayed", ME),),
        nat=nat, relaying=2, relayed_bytes=12345,
    )  # fmt: skip
    s = build_status(snapshot(mesh=mesh))
    (peer,) = s["peers"]
    assert (peer["path"], peer["relay"], peer["state"]) == ("relayed", ME, "alive")
    assert s["nat"] == nat and s["relay"] == {"paths": 2, "bytes": 12345}


def test_demand_marks_models_wanted_that_nobody_serves() -> None:
    demand = DemandSnapshot(
        rates={"Wanted": 3.0, "Served": 9.0, "Rare": 0.2}, totals={"Wanted": 30, "Served": 90},
        served={"Served": [PEER, ME]}, wanted_min_rpm=1.0,
    )  # fmt: skip
    s = build_status(snapshot(demand=demand))
    assert [(d["model"], d["wanted"], d["total"], d["servers"]) for d in s["demand"]] == [
        ("Rare", False, 0, []),
        ("Served", False, 90, sorted([PEER, ME])),
        ("Wanted", True, 30, []),
    ]


def test_a_worker_shows_its_duties_and_a_standby_its_state() -> None:
    duty = Duty("Big", PEER, 2, (16, 32), "ready", 50052, 3)
    s = build_status(snapshot(role="standby", standby="warming Big", declined=("z", "a"), duties=(duty,)))
    assert s["standby"] == "warming Big" and s["declined"] == ["a", "z"]
    assert s["worker_of"] == [
        {"model": "Big", "host": PEER, "epoch": 2, "layers": [16, 32], "state": "ready", "port": 50052,
         "prefilled_files": 3}
    ]  # fmt: skip
    assert build_status(snapshot(role="host", standby="warming Big"))["standby"] is None


def test_status_and_log_lines_stay_whole_when_not_written_to_a_terminal() -> None:
    import io
    import logging

    from rich.console import Console

    from mesh_llm.cli._output import unwrapped_off_terminal
    from mesh_llm.cli.logs import setup_logging
    from mesh_llm.cli.render import status_view

    long_name = "Qwen2.5-Coder-32B-Instruct-Q4_K_M-with-a-long-suffix"
    body = {
        "short_id": "abcd1234", "capacity": {},
        "models": [{"name": long_name, "state": "ready", "host": "abcd1234ffff", "mode": "solo"}],
    }  # fmt: skip
    piped = unwrapped_off_terminal(Console(file=io.StringIO()))  # a StringIO is no terminal
    piped.print(status_view(body))
    text = piped.file.getvalue()  # type: ignore[attr-defined]
    assert any(long_name in line for line in text.splitlines()), text
    assert max(len(line) for line in text.splitlines()) < 300  # natural width, not padded

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging(False, "text", Console(file=io.StringIO()))  # rich assumes 80 columns here
        message = "POST /v1/chat/completions " + "x" * 200
        logging.getLogger("mesh_llm.access").info(message)
        out = root.handlers[0].stream.getvalue()  # type: ignore[attr-defined]
    finally:
        root.handlers[:], root.level = handlers, level
    (line,) = out.splitlines()
    assert line.endswith(message) and " INFO " in line


def test_status_shows_each_prefilling_slots_progress() -> None:
    import io

    from rich.console import Console

    from mesh_llm.cli.render import status_view

    slots = {
        "slots_total": 2, "slots_busy": 2, "queued": 0, "tokens_per_s": 3.5,
        "slots": [
            {"id": 0, "busy": True, "cached_tokens": 40, "prefill": None},
            {"id": 1, "busy": True, "cached_tokens": 3072, "prefill": {"done": 3072, "total": 7600}},
        ],
    }  # fmt: skip
    body = {
        "short_id": "abcd1234", "capacity": {},
        "models": [{"name": "M", "state": "ready", "mode": "solo", "local": True, "slots": slots}],
    }  # fmt: skip
    console = Console(file=io.StringIO(), width=200)
    console.print(status_view(body))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "slot 1: 3,072 / 7,600" in text and "slot 0:" not in text
    assert "2/2" in text
