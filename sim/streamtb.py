"""Shared helpers for block tests in ``amaranth.sim``: stream drivers with random stalls.

Every block test drives its input streams with :func:`send` and drains its output with
:func:`receive`, both of which insert random idle cycles (valid low) and backpressure
(ready low) from a seeded :class:`random.Random`, so each block is checked under stalls on
every stream, as the project's standards require.
"""

import os
import random
import zlib

import numpy as np

from amaranth.sim import Simulator

from ..hw.stream import beats_per_pixel

__all__ = ["BASE_SEED", "derive_seed", "send", "receive", "send_params", "run_sim", "make_rng", "run_no_stall",
           "StallError", "deadline_for", "measure_image_period", "stream_ports", "DEFAULT_IDLE_CYCLES",
           "DEFAULT_DEADLINE_CYCLES",
           "assert_value_error", "receive_and_drain", "pixel_beats", "pixels_to_beats",
           "beats_to_pixels", "expected_lasts"]


#: One base seed per process: ``SHIFTACC_SEED`` when set, else drawn once. Every test derives
#: its own seed from it and its name, so one printed value reproduces a whole run and a test's
#: seed does not depend on which other tests ran before it.
BASE_SEED = int(os.environ.get("SHIFTACC_SEED", random.SystemRandom().randrange(1 << 30)))


def derive_seed(name, base=None):
    """The seed of the test (or case) ``name``: a stable hash of the base seed and the name."""
    base = BASE_SEED if base is None else base
    return zlib.crc32(f"{base}:{name}".encode()) & 0x3FFFFFFF


def make_rng(request_name, seed=None):
    """A seeded RNG for ``request_name`` (derived from ``SHIFTACC_SEED``); the seed is printed."""
    if seed is None:
        seed = derive_seed(request_name)
    print(f"[seed] {request_name}: seed {seed} (reproduce the run with SHIFTACC_SEED={BASE_SEED})")
    return random.Random(seed), seed


async def _handshake(ctx, stream):
    """Wait for the clock edge at which ``stream`` (valid already high) is taken.

    A loop over ``tick().sample`` rather than ``tick().until``: a testbench abandoned by the
    watchdog of :func:`run_sim` is then closed cleanly (an abandoned ``until`` raises while
    being garbage-collected). An always-ready stream is taken at the next edge.
    """
    from amaranth.hdl import Const, Value
    ready = Value.cast(stream.ready)
    if isinstance(ready, Const):
        await ctx.tick()
        return
    while True:
        _, _, taken = await ctx.tick().sample(ready)
        if taken:
            return


async def send(ctx, stream, payloads, rng=None, p_idle=0.0):
    """Drive ``payloads`` (values for ``stream.payload``) into a stream, one beat per handshake.

    ``valid`` drops for a random number of cycles with probability ``p_idle`` before a beat;
    once raised it stays high with a stable payload until ``ready`` (Amaranth stream rule).
    """
    for p in payloads:
        while rng is not None and rng.random() < p_idle:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.payload, p)
        ctx.set(stream.valid, 1)
        await _handshake(ctx, stream)
    ctx.set(stream.valid, 0)


async def receive(ctx, stream, count, rng=None, p_stall=0.0):
    """Collect ``count`` payloads from a stream, holding ``ready`` low with probability ``p_stall``.

    Returns
    -------
    list
        The payload values (``ctx.get`` of ``stream.payload``) in order.
    """
    out = []
    while len(out) < count:
        ready = not (rng is not None and rng.random() < p_stall)
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if ready and valid:
            out.append(payload)
    ctx.set(stream.ready, 0)
    return out


async def send_params(ctx, stream, words, rng=None, p_idle=0.0):
    """Drive encoded parameter words (see :mod:`hw.params`) into a parameter port, with
    random idle cycles (``valid`` low) between words like :func:`send`."""
    for w in words:
        while rng is not None and rng.random() < p_idle:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.payload.as_value(), w)
        ctx.set(stream.valid, 1)
        await _handshake(ctx, stream)
    ctx.set(stream.valid, 0)


class StallError(AssertionError):
    """A simulation passed its deadline: the message names every watched stream, when it last
    moved data, and the last one that did (DESIGN.md §5: a stall is reported, never a hang)."""


