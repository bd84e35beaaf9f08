"""The plan the mesh would choose for a model right now, as `mesh-llm plan` shows it (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mesh_llm.planning.planner import PlanConfig, plan_model
from mesh_llm.planning.plans import ModelFacts, Waiting, describe_plan
from mesh_llm.split._decisions import Plan, mode, plan_config
from mesh_llm.split._election import MeshView, elected, plan_nodes


def preview_plan(
    view: MeshView,
    facts: ModelFacts,
    size_bytes: int,
    current: Plan | None,
    base: PlanConfig,
    *,
    force: bool,
    rtt_to: Callable[[str], float | None],
) -> dict[str, Any]:
    """The plan a host already runs (`current`), else the one the elected host would choose.

    `facts` are the model's (its memory with the KV cache); `size_bytes` is its file's size.

    The host is the one the election names; RTTs are this node's own, so a preview asked on
    another node than that host is an estimate where links differ.
    """
    plan = current
    if plan is None:
        nodes = plan_nodes(view, facts.name)
        host = elected(view, facts.name) or view.me
        if host != view.me:
            # RTTs are measured from the host: ours to it stands in for theirs to us.
            to_host = rtt_to(host)
            nodes = [
                replace(n, rtt_ms=to_host)
                if n.node_id == view.me
                else replace(n, rtt_ms=None if n.node_id == host else n.rtt_ms)
                for n in nodes
            ]
        plan = plan_model(nodes, facts, plan_config(base, force=force, host=host))
    return {
        "model": facts.name,
        "size_bytes": size_bytes,
        "n_layers": facts.n_layers,
        "mode": mode(plan),
        "reason": plan.reason if isinstance(plan, Waiting) else None,
        "rows": [
            {
                "node_id": r.node_id,
                "role": r.role,
                "start_layer": r.start_layer,
                "end_layer": r.end_layer,
                "bytes": r.bytes_estimate,
            }
            for r in describe_plan(plan)
        ],
    }
