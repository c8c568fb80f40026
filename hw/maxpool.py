"""MaxPool2: 2×2 max pooling with stride 2 on a pixel stream (DESIGN.md §1 ``maxpool2``).

``out[y, x, c] = max(in[2y..2y+1, 2x..2x+1, c])``, ``H_out = floor(H / 2)``,
``W_out = floor(W / 2)``: a last odd row or column is consumed and dropped.

Architecture
------------
One line of ``W_out`` partial maxima per channel, **banked by lane** (one memory per lane,
``W_out * NB`` words at address ``(x // 2) * NB + b``). Each window position is visited by four
input beats in raster order; the first stores its value, the next two store the running
maximum, the fourth emits the maximum of the window. A two-stage pipeline (address + memory
read → combine, then an output register) keeps one input beat per cycle: the bank is read in
the cycle a beat is accepted and combined with it in the next. The read port is transparent to the write port
because a window's next beat can arrive in the very cycle its previous partial maximum is
written (``NB == 1``, or ``W == 2`` across rows).
"""

from amaranth import Const, Module, Mux, Signal, unsigned
from amaranth.lib import enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .resources import Cost, MemorySpec
from .shift_unit import position_counter, step_counter
from .stream import beats_per_pixel, pixel_stream, require_positive

__all__ = ["MaxPool2"]


class _Step(enum.Enum, shape=2):
    """What the combine stage does with a beat."""
    DROP = 0      # last odd row/column: consumed, not pooled
    STORE = 1     # first beat of a window: store it
    MAX = 2       # middle beats: store max(partial, beat)
    EMIT = 3      # last beat: output max(partial, beat)


