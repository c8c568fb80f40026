# amaranth: UnusedElaboratable=no
"""ChannelMap / Replicate against ``models.golden.replicate`` (and channel indexing)."""

import numpy as np
import pytest

from shiftacc.hw.channel_map import ChannelMap, Replicate, replicate_map
from shiftacc.models import golden
from shiftacc.sim.lint import lint_component
from shiftacc.sim.streamtb import deadline_for, measure_image_period, beats_to_pixels, expected_lasts, pixels_to_beats, make_rng, receive, run_sim, send, run_no_stall


def simulate_map(dut, images, rng, p_idle, p_stall):
    n, h, w, _ = images.shape
    beats = pixels_to_beats(images, dut.lanes_in, dut.bits, rng)
    if dut.is_signed:                 # signed lanes: the payload takes signed values
        for beat in beats:
            beat["data"] = [v - (1 << dut.bits) if v >= 1 << (dut.bits - 1) else v
                            for v in beat["data"]]
    result = {}

    async def tb_in(ctx):
        await send(ctx, dut.i, beats, rng, p_idle)

    async def tb_out(ctx):
        result["out"] = await receive(ctx, dut.o, n * h * w * dut.nb_out, rng, p_stall)

    run_sim(dut, tb_in, tb_out, deadline_cycles=deadline_for(2 * len(beats)))
    got, lasts = beats_to_pixels(result["out"], n, h, w, dut.cout, dut.lanes_out)
    assert lasts == expected_lasts(n, h, w, dut.nb_out)
    # padding lanes of the output are driven to 0
    nb, po = dut.nb_out, dut.lanes_out
    for k, beat in enumerate(result["out"]):
        b = k % nb
        for l in range(po):
            if b * po + l >= dut.cout:
                assert int(beat.data[l]) == 0
    return got


def random_images(rng, seed, n, h, w, c, bits, is_signed=False):
    nprng = np.random.default_rng(seed)
    if is_signed:
        return nprng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (n, h, w, c))
    return nprng.integers(0, 1 << bits, (n, h, w, c))


@pytest.mark.parametrize("case", range(8))
def test_replicate_random(case):
    rng, seed = make_rng(f"test_replicate_random[{case}]")
    c, e = rng.randint(1, 4), rng.randint(1, 9)
    pi, po = rng.randint(1, 4), rng.randint(1, 6)
    h, w, n, bits = rng.randint(1, 3), rng.randint(1, 3), rng.randint(2, 3), rng.choice([4, 8])
    print(f"C={c} E={e} Pin={pi} Pout={po} H={h} W={w} N={n} bits={bits}")
    images = random_images(rng, seed, n, h, w, c, bits)
    dut = Replicate(channels=c, factor=e, lanes_in=pi, lanes_out=po, bits=bits)
    got = simulate_map(dut, images, rng, p_idle=0.3, p_stall=0.3)
    np.testing.assert_array_equal(got, golden.replicate(images, e))


@pytest.mark.parametrize("case", range(8))
def test_width_converter_random(case):
    rng, seed = make_rng(f"test_width_converter_random[{case}]")
    c = rng.randint(1, 11)
    pi, po = rng.randint(1, 5), rng.randint(1, 5)
    is_signed = case % 3 == 2
    bits = rng.choice([4, 8, 32]) if is_signed else rng.choice([4, 8])
    h, w, n = rng.randint(1, 3), rng.randint(1, 3), rng.randint(2, 3)
    print(f"C={c} Pin={pi} Pout={po} H={h} W={w} N={n} bits={bits} signed={is_signed}")
    images = random_images(rng, seed, n, h, w, c, bits, is_signed)
    dut = ChannelMap(cin=c, cout=c, lanes_in=pi, lanes_out=po, bits=bits, is_signed=is_signed)
    got = simulate_map(dut, images, rng, p_idle=0.3, p_stall=0.3)
    np.testing.assert_array_equal(got, images)


