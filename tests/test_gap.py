"""GlobalAvgPool == ``models.golden.gap`` under random shapes, parameters and stalls."""

import numpy as np
import pytest

from shiftacc.hw.gap import GlobalAvgPool
from shiftacc.hw.params import ParamKind, encode_word, gap_param_words
from shiftacc.models.golden import gap
from shiftacc.sim.lint import lint_component
from shiftacc.sim.streamtb import deadline_for, measure_image_period, pixel_beats, send_params, assert_value_error, receive_and_drain, make_rng, run_sim, send


def random_requant(rng, height, width, in_bits, act_bits):
    """(m, sh) scaling a typical sum into about act_bits bits, jittered so that both the
    clamps and the interior of the output range occur."""
    mult = rng.randint(1, 65535)
    typical = max(1, height * width * ((1 << in_bits) - 1) // 2 * mult)
    sh = min(47, max(1, typical.bit_length() - act_bits + rng.randint(-2, 2)))
    return mult, sh


def run_gap(dut, words, images, rng, p_idle, p_stall, timing=None):
    """Load (m, sh), stream ``images`` [N, H, W, C], return the output beats (data, last)."""
    count = len(images) * dut.nb
    got = []
    shared = {"cycle": 0}
    per_image = images.shape[1] * images.shape[2] * dut.nb

    async def clock(ctx):
        while len(got) < count:
            await ctx.tick()
            shared["cycle"] += 1

    async def producer(ctx):
        await send_params(ctx, dut.params, words, rng, p_idle)
        shared["t0"] = shared["cycle"]
        beats = []
        for img in images:
            flat = img.reshape(-1, img.shape[-1])
            for n, px in enumerate(flat):
                beats += pixel_beats(px, dut.lanes, dut.in_bits, n == len(flat) - 1, rng)
        await send(ctx, dut.i, beats, rng, p_idle)

    async def consumer(ctx):
        got.extend(await receive_and_drain(
            ctx, dut.o, count, dut.lanes, rng, p_stall, dut.latency + 4, "GAP",
            on_last=lambda: shared.__setitem__("t1", shared["cycle"])))

    # A stall ends the run at this deadline with a report naming the stalled stream.
    run_sim(dut, clock, producer, consumer,
            deadline_cycles=200 + 30 * len(images) * per_image + len(words))
    if timing is not None:
        timing.update(shared)
    return got


def check_gap(got, want, channels, lanes):
    nb = -(-channels // lanes)
    assert len(got) == len(want) * nb
    for n, row in enumerate(want):
        for b in range(nb):
            data, last = got[n * nb + b]
            for k in range(lanes):
                c = b * lanes + k
                if c < channels:
                    assert data[k] == row[c], (f"image {n} channel {c}: got {data[k]}, "
                                               f"want {row[c]}")
            assert last == int(b == nb - 1), f"image {n} beat {b}: wrong last"


def one_case(rng, *, height, width, channels, lanes, in_bits, act_bits, n_img, p_idle,
             p_stall, layer_id=2):
    mult, sh = random_requant(rng, height, width, in_bits, act_bits)
    dut = GlobalAvgPool(width=width, height=height, channels=channels, lanes=lanes,
                        in_bits=in_bits, act_bits=act_bits, layer_id=layer_id)
    # Decoy words for other layers, before and after: must be ignored.
    words = (gap_param_words(layer_id + 1, mult ^ 0x5A5A or 1, 47 - sh + 1)
             + gap_param_words(layer_id, mult, sh)
             + gap_param_words((layer_id + 7) % 256, 1, 1))
    images = np.array([[[[rng.randrange(1 << in_bits) for _ in range(channels)]
                         for _ in range(width)] for _ in range(height)]
                       for _ in range(n_img)], np.int64)
    got = run_gap(dut, words, images, rng, p_idle, p_stall)
    want = gap(images, mult, sh, act_bits).reshape(n_img, channels)
    check_gap(got, want, channels, lanes)
    return dut


@pytest.mark.parametrize("case", range(10))
def test_gap_random(case):
    rng, _ = make_rng(f"test_gap_random[{case}]")
    lanes = rng.randint(1, 5)
    one_case(rng, height=rng.randint(1, 5), width=rng.randint(1, 5),
             channels=rng.randint(1, 3 * lanes + 2), lanes=lanes,
             in_bits=rng.choice([4, 8]), act_bits=rng.choice([4, 8]), n_img=rng.randint(2, 4),
             p_idle=rng.choice([0.0, 0.3, 0.6]), p_stall=rng.choice([0.0, 0.3, 0.8]))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 7, 3), (3, 2, 4, 4), (7, 7, 10, 4)])
