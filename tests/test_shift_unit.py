# amaranth: UnusedElaboratable=no
"""ShiftUnit against ``models.golden.shift`` in amaranth.sim: random shapes, shifts, stalls."""

import numpy as np
import pytest

from shiftacc.hw.params import ParamKind, decode_word, encode_word, shift_param_words
from shiftacc.hw.shift_unit import ShiftUnit
from shiftacc.models import golden
from shiftacc.sim.lint import lint_component
from shiftacc.sim.streamtb import (beats_to_pixels, deadline_for, measure_image_period, expected_lasts, make_rng, pixels_to_beats, receive,
                            run_no_stall, run_sim, send, send_params)


# ---- ShiftUnit ---------------------------------------------------------------------------

def random_shifts(rng, c, radius):
    shifts = np.array([[rng.randint(-radius, radius), rng.randint(-radius, radius)]
                       for _ in range(c)], np.int64)
    if c >= 2:                       # make sure the extreme shifts are exercised
        shifts[0] = (radius, -radius)
        shifts[1] = (-radius, radius)
    return shifts


def simulate_shift(dut, images, shifts, rng, p_idle, p_stall, layer_id=0, junk_params=True):
    n, h, w, c = images.shape
    P, bits = dut.lanes, dut.bits
    nb = dut.nb
    ho, wo = -(-h // dut.stride), -(-w // dut.stride)
    words = shift_param_words(layer_id, shifts, P)
    if junk_params:
        # beats for another layer and another kind (SHIFT ^ 5 = BIAS) must be ignored
        words = (shift_param_words(layer_id + 1, -shifts, P)
                 + [w_ ^ (5 << 8) for w_ in shift_param_words(layer_id, -shifts, P)] + words)
    beats = pixels_to_beats(images, P, bits, rng)
    result = {}

    async def tb_in(ctx):
        await send_params(ctx, dut.params, words, rng, p_idle)
        await send(ctx, dut.i, beats, rng, p_idle)

    async def tb_out(ctx):
        result["out"] = await receive(ctx, dut.o, n * ho * wo * nb, rng, p_stall)

    run_sim(dut, tb_in, tb_out, deadline_cycles=deadline_for(len(words) + 2 * len(beats)))
    arr, lasts = beats_to_pixels(result["out"], n, ho, wo, c, P)
    return arr, lasts


CASES = [
    # W, H, C, P, R, stride
    (5, 4, 3, 2, 1, 1),
    (3, 5, 5, 4, 1, 1),
    (1, 3, 2, 1, 1, 1),
    (4, 1, 4, 3, 1, 1),
    (7, 6, 3, 3, 2, 1),
    (2, 3, 1, 1, 2, 1),
    (5, 5, 5, 2, 1, 2),
    (6, 3, 2, 4, 2, 2),
    (1, 1, 3, 2, 1, 1),
    (4, 4, 3, 2, 1, 2),              # even H: the read side skips a whole row into the next image
    (2, 6, 5, 3, 2, 2),
]


@pytest.mark.parametrize("case", range(len(CASES) + 3))
def test_shift_unit_random(case):
    rng, seed = make_rng(f"test_shift_unit_random[{case}]")
    if case < len(CASES):
        w, h, c, p, r, s = CASES[case]
    else:                            # fully random shape
        w, h, c, p = rng.randint(1, 7), rng.randint(1, 7), rng.randint(1, 6), rng.randint(1, 4)
        r, s = rng.choice([1, 2]), rng.choice([1, 2])
    bits = rng.choice([4, 8])
    n = rng.randint(2, 3)
    layer_id = rng.randrange(250)
    print(f"W={w} H={h} C={c} P={p} R={r} stride={s} bits={bits} N={n} layer={layer_id}")
    nprng = np.random.default_rng(seed)
    images = nprng.integers(0, 1 << bits, (n, h, w, c))
    shifts = random_shifts(rng, c, r)
    dut = ShiftUnit(width=w, height=h, channels=c, lanes=p, bits=bits, radius=r, stride=s,
                    layer_id=layer_id)
    got, lasts = simulate_shift(dut, images, shifts, rng, p_idle=0.3, p_stall=0.3,
                                layer_id=layer_id)
    want = golden.shift(images, shifts)[:, ::s, ::s, :]
    np.testing.assert_array_equal(got, want)
    assert lasts == expected_lasts(n, -(-h // s), -(-w // s), dut.nb)


@pytest.mark.parametrize("w,h,c,p,r", [(4, 3, 5, 2, 1), (3, 3, 4, 4, 1), (5, 4, 3, 1, 2)])
def test_shift_unit_param_writes_back_to_back(w, h, c, p, r):
    """The two-stage parameter decode: back-to-back SHIFT beats, each right value after a
    wrong one for the same channel (the later must win), a same-layer beat whose row or lane
    is out of range but equal to a real channel's in the low bits (must write nothing) and
    another layer's; the image beats on the cycle after the last (right) beat."""
    rng, seed = make_rng(f"test_shift_unit_param_writes_back_to_back[{w},{h},{c},{p},{r}]")
    layer_id = 9
    shifts = random_shifts(rng, c, r)
    dut = ShiftUnit(width=w, height=h, channels=c, lanes=p, bits=8, radius=r, stride=1,
                    layer_id=layer_id)
    nb = dut.nb

    def readdress(word, layer, row, lane):
        # The same SHIFT data at another address.
        return encode_word(layer, ParamKind.SHIFT, row, lane, decode_word(word)[4])

    good = shift_param_words(layer_id, shifts, p)
    wrong = shift_param_words(layer_id, -shifts[::-1], p)          # a different shift each
    words = []
    pow2 = 1 << max(1, (p - 1).bit_length())
    for k, (g, b) in enumerate(zip(good, wrong)):
        row, lane = k // p, k % p
        alias = rng.choice([(row, lane + p), (row, lane + pow2), (row, lane | 1 << 15),
                            (row + nb, lane), (row | 1 << 15, lane)])
        # The right value last: the image beats follow the last one on the next cycle.
        words += [b, readdress(b, layer_id, *alias), readdress(b, layer_id + 1, row, lane), g]
    n = 2
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    beats = pixels_to_beats(images, p, 8, rng)
    result = {}

    async def tb_in(ctx):
        await send_params(ctx, dut.params, words)
        await send(ctx, dut.i, beats)

    async def tb_out(ctx):
        result["out"] = await receive(ctx, dut.o, n * h * w * nb, rng, 0.3)

    run_sim(dut, tb_in, tb_out, deadline_cycles=deadline_for(len(words) + 2 * len(beats)))
    got, _ = beats_to_pixels(result["out"], n, h, w, c, p)
    np.testing.assert_array_equal(got, golden.shift(images, shifts))


@pytest.mark.parametrize("w,h,c,p,r,s", [(6, 5, 5, 2, 1, 1), (4, 4, 3, 3, 2, 1),
                                         (5, 3, 4, 4, 1, 2), (1, 4, 1, 1, 1, 1)])
def test_shift_unit_throughput(w, h, c, p, r, s):
    """No stalls: N images take N*H*W*NB cycles plus only the fill latency."""
    rng, seed = make_rng("test_shift_unit_throughput")
    n = 3
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    shifts = random_shifts(rng, c, r)
    dut = ShiftUnit(width=w, height=h, channels=c, lanes=p, bits=8, radius=r, stride=s)
    ho, wo = -(-h // s), -(-w // s)
    out, cycles = run_no_stall(dut, pixels_to_beats(images, p, 8, None), n * ho * wo * dut.nb,
                               params=shift_param_words(0, shifts, p))
    got, _ = beats_to_pixels(out, n, ho, wo, c, p)
    np.testing.assert_array_equal(got, golden.shift(images, shifts)[:, ::s, ::s, :])
    nb = dut.nb
    # The reader waits for the window ahead, then the read pipeline: issue, shift select,
    # address, memory read, output register.
    fill = (r * w + r) * nb + 6
    assert cycles <= n * h * w * nb + fill, (cycles, n * h * w * nb, fill)


@pytest.mark.parametrize("w,h,c,p,r,s", [(5, 4, 5, 2, 1, 1), (5, 4, 5, 2, 2, 2),
                                         (1, 1, 1, 1, 1, 1), (3, 2, 2, 4, 1, 2)])
def test_shift_unit_lint(tmp_path, w, h, c, p, r, s):
    dut = ShiftUnit(width=w, height=h, channels=c, lanes=p, bits=8, radius=r, stride=s)
    ok, msgs = lint_component(dut, "shift_unit", tmp_path)
    assert ok, msgs


@pytest.mark.parametrize("kwargs", [
    dict(width=0), dict(height=-1), dict(channels=0), dict(lanes=0), dict(bits=0),
    dict(radius=0), dict(stride=3), dict(layer_id=256), dict(width=2.5),
])
def test_shift_unit_bad_params(kwargs):
    args = dict(width=4, height=4, channels=3, lanes=2, bits=8)
    args.update(kwargs)
    with pytest.raises(ValueError):
        ShiftUnit(**args)


@pytest.mark.parametrize("w,h,c,p,r,s", [(4, 5, 3, 2, 1, 1), (3, 6, 2, 2, 2, 1),
                                         (5, 5, 1, 1, 1, 2)])
def test_shift_unit_backpressure(w, h, c, p, r, s):
    """Heavy output stalls with an eager producer: the line buffer fills up and the write side
    must stop before it overwrites a row the read side still needs."""
    rng, seed = make_rng("test_shift_unit_backpressure")
    n = 2
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    shifts = random_shifts(rng, c, r)
    dut = ShiftUnit(width=w, height=h, channels=c, lanes=p, bits=8, radius=r, stride=s)
    got, lasts = simulate_shift(dut, images, shifts, rng, p_idle=0.0, p_stall=0.85)
    np.testing.assert_array_equal(got, golden.shift(images, shifts)[:, ::s, ::s, :])
    assert lasts == expected_lasts(n, -(-h // s), -(-w // s), dut.nb)


# ---- the block's cycle model (its ``cost``) is exact: measured images back to back -------

@pytest.mark.parametrize("case", range(6))
def test_shift_unit_cycle_model_is_exact(case):
    rng, seed = make_rng(f"test_shift_unit_cycle_model_is_exact[{case}]")
    w, h, c, p = rng.randint(1, 7), rng.randint(1, 6), rng.randint(1, 9), rng.randint(1, 4)
    r, s = rng.choice([1, 2]), rng.choice([1, 2])
    print(f"W={w} H={h} C={c} P={p} R={r} stride={s}")
    dut, period = _exact_back_to_back(rng, seed, w, h, c, p, r, s)
    assert period == dut.resources().cycles == h * w * dut.nb


def _exact_back_to_back(rng, seed, w, h, c, p, r, s):
    """Four random images back to back through a ShiftUnit: the outputs equal golden's
    shift (and stride); returns the unit and its measured cycles per image."""
    dut = ShiftUnit(width=w, height=h, channels=c, lanes=p, bits=8, radius=r, stride=s)
    n = 4
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    shifts = random_shifts(rng, c, r)
    ho, wo = -(-h // s), -(-w // s)
    period, out = measure_image_period(dut, pixels_to_beats(images, p, 8, None),
                                       n * ho * wo * dut.nb,
                                       params=shift_param_words(0, shifts, p))
    got, _ = beats_to_pixels(out, n, ho, wo, c, p)
    np.testing.assert_array_equal(got, golden.shift(images, shifts)[:, ::s, ::s, :])
    return dut, period


@pytest.mark.parametrize("w,h,c,p,r,s", [(1, 4, 1, 1, 1, 1), (2, 3, 2, 1, 1, 1),
                                         (3, 5, 3, 2, 3, 1), (4, 3, 1, 1, 1, 1),
                                         (2, 5, 4, 3, 1, 2), (4, 5, 2, 1, 3, 2)])
def test_shift_unit_narrow_maps_keep_full_rate(w, h, c, p, r, s):
    """Narrow maps (a few beats a row): the read pipeline gives a row up two cycles after
    issuing its last beat, and the ring's spare row (``ring_rows``) must keep the writer from
    waiting on it: still exactly H·W·NB cycles per image, images back to back."""
    rng, seed = make_rng(f"test_shift_unit_narrow_maps_keep_full_rate[{w},{h},{c},{p},{r},{s}]")
    dut, period = _exact_back_to_back(rng, seed, w, h, c, p, r, s)
    assert period == h * w * dut.nb
