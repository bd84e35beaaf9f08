"""Which host gets a request (pure): match the model name, fail closed, prefer the least loaded."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mesh_llm.errors import ModelNotFound, NoHealthyHost


@dataclass(frozen=True)
class Endpoint:
    """One place a model is served: a node and whether it takes requests now."""

    model: str
    node_id: str
    ready: bool
    in_flight: int = 0
    local: bool = False
    state: str = "ready"  # what the model server is doing, for error messages
    free_slots: int | None = None  # request slots free on the host's engine; None: not known


def model_key(name: str) -> str:
    """Names compare without case and '-'/'_' differences, so 'smollm2-135m' finds 'SmolLM2-135M'."""
    return name.strip().lower().replace("_", "-")


def available_models(endpoints: Iterable[Endpoint]) -> list[str]:
    """Every distinct model name served anywhere, sorted."""
    return sorted({e.model for e in endpoints})


def choose(model: str, endpoints: Iterable[Endpoint], rotation: int = 0) -> list[Endpoint]:
    """Order the ready hosts of `model` by preference; raise when there is none.

    Never substitutes another model: an unknown name raises ModelNotFound listing what exists.
    Hosts with a free request slot (or an unknown count) come before hosts whose slots are all
    busy, where a request would wait in a queue; then the least loaded first; equal loads rotate with `rotation` so requests
    spread over hosts. A model known only in non-ready states raises NoHealthyHost.
    """
    endpoints = list(endpoints)
    key = model_key(model)
    matching = [e for e in endpoints if model_key(e.model) == key]
    if not matching:
        raise ModelNotFound(model, available_models(endpoints))
    ready = sorted((e for e in matching if e.ready), key=lambda e: e.node_id)
    if not ready:
        states = ", ".join(sorted({e.state for e in matching}))
        hosted = any(e.node_id for e in matching)
        raise NoHealthyHost(matching[0].model, f"its servers are {states}" if hosted else states)
    n = len(ready)
    return sorted(ready, key=lambda e: (e.free_slots == 0, e.in_flight, (ready.index(e) - rotation) % n))