#: Cycles without a handshake on any watched stream after which a block counts as stalled.
DEFAULT_IDLE_CYCLES = 2000
#: Total cycles a simulation may run when the caller gives no deadline.
DEFAULT_DEADLINE_CYCLES = 2_000_000


def deadline_for(beats, per_beat=64, fill=2000):
    """A generous deadline in cycles for a run moving ``beats`` beats in total: ``per_beat``
    cycles per beat (random idle/backpressure of the drivers slow a beat by a few cycles at
    most) plus ``fill`` for pipeline latency and line-buffer fill."""
    return per_beat * beats + fill


def stream_ports(dut):
    """``{name: interface}`` of ``dut``'s top-level stream ports (``valid``/``payload``)."""
    from amaranth.lib import stream as _stream
    out = {}
    for name, member in dut.signature.members.items():
        if member.is_signature and isinstance(member.signature, _stream.Signature):
            out[name] = getattr(dut, name)
    return out


def run_sim(dut, *testbenches, vcd=None, deadline_cycles=None, idle_cycles=DEFAULT_IDLE_CYCLES,
            watch=None):
    """Simulate ``dut`` with the given ``async def tb(ctx)`` testbenches on one ``sync`` clock,
    never hanging.

    A background watchdog samples the handshake (``valid & ready``) of every watched stream
    each cycle. It raises :class:`StallError` when the run passes ``deadline_cycles`` or when
    no watched stream moved for ``idle_cycles`` cycles; the message names each stream, the
    cycle it last moved data and how many beats it moved, and the stream that moved last
    (the last stage that still moved data). A testbench waiting forever (``ctx.tick().until``
    on a ``ready`` that never rises) therefore ends the run within the deadline.

    Parameters
    ----------
    dut : wiring.Component
    *testbenches : async callables ``tb(ctx)``
    vcd : str, optional
        Write a waveform.
    deadline_cycles : int, optional
        Total cycles allowed (default :data:`DEFAULT_DEADLINE_CYCLES`); derive it from the
        beats involved with :func:`deadline_for`.
    idle_cycles : int or None
        Cycles without any watched handshake that count as a stall (None: only the
        deadline).
    watch : dict, optional
        ``{name: stream interface}`` to watch; default every stream port of ``dut``
        (:func:`stream_ports`: inputs, outputs and the parameter port).

    Raises
    ------
    StallError
    """
    from amaranth.hdl import Const, Value
    deadline = DEFAULT_DEADLINE_CYCLES if deadline_cycles is None else int(deadline_cycles)
    watch = stream_ports(dut) if watch is None else dict(watch)
    names = list(watch)
    # A stream without a ready signal (always_ready) moves whenever valid is high.
    valids = [watch[n].valid for n in names]
    readies = [watch[n].ready for n in names]
    sampled = valids + [r for r in readies if not isinstance(Value.cast(r), Const)]

    async def watchdog(ctx):
        last = {n: None for n in names}
        beats = {n: 0 for n in names}
        cycle = 0
        last_any = 0
        while True:
            values = await ctx.tick().sample(*sampled)
            cycle += 1
            got = dict(zip(map(id, sampled), values[2:]))
            for n, v, r in zip(names, valids, readies):
                rdy = int(Value.cast(r).value) if isinstance(Value.cast(r), Const) else got[id(r)]
                if got[id(v)] and rdy:
                    last[n] = cycle
                    beats[n] += 1
                    last_any = cycle
            idle = cycle - last_any
            if cycle >= deadline or (idle_cycles is not None and idle >= idle_cycles):
                raise StallError(_stall_message(dut, cycle, deadline, idle, idle_cycles, last,
                                                beats))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in testbenches:
        sim.add_testbench(tb)
    if names:
        sim.add_testbench(watchdog, background=True)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()


