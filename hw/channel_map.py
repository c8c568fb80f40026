"""ChannelMap: per-pixel channel selection between pixel streams of different lane counts.

Output channel ``k`` of every pixel is input channel ``source[k]``. With the default
``source = range(cin)`` it is the lane-width converter between layers of different P; with
:func:`replicate_map` it is the zero-FLOP ``replicate(E)`` of DESIGN.md §1
(``out[e*C + c] = in[c]``).

Architecture
------------
A whole input pixel (``cin`` values) is collected into one of two pixel registers while the
other one is emitted (double buffering), so a steady stream sustains one pixel per
``max(NB_in, NB_out)`` cycles. Output lane ``l`` of beat ``b`` is a fixed wire from register
``source[b * lanes_out + l]``, selected by the output beat counter: the mapping costs only an
``NB_out``-way multiplexer per lane.

With more than two output beats per pixel that multiplexer is deep (the 16 → 1 lane converter
of the 85F digits design selects one of 48 channels in two buffers: 6 LUT levels behind the
beat counter, its critical path at seed 2). Then the pixel registers are kept in output
order instead (register ``k`` holds ``source[k]``, written from its input lane) and the one
being emitted shifts down by ``lanes_out`` registers per output beat: output lane ``l`` is
always register ``l`` of the reading buffer, a 2-way choice between the two buffers. Each
register costs a 2-way input choice (input lane or its shift neighbour) instead.
"""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .resources import Cost
from .shift_unit import position_counter, step_counter
from .stream import beats_per_pixel, pixel_stream, require_positive

__all__ = ["ChannelMap", "Replicate", "replicate_map"]


def replicate_map(cin, factor):
    """``source`` list of ``replicate(factor)`` over ``cin`` channels: ``[k % cin ...]``.

    Raises
    ------
    ValueError
        ``cin`` or ``factor`` is not a positive integer.
    """
    require_positive("replicate_map", cin=cin, factor=factor)
    return [k % cin for k in range(cin * factor)]


