"""Overlay compiler and NumPy executor (issue #10) against the golden model.

``run_overlay`` reads only the compiled program and memory images (banks, parity layout,
gather offsets, window order, fused pool/gap), so its equality with ``models.golden.run`` over
many random networks proves the compiler and the layouts. The program fields of one small
network and the refusal messages are checked against values worked out by hand here.
"""

import json

import numpy as np
import pytest

from shiftacc.hw.overlay_program import (PASS_FIELDS, OverlayConfig, OverlayFitError,
                                         OverlayMemories, compile_overlay, decode_param_words,
                                         run_overlay)
from shiftacc.hw.params import (GATHER_DATA, OVERLAY_LAYER, ParamKind, decode_word, encode_word,
                                gather_data, gather_fields)
from shiftacc.models import golden
from shiftacc.models.artifact import Layer, Model, to_manifest_and_arrays, validate
from shiftacc.models.netgen import random_model


# ---- helpers ---------------------------------------------------------------------------------

def _valid(layers, shape, act_bits=8, weight_bits=8, classes=None, name="t"):
    classes = classes or layers[-1].weight.shape[0]
    model = Model(name=name, input_shape=shape, input_bits=8, act_bits=act_bits,
                  weight_bits=weight_bits, classes=[str(k) for k in range(classes)],
                  layers=layers)
    return validate(*to_manifest_and_arrays(model))


def _calibrated_conv(rng, x, cout, act_bits, wmax=127, stride=1, last=False):
    """A conv1x1 on the batch ``x`` whose requant maps the 99th percentile of the positive
    accumulators to ~3/4 of the activation range (trained-like: neither all 0 nor saturated)."""
    cin = x.shape[-1]
    weight = rng.integers(-wmax, wmax + 1, (cout, cin)).astype(np.int8)
    bias = rng.integers(-300, 300, cout).astype(np.int32)
    if last:
        return Layer("conv1x1", stride=stride, weight=weight, bias=bias)
    acc = golden.conv1x1(x, weight, bias, stride)
    hi = np.maximum(np.percentile(np.maximum(acc, 0), 99, axis=(0, 1, 2)), 1.0)
    sh = np.full(cout, 20)
    m = np.clip(np.round(0.75 * ((1 << act_bits) - 1) / hi * (1 << 20)), 1, 65535)
    return Layer("conv1x1", stride=stride, weight=weight, bias=bias,
                 m=m.astype(np.uint16), sh=sh.astype(np.uint8))