def _stall_message(dut, cycle, deadline, idle, idle_cycles, last, beats):
    why = (f"passed its deadline of {deadline} cycles" if cycle >= deadline
           else f"moved no data on any stream for {idle} cycles (idle limit {idle_cycles})")
    lines = [f"{type(dut).__name__} stalled: the simulation {why}, at cycle {cycle}."]
    movers = [n for n in last if last[n] is not None]
    for n in last:
        if last[n] is None:
            lines.append(f"  stream {n!r}: never moved data")
        else:
            lines.append(f"  stream {n!r}: last moved data at cycle {last[n]} "
                         f"({beats[n]} beats)")
    if movers:
        latest = max(movers, key=lambda n: last[n])
        stuck = [n for n in last if last[n] is None or last[n] < last[latest]]
        lines.append(f"last stage that still moved data: stream {latest!r} (cycle "
                     f"{last[latest]}); stalled after it: "
                     f"{', '.join(repr(n) for n in stuck) or 'none'}")
    else:
        lines.append("no stream ever moved data")
    return "\n".join(lines)


def _run_free(dut, beats, total, params):
    """Load ``params``, stream ``beats`` into ``dut.i`` at full rate and take ``total`` beats
    from an always-ready ``dut.o``.

    Returns
    -------
    dict
        ``out`` (payloads), ``stamps`` (cycle of each output beat), ``start`` (cycle the
        first image beat was offered, after the parameters).
    """
    state = {"cycle": 0, "start": 0, "out": [], "stamps": []}

    async def tb_in(ctx):
        if params:
            await send_params(ctx, dut.params, params)
        state["start"] = state["cycle"]
        await send(ctx, dut.i, beats)

    async def tb_out(ctx):
        ctx.set(dut.o.ready, 1)
        while len(state["out"]) < total:
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            state["cycle"] += 1
            if valid:
                state["out"].append(payload)
                state["stamps"].append(state["cycle"])

    run_sim(dut, tb_in, tb_out,
            deadline_cycles=deadline_for(len(beats) + total + len(params or ())))
    return state


def run_no_stall(dut, beats, total, params=None):
    """Stream ``beats`` into ``dut.i`` and take ``total`` beats from ``dut.o``, never stalling.

    ``params`` (encoded words) are loaded through ``dut.params`` first; they are not counted.

    Returns
    -------
    out : list
        Output payloads, in order.
    cycles : int
        Cycles from the first input beat to the last output beat (for throughput bounds).
    """
    state = _run_free(dut, beats, total, params)
    return state["out"], state["cycle"] - state["start"]


def measure_image_period(dut, beats, total, params=None):
    """Steady-state cycles per image of a block, measured: ``beats`` (several whole images,
    ``last`` on each image's final beat) stream in at full rate and ``dut.o`` is always ready.

    Returns
    -------
    period : int
        Cycles between the ``last`` output beats of the final two images (images back to
        back, so this is the block's throughput, not its latency).
    out : list
        The output payloads.
    """
    state = _run_free(dut, beats, total, params)
    lasts = [c for c, p in zip(state["stamps"], state["out"]) if p.last]
    assert len(lasts) >= 2, f"need two images to measure a period, got {len(lasts)} last beats"
    return lasts[-1] - lasts[-2], state["out"]


def assert_value_error(ctor, **kwargs):
    """``ctor(**kwargs)`` raises ``ValueError``.

    The half-built component is collected inside a warnings filter: Amaranth would otherwise
    warn later that an elaboratable was "never used".
    """
    import gc
    import warnings

    import pytest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as info:
            ctor(**kwargs)
        del info
        gc.collect()


async def receive_and_drain(ctx, stream, count, lanes, rng, p_stall, quiet_cycles, what,
                            on_last=None):
    """Collect ``count`` beats as ``(lane values, last)`` with random backpressure, then check
    that nothing more comes out for ``quiet_cycles`` cycles (no duplicated beats).

    ``on_last`` is called when the last expected beat arrived (to timestamp it)."""
    got = []
    while len(got) < count:
        ready = not rng.random() < p_stall
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if ready and valid:
            got.append(([int(payload.data[k]) for k in range(lanes)], int(payload.last)))
    if on_last is not None:
        on_last()
    ctx.set(stream.ready, 0)
    for _ in range(quiet_cycles):
        _, _, valid = await ctx.tick().sample(stream.valid)
        assert not valid, f"{what} produced more beats than expected"
    return got


