"""The clock-domain crossings of hw/cdc.py in amaranth.sim with two clocks: 2:1 in phase (the
iCE40 boards' PLL outputs) and unrelated ratios (link clock 2.37x and 0.6x the sync
period), random valid/ready stalls; every beat arrives once, in order, with its payload.

Also the synchronisers' depth: a change of the source's crossing register must take at least
two destination clock edges (two flip-flops) before the destination acts on it. The fault
tests run the same checks with one stage (a one-flip-flop ``FFSynchronizer``) or without the parameter
word's hold, and require them to fail.
"""

import random

import pytest
from amaranth.sim import Simulator

import shiftacc.hw.cdc as cdc
from shiftacc.hw.cdc import AsyncStreamFIFO, ParamCrossing, StreamHandshake

#: (sync period, link period) in ns: the board's 2:1 in phase, and two unrelated ratios.
RATIOS = {"2to1": (10.0, 20.0), "1to2.37": (10.0, 23.7), "1to0.6": (10.0, 6.0)}


def _sim(dut, sync_ns, link_ns, *procs, deadline_ns):
    sim = Simulator(dut)
    sim.add_clock(sync_ns * 1e-9, domain="sync")
    # an unrelated phase too (not a multiple of either period)
    sim.add_clock(link_ns * 1e-9, domain="link",
                  phase=0 if link_ns == 2 * sync_ns else link_ns * 0.37e-9)
    for p in procs:
        sim.add_testbench(p)
    sim.run_until(deadline_ns * 1e-9)


# --- parameters: link -> sync -----------------------------------------------------------------

def _param_run(ratio, seed, n=30, ignore_busy=False):
    """A link-like source: a word and its beat at the same edge, then the word kept only
    while ``busy`` (after that the register changes every cycle, as the link's byte shift
    register does); the words seen in sync. Returns (sent, got)."""
    sync_ns, link_ns = RATIOS[ratio]
    dut = ParamCrossing(i_domain="link", o_domain="sync")
    rng = random.Random(seed)
    words = [rng.getrandbits(80) for _ in range(n)]
    got = []
    state = {"done": False}

    async def source(ctx):
        busy = 0
        for w in words:
            if ignore_busy:
                busy = 0
            while busy:
                _, _, busy = await ctx.tick("link").sample(dut.busy)
            while rng.random() < 0.4:
                ctx.set(dut.i.payload.as_value(), rng.getrandbits(80))   # a word being assembled
                _, _, busy = await ctx.tick("link").sample(dut.busy)
            ctx.set(dut.i.payload.as_value(), w)
            ctx.set(dut.i.valid, 1)
            _, _, busy = await ctx.tick("link").sample(dut.busy)
            ctx.set(dut.i.valid, 0)
            if not busy or ignore_busy:
                ctx.set(dut.i.payload.as_value(), rng.getrandbits(80))
        for _ in range(40):
            if not (await ctx.tick("link").sample(dut.busy))[2]:
                ctx.set(dut.i.payload.as_value(), rng.getrandbits(80))
        state["done"] = True

    async def sink(ctx):
        while not state["done"]:
            _, _, valid, payload = await ctx.tick("sync").sample(dut.o.valid,
                                                                 dut.o.payload.as_value())
            if valid:
                got.append(int(payload))

    _sim(dut, sync_ns, link_ns, source, sink, deadline_ns=n * 60 * link_ns + 5000)
    assert state["done"], "the source did not finish before the deadline"
    return words, got


def test_param_crossing_fault_no_hold_fails():
    """The same run with a source that does not hold its word while busy: words arrive
    wrong (so the run above checks the hold)."""
    words, got = _param_run("2to1", 1, ignore_busy=True)
    assert got != words


# --- images: an asynchronous FIFO, link -> sync -----------------------------------------------

def _stream_run(dut, i_domain, o_domain, width, ratio, seed, n, p_idle=0.3, p_stall=0.3,
                deadline_cycles=20):
    """``n`` random ``width``-bit beats into ``dut.i`` (``i_domain``) with random idle cycles
    (the payload scrambled while ``valid`` is low), out of ``dut.o`` (``o_domain``) with random
    stalls; checks that a waiting output beat's payload does not change and that no beat
    comes after the last. Returns (sent, got)."""
    sync_ns, link_ns = RATIOS[ratio]
    rng = random.Random(seed)
    sent = [rng.getrandbits(width) for _ in range(n)]
    got = []

    async def source(ctx):
        for v in sent:
            while rng.random() < p_idle:
                ctx.set(dut.i.valid, 0)
                ctx.set(dut.i.payload, rng.getrandbits(width))
                await ctx.tick(i_domain)
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, v)
            while not (await ctx.tick(i_domain).sample(dut.i.ready))[2]:
                pass
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        held = None
        while len(got) < n:
            ready = rng.random() >= p_stall
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick(o_domain).sample(dut.o.valid, dut.o.payload)
            if valid and not ready:
                assert held in (None, int(payload)), "payload changed while valid waited"
                held = int(payload)
            if valid and ready:
                got.append(int(payload))
                held = None
        ctx.set(dut.o.ready, 1)
        for _ in range(30):
            assert not (await ctx.tick(o_domain).sample(dut.o.valid))[2], "a beat too many"

    _sim(dut, sync_ns, link_ns, source, sink,
         deadline_ns=n * deadline_cycles * max(sync_ns, link_ns))
    return sent, got


