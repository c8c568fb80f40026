"""DynamicConv1x1 == ``models.golden.dynamic_conv1x1`` under random shapes, parameters and
stalls; its cycle model (``cost``) is measured exactly."""

import numpy as np
import pytest

from shiftacc.hw.dynamic_conv import DynamicConv1x1
from shiftacc.hw.params import dynamic_conv_param_words
from shiftacc.models.golden import dynamic_conv1x1 as golden
from shiftacc.models.layer import Layer
from shiftacc.models.netgen import dynamic_conv_layer
from shiftacc.sim.streamtb import (assert_pixel_beats, assert_value_error, make_rng,
                                   measure_image_period, pixels_to_beats, run_param_block)

def make_layer(**fields):
    return Layer("dynamic_conv1x1", **fields)


def random_layer(rng, *, h, w, cin, cout, kernels, stride, att_step, in_bits, weight_bits,
                 act_bits, requant, big_lut=False):
    """Random weights in range and scalars chosen so that pooled values, attention
    indices and outputs are spread over their ranges rather than all clamped."""
    wmax = (1 << (weight_bits - 1)) - 1
    top = (1 << act_bits) - 1

    def ints(shape, lo, hi):
        return np.array([rng.randint(lo, hi) for _ in range(int(np.prod(shape)))],
                        np.int64).reshape(shape)

    weight = ints((kernels, cout, cin), -wmax - 1, wmax)
    span = cin * (wmax + 1) * ((1 << in_bits) - 1)
    bias = ints((kernels, cout), -span, span)
    att_weight = ints((kernels, cin), -wmax - 1, wmax)
    att_span = cin * (wmax + 1) * top
    att_bias = ints((kernels,), -att_span // 2, att_span // 2)
    lut_hi = 65535 if big_lut else 256
    exp_lut = ints((256,), 0, lut_hi)
    exp_lut[255] = rng.randint(1, lut_hi)
    if rng.random() < 0.3:                   # a sparse table: many zero entries
        exp_lut[rng.sample(range(255), 200)] = 0
    pooled = (-(-h // att_step)) * (-(-w // att_step))
    att_pool_m = rng.randint(1, 65535)
    typ = max(1, pooled * ((1 << in_bits) - 1) // 2 * att_pool_m)
    att_pool_sh = min(47, max(1, typ.bit_length() - act_bits + rng.randint(-2, 1)))
    att_m = rng.randint(1, 65535)
    typ = max(1, att_span // 4 * att_m)
    att_sh = min(47, max(1, typ.bit_length() - 8 + rng.randint(-3, 2)))
    m = sh = None
    if requant:
        m = ints((cout,), 1, 65535)
        sh = np.array([min(47, max(1, max(1, (span // 8 + 1) * int(mo)).bit_length()
                                   - act_bits + rng.randint(-2, 2))) for mo in m], np.int64)
    return make_layer(stride=stride, weight=weight, bias=bias, att_step=att_step,
                      att_pool_m=att_pool_m, att_pool_sh=att_pool_sh, att_m=att_m,
                      att_sh=att_sh, att_weight=att_weight, att_bias=att_bias,
                      exp_lut=exp_lut, m=m, sh=sh)


def run_dynconv(dut, words, images, rng, p_idle, p_stall):
    """Load the parameters, stream ``images`` [N, H, W, cin], return the output beats."""
    count = len(images) * dut.ho * dut.wo * dut.nbo
    beats = pixels_to_beats(images, dut.p_in, dut.in_bits, rng)
    per_image = dut.resources().cycles
    return run_param_block(dut, words, beats, count, dut.p_out, rng, p_idle, p_stall, 60,
                           "DynamicConv1x1",
                           2000 + len(words) * 8 + 12 * len(images) * per_image)


def one_case(rng, *, h, w, cin, cout, p_in, p_out, stride, kernels, att_step, in_bits=8,
             weight_bits=8, act_bits=8, requant=True, n_img=3, p_idle=0.0, p_stall=0.0,
             layer_id=3, big_lut=False, mix_mode=None):
    print(f"H={h} W={w} cin={cin} cout={cout} p_in={p_in} p_out={p_out} s={stride} "
          f"K={kernels} t={att_step} bits={in_bits}/{weight_bits}/{act_bits} "
          f"requant={requant} idle={p_idle} stall={p_stall} mix_mode={mix_mode}")
    layer = random_layer(rng, h=h, w=w, cin=cin, cout=cout, kernels=kernels, stride=stride,
                         att_step=att_step, in_bits=in_bits, weight_bits=weight_bits,
                         act_bits=act_bits, requant=requant, big_lut=big_lut)
    dut = DynamicConv1x1(width=w, height=h, cin=cin, cout=cout, p_in=p_in, p_out=p_out,
                         stride=stride, kernels=kernels, att_step=att_step, in_bits=in_bits,
                         weight_bits=weight_bits, act_bits=act_bits, requant=requant,
                         layer_id=layer_id, mix_mode=mix_mode)
    # Decoy words of the neighbouring layers must be ignored.
    decoy = random_layer(rng, h=h, w=w, cin=cin, cout=cout, kernels=kernels, stride=stride,
                         att_step=att_step, in_bits=in_bits, weight_bits=weight_bits,
                         act_bits=act_bits, requant=True)
    words = (dynamic_conv_param_words(layer_id - 1, decoy, p_in, p_out)
             + dynamic_conv_param_words(layer_id, layer, p_in, p_out)
             + dynamic_conv_param_words(layer_id + 1, decoy, p_in, p_out))
    images = np.array([[[[rng.randrange(1 << in_bits) for _ in range(cin)] for _ in range(w)]
                        for _ in range(h)] for _ in range(n_img)], np.int64)
    got = run_dynconv(dut, words, images, rng, p_idle, p_stall)
    assert_pixel_beats(got, golden(images, layer, act_bits), p_out)
    return dut


@pytest.mark.parametrize("case", range(8))
def test_dynamic_conv_random(case):
    rng, _ = make_rng(f"test_dynamic_conv_random[{case}]")
    p_in, p_out = rng.choice([1, 2, 3]), rng.choice([1, 2, 3])
    one_case(rng, h=rng.randint(1, 5), w=rng.randint(1, 5),
             cin=rng.randint(1, 3 * p_in + 1), cout=rng.randint(1, 3 * p_out + 1),
             p_in=p_in, p_out=p_out, stride=rng.choice([1, 2]), kernels=rng.randint(2, 4),
             att_step=rng.randint(1, 3), in_bits=rng.choice([4, 8]),
             weight_bits=rng.choice([4, 8]), act_bits=rng.choice([4, 8]),
             requant=case % 3 != 2, n_img=rng.randint(2, 3),
             p_idle=rng.choice([0.0, 0.3, 0.6]), p_stall=rng.choice([0.0, 0.3, 0.8]),
             big_lut=case % 4 == 3)


@pytest.mark.parametrize("shape, mode", [
    # (h, w, cin, cout, p_in, p_out, stride, K, t, requant), forced mixing schedule
    ((5, 3, 5, 3, 2, 2, 2, 3, 2, True), "buffered"),  # odd sizes, stride 2, C % lanes != 0
    ((1, 1, 3, 4, 1, 4, 1, 2, 1, False), "serial"),   # a 1x1 map, raw logits
    ((4, 4, 7, 5, 3, 1, 1, 4, 3, True), "buffered"),
    ((2, 2, 9, 9, 1, 4, 1, 2, 1, True), "parallel"),  # K dedicated mixing multipliers
    ((5, 3, 5, 3, 2, 2, 2, 3, 2, True), None),        # the default (a banked schedule)
    ((6, 6, 7, 5, 3, 2, 1, 3, 2, True), "bank_serial"),
    ((3, 3, 5, 7, 2, 3, 1, 4, 1, False), "bank_serial"),
    ((5, 4, 7, 5, 3, 2, 1, 3, 2, True), "bank_row1x6"),   # whole rows, one kernel a cycle
    ((3, 2, 5, 7, 2, 3, 2, 3, 1, True), "bank_row2x6"),   # K % kpc != 0: a half-empty group
    ((3, 3, 4, 6, 2, 4, 1, 4, 1, False), "bank_row4x8"),  # all K kernels at once
    ((3, 3, 4, 6, 2, 4, 1, 4, 1, False), "bank_row2x3"),  # 3 + 3 + 2 lanes of a row
    ((1, 1, 5, 6, 2, 2, 1, 3, 1, True), "bank_row1x4"),   # 1x1 map, shared Requant
    ((1, 1, 5, 6, 2, 2, 1, 3, 1, True), "bank_row1x4o"),  # overlapped attention/mixing
    ((3, 2, 5, 7, 2, 3, 2, 3, 1, False), "bank_row2x1o"),
])
def test_dynamic_conv_edges(shape, mode):
    h, w, cin, cout, p_in, p_out, stride, kernels, t, requant = shape
    rng, _ = make_rng(f"test_dynamic_conv_edges[{shape}-{mode}]")
    dut = one_case(rng, h=h, w=w, cin=cin, cout=cout, p_in=p_in, p_out=p_out, stride=stride,
                   kernels=kernels, att_step=t, requant=requant, n_img=4, p_idle=0.3,
                   p_stall=0.7, mix_mode=mode)
    if mode is None:
        assert dut.geo["banked"]
    else:
        assert regime(dut.geo)[0] == mode


@pytest.mark.parametrize("case", range(2))
def test_dynamic_conv_netgen_layer(case):
    """Layers from ``models.netgen`` (calibrated on the batch: exp table up to 65535, the
    attention spread over the table), a hidden layer and a classifier."""
    rng, seed = make_rng(f"test_dynamic_conv_netgen_layer[{case}]")
    nrng = np.random.default_rng(seed)
    h, w, cin, cout = rng.randint(2, 5), rng.randint(2, 5), rng.randint(2, 9), rng.randint(2, 7)
    p_in, p_out, stride = rng.randint(1, 3), rng.randint(1, 3), rng.choice([1, 2])
    images = nrng.integers(0, 256, (3, h, w, cin))
    last = case == 1
    layer = dynamic_conv_layer(nrng, images, 8, 127, cout, stride, last)
    print(f"H={h} W={w} cin={cin} cout={cout} p_in={p_in} p_out={p_out} s={stride} "
          f"K={layer.kernels} t={layer.att_step} last={last}")
    dut = DynamicConv1x1(width=w, height=h, cin=cin, cout=cout, p_in=p_in, p_out=p_out,
                         stride=stride, kernels=layer.kernels, att_step=layer.att_step,
                         in_bits=8, weight_bits=8, act_bits=8, requant=not last, layer_id=5)
    got = run_dynconv(dut, dynamic_conv_param_words(5, layer, p_in, p_out), images, rng,
                      0.3, 0.5)
    assert_pixel_beats(got, golden(images, layer, 8), p_out)


def measure_case(rng, shape, mix_mode=None):
    """Images back to back, no stalls: the measured cycles per image equal ``cost`` (and the
    outputs are still exact)."""
    h, w, cin, cout, p_in, p_out, stride, kernels, t, requant = shape
    print(f"shape {shape} mix_mode {mix_mode}")
    layer = random_layer(rng, h=h, w=w, cin=cin, cout=cout, kernels=kernels, stride=stride,
                         att_step=t, in_bits=8, weight_bits=8, act_bits=8, requant=requant)
    dut = DynamicConv1x1(width=w, height=h, cin=cin, cout=cout, p_in=p_in, p_out=p_out,
                         stride=stride, kernels=kernels, att_step=t, in_bits=8,
                         weight_bits=8, act_bits=8, requant=requant, mix_mode=mix_mode)
    # Banked schedules reuse a MacArray bank every second image: two more images.
    n = 6 if dut.geo["banked"] else 4
    images = np.array([[[[rng.randrange(256) for _ in range(cin)] for _ in range(w)]
                        for _ in range(h)] for _ in range(n)], np.int64)
    beats = pixels_to_beats(images, p_in, 8, None)
    total = n * dut.ho * dut.wo * dut.nbo
    period, out = measure_image_period(dut, beats, total,
                                       params=dynamic_conv_param_words(0, layer, p_in, p_out))
    cost = dut.resources()
    g = dut.geo
    print(f"measured {period} cycles/image; cost {cost.cycles} (receive {g['receive']}, "
          f"process {g['process']}, conv {g['conv']})")
    got = [([int(b.data[k]) for k in range(p_out)], int(b.last)) for b in out]
    assert_pixel_beats(got, golden(images, layer, 8), p_out)
    assert period == cost.cycles
    return g


def regime(g):
    """(weight-mixing mode, what bounds the period) of a geometry."""
    if g["banked"]:
        mode = g["mix_mode"] + (f"{g['mix_kpc']}x{g['mix_lpc']}" if g["mix_kpc"] else "")
        if g["mix_overlap"]:
            mode += "o"
        if g["receive"] >= max(g["conv"], g["process"]):
            return mode, "input"
        if g["conv"] >= g["process"]:
            return mode, "conv"
        if g["mix_overlap"]:
            # Two stages: the attention or the mixing (of the previous image) is longer.
            return mode, "attention" if g["attention"] + 1 >= g["mixing"] else "mixing"
        return mode, "sequencer"
    if g["receive"] >= g["process"]:
        return g["mix_mode"], "input"
    if g["mix_mode"] == "buffered":
        return g["mix_mode"], "drain" if g["drain"] >= g["attention"] else "attention"
    drain = g["drain"] + 2 >= g["feed"] + 3 + g["attention"]
    return g["mix_mode"], "drain" if drain else "attention"


@pytest.mark.parametrize("shape, expect", [
    # (h, w, cin, cout, p_in, p_out, stride, K, t, requant), (mixing mode, bound)
    ((3, 4, 5, 6, 2, 2, 1, 3, 2, True), ("buffered", "attention")),
    ((3, 3, 2, 8, 1, 1, 1, 2, 1, True), ("buffered", "drain")),
    ((2, 2, 9, 9, 1, 4, 1, 2, 1, True), ("parallel", "drain")),   # shared Requant, 3 groups
    ((1, 1, 1, 5, 4, 4, 2, 2, 1, True), ("parallel", "attention")),
    ((2, 2, 3, 3, 3, 3, 1, 2, 1, True), ("serial", "attention")),  # NBi * NBo = 1
    ((2, 3, 3, 2, 3, 1, 2, 2, 1, False), ("serial", "attention")),
    ((1, 1, 4, 3, 2, 2, 1, 2, 1, False), ("serial", "attention")),  # one pixel per image
    # Banked schedules (the next image mixed into the MacArray's other bank during this
    # image's conv): the period is the conv, the input or the attention/mixing sequencer.
    ((8, 5, 1, 3, 2, 1, 1, 2, 3, False), ("bank_serial", "conv")),
    ((8, 6, 3, 1, 1, 4, 2, 3, 1, True), ("bank_serial", "input")),
    ((1, 1, 1, 3, 1, 1, 2, 2, 2, True), ("bank_serial", "sequencer")),
    ((2, 6, 3, 6, 1, 2, 1, 2, 2, True), ("bank_row1x2", "conv")),
    ((7, 9, 2, 2, 1, 2, 2, 2, 2, False), ("bank_row1x1", "input")),
    ((1, 2, 1, 12, 1, 4, 1, 4, 2, True), ("bank_row1x1", "sequencer")),
    ((5, 3, 3, 8, 1, 3, 1, 3, 3, True), ("bank_row2x3", "conv")),
    ((7, 5, 3, 2, 1, 4, 2, 2, 1, False), ("bank_row2x4", "input")),
    ((1, 1, 1, 8, 1, 3, 2, 3, 3, True), ("bank_row3x1", "sequencer")),
    ((4, 4, 16, 48, 16, 2, 1, 4, 1, True), ("bank_row2x7", "conv")),  # the digits layer
    ((4, 4, 16, 48, 16, 2, 1, 4, 1, True), ("bank_row1x11", "sequencer")),
    # Overlapped row mixing (the next image's attention during this one's mixing).
    ((1, 1, 1, 4, 1, 2, 1, 3, 2, True), ("bank_row1x1o", "attention")),
    ((1, 1, 3, 12, 1, 4, 1, 2, 2, True), ("bank_row1x1o", "mixing")),
    ((1, 1, 48, 10, 4, 2, 1, 4, 1, False), ("bank_row1x8o", "attention")),  # classifier
    ((3, 1, 1, 8, 4, 3, 1, 3, 2, False), ("bank_row2x1o", "mixing")),
    ((2, 6, 3, 6, 1, 2, 1, 2, 2, True), ("bank_row1x2o", "conv")),
    ((7, 9, 2, 2, 1, 2, 2, 2, 2, False), ("bank_row1x1o", "input")),
])
def test_dynamic_conv_cycle_model_is_exact(shape, expect):
    rng, _ = make_rng(f"test_dynamic_conv_cycle_model_is_exact[{shape}]")
    g = measure_case(rng, shape, mix_mode=expect[0])
    assert regime(g) == expect, "the case no longer tests its regime"


def test_dynamic_conv_cycle_model_input_bound():
    """Receive (``H·W·NBi``) longer than processing: one image per ``H·W·NBi`` cycles, the
    ping-pong map banks never hold the input off."""
    rng, _ = make_rng("test_dynamic_conv_cycle_model_input_bound")
    g = measure_case(rng, (8, 8, 2, 1, 1, 1, 2, 2, 3, True), mix_mode="serial")
    assert g["receive"] > g["process"] and regime(g) == ("serial", "input")


@pytest.mark.parametrize("case", range(4))
def test_dynamic_conv_cycle_model_random(case):
    rng, _ = make_rng(f"test_dynamic_conv_cycle_model_random[{case}]")
    p_in, p_out = rng.randint(1, 4), rng.randint(1, 4)
    measure_case(rng, (rng.randint(1, 6), rng.randint(1, 6), rng.randint(1, 3 * p_in),
                       rng.randint(1, 3 * p_out), p_in, p_out, rng.choice([1, 2]),
                       rng.randint(2, 4), rng.randint(1, 3), rng.random() < 0.7))


@pytest.mark.parametrize("size, cout, lanes, mode", [(8, 16, 2, "bank_serial"),
                                                     (8, 16, 4, "bank_row1x2"),
                                                     (1, 10, 2, "bank_row2x4o"),
                                                     (8, 16, 4, "buffered"),
                                                     (1, 10, 2, "parallel")])
def test_dynamic_conv_cost_counts(size, cout, lanes, mode):
    """Multipliers and memories as the docstrings state them. By default an 8x8 map at 2x2
    lanes mixes its weights on the shared multiplier into the MacArray's second bank during
    the previous conv; at 4x4 lanes (and a 1x1 map: a classifier after gap, where mixing is
    K times the conv's MACs) on dedicated row-mixing multipliers (there overlapped with the
    next image's attention, the biases on one more dedicated multiplier)."""
    kw = dict(width=size, height=size, cin=16, cout=cout, p_in=lanes, p_out=lanes, stride=1,
              kernels=4, att_step=2, in_bits=8, weight_bits=8, act_bits=8, requant=True)
    forced = mode in ("buffered", "parallel")
    if forced:
        kw["mix_mode"] = mode
    cost = DynamicConv1x1.cost(**kw)
    g = DynamicConv1x1.geometry(**kw)
    assert regime(g)[0] == mode and cost.cycles == g["cycles"]
    names = {x.name: x.count for x in cost.multipliers}
    assert names["mac.mac"] == lanes * lanes and names["att_shared"] == 1
    mixers = {"parallel": 4, "bank_row1x2": 2, "bank_row2x4o": 8}.get(mode, 0)
    assert names.get("mix_weight", 0) == mixers
    assert names.get("mix_bias", 0) == (1 if mode.endswith("o") else 0)
    assert cost.multiplier_count == lanes * lanes + 2 + mixers + names.get("mix_bias", 0)
    mems = {x.name: (x.depth, x.width) for x in cost.memories}
    assert mems["map"] == (2 * size * size * (16 // lanes), 8 * lanes)
    nbo, nbi, banks = -(-cout // lanes), 16 // lanes, 2 if g["banked"] else 1
    if mode.startswith("bank_row"):
        # kpc kernels' MacArray rows side by side, ceil(K / kpc) groups one after another.
        kpc = g["mix_kpc"]
        assert mems["kernel_weights"] == (-(-4 // kpc) * nbo * nbi, kpc * lanes * lanes * 8)
    else:
        assert mems["kernel_weights"] == (nbo * nbi * lanes * lanes, 32)
    assert mems["mac.weights"] == (banks * nbo * nbi, lanes * lanes * 8)
    assert ("mixed_weights" in mems) == (mode == "buffered")


BASE = dict(width=4, height=4, cin=8, cout=8, p_in=2, p_out=2, stride=1, kernels=2,
            att_step=1, in_bits=8, weight_bits=8, act_bits=8, requant=True)


@pytest.mark.parametrize("bad", [dict(width=0), dict(cin=-1), dict(p_out=0), dict(stride=3),
                                 dict(kernels=1), dict(att_step=0), dict(in_bits=0),
                                 dict(weight_bits=1), dict(act_bits=17), dict(layer_id=256),
                                 dict(requant=1), dict(cout="8")])
def test_dynamic_conv_bad_parameters(bad):
    args = dict(BASE, **bad)
    assert_value_error(DynamicConv1x1, **args)
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        DynamicConv1x1.cost(**args)


@pytest.mark.parametrize("shape, mode", [((3, 5, 5, 3, 2, 2, 2, 3, 2, True), None),
                                         ((1, 1, 2, 2, 2, 2, 1, 2, 1, False), None),
                                         ((3, 5, 5, 3, 2, 2, 2, 3, 2, True), "buffered"),
                                         ((3, 3, 4, 6, 2, 4, 1, 4, 1, False), "bank_row2x3"),
                                         ((3, 2, 5, 7, 2, 3, 2, 3, 1, False), "bank_row2x1o"),
                                         ((6, 6, 7, 5, 3, 2, 1, 3, 2, True), "bank_serial")])
def test_dynamic_conv_lint(tmp_path, shape, mode):
    from shiftacc.sim.lint import lint_component
    h, w, cin, cout, p_in, p_out, stride, kernels, t, requant = shape
    dut = DynamicConv1x1(width=w, height=h, cin=cin, cout=cout, p_in=p_in, p_out=p_out,
                         stride=stride, kernels=kernels, att_step=t, in_bits=8,
                         weight_bits=8, act_bits=8, requant=requant, mix_mode=mode)
    ok, msg = lint_component(dut, "dynamic_conv", tmp_path)
    assert ok, msg
