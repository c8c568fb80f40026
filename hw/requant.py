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

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .dsp import fits_mult18x18d, mult18x18d_registered
from .resources import Multiplier
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

    Pipeline (the hardware reason for each cut), compact (``pipelined=False``, the default):
    stage 1 registers the product and ``sh - 1``; stage 2 registers the barrel shift plus the
    saturation comparators (the deep logic); stage 3 registers the small ``act_bits``-wide
    round/clamp. Hence :attr:`LATENCY` = 3.

    Pipelined (``pipelined=True``, :attr:`LATENCY_PIPELINED` = 8), for a 100 MHz ECP5 clock,
    where the compact stages 1 and 2 are the critical paths of a placed design (61-73 MHz):

    * 1i, 1o, 1a: the product is formed as two partial products, ``acc[:16] * m`` (unsigned
      16 × 16) and ``acc[16:] * m`` (signed × unsigned), each a multiplier with its operands
      registered at its input (1i), its product registered at its output (1o) and again in
      a fabric flip-flop (1a). A product wider than one DSP block is exactly these two blocks
      plus an adder; making the split explicit puts a register between the blocks and the
      adder, which Yosys's own split (``mul2dsp``) does not. On an ECP5 each block is an
      instantiated ``MULT18X18D`` whose own A/B input and output registers are 1i and 1o
      (:mod:`hw.dsp`): no path runs through a DSP block (an inferred one, unregistered, was
      the whole 85F design's critical path at 71.4 MHz). (An accumulator of at most 16 bits
      is one product.)
    * 1b: ``p = (hi << 16) + lo``, the 49-bit adder alone (a carry chain).
    * 2a: the coarse part of the shift, ``p >> (8 · ((sh - 1) >> 3))`` (an 8-way mux per bit).
    * 2b: the fine part, ``>> ((sh - 1) & 7)`` (an 8-way mux per bit), registered at full width.
      (Fine shift and saturation in one stage were the deepest logic of the MacArray and the
      GAP once the rest was pipelined: 73.6-77.5 MHz placed alone.)
    * 2c: the saturation comparators (sign and OR of the bits above ``act_bits + 1``) and the
      clamp mux, into the narrow ``act_bits + 2``-bit register.
    * 3: round and clamp, as in the compact pipeline.

    Both pipelines compute the same function; only the latency differs.

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
    pipelined : bool
        The 8-stage pipeline (see above) instead of the 3-stage one.

    Attributes
    ----------
    i : In(stream.Signature(..., always_ready=True))
        Payload ``acc`` (lanes × signed(acc_bits)), ``m`` (lanes × 16 b), ``sh`` (lanes × 6 b),
        ``tag``. Sampled whenever ``valid``; there is no ``ready``.
    o : Out(stream.Signature(..., always_ready=True))
        Payload ``q`` (lanes × unsigned(act_bits)) and ``tag``; ``valid`` exactly
        :attr:`latency` cycles after the matching input. The consumer must always accept.
    latency : int
        :attr:`LATENCY` or :attr:`LATENCY_PIPELINED`, as built.

    Raises
    ------
    ValueError
        Non-positive ``lanes``, ``act_bits`` outside 1..31, ``acc_bits`` outside 2..64,
        or a negative ``tag_bits``.
    """

    #: Latency of the compact pipeline.
    LATENCY = 3
    #: Latency of the pipelined variant.
    LATENCY_PIPELINED = 8

    def __init__(self, *, lanes, act_bits, acc_bits=32, tag_bits=1, pipelined=False):
        require_int("Requant", "lanes", lanes, 1)
        require_int("Requant", "act_bits", act_bits, 1, 31)
        require_int("Requant", "acc_bits", acc_bits, 2, 64)
        require_int("Requant", "tag_bits", tag_bits, 0)
        self.lanes = lanes
        self.act_bits = act_bits
        self.acc_bits = acc_bits
        self.tag_bits = tag_bits
        self.pipelined = bool(pipelined)
        self.latency = self.LATENCY_PIPELINED if self.pipelined else self.LATENCY
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

        if self.pipelined:
            v2, tag2, t2 = self._stages_pipelined(m, platform, prod_bits, t_lo, t_hi, t_bits)
        else:
            v2, tag2, t2 = self._stages_compact(m, prod_bits, t_lo, t_hi, t_bits)

        # Stage 3: q = (t + 1) >> 1, in [0, top + 1]; clamp the top.
        m.d.sync += [self.o.valid.eq(v2), self.o.payload.tag.eq(tag2)]
        for k in range(self.lanes):
            q = Signal(unsigned(self.act_bits + 1), name=f"q{k}")
            m.d.comb += q.eq((t2[k] + 1) >> 1)
            m.d.sync += self.o.payload.q[k].eq(Mux(q > top, top, q))
        return m

    def _saturate(self, m, domain, value, t_lo, t_hi, t_bits, name):
        """``value`` clamped to ``[t_lo, t_hi]`` into a new ``t_bits`` register (see the class
        docstring: the clamp is monotonic, so this changes no final result)."""
        t = Signal(signed(t_bits), name=name)
        with m.If(value < t_lo):
            m.d[domain] += t.eq(t_lo)
        with m.Elif(value > t_hi):
            m.d[domain] += t.eq(t_hi)
        with m.Else():
            m.d[domain] += t.eq(value)
        return t

    def _stages_compact(self, m, prod_bits, t_lo, t_hi, t_bits):
        """Stages 1 and 2 of the compact pipeline; returns (valid, tag, [t]) after stage 2.
        (Its product is inferred: Yosys maps it without the DSP block's registers.)"""
        # Stage 1: the product (DSP block) and sh - 1.
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
            t2.append(self._saturate(m, "sync", shifted, t_lo, t_hi, t_bits, f"tsat{k}"))
        return v2, tag2, t2

    def _product(self, m, platform, a, b, shape, name):
        """``a * b`` (``b`` = ``m``, unsigned 16 bits) three cycles after its operands, in a
        fabric register of ``shape``: stages 1i (operands in the multiplier's input
        registers), 1o (product in its output register), 1a (product in a fabric flip-flop).

        On an ECP5 (``platform.family == "ecp5"``) the multiplier is an instantiated
        ``MULT18X18D`` with its A/B input and output registers clocked (:mod:`hw.dsp`), so no
        path runs through the DSP block: an inferred one (Yosys packs no register into it)
        left fabric -> DSP -> fabric, ~8 ns of routing each side in a full 85F, as the whole
        design's critical path (71.4 MHz, L2.conv into its Requant). Elsewhere (simulation,
        iCE40) flip-flops of the same latency; the function and latency are the same."""
        p1o = Signal(shape, name=f"{name}_1o", reset_less=True)
        # Only a product Yosys would map to one DSP block becomes one (a 1-bit high part,
        # acc_bits = 17, stays in LUTs), so the DSP count is the one hw.resources states.
        sa, sb = a.shape(), b.shape()
        one_dsp = Multiplier.amaranth("requant", 1, sa.width, sa.signed, sb.width,
                                      sb.signed).dsp("ecp5") == 1
        if (getattr(platform, "family", None) == "ecp5" and one_dsp
                and fits_mult18x18d(sa, sb)):
            m.submodules[f"mult_{name}"] = mult18x18d_registered(a, b, p1o)
        else:
            a1i = Signal(a.shape(), name=f"{name}_a1i", reset_less=True)
            b1i = Signal(b.shape(), name=f"{name}_b1i", reset_less=True)
            m.d.sync += [a1i.eq(a), b1i.eq(b), p1o.eq(a1i * b1i)]
        # The fabric product register keeps its reset: without one, Yosys' iCE40 DSP packing
        # folds the high partial product and the 1b adder into the low one's SB_MAC16
        # (8 blocks -> 7 for a 32-bit accumulator), so the count would no longer be the one
        # hw.resources states (tests/test_hw_resources.py checks it against Yosys).
        p1a = Signal(shape, name=name)
        m.d.sync += p1a.eq(p1o)
        return p1a

    def _stages_pipelined(self, m, platform, prod_bits, t_lo, t_hi, t_bits):
        """Stages 1i, 1o, 1a, 1b, 2a, 2b, 2c of the pipelined variant; returns (valid, tag,
        [t])."""
        A = self.acc_bits
        # Valid/tag delay line beside the seven stages. (The data registers below need no
        # reset: they are only looked at when the matching valid bit is set.)
        stages = ("1i", "1o", "1a", "1b", "2a", "2b", "2c")
        vs = [Signal(name=f"v_{n}") for n in stages]
        tags = [Signal(self.tag_bits, name=f"tag_{n}", reset_less=True) for n in stages]
        m.d.sync += [vs[0].eq(self.i.valid), tags[0].eq(self.i.payload.tag)]
        for a, b in zip(vs, vs[1:]):
            m.d.sync += b.eq(a)
        for a, b in zip(tags, tags[1:]):
            m.d.sync += b.eq(a)

        def reg(shape, name):
            return Signal(shape, name=name, reset_less=True)

        t2 = []
        for k in range(self.lanes):
            acc, mk = self.i.payload.acc[k], self.i.payload.m[k]
            # sh - 1 (sh = 0, an unprogrammed padding lane, wraps to 63: well-defined garbage),
            # carried beside the product through stages 1i..1b.
            s = [reg(unsigned(SH_BITS), f"shm1_{n}_{k}") for n in stages[:4]]
            m.d.sync += s[0].eq(self.i.payload.sh[k] - 1)
            m.d.sync += [b.eq(a) for a, b in zip(s, s[1:])]

            # 1i / 1o / 1a / 1b: the product, as two registered partial products and their sum.
            p = reg(signed(prod_bits), f"prod{k}")
            if A > 16:
                lo = self._product(m, platform, acc[:16], mk, unsigned(16 + M_BITS),
                                   f"prod_lo{k}")
                hi = self._product(m, platform, acc[16:].as_signed(), mk,
                                   signed(A - 16 + M_BITS + 1), f"prod_hi{k}")
                m.d.sync += p.eq((hi << 16) + lo)
            else:
                p0 = self._product(m, platform, acc, mk, signed(prod_bits), f"prod_a{k}")
                m.d.sync += p.eq(p0)

            # 2a: coarse shift by 8 · (s >> 3) (arithmetic: floor).
            coarse = reg(signed(prod_bits), f"coarse{k}")
            s_2a = reg(unsigned(3), f"shfine{k}")
            m.d.sync += [coarse.eq(p >> Cat(Const(0, 3), s[-1][3:])), s_2a.eq(s[-1][:3])]

            # 2b: fine shift by s & 7 (floor of floor is floor of the total shift, so the two
            # parts compose to p >> (sh - 1) exactly), registered before the compares.
            fine = reg(signed(prod_bits), f"fine{k}")
            m.d.sync += fine.eq(coarse >> s_2a)

            # 2c: saturate into the narrow register.
            t2.append(self._saturate(m, "sync", fine, t_lo, t_hi, t_bits, f"tsat{k}"))
        return vs[-1], tags[-1], t2
