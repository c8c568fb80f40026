"""Whole generated accelerators in cocotb (Verilator and Icarus) against the golden model.

Random networks (widths that no lane count divides, random shifts, stride-2 and maxpool
placements, 4- and 8-bit activations, 2..8-bit weights) with random images; logits must be
equal, every image. Builds are cached by the Verilog's hash under ``build/sim-cache``.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from shiftacc.hw.params import ParamKind, decode_word
from shiftacc.hw.plan import load_config, plan_network
from shiftacc.hw.top import param_words
from shiftacc.models import golden
from shiftacc.models.artifact import save_artifact
from shiftacc.sim.runner import simulate
from shiftacc.models.netgen import random_model

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("SHIFTACC_CACHE", str(ROOT / "build" / "sim-cache"))
SEED = int(os.environ.get("SHIFTACC_SEED", "20261122"))


def _model(tmp_path, seed, **kw):
    rng = np.random.default_rng(seed)
    print(f"[seed] network seed {seed} (SHIFTACC_SEED={SEED})")
    model = random_model(rng, **kw)
    path = tmp_path / f"net{seed}.npz"
    model = save_artifact(path, model)
    return model, path, rng


def _check(res, model, images):
    gold = golden.run(model, images)
    assert res["golden_mismatches"] == 0, res.get("first_mismatch")
    # Independent of the testbench's own checker: compare here too.
    assert np.array_equal(np.asarray(res["logits"]), gold)


# Two draws in the default run (CI time goes to the real bitstreams of test_boards_real.py);
# all four with -m slow. `shiftacc regress` draws many more (tests/test_explore.py).
@pytest.mark.parametrize("k", [0, 1, pytest.param(2, marks=pytest.mark.slow),
                               pytest.param(3, marks=pytest.mark.slow)])
def test_random_network_verilator_with_stalls(tmp_path, k):
    seed = SEED + k
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(5, 11)), int(rng.integers(5, 11)))
    cin = int(rng.choice([1, 1, 2, 3]))
    model, path, rng = _model(tmp_path, seed, size=size, in_channels=cin,
                              blocks=int(rng.integers(1, 4)))
    cfg = load_config(overrides={"max_multipliers": int(rng.integers(16, 160))})
    images = rng.integers(0, 256, (24,) + model.input_shape).astype(np.uint8)
    stall = int(rng.integers(32, 128))
    res = simulate(model, images, model_path=path, config=cfg, batch_images=10,
                   stall_level=stall, seed=seed, workdir=tmp_path / "w")
    _check(res, model, images)
    # The same build without stalls: the cycle model is exact, and a stalled run's figure
    # (fill included) is never below the stall-free steady state.
    clean = simulate(model, images, model_path=path, config=cfg, batch_images=10,
                     stall_level=0, seed=seed, workdir=tmp_path / "c")
    _check(clean, model, images)
    plan = plan_network(model, cfg)
    print(f"stall level {stall}: {res['cycles_per_image_stalled']:.1f} cycles/image; "
          f"stall-free {clean['cycles_per_image']:.1f}; predicted "
          f"{plan.predicted_cycles_per_image}")
    assert clean["build_dir"] == res["build_dir"]
    assert clean["cycles_per_image"] == plan.predicted_cycles_per_image
    assert res.get("cycles_per_image") is None  # no steady-state claim under stalls
    assert res["cycles_per_image_stalled"] >= clean["cycles_per_image"]


def test_cycle_model_matches_rtl(tmp_path):
    """With no stalls, measured steady-state cycles/image are what the planner predicts."""
    model, path, rng = _model(tmp_path, SEED + 100, size=(8, 8), blocks=2)
    cfg = load_config(overrides={"max_multipliers": 64})
    plan = plan_network(model, cfg)
    images = rng.integers(0, 256, (16,) + model.input_shape).astype(np.uint8)
    res = simulate(model, images, model_path=path, config=cfg, batch_images=16,
                   stall_level=0, seed=1, workdir=tmp_path / "w")
    _check(res, model, images)
    measured = res["cycles_per_image"]
    print(f"measured {measured:.1f} predicted {plan.predicted_cycles_per_image}")
    assert measured >= plan.ideal_cycles_per_image
    # The analytical model is exact: the slowest stage sets the pace cycle for cycle.
    assert measured == plan.predicted_cycles_per_image
    # Under stalls the reported figure includes the pipeline fill and never undercuts the
    # stall-free steady state (it used to come out below it: 255.8 for 256).
    stalled = simulate(model, images, model_path=path, config=cfg, batch_images=16,
                       stall_level=128, seed=2, workdir=tmp_path / "s")
    _check(stalled, model, images)
    assert stalled.get("cycles_per_image") is None
    assert stalled["cycles_per_image_stalled"] >= measured


def test_random_network_icarus(tmp_path):
    model, path, rng = _model(tmp_path, SEED + 200, size=(6, 7), blocks=1)
    cfg = load_config()
    images = rng.integers(0, 256, (4,) + model.input_shape).astype(np.uint8)
    res = simulate(model, images, model_path=path, config=cfg, simulator="icarus",
                   batch_images=4, stall_level=64, seed=3, workdir=tmp_path / "w")
    _check(res, model, images)


def test_protocol_path_random_stalls(tmp_path):
    model, path, rng = _model(tmp_path, SEED + 300, size=(6, 6), blocks=1)
    cfg = load_config(overrides={"max_multipliers": 32})
    images = rng.integers(0, 256, (3,) + model.input_shape).astype(np.uint8)
    res = simulate(model, images, model_path=path, config=cfg, test="protocol_run",
                   p_stall=0.3, seed=4, workdir=tmp_path / "w")
    _check(res, model, images)


def test_fault_is_traced_to_its_layer(tmp_path):
    """Corrupt one conv bias: the checker must fail and name that layer first."""
    model, path, rng = _model(tmp_path, SEED + 400, size=(6, 6), blocks=2)
    cfg = load_config()
    plan = plan_network(model, cfg)
    convs = [i for i, l in enumerate(model.layers) if l.op == "conv1x1" and l.requant]
    target = convs[1]
    st = next(s for s in plan.stages if s.layer == target and s.kind == "conv")
    bias = model.layers[target].bias
    o = int(np.nonzero(bias >= 0)[0][0])  # +2**30 on a non-negative bias saturates it
    words = param_words(model, plan)
    index = next(n for n, w in enumerate(words)
                 if decode_word(w)[:4] == (target, ParamKind.BIAS, o // st.lanes_out,
                                           o % st.lanes_out))
    images = rng.integers(0, 256, (3,) + model.input_shape).astype(np.uint8)
    res = simulate(model, images, model_path=path, config=cfg, batch_images=3, seed=5,
                   workdir=tmp_path / "w", corrupt_param=(index, 0x40000000))
    assert res["golden_mismatches"] > 0
    div = res["first_mismatch"]["divergence"]
    assert div["layer"] == target, div
    assert div["hardware"] != div["golden"]