def test_gap_edge_shapes(shape):
    """1×1 maps (every pixel is the last), one lane, C = P, a larger map."""
    height, width, channels, lanes = shape
    rng, _ = make_rng(f"test_gap_edge_shapes[{shape}]")
    one_case(rng, height=height, width=width, channels=channels, lanes=lanes, in_bits=8,
             act_bits=8, n_img=3, p_idle=0.3, p_stall=0.85)


@pytest.mark.parametrize("case", range(3))
def test_gap_param_writes_back_to_back(case):
    """The two-stage parameter decode: back-to-back beats, each right value after a wrong
    one for the same register, a same-layer beat for row or lane != 0 (bit 15 or a low bit:
    a truncated compare would take it) and another layer's (the right value, last, must
    win); the images on the cycle after the last beat."""
    rng, _ = make_rng(f"test_gap_param_writes_back_to_back[{case}]")
    layer_id, height, width, channels, lanes = 4, 2, 3, 5, 2
    mult, sh = random_requant(rng, height, width, 8, 8)
    dut = GlobalAvgPool(width=width, height=height, channels=channels, lanes=lanes,
                        in_bits=8, act_bits=8, layer_id=layer_id)
    words = []
    for kind, good, bad in ((ParamKind.M, mult, mult ^ 0x1234 or 1),
                            (ParamKind.SH, sh, 47 - sh + 1)):
        row, lane = rng.choice([(1, 0), (0, 1), (1 << 15, 0), (0, 1 << 15), (2, 2)])
        words += [encode_word(layer_id, kind, 0, 0, bad), encode_word(layer_id, kind, row, lane, bad),
                  encode_word(layer_id + 1, kind, 0, 0, bad), encode_word(layer_id, kind, 0, 0, good)]
    if case % 2:
        words = words[4:] + words[:4]                   # SH first, M's right value last
    images = np.array([[[[rng.randrange(256) for _ in range(channels)]
                         for _ in range(width)] for _ in range(height)] for _ in range(2)])
    got = run_gap(dut, words, images, rng, 0.0, 0.3)
    check_gap(got, gap(images, mult, sh, 8).reshape(2, channels), channels, lanes)


@pytest.mark.parametrize("shape", [(1, 1, 20, 2), (2, 1, 9, 1), (3, 1, 20, 4),
                                   (3, 1, 14, 5)])
def test_gap_backpressure(shape):
    """Many output beats against heavy ready stalls: the FIFO fills, so the input (or the
    shared-Requant drain) must be held off by the credit check without losing or duplicating
    beats. (3, 1, 20, 4) and (3, 1, 14, 5) drain through 2-group shared Requant lanes."""
    height, width, channels, lanes = shape
    rng, _ = make_rng(f"test_gap_backpressure[{shape}]")
    dut = one_case(rng, height=height, width=width, channels=channels, lanes=lanes, in_bits=8,
                   act_bits=8, n_img=8, p_idle=0.0, p_stall=0.85)
    assert dut.rq_groups == (2 if height == 3 else 1)


@pytest.mark.parametrize("shape", [(1, 1, 5, 2), (4, 4, 10, 4), (3, 5, 6, 6)])
def test_gap_throughput(shape):
    """No stalls: one input beat per cycle, images back to back, no per-image input gap;
    the whole batch ends ``latency`` cycles after the last input beat (+ a small constant)."""
    height, width, channels, lanes = shape
    rng, _ = make_rng(f"test_gap_throughput[{shape}]")
    mult, sh = random_requant(rng, height, width, 8, 8)
    dut = GlobalAvgPool(width=width, height=height, channels=channels, lanes=lanes,
                        in_bits=8, act_bits=8)
    n_img = 6
    images = np.array([[[[rng.randrange(256) for _ in range(channels)] for _ in range(width)]
                        for _ in range(height)] for _ in range(n_img)], np.int64)
    timing = {}
    got = run_gap(dut, gap_param_words(0, mult, sh), images, rng, 0.0, 0.0, timing)
    check_gap(got, gap(images, mult, sh, 8).reshape(n_img, channels), channels, lanes)
    cycles = timing["t1"] - timing["t0"]
    beats = n_img * height * width * dut.nb
    print(f"{shape}: {cycles} cycles for {beats} input beats")
    assert cycles <= beats + dut.latency + 1, f"{cycles} cycles for {beats} beats"


def gap_value_error(**kwargs):
    args = dict(width=4, height=4, channels=8, lanes=2, in_bits=8, act_bits=8)
    args.update(kwargs)
    assert_value_error(GlobalAvgPool, **args)