def digits_like(seed):
    """The digits-s preset's topology (replicate 9, shift, 9->16, shift, 16->16, maxpool,
    shift, 16->48, gap, 48->10 on 8x8x1), 8-bit, requant calibrated on random images."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (64, 8, 8, 1)).astype(np.int64)
    layers = []

    def add(layer):
        nonlocal x
        layers.append(layer)
        x = golden.run_layer(layer, x, 8)

    add(Layer("replicate", factor=9))
    add(Layer("shift", shifts=np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
                                       np.int8)))
    add(_calibrated_conv(rng, x, 16, 8))
    add(Layer("shift", shifts=rng.integers(-1, 2, (16, 2)).astype(np.int8)))
    add(_calibrated_conv(rng, x, 16, 8))
    add(Layer("maxpool2"))
    add(Layer("shift", shifts=rng.integers(-1, 2, (16, 2)).astype(np.int8)))
    add(_calibrated_conv(rng, x, 48, 8))
    s = x.sum(axis=(1, 2))
    gsh = 14
    gm = int(np.clip(round(0.75 * 255 / max(np.percentile(s, 99), 1) * (1 << gsh)), 1, 65535))
    add(Layer("gap", m=gm, sh=gsh))
    add(_calibrated_conv(rng, x, 10, 8, last=True))
    return _valid(layers, (8, 8, 1), name="digits-like")


def assert_overlay_equals_golden(model, plan, images):
    """Logits equal, else name the first pass whose output map differs, the position and
    both values."""
    got, taps = run_overlay(plan, images, taps=True)
    want, gtaps = golden.run(model, images, taps=True)
    if np.array_equal(got, want):
        return
    for k, (mine, lays) in enumerate(zip(taps, plan.layers)):
        ref = gtaps[lays[-1]].reshape(mine.shape)
        bad = np.argwhere(mine != ref)
        if len(bad):
            pos = tuple(int(v) for v in bad[0])
            raise AssertionError(f"pass {k} (layers {lays}) differs first at {pos}: overlay "
                                 f"{mine[pos]}, golden {ref[pos]}")
    raise AssertionError("logits differ but no pass output does")


# ---- the digits-like network -----------------------------------------------------------------

def test_digits_like_equals_golden(seed):
    model = digits_like(seed)
    plan = compile_overlay(model)
    rng = np.random.default_rng(seed)
    # Digit-like images: 17 grey levels (sklearn digits are 0..16, scaled by 16, clipped).
    images = np.minimum(rng.integers(0, 17, (360, 8, 8, 1)) * 16, 255)
    assert_overlay_equals_golden(model, plan, images)
    # Trained-like: the hidden layers are neither dead nor saturated.
    _, taps = run_overlay(plan, images[:64], taps=True)
    for t in taps[:-1]:
        assert 0 < t.mean() < 255
    assert [p["pool"] for p in plan.passes] == [0, 1, 0, 0]
    assert [p["gap"] for p in plan.passes] == [0, 0, 1, 0]
    assert [p["raw"] for p in plan.passes] == [0, 0, 0, 1]
    assert plan.engine == "overlay" and plan.input_lanes == 1
    assert plan.macs_per_image == 8 * 8 * 9 * 16 + 8 * 8 * 16 * 16 + 4 * 4 * 16 * 48 + 48 * 10


def test_digits_like_360_images_fast(seed):
    """The device model runs the host-link tests' ~360 images through run_overlay."""
    import time
    plan = compile_overlay(digits_like(seed))
    images = np.random.default_rng(seed).integers(0, 256, (360, 8, 8, 1))
    t0 = time.perf_counter()
    run_overlay(plan, images)
    took = time.perf_counter() - t0
    print(f"run_overlay: 360 digits-like images in {took:.3f} s")
    assert took < 2.0


# ---- random networks -------------------------------------------------------------------------

#: (size, in_channels, blocks, act_bits, weight_bits, lanes, requant_units, max_width)
CASES = [
    ((8, 8), 1, 2, 8, 8, 16, 2, 20), ((7, 9), 1, 2, 4, 3, 4, 1, 13),
    ((9, 9), 2, 3, 8, 2, 6, 2, 17), ((5, 5), 3, 1, 4, 5, 2, 1, 7),
    ((12, 10), 1, 3, 8, 6, 4, 2, 21), ((11, 13), 2, 2, 4, 8, 6, 1, 19),
    ((6, 6), 1, 2, 8, 4, 2, 2, 9), ((16, 16), 1, 3, 4, 7, 16, 1, 23),
]


def _random_cases(base_seed):
    """30+ seeded random v1 networks with their overlay configs."""
    rng = np.random.default_rng(base_seed)
    out = []
    for n in range(32):
        size, cin, blocks, act, wbits, lanes, r, width = CASES[n % len(CASES)]
        if n >= len(CASES):  # after one pass over the table, draw everything
            size = tuple(int(v) for v in rng.integers(3, 15, 2))
            cin = int(rng.integers(1, 4))
            blocks = int(rng.integers(1, 4))
            act = int(rng.choice([4, 8]))
            wbits = int(rng.integers(2, 9))
            lanes = int(rng.choice([2, 4, 6, 16]))
            r = int(rng.integers(1, 3))
            width = int(rng.integers(3, 26))
        out.append((n, int(rng.integers(1 << 31)), dict(size=size, in_channels=cin, blocks=blocks,
                                                        act_bits=act, weight_bits=wbits,
                                                        max_width=width),
                    # Capacities large enough for any drawn network (narrow lanes and wide
                    # layers need many weight rows): this test is about exactness.
                    OverlayConfig(lanes=lanes, requant_units=r, weight_rows=4096,
                                  channel_rows=1024, gather_rows=1024)))
    return out


