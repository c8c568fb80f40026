"""Whole accelerators with the version-2 attention ops, in cocotb, against the golden model.

Random networks (random positions of ``channel_attention``, ``spatial_attention`` and
``dynamic_conv1x1``, random k, K, t and table contents, widths that no lane count divides)
with random images and random valid/ready stalls; logits must be equal, every image, and the
stall-free steady state must be the planner's predicted cycles per image.
"""

import copy
import os
from pathlib import Path

import numpy as np
import pytest

from shiftacc.hw.params import ParamKind, decode_word
from shiftacc.hw.plan import load_config, plan_network
from shiftacc.hw.top import param_words
from shiftacc.models import golden
from shiftacc.models.artifact import save_artifact
from shiftacc.models.netgen import ATTENTION_OPS, random_model
from shiftacc.sim.runner import simulate

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("SHIFTACC_CACHE", str(ROOT / "build" / "sim-cache"))
SEED = int(os.environ.get("SHIFTACC_SEED", "20261122"))


def _model(tmp_path, seed, attention, **kw):
    rng = np.random.default_rng(seed)
    print(f"[seed] network seed {seed} (SHIFTACC_SEED={SEED}), attention {attention}")
    model = random_model(rng, attention=attention, **kw)
    print("layers:", [layer.op for layer in model.layers])
    path = tmp_path / f"net{seed}.npz"
    return save_artifact(path, model), path, rng


def _check(res, model, images):
    assert res["golden_mismatches"] == 0, res.get("first_mismatch")
    assert np.array_equal(np.asarray(res["logits"]), golden.run(model, images))


# CI runs the network with all three ops; one per op is `slow` (a Verilator build each).
@pytest.mark.parametrize("op", [pytest.param(op, marks=pytest.mark.slow) for op in ATTENTION_OPS]
                         + ["all"])
def test_v2_network_verilator_with_stalls(tmp_path, op):
    seed = SEED + 1000 + (ATTENTION_OPS + ("all",)).index(op)
    attention = ATTENTION_OPS if op == "all" else (op,)
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(4, 9)), int(rng.integers(4, 9)))
    model, path, rng = _model(tmp_path, seed, attention, size=size,
                              in_channels=int(rng.choice([1, 2, 3])),
                              blocks=int(rng.integers(1, 3)), max_width=14)
    cfg = load_config(overrides={"max_multipliers": int(rng.integers(24, 120))})
    plan = plan_network(model, cfg)
    print(plan.summary_text(model))
    images = rng.integers(0, 256, (12,) + model.input_shape).astype(np.uint8)
    res = simulate(model, images, model_path=path, config=cfg, batch_images=6,
                   stall_level=int(rng.integers(32, 128)), seed=seed, workdir=tmp_path / "w")
    _check(res, model, images)
    clean = simulate(model, images, model_path=path, config=cfg, batch_images=12,
                     stall_level=0, seed=seed, workdir=tmp_path / "c")
    _check(clean, model, images)
    assert clean["cycles_per_image"] == plan.predicted_cycles_per_image


def test_v2_network_icarus(tmp_path):
    model, path, rng = _model(tmp_path, SEED + 1100, ATTENTION_OPS, size=(5, 6), blocks=1,
                              max_width=10)
    cfg = load_config()
    images = rng.integers(0, 256, (3,) + model.input_shape).astype(np.uint8)
    res = simulate(model, images, model_path=path, config=cfg, simulator="icarus",
                   batch_images=3, stall_level=64, seed=3, workdir=tmp_path / "w")
    _check(res, model, images)


@pytest.mark.parametrize("op,kind,field,flip", [
    ("channel_attention", ParamKind.LUT, "lut", 0x80),
    pytest.param("spatial_attention", ParamKind.ATT_BIAS, "ctx_bias", 0x4000000,
                 marks=pytest.mark.slow),
    pytest.param("dynamic_conv1x1", ParamKind.LUT, "exp_lut", 0x8000, marks=pytest.mark.slow)])
def test_v2_fault_is_traced_to_its_layer(tmp_path, op, kind, field, flip):
    """Corrupt one parameter word of a v2 layer: the checker names that layer first."""
    model, path, rng = _model(tmp_path, SEED + 1200, (op,), size=(6, 6), blocks=1,
                              max_width=10)
    cfg = load_config()
    plan = plan_network(model, cfg)
    target = next(i for i, layer in enumerate(model.layers) if layer.op == op)
    layer = model.layers[target]
    words = param_words(model, plan)
    images = rng.integers(0, 256, (4,) + model.input_shape).astype(np.uint8)
    _, taps = golden.run(model, images, taps=True)
    x = images.astype(np.int64) if target == 0 else np.asarray(taps[target - 1], np.int64)
    want = golden.run_layer(layer, x, model.act_bits)
    # The first word of that table whose corruption changes the layer's output on these
    # images (a table entry no image indexes would change nothing).
    for n, w in enumerate(words):
        lid, k, row, lane, data = decode_word(w)
        if lid != target or k != kind:
            continue
        bad = copy.deepcopy(layer)
        arr = getattr(bad, field).astype(np.int64)
        arr[lane] ^= flip
        setattr(bad, field, arr)
        if not np.array_equal(golden.run_layer(bad, x, model.act_bits), want):
            break
    else:
        pytest.fail(f"no {kind.name} word of layer {target} changes its output")
    res = simulate(model, images, model_path=path, config=cfg, batch_images=4, seed=5,
                   workdir=tmp_path / "w", corrupt_param=(n, flip))
    assert res["golden_mismatches"] > 0
    div = res["first_mismatch"]["divergence"]
    assert div["layer"] == target, div