@pytest.mark.parametrize("kwargs", [dict(width=0), dict(lanes=0), dict(in_bits=0),
                                    dict(layer_id=-1), dict(channels="8")])
def test_gap_bad_parameters(kwargs):
    gap_value_error(**kwargs)


@pytest.mark.parametrize("shape", [(5, 3, 7, 3), (1, 1, 1, 1), (2, 2, 8, 8)])
def test_gap_lint(tmp_path, shape):
    height, width, channels, lanes = shape
    dut = GlobalAvgPool(width=width, height=height, channels=channels, lanes=lanes, in_bits=8,
                        act_bits=4)
    ok, msg = lint_component(dut, "gap", tmp_path)
    assert ok, msg


# ---- the block's cycle model (its ``cost``) is exact: measured images back to back -------

@pytest.mark.parametrize("case", range(5))
def test_gap_cycle_model_is_exact(case):
    rng, seed = make_rng(f"test_gap_cycle_model_is_exact[{case}]")
    w, h, c, p = rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 17), rng.randint(1, 8)
    print(f"W={w} H={h} C={c} P={p}")
    dut = GlobalAvgPool(width=w, height=h, channels=c, lanes=p, in_bits=8, act_bits=8)
    n = 4
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    beats = [b for img in images for k, px in enumerate(img.reshape(-1, c))
             for b in pixel_beats(px, p, 8, k == h * w - 1)]
    period, _ = measure_image_period(dut, beats, n * dut.nb,
                                     params=gap_param_words(0, 1000, 12))
    assert period == dut.resources().cycles == h * w * dut.nb


# ---- a reset in the middle of an image: the next image starts from zero sums -------------

@pytest.mark.parametrize("shape", [(3, 2, 5, 2), (2, 2, 3, 1), (4, 1, 9, 4)])
def test_gap_reset_mid_image(shape):
    """Part of an image (at least one beat, never its last pixel), then a reset, then the
    parameters again and two whole images: both must equal the golden model. The running
    sums are zeroed by the image's last pixel, not by a first-pixel select, so a reset that
    cuts an image short must clear them itself (the board's reset follows the PLL lock);
    without it the first image after the reset would start from the partial sums.
    (2, 2, 3, 1) is the direct-Requant variant with H·W > 1, the others the shared one."""
    from amaranth.hdl import ClockDomain, Module
    from amaranth.sim import Simulator
    from shiftacc.sim.streamtb import receive, send

    height, width, channels, lanes = shape
    rng, _ = make_rng(f"test_gap_reset_mid_image[{shape}]")
    mult, sh = random_requant(rng, height, width, 8, 8)
    dut = GlobalAvgPool(width=width, height=height, channels=channels, lanes=lanes,
                        in_bits=8, act_bits=8)
    assert (dut.rq_groups == 1) == (lanes == 1)
    top = Module()
    top.domains.sync = cd = ClockDomain()
    top.submodules.dut = dut
    words = gap_param_words(0, mult, sh)
    pixels = height * width
    # Large values, so leftover partial sums would change the results.
    prefix = [b for px in range(pixels - 1) for b in pixel_beats(
        [rng.randrange(128, 256) for _ in range(channels)], lanes, 8, False, rng)]
    prefix = prefix[:rng.randint(1, len(prefix))]
    images = np.array([[[[rng.randrange(256) for _ in range(channels)] for _ in range(width)]
                        for _ in range(height)] for _ in range(2)], np.int64)
    beats = [b for img in images for n, px in enumerate(img.reshape(-1, channels))
             for b in pixel_beats(px, lanes, 8, n == pixels - 1, rng)]
    got = []

    async def bench(ctx):
        await send_params(ctx, dut.params, words, rng, 0.3)
        await send(ctx, dut.i, prefix, rng, 0.3)
        ctx.set(cd.rst, 1)
        for _ in range(2):
            await ctx.tick()
        ctx.set(cd.rst, 0)
        await send_params(ctx, dut.params, words, rng, 0.3)
        await send(ctx, dut.i, beats, rng, 0.3)

    async def sink(ctx):
        out = await receive(ctx, dut.o, 2 * dut.nb, rng, 0.3)
        got.extend(([int(p.data[k]) for k in range(lanes)], int(p.last)) for p in out)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_testbench(sink)
    sim.run_until(1e-8 * (500 + 10 * (len(prefix) + len(beats))))
    check_gap(got, gap(images, mult, sh, 8).reshape(2, channels), channels, lanes)