class ChannelMap(wiring.Component):
    """Re-map (select, copy, re-lane) the channels of each pixel.

    Parameters
    ----------
    cin, cout : int
        Channels per input / output pixel.
    lanes_in, lanes_out : int
        Lanes of the input / output stream.
    bits : int
        Value width.
    source : sequence of int, optional
        ``source[k]`` is the input channel of output channel ``k`` (``len == cout``).
        Default: the identity, which requires ``cout == cin``.
    is_signed : bool
        Signed lanes (e.g. raw accumulators) instead of unsigned activations.

    Attributes
    ----------
    i : In(pixel_stream(lanes_in, bits, is_signed=is_signed))
        Input pixels, ``ceil(cin / lanes_in)`` beats each; ``last`` marks the end of an image.
    o : Out(pixel_stream(lanes_out, bits, is_signed=is_signed))
        Output pixels, ``ceil(cout / lanes_out)`` beats each; ``last`` on the final beat of the
        pixel whose input carried ``last``; padding lanes are 0.
    source : tuple of int
        The channel map in use.

    Raises
    ------
    ValueError
        Non-positive sizes, a ``source`` of the wrong length or with channels outside
        ``[0, cin)``, or no ``source`` while ``cout != cin``.
    """

    def __init__(self, *, cin, cout, lanes_in, lanes_out, bits, source=None, is_signed=False):
        require_positive("ChannelMap", cin=cin, cout=cout, lanes_in=lanes_in,
                         lanes_out=lanes_out, bits=bits)
        if source is None:
            if cout != cin:
                raise ValueError(f"ChannelMap: cout ({cout}) != cin ({cin}) needs an explicit "
                                 f"source map")
            source = range(cin)
        source = tuple(source)
        if len(source) != cout:
            raise ValueError(f"ChannelMap: source has {len(source)} entries, cout is {cout}")
        for k, s in enumerate(source):
            if not isinstance(s, int) or not 0 <= s < cin:
                raise ValueError(f"ChannelMap: source[{k}] = {s!r} is not an input channel "
                                 f"in [0, {cin})")
        self.cin, self.cout, self.bits, self.is_signed = cin, cout, bits, is_signed
        self.lanes_in, self.lanes_out = lanes_in, lanes_out
        self.source = source
        self.nb_in = beats_per_pixel(cin, lanes_in)
        self.nb_out = beats_per_pixel(cout, lanes_out)
        super().__init__({
            "i": In(pixel_stream(lanes_in, bits, is_signed=is_signed)),
            "o": Out(pixel_stream(lanes_out, bits, is_signed=is_signed)),
        })

    @staticmethod
    def cost(*, cin, cout, lanes_in, lanes_out, bits, source=None, is_signed=False,
             pixels=1):
        """Resources (see :mod:`hw.resources`): two pixel registers, no memory or multiplier;
        ``pixels · max(NB_in, NB_out)`` cycles (one pixel per that many cycles, the other
        side's beats hidden by the double buffer)."""
        return Cost(cycles=pixels * max(beats_per_pixel(cin, lanes_in),
                                        beats_per_pixel(cout, lanes_out)))

    def resources(self, pixels=1):
        """:meth:`cost` of this instance (``pixels`` per image)."""
        return self.cost(cin=self.cin, cout=self.cout, lanes_in=self.lanes_in,
                         lanes_out=self.lanes_out, bits=self.bits, source=self.source,
                         is_signed=self.is_signed, pixels=pixels)

    #: Output beats per pixel above which the reading buffer shifts (see the module text).
    SHIFT_READ_BEATS = 2

    def elaborate(self, platform):
        m = Module()
        Pi, Po, NBi, NBo = self.lanes_in, self.lanes_out, self.nb_in, self.nb_out
        elem = signed(self.bits) if self.is_signed else unsigned(self.bits)
        shift_read = NBo > self.SHIFT_READ_BEATS
        # Register keys: input channels (select on read) or output positions (shift on read).
        if shift_read:
            keys = range(self.cout)
            src = self.source                     # register k holds input channel source[k]
        else:
            keys = sorted(set(self.source))       # input channels that are ever read
            src = {c: c for c in keys}

        # Two pixel registers: the writer fills `wsel` while the reader empties `rsel`.
        buf = [{k: Signal(elem, name=f"px{s}_{'k' if shift_read else 'ch'}{k}") for k in keys}
               for s in range(2)]
        full = [Signal(name=f"full{s}") for s in range(2)]
        plast = [Signal(name=f"plast{s}") for s in range(2)]   # the pixel ends an image
        wsel = Signal()
        rsel = Signal()
        ib = position_counter(NBi, "ib")
        ob = position_counter(NBo, "ob")

        # ---- input side ------------------------------------------------------------------
        m.d.comb += self.i.ready.eq(~Mux(wsel, full[1], full[0]))
        i_fire = self.i.valid & self.i.ready
        i_end = i_fire & (ib == NBi - 1)
        step_counter(m, ib, NBi, i_fire)
        with m.If(i_end):
            m.d.sync += wsel.eq(~wsel)

        # ---- output side -----------------------------------------------------------------
        m.d.comb += self.o.valid.eq(Mux(rsel, full[1], full[0]))
        o_fire = self.o.valid & self.o.ready
        o_end = o_fire & (ob == NBo - 1)
        step_counter(m, ob, NBo, o_fire)
        with m.If(o_end):
            m.d.sync += rsel.eq(~rsel)
        m.d.comb += self.o.payload.last.eq(Mux(rsel, plast[1], plast[0]) & (ob == NBo - 1))

        # Register k of buffer s: written from its input lane while the writer owns s (not
        # full), shifted while the reader owns s (full): never both in one cycle.
        for s in range(2):
            for k in keys:
                c = src[k]
                with m.If(i_fire & (ib == c // Pi) & (wsel == s)):
                    m.d.sync += buf[s][k].eq(self.i.payload.data[c % Pi])
                if shift_read:
                    with m.Elif(o_fire & (rsel == s)):
                        # Zeros come in behind the last output channel: padding lanes are 0.
                        m.d.sync += buf[s][k].eq(buf[s][k + Po] if k + Po < self.cout else 0)

        if shift_read:
            # Output lane l is register l of the reading buffer, whatever the beat.
            for l in range(min(Po, self.cout)):
                m.d.comb += self.o.payload.data[l].eq(Mux(rsel, buf[1][l], buf[0][l]))
        else:
            # Output lanes: fixed wires from the registers, one NB_out-way selection per lane;
            # the last beat is the default case so the decoder is complete. Padding lanes
            # stay 0.
            with m.Switch(ob):
                for j in range(NBo):
                    with (m.Case(j) if j < NBo - 1 else m.Default()):
                        for l in range(Po):
                            k = j * Po + l
                            if k < self.cout:
                                c = self.source[k]
                                m.d.comb += self.o.payload.data[l].eq(
                                    Mux(rsel, buf[1][c], buf[0][c]))

        # ---- buffer ownership ------------------------------------------------------------
        for s in range(2):
            # The writer only fills an empty buffer and the reader only empties a full one,
            # so set and clear never hit the same buffer in the same cycle.
            with m.If(i_end & (wsel == s)):
                m.d.sync += [full[s].eq(1), plast[s].eq(self.i.payload.last)]
            with m.If(o_end & (rsel == s)):
                m.d.sync += full[s].eq(0)
        return m


class Replicate(ChannelMap):
    """``replicate(factor)`` of DESIGN.md §1: ``out[e*C + c] = in[c]`` for ``e < factor``.

    A :class:`ChannelMap` with ``source = replicate_map(channels, factor)``.

    Parameters
    ----------
    channels : int
        Input channels C (output has ``C * factor``).
    factor : int
        Replication factor E.
    lanes_in, lanes_out, bits, is_signed
        As for :class:`ChannelMap`.

    Raises
    ------
    ValueError
        As for :class:`ChannelMap` and :func:`replicate_map`.
    """

    def __init__(self, *, channels, factor, lanes_in, lanes_out, bits, is_signed=False):
        super().__init__(cin=channels, cout=channels * factor if isinstance(factor, int) else 0,
                         lanes_in=lanes_in, lanes_out=lanes_out, bits=bits,
                         source=replicate_map(channels, factor), is_signed=is_signed)
