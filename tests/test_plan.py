"""The dataflow planner: balance, the analytical cycle model, and refusals by layer."""

import json

import numpy as np
import pytest

from shiftacc.hw.plan import DEFAULT_CONFIG, PlanConfig, PlanError, load_config, plan_network
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


# ---- typed config: every wrong value is a PlanError naming the key ------------------------

@pytest.mark.parametrize("cfg,match", [
    ({"max_multipliers": "8"}, r'"max_multipliers" must be a positive integer, got "8" \(a string\)'),
    ({"max_multipliers": True}, r'"max_multipliers" must be a positive integer, got true'),
    ({"max_multipliers": 1.5}, r'"max_multipliers" must be a positive integer, got 1.5'),
    ({"max_multipliers": 0}, r'"max_multipliers" must be a positive integer, got 0'),
    ({"radius": "1"}, r'"radius" must be a positive integer'),
    ({"radius": 4}, r'"radius" must be one of 1, 2, 3'),
    ({"max_fifo_depth": 2}, r'"max_fifo_depth" must be an integer >= 4'),
    ({"min_mac_efficiency": 1.5}, r'"min_mac_efficiency" must be a number in \[0, 1\]'),
    ({"min_mac_efficiency": "high"}, r'"min_mac_efficiency" must be a number'),
    ({"max_slowdown": 0.5}, r'"max_slowdown" must be a number >= 1'),
    ({"max_slowdown": None}, r'"max_slowdown" must be a number >= 1, got null'),
    ({"maxmultipliers": 8}, r"unknown key 'maxmultipliers'"),
    ({"layers": [1, 2]}, r'"layers" must be a JSON object'),
    ({"layers": {"x": {"lanes": 2}}}, r'"layers" key "x" is not a layer index'),
    ({"layers": {"-1": {"lanes": 2}}}, r'"layers" key "-1" is not a layer index'),
    ({"layers": {"1.0": {"lanes": 2}}}, r'"layers" key "1.0" is not a layer index'),
    ({"layers": {"1": 3}}, r'layers\["1"\] must be an object'),
    ({"layers": {"1": {"lanes": 0}}}, r'layers\["1"\]: "lanes" must be a positive integer, got 0'),
    ({"layers": {"1": {"lanes": -2}}}, r'layers\["1"\]: "lanes" must be a positive integer'),
    ({"layers": {"1": {"lanes": True}}}, r'layers\["1"\]: "lanes" must be a positive integer, got true'),
    ({"layers": {"1": {"lanes": "2"}}}, r'layers\["1"\]: "lanes" must be a positive integer'),
    ({"layers": {"2": {"p_in": 9}}}, r'layers\["2"\]: "p_in" given without "p_out"'),
    ({"layers": {"2": {"p_out": 8}}}, r'layers\["2"\]: "p_out" given without "p_in"'),
    ({"layers": {"2": {"p_in": 1, "p_out": 1, "lanes": 1}}}, r'layers\["2"\]: give either'),
    ({"layers": {"2": {"pin": 1}}}, r"layers\[\"2\"\]: unknown key 'pin'"),
    ({"layers": {"2": {}}}, r'layers\["2"\]: empty override'),
])
def test_config_values_are_checked_by_key(tmp_path, cfg, match):
    path = tmp_path / "par.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(PlanError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)            # the message names the file too
    with pytest.raises(PlanError, match=match):
        load_config(overrides=cfg)


def test_config_is_typed_and_json_round_trips(tmp_path):
    path = tmp_path / "par.json"
    path.write_text(json.dumps({"max_multipliers": 40, "layers": {"2": {"p_in": 1, "p_out": 2}},
                                "min_mac_efficiency": 0}))
    cfg = load_config(path)
    assert json.loads(json.dumps(cfg)) == cfg      # goes into a job file as is
    typed = PlanConfig.from_dict(cfg)
    assert typed.max_multipliers == 40 and typed.layers == {2: {"p_in": 1, "p_out": 2}}
    assert typed.radius == DEFAULT_CONFIG["radius"] and typed["radius"] == typed.radius
    assert typed.to_dict() == cfg
    model = random_model(np.random.default_rng(4))
    a = plan_network(model, cfg)
    b = plan_network(model, json.loads(json.dumps(cfg)))
    c = plan_network(model, typed)
    assert a.to_dict() == b.to_dict() == c.to_dict()
    assert a.config == cfg


