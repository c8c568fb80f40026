# amaranth: UnusedElaboratable=no
"""MaxPool2 against ``models.golden.maxpool2`` in amaranth.sim: random shapes and stalls."""

import numpy as np
import pytest

from shiftacc.hw.maxpool import MaxPool2
from shiftacc.models import golden
from shiftacc.sim.lint import lint_component
from shiftacc.sim.streamtb import deadline_for, measure_image_period, beats_to_pixels, expected_lasts, pixels_to_beats, make_rng, receive, run_sim, send, run_no_stall


def simulate_pool(dut, images, rng, p_idle, p_stall):
    n, h, w, c = images.shape
    beats = pixels_to_beats(images, dut.lanes, dut.bits, rng)
    result = {}

    async def tb_in(ctx):
        await send(ctx, dut.i, beats, rng, p_idle)

    async def tb_out(ctx):
        result["out"] = await receive(ctx, dut.o, n * (h // 2) * (w // 2) * dut.nb, rng, p_stall)

    run_sim(dut, tb_in, tb_out, deadline_cycles=deadline_for(2 * len(beats)))
    return beats_to_pixels(result["out"], n, h // 2, w // 2, c, dut.lanes)


CASES = [(2, 2, 1, 1), (3, 5, 3, 2), (5, 3, 4, 4), (2, 7, 5, 3), (4, 4, 2, 1), (7, 2, 1, 1)]


@pytest.mark.parametrize("case", range(len(CASES) + 4))
def test_maxpool_random(case):
    rng, seed = make_rng(f"test_maxpool_random[{case}]")
    if case < len(CASES):
        w, h, c, p = CASES[case]
    else:
        w, h, c, p = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 6), rng.randint(1, 4)
    bits, n = rng.choice([4, 8]), rng.randint(2, 3)
    print(f"W={w} H={h} C={c} P={p} bits={bits} N={n}")
    images = np.random.default_rng(seed).integers(0, 1 << bits, (n, h, w, c))
    dut = MaxPool2(width=w, height=h, channels=c, lanes=p, bits=bits)
    p_stall = 0.85 if case % 3 == 2 else 0.3      # some runs with heavy backpressure
    got, lasts = simulate_pool(dut, images, rng, p_idle=0.3 if case % 2 else 0.0,
                               p_stall=p_stall)
    np.testing.assert_array_equal(got, golden.maxpool2(images))
    assert lasts == expected_lasts(n, h // 2, w // 2, dut.nb)


@pytest.mark.parametrize("w,h,c,p", [(4, 4, 3, 2), (5, 3, 1, 1), (2, 2, 4, 1)])
def test_maxpool_throughput(w, h, c, p):
    """No stalls: one input beat per cycle, N images in N*H*W*NB cycles + 2."""
    rng, seed = make_rng("test_maxpool_throughput")
    n = 3
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    dut = MaxPool2(width=w, height=h, channels=c, lanes=p, bits=8)
    beats = pixels_to_beats(images, p, 8, None)
    total = n * (h // 2) * (w // 2) * dut.nb
    out, cycles = run_no_stall(dut, beats, total)
    got, _ = beats_to_pixels(out, n, h // 2, w // 2, c, p)
    np.testing.assert_array_equal(got, golden.maxpool2(images))
    # the last emitted beat is the last input beat of the last full window (+ 2 stages)
    assert cycles <= n * h * w * dut.nb + 2, cycles


@pytest.mark.parametrize("w,h,c,p", [(5, 4, 5, 2), (2, 2, 1, 1), (3, 3, 2, 4)])
def test_maxpool_lint(tmp_path, w, h, c, p):
    ok, msgs = lint_component(MaxPool2(width=w, height=h, channels=c, lanes=p, bits=8),
                              "maxpool2", tmp_path)
    assert ok, msgs


@pytest.mark.parametrize("kwargs", [dict(width=1), dict(height=1), dict(width=0),
                                    dict(channels=0), dict(lanes=0), dict(bits=0),
                                    dict(height=3.0)])
def test_maxpool_bad_params(kwargs):
    with pytest.raises(ValueError):
        MaxPool2(**{**dict(width=4, height=4, channels=3, lanes=2, bits=8), **kwargs})


# ---- the block's cycle model (its ``cost``) is exact: measured images back to back -------

@pytest.mark.parametrize("case", range(5))
def test_maxpool_cycle_model_is_exact(case):
    rng, seed = make_rng(f"test_maxpool_cycle_model_is_exact[{case}]")
    w, h, c, p = rng.randint(2, 8), rng.randint(2, 7), rng.randint(1, 9), rng.randint(1, 4)
    print(f"W={w} H={h} C={c} P={p}")
    dut = MaxPool2(width=w, height=h, channels=c, lanes=p, bits=8)
    n = 4
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    period, out = measure_image_period(dut, pixels_to_beats(images, p, 8, None),
                                       n * (h // 2) * (w // 2) * dut.nb)
    got, _ = beats_to_pixels(out, n, h // 2, w // 2, c, p)
    np.testing.assert_array_equal(got, golden.maxpool2(images))
    assert period == dut.resources().cycles == h * w * dut.nb
