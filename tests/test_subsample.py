# amaranth: UnusedElaboratable=no
"""Subsample2 against the golden stride-2 pixel selection (``conv1x1``'s ``in[2y, 2x]``)."""

import numpy as np
import pytest

from shiftacc.hw.subsample import Subsample2
from shiftacc.models import golden
from shiftacc.sim.lint import lint_component
from shiftacc.sim.streamtb import deadline_for, measure_image_period, beats_to_pixels, expected_lasts, pixels_to_beats, make_rng, receive, run_sim, send, run_no_stall


def golden_subsample(images):
    """What a stride-2 conv1x1 reads: the golden op with an identity weight and zero bias."""
    c = images.shape[-1]
    return golden.conv1x1(images, np.eye(c, dtype=np.int64), np.zeros(c, np.int64), stride=2)


def simulate(dut, images, rng, p_idle, p_stall):
    n, h, w, c = images.shape
    ho, wo = -(-h // 2), -(-w // 2)
    beats = pixels_to_beats(images, dut.lanes, dut.bits, rng)
    result = {"cycles": 0}

    async def tb_in(ctx):
        await send(ctx, dut.i, beats, rng, p_idle)

    async def tb_out(ctx):
        result["out"] = await receive(ctx, dut.o, n * ho * wo * dut.nb, rng, p_stall)

    run_sim(dut, tb_in, tb_out, deadline_cycles=deadline_for(2 * len(beats)))
    return beats_to_pixels(result["out"], n, ho, wo, c, dut.lanes)


@pytest.mark.parametrize("case", range(8))
def test_subsample_random(case):
    rng, seed = make_rng(f"test_subsample_random[{case}]")
    w, h, c, p = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 6), rng.randint(1, 4)
    if case == 0:
        w, h = 1, 1
    bits, n = rng.choice([4, 8]), rng.randint(2, 3)
    print(f"W={w} H={h} C={c} P={p} bits={bits} N={n}")
    images = np.random.default_rng(seed).integers(0, 1 << bits, (n, h, w, c))
    dut = Subsample2(width=w, height=h, channels=c, lanes=p, bits=bits)
    got, lasts = simulate(dut, images, rng, p_idle=0.3, p_stall=0.85 if case % 2 else 0.3)
    np.testing.assert_array_equal(got, golden_subsample(images))
    assert lasts == expected_lasts(n, -(-h // 2), -(-w // 2), dut.nb)


def test_subsample_throughput():
    """No stalls: every input beat is accepted in its cycle (N*H*W*NB cycles + 1)."""
    rng, seed = make_rng("test_subsample_throughput")
    n, h, w, c, p = 3, 5, 4, 3, 2
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    dut = Subsample2(width=w, height=h, channels=c, lanes=p, bits=8)
    beats = pixels_to_beats(images, p, 8, None)
    total = n * 3 * 2 * dut.nb
    out, cycles = run_no_stall(dut, beats, total)
    got, _ = beats_to_pixels(out, n, 3, 2, c, p)
    np.testing.assert_array_equal(got, golden_subsample(images))
    # the last kept beat (last row, x = 2, b = NB-1 of the last image) is accepted at clock
    # edge (its index + 1), sits one cycle in the output register, is sampled at the next edge
    last_kept = n * h * w * dut.nb - (w - 1 - 2) * dut.nb - 1
    assert cycles <= last_kept + 2, (cycles, last_kept)


@pytest.mark.parametrize("w,h,c,p", [(5, 4, 5, 2), (1, 1, 1, 1)])
def test_subsample_lint(tmp_path, w, h, c, p):
    ok, msgs = lint_component(Subsample2(width=w, height=h, channels=c, lanes=p, bits=8),
                              "subsample2", tmp_path)
    assert ok, msgs


@pytest.mark.parametrize("kwargs", [dict(width=0), dict(height=0), dict(channels=0),
                                    dict(lanes=0), dict(bits=-2)])
def test_subsample_bad_params(kwargs):
    with pytest.raises(ValueError):
        Subsample2(**{**dict(width=4, height=4, channels=3, lanes=2, bits=8), **kwargs})


# ---- the block's cycle model (its ``cost``) is exact: measured images back to back -------

@pytest.mark.parametrize("case", range(4))
def test_subsample_cycle_model_is_exact(case):
    rng, seed = make_rng(f"test_subsample_cycle_model_is_exact[{case}]")
    w, h, c, p = rng.randint(1, 8), rng.randint(1, 7), rng.randint(1, 9), rng.randint(1, 4)
    print(f"W={w} H={h} C={c} P={p}")
    dut = Subsample2(width=w, height=h, channels=c, lanes=p, bits=8)
    n = 4
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    ho, wo = -(-h // 2), -(-w // 2)
    period, out = measure_image_period(dut, pixels_to_beats(images, p, 8, None),
                                       n * ho * wo * dut.nb)
    got, _ = beats_to_pixels(out, n, ho, wo, c, p)
    np.testing.assert_array_equal(got, images[:, ::2, ::2, :])
    cost = Subsample2.cost(width=w, height=h, channels=c, lanes=p, bits=8)
    assert period == cost.cycles == h * w * dut.nb
