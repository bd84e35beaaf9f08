"""Which host gets a request (pure): match the model name, fail closed, prefer the least loaded,
and the host holding the request's prefix unless it is much busier (`AFFINITY_SLACK`)."""

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
    suspect: bool = False  # its node leaves pings unanswered though linked: tried last
    prefixes: frozenset[str] = frozenset()  # digests of conversations it served lately (api/prefix)


# The host holding a request's prefix gets it unless it carries more than this many requests
# more than the least-loaded ready host: a warm prefill saves more than waiting behind a couple
# of requests costs, but a pile-up on one host must spill over.
AFFINITY_SLACK = 2


def model_key(name: str) -> str:
    """Names compare without case and '-'/'_' differences, so 'smollm2-135m' finds 'SmolLM2-135M'."""
    return name.strip().lower().replace("_", "-")


def available_models(endpoints: Iterable[Endpoint]) -> list[str]:
    """Every distinct model name served anywhere, sorted."""
    return sorted({e.model for e in endpoints})


def choose(
    model: str, endpoints: Iterable[Endpoint], rotation: int = 0, prefix: str | None = None
) -> list[Endpoint]:
    """Order the ready hosts of `model` by preference; raise when there is none.

    Never substitutes another model: an unknown name raises ModelNotFound listing what exists.
    Hosts with a free request slot (or an unknown count) come before hosts whose slots are all
    busy, where a request would wait in a queue; then the least loaded first; equal loads rotate with `rotation` so requests
    spread over hosts. Suspect hosts (their node stopped answering pings) come after all others.
    A model known only in non-ready states raises NoHealthyHost.

    With `prefix` (a request's `prefix_digest`), the first host in that order that holds it goes
    first, unless its in-flight count exceeds the least-loaded ready host's by more than
    AFFINITY_SLACK; the rest keep their order behind it, for failover.
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
    order = sorted(
        ready, key=lambda e: (e.suspect, e.free_slots == 0, e.in_flight, (ready.index(e) - rotation) % n)
    )
    if prefix is None:
        return order
    least = min(e.in_flight for e in ready)
    for e in order:
        if prefix in e.prefixes and not e.suspect and e.in_flight <= least + AFFINITY_SLACK:
            return [e, *(o for o in order if o is not e)]
    return order