@pytest.mark.parametrize("case", range(4))
def test_channel_map_arbitrary_source(case):
    """Any selection/permutation/copy of channels (a superset of replicate)."""
    rng, seed = make_rng(f"test_channel_map_arbitrary_source[{case}]")
    cin, cout = rng.randint(1, 7), rng.randint(1, 9)
    source = [rng.randrange(cin) for _ in range(cout)]
    pi, po = rng.randint(1, 4), rng.randint(1, 4)
    h, w, n = rng.randint(1, 3), rng.randint(1, 3), 2
    print(f"cin={cin} cout={cout} source={source} Pin={pi} Pout={po}")
    images = random_images(rng, seed, n, h, w, cin, 8)
    dut = ChannelMap(cin=cin, cout=cout, lanes_in=pi, lanes_out=po, bits=8, source=source)
    got = simulate_map(dut, images, rng, p_idle=0.4, p_stall=0.4)
    np.testing.assert_array_equal(got, images[..., source])


@pytest.mark.parametrize("cin,e,pi,po", [(3, 3, 1, 3), (4, 1, 4, 1), (2, 4, 2, 4), (5, 2, 3, 2)])
def test_channel_map_throughput(cin, e, pi, po):
    """No stalls: a pixel every max(NB_in, NB_out) cycles, plus a short fill."""
    rng, seed = make_rng("test_channel_map_throughput")
    n, h, w = 2, 3, 3
    images = random_images(rng, seed, n, h, w, cin, 8)
    dut = Replicate(channels=cin, factor=e, lanes_in=pi, lanes_out=po, bits=8)
    beats = pixels_to_beats(images, pi, 8, None)
    total = n * h * w * dut.nb_out
    out, cycles = run_no_stall(dut, beats, total)
    got, _ = beats_to_pixels(out, n, h, w, dut.cout, po)
    np.testing.assert_array_equal(got, golden.replicate(images, e))
    bound = n * h * w * max(dut.nb_in, dut.nb_out) + dut.nb_in + 2
    assert cycles <= bound, (cycles, bound)


@pytest.mark.parametrize("signed_", [False, True])
def test_channel_map_lint(tmp_path, signed_):
    dut = ChannelMap(cin=5, cout=7, lanes_in=2, lanes_out=3, bits=8,
                     source=[0, 4, 4, 1, 2, 3, 0], is_signed=signed_)
    ok, msgs = lint_component(dut, "channel_map", tmp_path)
    assert ok, msgs
    ok, msgs = lint_component(Replicate(channels=1, factor=9, lanes_in=1, lanes_out=3, bits=8),
                              "replicate", tmp_path)
    assert ok, msgs


def test_channel_map_bad_params():
    good = dict(cin=3, cout=3, lanes_in=2, lanes_out=2, bits=8)
    for bad in (dict(cin=0), dict(lanes_in=0), dict(lanes_out=-1), dict(bits=0),
                dict(cout=4), dict(source=[0, 1]), dict(source=[0, 1, 3]),
                dict(source=[0, -1, 2])):
        with pytest.raises(ValueError):
            ChannelMap(**{**good, **bad})
    with pytest.raises(ValueError):
        Replicate(channels=2, factor=0, lanes_in=1, lanes_out=1, bits=8)
    with pytest.raises(ValueError):
        replicate_map(0, 3)
    assert replicate_map(2, 3) == [0, 1, 0, 1, 0, 1]


# ---- the block's cycle model (its ``cost``) is exact: measured images back to back -------

@pytest.mark.parametrize("case", range(6))
def test_channel_map_cycle_model_is_exact(case):
    rng, seed = make_rng(f"test_channel_map_cycle_model_is_exact[{case}]")
    h, w = rng.randint(1, 4), rng.randint(1, 4)
    cin = rng.randint(1, 10)
    pi, po = rng.randint(1, cin), rng.randint(1, cin)
    print(f"H={h} W={w} C={cin} lanes {pi}->{po}")
    dut = ChannelMap(cin=cin, cout=cin, lanes_in=pi, lanes_out=po, bits=8)
    n = 4
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, cin))
    period, out = measure_image_period(dut, pixels_to_beats(images, pi, 8, None),
                                       n * h * w * dut.nb_out)
    got, _ = beats_to_pixels(out, n, h, w, cin, po)
    np.testing.assert_array_equal(got, images)
    cost = ChannelMap.cost(cin=cin, cout=cin, lanes_in=pi, lanes_out=po, bits=8, pixels=h * w)
    assert period == cost.cycles == h * w * max(dut.nb_in, dut.nb_out)
