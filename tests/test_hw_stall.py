# amaranth: UnusedElaboratable=no
"""A deadlocked block fails its testbench within the deadline, naming the stalled stream.

These tests are bounded by the mechanism under test (the watchdog of ``run_sim``): each
deadline is a few hundred cycles, so a broken watchdog shows up as a hang of this file.
"""

import time

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from shiftacc.hw.params import shift_param_words
from shiftacc.hw.shift_unit import ShiftUnit
from shiftacc.hw.stream import pixel_stream
from shiftacc.sim.streamtb import (StallError, make_rng, pixels_to_beats, receive, run_sim,
                                   send, send_params)


class _Swallow(wiring.Component):
    """Accepts ``accept`` input beats, then never again; its output valid never rises."""

    def __init__(self, accept):
        self.accept = accept
        super().__init__({"i": In(pixel_stream(2, 8)), "o": Out(pixel_stream(2, 8))})

    def elaborate(self, platform):
        m = Module()
        taken = Signal(range(self.accept + 1))
        m.d.comb += self.i.ready.eq(taken < self.accept)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += taken.eq(taken + 1)
        return m


def _beats(n):
    return [{"data": [k, k + 1], "last": int(k == n - 1)} for k in range(n)]


@pytest.mark.parametrize("idle", [None, 50])
def test_deadlocked_block_reports_the_stalled_stream(idle):
    """The output never becomes valid: the receiver would wait forever. The deadline (or the
    idle limit) ends the run with the input named as the last stream that moved data."""
    rng, _ = make_rng("test_deadlocked_block_reports_the_stalled_stream")
    dut = _Swallow(accept=3)

    async def tb_in(ctx):
        await send(ctx, dut.i, _beats(8), rng, 0.2)

    async def tb_out(ctx):
        await receive(ctx, dut.o, 8, rng, 0.2)

    t0 = time.monotonic()
    with pytest.raises(StallError) as info:
        run_sim(dut, tb_in, tb_out, deadline_cycles=300, idle_cycles=idle)
    msg = str(info.value)
    print(msg)
    assert time.monotonic() - t0 < 30
    assert "_Swallow stalled" in msg
    assert "stream 'o': never moved data" in msg
    assert "stream 'i': last moved data at cycle" in msg and "(3 beats)" in msg
    assert "last stage that still moved data: stream 'i'" in msg
    if idle is None:
        assert "deadline of 300 cycles" in msg
    else:
        assert "for 50 cycles" in msg


def test_shift_unit_with_output_held_low_is_reported():
    """A ShiftUnit whose output ready never rises fills its ring, then stops taking input:
    the watchdog names the input (last mover), the output (never moved) and the params."""
    rng, seed = make_rng("test_shift_unit_with_output_held_low_is_reported")
    h, w, c, p = 6, 4, 3, 2
    dut = ShiftUnit(width=w, height=h, channels=c, lanes=p, bits=8)
    images = np.random.default_rng(seed).integers(0, 256, (2, h, w, c))
    shifts = [(1, -1), (0, 1), (-1, 0)]

    async def tb_in(ctx):
        await send_params(ctx, dut.params, shift_param_words(0, shifts, p))
        await send(ctx, dut.i, pixels_to_beats(images, p, 8, rng))

    async def tb_out(ctx):
        ctx.set(dut.o.ready, 0)
        while True:                      # a consumer that never takes anything
            await ctx.tick()

    with pytest.raises(StallError) as info:
        run_sim(dut, tb_in, tb_out, deadline_cycles=400, idle_cycles=100)
    msg = str(info.value)
    print(msg)
    assert "ShiftUnit stalled" in msg
    assert "stream 'o': never moved data" in msg
    assert "stream 'params': last moved data at cycle" in msg and "(3 beats)" in msg
    assert "last stage that still moved data: stream 'i'" in msg


def test_a_healthy_run_is_not_reported():
    """The watchdog must not fire on a block that keeps moving data (a test that can fail)."""
    dut = _Swallow(accept=8)
    rng, _ = make_rng("test_a_healthy_run_is_not_reported")

    async def tb_in(ctx):
        await send(ctx, dut.i, _beats(8), rng, 0.5)

    run_sim(dut, tb_in, deadline_cycles=500, idle_cycles=50)