class MaxPool2(wiring.Component):
    """2×2 / stride-2 max pooling, one input beat per cycle.

    Parameters
    ----------
    width, height : int
        Input feature-map shape (elaboration parameters), each at least 2.
    channels : int
        Channel count C (``NB = ceil(C / lanes)`` beats per pixel).
    lanes : int
        Lanes per beat P.
    bits : int
        Activation width (unsigned).

    Attributes
    ----------
    i : In(pixel_stream(lanes, bits))
        Input feature map in raster order (``last`` is not used; the block counts beats).
    o : Out(pixel_stream(lanes, bits))
        Pooled map, ``floor(H/2) × floor(W/2)`` pixels; ``last`` on the final beat of each
        image. Padding lanes carry unspecified values.

    Raises
    ------
    ValueError
        A size that is not a positive integer, or ``width``/``height`` < 2 (no output pixel).
    """

    def __init__(self, *, width, height, channels, lanes, bits):
        require_positive("MaxPool2", width=width, height=height, channels=channels,
                         lanes=lanes, bits=bits)
        if width < 2 or height < 2:
            raise ValueError(f"MaxPool2: a {height}x{width} map has no 2x2 window")
        self.width, self.height, self.channels = width, height, channels
        self.lanes, self.bits = lanes, bits
        self.nb = beats_per_pixel(channels, lanes)
        super().__init__({
            "i": In(pixel_stream(lanes, bits)),
            "o": Out(pixel_stream(lanes, bits)),
        })

    @staticmethod
    def cost(*, width, height, channels, lanes, bits):
        """Resources as built (see :mod:`hw.resources`): no multiplier; ``lanes`` line banks
        of ``max(2, (W // 2) · NB)`` words; ``H · W · NB`` cycles per image."""
        nb = beats_per_pixel(channels, lanes)
        depth = max(2, (width // 2) * nb)
        return Cost(cycles=height * width * nb,
                    memories=[MemorySpec(f"line{l}", depth, bits) for l in range(lanes)])

    def resources(self):
        """:meth:`cost` of this instance."""
        return self.cost(width=self.width, height=self.height, channels=self.channels,
                         lanes=self.lanes, bits=self.bits)

    def elaborate(self, platform):
        m = Module()
        W, H, P, NB = self.width, self.height, self.lanes, self.nb
        W2, H2 = W // 2, H // 2

        # ---- input position --------------------------------------------------------------
        b = position_counter(NB, "b")
        x = Signal(range(W))
        y = Signal(range(H))
        i_fire = self.i.valid & self.i.ready
        step_counter(m, b, NB, i_fire)
        step_counter(m, x, W, i_fire & (b == NB - 1))
        step_counter(m, y, H, i_fire & (b == NB - 1) & (x == W - 1))

        # Line address of this beat's window, (x // 2) * NB + b, kept as a counter rather than
        # computed (Yosys maps a product by a constant stride to a DSP block): +1 per beat,
        # back by NB - 1 after an even column (the odd column revisits the same window), 0 at
        # the end of a row. (Dropped beats of an odd last column run to W2 * NB + b, past the
        # memory; the port width wraps them and they never write.)
        # (At least 2 words: a 1-word memory would have a zero-width address port.)
        depth = max(2, W2 * NB)
        addr = Signal(range(W2 * NB + NB), name="line_addr")
        with m.If(i_fire):
            with m.If(b != NB - 1):
                m.d.sync += addr.eq(addr + 1)
            with m.Elif(x == W - 1):
                m.d.sync += addr.eq(0)
            with m.Elif(~x[0]):
                m.d.sync += addr.eq(addr - (NB - 1))
            with m.Else():
                m.d.sync += addr.eq(addr + 1)

        # The last row / column of an odd-sized map has no partner: consumed, dropped.
        drop = Const(0, 1)
        if W % 2:
            drop = drop | (x == W - 1)
        if H % 2:
            drop = drop | (y == H - 1)
        # (Muxes rather than an If/Elif chain: with a constant `drop` the chain would be
        # emitted as a casez with overlapping patterns.)
        x0, y0 = x[0], y[0]
        step = Signal(_Step)
        m.d.comb += step.eq(Mux(drop, _Step.DROP,
                                Mux(~x0 & ~y0, _Step.STORE,
                                    Mux(x0 & y0, _Step.EMIT, _Step.MAX))))
        is_last = (y == 2 * H2 - 1) & (x == 2 * W2 - 1) & (b == NB - 1)

        # ---- per-lane banks and stage 2 (combine) ----------------------------------------
        v2 = Signal()
        step2 = Signal(_Step)
        addr2 = Signal(range(depth), name="addr2")
        last2 = Signal()
        beat2 = Signal(self.i.payload.data.shape())
        # Output register (timing: the pooled maximum is formed from a memory read and a
        # compare; registered here, it does not run on into the next block's FIFO).
        ov = self.o.valid
        o_free = ~ov | self.o.ready
        # An emitting beat waits for the output register; every other beat completes at once.
        done2 = ~v2 | (step2 != _Step.EMIT) | o_free
        m.d.comb += self.i.ready.eq(done2)
        with m.If(done2):
            m.d.sync += [v2.eq(self.i.valid), step2.eq(step), addr2.eq(addr[:len(addr2)]),
                         last2.eq(is_last), beat2.eq(self.i.payload.data)]

        write = v2 & ((step2 == _Step.STORE) | (step2 == _Step.MAX))
        for l in range(P):
            bank = Memory(shape=unsigned(self.bits), depth=depth, init=[])
            m.submodules[f"line{l}"] = bank
            wp = bank.write_port()
            # Transparent: the partial maximum written in this cycle may be the one the beat
            # being accepted needs (NB == 1, or W == 2 across rows).
            rp = bank.read_port(transparent_for=(wp,))
            new = beat2[l]
            best = Mux(rp.data > new, rp.data, new)
            # The read data belongs to the beat in stage 2 as long as stage 2 holds it.
            m.d.comb += [rp.en.eq(done2), rp.addr.eq(addr[:len(rp.addr)]),
                         wp.en.eq(write), wp.addr.eq(addr2),
                         wp.data.eq(Mux(step2 == _Step.STORE, new, best))]
            with m.If(o_free):
                m.d.sync += self.o.payload.data[l].eq(best)
        with m.If(o_free):
            m.d.sync += [ov.eq(v2 & (step2 == _Step.EMIT)), self.o.payload.last.eq(last2)]
        return m