def test_random_networks_equal_golden(seed):
    seen = {"stride": 0, "pool": 0, "odd": 0, "act4": 0, "act8": 0, "not_multiple": 0,
            "gap_after_pool": 0}
    for n, mseed, kw, config in _random_cases(seed):
        rng = np.random.default_rng(mseed)
        model = random_model(rng, **kw)
        plan = compile_overlay(model, config)
        h, w = kw["size"]
        images = rng.integers(0, 256, (24, h, w, kw["in_channels"]))
        try:
            assert_overlay_equals_golden(model, plan, images)
        except AssertionError as e:
            raise AssertionError(f"case {n} (model seed {mseed}, {kw}, {config}): {e}") from None
        seen["stride"] += any(p["stride"] == 2 for p in plan.passes)
        seen["pool"] += any(p["pool"] for p in plan.passes)
        seen["odd"] += (h % 2 == 1 or w % 2 == 1)
        seen["act4"] += model.act_bits == 4
        seen["act8"] += model.act_bits == 8
        seen["not_multiple"] += any(p["cout"] % config.lanes for p in plan.passes)
        seen["gap_after_pool"] += any(p["pool"] and p["gap"] for p in plan.passes)
    print(f"random networks: coverage {seen}")
    # The cases must exercise what they claim to (a generator change must not hide them).
    assert all(v >= 2 for k, v in seen.items() if k != "gap_after_pool"), seen


