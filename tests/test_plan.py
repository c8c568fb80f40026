"""The dataflow planner: balance, the analytical cycle model, and refusals by layer."""

import json

import numpy as np
import pytest

from shiftacc.hw.plan import PlanError, load_config, plan_network
from shiftacc.models.netgen import random_model


@pytest.mark.parametrize("seed", range(8))
def test_plan_meets_its_own_bounds(seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, size=(int(rng.integers(4, 11)), int(rng.integers(4, 11))))
    budget = int(rng.integers(8, 200))
    plan = plan_network(model, load_config(overrides={"max_multipliers": budget}))
    assert plan.multipliers <= budget
    assert plan.predicted_cycles_per_image == max(s.cycles for s in plan.stages)
    # No conv can beat the physical limit H_out*W_out*cin*cout / (P_in*P_out).
    for s in plan.stages:
        if s.kind == "conv":
            assert s.cycles * s.multipliers >= s.macs
    assert plan.macs_per_image == model.macs_per_image()
    assert plan.ideal_cycles_per_image <= plan.predicted_cycles_per_image
    # Lanes chain: every stage reads what the previous one writes.
    lanes = plan.input_lanes
    for s in plan.stages:
        assert s.lanes_in == lanes, s
        lanes = s.lanes_out
    assert lanes == 1  # logits leave one per beat
    # Throughput-first planning: a bigger budget never makes the pipeline slower.
    fast = plan_network(model, load_config(overrides={"max_multipliers": budget,
                                                      "min_mac_efficiency": 0}))
    bigger = plan_network(model, load_config(overrides={"max_multipliers": budget * 4,
                                                        "min_mac_efficiency": 0}))
    assert bigger.predicted_cycles_per_image <= fast.predicted_cycles_per_image
    # Efficiency-aware planning (the default) trades at most max_slowdown for efficiency.
    assert plan.predicted_mac_efficiency >= fast.predicted_mac_efficiency - 1e-12
    assert plan.predicted_cycles_per_image <= 1.25 * fast.predicted_cycles_per_image


def test_shift_beyond_radius_is_refused_by_layer():
    rng = np.random.default_rng(1)
    model = random_model(rng, radius=2)
    worst = max(int(abs(l.shifts.astype(int)).max()) for l in model.layers if l.op == "shift")
    assert worst == 2
    with pytest.raises(PlanError, match=r"layer \d+ \(shift\).*radius 1"):
        plan_network(model, load_config(overrides={"radius": 1}))
    plan_network(model, load_config(overrides={"radius": 2}))


def test_budget_too_small_is_refused():
    model = random_model(np.random.default_rng(2))
    with pytest.raises(PlanError, match="max_multipliers"):
        plan_network(model, load_config(overrides={"max_multipliers": 1}))


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"max_multiplers": 3}))
    with pytest.raises(PlanError, match="unknown key 'max_multiplers'"):
        load_config(bad)
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="cannot read it as JSON"):
        load_config(bad)
    model = random_model(np.random.default_rng(3))
    conv = next(i for i, l in enumerate(model.layers) if l.op == "conv1x1")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"layers": {str(conv): {"p_in": 1, "p_out": 2}}}))
    plan = plan_network(model, load_config(good))
    st = next(s for s in plan.stages if s.layer == conv and s.kind == "conv")
    assert (st.lanes_in, st.lanes_out) == (1, 2)
    good.write_text(json.dumps({"layers": {str(conv): {"lanes": 2}}}))
    with pytest.raises(PlanError, match=f"layer {conv} .*does not take lanes"):
        plan_network(model, load_config(good))