def test_config_layer_checks_against_the_model():
    model = random_model(np.random.default_rng(3))
    n = len(model.layers)
    with pytest.raises(PlanError, match=rf'layers\["{n}"\]: the model has layers 0..{n - 1}'):
        plan_network(model, load_config(overrides={"layers": {str(n): {"lanes": 1}}}))
    conv = next(i for i, l in enumerate(model.layers) if l.op == "conv1x1")
    cin = model.layers[conv].cin
    with pytest.raises(PlanError, match=rf"layer {conv} \(conv1x1\): p_in must be in \[1, {cin}\]"):
        plan_network(model, load_config(overrides={"layers": {str(conv): {"p_in": cin + 1,
                                                                          "p_out": 1}}}))
    shift = next(i for i, l in enumerate(model.layers) if l.op == "shift")
    c = model.shapes()[shift][2]
    with pytest.raises(PlanError, match=rf"layer {shift} \(shift\): lanes must be in \[1, {c}\]"):
        plan_network(model, load_config(overrides={"layers": {str(shift): {"lanes": c + 1}}}))
    with pytest.raises(PlanError, match=rf"layer {shift} \(shift\) does not take p_in, p_out"):
        plan_network(model, load_config(overrides={"layers": {str(shift): {"p_in": 1,
                                                                           "p_out": 1}}}))


# ---- every multiplier counts ----------------------------------------------------------------

def test_multipliers_include_requant_and_gap():
    model = random_model(np.random.default_rng(6))
    plan = plan_network(model, load_config())
    for s in plan.stages:
        names = {m.name: m.count for m in s.cost.multipliers}
        if s.kind == "conv":
            nbi = -(-s.in_shape[2] // s.lanes_in)
            rq = -(-s.lanes_out // nbi) if s.requant else 0
            assert s.multipliers == s.lanes_in * s.lanes_out + rq
            assert names.get("requant", 0) == rq
        elif s.kind == "gap":
            assert s.multipliers >= 1 and names["requant"] == s.multipliers
        else:
            assert s.multipliers == 0
    assert plan.multipliers == sum(s.multipliers for s in plan.stages)
    assert plan.predicted_mac_efficiency == pytest.approx(
        plan.macs_per_image / (plan.multipliers * plan.predicted_cycles_per_image))
    assert plan.dsp("ecp5") >= plan.multipliers - sum(
        m.count for s in plan.stages for m in s.cost.multipliers if m.dsp("ecp5") == 0)
    assert f"{plan.multipliers} multipliers (" in plan.summary_text(model)


# ---- the parameter port must address every plan -------------------------------------------

def _wide_model(cin, cout, extra_layers=()):
    from shiftacc.models.artifact import Layer, Model
    rng = np.random.default_rng(0)
    layers = list(extra_layers) + [
        Layer("conv1x1", stride=1, weight=rng.integers(-3, 4, (cout, cin)).astype(np.int8),
              bias=np.zeros(cout, np.int32), m=np.ones(cout, np.uint16),
              sh=np.ones(cout, np.uint8)),
        Layer("gap", m=1, sh=1),
        Layer("conv1x1", stride=1, weight=np.ones((2, cout), np.int8),
              bias=np.zeros(2, np.int32))]
    return Model(name="wide", input_shape=(2, 2, cin), input_bits=8, act_bits=8,
                 weight_bits=8, classes=["a", "b"], layers=layers)


def test_parameter_port_overflow_is_refused_by_layer():
    model = _wide_model(260, 260)
    # 4 multipliers: p_in = p_out = 1 -> 67600 weight rows, past the 16-bit row field.
    with pytest.raises(PlanError, match=r"layer 0 \(conv1x1\): the parameter port cannot "
                                        r"address it: .*row 67599.*16 bits"):
        plan_network(model, load_config(overrides={"max_multipliers": 4}))
    with pytest.raises(PlanError, match=r"layer 0 \(conv1x1\).*row 67599"):
        plan_network(model, load_config(overrides={"layers": {"0": {"p_in": 1, "p_out": 1}}}))
    with pytest.raises(PlanError, match=r"layer 0 \(conv1x1\).*lane 67599"):
        plan_network(model, load_config(overrides={
            "max_multipliers": 100_000, "layers": {"0": {"p_in": 260, "p_out": 260}}}))
    # One more multiplier and the planner finds lanes the port can address.
    plan = plan_network(model, load_config(overrides={"max_multipliers": 5}))
    assert plan.multipliers <= 5


def test_layer_index_beyond_the_port_is_refused():
    from shiftacc.models.artifact import Layer
    model = _wide_model(2, 3, [Layer("replicate", factor=1)] * 256)
    with pytest.raises(PlanError, match=r"layer 256 \(conv1x1\): the parameter port's layer "
                                        r"field is 8 bits"):
        plan_network(model, load_config())
