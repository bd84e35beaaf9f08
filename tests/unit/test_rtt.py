"""The RTT estimator: latest, smoothed, windowed minimum; and a stalled second does not re-plan."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.peer.rtt import RttEstimator
from mesh_llm.planning.planner import PlanConfig, plan_model, replan
from mesh_llm.planning.plans import ModelFacts, PlanNode, Split

GB = 10**9


def test_unmeasured_is_none_not_zero() -> None:
    est = RttEstimator()
    assert est.latest is None and est.smoothed is None and est.minimum(0.0) is None


def test_the_minimum_ignores_a_stall_and_follows_a_route_change() -> None:
    est = RttEstimator(window_s=30.0)
    for t in range(10):
        est.sample(0.002, float(t))
    est.sample(1.0, 10.0)  # one stalled second on either event loop
    assert est.latest == 1.0 and est.smoothed is not None and est.smoothed > 0.1
    assert est.minimum(10.0) == 0.002
    for t in range(11, 60):  # the route really changed: 40 ms from now on
        est.sample(0.040, float(t))
    assert est.minimum(60.0) == pytest.approx(0.040)


def test_with_no_fresh_samples_the_last_one_stands() -> None:
    est = RttEstimator(window_s=5.0)
    est.sample(0.003, 0.0)
    assert est.minimum(1000.0) == 0.003


@given(st.lists(st.tuples(st.floats(0, 2), st.floats(0, 1)), min_size=1, max_size=60))
def test_minimum_is_the_smallest_sample_in_the_window(steps: list[tuple[float, float]]) -> None:
    est = RttEstimator(window_s=10.0)
    now, seen = 0.0, []
    for dt, rtt in steps:
        now += dt
        est.sample(rtt, now)
        seen.append((now, rtt))
    window = [r for t, r in seen if t >= now - 10.0] or [seen[-1][1]]
    assert est.minimum(now) == min(window)


def test_a_stalled_second_leaves_the_split_plan_unchanged() -> None:
    facts = ModelFacts("m", 30 * GB, 40)

    def nodes(est: RttEstimator, now: float) -> list[PlanNode]:
        rtt = est.minimum(now)
        return [
            PlanNode("a" * 64, 20 * GB, None, True, False),
            PlanNode("b" * 64, 20 * GB, None if rtt is None else rtt * 1000, True, False),
        ]

    est = RttEstimator()
    for t in range(5):
        est.sample(0.004, float(t))
    plan = plan_model(nodes(est, 5.0), facts, PlanConfig())
    assert isinstance(plan, Split) and len(plan.shards) == 2
    est.sample(1.0, 6.0)  # the worker's link looks 1,000 ms away for one sample
    assert replan(plan, nodes(est, 6.0), facts, PlanConfig()) is plan
