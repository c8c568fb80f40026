"""SpatialAttention: the NL-SAM non-local spatial attention op (SPEC.md, DESIGN.md §1 v2).

Per image ``x[H, W, C]`` (``rq(v, m, sh) = (v * m + (1 << (sh - 1))) >> sh``, floor shift)::

    S[c] = sum_{y,x} x[y, x, c]           p[c] = clamp(rq(S[c], pool_m, pool_sh), 0, 2**act_bits - 1)
    v[c] = ctx_bias[c] + sum_j ctx_weight[c, j] * p[j]
    u[c] = clamp(rq(v[c], ctx_m, ctx_sh), -128, 127)
    z[y, x] = bias + sum_c u[c] * x[y, x, c]
    i[y, x] = clamp(rq(z[y, x], z_m, z_sh), -128, 127)
    s[y, x] = lut[i[y, x] + 128]          out[y, x, c] = (x[y, x, c] * s[y, x] + 128) >> 8

``u`` depends on every pixel, so the whole map is buffered before the first output beat.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .params import ParamKind, param_bus_signature
from .requant import M_BITS, SH_BITS, Requant
from .resources import Cost, MemorySpec, Multiplier, const_mul, fifo_memories
from .stream import beats_per_pixel, pixel_stream, require_int

__all__ = ["SpatialAttention"]

#: Width of ``ctx_weight`` elements and of ``u`` (int8, SPEC.md).
W_BITS = 8
#: Width of a table entry (``lut`` values are in [0, 256]).
LUT_BITS = 9
#: Width of the ``v`` and ``z`` accumulators (int32: the export proves they fit, SPEC.md).
ACC_BITS = 32
#: Context unit cycles per image besides its ``C`` pool-requant issues and ``C * NB`` MAC
#: issues: 1 idle/start cycle, Requant.LATENCY (3) waiting for the last ``p``, 7 draining the
#: MAC pipeline (registered operands, products, lane sum, accumulate, signed requant 3).
CTX_FIXED = 1 + Requant.LATENCY + 7
#: Output pipeline, cycles from issuing a pixel's last beat to its ``s`` leaving the table
#: (memory read 1, products 1, lane sum 1, accumulate 1, signed requant 3, table read 1).
Z_LATENCY = 8
#: Emitter: table value -> delay-memory read (1) -> product ``x * s`` (1) -> FIFO write.
EMIT_LATENCY = 2
#: Slack (cycles) the bank count keeps between the input and the output image of a bank:
#: with two banks the input chases the output's read position and the context unit needs
#: the next image's sums only ``Tc`` cycles after the previous ones, which works whenever
#: ``T != Tc`` (measured over every shape with ``|T - Tc| <= 1`` up to 8x8 maps, C <= 19,
#: P <= 4: two banks alternate 13/14-cycle periods only at ``T == Tc``).
BANK_MARGIN = 1


def _index(count, name):
    """A counter for ``count`` values, at least 1 bit (a zero-width signal would reach the
    Verilog as an undriven net)."""
    return Signal(range(max(count, 2)), name=name)


def _wrap_inc(value, count):
    """``value + 1`` modulo ``count`` (a counter that wraps; no divider)."""
    return Mux(value == count - 1, 0, value + 1)


def _signed_requant(m, name, valid, acc, mult, shift):
    """``clamp(rq(acc, mult, shift), -128, 127)`` as a 3-stage pipeline (the signed twin of
    :class:`~hw.requant.Requant`, whose clamp is ``[0, 2**act_bits - 1]``).

    Stage 1 registers the product (a DSP block with its output register) and ``sh - 1``;
    stage 2 the arithmetic barrel shift ``t = p >> (sh - 1)``, saturated to ``[-256, 255]``;
    stage 3 ``q = (t + 1) >> 1`` clamped to ``[-128, 127]``. The rounding identity of
    Requant (``floor((p + 2**(s-1)) / 2**s) == floor((floor(p / 2**(s-1)) + 1) / 2)``) makes
    this exact; the saturation is harmless because ``t <= -256`` gives ``q <= -128`` and
    ``t >= 255`` gives ``q >= 128``, both clamped anyway.

    Returns
    -------
    (Signal, Signal)
        ``valid`` and ``q`` (signed 8 bits), 3 cycles after the operands.
    """
    prod_bits = len(acc) + M_BITS + 1
    p1 = Signal(signed(prod_bits), name=f"{name}_prod")
    s1 = Signal(SH_BITS, name=f"{name}_shm1")
    v1, v2, v3 = (Signal(name=f"{name}_v{k}") for k in (1, 2, 3))
    m.d.sync += [p1.eq(acc * mult), s1.eq(shift - 1), v1.eq(valid), v2.eq(v1), v3.eq(v2)]
    shifted = Signal(signed(prod_bits), name=f"{name}_shifted")
    m.d.comb += shifted.eq(p1 >> s1)
    t2 = Signal(signed(10), name=f"{name}_t")
    with m.If(shifted < -256):
        m.d.sync += t2.eq(-256)
    with m.Elif(shifted > 255):
        m.d.sync += t2.eq(255)
    with m.Else():
        m.d.sync += t2.eq(shifted)
    q = Signal(signed(9), name=f"{name}_q9")
    m.d.comb += q.eq((t2 + 1) >> 1)
    q3 = Signal(signed(W_BITS), name=f"{name}_q")
    m.d.sync += q3.eq(Mux(q > 127, 127, q))
    return v3, q3


class SpatialAttention(wiring.Component):
    """NL-SAM spatial attention on a pixel stream: the whole map is buffered, a context vector
    ``u`` is computed from its channel sums, then every pixel is scaled by ``s = lut[...]``
    of its dot product with ``u``.

    Three units work on three different images at once:

    * **Input** (one beat per cycle): writes the beat into the pixel buffer (``banks`` image
      banks used round robin, one memory of ``banks · H·W·NB`` rows of ``lanes`` values) and
      adds it to per-channel running sums (registers, as :class:`~hw.gap.GlobalAvgPool`);
      the last pixel's completed sums go to a *hold* bank, which frees the sums for the next
      image at once.
    * **Context** (per image, ``C·NB + C + CTX_FIXED`` cycles, a fixed FSM schedule):
      ``p[c]`` through a 1-lane :class:`~hw.requant.Requant` (C cycles, then the hold bank is
      free), then ``v[c]`` with ``lanes`` multipliers (``ctx_weight`` row ``c`` is ``NB`` memory
      rows of ``lanes`` weights, one per cycle: ``C·NB`` cycles), ``+ ctx_bias[c]`` and a
      signed requant to ``u[c]``, written to the ``u`` memory (``banks`` banks of ``NB`` rows).
    * **Output** (one beat per cycle): reads the image's beats in order; ``lanes`` multipliers
      form ``u · x`` of each beat, a lane sum and an accumulator give ``z`` after the pixel's
      last beat, then a signed requant and the table give ``s``. The beats are also written to
      a small circular *delay* memory as they are read, and re-read from it (``NB``
      consecutive cycles) once ``s`` is known, scaled by ``lanes`` multipliers
      (``(x · s + 128) >> 8``) and written to the output FIFO. So each pixel is read from the
      buffer once and the output runs at one beat per cycle.

    Throughput. Input and output take ``T = H·W·NB`` cycles per image, the context unit
    ``Tc = C·NB + C + CTX_FIXED``; images back to back, the steady-state period is exactly
    ``max(T, Tc)`` (:meth:`cost`). A bank is busy from its image's first input beat to its
    last output read (``2T + Tc`` and a few cycles); the input may write into the bank the
    output is still reading, behind its read position (a position compare), so ``banks``
    is the smallest count >= 2 with ``(banks - 1) · max(T, Tc) >= min(T, Tc) + BANK_MARGIN``,
    which keeps both the input and the context unit from ever waiting for a bank in steady
    state: 2, and 3 only when ``T == Tc`` (where two banks would alternate a period of
    ``T`` and ``T + 1``). The ``u``
    memory has the same banks (the context unit writes image ``n + 1``'s ``u`` while the output
    reads image ``n``'s).

    Backpressure. The output pipeline has no stall logic: a beat is read only while the output
    FIFO has credit for it (``pending`` counts beats read and not yet taken from ``o``), so a
    stalled ``o`` only pauses the reads. ``i.ready`` is a function of registers.

    Widths. Channel sums are ``bits + ceil(log2(H·W))`` bits (exact, unsigned). ``v`` and
    ``z`` are 32-bit two's complement accumulators: SPEC.md's export bound guarantees the
    final values are int32, so wrapping partial sums still give the exact result.
    ``out <= x`` because ``s <= 256``, so the output has ``bits`` bits like the input.

    Padding. Input padding lanes (channel >= C) are stored as received; their ``u`` is never
    written (it keeps the memory's initial 0), so their ``u · x`` products are 0; the pool and
    context loops only visit channels < C, and the
    scaled padding lanes are don't-care on ``o``. Framing comes from counting beats against
    the shape; the input ``last`` is ignored and the output ``last`` is driven on each image's
    final beat.

    Parameters
    ----------
    width, height : int
        Feature-map size.
    channels : int
        Channels C.
    lanes : int
        Lanes P of both streams.
    bits : int
        Width of the unsigned values received (and sent).
    act_bits : int
        Clamp of ``p``: ``[0, 2**act_bits - 1]``.
    layer_id : int
        Layer index compared with ``params.payload.layer`` (kinds SCALAR, ATT_WEIGHT,
        ATT_BIAS, LUT; :func:`hw.params.spatial_attention_param_words`).

    Attributes
    ----------
    i : In(pixel_stream(lanes, bits))
    o : Out(pixel_stream(lanes, bits))
    params : In(param_bus_signature())
        Parameter writes; ``ready`` is always 1. Loaded while no image is in flight.
    nb : int
        Beats per pixel.
    banks : int
        Image banks of the pixel buffer and of the ``u`` memory.
    period : int
        Steady-state cycles per image (``cost().cycles``).
    fifo_depth, delay_depth : int
        Output FIFO entries (the read credit) and delay-memory rows.

    Raises
    ------
    ValueError
        A size or width is not a positive integer in range, or ``layer_id`` does not fit the
        8-bit layer field (the message names the argument).
    """

    def __init__(self, *, width, height, channels, lanes, bits, act_bits, layer_id=0):
        self._check(width=width, height=height, channels=channels, lanes=lanes, bits=bits,
                    act_bits=act_bits, layer_id=layer_id)
        self.width, self.height, self.channels, self.lanes = width, height, channels, lanes
        self.bits, self.act_bits, self.layer_id = bits, act_bits, layer_id
        geo = self.geometry(width=width, height=height, channels=channels, lanes=lanes,
                            bits=bits)
        self.nb, self.banks, self.period = geo["nb"], geo["banks"], geo["period"]
        self.image_beats, self.ctx_cycles = geo["image_beats"], geo["ctx_cycles"]
        self.sum_bits = geo["sum_bits"]
        self.fifo_depth, self.delay_depth = geo["fifo_depth"], geo["delay_depth"]
        self._cost_args = dict(width=width, height=height, channels=channels, lanes=lanes,
                               bits=bits, act_bits=act_bits)
        super().__init__({
            "i": In(pixel_stream(lanes, bits)),
            "o": Out(pixel_stream(lanes, bits)),
            "params": In(param_bus_signature()),
        })

    @staticmethod
    def _check(*, width, height, channels, lanes, bits, act_bits, layer_id):
        for name, value in (("width", width), ("height", height)):
            require_int("SpatialAttention", name, value, 1, 4096)
        # Channels index ATT_WEIGHT rows/lanes (16-bit fields).
        require_int("SpatialAttention", "channels", channels, 1, 65535)
        require_int("SpatialAttention", "lanes", lanes, 1, 256)
        require_int("SpatialAttention", "bits", bits, 1, 16)
        require_int("SpatialAttention", "act_bits", act_bits, 1, 16)
        require_int("SpatialAttention", "layer_id", layer_id, 0, 255)

    @staticmethod
    def geometry(*, width, height, channels, lanes, bits):
        """Banks, cycles, FIFO and delay depths (a dict); used by the constructor and
        :meth:`cost`, so the planner counts what the RTL builds."""
        nb = beats_per_pixel(channels, lanes)
        image_beats = width * height * nb
        ctx_cycles = channels * nb + channels + CTX_FIXED
        period = max(image_beats, ctx_cycles)
        banks = 2
        while (banks - 1) * period < min(image_beats, ctx_cycles) + BANK_MARGIN:
            banks += 1
        # A beat read at cycle t reaches the FIFO at t + NB + Z_LATENCY + EMIT_LATENCY - 1
        # (the pixel's later beats must be read first); + 1 FIFO write, + 2 FIFO output
        # register, + 1 slack: so much credit keeps o.ready held high from ever throttling.
        fifo_depth = nb + Z_LATENCY + EMIT_LATENCY + 4
        # Unread delay rows: the pixel being emitted, the pixel whose z is in flight
        # (Z_LATENCY cycles) and the next one: < 2 NB + Z_LATENCY.
        delay_depth = 2 * nb + Z_LATENCY + 2
        return dict(nb=nb, image_beats=image_beats, ctx_cycles=ctx_cycles, period=period,
                    banks=banks, fifo_depth=fifo_depth, delay_depth=delay_depth,
                    sum_bits=bits + ceil_log2(width * height))

    @classmethod
    def cost(cls, *, width, height, channels, lanes, bits, act_bits, layer_id=0):
        """Resources as built (see :mod:`hw.resources`).

        Multipliers: the pool requant (1 lane, ``sum_bits + 1`` signed × 16-bit ``m``), the
        context MACs (``lanes``, int8 weight × ``act_bits`` ``p``), the context requant (1,
        32 × 16), the ``z`` MACs (``lanes``, int8 ``u`` × ``bits`` ``x``), the ``z`` requant
        (1, 32 × 16) and the scale (``lanes``, ``bits`` × 9-bit ``s``): ``3 · lanes + 3``.
        Memories: pixel buffer, ``ctx_weight``, ``ctx_bias``, ``u``, table, delay, output
        FIFO. Cycles: ``max(H·W·NB, C·NB + C + CTX_FIXED)`` per image.
        """
        cls._check(width=width, height=height, channels=channels, lanes=lanes, bits=bits,
                   act_bits=act_bits, layer_id=layer_id)
        g = cls.geometry(width=width, height=height, channels=channels, lanes=lanes,
                         bits=bits)
        nb, banks = g["nb"], g["banks"]
        mults = [
            Multiplier.amaranth("pool_requant", 1, g["sum_bits"] + 1, True, M_BITS, False),
            Multiplier.amaranth("ctx_mac", lanes, W_BITS, True, act_bits, False),
            Multiplier.amaranth("ctx_requant", 1, ACC_BITS, True, M_BITS, False),
            Multiplier.amaranth("z_mac", lanes, W_BITS, True, bits, False),
            Multiplier.amaranth("z_requant", 1, ACC_BITS, True, M_BITS, False),
            Multiplier.amaranth("scale", lanes, bits, False, LUT_BITS, False),
        ]
        mems = [
            MemorySpec("pixels", banks * g["image_beats"], lanes * bits),
            MemorySpec("ctx_weight", max(channels * nb, 2), lanes * W_BITS),
            MemorySpec("ctx_bias", max(channels, 2), ACC_BITS),
            MemorySpec("u", banks * nb, lanes * W_BITS),
            MemorySpec("lut", 256, LUT_BITS),
            MemorySpec("delay", g["delay_depth"], lanes * bits),
        ] + fifo_memories("fifo", lanes * bits + 1, g["fifo_depth"])
        return Cost(cycles=g["period"], multipliers=mults, memories=mems)

    def resources(self):
        """:meth:`cost` of this instance."""
        return self.cost(**self._cost_args)

    # ------------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        C, P, nb, B = self.channels, self.lanes, self.nb, self.banks
        bits, act_bits = self.bits, self.act_bits
        pixels = self.width * self.height
        T = self.image_beats
        beat_layout = data.ArrayLayout(unsigned(bits), P)

        # ------------------------------------------------------------ parameters
        par = self.params.payload
        mine = self.params.valid & (par.layer == self.layer_id)
        pool_m, ctx_m, z_m = (Signal(M_BITS, name=n) for n in ("pool_m", "ctx_m", "z_m"))
        pool_sh, ctx_sh, z_sh = (Signal(SH_BITS, name=n) for n in ("pool_sh", "ctx_sh", "z_sh"))
        z_bias = Signal(signed(ACC_BITS))
        with m.If(mine & (par.kind == ParamKind.SCALAR) & (par.row == 0)):
            # Scalar ids (hw.params.SCALAR_IDS): pool_m, pool_sh, ctx_m, ctx_sh, bias, z_m, z_sh.
            with m.Switch(par.lane):
                for n, reg in enumerate((pool_m, pool_sh, ctx_m, ctx_sh, z_bias, z_m, z_sh)):
                    with m.Case(n):
                        m.d.sync += reg.eq(par.data)     # truncation to the width: intended

        # ctx_weight[r, c] at row r * NB + c // P, element c % P: MAC row (c, b) is a counter.
        m.submodules.ctx_weight = w_mem = memory.Memory(
            shape=data.ArrayLayout(signed(W_BITS), P), depth=max(C * nb, 2), init=[])
        w_wr = w_mem.write_port(granularity=1)
        w_rd = w_mem.read_port(domain="sync")
        sub_row = Signal(range(max(nb, 2)))
        elem = Signal(range(max(P, 2)))
        lane_ok = Signal()
        with m.Switch(par.lane):
            for c in range(C):
                with m.Case(c):
                    m.d.comb += [sub_row.eq(c // P), elem.eq(c % P), lane_ok.eq(1)]
        w_write = (mine & (par.kind == ParamKind.ATT_WEIGHT) & (par.row < C) & lane_ok)
        # row * NB as shifts and adds: a product by a constant would take a DSP block.
        m.d.comb += w_wr.addr.eq(const_mul(par.row, nb) + sub_row)
        for e in range(P):
            m.d.comb += [w_wr.en[e].eq(w_write & (elem == e)), w_wr.data[e].eq(par.data)]

        m.submodules.ctx_bias = b_mem = memory.Memory(shape=signed(ACC_BITS),
                                                      depth=max(C, 2), init=[])
        b_wr = b_mem.write_port()
        b_rd = b_mem.read_port(domain="sync")
        m.d.comb += [b_wr.addr.eq(par.lane), b_wr.data.eq(par.data),
                     b_wr.en.eq(mine & (par.kind == ParamKind.ATT_BIAS) & (par.row == 0)
                                & (par.lane < C))]

        m.submodules.lut = lut_mem = memory.Memory(shape=unsigned(LUT_BITS), depth=256,
                                                   init=[])
        lut_wr = lut_mem.write_port()
        lut_rd = lut_mem.read_port(domain="sync")
        m.d.comb += [lut_wr.addr.eq(par.lane), lut_wr.data.eq(par.data),
                     lut_wr.en.eq(mine & (par.kind == ParamKind.LUT) & (par.row == 0)
                                  & (par.lane < 256))]

        # ------------------------------------------------------------ shared bookkeeping
        # out_done: pulse when the output has read an image's last beat (its pixel bank and
        # u bank are free from the next cycle).
        out_done = Signal()
        in_done = Signal()          # input wrote an image's last beat
        ctx_start = Signal()
        ctx_done = Signal()         # an image's u is complete in its bank
        # Images written (completely) and not yet fully read; images whose context started
        # and whose output has not finished; images with u ready and output not finished.
        in_ahead = Signal(range(B + 2))
        ctx_ahead = Signal(range(B + 2))
        u_avail = Signal(range(B + 2))
        m.d.sync += [in_ahead.eq(in_ahead + in_done - out_done),
                     ctx_ahead.eq(ctx_ahead + ctx_start - out_done),
                     u_avail.eq(u_avail + ctx_done - out_done)]
        o_pos = _index(T, "o_pos")  # output read position in its image

        # ------------------------------------------------------------ input
        m.submodules.pixels = px_mem = memory.Memory(shape=beat_layout, depth=B * T, init=[])
        px_wr = px_mem.write_port()
        px_rd = px_mem.read_port(domain="sync")
        w_pos = _index(T, "w_pos")
        w_addr = _index(B * T, "w_addr")
        beat = _index(nb, "beat")
        pixel = _index(pixels, "pixel")
        last_pixel = pixel == pixels - 1
        hold_full = Signal()
        # A bank is free when fewer than B images are unread, or, when the bank is the one
        # being read, behind the read position (that position was read at an earlier edge).
        bank_ok = (in_ahead < B) | (o_pos > w_pos)
        # The last pixel's sums go to the hold bank, so it waits until the bank is free.
        m.d.comb += self.i.ready.eq(bank_ok & (~last_pixel | ~hold_full))
        take = self.i.valid & self.i.ready
        m.d.comb += [px_wr.addr.eq(w_addr), px_wr.data.eq(self.i.payload.data),
                     px_wr.en.eq(take)]

        sum_layout = data.ArrayLayout(unsigned(self.sum_bits), P)
        sums = [Signal(sum_layout, name=f"sum{b}") for b in range(nb)]
        hold = [Signal(sum_layout, name=f"hold{b}") for b in range(nb)]
        cur = Array(sums)[beat]
        new = Signal(sum_layout)
        for k in range(P):
            # The first pixel restarts the sum: no clearing cycle between images.
            m.d.comb += new[k].eq(Mux(pixel == 0, 0, cur[k]) + self.i.payload.data[k])
        with m.If(take):
            m.d.sync += w_addr.eq(_wrap_inc(w_addr, B * T)), w_pos.eq(_wrap_inc(w_pos, T))
            with m.Switch(beat):
                for b in range(nb):
                    with m.Case(b):
                        m.d.sync += sums[b].eq(new)
                        with m.If(last_pixel):
                            m.d.sync += hold[b].eq(new)
            m.d.sync += beat.eq(_wrap_inc(beat, nb))
            with m.If(beat == nb - 1):
                m.d.sync += pixel.eq(_wrap_inc(pixel, pixels))
            with m.If(w_pos == T - 1):
                m.d.comb += in_done.eq(1)

        # ------------------------------------------------------------ context unit
        p_rows = [Signal(data.ArrayLayout(unsigned(act_bits), P), name=f"p{b}")
                  for b in range(nb)]
        m.submodules.pool_rq = prq = Requant(lanes=1, act_bits=act_bits,
                                             acc_bits=self.sum_bits + 1)
        hold_flat = [hold[c // P][c % P] for c in range(C)]
        k = Signal(range(max(C, 8)), name="ctx_k")    # pool issue / wait counter
        pk = _index(C, "pool_k")        # channel of the next pool result
        mc = _index(C, "mac_c")
        mb = _index(nb, "mac_b")
        wrow = _index(C * nb, "mac_row")
        mac_issue = Signal()
        m.d.comb += [prq.i.payload.acc[0].eq(Array(hold_flat)[k]),
                     prq.i.payload.m[0].eq(pool_m), prq.i.payload.sh[0].eq(pool_sh)]
        with m.If(prq.o.valid):
            m.d.sync += pk.eq(_wrap_inc(pk, C))
            with m.Switch(pk):
                for c in range(C):
                    with m.Case(c):
                        m.d.sync += p_rows[c // P][c % P].eq(prq.o.payload.q[0])
        with m.FSM(name="ctx"):
            with m.State("IDLE"):
                with m.If(hold_full & (ctx_ahead < B)):
                    m.d.comb += ctx_start.eq(1)
                    m.d.sync += k.eq(0)
                    m.next = "POOL"
            with m.State("POOL"):
                m.d.comb += prq.i.valid.eq(1)
                m.d.sync += k.eq(k + 1)
                with m.If(k == C - 1):
                    # Every sum has entered the Requant: the hold bank is free.
                    m.d.sync += [hold_full.eq(0), k.eq(0)]
                    m.next = "WAITP"
            with m.State("WAITP"):
                # The last p is written Requant.LATENCY cycles after its issue.
                m.d.sync += k.eq(k + 1)
                with m.If(k == Requant.LATENCY - 1):
                    m.d.sync += [mc.eq(0), mb.eq(0), wrow.eq(0)]
                    m.next = "MAC"
            with m.State("MAC"):
                m.d.comb += mac_issue.eq(1)
                m.d.sync += [mb.eq(_wrap_inc(mb, nb)), wrow.eq(wrow + 1)]
                with m.If(mb == nb - 1):
                    m.d.sync += mc.eq(mc + 1)
                    with m.If(mc == C - 1):
                        m.d.sync += k.eq(0)
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                # Last issue -> operands 1, products 2, lane sum 3, accumulate 4, signed
                # requant 5..7: u written at the end of the 7th cycle.
                m.d.sync += k.eq(k + 1)
                with m.If(k == 6):
                    m.d.comb += ctx_done.eq(1)
                    m.next = "IDLE"
        with m.If(in_done):
            m.d.sync += hold_full.eq(1)

        # MAC pipeline: stage 1 operands (weight row read, p row), 2 products, 3 lane sum,
        # 4 accumulate (+ bias read at stage 3), then the signed requant.
        m.d.comb += w_rd.addr.eq(wrow)
        c_v1, c_first1, c_lastb1 = Signal(), Signal(), Signal()
        c_mc1 = _index(C, "c_mc1")
        p1 = Signal(data.ArrayLayout(unsigned(act_bits), P))
        m.d.sync += [c_v1.eq(mac_issue), c_first1.eq(mb == 0), c_lastb1.eq(mb == nb - 1),
                     c_mc1.eq(mc), p1.eq(Array(p_rows)[mb])]
        cprod_bits = W_BITS + act_bits + 1
        cprods = [Signal(signed(cprod_bits), name=f"cprod{l}") for l in range(P)]
        for l in range(P):
            m.d.sync += cprods[l].eq(w_rd.data[l] * p1[l])
        c_v2, c_first2, c_lastb2 = Signal(), Signal(), Signal()
        c_mc2 = _index(C, "c_mc2")
        m.d.sync += [c_v2.eq(c_v1), c_first2.eq(c_first1), c_lastb2.eq(c_lastb1),
                     c_mc2.eq(c_mc1)]
        cpsum = Signal(signed(cprod_bits + ceil_log2(P)))
        m.d.sync += cpsum.eq(sum(cprods[1:], cprods[0]))
        c_v3, c_first3, c_lastb3 = Signal(), Signal(), Signal()
        c_mc3 = _index(C, "c_mc3")
        m.d.sync += [c_v3.eq(c_v2), c_first3.eq(c_first2), c_lastb3.eq(c_lastb2),
                     c_mc3.eq(c_mc2)]
        m.d.comb += b_rd.addr.eq(c_mc3)
        vacc = Signal(signed(ACC_BITS))
        with m.If(c_v3):
            m.d.sync += vacc.eq(Mux(c_first3, 0, vacc) + cpsum)
        c_v4 = Signal()
        m.d.sync += c_v4.eq(c_v3 & c_lastb3)
        vsum = Signal(signed(ACC_BITS))
        m.d.comb += vsum.eq(vacc + b_rd.data)       # int32 wrap: exact (class docstring)
        u_valid, u_q = _signed_requant(m, "ctx_rq", c_v4, vsum, ctx_m, ctx_sh)

        # u memory: B banks of NB rows; u[c] of the image in bank n at row n*NB + c//P.
        m.submodules.u = u_mem = memory.Memory(shape=data.ArrayLayout(signed(W_BITS), P),
                                               depth=B * nb, init=[])
        u_wr = u_mem.write_port(granularity=1)
        u_rd = u_mem.read_port(domain="sync")
        u_wbase = _index(B * nb, "u_wbase")
        u_wrow = _index(nb, "u_wrow")
        u_wlane = _index(P, "u_wlane")
        m.d.comb += u_wr.addr.eq(u_wbase + u_wrow)
        for l in range(P):
            m.d.comb += [u_wr.data[l].eq(u_q), u_wr.en[l].eq(u_valid & (u_wlane == l))]
        with m.If(u_valid):
            m.d.sync += u_wlane.eq(_wrap_inc(u_wlane, P))
            with m.If(u_wlane == P - 1):
                m.d.sync += u_wrow.eq(u_wrow + 1)
        with m.If(ctx_done):
            # The image's channels are all written: next image in the next bank.
            m.d.sync += [u_wrow.eq(0), u_wlane.eq(0),
                         u_wbase.eq(Mux(u_wbase == (B - 1) * nb, 0, u_wbase + nb))]

        # ------------------------------------------------------------ output: read + z
        o_addr = _index(B * T, "o_addr")
        o_beat = _index(nb, "o_beat")
        o_pix = _index(pixels, "o_pix")
        o_ubase = _index(B * nb, "o_ubase")
        pending = Signal(range(self.fifo_depth + 1))
        issue = Signal()
        m.d.comb += issue.eq((u_avail != 0) & (pending < self.fifo_depth))
        m.d.comb += [px_rd.addr.eq(o_addr), u_rd.addr.eq(o_ubase + o_beat)]
        with m.If(issue):
            m.d.sync += [o_addr.eq(_wrap_inc(o_addr, B * T)), o_pos.eq(_wrap_inc(o_pos, T)),
                         o_beat.eq(_wrap_inc(o_beat, nb))]
            with m.If(o_beat == nb - 1):
                m.d.sync += o_pix.eq(_wrap_inc(o_pix, pixels))
            with m.If(o_pos == T - 1):
                m.d.comb += out_done.eq(1)
                m.d.sync += o_ubase.eq(Mux(o_ubase == (B - 1) * nb, 0, o_ubase + nb))
        out_taken = self.o.valid & self.o.ready
        m.d.sync += pending.eq(pending + issue - out_taken)

        # Stage 1: beat and u row from memory; the beat also enters the delay memory.
        z_v1, z_first1, z_lastb1, z_lpix1 = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [z_v1.eq(issue), z_first1.eq(o_beat == 0), z_lastb1.eq(o_beat == nb - 1),
                     z_lpix1.eq(o_pix == pixels - 1)]
        m.submodules.delay = d_mem = memory.Memory(shape=beat_layout, depth=self.delay_depth,
                                                   init=[])
        d_wr = d_mem.write_port()
        d_rd = d_mem.read_port(domain="sync")
        d_waddr = _index(self.delay_depth, "d_waddr")
        m.d.comb += [d_wr.addr.eq(d_waddr), d_wr.data.eq(px_rd.data), d_wr.en.eq(z_v1)]
        with m.If(z_v1):
            m.d.sync += d_waddr.eq(_wrap_inc(d_waddr, self.delay_depth))
        # Stage 2: u * x. A padding lane's u (channel >= C) is never written and keeps the
        # memory's initial 0, so the garbage a producer puts in padding lanes never reaches z.
        zprod_bits = W_BITS + bits + 1
        zprods = [Signal(signed(zprod_bits), name=f"zprod{l}") for l in range(P)]
        for l in range(P):
            m.d.sync += zprods[l].eq(u_rd.data[l] * px_rd.data[l])
        z_v2, z_first2, z_lastb2, z_lpix2 = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [z_v2.eq(z_v1), z_first2.eq(z_first1), z_lastb2.eq(z_lastb1),
                     z_lpix2.eq(z_lpix1)]
        # Stage 3: lane sum.
        zpsum = Signal(signed(zprod_bits + ceil_log2(P)))
        m.d.sync += zpsum.eq(sum(zprods[1:], zprods[0]))
        z_v3, z_first3, z_lastb3, z_lpix3 = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [z_v3.eq(z_v2), z_first3.eq(z_first2), z_lastb3.eq(z_lastb2),
                     z_lpix3.eq(z_lpix2)]
        # Stage 4: z = bias + sum over the pixel's beats (int32 wrap: exact).
        zacc = Signal(signed(ACC_BITS))
        with m.If(z_v3):
            m.d.sync += zacc.eq(Mux(z_first3, z_bias, zacc) + zpsum)
        z_v4, z_lpix4 = Signal(), Signal()
        m.d.sync += [z_v4.eq(z_v3 & z_lastb3), z_lpix4.eq(z_lpix3)]
        # Stages 5..7: i = clamp(rq(z)); the last-pixel flag follows in a shift register.
        i_valid, i_q = _signed_requant(m, "z_rq", z_v4, zacc, z_m, z_sh)
        lp = z_lpix4
        for n in range(3):
            nxt = Signal(name=f"z_lpix{5 + n}")
            m.d.sync += nxt.eq(lp)
            lp = nxt
        # Stage 8: s = lut[i + 128] (i + 128 of an int8 is its bits with the sign inverted).
        m.d.comb += lut_rd.addr.eq(Cat(i_q[:7], ~i_q[7]))
        s_valid, s_lpix = Signal(), Signal()
        m.d.sync += [s_valid.eq(i_valid), s_lpix.eq(lp)]

        # ------------------------------------------------------------ output: emit
        # On s_valid the pixel's NB beats are re-read from the delay memory on NB consecutive
        # cycles (the next pixel's s comes >= NB cycles later), scaled and written.
        e_active = Signal()
        e_beat = _index(nb, "e_beat")
        e_lpix = Signal()
        s_hold = Signal(LUT_BITS)
        d_raddr = _index(self.delay_depth, "d_raddr")
        e_issue = Signal()
        e_last = Signal()
        m.d.comb += [e_issue.eq(s_valid | e_active), d_rd.addr.eq(d_raddr)]
        if nb == 1:
            m.d.comb += e_last.eq(s_lpix)
        else:
            m.d.comb += e_last.eq(Mux(s_valid, 0, e_lpix & (e_beat == nb - 1)))
        with m.If(e_issue):
            m.d.sync += d_raddr.eq(_wrap_inc(d_raddr, self.delay_depth))
        with m.If(s_valid):
            m.d.sync += [s_hold.eq(lut_rd.data), e_lpix.eq(s_lpix)]
            if nb > 1:
                m.d.sync += [e_active.eq(1), e_beat.eq(1)]
        with m.Elif(e_active):
            m.d.sync += e_beat.eq(_wrap_inc(e_beat, nb))
            with m.If(e_beat == nb - 1):
                m.d.sync += e_active.eq(0)
        e_v1, e_last1 = Signal(), Signal()
        m.d.sync += [e_v1.eq(e_issue), e_last1.eq(e_last)]
        sprods = [Signal(unsigned(bits + LUT_BITS), name=f"sprod{l}") for l in range(P)]
        for l in range(P):
            m.d.sync += sprods[l].eq(d_rd.data[l] * s_hold)
        e_v2, e_last2 = Signal(), Signal()
        m.d.sync += [e_v2.eq(e_v1), e_last2.eq(e_last1)]

        out_layout = self.o.payload.shape()
        m.submodules.fifo = ofifo = fifo.SyncFIFOBuffered(width=out_layout.size,
                                                          depth=self.fifo_depth)
        wiring.connect(m, ofifo.r_stream, wiring.flipped(self.o))
        out_beat = Signal(out_layout)
        for l in range(P):
            # (x * s + 128) >> 8 <= x for s <= 256: fits ``bits`` exactly.
            m.d.comb += out_beat.data[l].eq((sprods[l] + 128) >> 8)
        m.d.comb += [out_beat.last.eq(e_last2), ofifo.w_data.eq(out_beat),
                     ofifo.w_en.eq(e_v2)]
        return m