def run_param_block(dut, words, beats, count, out_lanes, rng, p_idle, p_stall, quiet_cycles,
                    what, deadline_cycles):
    """Load parameter ``words``, stream ``beats`` into ``dut.i`` and collect ``count`` beats
    of ``out_lanes`` lanes from ``dut.o``, all with random stalls, within a deadline.

    The common harness of the blocks that take parameters and a pixel stream (the attention
    blocks, the dynamic conv): a stall ends the run at ``deadline_cycles`` with a report
    naming the stalled stream; ``quiet_cycles`` after the last beat catch extra output.

    Returns
    -------
    list of (list of int, int)
        The output beats as (lane values, last).
    """
    got = []

    async def producer(ctx):
        await send_params(ctx, dut.params, words, rng, p_idle)
        await send(ctx, dut.i, beats, rng, p_idle)

    async def consumer(ctx):
        got.extend(await receive_and_drain(ctx, dut.o, count, out_lanes, rng, p_stall,
                                           quiet_cycles, what))

    run_sim(dut, producer, consumer, deadline_cycles=deadline_cycles)
    return got


def pixel_beats(pixel, lanes, bits, last, rng=None):
    """Beats of one pixel; padding lanes carry random garbage from ``rng`` (0 without one),
    which a block must never let leak into a result."""
    nb = beats_per_pixel(len(pixel), lanes)
    beats = []
    for b in range(nb):
        lanes_v = [int(pixel[b * lanes + k]) if b * lanes + k < len(pixel)
                   else (rng.randrange(1 << bits) if rng else 0) for k in range(lanes)]
        beats.append({"data": lanes_v, "last": int(last and b == nb - 1)})
    return beats


def pixels_to_beats(x, lanes, bits, rng):
    """NHWC int array -> list of beat payload dicts, ``last`` on each image's final beat."""
    beats = []
    for img in x:
        flat = img.reshape(-1, img.shape[-1])
        for n, px in enumerate(flat):
            beats += pixel_beats(px, lanes, bits, n == len(flat) - 1, rng)
    return beats


def beats_to_pixels(out, n, h, w, c, lanes):
    """Received payloads -> NHWC int64 array (padding lanes dropped) and the ``last`` flags."""
    nb = beats_per_pixel(c, lanes)
    assert len(out) == n * h * w * nb
    arr = np.zeros((n, h, w, c), np.int64)
    lasts = []
    k = 0
    for i in range(n):
        for y in range(h):
            for xx in range(w):
                for b in range(nb):
                    for l in range(lanes):
                        ch = b * lanes + l
                        if ch < c:
                            arr[i, y, xx, ch] = int(out[k].data[l])
                    lasts.append(int(out[k].last))
                    k += 1
    return arr, lasts


def assert_pixel_beats(got, want, lanes):
    """Received ``(lane values, last)`` beats equal the NHWC ``want`` pixel for pixel
    (padding lanes ignored) with ``last`` on each image's final beat; the first difference
    is named by image, pixel and channel."""
    n, h, w, c = want.shape
    nb = beats_per_pixel(c, lanes)
    assert len(got) == n * h * w * nb, f"{len(got)} beats, want {n * h * w * nb}"
    k = 0
    for img in range(n):
        for y in range(h):
            for x in range(w):
                for b in range(nb):
                    data, last = got[k]
                    for lane in range(lanes):
                        ch = b * lanes + lane
                        if ch < c:
                            assert data[lane] == want[img, y, x, ch], (
                                f"image {img} pixel ({y}, {x}) channel {ch}: got "
                                f"{data[lane]}, want {want[img, y, x, ch]}")
                    end = y == h - 1 and x == w - 1 and b == nb - 1
                    assert last == int(end), f"image {img} pixel ({y}, {x}) beat {b}: last"
                    k += 1


def built_memories(component):
    """Counter of (depth, width) of every memory in the elaborated ``component`` (to check a
    block's stated memories against what it builds)."""
    from collections import Counter
    from amaranth.hdl import Fragment, Shape
    from amaranth.hdl._mem import MemoryInstance
    out = Counter()

    def walk(fragment):
        for sub, *_ in fragment.subfragments:
            if isinstance(sub, MemoryInstance):
                out[(sub._data.depth, Shape.cast(sub._data.shape).width)] += 1
            walk(sub)
    walk(Fragment.get(component, None))
    return out


def expected_lasts(n, h, w, nb):
    """``last`` is high only on the final beat of each image."""
    per = [0] * (h * w * nb)
    if per:
        per[-1] = 1
    return per * n