def _fifo_run(ratio, seed, n=150, depth=4):
    dut = AsyncStreamFIFO(9, depth, w_domain="link", r_domain="sync")
    return _stream_run(dut, "link", "sync", 9, ratio, seed, n)


def test_async_fifo_full_rate_2to1():
    """No stalls, 2:1 in phase: after the first beat, one beat per link cycle (two sync
    cycles) reaches the reader: the FIFO keeps up with the link."""
    sync_ns, link_ns = RATIOS["2to1"]
    dut = AsyncStreamFIFO(9, 4, w_domain="link", r_domain="sync")
    n = 40
    times = []

    async def writer(ctx):
        ctx.set(dut.i.valid, 1)
        k = 0
        while k < n:
            ctx.set(dut.i.payload, k)
            if (await ctx.tick("link").sample(dut.i.ready))[2]:
                k += 1
        ctx.set(dut.i.valid, 0)

    async def reader(ctx):
        ctx.set(dut.o.ready, 1)
        cyc = 0
        while len(times) < n:
            _, _, valid = await ctx.tick("sync").sample(dut.o.valid)
            cyc += 1
            if valid:
                times.append(cyc)

    _sim(dut, sync_ns, link_ns, writer, reader, deadline_ns=5000)
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(gaps)
    assert set(gaps) == {2}, gaps


# --- logits: a handshake, sync -> link --------------------------------------------------------

def _handshake_run(ratio, seed, n=60):
    dut = StreamHandshake(33, i_domain="sync", o_domain="link")
    return _stream_run(dut, "sync", "link", 33, ratio, seed, n, deadline_cycles=40)




# --- synchroniser depth -------------------------------------------------------------------------

def _first_reaction(dut, src_dom, dst_dom, start, probe, reaction, ratio="1to2.37"):
    """Destination edges from the first one that samples the source's crossing register
    ``probe`` changed to the first one after which ``reaction`` is seen high (``start``:
    a source-domain process that makes the one change)."""
    sync_ns, link_ns = RATIOS[ratio]
    out = {}

    async def watch(ctx):
        before = ctx.get(probe)
        first = None
        k = 0
        while True:
            _, _, p, r = await ctx.tick(dst_dom).sample(probe, reaction)
            k += 1
            if r:
                out["edges"] = k - first
                return
            if first is None and p != before:
                first = k

    _sim(dut, sync_ns, link_ns, start, watch, deadline_ns=2000)
    return out["edges"]


def _latencies():
    """The destination edges after a change of each crossing's source register."""
    lat = {}

    def one_beat(valid):
        """A source that offers one beat (``valid`` for one link cycle) after 3 cycles."""
        async def source(ctx):
            await ctx.tick("link").repeat(3)
            ctx.set(valid, 1)
            await ctx.tick("link")
            ctx.set(valid, 0)
        return source

    px = ParamCrossing(i_domain="link", o_domain="sync")
    # the request: the toggle is the i_domain register of the crossing (i.valid's edge)
    lat["params"] = _first_reaction(px, "link", "sync", one_beat(px.i.valid), px.req,
                                    px.o.valid)

    fx = AsyncStreamFIFO(9, 4, w_domain="link", r_domain="sync")
    lat["images"] = _first_reaction(fx, "link", "sync", one_beat(fx.i.valid), fx.w_gray,
                                    fx.o.valid)

    hx = StreamHandshake(33, i_domain="sync", o_domain="link")

    async def offer(ctx):
        await ctx.tick("sync").repeat(3)
        ctx.set(hx.i.valid, 1)
    lat["logits"] = _first_reaction(hx, "sync", "link", offer, hx.req, hx.o.valid)
    return lat


def test_synchroniser_depth():
    """The source register that crosses (params' request toggle, the FIFO's Gray write
    pointer, the logits' request toggle), sampled at each destination edge: the
    destination reacts only after two synchroniser edges plus its own register: params and
    images 3 edges (two stages, then the registered beat / not-empty flag), logits 2 (two
    stages; ``o.valid`` is the synchroniser's output XOR the acknowledge)."""
    lat = _latencies()
    print(lat)
    assert lat["params"] >= 3 and lat["images"] >= 3 and lat["logits"] >= 2, lat


def test_synchroniser_depth_fault_one_stage_fails(monkeypatch):
    """With one synchroniser stage the same check fails (it can see a missing stage)."""
    from amaranth.hdl import Elaboratable, Module

    class OneStage(Elaboratable):           # what FFSynchronizer(stages=1) would be
        def __init__(self, i, o, *, o_domain="sync", stages=2):
            self.i, self.o, self.d = i, o, o_domain

        def elaborate(self, platform):
            m = Module()
            m.d[self.d] += self.o.eq(self.i)
            return m
    monkeypatch.setattr(cdc, "FFSynchronizer", OneStage)
    lat = _latencies()
    print(lat)
    assert lat["params"] < 3 and lat["images"] < 3 and lat["logits"] < 2, lat


@pytest.mark.parametrize("ratio", list(RATIOS))
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("crossing", ["params", "images_fifo", "logits_handshake"])
def test_crossing_every_beat_once_in_order(crossing, ratio, seed):
    """Each crossing under random stalls at each clock ratio: the words / beats out equal
    the ones in, once each and in order."""
    run = {"params": _param_run, "images_fifo": _fifo_run,
           "logits_handshake": _handshake_run}[crossing]
    sent, got = run(ratio, seed)
    assert got == sent
