"""What a split host does next, decided from a snapshot of itself and the mesh (no processes)."""

from __future__ import annotations

from dataclasses import replace

from mesh_llm.planning.planner import PlanConfig
from mesh_llm.planning.plans import ModelFacts, Solo, Split, Waiting
from mesh_llm.split._decisions import HostSituation, StartServer, decide_host
from mesh_llm.split._election import Member, MeshView
from mesh_llm.split.states import Loading, Serving, WaitingForCapacity, WaitingForWorkers

A, B = "a" * 64, "b" * 64
GB = 1 << 30
BIG = ModelFacts("Big", 12 * GB, 32)


def mesh(capacity: int, *peers: Member) -> MeshView:
    return MeshView(A, capacity, peers={p.node_id: p for p in peers})


def worker(*ready: tuple[str, str, int]) -> Member:
    return Member(B, 8 * GB, frozenset({"Big"}), rtt_min_ms=2.0, ready_workers=frozenset(ready))


def test_a_model_that_fits_starts_solo_at_epoch_one() -> None:
    step = decide_host(HostSituation("Big", BIG, False, 0), mesh(64 * GB), PlanConfig())
    assert isinstance(step.plan, Solo) and step.replanned and step.epoch == 1
    assert step.state == Loading() and step.start == StartServer()


def test_a_mesh_too_small_waits_for_capacity() -> None:
    step = decide_host(HostSituation("Big", BIG, False, 0), mesh(4 * GB), PlanConfig())
    assert (
        isinstance(step.plan, Waiting) and isinstance(step.state, WaitingForCapacity) and step.start is None
    )


def test_a_split_waits_for_its_workers_then_starts_with_their_layers() -> None:
    first = decide_host(HostSituation("Big", BIG, False, 0), mesh(8 * GB, worker()), PlanConfig())
    assert isinstance(first.plan, Split) and first.epoch == 1
    assert first.state == WaitingForWorkers((B[:8],)) and first.start is None
    # The worker advertises itself ready for this host and epoch: the host starts its server.
    settled = HostSituation("Big", BIG, False, first.epoch, first.plan)
    second = decide_host(settled, mesh(8 * GB, worker(("Big", A, 1))), PlanConfig())
    assert not second.replanned and second.epoch == 1 and second.state == Loading()
    counts = tuple(s.end_layer - s.start_layer for s in first.plan.shards)
    assert second.start == StartServer((B,), counts) and sum(counts) == 32
    # A worker ready for an older epoch does not count.
    stale = decide_host(settled, mesh(8 * GB, worker(("Big", A, 0))), PlanConfig())
    assert stale.state == WaitingForWorkers((B[:8],))


def test_a_running_server_is_kept_while_the_plan_holds() -> None:
    plan = decide_host(HostSituation("Big", BIG, False, 0), mesh(64 * GB), PlanConfig()).plan
    running = HostSituation("Big", BIG, False, 1, plan, has_server=True, server_ready=True)
    step = decide_host(running, mesh(64 * GB), PlanConfig())
    assert not step.replanned and step.epoch == 1 and step.state == Serving() and step.start is None
    loading = decide_host(replace(running, server_ready=False), mesh(64 * GB), PlanConfig())
    assert loading.state == Loading()


def test_a_restarted_split_server_lost_a_worker_and_replans_in_a_new_epoch() -> None:
    plan = decide_host(HostSituation("Big", BIG, False, 0), mesh(8 * GB, worker()), PlanConfig()).plan
    lost = HostSituation("Big", BIG, False, 1, plan, has_server=True, server_restarted=True)
    step = decide_host(lost, mesh(8 * GB, worker(("Big", A, 1))), PlanConfig())
    assert step.replanned and step.epoch == 2
    assert step.state == WaitingForWorkers((B[:8],))  # the worker must come back for epoch 2


def test_a_worker_leaving_the_mesh_moves_the_plan_to_a_new_epoch() -> None:
    plan = decide_host(HostSituation("Big", BIG, False, 0), mesh(8 * GB, worker()), PlanConfig()).plan
    serving = HostSituation("Big", BIG, False, 1, plan, has_server=True, server_ready=True)
    step = decide_host(serving, mesh(8 * GB), PlanConfig())
    assert step.replanned and step.epoch == 2 and isinstance(step.plan, Waiting)


def test_force_split_splits_a_model_that_would_fit() -> None:
    step = decide_host(HostSituation("Big", BIG, True, 0), mesh(64 * GB, worker()), PlanConfig())
    assert isinstance(step.plan, Split)


def test_a_preview_plans_from_the_host_the_mesh_would_elect() -> None:
    from mesh_llm.split._preview import preview_plan

    big_peer = Member(B, 64 * GB, frozenset({"Big"}), rtt_min_ms=3.0)
    out = preview_plan(
        mesh(8 * GB, big_peer), BIG, 11 * GB, None, PlanConfig(), force=False, rtt_to=lambda _: 3.0
    )
    assert out["mode"] == "solo" and out["size_bytes"] == 11 * GB and out["n_layers"] == 32
    assert [r["node_id"] for r in out["rows"]] == [B]
    forced = preview_plan(
        mesh(8 * GB, big_peer), BIG, 11 * GB, None, PlanConfig(), force=True, rtt_to=lambda _: 3.0
    )
    assert forced["mode"] == "split" and forced["rows"][0]["node_id"] == B
