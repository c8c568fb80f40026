"""The overlay engine behind the dual-clock board's crossings (hw/cdc.py): images from a link
domain at half the engine's clock (2:1 in phase, the iCE40 boards' PLL outputs) through the
4-entry asynchronous FIFO, logits back through the handshake to an always-ready link-side
consumer. Logits equal the golden model's, and the measured cycles between consecutive
images' first accepted values equal ``overlay_timing.image_cycles(plan, link_ratio=2)``.
"""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from shiftacc.hw.cdc import AsyncStreamFIFO, StreamHandshake
from shiftacc.hw.overlay import OverlayEngine
from shiftacc.hw.overlay_program import OverlayConfig, compile_overlay
from shiftacc.hw.overlay_timing import image_cycles, load_cycles
from shiftacc.hw.params import param_bus_signature
from shiftacc.hw.stream import pixel_stream
from shiftacc.models import golden
from shiftacc.models.netgen import random_model
from shiftacc.sim.streamtb import send_params

from overlay_tb import image_beats


class _Behind(wiring.Component):
    """The engine in ``sync``; its image and logits streams in ``link`` through the board's
    crossings (parameters in ``sync``: their crossing is tested with the link top)."""

    def __init__(self, config):
        self.engine = OverlayEngine(config)
        super().__init__({"params": In(param_bus_signature()),
                          "images": In(pixel_stream(1, 8)),
                          "logits": Out(pixel_stream(1, 32, is_signed=True))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = e = self.engine
        m.submodules.ix = ix = AsyncStreamFIFO(e.images.payload.shape(), 4)
        m.submodules.lx = lx = StreamHandshake(e.logits.payload.shape())
        wiring.connect(m, wiring.flipped(self.params), e.params)
        wiring.connect(m, wiring.flipped(self.images), ix.i)
        wiring.connect(m, ix.o, e.images)
        wiring.connect(m, e.logits, lx.i)
        wiring.connect(m, lx.o, wiring.flipped(self.logits))
        return m


def _net(seed, size, lanes):
    nrng = np.random.default_rng(seed)
    model = random_model(nrng, size=size, in_channels=1, blocks=1, max_width=6, classes=10,
                         calib_images=8)
    config = OverlayConfig(lanes=lanes, requant_units=1, fm_words=512, weight_rows=256,
                           channel_rows=128, gather_rows=128, max_passes=8)
    return model, compile_overlay(model, config), nrng


@pytest.mark.parametrize("seed,size,lanes", [(1, (6, 6), 4), (2, (5, 7), 2), (3, (7, 5), 6)])
def test_overlay_behind_the_crossings_cycles_and_logits(seed, size, lanes):
    model, plan, nrng = _net(seed, size, lanes)
    images = nrng.integers(0, 256, (4, *model.input_shape))
    want = golden.run(model, images)
    dut = _Behind(plan.config)
    eng = dut.engine
    first, got = [], []
    total = want.size
    n = images[0].size
    state = {"loaded": False}

    async def params(ctx):
        await send_params(ctx, dut.params, plan.param_words())
        state["loaded"] = True

    async def producer(ctx):        # the link: a value every link cycle it is taken
        while not state["loaded"]:
            await ctx.tick("link")
        for b in image_beats(images):
            ctx.set(dut.images.payload, b)
            ctx.set(dut.images.valid, 1)
            while not (await ctx.tick("link").sample(dut.images.ready))[2]:
                pass
        ctx.set(dut.images.valid, 0)

    async def consumer(ctx):        # the link's collector: always ready
        ctx.set(dut.logits.ready, 1)
        for _ in range(400_000):
            _, _, v, p = await ctx.tick("link").sample(dut.logits.valid, dut.logits.payload)
            if v:
                got.append((int(p.data[0]), int(p.last)))
                if len(got) == total:
                    return
        raise AssertionError(f"{len(got)} of {total} logits within the deadline")

    async def watch(ctx):           # the engine's accepted image values, sync cycles
        cyc = k = 0
        while k < len(images) * n:
            _, _, v, r = await ctx.tick("sync").sample(eng.images.valid, eng.images.ready)
            cyc += 1
            if v and r:
                if k % n == 0:
                    first.append(cyc)
                k += 1

    sim = Simulator(dut)
    sim.add_clock(10e-9, domain="sync")
    sim.add_clock(20e-9, domain="link")
    for tb in (params, producer, consumer):
        sim.add_testbench(tb)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert [v for v, _ in got] == want.reshape(-1).tolist()
    assert [last for _, last in got] == [int(c == want.shape[1] - 1)
                                         for _ in range(len(images))
                                         for c in range(want.shape[1])]
    periods = np.diff(first).tolist()
    single = image_cycles(plan)
    print(f"N={load_cycles(plan)} single {single} model(2:1) {image_cycles(plan, 2)} "
          f"measured {periods}")
    # the first period may differ (the FIFO is not yet full at the first LOAD)
    assert periods[1:] == [image_cycles(plan, link_ratio=2)] * (len(periods) - 1)
