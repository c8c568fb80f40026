"""Subsample2: keep the pixels with even y and even x (input of a stride-2 conv).

DESIGN.md §1 conv1x1 with stride 2 reads ``in[2y, 2x, :]``; when no ShiftUnit (which can
subsample itself) precedes the conv, this block drops the other pixels so the MacArray only
ever sees the pixels it uses. The output map is ``ceil(H/2) × ceil(W/2)``.

Architecture
------------
Beat counters (b, x, y) classify each input beat; a kept beat goes through one output register
(a pipeline stage), a dropped beat is accepted at once. Input is consumed at one beat per cycle
whenever the output keeps up.
"""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .resources import Cost
from .shift_unit import position_counter, step_counter
from .stream import beats_per_pixel, pixel_stream, require_positive

__all__ = ["Subsample2"]


class Subsample2(wiring.Component):
    """Keep pixels with even y and even x, one input beat per cycle.

    Parameters
    ----------
    width, height : int
        Input feature-map shape (elaboration parameters).
    channels : int
        Channel count C (``NB = ceil(C / lanes)`` beats per pixel).
    lanes : int
        Lanes per beat P.
    bits : int
        Value width (unsigned).

    Attributes
    ----------
    i : In(pixel_stream(lanes, bits))
        Input map in raster order (``last`` is not used; the block counts beats).
    o : Out(pixel_stream(lanes, bits))
        ``ceil(H/2) × ceil(W/2)`` map; ``last`` on the final beat of each image; lanes passed
        through unchanged (padding lanes included).

    Raises
    ------
    ValueError
        A size that is not a positive integer.
    """

    def __init__(self, *, width, height, channels, lanes, bits):
        require_positive("Subsample2", width=width, height=height, channels=channels,
                         lanes=lanes, bits=bits)
        self.width, self.height, self.channels = width, height, channels
        self.lanes, self.bits = lanes, bits
        self.nb = beats_per_pixel(channels, lanes)
        super().__init__({
            "i": In(pixel_stream(lanes, bits)),
            "o": Out(pixel_stream(lanes, bits)),
        })

    @staticmethod
    def cost(*, width, height, channels, lanes, bits):
        """Resources (see :mod:`hw.resources`): registers only; ``H · W · NB`` cycles."""
        return Cost(cycles=height * width * beats_per_pixel(channels, lanes))

    def resources(self):
        """:meth:`cost` of this instance."""
        return self.cost(width=self.width, height=self.height, channels=self.channels,
                         lanes=self.lanes, bits=self.bits)

    def elaborate(self, platform):
        m = Module()
        W, H, NB = self.width, self.height, self.nb
        b = position_counter(NB, "b")
        x = position_counter(W, "x")
        y = position_counter(H, "y")
        i_fire = self.i.valid & self.i.ready
        step_counter(m, b, NB, i_fire)
        step_counter(m, x, W, i_fire & (b == NB - 1))
        step_counter(m, y, H, i_fire & (b == NB - 1) & (x == W - 1))

        keep = ~x[0] & ~y[0]
        is_last = (y == 2 * ((H - 1) // 2)) & (x == 2 * ((W - 1) // 2)) & (b == NB - 1)

        # Output register: o.valid is a register; a kept beat enters when the register is free
        # or being emptied, a dropped beat never waits.
        free = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(~keep | free)
        with m.If(free):
            m.d.sync += self.o.valid.eq(self.i.valid & keep)
            with m.If(self.i.valid & keep):
                m.d.sync += [self.o.payload.data.eq(self.i.payload.data),
                             self.o.payload.last.eq(is_last)]
        return m
