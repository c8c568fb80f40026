"""SpatialAttention == ``models.golden.spatial_attention`` under random shapes, parameters and
stalls; its cycle model (``cost().cycles``) is measured exactly."""

import numpy as np
import pytest

from shiftacc.hw.params import spatial_attention_param_words
from shiftacc.hw.spatial_attention import SpatialAttention
from shiftacc.models import golden, netgen
from shiftacc.models.layer import Layer
from shiftacc.sim.streamtb import (assert_pixel_beats, assert_value_error, deadline_for, make_rng,
                                   measure_image_period, pixels_to_beats, run_param_block)


def _rq(v, m, sh):
    return golden.round_shift(v, m, sh)


def expected(x, layer, act_bits):
    return np.asarray(golden.spatial_attention(x, layer, act_bits), np.int64)


def _shift_for(rng, typical, mult, target_bits):
    """A shift that maps ``typical * mult`` to about ``target_bits`` bits (jittered)."""
    return min(47, max(1, int(typical * mult).bit_length() - target_bits
                       + rng.randint(-1, 1)))


def random_layer(rng, *, height, width, channels, bits, act_bits):
    """A spatial_attention layer whose p, u, z and i are spread, not all clamped."""
    c = channels
    a_max = (1 << act_bits) - 1
    pool_m = rng.randint(1, 65535)
    pool_sh = _shift_for(rng, height * width * ((1 << bits) - 1) // 2 + 1, pool_m, act_bits)
    ctx_weight = np.array([[rng.randint(-128, 127) for _ in range(c)] for _ in range(c)],
                          np.int64)
    ctx_bias = np.array([rng.randint(-5000, 5000) for _ in range(c)], np.int64)
    ctx_m = rng.randint(1, 65535)
    v_typ = int(128 * (a_max // 2 + 1) * max(1.0, c ** 0.5)) + 1
    ctx_sh = _shift_for(rng, v_typ, ctx_m, 7)
    bias = rng.randint(-3000, 3000)
    z_m = rng.randint(1, 65535)
    z_typ = int(64 * ((1 << bits) // 2 + 1) * max(1.0, c ** 0.5)) + 1
    z_sh = _shift_for(rng, z_typ, z_m, 7)
    lut = np.array([rng.choice([0, 256, rng.randint(0, 256)]) for _ in range(256)],
                   np.int64)
    fields = dict(pool_m=pool_m, pool_sh=pool_sh, ctx_m=ctx_m, ctx_sh=ctx_sh, bias=bias,
                  z_m=z_m, z_sh=z_sh, ctx_weight=ctx_weight.astype(np.int8),
                  ctx_bias=ctx_bias.astype(np.int32), lut=lut.astype(np.uint16))
    return Layer(op="spatial_attention", **fields)


def run_block(dut, words, images, rng, p_idle, p_stall):
    """Load ``words``, stream ``images`` [N, H, W, C] with stalls; the output beats."""
    n, h, w, c = images.shape
    count = n * h * w * dut.nb
    beats = pixels_to_beats(images, dut.lanes, dut.bits, rng)
    # Stalls slow every beat by a few cycles; the context unit adds its cycles per image.
    return run_param_block(dut, words, beats, count, dut.lanes, rng, p_idle, p_stall,
                           dut.fifo_depth + 40, "SpatialAttention",
                           deadline_for(2 * len(beats) + len(words) + 4 * n * dut.ctx_cycles))


def one_case(rng, *, height, width, channels, lanes, bits, act_bits, n_img, p_idle, p_stall,
             layer_id=3, calibrated=False):
    print(f"H={height} W={width} C={channels} P={lanes} bits={bits} act_bits={act_bits} "
          f"images={n_img} idle={p_idle} stall={p_stall} calibrated={calibrated}")
    images = np.array([[[[rng.randrange(1 << bits) for _ in range(channels)]
                         for _ in range(width)] for _ in range(height)]
                       for _ in range(n_img)], np.int64)
    if calibrated:
        # models.netgen's layer, calibrated on this batch (the scales a real export picks).
        layer = netgen.spatial_attention_layer(np.random.default_rng(rng.randrange(1 << 30)),
                                               images, act_bits, rng.choice([1, 7, 127]))
    else:
        layer = random_layer(rng, height=height, width=width, channels=channels, bits=bits,
                             act_bits=act_bits)
    decoy = random_layer(rng, height=height, width=width, channels=channels, bits=bits,
                         act_bits=act_bits)
    dut = SpatialAttention(width=width, height=height, channels=channels, lanes=lanes,
                           bits=bits, act_bits=act_bits, layer_id=layer_id)
    # Words of other layers (before and after) must be ignored.
    words = (spatial_attention_param_words(layer_id + 1, decoy)
             + spatial_attention_param_words(layer_id, layer)
             + spatial_attention_param_words(layer_id - 1, decoy)[:40])
    want = expected(images, layer, act_bits)
    got = run_block(dut, words, images, rng, p_idle, p_stall)
    assert_pixel_beats(got, want, lanes)
    return dut


@pytest.mark.parametrize("case", range(8))
def test_spatial_attention_random(case):
    rng, _ = make_rng(f"test_spatial_attention_random[{case}]")
    lanes = rng.choice([1, rng.randint(2, 4)])
    one_case(rng, height=rng.randint(1, 4), width=rng.randint(1, 4),
             channels=rng.randint(1, 3 * lanes + 2), lanes=lanes, bits=rng.choice([4, 8]),
             act_bits=rng.choice([4, 8]), n_img=rng.randint(3, 4),
             p_idle=rng.choice([0.0, 0.3]), p_stall=rng.choice([0.0, 0.3, 0.7]),
             calibrated=case % 2 == 1)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 7, 3), (2, 3, 5, 2), (3, 3, 4, 4)])
def test_spatial_attention_edge_shapes(shape):
    """1x1 maps (every pixel is the last), one channel, C = P, C not a multiple of P."""
    height, width, channels, lanes = shape
    rng, _ = make_rng(f"test_spatial_attention_edge_shapes[{shape}]")
    one_case(rng, height=height, width=width, channels=channels, lanes=lanes, bits=8,
             act_bits=8, n_img=3, p_idle=0.2, p_stall=0.6)


def test_spatial_attention_values_spread():
    """The random layers exercise the table: several distinct s per image, not all clamped
    (checked on the reference, so a test of a constant map could not pass silently)."""
    rng, _ = make_rng("test_spatial_attention_values_spread")
    spread = 0
    for _ in range(20):
        h, w, c = rng.randint(2, 4), rng.randint(2, 4), rng.randint(2, 9)
        layer = random_layer(rng, height=h, width=w, channels=c, bits=8, act_bits=8)
        x = np.array([[[[rng.randrange(256) for _ in range(c)] for _ in range(w)]
                       for _ in range(h)]], np.int64)
        p = np.clip(_rq(x.sum(axis=(1, 2)), layer.pool_m, layer.pool_sh), 0, 255)
        v = p @ layer.ctx_weight.astype(np.int64).T + layer.ctx_bias
        u = np.clip(_rq(v, layer.ctx_m, layer.ctx_sh), -128, 127)
        z = np.einsum("nhwc,nc->nhw", x, u) + layer.bias
        i = np.clip(_rq(z, layer.z_m, layer.z_sh), -128, 127)
        spread += len(np.unique(i)) > 2 and not np.all(np.abs(u) == 128)
    assert spread >= 10, f"only {spread} of 20 random layers spread the table index"


@pytest.mark.parametrize("shape", [(1, 1, 20, 2), (2, 2, 9, 1), (3, 2, 6, 4)])
def test_spatial_attention_backpressure(shape):
    """Heavy ready stalls on o: the read credit must hold the output pipeline without losing
    or duplicating beats, the input must wait for banks."""
    height, width, channels, lanes = shape
    rng, _ = make_rng(f"test_spatial_attention_backpressure[{shape}]")
    one_case(rng, height=height, width=width, channels=channels, lanes=lanes, bits=8,
             act_bits=8, n_img=5, p_idle=0.0, p_stall=0.85)


# ---- the cycle model (cost().cycles) is exact: measured, images back to back -----------

@pytest.mark.parametrize("shape,banks", [
    ((4, 4, 5, 2), 2),     # input-bound: T = 48, Tc = 31
    ((1, 1, 6, 2), 2),     # context-bound: 1x1 map, T = 3, Tc = 35
    ((8, 8, 16, 2), 2),    # the realistic case of the report: T = 512, Tc = 155
    ((13, 1, 1, 1), 3),    # T = Tc = 13: two banks would alternate 13 and 14 cycles
    ((2, 8, 7, 4), 3),     # T = Tc = 32
    ((3, 4, 1, 1), 2),     # T = 12, Tc = 13
    ((2, 7, 12, 1), 2),    # T = 168, Tc = 167
    ((3, 3, 7, 3), 2),
])
def test_spatial_attention_cycle_model_is_exact(shape, banks):
    height, width, channels, lanes = shape
    rng, seed = make_rng(f"test_spatial_attention_cycle_model_is_exact[{shape}]")
    dut = SpatialAttention(width=width, height=height, channels=channels, lanes=lanes, bits=8,
                           act_bits=8)
    layer = random_layer(rng, height=height, width=width, channels=channels, bits=8,
                         act_bits=8)
    if banks is not None:
        assert dut.banks == banks
    measure_period(dut, rng, seed, layer, shape)


def measure_period(dut, rng, seed, layer, shape):
    """The period between the last two images of 4 and of 5 images back to back (both
    parities, so a schedule alternating two periods cannot pass), outputs checked."""
    height, width, channels, lanes = shape
    cost = dut.resources()
    for n in (4, 5):
        images = np.random.default_rng(seed + n).integers(0, 256, (n, height, width, channels))
        beats = pixels_to_beats(images, lanes, 8, None)
        period, out = measure_image_period(dut, beats, n * height * width * dut.nb,
                                           params=spatial_attention_param_words(0, layer))
        print(f"{shape}: {n} images: measured {period} cycles/image, cost {cost.cycles}, "
              f"banks {dut.banks}")
        assert period == cost.cycles == max(height * width * dut.nb,
                                            channels * dut.nb + channels + 11)
        got = [([int(p.data[l]) for l in range(lanes)], int(p.last)) for p in out]
        assert_pixel_beats(got, expected(images, layer, 8), lanes)


@pytest.mark.parametrize("case", range(4))
def test_spatial_attention_cycle_model_random(case):
    rng, seed = make_rng(f"test_spatial_attention_cycle_model_random[{case}]")
    lanes = rng.randint(1, 4)
    shape = (rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 3 * lanes + 2), lanes)
    dut = SpatialAttention(width=shape[1], height=shape[0], channels=shape[2], lanes=lanes,
                           bits=8, act_bits=8)
    layer = random_layer(rng, height=shape[0], width=shape[1], channels=shape[2], bits=8,
                         act_bits=8)
    measure_period(dut, rng, seed, layer, shape)


def test_spatial_attention_cost_counts():
    """Multipliers and memories as the docstring states them (3P + 3 multipliers)."""
    cost = SpatialAttention.cost(width=8, height=8, channels=16, lanes=2, bits=8, act_bits=8)
    assert cost.multiplier_count == 3 * 2 + 3
    names = {mem.name: mem for mem in cost.memories}
    assert names["pixels"].depth == 2 * 64 * 8 and names["pixels"].width == 16
    assert names["lut"].depth == 256


@pytest.mark.parametrize("kwargs", [dict(width=0), dict(height=-1), dict(channels="8"),
                                    dict(lanes=0), dict(bits=0), dict(act_bits=17),
                                    dict(layer_id=256), dict(bits=True)])
def test_spatial_attention_bad_parameters(kwargs):
    args = dict(width=4, height=4, channels=8, lanes=2, bits=8, act_bits=8)
    args.update(kwargs)
    assert_value_error(SpatialAttention, **args)
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        SpatialAttention.cost(**args)


@pytest.mark.parametrize("shape", [(3, 2, 5, 2), (1, 1, 1, 1), (13, 1, 1, 1)])
def test_spatial_attention_lint(tmp_path, shape):
    """Verilator -Wall on the emitted Verilog (two banks, a 1x1x1 map, three banks)."""
    from shiftacc.sim.lint import lint_component
    height, width, channels, lanes = shape
    dut = SpatialAttention(width=width, height=height, channels=channels, lanes=lanes, bits=8,
                           act_bits=4)
    ok, msg = lint_component(dut, "spatial_attention", tmp_path)
    assert ok, msg