def test_run_overlay_rejects_bad_images():
    plan = compile_overlay(digits_like(1))
    with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\]"):
        run_overlay(plan, np.zeros((2, 7, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="8-bit"):
        run_overlay(plan, np.full((2, 8, 8, 1), 256))
    assert run_overlay(plan, np.zeros((0, 8, 8, 1), np.uint8)).shape == (0, 10)


# ---- a small network, its program by hand ----------------------------------------------------

def _hand_network():
    """5x3x3 image -> replicate 2 -> shift -> conv 6->5 stride 2 -> maxpool2 -> conv 5->3."""
    rng = np.random.default_rng(7)
    shifts = np.array([(0, 0), (1, -1), (-1, 0), (0, 1), (1, 1), (-1, -1)], np.int8)
    w0 = rng.integers(-7, 8, (5, 6)).astype(np.int8)
    w1 = rng.integers(-7, 8, (3, 5)).astype(np.int8)
    layers = [Layer("replicate", factor=2), Layer("shift", shifts=shifts),
              Layer("conv1x1", stride=2, weight=w0, bias=np.array([5, -3, 0, 100, -50], np.int32),
                    m=np.array([300, 400, 500, 600, 700], np.uint16),
                    sh=np.array([9, 10, 11, 12, 13], np.uint8)),
              Layer("maxpool2"),
              Layer("conv1x1", stride=1, weight=w1, bias=np.array([1, 2, -3], np.int32))]
    return _valid(layers, (5, 3, 3), act_bits=4, weight_bits=4), w0, w1


def test_hand_computed_program():
    model, w0, w1 = _hand_network()
    plan = compile_overlay(model, OverlayConfig(lanes=4, requant_units=1))
    # Pass 0: source 5x3x3 (Cp = 4, 2 words per pixel), stride 2: 3x2 outputs, pooled to 1x1.
    # groups = ceil(5/4) = 2, last group 1; src_row = 2*3*2 = 12, src_col = 2*2 = 4.
    pass0 = dict(op=1, src=0, dst=1, h=5, w=3, stride=2, ho=3, wo=2, cin=6, cout=5, groups=2,
                 last_group=1, gbase=0, wbase=0, cbase=0, src_row=12, src_col=4, pool=1, gap=0,
                 gap_ent=0, raw=0, out_h=1, out_w=1, dst_cp2=3, in_c=3)
    # Pass 1 (classifier): source 1x1x5 (Cp = 6, 3 words per pixel), wbase = 2 groups * 6 rows.
    pass1 = dict(op=1, src=1, dst=0, h=1, w=1, stride=1, ho=1, wo=1, cin=5, cout=3, groups=1,
                 last_group=3, gbase=6, wbase=12, cbase=5, src_row=3, src_col=3, pool=0, gap=0,
                 gap_ent=0, raw=1, out_h=1, out_w=1, dst_cp2=2, in_c=5)
    assert plan.passes == (pass0, pass1)
    assert plan.program.shape == (3, 25) == (3, len(PASS_FIELDS))
    assert plan.program[0].tolist() == [pass0[f] for f in PASS_FIELDS]
    assert plan.program[1].tolist() == [pass1[f] for f in PASS_FIELDS]
    assert plan.program[2].tolist() == [0] * 25
    # Gather of pass 0: s_i = i % 3, bank = s & 1, off = (dy*3 + dx)*2 + (s >> 1).
    #   i  s  (dy,dx)  bank  off
    #   0  0  ( 0, 0)   0     0
    #   1  1  ( 1,-1)   1     (3-1)*2 + 0 = 4
    #   2  2  (-1, 0)   0     (-3)*2 + 1 = -5
    #   3  0  ( 0, 1)   0     1*2 + 0 = 2
    #   4  1  ( 1, 1)   1     (3+1)*2 + 0 = 8
    #   5  2  (-1,-1)   0     (-4)*2 + 1 = -7
    # packed: bank | (off & 0xFFFFF) << 1 | (dy & 0xF) << 21 | (dx & 0xF) << 25
    g0 = [0,
          1 | 4 << 1 | 1 << 21 | 15 << 25,
          0 | (0x100000 - 5) << 1 | 15 << 21 | 0 << 25,
          0 | 2 << 1 | 0 << 21 | 1 << 25,
          1 | 8 << 1 | 1 << 21 | 1 << 25,
          0 | (0x100000 - 7) << 1 | 15 << 21 | 15 << 25]
    # Pass 1: no shift, s = i: bank i & 1, off i >> 1.
    g1 = [0, 1, 0 | 1 << 1, 1 | 1 << 1, 0 | 2 << 1]
    assert plan.gather.tolist() == g0 + g1
    # Weights: w[o, i] at row wbase + (o // 4) * cin + i, lane o % 4.
    assert plan.weights.shape == (17, 4)
    for o in range(5):
        for i in range(6):
            assert plan.weights[(o // 4) * 6 + i, o % 4] == w0[o, i]
    assert (plan.weights[6:12, 1:] == 0).all()
    for o in range(3):
        for i in range(5):
            assert plan.weights[12 + i, o] == w1[o, i]
    assert (plan.weights[12:, 3] == 0).all()
    # Channel tables: the classifier has bias only; qmax = 2**4 - 1.
    assert plan.bias.tolist() == [5, -3, 0, 100, -50, 1, 2, -3]
    assert plan.m.tolist() == [300, 400, 500, 600, 700, 0, 0, 0]
    assert plan.sh.tolist() == [9, 10, 11, 12, 13, 0, 0, 0]
    assert plan.qmax.tolist() == [15] * 5 + [0] * 3
    images = np.random.default_rng(3).integers(0, 256, (40, 5, 3, 3))
    assert_overlay_equals_golden(model, plan, images)


def test_hand_computed_logits():
    """One image of the hand network worked through the overlay's rules in plain Python."""
    model, w0, w1 = _hand_network()
    plan = compile_overlay(model, OverlayConfig(lanes=4, requant_units=1))
    img = np.arange(45).reshape(5, 3, 3) * 5 % 256
    shifts = [(0, 0), (1, -1), (-1, 0), (0, 1), (1, 1), (-1, -1)]
    bias, m, sh = [5, -3, 0, 100, -50], [300, 400, 500, 600, 700], [9, 10, 11, 12, 13]
    pooled = []
    for o in range(5):
        best = 0
        for y, x in ((0, 0), (0, 1), (1, 0), (1, 1)):  # the one 2x2 window of the 3x2 outputs
            acc = bias[o]
            for i, (dy, dx) in enumerate(shifts):
                yy, xx = 2 * y + dy, 2 * x + dx
                if 0 <= yy < 5 and 0 <= xx < 3:
                    acc += int(w0[o, i]) * int(img[yy, xx, i % 3])
            q = min(max((acc * m[o] + (1 << (sh[o] - 1))) >> sh[o], 0), 15)
            best = max(best, q)
        pooled.append(best)
    want = [sum(int(w1[o, i]) * pooled[i] for i in range(5)) + b
            for o, b in enumerate([1, 2, -3])]
    assert run_overlay(plan, img[None]).tolist() == [want]


# ---- refusals --------------------------------------------------------------------------------

def test_refuses_v2_op(seed):
    model = random_model(np.random.default_rng(seed), attention=("channel_attention",))
    i = next(k for k, layer in enumerate(model.layers) if layer.op == "channel_attention")
    with pytest.raises(OverlayFitError) as e:
        compile_overlay(model)
    # The default config has no attention hardware: the message names the option to set.
    assert str(e.value).startswith(
        f"layer {i} (channel_attention): the overlay engine runs version-1 ops only; this "
        f"config has no channel_attention hardware")
    assert '"attention": ["channel_attention"]' in str(e.value)
    assert "--engine dataflow" in str(e.value)


def _conv(cin, cout, last=False, stride=1):
    w = np.ones((cout, cin), np.int8)
    b = np.zeros(cout, np.int32)
    if last:
        return Layer("conv1x1", stride=stride, weight=w, bias=b)
    return Layer("conv1x1", stride=stride, weight=w, bias=b, m=np.ones(cout, np.uint16),
                 sh=np.ones(cout, np.uint8))


def test_refuses_maxpool_not_after_conv():
    model = _valid([Layer("replicate", factor=2), Layer("maxpool2"), _conv(2, 4),
                    Layer("gap", m=1, sh=4), _conv(4, 3, last=True)], (4, 4, 1))
    with pytest.raises(OverlayFitError, match=r"^layer 1 \(maxpool2\): the overlay fuses a "
                       r"maxpool2 into the conv1x1 directly before it, here it follows "
                       r"replicate; use --engine dataflow$"):
        compile_overlay(model)
    model = _valid([_conv(1, 4), Layer("maxpool2"), Layer("maxpool2"), Layer("gap", m=1, sh=4),
                    _conv(4, 3, last=True)], (8, 8, 1))
    with pytest.raises(OverlayFitError, match=r"^layer 2 \(maxpool2\):.* here it follows "
                       r"maxpool2;"):
        compile_overlay(model)


def test_refuses_gap_not_before_classifier():
    model = _valid([_conv(1, 4), Layer("gap", m=1, sh=4), _conv(4, 5), _conv(5, 3, last=True)],
                   (4, 4, 1))
    with pytest.raises(OverlayFitError, match=r"^layer 1 \(gap\): a gap must be directly "
                       r"followed by the classifier \(the last conv1x1\), here by layer 2 "
                       r"\(conv1x1\); use --engine dataflow$"):
        compile_overlay(model)


def test_refuses_shift_and_replicate_patterns():
    sh = Layer("shift", shifts=np.zeros((2, 2), np.int8))
    model = _valid([Layer("replicate", factor=2), sh, Layer("shift", shifts=sh.shifts),
                    _conv(2, 4), Layer("gap", m=1, sh=4), _conv(4, 3, last=True)], (4, 4, 1))
    with pytest.raises(OverlayFitError) as e:
        compile_overlay(model)
    assert str(e.value) == ("layer 2 (shift): two shifts before one conv1x1 are not supported "
                            "by the overlay engine (merge them in the model); use --engine "
                            "dataflow")
    model = _valid([Layer("shift", shifts=np.zeros((1, 2), np.int8)),
                    Layer("replicate", factor=2), _conv(2, 4), Layer("gap", m=1, sh=4),
                    _conv(4, 3, last=True)], (4, 4, 1))
    with pytest.raises(OverlayFitError, match=r"^layer 1 \(replicate\): a replicate after a "
                       r"shift \(the pattern is \[replicate\] \[shift\] conv1x1\) is not "
                       r"supported by the overlay engine; use --engine dataflow$"):
        compile_overlay(model)
    model = _valid([_conv(1, 4), Layer("shift", shifts=np.zeros((4, 2), np.int8)),
                    Layer("gap", m=1, sh=4), _conv(4, 3, last=True)], (4, 4, 1))
    with pytest.raises(OverlayFitError, match=r"^layer 2 \(gap\): the overlay fuses a gap "
                       r"into the conv1x1 \(and maxpool2\) directly before it, here it follows "
                       r"shift;"):
        compile_overlay(model)


def test_refuses_map_too_big():
    model = _valid([Layer("replicate", factor=9), _conv(9, 16), _conv(16, 4),
                    Layer("gap", m=1, sh=4), _conv(4, 3, last=True)], (8, 8, 1))
    # Pass 0 writes the 8x8x16 map: 8*8*16/2 = 512 words per bank.
    with pytest.raises(OverlayFitError) as e:
        compile_overlay(model, OverlayConfig(fm_words=511))
    assert str(e.value) == ("layer 1 (conv1x1): the map it writes, 8x8x16, needs 8*8*16/2 = 512 "
                            "words per bank, over fm_words = 511; raise fm_words, add a stride "
                            "or a maxpool earlier, or use --engine dataflow")
    # The 8x8x1 image (padded to 2 channels): 8*8*2/2 = 64 words per bank.
    with pytest.raises(OverlayFitError, match=r"^input: the image 8x8x1 needs 8\*8\*2/2 = 64 "
                       r"words per bank, over fm_words = 63;"):
        compile_overlay(model, OverlayConfig(fm_words=63))
    # 512 fits; pass 1's 8x8x4 conv output is never stored (its gap is fused): 1x1x4.
    plan = compile_overlay(model, OverlayConfig(fm_words=512))
    assert [(p["out_h"], p["out_w"], p["gap"]) for p in plan.passes] == [(8, 8, 0), (1, 1, 1),
                                                                          (1, 1, 0)]


def test_refuses_tables_over_capacity():
    model = _valid([Layer("replicate", factor=9), _conv(9, 20), Layer("gap", m=1, sh=4),
                    _conv(20, 3, last=True)], (4, 4, 1))
    # lanes 16: pass 0 takes ceil(20/16) * 9 = 18 rows, pass 1 ceil(3/16) * 20 = 20: 38.
    with pytest.raises(OverlayFitError) as e:
        compile_overlay(model, OverlayConfig(weight_rows=37))
    assert str(e.value) == ("layer 3 (conv1x1): the network needs 38 weight rows up to this conv "
                            "(pass 1), over weight_rows = 37; raise weight_rows or use --engine "
                            "dataflow")
    assert len(compile_overlay(model, OverlayConfig(weight_rows=38)).weights) == 38
    # channel entries: 20 + 2 (the gap's requant constants) + 3 = 25; gather entries:
    # 9 + 20 = 29; program rows: 2 + END = 3.
    with pytest.raises(OverlayFitError, match=r"^layer 3 \(conv1x1\): the network needs 25 "
                       r"channel-table entries up to this conv \(pass 1\), over channel_rows "
                       r"= 24;"):
        compile_overlay(model, OverlayConfig(channel_rows=24))
    with pytest.raises(OverlayFitError, match=r"needs 29 gather-table entries .* over "
                       r"gather_rows = 28;"):
        compile_overlay(model, OverlayConfig(gather_rows=28))
    with pytest.raises(OverlayFitError, match=r"^program: 2 passes \+ the END row need 3 "
                       r"program rows, over max_passes = 2;"):
        compile_overlay(model, OverlayConfig(max_passes=2))


def test_refuses_partial_sums_over_int32():
    # Not a valid artifact (the exporter bounds accumulators too): built without validate.
    # 70000 weights of 127 on 8-bit inputs: 127*70000 = 8890000, * 255 = 2266950000 > 2**31 - 1.
    conv = Layer("conv1x1", stride=1, weight=np.full((2, 70000), 127, np.int8),
                 bias=np.zeros(2, np.int32))
    model = Model(name="big", input_shape=(1, 1, 1), input_bits=8, act_bits=8, weight_bits=8,
                  classes=["a", "b"], layers=[Layer("replicate", factor=70000), conv])
    with pytest.raises(OverlayFitError) as e:
        compile_overlay(model, OverlayConfig(gather_rows=65536))
    assert str(e.value) == ("layer 1 (conv1x1): output channel 0 has partial sums up to "
                            "sum|w| * (2**8 - 1) = 8890000 * 255 = 2266950000, over the "
                            "overlay's int32 accumulator (2147483647); use smaller weights or "
                            "--engine dataflow")


# ---- config ----------------------------------------------------------------------------------

def test_config_validation_and_json():
    c = OverlayConfig(lanes=6, requant_units=1, weight_rows=100)
    assert OverlayConfig.from_json(c.to_json()) == c
    assert c.to_json()["lanes"] == 6 and OverlayConfig.from_json({}) == OverlayConfig()
    with pytest.raises(ValueError, match=r"lanes must be even .* got 5"):
        OverlayConfig(lanes=5)
    with pytest.raises(ValueError, match=r"lanes must be an integer in \[2, 64\], got 66"):
        OverlayConfig(lanes=66)
    with pytest.raises(ValueError, match=r"requant_units must be an integer in \[1, 2\], got 3"):
        OverlayConfig(requant_units=3)
    with pytest.raises(ValueError, match=r"weight_rows must be an integer .* got True"):
        OverlayConfig(weight_rows=True)
    with pytest.raises(ValueError, match=r"fm_words must be 16384, got 8192"):
        OverlayConfig(primitives="ice40", fm_words=8192)
    with pytest.raises(ValueError, match=r"primitives must be one of 'generic', 'ice40'"):
        OverlayConfig(primitives="xilinx")
    with pytest.raises(ValueError, match=r"unknown key 'lane'"):
        OverlayConfig.from_json({"lane": 4})


def test_cost_and_cycles():
    plan = compile_overlay(digits_like(2), OverlayConfig(lanes=8, requant_units=2))
    cost = plan.cost()
    # The engine's count: 8 MAC lanes; each requant unit's 33s x 16u product is two 16-bit
    # halves (a 16u x 16u and a 17s x 16u multiplier, one pipeline stage each).
    assert cost.multiplier_count == 8 + 2 * 2
    names = {m.name: m for m in cost.multipliers}
    assert (names["mac"].count, names["requant.lo"].count, names["requant.hi"].count) == \
        (8, 2, 2)
    fm = [x for x in cost.memories if x.name.startswith("fm.")]
    assert len(fm) == 4 and all((x.depth, x.width) == (16384, 8) for x in fm)
    assert {x.name: (x.depth, x.width) for x in cost.memories}["weights"] == (512, 64)
    try:
        import shiftacc.hw.overlay_timing  # noqa: F401
    except ImportError:
        with pytest.raises(NotImplementedError, match="overlay_timing"):
            plan.cycles_per_image()
    else:
        assert plan.cycles_per_image() > 0
    text = "\n".join(plan.summary())
    assert "shift+conv1x1+maxpool2" in text and "1x1x48" in text
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["engine"] == "overlay" and d["multipliers"] == 12
    # iCE40: the MAC lanes in pairs per SB_MAC16, each requant half one block.
    ice = compile_overlay(digits_like(2), OverlayConfig(lanes=8, primitives="ice40"))
    assert ice.dsp("ice40") == 4 + 2 * 2 and plan.dsp("ice40") == 8 + 2 * 2
    assert d["config"] == OverlayConfig(lanes=8).to_json()
    assert [p["layers"] for p in d["passes"]] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    # ceil(cout / 8) * cin rows per pass: 2*9 + 2*16 + 6*16 + 2*48.
    assert d["used"]["weights"] == {"used": 18 + 32 + 96 + 96, "capacity": 512}


# ---- parameter words -------------------------------------------------------------------------

def test_gather_data_matches_layout():
    rng = np.random.default_rng(0)
    for _ in range(200):
        t = (int(rng.integers(2)), int(rng.integers(-(1 << 19), 1 << 19)),
             int(rng.integers(-8, 8)), int(rng.integers(-8, 8)))
        v = gather_data(*t)
        assert v == GATHER_DATA.const(dict(zip(("bank", "off", "dy", "dx"), t))).as_value().value
        assert gather_fields(v) == t
    with pytest.raises(ValueError, match="gather entry out of range"):
        gather_data(0, 0, 8, 0)


def test_param_words_round_trip(seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, size=(9, 7), in_channels=2, blocks=3, max_width=19)
    config = OverlayConfig(lanes=6, requant_units=1, weight_rows=300, max_passes=8)
    plan = compile_overlay(model, config)
    words = plan.param_words()
    decoded = [decode_word(w) for w in words]
    # The fast packing is hw.params.encode_word's (signed values as two's complement).
    assert words == [encode_word(layer, kind, row, lane, data) for layer, kind, row, lane, data
                     in decoded]
    assert all(layer == OVERLAY_LAYER for layer, *_ in decoded)
    kinds = {kind for _, kind, *_ in decoded}
    assert kinds == {ParamKind.PROGRAM, ParamKind.WEIGHT, ParamKind.BIAS, ParamKind.M,
                     ParamKind.SH, ParamKind.QMAX, ParamKind.GATHER}
    # The END row is written explicitly: every field of every row up to it.
    prog = [(row, lane) for _, kind, row, lane, _ in decoded if kind == ParamKind.PROGRAM]
    assert sorted(prog) == [(r, f) for r in range(len(plan.passes) + 1)
                            for f in range(len(PASS_FIELDS))]
    mem = decode_param_words(words, config)
    assert isinstance(mem, OverlayMemories)
    for name in ("program", "weights", "bias", "m", "sh", "qmax", "gather"):
        got, want = getattr(mem, name), getattr(plan, name)
        assert np.array_equal(got[:len(want)], want), name
        assert not got[len(want):].any(), name
    assert mem.program.shape == (8, len(PASS_FIELDS)) and mem.weights.shape == (300, 6)
    images = rng.integers(0, 256, (16, 9, 7, 2))
    assert np.array_equal(run_overlay(mem, images), golden.run(model, images))
    # A device keeps its memories: a second load over the first gives the second network.
    model2 = random_model(rng, size=(9, 7), in_channels=2, blocks=1, max_width=11)
    plan2 = compile_overlay(model2, config)
    mem2 = decode_param_words(plan2.param_words(), config, memories=mem)
    # Every used weight row is rewritten whole (unused lanes 0), whatever it held before.
    assert np.array_equal(mem2.weights[:len(plan2.weights)], plan2.weights)
    assert np.array_equal(mem2.program[:len(plan2.program)], plan2.program)
    assert np.array_equal(run_overlay(mem2, images), golden.run(model2, images))


def test_decode_refuses_foreign_words():
    config = OverlayConfig(lanes=4, weight_rows=10)
    with pytest.raises(ValueError, match="layer 3, the overlay takes layer 0xff only"):
        decode_param_words([encode_word(3, ParamKind.WEIGHT, 0, 0, 1)], config)
    with pytest.raises(ValueError, match="kind SHIFT has no overlay memory"):
        decode_param_words([encode_word(0xFF, ParamKind.SHIFT, 0, 0, 1)], config)
    with pytest.raises(ValueError, match="WEIGHT row 10 lane 0 is past the memory"):
        decode_param_words([encode_word(0xFF, ParamKind.WEIGHT, 10, 0, 1)], config)
    with pytest.raises(ValueError, match="WEIGHT row 0 lane 4 is past the memory"):
        decode_param_words([encode_word(0xFF, ParamKind.WEIGHT, 0, 4, 1)], config)
    mem = decode_param_words([encode_word(0xFF, ParamKind.WEIGHT, 9, 3, -5),
                              encode_word(0xFF, ParamKind.BIAS, 2, 0, -70000)], config)
    assert mem.weights[9, 3] == -5 and mem.bias[2] == -70000
