"""Requant: the DESIGN.md §1 rescale + round + clamp, as a fixed-latency pipeline.

``q = clamp((acc * m + (1 << (sh - 1))) >> sh, 0, 2**act_bits - 1)`` with an arithmetic
(floor) shift, for ``lanes`` values in parallel. Each lane has its own ``m``/``sh`` (a MacArray
feeds one pair per output channel); a block with one pair for the whole tensor (GlobalAvgPool)
drives the same pair on every lane.

The pipeline never stalls: its ports are valid-only streams (``always_ready``), a result
appears exactly :attr:`Requant.LATENCY` cycles after its operands. Producers that face
backpressure downstream buffer the results in a FIFO and only issue work for which that FIFO
has room (credit), which keeps this arithmetic free of any enable/stall logic (good for fmax
and for DSP-block packing).
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .stream import require_int

__all__ = ["Requant", "M_BITS", "SH_BITS", "MAX_SH"]

#: Width of the multiplier ``m`` (DESIGN.md: 1 <= m <= 65535).
M_BITS = 16
#: Width of the shift ``sh`` (DESIGN.md: 1 <= sh <= 47, so 6 bits).
SH_BITS = 6
#: Largest legal ``sh``.
MAX_SH = 47


class Requant(wiring.Component):
    """Pipelined per-lane requantization (exact for every ``acc`` of ``acc_bits`` bits).

    Width reasoning, for ``A = acc_bits`` (32 for a conv accumulator):

    * ``p = acc * m``: a signed A-bit value times an unsigned 16-bit value (seen as signed
      17-bit) fits ``A + 17`` bits signed (49 for A = 32, ``|p| <= 2**31 * 65535 < 2**47``).
    * Rounding without the rounding constant: for any integer p and s >= 1,
      ``floor((p + 2**(s-1)) / 2**s) == floor((floor(p / 2**(s-1)) + 1) / 2)``. So
      ``t = p >> (sh - 1)`` (arithmetic shift of the full-width signed product = floor), then
      ``q = (t + 1) >> 1`` (floor again): exactly DESIGN.md's
      ``(acc * m + (1 << (sh - 1))) >> sh``, without a 47-bit constant or a 50-bit adder.
    * The clamp is monotonic, so ``t`` may be saturated to ``[-1, 2**(act_bits+1) - 1]`` first:
      ``t <= -1`` gives ``q <= 0`` (clamped to 0) and ``t >= 2**(act_bits+1) - 1`` gives
      ``q >= 2**act_bits`` (clamped to the top), so the saturation changes no result.

    ``sh = 0`` (an unprogrammed padding lane) is not a valid requant; it gives a well-defined
    but meaningless value, which is allowed in padding lanes.

    Pipeline (the hardware reason for each cut): stage 1 registers the product (it maps to
    DSP blocks, whose output register absorbs it) and ``sh - 1``; stage 2 registers the
    barrel shift plus the saturation comparators (the deep logic); stage 3 registers the small
    ``act_bits``-wide round/clamp. Hence :attr:`LATENCY` = 3.

    Parameters
    ----------
    lanes : int
        Values processed per cycle.
    act_bits : int
        Output activation width; results are clamped to ``[0, 2**act_bits - 1]``.
    acc_bits : int
        Width of the signed accumulator input (default 32, the int32 of DESIGN.md).
    tag_bits : int
        Width of a side-band tag carried along with the data (e.g. a ``last`` flag).

    Attributes
    ----------
    i : In(stream.Signature(..., always_ready=True))
        Payload ``acc`` (lanes × signed(acc_bits)), ``m`` (lanes × 16 b), ``sh`` (lanes × 6 b),
        ``tag``. Sampled whenever ``valid``; there is no ``ready``.
    o : Out(stream.Signature(..., always_ready=True))
        Payload ``q`` (lanes × unsigned(act_bits)) and ``tag``; ``valid`` exactly
        ``LATENCY`` cycles after the matching input. The consumer must always accept.

    Raises
    ------
    ValueError
        Non-positive ``lanes``, ``act_bits`` outside 1..31, ``acc_bits`` outside 2..64,
        or a negative ``tag_bits``.
    """

    LATENCY = 3

    def __init__(self, *, lanes, act_bits, acc_bits=32, tag_bits=1):
        require_int("Requant", "lanes", lanes, 1)
        require_int("Requant", "act_bits", act_bits, 1, 31)
        require_int("Requant", "acc_bits", acc_bits, 2, 64)
        require_int("Requant", "tag_bits", tag_bits, 0)
        self.lanes = lanes
        self.act_bits = act_bits
        self.acc_bits = acc_bits
        self.tag_bits = tag_bits
        in_layout = data.StructLayout({
            "acc": data.ArrayLayout(signed(acc_bits), lanes),
            "m": data.ArrayLayout(unsigned(M_BITS), lanes),
            "sh": data.ArrayLayout(unsigned(SH_BITS), lanes),
            "tag": tag_bits,
        })
        out_layout = data.StructLayout({
            "q": data.ArrayLayout(unsigned(act_bits), lanes),
            "tag": tag_bits,
        })
        super().__init__({
            "i": In(stream.Signature(in_layout, always_ready=True)),
            "o": Out(stream.Signature(out_layout, always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        prod_bits = self.acc_bits + M_BITS + 1     # signed(A) * unsigned(16) -> signed(A + 17)
        top = (1 << self.act_bits) - 1
        # Stage 2 keeps t = floor(p / 2**(sh-1)) clamped to [-1, 2*top + 1]: every value
        # outside that range gives the same final clamp result, and the narrow register
        # (act_bits + 2 bits instead of A + 17) keeps stage 3 a small adder.
        t_lo, t_hi = -1, 2 * top + 1
        t_bits = self.act_bits + 2

        # Stage 1: the product (DSP block with its output register) and sh - 1.
        v1 = Signal()
        tag1 = Signal(self.tag_bits)
        m.d.sync += [v1.eq(self.i.valid), tag1.eq(self.i.payload.tag)]
        p1, s1 = [], []
        for k in range(self.lanes):
            p = Signal(signed(prod_bits), name=f"prod{k}")
            s = Signal(unsigned(SH_BITS), name=f"shm1_{k}")
            m.d.sync += [
                p.eq(self.i.payload.acc[k] * self.i.payload.m[k]),
                # sh = 0 (an unprogrammed padding lane) wraps to 63: well-defined garbage.
                s.eq(self.i.payload.sh[k] - 1),
            ]
            p1.append(p); s1.append(s)

        # Stage 2: t = p >> (sh - 1), an arithmetic (floor) barrel shift, then saturate.
        # Rounding identity (class docstring): floor((p + 2**(sh-1)) / 2**sh)
        # == floor((floor(p / 2**(sh-1)) + 1) / 2), so no 47-bit rounding constant and no
        # full-width adder are built.
        v2 = Signal()
        tag2 = Signal(self.tag_bits)
        m.d.sync += [v2.eq(v1), tag2.eq(tag1)]
        t2 = []
        for k in range(self.lanes):
            shifted = Signal(signed(prod_bits), name=f"shifted{k}")
            m.d.comb += shifted.eq(p1[k] >> s1[k])
            t = Signal(signed(t_bits), name=f"tsat{k}")
            with m.If(shifted < t_lo):
                m.d.sync += t.eq(t_lo)
            with m.Elif(shifted > t_hi):
                m.d.sync += t.eq(t_hi)
            with m.Else():
                m.d.sync += t.eq(shifted)
            t2.append(t)

        # Stage 3: q = (t + 1) >> 1, in [0, top + 1]; clamp the top.
        m.d.sync += [self.o.valid.eq(v2), self.o.payload.tag.eq(tag2)]
        for k in range(self.lanes):
            q = Signal(unsigned(self.act_bits + 1), name=f"q{k}")
            m.d.comb += q.eq((t2[k] + 1) >> 1)
            m.d.sync += self.o.payload.q[k].eq(Mux(q > top, top, q))
        return m
