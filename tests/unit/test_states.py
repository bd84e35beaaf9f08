"""Typed states: the records keep the words status and gossip show, and each machine has one
logged transition."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.models.states import Failed, PendingModels, Resolving
from mesh_llm.planning.plans import ModelFacts
from mesh_llm.planning.standby import PickingUp, StandbyIdle, StandbyMachine
from mesh_llm.split import SplitHost
from mesh_llm.split.states import (
    Loading,
    NoLinkToWorker,
    Planning,
    Serving,
    SplitFailed,
    WaitingForCapacity,
    WaitingForWorkers,
)


@pytest.mark.parametrize(
    ("state", "text"),
    [
        (Resolving(), "resolving"),
        (Failed("cannot serve x: no such file"), "failed: cannot serve x: no such file"),
        (Planning(), "planning"),
        (WaitingForCapacity("needs 9 GB, mesh has 4 GB"), "waiting for capacity: needs 9 GB, mesh has 4 GB"),
        (WaitingForWorkers(("aaaa1111", "bbbb2222")), "waiting for workers aaaa1111, bbbb2222"),
        (NoLinkToWorker("cccc3333"), "no link to worker cccc3333"),
        (Loading(), "loading"),
        (Serving(), "serving"),
        (SplitFailed("worker gone"), "failed: worker gone"),
    ],
)
def test_each_state_shows_the_words_status_and_gossip_always_showed(state: object, text: str) -> None:
    assert state.text == text  # type: ignore[attr-defined]


def test_pending_models_move_through_one_logged_transition(caplog: pytest.LogCaptureFixture) -> None:
    pending = PendingModels()
    with caplog.at_level(logging.INFO, logger="mesh_llm.models.states"):
        pending.set("b", Resolving())
        pending.set("a", Resolving())
        pending.set("a", Resolving())  # no change: not logged
        pending.set("b", Failed("cannot serve b: gone"))
        pending.set("a", None)
    assert [r.getMessage() for r in caplog.records] == [
        "model b: - -> resolving",
        "model a: - -> resolving",
        "model b: resolving -> failed: cannot serve b: gone",
        "model a: resolving -> -",
    ]
    assert pending.items() == [("b", Failed("cannot serve b: gone"))] and len(pending) == 1
    assert pending.failures() == ["cannot serve b: gone"]
    pending.set("b", None)
    assert not pending and pending.failures() == []


def test_failures_keep_the_order_models_were_asked_for() -> None:
    pending = PendingModels()
    for spec in ("z", "a", "m"):
        pending.set(spec, Failed(f"no {spec}"))
    assert pending.failures() == ["no z", "no a", "no m"]
    assert [spec for spec, _ in pending.items()] == ["a", "m", "z"]


def test_a_split_host_logs_each_change_of_state_once(caplog: pytest.LogCaptureFixture) -> None:
    host = SplitHost(ResolvedModel("M", Path("m.gguf"), 1000), ModelFacts("M", 1000, 4))
    assert host.state == Planning() and host.published()["state"] == "planning"
    with caplog.at_level(logging.INFO, logger="mesh_llm.split.states"):
        host.set_state(WaitingForWorkers(("aaaa1111",)))
        host.set_state(WaitingForWorkers(("aaaa1111",)))  # every reconcile says it again
        host.set_state(Loading())
        host.set_state(Serving())
    assert [r.getMessage() for r in caplog.records] == [
        "split host M: planning -> waiting for workers aaaa1111",
        "split host M: waiting for workers aaaa1111 -> loading",
        "split host M: loading -> serving",
    ]
    assert host.published()["state"] == "serving"


def test_a_standby_logs_picking_up_a_model_and_going_back_to_idle(caplog: pytest.LogCaptureFixture) -> None:
    machine = StandbyMachine()
    with caplog.at_level(logging.INFO, logger="mesh_llm.planning.standby"):
        machine.set(PickingUp("M"))
        machine.set(PickingUp("M"))  # no change, no line
        machine.set(StandbyIdle())
    assert [r.getMessage() for r in caplog.records] == [
        "standby: idle -> loading M",
        "standby: loading M -> idle",
    ]
    assert machine.state.model is None and PickingUp("M").model == "M"
